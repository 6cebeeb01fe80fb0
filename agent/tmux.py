"""tmux sessions managed by the agent, on the agent's own socket and config.

The agent talks to tmux only through argv lists (via agent/processes.py) and
only about names that pass a strict allowlist, so a name can never become a
shell word, a tmux target pattern or an option. The tmux server is tmux's own
daemon: it and its sessions outlive the agent, and a restarted agent finds
them again on the same socket.
"""

import builtins
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from agent import processes
from agent.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from protos.resource import Resource

# No '.' or ':' (tmux reads them as window/pane separators in targets and
# rewrites them in names), no leading '-' (it would read as an option).
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
_MAX_SIZE = 10000
_TIMEOUT = 10.0
_INSTALL_HINT = "tmux is not installed in the run image; install it there: apt-get install tmux"

# Settings first, then the user's file, so the user's own choices win.
_CONFIG = """\
# Written by tether-agent; regenerated at every start.
set -g history-limit 50000
set -g mouse on
source-file -q ~/.tmux.conf
"""

# Numbers first and the name last: the name may hold spaces, the numbers never.
_LIST_FORMAT = (
    "#{session_windows} #{session_attached} #{session_created} #{session_activity} #{session_name}"
)

# tmux's stderr for "there is nothing by that name", including "no server at all"
# (no socket, or a stale one left by a server that died).
_MISSING = re.compile(
    r"can't find session|no server running|error connecting to .*"
    r"\((No such file or directory|Connection refused)\)$"
)


@dataclass(frozen=True, slots=True)
class TmuxSessionInfo:
    name: str
    windows: int
    attached: int
    created_unix: int
    activity_unix: int


def validate_name(name: str) -> str:
    """Returns `name` if it is a session name the agent accepts, else InvalidArgument."""
    if not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"bad tmux session name {name!r}: use 1-64 letters, digits, '-' or '_', "
            "not starting with '-'"
        )
    return name


def _target(name: str) -> str:
    """An exact-match target, so `main` never matches a session named `main2`."""
    return f"={validate_name(name)}"


def _parse_line(line: str) -> TmuxSessionInfo:
    windows, attached, created, activity, name = line.split(" ", 4)
    return TmuxSessionInfo(name, int(windows), int(attached), int(created), int(activity))


class TmuxManager(Resource):
    """The agent's tmux server: `tmux -S <state_dir>/tmux.sock -f <state_dir>/tmux.conf`."""

    def __init__(self, state_dir: Path) -> None:
        self.socket_path = state_dir / "tmux.sock"
        self.config_path = state_dir / "tmux.conf"
        self._state_dir = state_dir

    async def __aenter__(self) -> "TmuxManager":
        self._state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.config_path.write_text(_CONFIG)
        return self

    def close(self) -> None:
        """Nothing to stop: the tmux server and its sessions must outlive the agent."""

    async def wait_closed(self) -> None:
        """Returns at once; see close()."""

    def _base_argv(self) -> list[str]:
        binary = shutil.which("tmux")
        if binary is None:
            raise FailedPrecondition(_INSTALL_HINT)
        return [binary, "-S", str(self.socket_path), "-f", str(self.config_path)]

    async def _tmux(self, *args: str) -> str:
        """Runs one tmux command and returns its stdout, or raises the domain error."""
        done = await processes.run([*self._base_argv(), *args], timeout=_TIMEOUT)
        if done.returncode == 0:
            return done.stdout.decode(errors="replace")
        message = done.stderr.decode(errors="replace").strip()
        if _MISSING.match(message):
            raise NotFound(f"no tmux session by that name ({message})")
        if message.startswith("duplicate session"):
            raise AlreadyExists(f"a tmux session by that name already exists ({message})")
        raise FailedPrecondition(f"tmux {args[0]} failed: {message or done.returncode}")

    async def list(self) -> list[TmuxSessionInfo]:
        """Every session on the agent's server; none when the server is not running."""
        try:
            out = await self._tmux("list-sessions", "-F", _LIST_FORMAT)
        except NotFound:
            return []
        return [_parse_line(line) for line in out.splitlines() if line]

    async def get(self, name: str) -> TmuxSessionInfo:
        validate_name(name)
        for info in await self.list():
            if info.name == name:
                return info
        raise NotFound(f"no tmux session named {name!r}")

    async def create(
        self, name: str, command: str | None = None, cols: int = 0, rows: int = 0
    ) -> tuple[TmuxSessionInfo, bool]:
        """Creates a detached session, or finds the existing one (created False).

        `command` is a command line for tmux's default shell; 0 for a size
        means tmux's default.
        """
        argv = ["new-session", "-d", "-s", validate_name(name), *_size_args(cols, rows)]
        if command:
            argv.append(command)
        try:
            await self._tmux(*argv)
        except AlreadyExists:
            return await self.get(name), False
        return await self.get(name), True

    async def kill(self, name: str) -> None:
        await self._tmux("kill-session", "-t", _target(name))

    async def rename(self, old: str, new: str) -> None:
        await self._tmux("rename-session", "-t", _target(old), validate_name(new))

    def attach_argv(
        self, name: str, command: str | None, detach_others: bool
    ) -> builtins.list[str]:
        """The argv a Shell session runs on its PTY to create-or-attach `name`.

        tmux takes its size from that PTY. Other clients stay attached unless
        `detach_others` (new-session's -D, which with -A means attach -d).
        `command` runs only when the session is new.
        """
        argv = [*self._base_argv(), "new-session", "-A", "-s", validate_name(name)]
        if detach_others:
            argv.append("-D")
        if command:
            argv.append(command)
        return argv


def _size_args(cols: int, rows: int) -> list[str]:
    for value in (cols, rows):
        if not 0 <= value <= _MAX_SIZE:
            raise InvalidArgument(f"bad window size {cols}x{rows}")
    return [*(["-x", str(cols)] if cols else []), *(["-y", str(rows)] if rows else [])]
