"""The one module of the agent that starts processes.

Everything the agent runs (shells, exec'd commands, tmux, the VS Code CLI,
probes) goes through here, so the rules hold in one place: argv lists only,
never a shell string; the token never reaches a child's environment; every
child gets its own session so a signal reaches its whole process group.
"""

import asyncio
import contextlib
import fcntl
import os
import pty
import signal
import struct
import subprocess
import termios
from collections.abc import Mapping
from dataclasses import dataclass

from agent.errors import FailedPrecondition

# Variables that would hand the agent's credentials to whatever runs inside.
_SECRET_PREFIXES = ("TETHER_TOKEN",)


def child_env(
    extra: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The agent's environment plus `extra`, with every secret removed."""
    env = {k: v for k, v in (os.environ if base is None else base).items()}
    env.update(extra or {})
    for key in list(env):
        if key.startswith(_SECRET_PREFIXES):
            del env[key]
    return env


@dataclass(frozen=True, slots=True)
class Completed:
    returncode: int
    stdout: bytes
    stderr: bytes


async def run(
    argv: list[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    stdin: bytes | None = None,
    timeout: float = 30.0,
) -> Completed:
    """Runs `argv` to completion and captures its output.

    A missing program is FailedPrecondition (the image lacks it); a program
    that outlives `timeout` is killed and reported as TimeoutError.
    """
    proc = await start(argv, env=env, cwd=cwd, pipe_stdin=stdin is not None)
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Completed(proc.returncode, out, err)


async def start(
    argv: list[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    pipe_stdin: bool = False,
) -> asyncio.subprocess.Process:
    """Starts a child with stdout and stderr piped (supervisors keep it; run()
    waits for it); a missing program is FailedPrecondition."""
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.PIPE if pipe_stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(env),
            cwd=cwd,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise FailedPrecondition(f"{argv[0]} is not installed in this image") from exc


def set_window_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


# setsid(1) -c makes the child a session leader with the PTY (its stdin) as
# controlling terminal, then execs the program under the same pid. Doing it in
# a preexec_fn instead runs Python between fork and exec in a process full of
# gRPC threads, which crashes now and then.
_SETSID = ["setsid", "-c"]


class Child:
    """A spawned session child: its pid, its fds, and its exit as an awaitable.

    The exit is watched through a pidfd, so there is no polling and no thread.
    `master` is the PTY's master side; without a PTY, `stdin`, `stdout` and
    `stderr` are the pipe ends the agent holds. All fds are non-blocking.
    """

    def __init__(self, popen: subprocess.Popen[bytes], fds: dict[str, int]) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.master = fds.get("master", -1)
        self.stdin = fds.get("stdin", -1)
        self.stdout = fds.get("stdout", -1)
        self.stderr = fds.get("stderr", -1)
        for fd in fds.values():
            os.set_blocking(fd, False)
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pidfd = os.pidfd_open(self.pid)
        asyncio.get_running_loop().add_reader(self._pidfd, self._on_exit)

    def _on_exit(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        returncode = self._popen.wait()
        if not self._exited.done():
            self._exited.set_result(returncode)

    async def wait(self) -> int:
        """The Popen-style return code: negative for the signal that killed it."""
        return await asyncio.shield(self._exited)

    @property
    def returncode(self) -> int | None:
        return self._exited.result() if self._exited.done() else None

    def signal_group(self, signum: int) -> None:
        """Sends `signum` to the child's whole process group."""
        if self.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def close_fds(self) -> None:
        for name in ("master", "stdin", "stdout", "stderr"):
            fd = getattr(self, name)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, -1)

    async def terminate(self, grace: float = 2.0) -> int:
        """SIGHUP and SIGTERM to the group, SIGKILL after `grace` seconds."""
        for signum in (signal.SIGHUP, signal.SIGTERM):
            self.signal_group(signum)
        try:
            return await asyncio.wait_for(self.wait(), grace)
        except TimeoutError:
            self.signal_group(signal.SIGKILL)
            return await self.wait()


def _spawn(
    argv: list[str], env: Mapping[str, str], cwd: str | None, **kwargs: object
) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(argv, env=child_env(env), cwd=cwd, **kwargs)  # type: ignore[call-overload, no-any-return]
    except NotADirectoryError as exc:
        raise FailedPrecondition(f"working directory {cwd!r} is not a directory") from exc


def spawn_pty(
    argv: list[str], *, env: Mapping[str, str], cwd: str | None, cols: int, rows: int
) -> Child:
    """Starts `argv` on a new PTY that becomes its controlling terminal."""
    master, slave = pty.openpty()
    try:
        set_window_size(master, cols, rows)
        popen = _spawn([*_SETSID, *argv], env, cwd, stdin=slave, stdout=slave, stderr=slave)
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    return Child(popen, {"master": master})


def spawn_pipes(argv: list[str], *, env: Mapping[str, str], cwd: str | None) -> Child:
    """Starts `argv` with stdin, stdout and stderr on pipes the agent holds."""
    popen = _spawn(
        argv,
        env,
        cwd,
        start_new_session=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert popen.stdin is not None and popen.stdout is not None and popen.stderr is not None
    fds = {
        "stdin": os.dup(popen.stdin.fileno()),
        "stdout": os.dup(popen.stdout.fileno()),
        "stderr": os.dup(popen.stderr.fileno()),
    }
    for stream in (popen.stdin, popen.stdout, popen.stderr):
        stream.close()
    return Child(popen, fds)
