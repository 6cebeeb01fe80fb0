"""Forwarded TCP connections: each a socket to a vetted target that outlives
the streams carrying it.

A connection is keyed by the id its client chose, so a retried open attaches
to the connection it already made instead of dialling again. When its stream
breaks the connection waits, socket open and unacknowledged bytes kept, for
the grace period: a resume within it carries on byte-exact (protos/
socket_stream.py), and after it the target socket is reset and the id
forgotten. One connection failing, a target refusing, or the limit being
reached never touches the others.
"""

import asyncio
import contextlib
import time

from agent.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from agent.forward_policy import ForwardPolicy, Target, format_endpoint
from agent.session_table import SESSION_ID
from protos.resource import Resource
from protos.socket_stream import Outcome, Relay, SocketEnd

CONNECT_TIMEOUT = 10.0


class ForwardConnection:
    """One forwarded connection: the target socket and who is attached to it."""

    def __init__(self, connection_id: str, endpoint: str, end: SocketEnd) -> None:
        self.id = connection_id
        self.endpoint = endpoint
        self.end = end
        self.created = time.time()
        self.relay: Relay | None = None
        self.expiry: asyncio.TimerHandle | None = None


class ForwardTable(Resource):
    """Every forwarded connection of the agent, with the limit and the grace period."""

    def __init__(
        self, policy: ForwardPolicy, *, max_forwards: int, grace: float, buffer: int
    ) -> None:
        self._policy = policy
        self._max = max_forwards
        self._grace = grace
        self._buffer = buffer
        self._connections: dict[str, ForwardConnection] = {}
        self._opening: dict[str, asyncio.Future[ForwardConnection]] = {}
        self._closed = False

    def __len__(self) -> int:
        return len(self._connections)

    async def open(
        self, connection_id: str, host: str, port: int, *, resume: bool
    ) -> tuple[ForwardConnection, bool]:
        """The connection with this id, dialled unless it exists (or is being
        dialled); True when this call dialled it."""
        if not SESSION_ID.fullmatch(connection_id):
            raise InvalidArgument(
                f"connection id {connection_id!r} is not 1-128 of [A-Za-z0-9_.:-]"
            )
        existing = self._connections.get(connection_id)
        if existing is not None:
            return existing, False
        pending = self._opening.get(connection_id)
        if pending is not None:
            return await asyncio.shield(pending), False
        if resume:
            raise NotFound(
                f"forwarded connection {connection_id!r} is gone: it ended, "
                f"or nothing resumed it within {self._grace:g}s"
            )
        if self._closed:
            raise Unavailable("the agent is shutting down")
        if len(self._connections) + len(self._opening) >= self._max:
            raise ResourceExhausted(
                f"this agent already forwards {self._max} connections (its limit); "
                "close some and try again"
            )
        return await self._dial(connection_id, host, port), True

    async def _dial(self, connection_id: str, host: str, port: int) -> ForwardConnection:
        future: asyncio.Future[ForwardConnection] = asyncio.get_running_loop().create_future()
        self._opening[connection_id] = future
        try:
            target = await self._policy.vet(host, port)
            end, endpoint = await self._connect(target)
            connection = ForwardConnection(connection_id, endpoint, end)
            self._connections[connection_id] = connection
            future.set_result(connection)
            return connection
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: only concurrent opens of the id wait on it
            raise
        finally:
            del self._opening[connection_id]

    async def _connect(self, target: Target) -> tuple[SocketEnd, str]:
        """A socket to the first vetted address that accepts, and its endpoint."""
        loop = asyncio.get_running_loop()
        failure = ""
        for address in target.addresses:
            endpoint = format_endpoint(address, target.port)
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    _, end = await loop.create_connection(
                        lambda: SocketEnd(self._buffer), address, target.port
                    )
            except ConnectionRefusedError:
                failure = f"connection refused by {endpoint}"
            except TimeoutError:
                failure = f"no answer from {endpoint} within {CONNECT_TIMEOUT:g}s"
            except OSError as exc:
                failure = f"cannot connect to {endpoint}: {exc.strerror or exc}"
            else:
                return end, endpoint
        raise Unavailable(failure)

    def attach(self, connection: ForwardConnection, relay: Relay) -> None:
        """`relay` now carries the connection; an earlier one stops."""
        if connection.expiry is not None:
            connection.expiry.cancel()
            connection.expiry = None
        if connection.relay is not None:
            connection.relay.displace()
        connection.relay = relay

    def detach(self, connection: ForwardConnection, relay: Relay, outcome: Outcome) -> None:
        """The relay ended with `outcome`: finish the connection, or keep it
        for the grace period when the stream broke under it."""
        if connection.relay is not relay:
            return
        connection.relay = None
        if outcome is Outcome.COMPLETE:
            connection.end.close()
            self._forget(connection)
        elif outcome is Outcome.RESET:
            connection.end.reset()
            self._forget(connection)
        else:
            loop = asyncio.get_running_loop()
            connection.expiry = loop.call_later(self._grace, self._expire, connection)

    def _expire(self, connection: ForwardConnection) -> None:
        connection.expiry = None
        connection.end.reset()
        self._forget(connection)

    def _forget(self, connection: ForwardConnection) -> None:
        if self._connections.get(connection.id) is connection:
            del self._connections[connection.id]

    def close(self) -> None:
        """Resets every target socket and forgets every connection."""
        self._closed = True
        for connection in list(self._connections.values()):
            if connection.expiry is not None:
                connection.expiry.cancel()
            # An attached relay sends the reason as a Reset, then forgets it.
            connection.end.reset("the agent is stopping")
            if connection.relay is None:
                self._forget(connection)

    async def wait_closed(self) -> None:
        while self._opening:
            with contextlib.suppress(BaseException):
                await asyncio.gather(*self._opening.values(), return_exceptions=True)
