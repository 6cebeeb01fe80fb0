"""The laptop's own terminal during `tether connect`: raw mode, size, status text.

Nothing here knows about the wire. `RawTerminal` puts the local tty into raw
mode the way `ssh -t` does and guarantees it comes back, because a terminal
left raw (no echo, no line editing) after a crash is the worst thing a remote
shell tool can do to a person. `StatusLine` and `escape_text` print the
connector's own messages without disturbing the raw terminal or letting far
side text drive it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import signal
import sys
import termios
import tty
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any, Final, Self, TextIO

Size = tuple[int, int]
"""(columns, rows); mind that `stty size` prints rows first."""

DEFAULT_SIZE: Final[Size] = (80, 24)
_FATAL_SIGNALS: Final = (signal.SIGTERM, signal.SIGHUP)
_SignalHandler = Callable[[int, FrameType | None], Any] | int | None


class RawTerminal:
    """Raw mode on a tty for the life of a `with` or `async with` block.

    The saved termios attributes are put back on every way out: the block
    ending or raising (KeyboardInterrupt included), SIGTERM or SIGHUP to this
    process (restored at once, then SystemExit(128 + signal) unwinds the
    program so the rest of its cleanup runs too), and atexit as a last resort
    for a block that was entered and never left. Only SIGKILL escapes.

    Output post-processing is turned off with the rest (tty.setraw), because
    the far side's pty has already done it; the connector's own messages
    therefore end lines with CRLF (see StatusLine).

    When the fd is not a tty everything is a no-op and `is_tty` says so.
    Signal handlers are process-wide, so enter it from the main thread.
    """

    def __init__(
        self, fd: int | None = None, *, on_resize: Callable[[Size], None] | None = None
    ) -> None:
        self._fd = sys.stdin.fileno() if fd is None else fd
        self._on_resize = on_resize
        self._saved: list[Any] | None = None
        self._previous_handlers: dict[int, _SignalHandler] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def is_tty(self) -> bool:
        """Whether the fd is a terminal, i.e. whether raw mode applies at all."""
        return os.isatty(self._fd)

    def size(self) -> Size:
        """(columns, rows) of the tty (TIOCGWINSZ), or 80x24 when it has none."""
        try:
            columns, rows = os.get_terminal_size(self._fd)
        except OSError:
            return DEFAULT_SIZE
        if columns <= 0 or rows <= 0:
            return DEFAULT_SIZE
        return (columns, rows)

    def restore(self) -> None:
        """Put back the attributes saved on entry; safe to call any number of times.

        TCSANOW, never TCSADRAIN: this runs from signal handlers, where
        waiting for a hung terminal to drain would hang the exit. Errors are
        ignored because after SIGHUP the terminal may already be gone.
        """
        if self._saved is None:
            return
        with contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(self._fd, termios.TCSANOW, self._saved)

    def __enter__(self) -> Self:
        self._enter_raw()
        if self.is_tty and self._on_resize is not None:
            self._previous_handlers[signal.SIGWINCH] = signal.signal(
                signal.SIGWINCH, lambda _signum, _frame: self._report_size()
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._leave_raw()

    async def __aenter__(self) -> Self:
        """Like `with`, but SIGWINCH goes through the running loop's signal handling."""
        self._enter_raw()
        if self.is_tty and self._on_resize is not None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_signal_handler(signal.SIGWINCH, self._report_size)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._leave_raw()

    def _enter_raw(self) -> None:
        if not self.is_tty:
            return
        self._saved = termios.tcgetattr(self._fd)
        # Every restore path goes in before the terminal changes, so there is
        # no moment when it is raw and nothing would put it back.
        atexit.register(self.restore)
        for signum in _FATAL_SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum, self._terminate)
        # TCSADRAIN, not setraw's default TCSAFLUSH: keep what was typed ahead.
        tty.setraw(self._fd, termios.TCSADRAIN)

    def _leave_raw(self) -> None:
        self.restore()
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGWINCH)
            self._loop = None
        for signum, handler in self._previous_handlers.items():
            # None means a handler installed outside Python; default is closest.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._previous_handlers.clear()
        atexit.unregister(self.restore)
        self._saved = None

    def _terminate(self, signum: int, _frame: FrameType | None) -> None:
        self.restore()
        raise SystemExit(128 + signum)

    def _report_size(self) -> None:
        if self._on_resize is not None:
            self._on_resize(self.size())


class StatusLine:
    """The connector's one line of status ("reconnecting (3s)…") on stderr.

    On a tty each message begins with CR and erase-line and ends with CRLF,
    which reads right whether or not the terminal is raw. A transient message
    (`update`) stays on the line without a newline, so the next message
    replaces it in place; any other message starts on a fresh line, so it
    never erases what the far side printed on the current one. On
    anything else (a log file) every message is its own plain line.

    All text goes through `escape_text`. Write errors are ignored: a status
    nobody can see (the terminal has gone) is not worth ending the session.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = sys.stderr if stream is None else stream
        self._is_tty = self._stream.isatty()
        self._transient_shown = False

    def update(self, text: str) -> None:
        """Show `text` until the next message replaces it."""
        if self._is_tty:
            # A line wider than the terminal would wrap, and the next update
            # could then erase only its last row: cut it to fit.
            visible = escape_text(text)[: max(1, self._columns() - 1)]
            self._emit(self._line_prefix() + visible)
            self._transient_shown = True
        else:
            self._emit(escape_text(text) + "\n")

    def write(self, text: str) -> None:
        """Print `text` (one or more lines) for good."""
        lines = [escape_text(line) for line in text.split("\n")]
        if self._is_tty:
            self._emit(self._line_prefix() + "".join(line + "\r\n" for line in lines))
            self._transient_shown = False
        else:
            self._emit("".join(line + "\n" for line in lines))

    def clear(self) -> None:
        """Erase a transient message, leaving the cursor at the start of its line."""
        if self._transient_shown:
            self._emit("\r\x1b[K")
            self._transient_shown = False

    def _columns(self) -> int:
        try:
            return os.get_terminal_size(self._stream.fileno()).columns
        except (OSError, ValueError):
            return DEFAULT_SIZE[0]

    def _line_prefix(self) -> str:
        return "\r\x1b[K" if self._transient_shown else "\r\n\x1b[K"

    def _emit(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.write(text)
            self._stream.flush()


# C0, DEL and C1 controls; bidirectional overrides and line separators, which
# can make text read differently from what it is; lone surrogates, which are
# undecodable bytes carried by errors="surrogateescape".
_UNSAFE: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]"
)


def escape_text(text: str) -> str:
    """Make far-side text safe to print on the local terminal.

    Controls become visible instead of acting: C0 as `^X` (ESC is `^[`), DEL
    as `^?`, C1 as `\\xNN`, surrogate-escaped bytes as `\\xNN`, other unsafe
    code points as `\\uNNNN`. The result is printable ASCII where it was
    changed, so escaping twice changes nothing.
    """
    return _UNSAFE.sub(_visible, text)


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x20:
        return "^" + chr(code + 0x40)
    if code == 0x7F:
        return "^?"
    if code <= 0x9F:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"
