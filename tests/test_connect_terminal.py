"""`tether connect` driven through a real terminal: a tmux pane on a private
tmux server, typed into with send-keys and read with capture-pane.

The agent serves TLS, as in a real run; the first connect pins its
certificate. Reading the screen is polling by nature (a terminal has no
"changed" event), so every wait polls capture-pane against a deadline.
"""

import asyncio
import contextlib
import re
import shlex
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.cli_procs import TETHER, Laptop, agent_serving
from tests.faultproxy import FaultProxy

SHELL = "PS1='tp> ' bash --norc --noprofile -i"
PROMPT = r"^tp> *$"
SCREEN_TIMEOUT = 30.0
POLL_SECONDS = 0.05


class Pane:
    """One detached tmux session on a tmux server of its own."""

    def __init__(self, socket: Path, name: str = "t") -> None:
        self.socket = socket
        self.name = name

    def tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-f", "/dev/null", "-S", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return done.stdout

    def start(self, command: str) -> None:
        self.tmux("new-session", "-d", "-s", self.name, "-x", "100", "-y", "30", command)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", self.name, "-l", text)

    def press(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.name, *keys)

    def run(self, line: str) -> None:
        self.type(line)
        self.press("Enter")

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-t", self.name)

    async def wait_for(self, pattern: str, count: int = 1) -> str:
        """Polls the screen until `pattern` (a multi-line regex) shows `count` times."""
        deadline = time.monotonic() + SCREEN_TIMEOUT
        screen = ""
        while time.monotonic() < deadline:
            screen = await asyncio.to_thread(self.screen)
            if len(re.findall(pattern, screen, re.MULTILINE)) >= count:
                return screen
            await asyncio.sleep(POLL_SECONDS)
        raise AssertionError(f"{pattern!r} did not show {count} time(s); the screen:\n{screen}")


@contextlib.contextmanager
def tmux_pane() -> Iterator[Pane]:
    # A socket path must stay short (108 bytes), which pytest's tmp_path may not.
    with tempfile.TemporaryDirectory(prefix="tt-") as folder:
        pane = Pane(Path(folder) / "sock")
        try:
            yield pane
        finally:
            with contextlib.suppress(subprocess.SubprocessError):
                pane.tmux("kill-server")


def connect_command(laptop: Laptop, *args: str) -> str:
    """The pane's command: `tether connect`, then its exit code for the test to read."""
    env = " ".join(f"{key}={shlex.quote(laptop.env[key])}" for key in laptop.XDG_KEYS)
    tether = shlex.join([TETHER, "connect", *args, "--command", SHELL])
    return f"env {env} {tether}; echo EXIT=$?; sleep 60"


def test_connect_in_a_real_terminal(tmp_path: Path) -> None:
    """Prompt, typing, ^C, window size, and the remote exit code."""

    async def main() -> None:
        laptop = Laptop(tmp_path / "laptop")
        with agent_serving(tmp_path / "agent") as agent, tmux_pane() as pane:
            laptop.add_run("run", agent.port)
            pane.start(connect_command(laptop, "run"))
            await pane.wait_for(PROMPT)
            pane.run("echo hi-$((6*7))")
            await pane.wait_for(r"^hi-42$")

            pane.run("sleep 100; echo slept")
            await pane.wait_for(r"^tp> sleep 100")
            pane.press("C-c")
            await pane.wait_for(r"^\^C *\ntp> *$")
            pane.run("echo after-$((1+1))")
            screen = await pane.wait_for(r"^after-2$")
            assert "slept" not in screen.replace("echo slept", "")

            pane.run("stty size")
            await pane.wait_for(r"^30 100$")
            pane.tmux("resize-window", "-t", pane.name, "-x", "120", "-y", "40")
            pane.run("clear; stty size")
            await pane.wait_for(r"^40 120$")

            pane.run("exit 3")
            await pane.wait_for(r"^EXIT=3$")
        assert "fingerprint" in (laptop.home / "config/tether/config.toml").read_text()

    asyncio.run(main())


def test_tilde_dot_disconnects_with_255(tmp_path: Path) -> None:
    async def main() -> None:
        laptop = Laptop(tmp_path / "laptop")
        with agent_serving(tmp_path / "agent") as agent, tmux_pane() as pane:
            laptop.add_run("run", agent.port)
            pane.start(connect_command(laptop, "run"))
            await pane.wait_for(PROMPT)
            pane.press("Enter")
            await pane.wait_for(PROMPT, count=2)
            pane.type("~.")
            await pane.wait_for(r"EXIT=255$")

    asyncio.run(main())


def test_tilde_dot_leaves_an_unreachable_agent_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        laptop = Laptop(tmp_path / "laptop")
        async with FaultProxy("127.0.0.1", 9) as proxy:  # nothing listens on the target
            proxy.refuse(True)
            laptop.add_run("run", proxy.port)
            with tmux_pane() as pane:
                pane.start(connect_command(laptop, "run"))
                await pane.wait_for(r"tether: connecting \(\d+s\)")
                pane.type("~.")
                await pane.wait_for(r"EXIT=255$")

    asyncio.run(main())


def test_a_cut_link_resumes_and_keystrokes_typed_in_the_outage_arrive_once(
    tmp_path: Path,
) -> None:
    """A cut resumes with "resumed, nothing lost"; a dead path shows
    "reconnecting" until it comes back, and commands typed meanwhile, before
    and after the link noticed, run once each, after the resume."""

    async def main() -> None:
        laptop = Laptop(tmp_path / "laptop")
        with agent_serving(tmp_path / "agent") as agent, tmux_pane() as pane:
            async with FaultProxy("127.0.0.1", agent.port) as proxy:
                laptop.add_run("run", proxy.port)
                pane.start(connect_command(laptop, "run"))
                await pane.wait_for(PROMPT)

                proxy.cut()
                # "reconnecting" is erased in place by the resume, which may
                # come before the screen is read; the dead path below keeps it.
                await pane.wait_for(r"tether: resumed, nothing lost")
                pane.run("echo typed-$((2+3))")
                await pane.wait_for(r"^typed-5$")

                pane.run("clear")
                await pane.wait_for(r"\Atp> *$")
                proxy.blackhole(True)
                pane.run("echo early-$((3+4))")  # before the link notices
                await pane.wait_for(r"tether: reconnecting")
                pane.run("echo late-$((4+4))")
                proxy.blackhole(False)
                await pane.wait_for(r"tether: resumed, nothing lost")
                await pane.wait_for(r"^late-8 *$")
                pane.run("echo done-$((4+5))")
                screen = await pane.wait_for(r"^done-9 *$")
                for line in ("early-7", "late-8"):
                    assert len(re.findall(f"^{line} *$", screen, re.MULTILINE)) == 1, screen
                pane.run("exit")
                await pane.wait_for(r"^EXIT=0$")

    asyncio.run(main())
