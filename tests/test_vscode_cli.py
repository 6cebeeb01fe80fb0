"""`tether vscode` against a real `tether-agent serve` that downloads a stand-in
`code` CLI from a loopback HTTP server."""

import asyncio
import hashlib
import json
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cli_procs import Laptop, agent_serving, finish, read_until
from tests.vscode_harness import Downloads, fake_cli_program, tarball

LOGIN_URL = "https://github.com/login/device"
LOGIN_CODE = "ABCD-1234"
LINK = "https://vscode.dev/tunnel/train-r0/home/fake"


@pytest.fixture
def laptop(tmp_path: Path) -> Laptop:
    return Laptop(tmp_path / "laptop")


def code_calls(state: Path) -> list[list[str]]:
    lines = (state / "calls.jsonl").read_text().splitlines()
    return [json.loads(line)["argv"] for line in lines]


def agent_args(tmp_path: Path, url: str) -> list[str]:
    return ["--run-name", "train", "--vscode-url", url, "--vscode-data-dir", str(tmp_path / "data")]


def out(done: Any) -> str:
    return str(done.stdout.decode())


def err(done: Any) -> str:
    return str(done.stderr.decode())


def recording_browser(tmp_path: Path) -> tuple[str, Path]:
    """A BROWSER command (as webbrowser reads it) that appends each URL to a file."""
    opened = tmp_path / "opened"
    script = tmp_path / "browser.py"
    script.write_text(
        f"import sys\nwith open({str(opened)!r}, 'a') as f:\n    f.write(sys.argv[1] + '\\n')\n"
    )
    return f"{sys.executable} {script} %s", opened


def test_login_then_link_then_status_and_stop(
    tmp_path: Path,
    downloads: Downloads,
    fake_state: Path,
    laptop: Laptop,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = downloads.serve("/code.tar.gz", tarball({"code": fake_cli_program()}))
    browser, opened = recording_browser(tmp_path)
    monkeypatch.setenv("BROWSER", browser)
    with agent_serving(tmp_path / "agent", *agent_args(tmp_path, url), tls=False) as agent:
        laptop.add_run("train", agent.port, tls=False)

        async def first_start() -> str:
            proc = await laptop.start("vscode", "train", "--open")
            shown = await read_until(proc.stdout, b"Waiting for the login")
            (fake_state / "approve").touch()
            done = await finish(proc)
            assert done.code == 0, done.stderr.decode()
            return (shown + done.stdout).decode()

        shown = asyncio.run(first_start())
        assert "VS Code CLI" in shown  # the download bar, as a file shows it
        assert LOGIN_URL in shown and LOGIN_CODE in shown
        assert shown.index(LOGIN_CODE) < shown.index(LINK)
        assert "Connect to Tunnel" in shown and "Remote - Tunnels" in shown
        assert opened.read_text().splitlines() == [LOGIN_URL, LINK]

        again = laptop.tether("vscode", "train")
        assert again.returncode == 0, err(again)
        assert "VS Code tunnel train-r0 on run train rank 0: ready" in out(again)
        assert LINK in out(again) and LOGIN_CODE not in out(again)

        status = laptop.tether("vscode", "train", "--status")
        assert status.returncode == 0 and LINK in out(status)

        stopped = laptop.tether("vscode", "train", "--stop")
        assert stopped.returncode == 0, err(stopped)
        assert "stopped the VS Code tunnel on run train rank 0" in out(stopped)
        assert code_calls(fake_state)[-1] == [
            "tunnel", "unregister", "--cli-data-dir", str(tmp_path / "data")
        ]  # fmt: skip

        none = laptop.tether("vscode", "train", "--stop")
        assert none.returncode == 1
        assert err(none) == "tether: no VS Code tunnel is running on run train rank 0\n"
        status = laptop.tether("vscode", "train", "--status")
        assert "no VS Code tunnel is running on run train rank 0" in out(status)


def test_agent_sigterm_unregisters_the_tunnel(
    tmp_path: Path, downloads: Downloads, fake_state: Path, laptop: Laptop
) -> None:
    url = downloads.serve("/code.tar.gz", tarball({"code": fake_cli_program()}))
    fake_state.mkdir()
    (fake_state / "approve").touch()
    with agent_serving(tmp_path / "agent", *agent_args(tmp_path, url), tls=False) as agent:
        laptop.add_run("train", agent.port, tls=False)
        started = laptop.tether("vscode", "train", "--name", "mine")
        assert started.returncode == 0, err(started)
        assert "https://vscode.dev/tunnel/mine/home/fake" in out(started)
        agent.proc.terminate()
        assert agent.proc.wait(30) == 0
    tunnel, unregister = code_calls(fake_state)
    assert tunnel[:2] == ["tunnel", "--accept-server-license-terms"] and "mine" in tunnel
    assert unregister[:2] == ["tunnel", "unregister"]


def test_unreachable_download_is_a_clear_error(
    tmp_path: Path, fake_state: Path, laptop: Laptop
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/code.tar.gz"
    with agent_serving(tmp_path / "agent", *agent_args(tmp_path, url), tls=False) as agent:
        laptop.add_run("train", agent.port, tls=False)
        failed = laptop.tether("vscode", "train")
    assert failed.returncode != 0
    message = err(failed)
    assert message.startswith("tether: the VS Code tunnel on run train rank 0 did not start: ")
    assert url in message and "refused" in message
    assert not (fake_state / "calls.jsonl").exists()


def test_checksum_mismatch_names_both_digests(
    tmp_path: Path, downloads: Downloads, fake_state: Path, laptop: Laptop
) -> None:
    archive = tarball({"code": fake_cli_program()})
    url = downloads.serve("/code.tar.gz", archive)
    wrong = "0" * 64
    args = [*agent_args(tmp_path, url), "--vscode-sha256", wrong]
    with agent_serving(tmp_path / "agent", *args, tls=False) as agent:
        laptop.add_run("train", agent.port, tls=False)
        failed = laptop.tether("vscode", "train")
    assert failed.returncode != 0
    actual = hashlib.sha256(archive).hexdigest()
    assert f"expected sha256 {wrong}, got {actual}" in err(failed)
    assert not (fake_state / "calls.jsonl").exists()
