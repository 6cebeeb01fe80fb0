"""SSH keys on the laptop side; the only connector module that imports asyncssh.

`tether ssh-config` gives the OpenSSH client a key pair of tether's own, so
that logging in to a run never depends on (or touches) the person's keys, and
pins each agent's host key in a known_hosts file of tether's own.
"""

import os
from pathlib import Path

import asyncssh

from connector.errors import ConfigError, RemoteError

CLIENT_KEY_FILE = "id_ed25519"


def ensure_client_key(directory: Path) -> tuple[Path, str]:
    """The tether-managed key pair in `directory`, made once: the private
    key's path (0600) and the public key as one authorized_keys line."""
    private = directory / CLIENT_KEY_FILE
    public = private.with_name(CLIENT_KEY_FILE + ".pub")
    if not private.exists():
        key = asyncssh.generate_private_key("ssh-ed25519", comment="tether")
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private_key())
        public.write_bytes(key.export_public_key())
    try:
        key = asyncssh.read_private_key(private)
    except (OSError, asyncssh.KeyImportError) as exc:
        raise ConfigError(f"tether's SSH key {private} cannot be read: {exc}") from None
    return private, key.export_public_key().decode().strip()


def host_key_line(text: str) -> str:
    """The agent's host key as "type base64", checked: it goes into a
    known_hosts file, so a malformed or multi-line answer must not."""
    if "\n" in text.strip():
        raise RemoteError("INVALID_HOST_KEY", "the agent sent a host key of several lines")
    try:
        key = asyncssh.import_public_key(text.strip())
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise RemoteError(
            "INVALID_HOST_KEY", f"the agent sent an unusable host key: {exc}"
        ) from None
    kind, blob, *_ = key.export_public_key().decode().split()
    return f"{kind} {blob}"
