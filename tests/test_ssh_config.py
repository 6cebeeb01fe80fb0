"""`tether ssh-config`: the managed block in ~/.ssh/config, and the whole
path from a real agent to a real `ssh` through the generated config."""

import asyncio
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from connector import config, ssh_config
from connector.cli.app import app
from connector.config import RunConfig
from connector.ssh_config import BEGIN, END, Files, RankHost
from tests.agent_harness import agent_process
from tests.test_connect_terminal import tmux_pane

pytestmark = pytest.mark.timeout(60)

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGy2Ksk8U1S8iRvQJZ2cWbVbPIdnZ6XhCs3l1n5Jx0fK"
HOSTS = [RankHost(0, "root", KEY), RankHost(1, "root", KEY)]
USER_TEXT = "# mine\nHost *\n    ServerAliveInterval 30\n\nHost box\n    HostName 10.1.2.3\n"


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path / "state" / "id_ed25519", tmp_path / "state" / "known_hosts")


def write(path: Path, hosts: list[RankHost], files: Files, run: str = "train") -> list[str]:
    files.known_hosts.parent.mkdir(parents=True, exist_ok=True)
    warnings, _ = ssh_config.apply(path, run, hosts, files, "/opt/bin/tether")
    return warnings


def test_block_is_written_first_and_text_outside_is_untouched(tmp_path: Path, files: Files) -> None:
    path = tmp_path / "config"
    path.write_text(USER_TEXT)
    path.chmod(0o644)
    assert write(path, HOSTS, files) == []
    text = path.read_text()
    assert text.startswith(BEGIN + "\n")
    assert text.endswith("Host *\n" + END + "\n\n" + USER_TEXT)
    assert "Host tether-train tether-train-r0\n" in text
    assert "Host tether-train-r1\n" in text
    assert "    ProxyCommand /opt/bin/tether proxy train --rank 1\n" in text
    assert f"    UserKnownHostsFile {files.known_hosts}\n" in text
    assert "    HostKeyAlias tether-train-r1\n" in text
    assert path.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "config.tether-backup").read_text() == USER_TEXT
    pins = files.known_hosts.read_text().splitlines()
    assert pins == [f"tether-train-r0 {KEY}", f"tether-train-r1 {KEY}"]


def test_update_is_idempotent_and_keeps_other_runs(tmp_path: Path, files: Files) -> None:
    path = tmp_path / "config"
    write(path, HOSTS, files)
    write(path, HOSTS[:1], files, run="eval")
    first = path.read_text()
    backup = (tmp_path / "config.tether-backup").read_text()
    write(path, HOSTS, files)
    write(path, HOSTS[:1], files, run="eval")
    assert path.read_text() == first
    assert (tmp_path / "config.tether-backup").read_text() == backup
    assert first.count(BEGIN) == 1 and first.count("Host *") == 1
    assert "Host tether-eval tether-eval-r0" in first and "Host tether-train-r1" in first
    write(path, [RankHost(0, "alice", KEY)], files)
    text = path.read_text()
    assert "tether-train-r1" not in text and "User alice" in text and "tether-eval-r0" in text
    assert sorted(files.known_hosts.read_text().splitlines())[0].startswith("tether-eval-r0 ")


def test_a_new_file_is_private(tmp_path: Path, files: Files) -> None:
    path = tmp_path / "dotssh" / "config"
    write(path, HOSTS, files)
    assert path.stat().st_mode & 0o777 == 0o600
    assert not (path.parent / "config.tether-backup").exists()
    assert path.read_text().endswith(END + "\n")


def test_hand_written_tether_host_is_left_alone_with_a_warning(
    tmp_path: Path, files: Files
) -> None:
    path = tmp_path / "config"
    mine = "Host tether-x\n    User me\nhost=tether-train-r0 other\n"
    path.write_text(mine)
    warnings = write(path, HOSTS, files)
    assert len(warnings) == 2
    assert "line 1" in warnings[0] and "'Host tether-x'" in warnings[0]
    assert path.read_text().endswith("\n" + mine)
    later = write(path, HOSTS, files)
    assert [w.split(":", 1)[1] for w in later] == [w.split(":", 1)[1] for w in warnings]


def test_paths_with_blanks_and_percent_are_quoted(tmp_path: Path) -> None:
    files = Files(tmp_path / "my state" / "id", tmp_path / "50%" / "known_hosts")
    lines = ssh_config.render_section("r", HOSTS[:1], files, "/Apps/My Tools/tether")
    assert f'    IdentityFile "{files.identity}"' in lines
    assert f"    UserKnownHostsFile {tmp_path}/50%%/known_hosts" in lines
    assert "    ProxyCommand '/Apps/My Tools/tether' proxy r --rank 0" in lines


def test_block_without_its_end_is_refused(tmp_path: Path, files: Files) -> None:
    path = tmp_path / "config"
    path.write_text(f"{BEGIN}\nHost tether-a\n")
    with pytest.raises(Exception, match="fix it by hand"):
        write(path, HOSTS, files)
    assert path.read_text() == f"{BEGIN}\nHost tether-a\n"


# ------------------------------------------------------------ with a real agent


@pytest.fixture
def run_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    bin_dir = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return tmp_path


@pytest.fixture
def agent_run(run_home: Path) -> Iterator[RunConfig]:
    with agent_process(run_home) as (_, port):
        token = run_home / "token"
        run = RunConfig(
            name="train",
            address=f"127.0.0.1:{port}",
            token_file=str(token),
            insecure_loopback=True,
        )
        config.add_run(run)
        yield run


