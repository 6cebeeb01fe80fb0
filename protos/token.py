"""The per-run token file, checked and read the same way on both ends.

The token lives in a regular file only its owner may read; it never travels
in argv. Each end turns TokenFileError into its own error class.
"""

import os
import stat


class TokenFileError(ValueError):
    """The token file is missing, not a regular file, readable by others, or empty."""


def read_token_file(path: str) -> bytes:
    """The token in `path`, whitespace stripped."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise TokenFileError(f"token file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise TokenFileError(f"token file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise TokenFileError(
            f"token file {path} is readable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
        )
    with open(path, "rb") as f:
        token = f.read().strip()
    if not token:
        raise TokenFileError(f"token file {path} is empty")
    return token
