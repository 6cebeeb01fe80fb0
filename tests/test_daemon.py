"""The per-user daemon: background forwards that survive the CLI and a restart."""

import asyncio
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector import daemon_client
from connector.errors import ConfigError
from tests.cli_procs import Laptop, agent_serving
from tests.forward_harness import echo, free_port, target


class DaemonLaptop(Laptop):
    """A Laptop whose runtime dir (where the daemon's socket lives) is its own."""

    @property
    def env(self) -> dict[str, str]:
        runtime = self.home / "runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        return {**super().env, "XDG_RUNTIME_DIR": str(runtime)}


@pytest.fixture
def laptop(tmp_path: Path) -> Iterator[DaemonLaptop]:
    lap = DaemonLaptop(tmp_path / "laptop")
    yield lap
    lap.tether("daemon", "stop", timeout=20)


def round_trip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("command", [("forward", "list"), ("daemon", "status")])
def test_forward_list_without_a_daemon_says_so(
    laptop: DaemonLaptop, command: tuple[str, str]
) -> None:
    done = laptop.tether(*command)
    assert done.returncode == 1
    assert b"daemon is not running" in done.stderr
    assert b"tether daemon start" in done.stderr


def test_a_socket_owned_by_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a file owned by another user needs root")
    runtime = tmp_path / "runtime"
    (runtime / "tether").mkdir(parents=True, mode=0o700)
    stranger = runtime / "tether" / "daemon.sock"
    stranger.touch(mode=0o600)
    os.chown(stranger, 65534, 65534)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))

    async def ask() -> None:
        async with daemon_client.daemon_stub():
            pass

    with pytest.raises(ConfigError, match="belongs to uid 65534"):
        asyncio.run(ask())


def test_background_forwards_survive_a_daemon_restart(tmp_path: Path, laptop: DaemonLaptop) -> None:
    async def main() -> None:
        async with target(echo) as target_port:
            with agent_serving(tmp_path / "agent") as agent:
                laptop.add_run("r", agent.port)
                local = free_port()
                spec = f"{local}:{target_port}"
                done = laptop.tether("forward", "r", spec, "--background")
                assert done.returncode == 0, done.stderr.decode()
                assert f"-> localhost:{local}".encode() in done.stdout
                payload = os.urandom(300_000)
                assert await asyncio.to_thread(round_trip, local, payload) == payload

                listed = laptop.tether("forward", "list", "--json")
                assert listed.returncode == 0, listed.stderr.decode()
                [entry] = json.loads(listed.stdout)
                assert (entry["run"], entry["spec"], entry["local_port"]) == ("r", spec, local)

                assert laptop.tether("daemon", "stop").returncode == 0
                with pytest.raises(OSError):
                    socket.create_connection(("127.0.0.1", local), timeout=2).close()
                assert laptop.tether("daemon", "start").returncode == 0
                assert b"1 forwards" in laptop.tether("daemon", "status").stdout
                assert await asyncio.to_thread(round_trip, local, payload) == payload

                stopped = laptop.tether("forward", "stop", "r", spec)
                assert stopped.returncode == 0, stopped.stderr.decode()
                with pytest.raises(OSError):
                    socket.create_connection(("127.0.0.1", local), timeout=2).close()
                again = laptop.tether("forward", "stop", "r")
                assert again.returncode == 2
                assert b"no background forwards of run r" in again.stderr

    asyncio.run(main())


def test_a_background_forward_on_a_port_in_use_is_refused(
    tmp_path: Path, laptop: DaemonLaptop
) -> None:
    with agent_serving(tmp_path / "agent") as agent, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        laptop.add_run("r", agent.port)
        done = laptop.tether("forward", "r", f"{port}:80", "--background")
    assert done.returncode == 1
    assert f"local port {port} is already in use".encode() in done.stderr
    assert b"no background forwards" in laptop.tether("forward", "list").stdout
