"""`tether cp` between a laptop and a real agent: the `tether` program as a
person runs it, the agent's own SSH server on the far side, and a fault
proxy between them where the link must break mid-copy.

Agent and laptop share this machine, so a run's path is a path here too,
which is how the tests compare what arrived.
"""

import asyncio
import hashlib
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from connector.cp import PARTIAL_SUFFIX, Endpoint, parse_endpoint
from tests.cli_procs import COMMAND_TIMEOUT, TETHER, Laptop, agent_serving
from tests.faultproxy import FaultProxy, ProxyStats

pytestmark = pytest.mark.timeout(120)

MTIME = 1_600_000_000


@dataclass
class Setup:
    laptop: Laptop
    agent_port: int
    root: Path  # where the files of a test live, on both "machines"


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    with agent_serving(tmp_path / "agent", tls=False) as agent:
        laptop = Laptop(tmp_path / "laptop")
        laptop.add_run("train", agent.port, tls=False)
        root = tmp_path / "files"
        root.mkdir()
        yield Setup(laptop, agent.port, root)


def make_file(path: Path, size: int, mode: int = 0o640, mtime: int = MTIME) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    path.chmod(mode)
    os.utime(path, (mtime, mtime))
    return path


def make_tree(root: Path) -> Path:
    make_file(root / "big.bin", 3 << 20, 0o600)
    make_file(root / "run.sh", 100, 0o755)
    make_file(root / "empty", 0, 0o644)
    for index in range(30):
        make_file(root / "sub" / f"d{index % 3}" / f"f{index}.txt", index * 37, 0o640)
    os.symlink("run.sh", root / "link")
    for directory in (root / "sub" / "d1", root / "sub"):
        directory.chmod(0o750)
        os.utime(directory, (MTIME, MTIME))
    return root


def kept(path: Path) -> tuple[str, int, int]:
    """What a copy must keep of a file or directory: bytes, mode, mtime."""
    st = path.lstat()
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return digest, st.st_mode & 0o7777, int(st.st_mtime)


def tree_of(root: Path) -> dict[str, tuple[str, int, int]]:
    return {
        str(path.relative_to(root)): kept(path)
        for path in sorted(root.rglob("*"))
        if not path.is_symlink()
    }


def copied(done: subprocess.CompletedProcess[bytes]) -> int:
    """The bytes a successful `tether cp` says it sent."""
    assert done.returncode == 0, done.stderr.decode()
    match = re.search(rb"sent (\d+) bytes", done.stderr)
    assert match, done.stderr
    return int(match.group(1))


def test_endpoints() -> None:
    assert parse_endpoint("train:/data/x") == Endpoint("train", "/data/x")
    assert parse_endpoint("train:") == Endpoint("train", ".")
    assert parse_endpoint("./a:b") == Endpoint(None, "./a:b")
    assert parse_endpoint("/abs/a:b") == Endpoint(None, "/abs/a:b")
    assert parse_endpoint("plain") == Endpoint(None, "plain")


def test_file_up_and_down_keeps_bytes_mode_and_mtime(setup: Setup) -> None:
    source = make_file(setup.root / "model.pt", 5 << 20 | 123, 0o604)
    there, back = setup.root / "there.pt", setup.root / "back"
    assert copied(setup.laptop.tether("cp", str(source), f"train:{there}")) == source.stat().st_size
    back.mkdir()
    copied(setup.laptop.tether("cp", f"train:{there}", str(back)))
    assert kept(there) == kept(source) == kept(back / "there.pt")
    assert not list(setup.root.rglob("*" + PARTIAL_SUFFIX))


def test_tree_up_and_down_and_a_rerun_sends_nothing(setup: Setup) -> None:
    tree = make_tree(setup.root / "tree")
    there = setup.root / "there"
    done = setup.laptop.tether("cp", str(tree), f"train:{there}")
    copied(done)
    assert b"1 symlinks or special files not copied" in done.stderr
    assert tree_of(there) == tree_of(tree)
    down = setup.root / "down"
    down.mkdir()
    copied(setup.laptop.tether("cp", f"train:{there}", f"{down}/"))
    assert tree_of(down / "there") == tree_of(tree)
    again = setup.laptop.tether("cp", str(tree), f"train:{there}")
    assert copied(again) == 0 and b"33 already complete" in again.stderr


