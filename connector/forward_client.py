"""One forwarded TCP connection on the laptop side, kept going across link loss.

The accepted local socket is a SocketEnd (protos/socket_stream.py): what the
application writes waits there until the agent acknowledges it, what the
agent sends is counted as it is handed to the socket. Each attempt opens a
Forward stream with the connection id and the next offset wanted; the agent
answers with the next offset it wants, and both resend from there, so the
bytes arrive exactly once whatever happens to the link in between, as long as
the agent still holds the connection (its grace period).

A connection accepted while the link is down waits a bounded time for it and
is then reset, so an application never hangs on a half-alive listener.
"""

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc

from connector.errors import TetherError
from connector.link import is_link_loss
from connector.shell_client import FATAL_CODES, LinkLike
from protos import agent_pb2 as pb
from protos.codec import FORWARD_CLIENT, FORWARD_SERVER, Data
from protos.resumable import StreamError
from protos.socket_stream import CONNECTOR_SIDE, Outcome, Relay, SocketEnd
from protos.version import PROTOCOL_VERSION

log = logging.getLogger(__name__)

FORWARD_METHOD = "/tether.v1.Agent/Forward"
LINK_WAIT = 10.0
# A little past the agent's default grace: after it the agent has reset the target.
RESUME_LIMIT = 75.0
STALL_PAUSE = 0.05
RESET_LINGER = 5.0
STALL_PAUSE_CAP = 5.0


class ForwardLink(LinkLike, Protocol):
    """What the client needs of connector.link.Link."""

    async def is_lost(self, channel: grpc.aio.Channel) -> bool: ...


class _Broken(Exception):
    """This attempt's stream failed in a way another attempt may fix."""


class _AlreadyComplete(Exception):
    """The agent finished the connection while its last frames were lost."""


class _Refused(Exception):
    """The agent refused the connection, or a resume cannot succeed."""


