"""TmuxManager and TmuxService against a real tmux server on a private socket."""

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import processes
from agent.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from agent.service.tmux import TmuxService
from agent.tmux import TmuxManager
from protos import agent_pb2 as pb

NO_CONTEXT: Any = None
BAD_NAMES = ["x; rm -rf ~", "a:b", "a.b", "-t", "", "a b", "$(id)", "é", "a" * 65, "a\nb"]


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A short path (a unix socket path is limited to 108 bytes); the server dies after."""
    path = Path(tempfile.mkdtemp(prefix="tether-tmux-"))
    yield path
    tmux = shutil.which("tmux")
    assert tmux is not None
    subprocess.run([tmux, "-S", str(path / "tmux.sock"), "kill-server"], capture_output=True)
    shutil.rmtree(path)


def run_with(state_dir: Path, body: Callable[[TmuxManager], Awaitable[None]]) -> None:
    async def main() -> None:
        async with TmuxManager(state_dir) as manager:
            await body(manager)

    asyncio.run(main())


async def tmux(manager: TmuxManager, *args: str) -> str:
    tmux_path = shutil.which("tmux")
    assert tmux_path is not None
    done = await processes.run([tmux_path, "-S", str(manager.socket_path), *args], timeout=10)
    assert done.returncode == 0, done.stderr
    return done.stdout.decode()


def test_create_list_rename_kill(state_dir: Path) -> None:
    async def body(manager: TmuxManager) -> None:
        assert await manager.list() == []
        info, created = await manager.create("main", None, 100, 30)
        assert created and (info.name, info.windows, info.attached) == ("main", 1, 0)
        assert info.created_unix > 0 and info.activity_unix >= info.created_unix
        assert (
            await tmux(manager, "list-windows", "-t", "=main", "-F", "#{window_width}") == "100\n"
        )
        again, created = await manager.create("main", None, 100, 30)
        assert not created and again.created_unix == info.created_unix
        await manager.create("main2")
        await manager.rename("main", "work")
        assert sorted(s.name for s in await manager.list()) == ["main2", "work"]
        await manager.kill("work")
        assert [s.name for s in await manager.list()] == ["main2"]

    run_with(state_dir, body)


def test_command_runs_inside_the_new_session(state_dir: Path) -> None:
    async def body(manager: TmuxManager) -> None:
        # $TMUX inside the pane points at the agent's server; the signal proves the command ran.
        await manager.create("job", "tmux wait-for -S job-started; exec sleep 600")
        await tmux(manager, "wait-for", "job-started")
        started = await tmux(manager, "list-panes", "-t", "=job", "-F", "#{pane_start_command}")
        assert "wait-for -S job-started" in started

    run_with(state_dir, body)


def test_config_sets_history_and_mouse_and_honours_the_users_file(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = state_dir / "home"
    home.mkdir()
    (home / ".tmux.conf").write_text("set -g prefix C-a\nset -g status-left-length 77\n")
    monkeypatch.setenv("HOME", str(home))

    async def body(manager: TmuxManager) -> None:
        await manager.create("main")
        options = (await tmux(manager, "show-options", "-g")).splitlines()
        for line in ("history-limit 50000", "mouse on", "prefix C-a", "status-left-length 77"):
            assert line in options

    run_with(state_dir, body)


def test_keys_are_left_alone_without_a_user_file(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(state_dir))

    async def body(manager: TmuxManager) -> None:
        await manager.create("main")
        options = (await tmux(manager, "show-options", "-g")).splitlines()
        assert "prefix C-b" in options and "history-limit 50000" in options

    run_with(state_dir, body)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused_before_tmux_runs(state_dir: Path, name: str) -> None:
    async def body(manager: TmuxManager) -> None:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: manager.create(name),
            lambda: manager.kill(name),
            lambda: manager.rename(name, "ok"),
            lambda: manager.rename("ok", name),
        ]
        for call in calls:
            with pytest.raises(InvalidArgument, match="bad tmux session name"):
                await call()
        with pytest.raises(InvalidArgument):
            manager.attach_argv(name, None, False)
        assert not manager.socket_path.exists()  # no tmux server was ever started

    run_with(state_dir, body)


def test_unknown_sessions_are_not_found(state_dir: Path) -> None:
    async def body(manager: TmuxManager) -> None:
        for server_running in (False, True):
            with pytest.raises(NotFound):
                await manager.kill("ghost")
            with pytest.raises(NotFound):
                await manager.rename("ghost", "spirit")
            if not server_running:
                await manager.create("main2")
        with pytest.raises(NotFound):  # exact match: "main" is not a prefix of "main2"
            await manager.kill("main")
        await manager.create("other")
        with pytest.raises(AlreadyExists):
            await manager.rename("main2", "other")

    run_with(state_dir, body)


def test_a_stale_socket_from_a_dead_server_is_no_sessions(state_dir: Path) -> None:
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(state_dir / "tmux.sock"))  # bound, never listening: as after kill -9

    async def body(manager: TmuxManager) -> None:
        assert await manager.list() == []
        with pytest.raises(NotFound):
            await manager.kill("main")
        assert (await manager.create("main"))[1]

    run_with(state_dir, body)


def test_missing_tmux_is_a_failed_precondition_with_a_fix(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = state_dir / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))

    async def body(manager: TmuxManager) -> None:
        for call in (manager.list, lambda: manager.create("main"), lambda: manager.kill("main")):
            with pytest.raises(FailedPrecondition, match="apt-get install tmux"):
                await call()
        with pytest.raises(FailedPrecondition, match="apt-get install tmux"):
            manager.attach_argv("main", None, False)

    run_with(state_dir, body)


_AGENT_THAT_DIES = """
import asyncio, os, signal, sys
from pathlib import Path
from agent.tmux import TmuxManager

