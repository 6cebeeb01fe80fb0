"""Real agents for tests that drive the `tether` commands the way a person does.

A command runs its own event loop (asyncio.run), so each agent here serves
from an event loop of its own on a background thread: the command under test
talks to it over loopback exactly as it would to a container. The agent gets
a fake NVML, which cannot be injected into a subprocess.
"""

import asyncio
import contextlib
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agent.config import AgentConfig
from agent.server import AgentServer
from connector import config
from connector.cli.app import app
from connector.config import RunConfig
from tests.agent_harness import TOKEN

START_TIMEOUT = 30.0


@dataclass
class ThreadAgent:
    server: AgentServer
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def stop(self) -> None:
        """Asks for the graceful stop, as SIGTERM would, and waits for it."""
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.server.stop_requested.set)
        self.thread.join(START_TIMEOUT)

    def stopped(self) -> bool:
        """Whether the agent has stopped serving (after a Stop call, say)."""
        self.thread.join(START_TIMEOUT)
        return not self.thread.is_alive()


@contextlib.contextmanager
def agent_thread(nvml: Any = None, **overrides: Any) -> Iterator[ThreadAgent]:
    """An agent that serves until it is asked to stop, as `tether-agent serve` does."""
    with tempfile.TemporaryDirectory(prefix="tc-") as state:
        cfg = AgentConfig(
            host="127.0.0.1",
            port=0,
            token=TOKEN.encode(),
            insecure_loopback=True,
            state_dir=Path(state),
            **overrides,
        )
        loop = asyncio.new_event_loop()
        ready: list[AgentServer] = []
        up = threading.Event()

        async def serve() -> None:
            server = AgentServer(cfg, nvml_module=nvml)
            async with server:
                ready.append(server)
                up.set()
                await server.stop_requested.wait()

        def run() -> None:
            try:
                loop.run_until_complete(serve())
            finally:
                up.set()
                loop.close()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        assert up.wait(START_TIMEOUT) and ready, "the agent did not start"
        agent = ThreadAgent(ready[0], loop, thread)
        try:
            yield agent
        finally:
            agent.stop()
            tmux_socket = Path(state) / "tmux.sock"
            if tmux_socket.exists():
                subprocess.run(["tmux", "-S", str(tmux_socket), "kill-server"], check=False)


@pytest.fixture
def laptop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The connector's config and state in tmp_path, a token file, and a wide
    terminal so that tables are not cut."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("COLUMNS", "250")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    return token_file


def add_run(name: str, token_file: Path, *addresses: str) -> RunConfig:
    """A run whose rank N is at addresses[N]."""
    run = RunConfig(
        name=name,
        address=addresses[0],
        token_file=str(token_file),
        insecure_loopback=True,
        rank_addresses={rank: address for rank, address in enumerate(addresses) if rank},
    )
    config.add_run(run)
    return run


@dataclass
class Result:
    code: int
    out: str
    err: str


def tether(*args: str, input: str | None = None) -> Result:
    result = CliRunner().invoke(app, list(args), input=input)
    return Result(result.exit_code, result.stdout, result.stderr)