def test_ssh_config_provisions_the_agent(run_home: Path, agent_run: RunConfig) -> None:
    path = run_home / "ssh" / "config"
    result = CliRunner().invoke(app, ["ssh-config", "train", "--file", str(path)])
    assert result.exit_code == 0, result.output
    assert "ssh tether-train" in result.output
    text = path.read_text()
    assert "Host tether-train tether-train-r0" in text
    identity = run_home / "xdg-state" / "tether" / "ssh" / "id_ed25519"
    assert f"IdentityFile {identity}" in text
    assert identity.stat().st_mode & 0o777 == 0o600
    pins = (identity.parent / "known_hosts").read_text()
    assert pins.startswith("tether-train-r0 ssh-ed25519 ")
    again = CliRunner().invoke(app, ["ssh-config", "train", "--file", str(path)])
    assert again.exit_code == 0 and path.read_text() == text
    agent_keys = run_home / "agent-state" / "ssh_authorized_keys"
    assert len(agent_keys.read_text().splitlines()) == 1


def test_real_ssh_scp_and_exit_codes_through_the_proxy(
    run_home: Path, agent_run: RunConfig
) -> None:
    path = run_home / "ssh" / "config"
    result = CliRunner().invoke(app, ["ssh-config", "train", "--file", str(path)])
    assert result.exit_code == 0, result.output
    options = ["-F", str(path), "-o", "BatchMode=yes"]
    ssh = subprocess.run(
        ["ssh", *options, "tether-train", "echo", "ok"], capture_output=True, timeout=30
    )
    assert (ssh.returncode, ssh.stdout) == (0, b"ok\n"), ssh.stderr
    failing = subprocess.run(["ssh", *options, "tether-train-r0", "exit 9"], timeout=30)
    assert failing.returncode == 9
    source = run_home / "payload.bin"
    source.write_bytes(os.urandom(1 << 20))
    there = run_home / "copied.bin"
    scp = subprocess.run(
        ["scp", *options, str(source), f"tether-train:{there}"], capture_output=True, timeout=30
    )
    assert scp.returncode == 0, scp.stderr
    assert there.read_bytes() == source.read_bytes()


def provisioned(run_home: Path) -> list[str]:
    """`tether ssh-config train`, then the ssh options that use its file."""
    path = run_home / "ssh" / "config"
    result = CliRunner().invoke(app, ["ssh-config", "train", "--file", str(path)])
    assert result.exit_code == 0, result.output
    return ["-F", str(path), "-o", "BatchMode=yes"]


def test_scp_and_sftp_through_the_proxy(run_home: Path, agent_run: RunConfig) -> None:
    options = provisioned(run_home)
    source, there, back = (run_home / name for name in ("source.bin", "there.bin", "back.bin"))
    source.write_bytes(os.urandom(32 << 20))
    for argv in (
        ["scp", *options, str(source), f"tether-train:{there}"],
        ["scp", *options, f"tether-train:{there}", str(back)],
    ):
        assert subprocess.run(argv, timeout=60).returncode == 0
    assert (
        hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()
    )

    batch = run_home / "batch"
    batch.write_text(f"get {there} {run_home / 'sftp.bin'}\nls {run_home}\n")
    sftp = subprocess.run(
        ["sftp", "-b", str(batch), *options, "tether-train"], capture_output=True, timeout=60
    )
    assert sftp.returncode == 0, sftp.stderr
    assert (run_home / "sftp.bin").read_bytes() == source.read_bytes()
    assert b"there.bin" in sftp.stdout


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_rsync_of_1000_files_through_the_proxy(run_home: Path, agent_run: RunConfig) -> None:
    options = provisioned(run_home)
    tree, copy = run_home / "tree", run_home / "copy"
    for index in range(1000):
        path = tree / f"d{index % 10}" / f"f{index}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{index}\n")
    rsync = [
        "rsync",
        "-a",
        "-e",
        shlex.join(["ssh", *options]),
        f"{tree}/",
        f"tether-train:{copy}/",
    ]
    assert subprocess.run(rsync, timeout=60).returncode == 0
    copied = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    assert copied == sorted(p.relative_to(tree) for p in tree.rglob("*"))
    assert all(
        (copy / p).read_bytes() == (tree / p).read_bytes() for p in copied if (tree / p).is_file()
    )


def test_interactive_ssh_tt_in_a_real_terminal(run_home: Path, agent_run: RunConfig) -> None:
    options = provisioned(run_home)
    env = " ".join(
        f"{key}={shlex.quote(os.environ[key])}"
        for key in ("PATH", "XDG_CONFIG_HOME", "XDG_STATE_HOME")
    )
    shell = "PS1='tp> ' bash --norc --noprofile -i"
    ssh = shlex.join(["ssh", *options, "-tt", "tether-train", shell])

    async def main() -> None:
        with tmux_pane() as pane:
            pane.start(f"env {env} {ssh}; echo EXIT=$?; sleep 60")
            await pane.wait_for(r"^tp> *$")
            pane.run("tty; echo $((6*7))")
            await pane.wait_for(r"^/dev/pts/\d+$")
            await pane.wait_for(r"^42$")
            pane.run("exit 3")
            await pane.wait_for(r"^EXIT=3$")

    asyncio.run(main())
