"""The per-run token: loaded from a private file, checked on every call.

The token never travels in argv and is never logged; children never see it
(agent/processes.py strips it from their environment).
"""

import hmac
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import grpc

from agent.errors import AgentError
from protos.token import TokenFileError, read_token_file

TOKEN_ENV = "TETHER_TOKEN_FILE"
AUTH_HEADER = "authorization"


class TokenError(AgentError):
    """The token file is missing, empty or readable by others."""


def load_token(path: str) -> bytes:
    """Reads the token, refusing a file that group or others can read."""
    try:
        return read_token_file(path)
    except TokenFileError as exc:
        raise TokenError(str(exc)) from None


Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class TokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Rejects, before any handler runs, every call without the right token."""

    def __init__(self, token: bytes) -> None:
        self._expected = b"Bearer " + token

    def _authorized(self, details: grpc.HandlerCallDetails) -> bool:
        for key, value in details.invocation_metadata or ():
            if key == AUTH_HEADER:
                given = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(given, self._expected)
        return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        if self._authorized(handler_call_details):
            return await continuation(handler_call_details)
        return _DENY


async def _deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")


# One handler shape serves every method: the request is never even decoded.
_DENY = grpc.stream_unary_rpc_method_handler(_deny)
