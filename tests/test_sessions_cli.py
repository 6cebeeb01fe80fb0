"""Sessions outlive their client: `~.`, `tether sessions`, `connect --attach`."""

import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

from tests.cli_procs import TETHER, Laptop, agent_serving


class Terminal:
    """`tether ARGS` on a pty of its own, read and typed into like a person would."""

    def __init__(self, laptop: Laptop, *args: str) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [TETHER, *args], stdin=slave, stdout=slave, stderr=slave, env=laptop.env
        )
        os.close(slave)
        self.seen = b""

    def wait_for(self, pattern: bytes, timeout: float = 30.0) -> re.Match[bytes]:
        deadline = time.monotonic() + timeout
        while not (match := re.search(pattern, self.seen)):
            left = deadline - time.monotonic()
            assert left > 0, f"{pattern!r} not seen in {self.seen[-500:]!r}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:  # the command ended and its side of the pty closed
                    assert re.search(pattern, self.seen), f"{pattern!r} not in {self.seen!r}"
        return match

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def exit_code(self) -> int:
        code = self.proc.wait(30)
        os.close(self.master)
        return code


def test_a_session_left_with_tilde_dot_is_listed_attached_again_and_killed(
    tmp_path: Path,
) -> None:
    laptop = Laptop(tmp_path / "laptop")
    with agent_serving(tmp_path / "agent") as agent:
        laptop.add_run("r", agent.port)
        first = Terminal(laptop, "connect", "r", "--command", "echo fir''st-line; exec cat")
        first.wait_for(b"first-line")
        first.type(b"\r~.")
        hint = first.wait_for(rb"--attach ([0-9a-f]{32})")
        assert first.exit_code() == 255
        session_id = hint.group(1).decode()

        listed = laptop.tether("sessions", "ls", "r")
        assert listed.returncode == 0, listed.stderr.decode()
        assert re.search(rf"{session_id}\s+running\s+detached".encode(), listed.stdout)

        again = Terminal(laptop, "connect", "r", "--attach", session_id)
        again.wait_for(b"first-line")  # replayed from the agent's buffer
        again.type(b"typed-after-attach\r")
        again.wait_for(b"typed-after-attach\r\n.*typed-after-attach")

        killed = laptop.tether("sessions", "kill", "r", session_id)
        assert killed.returncode == 0, killed.stderr.decode()
        assert again.exit_code() == 129  # the cat ended by the kill's SIGHUP
        gone = laptop.tether("sessions", "kill", "r", session_id)
        assert gone.returncode == 1
        assert b"NOT_FOUND" in gone.stderr


def test_attaching_to_an_unknown_session_says_it_is_gone(tmp_path: Path) -> None:
    laptop = Laptop(tmp_path / "laptop")
    with agent_serving(tmp_path / "agent") as agent:
        laptop.add_run("r", agent.port)
        term = Terminal(laptop, "connect", "r", "--attach", "0" * 32)
        term.wait_for(b"session is gone")
        assert term.exit_code() == 255
