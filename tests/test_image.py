"""The run image, built and run for real with podman, reached from the host with `tether`.

The container shares the host's network, so the agent listens on a free
loopback port with TLS on and the connector pins its certificate on first use,
as it would on a cluster. The timings (cold or cached base image, build, start,
stop) are printed; run with -s to see them.
"""

import contextlib
import fcntl
import json
import os
import pty
import select
import shutil
import socket
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli_procs import COMMAND_TIMEOUT, TETHER, Laptop, write_token
from tests.podman_image import Podman, build_image, ensure_base_image

pytestmark = [pytest.mark.podman, pytest.mark.timeout(600)]

IMAGE = "localhost/tether-agent:test"
AGENT_UID = 10001
RUN = "imagetest"
# podman stop sends SIGTERM, then SIGKILL after this many seconds.
STOP_TIMEOUT = 10
ROWS, COLUMNS = 30, 100
DEFAULT_TMUX = "main"  # the session `tether connect --tmux` opens when given no name
DETACH_TMUX = b"\x02d"  # tmux's default prefix, C-b, then d


def ok(laptop: Laptop, *args: str) -> str:
    done = laptop.tether(*args)
    assert done.returncode == 0, f"tether {' '.join(args)}: {done.stderr.decode()}"
    return done.stdout.decode()


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    if shutil.which("podman") is None:
        message = "podman is not installed (bash scripts/setup.sh installs it, as root)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must build and run the run image")
        pytest.skip(message)
    return Podman(tmp_path_factory.mktemp("podman"))


@pytest.fixture(scope="module")
def image(podman: Podman) -> str:
    base_seconds = ensure_base_image(podman)
    base = "cached" if base_seconds is None else f"debootstrap + import {base_seconds:.1f}s"
    print(f"\nbase image: {base}; build: {build_image(podman, IMAGE, AGENT_UID):.1f}s")
    return IMAGE


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Container:
    name: str
    port: int


@contextlib.contextmanager
def agent_container(podman: Podman, image: str, workdir: Path) -> Iterator[Container]:
    """The image's agent serving on a free loopback port of the host; removed on exit."""
    token = write_token(workdir / "container-token")
    os.chown(token, AGENT_UID, AGENT_UID)  # the image's user must be able to read it
    container = Container(f"tether-test-{os.urandom(4).hex()}", free_loopback_port())
    started = time.monotonic()
    try:
        podman.run(
            *("run", "--detach", "--network=host", f"--name={container.name}"),
            f"--env=TETHER_LISTEN=127.0.0.1:{container.port}",
            f"--volume={token}:/run/secrets/tether-token:ro",
            *(image, "--run-name", RUN, "--max-duration", "2"),
        )
        wait_until_serving(podman, container.name)
        print(f"container start to serving: {time.monotonic() - started:.1f}s")
        yield container
    finally:
        podman.run("rm", "--force", "--time=0", container.name, check=False)


def wait_until_serving(podman: Podman, name: str) -> None:
    """Follows the container's log until the agent says it listens (or the container ends)."""
    follow = subprocess.Popen(
        ["podman", "logs", "--follow", name],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=podman.env,
    )
    seen: list[str] = []
    try:
        assert follow.stdout is not None
        for line in follow.stdout:
            seen.append(line)
            if "listening on" in line:
                return
        raise AssertionError("the agent in the container did not start:\n" + "".join(seen))
    finally:
        follow.kill()
        follow.wait()


def test_the_connector_works_in_the_container_and_it_is_healthy(
    podman: Podman, image: str, tmp_path: Path
) -> None:
    laptop = Laptop(tmp_path / "laptop")
    with agent_container(podman, image, tmp_path) as container:
        laptop.add_run(RUN, container.port)

        done = laptop.tether("exec", RUN, "--", "echo ok; id -u; exit 3")
        assert (done.returncode, done.stdout) == (3, f"ok\n{AGENT_UID}\n".encode()), done.stderr

        screen = attach_tmux(laptop, b"echo ${TMUX:+in-tmux}-$((6*7))\r", b"in-tmux-42")
        assert b"in-tmux-42" in screen
        listed = ok(laptop, "tmux", RUN, "ls")
        assert DEFAULT_TMUX in listed.split(), listed

        status = json.loads(ok(laptop, "status", RUN, "--json"))
        assert status["gpu"]["state"].startswith("GPU_STATE_"), status["gpu"]
        names = {process["name"] for process in status["system"]["top_processes"]}
        assert "tether-agent" in names, names

        podman.run("healthcheck", "run", container.name)
        assert podman.inspect(container.name, "{{.State.Health.Status}}") == "healthy"


def test_sigterm_stops_the_container_cleanly(podman: Podman, image: str, tmp_path: Path) -> None:
    laptop = Laptop(tmp_path / "laptop")
    with agent_container(podman, image, tmp_path) as container:
        laptop.add_run(RUN, container.port)
        ok(laptop, "tmux", RUN, "new", "busy")  # something running that the stop must end

        started = time.monotonic()
        podman.run("stop", f"--time={STOP_TIMEOUT}", container.name)
        elapsed = time.monotonic() - started
        print(f"podman stop: {elapsed:.1f}s")

        state = podman.inspect(container.name, "{{.State.Status}} {{.State.ExitCode}}")
        assert state == "exited 0", podman.run("logs", container.name).stderr
        # A stop that had to fall back to SIGKILL would have taken the whole timeout.
        assert elapsed < STOP_TIMEOUT


def attach_tmux(laptop: Laptop, keys: bytes, until: bytes) -> bytes:
    """`tether connect --tmux` in a real terminal: once tmux draws its status line (with the
    default session's name), types `keys`, waits for `until` on the screen, then detaches;
    returns what was shown."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    argv = [TETHER, "connect", RUN, "--tmux"]
    env = {**laptop.env, "TERM": "xterm-256color"}
    child = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    try:
        screen = read_until(master, f"[{DEFAULT_TMUX}]".encode(), b"")
        os.write(master, keys)
        screen = read_until(master, until, screen)
        os.write(master, DETACH_TMUX)
        assert child.wait(COMMAND_TIMEOUT) == 0, screen
        return screen
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(master)


def read_until(master: int, wanted: bytes, screen: bytes) -> bytes:
    deadline = time.monotonic() + COMMAND_TIMEOUT
    while wanted not in screen:
        left = deadline - time.monotonic()
        assert left > 0, f"{wanted!r} never appeared on the terminal: {screen[-2000:]!r}"
        if select.select([master], [], [], left)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the last process holding the terminal is gone
                chunk = b""
            assert chunk, f"the terminal closed before {wanted!r}: {screen[-2000:]!r}"
            screen += chunk
    return screen
