"""The connector's local terminal: escapes, status text, raw mode on a real pty."""

from __future__ import annotations

import asyncio
import fcntl
import io
import itertools
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.escapes import Action, Disconnect, EscapeFilter, LocalMessage
from connector.terminal import DEFAULT_SIZE, RawTerminal, StatusLine, escape_text

ROOT = Path(__file__).resolve().parents[1]


def merged(actions: list[Action]) -> list[Action]:
    """Join adjacent bytes, so results compare whatever the read boundaries were."""
    out: list[Action] = []
    for action in actions:
        if isinstance(action, bytes) and out and isinstance(out[-1], bytes):
            out[-1] += action
        else:
            out.append(action)
    return out


def feed_all(escapes: EscapeFilter, *chunks: bytes) -> list[Action]:
    return merged([action for chunk in chunks for action in escapes.feed(chunk)])


# --- escapes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ((b"~.",), [Disconnect()]),
        ((b"ls\r~.",), [b"ls\r", Disconnect()]),
        ((b"ls\n~.",), [b"ls\n", Disconnect()]),
        ((b"ls\r", b"~", b"."), [b"ls\r", Disconnect()]),
        ((b"ls\r~", b".after"), [b"ls\r", Disconnect()]),
        ((b"~.", b"later"), [Disconnect()]),
        ((b"a~.",), [b"a~."]),
        ((b"~~",), [b"~"]),
        ((b"~", b"~", b"~."), [b"~~."]),
        ((b"~x",), [b"~x"]),
        ((b"~\r~.",), [b"~\r", Disconnect()]),
        ((b"echo a~b\r",), [b"echo a~b\r"]),
    ],
)
def test_escapes_at_line_start(chunks: tuple[bytes, ...], expected: list[Action]) -> None:
    assert feed_all(EscapeFilter(), *chunks) == expected


def test_help_lists_the_escapes_and_stays_at_line_start() -> None:
    actions = feed_all(EscapeFilter(), b"\r~?~.")
    assert actions[0] == b"\r"
    assert isinstance(actions[1], LocalMessage)
    assert "~." in actions[1].text and "~?" in actions[1].text and "~~" in actions[1].text
    assert actions[2:] == [Disconnect()]


def test_disabled_escapes_pass_everything() -> None:
    escapes = EscapeFilter("none")
    assert not escapes.enabled
    assert feed_all(escapes, b"~.", b"\r~?", b"~~") == [b"~.\r~?~~"]


def test_configured_escape_character() -> None:
    escapes = EscapeFilter("^]")
    assert feed_all(escapes, b"~.\r\x1d?") == [b"~.\r", LocalMessage(escapes.help_text())]
    assert "^]." in escapes.help_text()
    assert feed_all(EscapeFilter("%"), b"%%x\r%.") == [b"%x\r", Disconnect()]


@pytest.mark.parametrize("spec", ["", "ab", "é", "^é"])
def test_bad_escape_character_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="escape character"):
        EscapeFilter(spec)


@given(
    data=st.binary(max_size=40).map(lambda b: bytes(b"~.?\rx\n"[c % 6] for c in b)),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=6),
)
def test_read_boundaries_do_not_matter(data: bytes, cuts: list[int]) -> None:
    bounds = [0, *sorted(min(cut, len(data)) for cut in cuts), len(data)]
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    assert feed_all(EscapeFilter(), *chunks) == feed_all(EscapeFilter(), data)


# --- escape_text and StatusLine --------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("tether: resumed, nothing lost…", "tether: resumed, nothing lost…"),
        ("\x1b[31mred\x1b]0;title\x07", "^[[31mred^[]0;title^G"),
        ("\x00\t\n\r\x7f", "^@^I^J^M^?"),
        ("\x9b2J\x85", "\\x9b2J\\x85"),
        ("abc\u202edef\u2028", "abc\\u202edef\\u2028"),
        (b"bad \xff\xfe".decode("utf-8", "surrogateescape"), "bad \\xff\\xfe"),
    ],
)
def test_escape_text(text: str, shown: str) -> None:
    assert escape_text(text) == shown


@given(st.text())
def test_escaped_text_has_no_controls_and_is_stable(text: str) -> None:
    shown = escape_text(text)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in shown)
    assert escape_text(shown) == shown


