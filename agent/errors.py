"""The agent's domain errors.

Domain modules raise these and nothing gRPC-specific; the servicers map each
class to a status code in one table (agent/service/errors.py).
"""


class AgentError(Exception):
    """Base of every error the agent reports to a client."""


class InvalidArgument(AgentError):
    """The request itself is wrong: a bad name, size, port or duration."""


class NotFound(AgentError):
    """The named session, connection or tmux session does not exist."""


class AlreadyExists(AgentError):
    """The name is taken."""


class FailedPrecondition(AgentError):
    """The agent or image cannot do this now (tmux missing, no tunnel running)."""


class PermissionDenied(AgentError):
    """Refused by policy (a forward target that is not allowed)."""


class ResourceExhausted(AgentError):
    """A limit was reached: sessions, forwards, buffer sizes."""


class Unavailable(AgentError):
    """Something the agent depends on is down or unreachable (a download)."""
