"""Shell sessions: a child on a PTY (or pipes) whose output outlives clients.

The agent always drains the child's output into the session's Outbox, whether
a client is attached or not, so a training job writing to its terminal never
stalls on an absent laptop. While a client is attached and the buffer is
full, reading pauses until the client acknowledges (the backpressure ssh
gives); while none is attached, the oldest bytes are dropped and a later
resume is told the size of the gap.

A link cut detaches the client mid-transfer, when the buffer holds up to its
limit of unsent output plus what was in flight. None of that is dropped on
detach: the client may not have received it. While detached, the buffer
keeps those bytes plus up to its limit of new output, so a short outage
during bulk output loses nothing, and a long one keeps the newest bytes.
"""

import asyncio
import contextlib
import errno
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field

from agent import processes
from agent.errors import InvalidArgument
from protos.resumable import Outbox, Wakeup

STDOUT, STDERR = 0, 1
READ_BATCH = 256 * 1024
INPUT_QUEUE_LIMIT = 1 << 20
MAX_WINDOW = 4096
# After the child exits, output still in flight is read until this much quiet.
EXIT_QUIET_SECONDS = 0.1
EXIT_DRAIN_LIMIT_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class SessionSpec:
    session_id: str
    argv: list[str]
    pty: bool = True
    term: str = "xterm-256color"
    cols: int = 80
    rows: int = 24
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    tmux_session: str = ""


@dataclass(frozen=True, slots=True)
class ExitStatus:
    code: int
    signal: int
    output_end: int
    message: str = ""


def check_window(cols: int, rows: int) -> None:
    if not (1 <= cols <= MAX_WINDOW and 1 <= rows <= MAX_WINDOW):
        raise InvalidArgument(
            f"window size {cols}x{rows} is out of range (1..{MAX_WINDOW} columns and rows)"
        )


