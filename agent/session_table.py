"""Every shell session of the agent, by client-chosen id, with their limits.

Opening an id that exists attaches to it, so a retried open is idempotent.
Detached sessions are reaped after the idle timeout; the table's close()
ends every child and leaves nothing behind.
"""

import asyncio
import contextlib
import os
import pwd
import re
import time
from collections.abc import Callable

from agent import processes
from agent.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from agent.sessions import Session, SessionSpec, check_window

SESSION_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")

# Resolves a tmux session name to the argv that creates or attaches to it.
TmuxArgv = Callable[[str, str | None, bool], list[str]]


def login_shell() -> str:
    try:
        shell = pwd.getpwuid(os.getuid()).pw_shell
    except KeyError:
        shell = ""
    return shell if shell and os.access(shell, os.X_OK) else "/bin/sh"


def home_dir() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return "/"


class SessionTable:
    def __init__(
        self,
        *,
        output_buffer: int,
        idle_timeout: float,
        max_sessions: int,
        tmux_argv: TmuxArgv | None = None,
    ) -> None:
        self._sessions: dict[str, Session] = {}
        self._output_buffer = output_buffer
        self._idle_timeout = idle_timeout
        self._max_sessions = max_sessions
        self._tmux_argv = tmux_argv
        self._reaper: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()

    async def __aenter__(self) -> "SessionTable":
        self._reaper = asyncio.get_running_loop().create_task(self._reap_idle())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: str) -> Session:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise NotFound(f"no session {session_id!r} on this agent") from None

    def all(self) -> list[Session]:
        return list(self._sessions.values())

    def open(
        self, spec: SessionSpec, *, command: str, resume: bool, detach_others: bool = False
    ) -> tuple[Session, bool]:
        """The session with spec's id, started unless it exists; True if started."""
        if not SESSION_ID.fullmatch(spec.session_id):
            raise InvalidArgument("a session id is 1-128 letters, digits or _.:-")
        existing = self._sessions.get(spec.session_id)
        if existing is not None:
            return existing, False
        if resume:
            raise NotFound(f"session {spec.session_id!r} is gone (it ended or the agent restarted)")
        if len(self._sessions) >= self._max_sessions:
            raise ResourceExhausted(f"this agent already runs {self._max_sessions} sessions")
        check_window(spec.cols, spec.rows)
        session = Session(spec, self._spawn(spec, command, detach_others), self._output_buffer)
        self._sessions[spec.session_id] = session
        return session, True

    def _argv(self, spec: SessionSpec, command: str, detach_others: bool) -> list[str]:
        if spec.tmux_session:
            if self._tmux_argv is None:
                raise FailedPrecondition("tmux is not available on this agent")
            return self._tmux_argv(spec.tmux_session, command or None, detach_others)
        if spec.argv:
            return list(spec.argv)
        if command:
            return [login_shell(), "-c", command]
        return [login_shell(), "-l"]

    def _spawn(self, spec: SessionSpec, command: str, detach_others: bool) -> processes.Child:
        argv = self._argv(spec, command, detach_others)
        env = dict(spec.env)
        if spec.pty:
            env["TERM"] = spec.term or "xterm-256color"
        env["TETHER_SESSION"] = spec.session_id
        cwd = spec.cwd or home_dir()
        try:
            if spec.pty:
                return processes.spawn_pty(argv, env=env, cwd=cwd, cols=spec.cols, rows=spec.rows)
            return processes.spawn_pipes(argv, env=env, cwd=cwd)
        except FileNotFoundError as exc:
            raise InvalidArgument(f"cannot start {argv[0]!r}: {exc.strerror}") from exc
        except PermissionError as exc:
            raise InvalidArgument(f"cannot start {argv[0]!r}: {exc.strerror}") from exc

    def forget(self, session_id: str) -> None:
        """Drops an ended session whose exit the client has seen."""
        session = self._sessions.get(session_id)
        if session is not None and not session.running:
            del self._sessions[session_id]

    async def kill(self, session_id: str) -> None:
        session = self.get(session_id)
        await session.terminate()
        self._sessions.pop(session_id, None)

    def notice_all(self, text: str) -> None:
        """A line for every attached client (deadline warnings, shutdown)."""
        for session in self._sessions.values():
            session.post_notice(text)

    async def _reap_idle(self) -> None:
        period = max(0.05, min(60.0, self._idle_timeout / 10))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for session in list(self._sessions.values()):
                if session.attachment is None and now - session.last_activity > self._idle_timeout:
                    await session.terminate()
                    self._sessions.pop(session.id, None)

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        sessions, self._sessions = list(self._sessions.values()), {}
        await asyncio.gather(*(s.terminate() for s in sessions), return_exceptions=True)
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()
