"""Keeps one remote shell session going across any number of link failures.

The client owns both halves of the resumable stream on the laptop side: a
SendBuffer of input the agent has not acknowledged (keystrokes typed during an
outage wait there) and a ReceiveCursor of output taken. Each attempt opens the
Shell stream with the session id and the next output offset; the agent answers
with the next input offset it expects, and both sides carry on from there, so
no byte is lost or repeated. Only a clean exit frame ends the session: a
broken transport is never mistaken for exit 0.
"""

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from connector.errors import FatalLinkError, RemoteError
from connector.link import is_link_loss
from protos import agent_pb2 as pb
from protos.codec import SHELL_CLIENT, SHELL_INPUT, SHELL_SERVER, SHELL_STDERR, Data
from protos.resumable import ACK_EVERY_SECONDS, ReceiveCursor, SendBuffer, Wakeup
from protos.version import PROTOCOL_VERSION

SHELL_METHOD = "/tether.v1.Agent/Shell"
INPUT_FRAME_BYTES = 256 * 1024
INPUT_BUFFER_LIMIT = 64 << 20
STDOUT, STDERR = 1, 2

# Codes after which another attempt cannot succeed.
FATAL_CODES = {
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED,
}


class LinkLike(Protocol):
    """What the client needs of connector.link.Link."""

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]: ...

    async def channel(self) -> grpc.aio.Channel: ...

    def invalidate(self, channel: grpc.aio.Channel) -> None: ...


@dataclass(frozen=True, slots=True)
class ExitResult:
    code: int
    signal: int
    message: str

    @property
    def shell_code(self) -> int:
        """The code a shell would report: 128+N for a signal."""
        return 128 + self.signal if self.signal else self.code


@dataclass(frozen=True, slots=True)
class Reconnecting:
    error: str


@dataclass(frozen=True, slots=True)
class Resumed:
    lost_bytes: int


@dataclass(frozen=True, slots=True)
class NoticeEvent:
    text: str


Event = Reconnecting | Resumed | NoticeEvent
OutputSink = Callable[[int, bytes], Awaitable[None]]


class _StreamBroken(Exception):
    """This attempt's stream ended without an exit: resume."""


