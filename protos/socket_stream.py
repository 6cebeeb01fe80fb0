"""One TCP socket carried over Forward streams: the half both ends share.

The agent (target socket) and the connector (local socket) do the same thing
with their socket, mirrored, so they share this module: a `SocketEnd` is the
socket with its resumable state, and a `Relay` is one Forward stream attached
to it. The SocketEnd belongs to the forwarded connection and outlives any
stream; a relay ends when its stream does, and the next one carries on from
the offsets the two sides name at open.

Flow control is credit based, as ssh's channel windows are. Bytes read from
the socket wait in an Outbox until the peer acknowledges them, and reading
pauses while `limit` bytes are unacknowledged: a forward never drops a byte.
Bytes from the peer go straight to the transport, so taking frames off the
stream never waits for the socket, and the acks queued behind data frames
always get through (waiting there instead deadlocks an echo server). A peer
acknowledges only what its kernel took, so what may sit in a transport is
bounded by the sender's own limit.

End of stream each way is in-band (gRPC cannot half-close only the server's
side): a HalfClose frame with the final offset, distinct from a Reset.
"""

import asyncio
import contextlib
import enum
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from protos import agent_pb2 as pb
from protos.codec import FORWARD_CLIENT, FORWARD_DATA, FORWARD_SERVER, Data, FrameCodec
from protos.resumable import ACK_EVERY_SECONDS, Outbox, StreamError

# Socket reads are coalesced into frames of up to this many bytes.
FRAME_BYTES = 1 << 20
T = TypeVar("T")
# Each message costs far more CPU than its bytes, so a forward acknowledges
# every MiB, not the shell's 64 KiB: about one ack per full data frame. A
# sender's window (its Outbox limit) is never below this, so the ack comes.
ACK_BYTES = 1024 * 1024

Frame = pb.ForwardClientFrame | pb.ForwardServerFrame
ReadRaw = Callable[[], Awaitable[bytes | None]]
WriteRaw = Callable[[bytes], Awaitable[None]]


class Outcome(enum.Enum):
    COMPLETE = "complete"  # both directions ended and every byte acknowledged
    RESET = "reset"  # a socket was reset (here or at the peer)
    ENDED = "ended"  # the stream ended first: resume on another
    DISPLACED = "displaced"  # another stream took over the connection


class SocketEnd(asyncio.Protocol):
    """A socket's side of one forwarded connection."""

    def __init__(self, limit: int) -> None:
        self.outbox = Outbox(limit)
        self.changed = self.outbox.changed
        self.delivered = 0  # peer bytes handed to the transport
        self.peer_eof = False
        self.error: str | None = None
        self.lost = False
        self._transport: asyncio.Transport | None = None
        self._reading_paused = False

    # --------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        # Paused while anything is buffered, resumed once it is all out:
        # resume_writing then says exactly when `flushed` caught up.
        transport.set_write_buffer_limits(high=0)

    def data_received(self, data: bytes) -> None:
        self.outbox.write(data)
        if self.outbox.buffer.size >= self.outbox.buffer.limit and not self._reading_paused:
            self._reading_paused = True
            self._require_transport().pause_reading()

    def eof_received(self) -> bool:
        self.outbox.close()
        return True  # keep the other direction open: this is a half-close

    def resume_writing(self) -> None:
        self.changed.fire()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if exc is not None and self.error is None:
            self.error = _describe(exc)
        self.changed.fire()

    # ------------------------------------------------------- socket -> peer side

    @property
    def sent_eof(self) -> bool:
        """The socket said EOF: no byte will be added past outbox.buffer.end."""
        return self.outbox.closed

    def ack(self, offset: int) -> None:
        """The peer took every byte below `offset`."""
        self.outbox.ack(offset)
        buffer = self.outbox.buffer
        if self._reading_paused and buffer.size < buffer.limit and not self.lost:
            self._reading_paused = False
            self._require_transport().resume_reading()

    def resume_at(self, offset: int) -> int:
        """The peer resumes wanting bytes from `offset`: the bytes below it are
        acknowledged; returns where sending continues."""
        buffer = self.outbox.buffer
        if not buffer.start <= offset <= buffer.end:
            raise StreamError(
                f"resume at offset {offset}, but bytes [{buffer.start}, {buffer.end}) are held"
            )
        self.ack(offset)
        return offset

    # ------------------------------------------------------- peer -> socket side

    def deliver(self, data: bytes) -> None:
        if self.peer_eof:
            raise StreamError("data after the end of the stream")
        self.delivered += len(data)
        if not self.lost:
            self._require_transport().write(data)
        self.changed.fire()

    def deliver_eof(self, offset: int) -> None:
        if offset != self.delivered:
            raise StreamError(f"end of stream at {offset}, but {self.delivered} bytes arrived")
        if self.peer_eof:
            return
        self.peer_eof = True
        transport = self._require_transport()
        if not self.lost and transport.can_write_eof():
            transport.write_eof()
        self.changed.fire()

    @property
    def flushed(self) -> int:
        """Peer bytes the kernel has taken (or that can never be, once lost)."""
        if self.lost or self._transport is None:
            return self.delivered
        return self.delivered - self._transport.get_write_buffer_size()

    # ---------------------------------------------------------------- closing

    def reset(self, reason: str | None = None) -> None:
        """Close with a RST, so the application sees a reset, not an EOF;
        with a `reason`, an attached relay tells the peer why."""
        if reason is not None and self.error is None:
            self.error = reason
        transport = self._transport
        if transport is None or self.lost:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    def close(self) -> None:
        if self._transport is not None and not self.lost:
            self._transport.close()

    def _require_transport(self) -> asyncio.Transport:
        if self._transport is None:
            raise RuntimeError("the socket is not connected yet")
        return self._transport