def test_missing_paths_are_named(setup: Setup) -> None:
    source = make_file(setup.root / "a", 10)
    cases = [
        (str(setup.root / "nope"), f"train:{setup.root}", f"{setup.root}/nope: no such file"),
        (f"train:{setup.root}/nope", str(setup.root), f"train:{setup.root}/nope: no such file"),
        (str(source), f"train:{setup.root}/no/dir/a", f"train:{setup.root}/no/dir: no such dir"),
        (f"train:{source}", f"{setup.root}/no/a", f"{setup.root}/no: no such directory"),
        (str(source), f"train:{setup.root}/new/", f"train:{setup.root}/new/: no such directory"),
        (str(source), str(setup.root / "b"), "name the run on exactly one side"),
    ]
    for source_arg, target_arg, message in cases:
        done = setup.laptop.tether("cp", source_arg, target_arg)
        assert done.returncode == 1, (source_arg, target_arg)
        assert message in done.stderr.decode(), done.stderr
        assert b"Traceback" not in done.stderr


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a 2 MiB tmpfs to fill needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_no_space_left_names_the_destination(setup: Setup, small_tmpfs: Path) -> None:
    tree = setup.root / "payload"
    for name in "abc":  # copied in parallel: the first to fail is the one reported
        make_file(tree / name, 1536 << 10)
    upload = setup.laptop.tether("cp", str(tree), f"train:{small_tmpfs}/")
    assert upload.returncode == 1
    stderr = upload.stderr.decode()
    assert re.search(
        rf"^tether: train:{small_tmpfs}/payload/[abc]: no space left on the destination", stderr
    ), stderr
    assert len(stderr.splitlines()) == 1, stderr
    shutil.rmtree(small_tmpfs / "payload")
    download = setup.laptop.tether("cp", f"train:{tree}/a", str(small_tmpfs))
    copied(download)
    download = setup.laptop.tether("cp", f"train:{tree}/b", str(small_tmpfs))
    assert download.returncode == 1
    message = f"{small_tmpfs}/b: no space left on the destination"
    assert message in download.stderr.decode()


async def _start_behind(setup: Setup, proxy: FaultProxy, *args: str) -> asyncio.subprocess.Process:
    add = ["runs", "add", "cut", "--address", f"127.0.0.1:{proxy.port}"]
    add += ["--token-file", str(setup.laptop.token_file), "--insecure-loopback"]
    assert setup.laptop.tether(*add).returncode == 0
    return await asyncio.create_subprocess_exec(
        TETHER, *args, stdin=subprocess.DEVNULL, env=setup.laptop.env, stderr=subprocess.PIPE
    )


def moved(at: int) -> Callable[[ProxyStats], bool]:
    return lambda stats: stats.bytes_up + stats.bytes_down >= at


@pytest.mark.parametrize("upload", [True, False], ids=["upload", "download"])
def test_killed_copy_resumes_where_it_stopped(setup: Setup, upload: bool) -> None:
    size = 24 << 20
    source = make_file(setup.root / "data.bin", size)
    there = setup.root / "there.bin"
    ends = (str(source), f"{{}}:{there}") if upload else (f"{{}}:{source}", str(there))

    async def interrupted() -> None:
        async with FaultProxy("127.0.0.1", setup.agent_port) as proxy:
            copy = await _start_behind(setup, proxy, "cp", *(e.format("cut") for e in ends))
            await proxy.wait_until(moved(size // 2))
            copy.kill()
            await copy.wait()

    asyncio.run(interrupted())
    partial = there.with_name(there.name + PARTIAL_SUFFIX)
    assert partial.stat().st_size > 0 and not there.exists()
    done = setup.laptop.tether("cp", *(e.format("train") for e in ends))
    assert b"1 resumed" in done.stderr
    assert copied(done) < size
    assert kept(there) == kept(source) and not partial.exists()


def test_link_cut_mid_copy_completes_with_identical_bytes(setup: Setup) -> None:
    """The forward carries the copy through the cuts; should the SSH session
    die with the link all the same, it must say so, and a re-run resumes."""
    source = make_file(setup.root / "data.bin", 16 << 20)
    back = setup.root / "back.bin"

    async def with_cuts() -> tuple[int, bytes]:
        async with FaultProxy("127.0.0.1", setup.agent_port) as proxy:
            copy = await _start_behind(setup, proxy, "cp", f"cut:{source}", str(back))
            finished = asyncio.ensure_future(copy.communicate())
            for threshold in (4 << 20, 10 << 20):
                carrying = asyncio.ensure_future(proxy.wait_until(moved(threshold)))
                await asyncio.wait([carrying, finished], return_when=asyncio.FIRST_COMPLETED)
                if not carrying.done():
                    carrying.cancel()
                    break
                proxy.cut()
            async with asyncio.timeout(COMMAND_TIMEOUT):
                _, stderr = await finished
            assert proxy.stats.cuts >= 1 and copy.returncode is not None
            return copy.returncode, stderr

    code, stderr = asyncio.run(with_cuts())
    assert b"Traceback" not in stderr
    if code != 0:
        assert code == 255 and b"run the same command again" in stderr, stderr
        copied(setup.laptop.tether("cp", f"train:{source}", str(back)))
    assert kept(back) == kept(source)


@pytest.mark.skipif(shutil.which("script") is None, reason="needs script(1) for a terminal")
def test_progress_bar_in_a_terminal(setup: Setup) -> None:
    source = make_file(setup.root / "data.bin", 4_000_000)
    command = shlex.join([TETHER, "cp", str(source), f"train:{setup.root}/there.bin"])
    env = {**setup.laptop.env, "COLUMNS": "100"}
    done = subprocess.run(
        ["script", "-qec", command, "/dev/null"], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stdout
    assert b"4.0/4.0 MB" in done.stdout and b"MB/s" in done.stdout
    without_bar = setup.laptop.tether("cp", str(source), f"train:{setup.root}/again.bin")
    assert b"MB/s" in without_bar.stderr and b"4.0/4.0" not in without_bar.stderr