class ShellClient:
    def __init__(
        self,
        link: LinkLike,
        request: pb.ShellOpen,
        *,
        on_output: OutputSink,
        on_event: Callable[[Event], None] = lambda event: None,
        session_id: str | None = None,
        attach: bool = False,
        on_input_room: Callable[[], None] = lambda: None,
    ) -> None:
        self._link = link
        self._request = request
        self._on_output = on_output
        self._on_event = on_event
        self._on_input_room = on_input_room
        self.session_id = session_id or uuid.uuid4().hex
        self._input = SendBuffer(INPUT_BUFFER_LIMIT)
        self._output = ReceiveCursor()
        # Set once the agent has the session: a later open must find it.
        self._opened_once = attach
        # False until an open told us where the agent's count of our input stands.
        self._agent_knows_input = not attach
        self._input_eof = False
        self._size: tuple[int, int] | None = None
        self._pending_signals: list[int] = []
        # Per attempt: what this stream has been sent so far.
        self._send_offset = 0
        self._sent_size: tuple[int, int] | None = None
        self._eof_sent = False
        self._wake = Wakeup()
        self._ack_timer: asyncio.TimerHandle | None = None
        self._ack_now = False
        self.lost_bytes = 0

    # ---------------------------------------------- called by the terminal side

    def send_input(self, data: bytes) -> None:
        self._input.append(data)
        self._wake.fire()

    def close_input(self) -> None:
        self._input_eof = True
        self._wake.fire()

    def resize(self, cols: int, rows: int) -> None:
        self._size = (cols, rows)
        self._wake.fire()

    def send_signal(self, number: int) -> None:
        self._pending_signals.append(number)
        self._wake.fire()

    def has_input_room(self) -> bool:
        return self._input.size < INPUT_BUFFER_LIMIT

    # ------------------------------------------------------------- the session

    async def run(self) -> ExitResult:
        """Attaches, and re-attaches after every failure, until the exit."""
        resuming = False
        while True:
            channel = await self._link.channel()
            try:
                return await self._attempt(channel, resuming)
            except _StreamBroken as exc:
                error = str(exc)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in FATAL_CODES:
                    raise self._fatal(exc) from None
                error = f"{exc.code().name.lower()}: {exc.details()}"
            except (asyncio.CancelledError, grpc.aio.UsageError) as exc:
                # The link closed the channel under the stream (heartbeat lost).
                if not is_link_loss(exc):
                    raise
                error = "the link was lost"
            self._link.invalidate(channel)
            resuming = True
            self._on_event(Reconnecting(error))

    def _fatal(self, exc: grpc.aio.AioRpcError) -> Exception:
        details = exc.details() or exc.code().name
        if exc.code() == grpc.StatusCode.NOT_FOUND and self._opened_once:
            return FatalLinkError(f"the session is gone on the agent: {details}")
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            return FatalLinkError(f"the agent rejected the token: {details}")
        return RemoteError(exc.code().name, details)

    def _open_frame(self) -> bytes:
        request = pb.ShellOpen()
        request.CopyFrom(self._request)
        request.session_id = self.session_id
        request.protocol_version = PROTOCOL_VERSION
        request.resume = self._opened_once
        request.output_offset = self._output.offset
        if self._size is not None:
            request.size.cols, request.size.rows = self._size
        return SHELL_CLIENT.message(pb.ShellClientFrame(open=request))

    async def _attempt(self, channel: grpc.aio.Channel, resuming: bool) -> ExitResult:
        method: Any = channel.stream_stream(SHELL_METHOD)  # type: ignore[call-arg]
        call: Any = method(metadata=self._link.metadata)
        try:
            await call.write(self._open_frame())
            opened = await self._read_opened(call)
            if not self._agent_knows_input:
                # Attaching to a session another client typed into: our
                # input continues the agent's count instead of starting at 0.
                self._input.rebase(opened.input_offset)
                self._agent_knows_input = True
            self._opened_once = True
            self._input.ack(opened.input_offset)
            if resuming:
                # The agent resumes from its oldest byte when ours is gone:
                # the difference is the gap that its first frame reports.
                lost = max(0, opened.output_offset - self._output.offset)
                self._on_event(Resumed(lost))
            writer = asyncio.ensure_future(self._write_loop(call, opened.input_offset))
            try:
                result = await self._read_loop(call)
            finally:
                writer.cancel()
                # A write on a call that has just ended fails with
                # InvalidStateError; the reader has the real story.
                with contextlib.suppress(
                    asyncio.CancelledError, asyncio.InvalidStateError, grpc.aio.AioRpcError
                ):
                    await writer
            return result
        finally:
            call.cancel()

    async def _read_opened(self, call: Any) -> pb.ShellOpened:
        raw = await call.read()
        if raw is grpc.aio.EOF:  # type: ignore[attr-defined]
            raise _StreamBroken("the stream ended without an exit")
        frame = SHELL_SERVER.decode(raw)
        if isinstance(frame, Data) or frame.WhichOneof("kind") != "opened":
            raise _StreamBroken("the agent did not answer the open")
        return frame.opened

    async def _read_loop(self, call: Any) -> ExitResult:
        while True:
            raw = await call.read()
            if raw is grpc.aio.EOF:  # type: ignore[attr-defined]
                raise _StreamBroken("the stream ended without an exit")
            frame = SHELL_SERVER.decode(raw)
            if isinstance(frame, Data):
                channel = STDERR if frame.field == SHELL_STDERR else STDOUT
                self._output.take(len(frame.data))
                await self._on_output(channel, frame.data)
                if self._output.ack_due():
                    self._wake.fire()
                elif self._ack_timer is None:
                    loop = asyncio.get_running_loop()
                    self._ack_timer = loop.call_later(ACK_EVERY_SECONDS, self._ack_timeout)
                continue
            kind = frame.WhichOneof("kind")
            if kind == "ack":
                if self._input.ack(frame.ack):
                    self._on_input_room()
            elif kind == "gap":
                self._output.take(frame.gap.size)
                self.lost_bytes += frame.gap.size
            elif kind == "notice":
                self._on_event(NoticeEvent(frame.notice.text))
            elif kind == "exit":
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await call.write(
                        SHELL_CLIENT.message(pb.ShellClientFrame(close=pb.CloseSession()))
                    )
                exit_ = frame.exit
                return ExitResult(exit_.code, exit_.signal, exit_.message)

    def _ack_timeout(self) -> None:
        self._ack_now = True
        self._wake.fire()

    def _ack_frame(self) -> bytes:
        """Acknowledges all output taken so far; clears the pending ack."""
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        self._ack_now = False
        return SHELL_CLIENT.message(pb.ShellClientFrame(ack=self._output.mark_acked()))

    async def _write_loop(self, call: Any, offset: int) -> None:
        """Sends input from `offset`, control frames and output acks, one frame
        at a time; waits only when nothing is due. Deciding is synchronous, so
        a keystroke can never slip in between the last look and the wait."""
        self._send_offset, self._sent_size, self._eof_sent = offset, None, False
        while True:
            frame = self._next_frame()
            if frame is None:
                await self._wake.wait()
            else:
                await call.write(frame)

    def _next_frame(self) -> bytes | None:
        """An output ack when one is overdue, else input, a resize, a signal,
        EOF, a timed ack; None when nothing is due."""
        if self._output.ack_due():
            return self._ack_frame()
        if self._input.end > self._send_offset:
            chunk = self._input.read(self._send_offset, INPUT_FRAME_BYTES)
            self._send_offset += len(chunk.data)
            return SHELL_CLIENT.data(SHELL_INPUT, chunk.data)
        if self._size is not None and self._size != self._sent_size:
            self._sent_size = self._size
            cols, rows = self._size
            return SHELL_CLIENT.message(
                pb.ShellClientFrame(resize=pb.WindowSize(cols=cols, rows=rows))
            )
        if self._pending_signals:
            number = self._pending_signals.pop(0)
            return SHELL_CLIENT.message(pb.ShellClientFrame(signal=pb.Signal(number=number)))
        if self._input_eof and not self._eof_sent:
            self._eof_sent = True
            return SHELL_CLIENT.message(pb.ShellClientFrame(eof=pb.StdinEof()))
        if self._output.unacked and self._ack_now:
            return self._ack_frame()
        return None