class Session:
    """One child process and the resumable streams around it."""

    def __init__(self, spec: SessionSpec, child: processes.Child, output_limit: int) -> None:
        self.spec = spec
        self.child = child
        self.output = Outbox(output_limit)
        # While detached, the oldest bytes beyond this many are dropped.
        self._detached_room = output_limit
        self.input_offset = 0
        self.exit: ExitStatus | None = None
        self.created = time.time()
        self.last_activity = time.monotonic()
        self.attachment: object | None = None
        # How far the attached client's stream has been sent output.
        self.sent_offset = 0
        # Lines for attached clients (deadline warnings, shutdown), by sequence.
        self.notices: deque[tuple[int, str]] = deque(maxlen=16)
        self._notice_seq = 0
        self._input = bytearray()
        self._input_eof = False
        self._input_space = Wakeup()
        self._open_outputs: set[int] = set()
        self._paused: set[int] = set()
        self._loop = asyncio.get_running_loop()
        self._exit_task = self._loop.create_task(self._await_exit())
        for fd, channel in self._output_fds():
            self._open_outputs.add(fd)
            self._loop.add_reader(fd, self._on_readable, fd, channel)

    def _output_fds(self) -> list[tuple[int, int]]:
        if self.spec.pty:
            return [(self.child.master, STDOUT)]
        return [(self.child.stdout, STDOUT), (self.child.stderr, STDERR)]

    @property
    def id(self) -> str:
        return self.spec.session_id

    @property
    def running(self) -> bool:
        return self.exit is None

    # ------------------------------------------------------------ output side

    def _on_readable(self, fd: int, channel: int) -> None:
        parts: list[bytes] = []
        size = 0
        eof = False
        while size < READ_BATCH:
            try:
                data = os.read(fd, READ_BATCH - size)
            except BlockingIOError:
                break
            except OSError as exc:  # EIO: every slave fd of the PTY is closed
                if exc.errno != errno.EIO:
                    raise
                eof = True
                break
            if not data:
                eof = True
                break
            parts.append(data)
            size += len(data)
        if parts:
            self.output.write(parts[0] if len(parts) == 1 else b"".join(parts), channel)
            self._apply_output_limit()
        if eof:
            self._loop.remove_reader(fd)
            self._open_outputs.discard(fd)
            self.output.changed.fire()

    @property
    def _unsent(self) -> int:
        return self.output.buffer.end - max(self.sent_offset, self.output.buffer.start)

    def _apply_output_limit(self) -> None:
        buffer = self.output.buffer
        if self.attachment is None:
            self._drop_detached_overflow()
            return
        # Attached: what has been sent is bounded by HTTP/2 flow control and
        # waits for its ack; only the unsent backlog pauses the reader.
        # Pausing on unacknowledged bytes instead would deadlock whenever
        # the client's acks queue behind input the agent is not reading.
        if self._unsent <= buffer.limit:
            return
        for fd, _ in self._output_fds():
            if fd in self._open_outputs and fd not in self._paused:
                self._loop.remove_reader(fd)
                self._paused.add(fd)

    def _resume_reading(self) -> None:
        if self.attachment is not None and self._unsent > self.output.buffer.limit:
            return
        for fd, channel in self._output_fds():
            if fd in self._paused:
                self._paused.discard(fd)
                self._loop.add_reader(fd, self._on_readable, fd, channel)
        if self.attachment is None:
            self._drop_detached_overflow()

    def _drop_detached_overflow(self) -> None:
        self.output.buffer.keep_newest(self._detached_room)

    def ack_output(self, offset: int) -> None:
        self.output.ack(offset)
        self.touch()

    def note_sent(self, offset: int) -> None:
        """The attached client's stream took output up to `offset`."""
        self.sent_offset = offset
        if self._paused:
            self._resume_reading()

    async def _await_exit(self) -> None:
        returncode = await self.child.wait()
        deadline = time.monotonic() + EXIT_DRAIN_LIMIT_SECONDS
        while self._open_outputs and time.monotonic() < deadline:
            seen = self.output.buffer.end
            await asyncio.sleep(EXIT_QUIET_SECONDS)
            if self.output.buffer.end == seen and not self._paused:
                break
        for fd in list(self._open_outputs):
            self._loop.remove_reader(fd)
        self._open_outputs.clear()
        self._paused.clear()
        self._stop_input()
        self.child.close_fds()
        sig = -returncode if returncode < 0 else 0
        self.exit = ExitStatus(
            code=-1 if sig else returncode,
            signal=sig,
            output_end=self.output.buffer.end,
            message=f"killed by {signal.Signals(sig).name}" if sig else "",
        )
        self.touch()
        self.output.close()

    # ------------------------------------------------------------- input side

    @property
    def _input_fd(self) -> int:
        return self.child.master if self.spec.pty else self.child.stdin

    def write_input(self, data: bytes) -> None:
        """Queues client bytes for the child; they count as applied from here on."""
        self.input_offset += len(data)
        self.touch()
        if self._input_eof:
            return
        self._enqueue(data)

    def _enqueue(self, data: bytes) -> None:
        if self.exit is not None:
            return
        had_backlog = bool(self._input)
        self._input += data
        if not had_backlog:
            self._flush_input()

    def _flush_input(self) -> None:
        fd = self._input_fd
        try:
            written = os.write(fd, self._input)
        except BlockingIOError:
            written = 0
        except OSError:  # the child is gone; its exit will be reported
            self._input.clear()
            return
        del self._input[:written]
        if self._input:
            self._loop.add_writer(fd, self._on_writable)
        else:
            self._input_space.fire()
            if self._input_eof and not self.spec.pty:
                self._close_stdin()

    def _on_writable(self) -> None:
        self._loop.remove_writer(self._input_fd)
        self._flush_input()

    async def wait_input_space(self) -> None:
        while len(self._input) >= INPUT_QUEUE_LIMIT and self.exit is None:
            await self._input_space.wait()

    def close_input(self) -> None:
        """EOF on stdin: closes the pipe, or sends ^D to a PTY."""
        if self._input_eof:
            return
        if self.spec.pty:
            self._enqueue(b"\x04")
            self._input_eof = True
            return
        self._input_eof = True
        if not self._input:
            self._close_stdin()

    def _close_stdin(self) -> None:
        if self.child.stdin >= 0:
            with contextlib.suppress(OSError):
                os.close(self.child.stdin)
            self.child.stdin = -1

    def _stop_input(self) -> None:
        fd = self._input_fd
        if fd >= 0 and self._input:
            self._loop.remove_writer(fd)
        self._input.clear()
        self._input_space.fire()

    # ---------------------------------------------------------------- control

    def resize(self, cols: int, rows: int) -> None:
        check_window(cols, rows)
        if self.spec.pty and self.exit is None:
            processes.set_window_size(self.child.master, cols, rows)
            self.child.signal_group(signal.SIGWINCH)

    def send_signal(self, number: int) -> None:
        try:
            signum = signal.Signals(number)
        except ValueError as exc:
            raise InvalidArgument(f"{number} is not a signal number") from exc
        self.child.signal_group(signum)

    def post_notice(self, text: str) -> None:
        self._notice_seq += 1
        self.notices.append((self._notice_seq, text))
        self.output.changed.fire()

    @property
    def notice_seq(self) -> int:
        return self._notice_seq

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def attach(self, owner: object) -> None:
        """Makes `owner` the attached client, displacing any earlier one."""
        self.attachment = owner
        self.sent_offset = self.output.buffer.start
        self.output.changed.fire()  # a displaced stream's pump says so and ends
        self.touch()

    def detach(self, owner: object) -> None:
        if self.attachment is owner:
            self.attachment = None
            buffer = self.output.buffer
            self._detached_room = buffer.size + buffer.limit
            self.touch()
            if self._paused:
                self._resume_reading()

    async def terminate(self, grace: float = 2.0) -> None:
        await self.child.terminate(grace)
        await self._exit_task
