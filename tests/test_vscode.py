"""The VS Code tunnel bootstrap, against a stand-in `code` served from a loopback HTTP server."""

import asyncio
import hashlib
import json
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agent.errors import FailedPrecondition, InvalidArgument, Unavailable
from agent.service.vscode import VscodeService
from agent.vscode import Error, Event, Log, Login, Ready, RestartPolicy, parse_line
from agent.vscode_cli import CliSource, Progress, default_cli_url, locate_cli
from agent.vscode_manager import VscodeManager, check_tunnel_name, default_tunnel_name
from protos import agent_pb2 as pb
from tests.vscode_harness import Downloads, fake_cli_program, tarball

FAST = RestartPolicy(first_delay=0.01, max_delay=0.05, max_quick_exits=3)
E = TypeVar("E")


@pytest.fixture
def installed_cli(tmp_path: Path) -> str:
    path = tmp_path / "installed" / "code"
    path.parent.mkdir()
    path.write_bytes(fake_cli_program())
    path.chmod(0o755)
    return str(path)


def calls(state: Path) -> list[dict[str, Any]]:
    lines = (state / "calls.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def run(coro: Any) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(60):
            return await coro

    return asyncio.run(bounded())


async def next_of(events: AsyncIterator[Event], kind: type[E]) -> E:
    async for event in events:
        if isinstance(event, kind):
            return event
    raise AssertionError(f"the events ended before a {kind.__name__}")


def no_progress(event: Progress) -> None:
    pass


# ---------------------------------------------------------------- the CLI


def test_default_url_is_the_static_stable_build_for_this_arch() -> None:
    base = "https://update.code.visualstudio.com/latest"
    assert default_cli_url("Linux", "x86_64") == f"{base}/cli-alpine-x64/stable"
    assert default_cli_url("Linux", "aarch64") == f"{base}/cli-alpine-arm64/stable"
    assert default_cli_url("Linux", "armv7l") == f"{base}/cli-linux-armhf/stable"
    with pytest.raises(FailedPrecondition, match="no default VS Code CLI download"):
        default_cli_url("Linux", "mips")


def test_download_extracts_caches_and_reports_progress(
    tmp_path: Path, downloads: Downloads
) -> None:
    archive = tarball({"code": fake_cli_program()})
    url = downloads.serve("/cli", archive)
    source = CliSource(
        tmp_path / "vscode", url=url, sha256=hashlib.sha256(archive).hexdigest(), search_path=""
    )
    seen: list[Progress] = []
    path = run(locate_cli(source, seen.append))
    assert path == str(tmp_path / "vscode" / "bin" / "code")
    version = subprocess.run(
        [path, "--version"],
        capture_output=True,
        text=True,
        check=True,
        env={"FAKE_CODE_STATE": str(tmp_path)},
    )
    assert version.stdout.startswith("1.99.0")
    downloaded = [p for p in seen if p.stage == "download"]
    assert downloaded[0] == Progress("download", 0, len(archive))
    assert downloaded[-1] == Progress("download", len(archive), len(archive))
    assert downloads.hits == 1

    again: list[Progress] = []
    assert run(locate_cli(source, again.append)) == path
    assert downloads.hits == 1 and again == []


def test_configured_path_and_path_search_come_before_the_cache(
    tmp_path: Path, installed_cli: str
) -> None:
    source = CliSource(tmp_path / "vscode", path=installed_cli, url="https://unused.invalid/")
    assert run(locate_cli(source, no_progress)) == installed_cli
    on_path = CliSource(tmp_path / "vscode", search_path=str(Path(installed_cli).parent))
    assert run(locate_cli(on_path, no_progress)) == installed_cli
    missing = CliSource(tmp_path / "vscode", path=str(tmp_path / "nope"))
    with pytest.raises(FailedPrecondition, match="missing or not executable"):
        run(locate_cli(missing, no_progress))


def test_unreachable_url_is_unavailable_naming_url_and_reason(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cli"
    source = CliSource(tmp_path / "vscode", url=url, search_path="")
    with pytest.raises(Unavailable, match=f"{url}.*refused"):
        run(locate_cli(source, no_progress))


def test_missing_download_and_plain_http_beyond_loopback(
    tmp_path: Path, downloads: Downloads
) -> None:
    missing = CliSource(tmp_path / "vscode", url=downloads.url("/nope"), search_path="")
    with pytest.raises(Unavailable, match="HTTP 404"):
        run(locate_cli(missing, no_progress))
    insecure = CliSource(tmp_path / "vscode", url="http://example.com/cli", search_path="")
    with pytest.raises(FailedPrecondition, match="only https"):
        run(locate_cli(insecure, no_progress))


def test_corrupt_tarball_is_a_clear_error_and_caches_nothing(
    tmp_path: Path, downloads: Downloads
) -> None:
    archive = tarball({"code": fake_cli_program()})
    url = downloads.serve("/cli", archive[: len(archive) // 2])
    source = CliSource(tmp_path / "vscode", url=url, search_path="")
    with pytest.raises(Unavailable, match="not a valid tar archive"):
        run(locate_cli(source, no_progress))
    assert not source.cached_cli.exists()
    assert [p.name for p in source.cache_dir.iterdir()] == []


def test_checksum_mismatch_names_both_digests(tmp_path: Path, downloads: Downloads) -> None:
    archive = tarball({"code": fake_cli_program()})
    source = CliSource(
        tmp_path / "vscode", url=downloads.serve("/cli", archive), sha256="0" * 64, search_path=""
    )
    actual = hashlib.sha256(archive).hexdigest()
    with pytest.raises(FailedPrecondition, match=f"expected sha256 {'0' * 64}, got {actual}"):
        run(locate_cli(source, no_progress))
    assert not source.cached_cli.exists()


@pytest.mark.parametrize("member", ["../escape", "/abs/code"])
def test_archive_members_outside_the_directory_are_refused(
    tmp_path: Path, downloads: Downloads, member: str
) -> None:
    archive = tarball({member: b"x", "code": fake_cli_program()})
    source = CliSource(tmp_path / "cache", url=downloads.serve("/cli", archive), search_path="")
    with pytest.raises(Unavailable, match="unsafe member"):
        run(locate_cli(source, no_progress))
    assert not (tmp_path / "escape").exists() and not source.cached_cli.exists()


def test_default_tunnel_names_fit_vscode_rules() -> None:
    assert default_tunnel_name("llama-pretrain", 3) == "llama-pretrain-r3"
    assert default_tunnel_name("My_Run.2024!", 0) == "my-run-2024-r0"
    first = default_tunnel_name("a-very-long-training-run-name-one", 12)
    second = default_tunnel_name("a-very-long-training-run-name-two", 12)
    assert first != second
    for name in (first, second, default_tunnel_name("---", 4_000_000_000)):
        assert len(name) <= 20
        check_tunnel_name(name)
    for bad in ("", "-lead", "has space", "x" * 21, "dot.ted"):
        with pytest.raises(InvalidArgument, match="not a valid VS Code tunnel name"):
            check_tunnel_name(bad)


def test_cli_output_becomes_events_with_control_characters_escaped() -> None:
    login = (
        "To grant access to the server, please log into https://github.com/login/device"
        " and use code AB12-CD34"
    )
    assert parse_line(login + "\n", "n") == Login("https://github.com/login/device", "AB12-CD34")
    ready = "Open this link in your browser https://vscode.dev/tunnel/n/home/me"
    assert parse_line(ready, "n") == Ready("n", "https://vscode.dev/tunnel/n/home/me")
    assert parse_line("[2024-05-01 10:00:00] error \x1b[31mbad\x07", "n") == Error(
        "[2024-05-01 10:00:00] error \\x1b[31mbad\\x07"
    )
    assert parse_line("* Visual Studio Code Server", "n") == Log("* Visual Studio Code Server")
    assert parse_line("\r\n", "n") is None


# ---------------------------------------------------------------- the tunnel


def test_tunnel_downloads_logs_in_is_ready_and_unregisters_on_stop(
    tmp_path: Path, downloads: Downloads, fake_state: Path
) -> None:
    archive = tarball({"code": fake_cli_program()})
    source = CliSource(tmp_path / "vscode", url=downloads.serve("/cli", archive), search_path="")
    data_dir = str(tmp_path / "data")

    async def scenario() -> None:
        async with VscodeManager(source, "run-r0", cli_data_dir=data_dir, policy=FAST) as manager:
            tunnel = await manager.start()
            events = tunnel.events()
            progress = await next_of(events, Progress)
            assert progress.stage == "download"
            login = await next_of(events, Login)
            assert login == Login("https://github.com/login/device", "ABCD-1234")
            assert manager.status().login == login
            (fake_state / "approve").touch()
            ready = await next_of(events, Ready)
            assert ready == Ready("run-r0", "https://vscode.dev/tunnel/run-r0/home/fake")
            assert manager.status().url == ready.url and manager.status().login is None
            await manager.stop()
            assert [e async for e in events if isinstance(e, Ready | Login)] == []
            assert not manager.status().running

    run(scenario())
    tunnel_call, unregister_call = calls(fake_state)
    assert tunnel_call["argv"] == [
        "tunnel", "--accept-server-license-terms", "--no-sleep", "--name", "run-r0",
        "--cli-data-dir", data_dir,
    ]  # fmt: skip
    assert tunnel_call["keychain"] == "1"
    assert unregister_call["argv"] == ["tunnel", "unregister", "--cli-data-dir", data_dir]


def test_agent_shutdown_unregisters_the_tunnel(
    tmp_path: Path, installed_cli: str, fake_state: Path
) -> None:
    source = CliSource(tmp_path / "vscode", path=installed_cli)
    (fake_state / "approve").parent.mkdir()
    (fake_state / "approve").touch()

    async def scenario() -> None:
        async with VscodeManager(source, "shut-r1", policy=FAST) as manager:
            tunnel = await manager.start()
            await next_of(tunnel.events(), Ready)

    run(scenario())
    assert [c["argv"][:2] for c in calls(fake_state)] == [
        ["tunnel", "--accept-server-license-terms"],
        ["tunnel", "unregister"],
    ]


def test_crashed_tunnel_is_restarted(
    tmp_path: Path, installed_cli: str, fake_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CODE_MODE", "crash-once")
    source = CliSource(tmp_path / "vscode", path=installed_cli)

    async def scenario() -> None:
        async with VscodeManager(source, "crash-r0", policy=FAST) as manager:
            events = (await manager.start()).events()
            crash = await next_of(events, Error)
            assert "panicked" in crash.message
            restart = await next_of(events, Error)
            assert "exited with status 101; restarting" in restart.message
            await next_of(events, Login)
            (fake_state / "approve").touch()
            await next_of(events, Ready)
            assert manager.status().restarts == 1

    run(scenario())


def test_code_exiting_at_once_is_a_clear_error_not_a_loop(
    tmp_path: Path, installed_cli: str, fake_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CODE_MODE", "exit-at-once")
    source = CliSource(tmp_path / "vscode", path=installed_cli)

    async def scenario() -> None:
        async with VscodeManager(source, "once-r0", policy=FAST) as manager:
            tunnel = await manager.start()
            with pytest.raises(FailedPrecondition, match="exited at once 3 times") as failure:
                async for _ in tunnel.events():
                    pass
            assert "no network" in str(failure.value)
            status = manager.status()
            assert not status.running and "exited at once" in status.last_error
            assert status.restarts == 2

    run(scenario())
    argvs = [c["argv"] for c in calls(fake_state)]
    assert len(argvs) == 4 and argvs[-1] == ["tunnel", "unregister"]


# ---------------------------------------------------------------- the servicer


def test_service_streams_until_ready_reports_status_and_stops(
    tmp_path: Path, installed_cli: str, fake_state: Path
) -> None:
    service = VscodeService(VscodeManager(CliSource(tmp_path / "v", path=installed_cli), "svc-r0"))
    context: Any = None

    async def scenario() -> None:
        with pytest.raises(FailedPrecondition, match="no VS Code tunnel is running"):
            await service.VscodeStop(pb.VscodeStopRequest(), context)
        replies = service.VscodeTunnel(pb.VscodeTunnelRequest(name="svc-r0"), context)
        async for reply in replies:
            if reply.HasField("login"):
                assert reply.login.code == "ABCD-1234"
                break
        status = await service.VscodeStatus(pb.VscodeStatusRequest(), context)
        assert status.running and status.login.url == "https://github.com/login/device"
        (fake_state / "approve").touch()
        kinds = [reply.WhichOneof("kind") async for reply in replies]
        assert kinds[-1] == "ready"
        again = [r async for r in service.VscodeTunnel(pb.VscodeTunnelRequest(), context)]
        assert [r.ready.url for r in again] == ["https://vscode.dev/tunnel/svc-r0/home/fake"]
        assert (await service.VscodeStop(pb.VscodeStopRequest(), context)).was_running
        status = await service.VscodeStatus(pb.VscodeStatusRequest(), context)
        assert not status.running
        with pytest.raises(FailedPrecondition, match="no VS Code tunnel is running"):
            await service.VscodeStop(pb.VscodeStopRequest(), context)

    run(scenario())
    assert calls(fake_state)[-1]["argv"] == ["tunnel", "unregister"]