class TtyBuffer(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_status_line_on_a_tty_replaces_itself_and_ends_with_crlf() -> None:
    stream = TtyBuffer()
    status = StatusLine(stream)
    status.update("tether: reconnecting (1s)…")
    status.update("tether: reconnecting (3s)\x1b[2J")
    status.write("tether: resumed, 1234 bytes lost")
    status.write("a\nb")
    assert stream.getvalue() == (
        "\r\n\x1b[Ktether: reconnecting (1s)…"
        "\r\x1b[Ktether: reconnecting (3s)^[[2J"
        "\r\x1b[Ktether: resumed, 1234 bytes lost\r\n"
        "\r\n\x1b[Ka\r\nb\r\n"
    )


def test_status_line_clear_erases_only_its_own_text() -> None:
    stream = TtyBuffer()
    status = StatusLine(stream)
    status.clear()
    status.update("tether: reconnecting (1s)…")
    status.clear()
    status.clear()
    assert stream.getvalue() == "\r\n\x1b[Ktether: reconnecting (1s)…\r\x1b[K"


def test_status_line_to_a_file_writes_plain_lines() -> None:
    stream = io.StringIO()
    status = StatusLine(stream)
    status.update("tether: reconnecting (1s)…")
    status.clear()
    status.write("tether: resumed, nothing lost\n\x1b!")
    assert stream.getvalue() == ("tether: reconnecting (1s)…\ntether: resumed, nothing lost\n^[!\n")


# --- raw mode on a real pseudo-terminal ------------------------------------

CHILD = textwrap.dedent(
    """
    import asyncio, os, sys
    from connector.terminal import RawTerminal

    mode, ending = sys.argv[1], sys.argv[2]

    def say(text):
        print(text, flush=True)

    def say_size(size):
        say(f"size {size[0]} {size[1]}")

    def body(term):
        say(f"ready {term.is_tty} {term.size()[0]} {term.size()[1]}")
        os.read(0, 1)  # the parent types a byte, or signals us while we wait
        if ending == "raise":
            raise RuntimeError("boom")

    async def run_async():
        loop = asyncio.get_running_loop()
        resized = loop.create_future()
        async with RawTerminal(on_resize=resized.set_result) as term:
            if ending == "winch":
                say(f"ready {term.is_tty} {term.size()[0]} {term.size()[1]}")
                say_size(await resized)
            else:
                body(term)

    if mode == "async":
        asyncio.run(run_async())
    elif ending == "leak":
        body(RawTerminal().__enter__())
    else:
        with RawTerminal(on_resize=say_size) as term:
            body(term)
    """
)


def set_size(fd: int, columns: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


@contextmanager
def unusual_pty() -> Iterator[tuple[int, int, list[object]]]:
    """A pty pair whose slave has settings no default would give back by luck."""
    master, slave = pty.openpty()
    try:
        attrs = termios.tcgetattr(slave)
        attrs[3] &= ~termios.ECHOCTL
        attrs[6][termios.VKILL] = b"\x0b"
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        set_size(master, 90, 30)
        yield master, slave, termios.tcgetattr(slave)
    finally:
        os.close(master)
        os.close(slave)


def start_child(slave: int, mode: str, ending: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, ending],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def wait_until_raw(child: subprocess.Popen[str], slave: int) -> None:
    assert child.stdout is not None
    assert child.stdout.readline() == "ready True 90 30\n"
    lflag = termios.tcgetattr(slave)[3]
    assert lflag & (termios.ICANON | termios.ECHO | termios.ISIG) == 0


@pytest.mark.parametrize(
    ("mode", "ending", "returncode"),
    [
        ("sync", "exit", 0),
        ("sync", "raise", 1),
        ("sync", "sigint", -signal.SIGINT),
        ("sync", "sigterm", 128 + signal.SIGTERM),
        ("sync", "sighup", 128 + signal.SIGHUP),
        ("sync", "leak", 0),
        ("async", "exit", 0),
        ("async", "raise", 1),
        ("async", "sigterm", 128 + signal.SIGTERM),
        ("async", "sighup", 128 + signal.SIGHUP),
    ],
)
def test_raw_mode_is_restored_on_every_exit(mode: str, ending: str, returncode: int) -> None:
    with unusual_pty() as (master, slave, original):
        child = start_child(slave, mode, ending)
        wait_until_raw(child, slave)
        if ending.startswith("sig"):
            child.send_signal(signal.Signals[ending.upper()])
        else:
            os.write(master, b"x")
        _, stderr = child.communicate(timeout=60)
        assert child.returncode == returncode, stderr
        assert termios.tcgetattr(slave) == original


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sigwinch_reports_the_new_size(mode: str) -> None:
    with unusual_pty() as (master, slave, original):
        child = start_child(slave, mode, "winch")
        wait_until_raw(child, slave)
        set_size(master, 132, 43)
        child.send_signal(signal.SIGWINCH)
        assert child.stdout is not None
        assert child.stdout.readline() == "size 132 43\n"
        os.write(master, b"x")  # ends the sync child; the async one has already left
        _, stderr = child.communicate(timeout=60)
        assert child.returncode == 0, stderr
        assert termios.tcgetattr(slave) == original


def test_not_a_tty_is_left_alone() -> None:
    read_end, write_end = os.pipe()
    try:
        term = RawTerminal(read_end, on_resize=lambda size: None)
        before = signal.getsignal(signal.SIGTERM)
        assert not term.is_tty
        assert term.size() == DEFAULT_SIZE
        with term:
            assert signal.getsignal(signal.SIGTERM) is before

        async def enter_async() -> None:
            async with term:
                assert signal.getsignal(signal.SIGWINCH) is signal.SIG_DFL

        asyncio.run(enter_async())
    finally:
        os.close(read_end)
        os.close(write_end)