async def main():
    async with TmuxManager(Path(sys.argv[1])) as manager:
        await manager.create("survivor", "exec sleep 600")
        os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


def test_sessions_outlive_the_agent(state_dir: Path) -> None:
    agent = subprocess.run(
        [sys.executable, "-c", _AGENT_THAT_DIES, str(state_dir)],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
    )
    assert agent.returncode == -9, agent.stderr

    async def body(manager: TmuxManager) -> None:
        assert [s.name for s in await manager.list()] == ["survivor"]
        pane_pid = await tmux(manager, "list-panes", "-t", "=survivor", "-F", "#{pane_pid}")
        os.kill(int(pane_pid), 0)  # the session's process is still there

    run_with(state_dir, body)


def _drain(fd: int) -> None:
    """Reads and drops a tmux client's screen output so it never blocks on a full PTY."""
    loop = asyncio.get_running_loop()

    def read() -> None:
        try:
            os.read(fd, 65536)
        except OSError:
            loop.remove_reader(fd)

    loop.add_reader(fd, read)


def test_attach_argv_creates_attaches_and_detaches_others_only_when_asked(
    state_dir: Path,
) -> None:
    async def attach(manager: TmuxManager, detach_others: bool) -> processes.Child:
        argv = manager.attach_argv("shared", None, detach_others)
        child = processes.spawn_pty(argv, env={}, cwd=None, cols=90, rows=20)
        _drain(child.master)
        await tmux(manager, "wait-for", "client-joined")
        return child

    async def body(manager: TmuxManager) -> None:
        await manager.create("keeps-server-up")
        await tmux(manager, "set-hook", "-g", "client-session-changed", "wait-for -S client-joined")
        first = await attach(manager, detach_others=False)
        sizes = await tmux(manager, "list-windows", "-t", "=shared", "-F", "#{window_width}")
        assert sizes == "90\n"  # the size of the attaching PTY
        second = await attach(manager, detach_others=False)
        assert {s.name: s.attached for s in await manager.list()}["shared"] == 2
        third = await attach(manager, detach_others=True)
        assert await asyncio.wait_for(first.wait(), 10) == 0
        assert await asyncio.wait_for(second.wait(), 10) == 0
        assert {s.name: s.attached for s in await manager.list()}["shared"] == 1
        await manager.kill("shared")
        assert await asyncio.wait_for(third.wait(), 10) == 0
        for child in (first, second, third):
            asyncio.get_running_loop().remove_reader(child.master)
            child.close_fds()

    run_with(state_dir, body)


def test_service_translates_requests(state_dir: Path) -> None:
    async def body(manager: TmuxManager) -> None:
        service = TmuxService(manager)
        size = pb.WindowSize(cols=120, rows=40)
        reply = await service.TmuxCreate(pb.TmuxCreateRequest(name="main", size=size), NO_CONTEXT)
        assert reply.created and reply.session.name == "main" and reply.session.windows == 1
        again = await service.TmuxCreate(pb.TmuxCreateRequest(name="main"), NO_CONTEXT)
        assert not again.created
        await service.TmuxRename(pb.TmuxRenameRequest(old_name="main", new_name="w"), NO_CONTEXT)
        listed = await service.TmuxList(pb.TmuxListRequest(), NO_CONTEXT)
        assert [s.name for s in listed.sessions] == ["w"]
        assert listed.sessions[0].created_unix == reply.session.created_unix
        await service.TmuxKill(pb.TmuxKillRequest(name="w"), NO_CONTEXT)
        assert not (await service.TmuxList(pb.TmuxListRequest(), NO_CONTEXT)).sessions
        with pytest.raises(NotFound):
            await service.TmuxKill(pb.TmuxKillRequest(name="w"), NO_CONTEXT)
        with pytest.raises(InvalidArgument):
            await service.TmuxCreate(pb.TmuxCreateRequest(name="x; rm -rf ~"), NO_CONTEXT)

    run_with(state_dir, body)
