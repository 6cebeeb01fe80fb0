"""The two real programs as processes, as a person runs them: `tether-agent
serve` and `tether`.

Each test gets its own laptop (XDG config and state dirs under tmp_path, so
runs and certificate pins never touch the real home) and its own agent
process on a loopback port. The connector is the console script installed
next to the interpreter running the tests.
"""

import asyncio
import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.agent_harness import TOKEN

TETHER = str(Path(sys.executable).parent / "tether")
# The longest any one CLI command in these tests may take before it is a hang.
COMMAND_TIMEOUT = 120.0


def write_token(path: Path, token: str = TOKEN) -> Path:
    path.write_text(token)
    path.chmod(0o600)
    return path


@dataclass
class AgentProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def agent_serving(
    home: Path, *extra: str, tls: bool = True, port: int = 0, protocol: int | None = None
) -> Iterator[AgentProcess]:
    """`tether-agent serve` on 127.0.0.1:`port` (0: a free one), stopped on exit.

    `protocol` makes it an agent of another protocol version (set before any
    agent module imports it). Its log goes to a file rather than to a pipe
    nobody reads, which would fill and stall the agent in a long test.
    """
    home.mkdir(parents=True, exist_ok=True)
    log = home / f"agent-{os.urandom(3).hex()}.log"
    program = ["-m", "agent"]
    if protocol is not None:
        setup = f"import protos.version as v; v.PROTOCOL_VERSION = {protocol}"
        program = ["-c", f"{setup}; from agent.cli import main; main()"]
    argv = [sys.executable, *program, "serve", "--listen", f"127.0.0.1:{port}"]
    argv += ["--token-file", str(write_token(home / "agent-token"))]
    argv += ["--state-dir", str(home / "agent-state"), *extra]
    if not tls:
        argv.append("--insecure-loopback")
    with log.open("wb") as log_file:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log_file)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        match = re.search(r"listening on [^ ]+:(\d+)", line)
        assert match, f"the agent did not start: {line!r}\n{log.read_text()}"
        yield AgentProcess(proc, int(match.group(1)), log)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


@dataclass
class Laptop:
    """The connector's side: its own config and state dirs, and a token file."""

    home: Path
    XDG_KEYS = ("XDG_CONFIG_HOME", "XDG_STATE_HOME")

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.token_file = write_token(self.home / "token")

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "XDG_CONFIG_HOME": str(self.home / "config"),
            "XDG_STATE_HOME": str(self.home / "state"),
            "PYTHONUNBUFFERED": "1",
        }

    def tether(
        self, *args: str, stdin: bytes = b"", timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [TETHER, *args], input=stdin, capture_output=True, env=self.env, timeout=timeout
        )

    def add_run(self, name: str, port: int, *, tls: bool = True) -> None:
        args = ["runs", "add", name, "--address", f"127.0.0.1:{port}"]
        args += ["--token-file", str(self.token_file)]
        if not tls:
            args.append("--insecure-loopback")
        done = self.tether(*args)
        assert done.returncode == 0, done.stderr.decode()

    async def start(self, *args: str) -> asyncio.subprocess.Process:
        """`tether ARGS` with pipes on all three streams, for tests that drive
        a proxy on the same event loop meanwhile."""
        return await asyncio.create_subprocess_exec(
            TETHER,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
        )


@dataclass
class Finished:
    code: int
    stdout: bytes
    stderr: bytes


async def finish(proc: asyncio.subprocess.Process, stdin: bytes = b"") -> Finished:
    """Feeds `stdin` (when it is a pipe), closes it, and collects everything
    until the exit."""
    async with asyncio.timeout(COMMAND_TIMEOUT):
        stdout, stderr = await proc.communicate(stdin if proc.stdin else None)
    assert proc.returncode is not None
    return Finished(proc.returncode, stdout, stderr)


async def read_until(stream: asyncio.StreamReader | None, needle: bytes) -> bytes:
    """Reads lines from `stream` until one holds `needle`; returns all read."""
    assert stream is not None
    seen = b""
    async with asyncio.timeout(COMMAND_TIMEOUT):
        while needle not in seen:
            line = await stream.readline()
            assert line, f"the stream ended before {needle!r}: {seen!r}"
            seen += line
    return seen
