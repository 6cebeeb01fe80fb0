"""Finding, starting and talking to the user's tether daemon.

One daemon per user listens on a unix socket in the user's runtime directory.
The socket's mode (0600, in a 0700 directory) is its authentication, so the
client refuses a socket or directory that belongs to someone else instead
of handing its requests to another user's process.
"""

import asyncio
import contextlib
import os
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from connector import config
from connector.errors import ConfigError, TetherError
from protos import daemon_pb2_grpc

START_TIMEOUT = 10.0


class DaemonNotRunning(TetherError):
    """No daemon answers on the socket."""

    def __init__(self) -> None:
        super().__init__("the tether daemon is not running; start it with `tether daemon start`")


def runtime_dir() -> Path:
    """$XDG_RUNTIME_DIR/tether, else /tmp/tether-UID; private to this user."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(base) / "tether" if base else Path(f"/tmp/tether-{os.getuid()}")  # noqa: S108
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private(path)
    return path


def check_private(path: Path) -> None:
    """Refuses a path that another user owns, or that others may write."""
    st = os.lstat(path)
    if st.st_uid != os.getuid():
        raise ConfigError(
            f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}); "
            "refusing to talk to another user's tether daemon"
        )
    if stat.S_ISLNK(st.st_mode) or st.st_mode & 0o022:
        raise ConfigError(f"{path} is a link or writable by others; remove it and try again")


def socket_path() -> Path:
    return runtime_dir() / "daemon.sock"


def log_path() -> Path:
    return config.private_dir(config.state_dir()) / "daemon.log"


def state_path() -> Path:
    return config.private_dir(config.state_dir()) / "forwards.json"


@contextlib.asynccontextmanager
async def daemon_stub() -> AsyncIterator["daemon_pb2_grpc.DaemonAsyncStub"]:
    """A stub for the running daemon; DaemonNotRunning when none answers."""
    path = socket_path()
    if not path.exists():
        raise DaemonNotRunning()
    check_private(path)
    async with grpc.aio.insecure_channel(f"unix://{path}") as channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), 2.0)
        except TimeoutError:
            raise DaemonNotRunning() from None
        yield daemon_pb2_grpc.DaemonStub(channel)


def start_daemon() -> int:
    """Starts the daemon in the background; returns its pid once it listens."""
    path = socket_path()
    with open(log_path(), "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "connector", "daemon", "run"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TetherError(
                f"the daemon exited at once (code {proc.returncode}); see {log_path()}"
            )
        if path.exists():
            return proc.pid
        time.sleep(0.05)
    raise TetherError(f"the daemon did not start in {START_TIMEOUT:g} s; see {log_path()}")