class ForwardClient:
    """Relays one accepted local socket to HOST:PORT in the run."""

    def __init__(
        self,
        link: ForwardLink,
        end: SocketEnd,
        host: str,
        port: int,
        *,
        link_wait: float = LINK_WAIT,
        resume_limit: float = RESUME_LIMIT,
        on_finished: Callable[["ForwardClient"], None] | None = None,
    ) -> None:
        self._link = link
        self._on_finished = on_finished
        self.end = end
        self._host = host
        self._port = port
        self._link_wait = link_wait
        self._resume_limit = resume_limit
        self.connection_id = uuid.uuid4().hex
        self._opened = False  # the agent has answered an open of this connection
        self._opened_now = False  # ... on the current attempt
        self._last_open_failure = ""
        self._progress_mark = (0, 0)
        self._stalled = 0
        self.error: str | None = None

    async def run(self) -> Outcome:
        """Relays until the connection completes or is reset (the local socket
        then closed or reset accordingly); never raises for the link or the agent."""
        outcome = Outcome.RESET
        try:
            outcome = await self._run()
        except _AlreadyComplete:
            outcome = Outcome.COMPLETE
        except _Refused as exc:
            self.error = str(exc)
        except StreamError as exc:
            self.error = f"protocol error: {exc}"
        except TetherError as exc:  # the link cannot be had (closed, wrong token)
            self.error = str(exc)
        finally:
            if self._on_finished is not None:  # before the application can see the end
                self._on_finished(self)
            if outcome is Outcome.COMPLETE:
                self.end.close()
            else:
                self.end.reset()
        return outcome

    async def _run(self) -> Outcome:
        while True:
            channel = await self._wait_for_link()
            try:
                return await self._attempt(channel)
            except (_Broken, asyncio.InvalidStateError) as exc:  # the stream ended under us
                log.debug("forward %s: %s", self.connection_id, exc)
            except grpc.aio.AioRpcError as exc:
                await self._judge(exc, channel)
            except (asyncio.CancelledError, grpc.aio.UsageError) as exc:
                if not is_link_loss(exc):
                    raise
            self._link.invalidate(channel)

    async def _wait_for_link(self) -> grpc.aio.Channel:
        limit = self._resume_limit if self._opened else self._link_wait
        try:
            async with asyncio.timeout(limit):
                return await self._link.channel()
        except TimeoutError:
            raise _Refused(f"the link to the run was down for {limit:g}s") from None

    async def _judge(self, exc: grpc.aio.AioRpcError, channel: grpc.aio.Channel) -> None:
        """Returns when another attempt may succeed (resume), raises _Refused
        when the agent itself said no.

        Once the agent has answered an open, only a fatal code is its own
        word: anything else is the transport failing under the stream. Before
        that, a target that refused and a link that broke can both read as
        UNAVAILABLE; the open is idempotent, so it is tried once more on a
        link found healthy, and the same answer twice is the agent's.
        """
        description = f"{exc.details() or exc.code().name} ({exc.code().name})"
        if exc.code() == grpc.StatusCode.NOT_FOUND and self._finished_here():
            raise _AlreadyComplete()
        if exc.code() in FATAL_CODES:
            raise _Refused(description)
        if self._opened_now:
            await self._pause_if_stalled()
            return
        if await self._link.is_lost(channel):
            return
        if description == self._last_open_failure:
            raise _Refused(description)
        self._last_open_failure = description

    async def _pause_if_stalled(self) -> None:
        """Streams that keep failing with no byte moving are resumed ever
        more slowly, so a failure that is not the link's cannot spin."""
        mark = (self.end.delivered, self.end.outbox.buffer.start)
        if mark != self._progress_mark:
            self._progress_mark = mark
            self._stalled = 0
            return
        self._stalled += 1
        await asyncio.sleep(min(STALL_PAUSE * 2**self._stalled, STALL_PAUSE_CAP))

    def _finished_here(self) -> bool:
        """Both directions ended and every byte of the agent's was taken:
        all the agent waited for was our last ack, so a connection it no
        longer knows was completed, not lost (a reset now would destroy
        data the application has not read yet)."""
        end = self.end
        return self._opened and end.sent_eof and end.peer_eof and end.flushed == end.delivered

    def _open_frame(self) -> bytes:
        request = pb.ForwardOpen(
            connection_id=self.connection_id,
            protocol_version=PROTOCOL_VERSION,
            host=self._host,
            port=self._port,
            resume=self._opened,
            recv_offset=self.end.delivered,
        )
        return FORWARD_CLIENT.message(pb.ForwardClientFrame(open=request))

    async def _attempt(self, channel: grpc.aio.Channel) -> Outcome:
        method: Any = channel.stream_stream(FORWARD_METHOD)  # type: ignore[call-arg]
        call: Any = method(metadata=self._link.metadata)

        async def read() -> bytes | None:
            raw = await call.read()
            return None if raw is grpc.aio.EOF else bytes(raw)  # type: ignore[attr-defined]

        async def write(raw: bytes) -> None:
            try:
                await call.write(raw)
            except asyncio.InvalidStateError:
                # The RPC already finished; the reader is about to see its
                # status (an end or an error), which is the verdict.
                await asyncio.get_running_loop().create_future()

        try:
            self._opened_now = False
            await call.write(self._open_frame())
            opened = await self._read_opened(read)
            self._opened = self._opened_now = True
            if opened.send_offset != self.end.delivered:
                raise StreamError(
                    f"the agent continues at {opened.send_offset}, "
                    f"not at {self.end.delivered} as asked"
                )
            send_from = self.end.resume_at(opened.recv_offset)
            relay = Relay(self.end, CONNECTOR_SIDE, read, write)
            outcome = await relay.run(send_from, end_when_complete=False)
            if outcome is Outcome.ENDED:
                raise _Broken("the agent ended the stream before the connection ended")
            if outcome is Outcome.RESET and relay.reset_reason:
                self.error = relay.reset_reason
            if relay.reset_sent:
                await _let_the_agent_end(call, read)
            return outcome
        finally:
            call.cancel()

    async def _read_opened(self, read: Any) -> pb.ForwardOpened:
        raw = await read()
        if raw is None:
            raise _Broken("the stream ended before the agent answered the open")
        frame = FORWARD_SERVER.decode(raw)
        if isinstance(frame, Data) or frame.WhichOneof("kind") != "opened":
            raise StreamError("the agent did not answer the open")
        opened: pb.ForwardOpened = frame.opened
        return opened


async def _let_the_agent_end(call: Any, read: Callable[[], Awaitable[bytes | None]]) -> None:
    """After our Reset: the agent ends the stream once it has it. Cancelling
    at once could overtake the Reset and leave the target socket open for
    the whole grace period, so wait (briefly) for that end."""
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, TimeoutError):
        await call.done_writing()
        async with asyncio.timeout(RESET_LINGER):
            while await read() is not None:
                pass
