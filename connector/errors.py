"""The connector's one exception hierarchy.

Everything the person can act on is a TetherError: the CLI prints its message
on one line and exits with its `exit_code`, never a traceback. Third-party
exceptions (grpc, OSError, TOML) are translated into these at the boundary
where they happen, so callers only ever catch these.
"""

# ssh's convention: 255 means "could not reach the far side", so a remote
# command's own exit code 1 is never confused with a broken link.
LINK_EXIT_CODE = 255


class TetherError(Exception):
    """Base of every error the connector reports to the person."""

    exit_code: int = 1


class ConfigError(TetherError):
    """The run configuration or a local file named in it is wrong."""


class LinkError(TetherError):
    """A connection problem that may go away: the link retries these."""

    exit_code = LINK_EXIT_CODE


class FatalLinkError(TetherError):
    """A connection problem that retrying cannot fix: a wrong token, a
    certificate that does not match its pin, a protocol version mismatch, a
    session the agent does not know."""

    exit_code = LINK_EXIT_CODE


class RemoteError(TetherError):
    """The agent refused or failed a call; `code` is the gRPC status name
    (for example "NOT_FOUND") and `message` the agent's own words, unescaped."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} ({code})" if message else code)
        self.code = code
        self.message = message