def _describe(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"connection reset: {exc.strerror.lower()}"
    return f"connection failed: {exc}"


class Side:
    """How one end speaks the Forward stream: what it reads and what it writes."""

    def __init__(self, incoming: FrameCodec[Any], outgoing: FrameCodec[Any], frame: type) -> None:
        self.incoming = incoming
        self.outgoing = outgoing
        self.frame = frame


AGENT_SIDE = Side(FORWARD_CLIENT, FORWARD_SERVER, pb.ForwardServerFrame)
CONNECTOR_SIDE = Side(FORWARD_SERVER, FORWARD_CLIENT, pb.ForwardClientFrame)


async def first_of(*runs: "Coroutine[Any, Any, T] | asyncio.Future[T]") -> T:
    """Runs the coroutines until one ends; cancels the rest; returns its result
    (or raises its error). Both stream kinds run their two directions so."""
    tasks = [asyncio.ensure_future(run) for run in runs]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return next(iter(done)).result()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


class Relay:
    """One stream attached to a SocketEnd, from the offsets agreed at open.

    With `end_when_complete` (the agent) the relay returns COMPLETE as soon
    as both directions are done and acknowledged, which ends the stream; the
    other end (the connector) runs until the stream ends, and finds it
    complete then.
    """

    def __init__(self, end: SocketEnd, side: Side, read: ReadRaw, write: WriteRaw) -> None:
        self.end = end
        self._side = side
        self._read = read
        self._write = write
        self._acked = end.delivered
        self._ack_timer: asyncio.TimerHandle | None = None
        self._ack_timer_fired = False
        self._displaced = asyncio.get_running_loop().create_future()
        self.reset_reason = ""
        self.reset_sent = False  # this side sent the Reset (else the peer did)

    def displace(self) -> None:
        """Another stream takes over the connection: this relay stops."""
        if not self._displaced.done():
            self._displaced.set_result(Outcome.DISPLACED)

    async def run(self, send_from: int, *, end_when_complete: bool) -> Outcome:
        try:
            return await first_of(
                self._read_peer(), self._pump(send_from, end_when_complete), self._displaced
            )
        finally:
            if self._ack_timer is not None:
                self._ack_timer.cancel()

    @property
    def complete(self) -> bool:
        end = self.end
        return (
            end.sent_eof
            and end.outbox.buffer.size == 0
            and end.peer_eof
            and self._acked == end.delivered
            and end.flushed == end.delivered
        )

    async def _send(self, frame: Frame) -> None:
        await self._write(self._side.outgoing.message(frame))

    async def _read_peer(self) -> Outcome:
        end = self.end
        while True:
            raw = await self._read()
            if self._displaced.done():
                return Outcome.DISPLACED
            if raw is None:
                return Outcome.COMPLETE if self.complete else Outcome.ENDED
            frame = self._side.incoming.decode(raw)
            if isinstance(frame, Data):
                end.deliver(frame.data)
                continue
            kind = frame.WhichOneof("kind")
            if kind == "ack":
                end.ack(frame.ack)
            elif kind == "eof":
                end.deliver_eof(frame.eof.offset)
            elif kind == "reset":
                self.reset_reason = frame.reset.reason
                end.reset()
                return Outcome.RESET
            else:
                raise StreamError(f"unexpected {kind} frame in an open Forward stream")

    def _ack_wanted(self) -> bool:
        unacked = self.end.flushed - self._acked
        if unacked <= 0:
            return False
        if unacked >= ACK_BYTES or self._ack_timer_fired or self.end.peer_eof:
            return True
        if self._ack_timer is None:
            loop = asyncio.get_running_loop()
            self._ack_timer = loop.call_later(ACK_EVERY_SECONDS, self._ack_timeout)
        return False

    def _ack_timeout(self) -> None:
        self._ack_timer_fired = True
        self.end.changed.fire()

    async def _send_ack(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        self._ack_timer_fired = False
        self._acked = self.end.flushed
        await self._send(self._side.frame(ack=self._acked))

    async def _pump(self, offset: int, end_when_complete: bool) -> Outcome:
        """Sends socket bytes from `offset`, acks, the EOF and a reset, as they come."""
        end = self.end
        buffer = end.outbox.buffer
        eof_sent = False
        while True:
            if end.error is not None:
                self.reset_reason = end.error
                self.reset_sent = True
                await self._send(self._side.frame(reset=pb.Reset(reason=end.error)))
                return Outcome.RESET
            if buffer.end > offset:
                if buffer.end - offset < FRAME_BYTES and not end.sent_eof:
                    await asyncio.sleep(0)  # let reads that are ready join this frame
                chunk = buffer.read(offset, FRAME_BYTES)
                await self._write(self._side.outgoing.data(FORWARD_DATA, chunk.data))
                offset += len(chunk.data)
                continue
            if self._ack_wanted():
                await self._send_ack()
                continue
            if end.sent_eof and not eof_sent:
                eof_sent = True
                await self._send(self._side.frame(eof=pb.HalfClose(offset=offset)))
                continue
            if end_when_complete and eof_sent and self.complete:
                return Outcome.COMPLETE
            await end.changed.wait()
