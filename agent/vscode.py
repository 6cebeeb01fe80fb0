"""The VS Code tunnel, supervised by the agent.

`code tunnel` is run by the agent itself, not in a user's shell, so it outlives
any terminal and is restarted when it crashes. Its output is turned into events
a client can show: the GitHub device login to complete, the vscode.dev link
once the tunnel is up, and its errors. On stop and on agent shutdown the
tunnel is unregistered, so finished runs do not use up the account's machines.
"""

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from agent import processes
from agent.errors import AgentError, FailedPrecondition
from agent.vscode_cli import CliSource, Progress, locate_cli
from protos.resource import Resource

# The login is kept in a file under --cli-data-dir: a container has no keyring.
_CLI_ENV = {"VSCODE_CLI_USE_FILE_KEYCHAIN": "1"}
_QUEUE_SIZE = 1024
_DRAIN_TIMEOUT = 2.0
_STOP_GRACE = 5.0
_UNREGISTER_TIMEOUT = 60.0

_LOGIN = re.compile(r"log into (https://\S+) and use code ([A-Za-z0-9-]+)")
_READY = re.compile(r"(https://vscode\.dev/tunnel/\S+)")
_ERROR = re.compile(r"^(?:\[[^\]]*\]\s*)?(?:error|fatal)\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Login:
    """The tunnel waits for a person to enter `code` at `url`."""

    url: str
    code: str


@dataclass(frozen=True, slots=True)
class Ready:
    name: str
    url: str


@dataclass(frozen=True, slots=True)
class Error:
    message: str


@dataclass(frozen=True, slots=True)
class Log:
    line: str


Event = Progress | Login | Ready | Error | Log


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How a crashed tunnel is restarted, and when restarting is pointless.

    A run that ends before it is ready and within `quick_exit` seconds of its
    start exited at once; `max_quick_exits` of those in a row mean the CLI
    cannot run here, which is reported as an error instead of retried forever.
    """

    first_delay: float = 1.0
    max_delay: float = 30.0
    quick_exit: float = 10.0
    max_quick_exits: int = 5


DEFAULT_POLICY = RestartPolicy()


@dataclass(frozen=True, slots=True)
class TunnelStatus:
    running: bool
    name: str
    url: str
    login: Login | None
    restarts: int
    last_error: str


@dataclass(slots=True)
class _Run:
    """What one `code tunnel` process showed before it ended."""

    ready: bool = False
    last_error: str = ""


def escape(text: str) -> str:
    """Control characters as visible escapes, so CLI output cannot drive a terminal."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def parse_line(line: str, name: str) -> Event | None:
    """One line of `code tunnel` output as an event; None for a blank line."""
    text = escape(line.rstrip("\r\n"))
    if not text.strip():
        return None
    if login := _LOGIN.search(text):
        return Login(login.group(1), login.group(2))
    if ready := _READY.search(text):
        return Ready(name, ready.group(1))
    if _ERROR.search(text):
        return Error(text)
    return Log(text)


def _describe_exit(returncode: int) -> str:
    return f"signal {-returncode}" if returncode < 0 else f"status {returncode}"


async def _stop_process(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM to the CLI's process group (it starts a server), SIGKILL if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), _STOP_GRACE)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


class VscodeTunnel(Resource):
    """One supervised `code tunnel --name NAME`, from finding the CLI to unregistering.

    Subscribers get the current state first (download progress, a pending
    login, the link), then live events. An async context manager: close() stops
    the tunnel and unregisters it; wait_closed() waits until that is done.
    """

    def __init__(
        self,
        source: CliSource,
        name: str,
        *,
        cli_data_dir: str | None = None,
        policy: RestartPolicy = DEFAULT_POLICY,
    ) -> None:
        self.name = name
        self._source = source
        self._data_dir_args = ["--cli-data-dir", cli_data_dir] if cli_data_dir else []
        self._policy = policy
        self._cli: str | None = None
        self._progress: Progress | None = None
        self._login: Login | None = None
        self._url = ""
        self._restarts = 0
        self._last_error = ""
        self._failure: AgentError | None = None
        self._subscribers: set[asyncio.Queue[Event | None]] = set()
        self._finished = False
        self._task: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._supervise())

    @property
    def running(self) -> bool:
        return self._task is not None and self._closer is None

    def status(self) -> TunnelStatus:
        """The reason the supervisor gave up, if it did, outranks later errors."""
        last_error = str(self._failure) if self._failure else self._last_error
        return TunnelStatus(
            self.running, self.name, self._url, self._login, self._restarts, last_error
        )

    async def events(self) -> AsyncGenerator[Event, None]:
        """The current state, then live events until the tunnel is closed.

        Ends by raising the error that made the supervisor give up, if one did.
        """
        queue: asyncio.Queue[Event | None] = asyncio.Queue(_QUEUE_SIZE)
        for current in self._snapshot():
            queue.put_nowait(current)
        if self._finished:
            queue.put_nowait(None)
        else:
            self._subscribers.add(queue)
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._subscribers.discard(queue)
        if self._failure is not None:
            raise type(self._failure)(*self._failure.args)

    def _snapshot(self) -> list[Event]:
        snapshot: list[Event] = []
        if self._progress is not None and self._cli is None:
            snapshot.append(self._progress)
        if self._login is not None:
            snapshot.append(self._login)
        if self._url:
            snapshot.append(Ready(self.name, self._url))
        return snapshot

    def _publish(self, event: Event) -> None:
        if isinstance(event, Progress):
            self._progress = event
        elif isinstance(event, Login):
            self._login = event
        elif isinstance(event, Ready):
            self._login, self._url = None, event.url
        elif isinstance(event, Error):
            self._last_error = event.message
        self._deliver(event)

    def _deliver(self, item: Event | None) -> None:
        for queue in self._subscribers:
            if queue.full():  # a stalled subscriber loses its oldest events, not the agent
                queue.get_nowait()
            queue.put_nowait(item)

    async def _supervise(self) -> None:
        try:
            self._cli = await locate_cli(self._source, self._publish)
            await self._keep_running(self._cli)
        except AgentError as exc:
            self._failure = exc
            self.close()

    async def _keep_running(self, cli: str) -> None:
        loop = asyncio.get_running_loop()
        delay = self._policy.first_delay
        quick_exits = 0
        while True:
            started = loop.time()
            returncode, run = await self._run_once(cli)
            self._login, self._url = None, ""
            if run.ready or loop.time() - started >= self._policy.quick_exit:
                quick_exits, delay = 0, self._policy.first_delay
            else:
                quick_exits += 1
            if quick_exits >= self._policy.max_quick_exits:
                raise FailedPrecondition(
                    f"`code tunnel` exited at once {quick_exits} times in a row "
                    f"(last exit: {_describe_exit(returncode)}); "
                    f"its last error: {run.last_error or 'none printed'}"
                )
            self._publish(
                Error(
                    f"`code tunnel` exited with {_describe_exit(returncode)}; "
                    f"restarting in {delay:g}s"
                )
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._policy.max_delay)
            self._restarts += 1

    async def _run_once(self, cli: str) -> tuple[int, _Run]:
        argv = [cli, "tunnel", "--accept-server-license-terms", "--no-sleep", "--name", self.name]
        proc = await processes.start([*argv, *self._data_dir_args], env=_CLI_ENV)
        assert proc.stdout is not None and proc.stderr is not None
        run = _Run()
        readers = [
            asyncio.create_task(self._read(stream, run)) for stream in (proc.stdout, proc.stderr)
        ]
        try:
            returncode = await proc.wait()
            await asyncio.wait(readers, timeout=_DRAIN_TIMEOUT)
        finally:
            if proc.returncode is None:
                await _stop_process(proc)
            for reader in readers:
                reader.cancel()
        return returncode, run

    async def _read(self, stream: asyncio.StreamReader, run: _Run) -> None:
        async for raw in stream:
            event = parse_line(raw.decode(errors="replace"), self.name)
            if isinstance(event, Ready):
                run.ready = True
            elif isinstance(event, Error):
                run.last_error = event.message
            if event is not None:
                self._publish(event)

    async def _unregister(self, cli: str) -> None:
        """Frees the tunnel's slot in the account's machine limit."""
        argv = [cli, "tunnel", "unregister", *self._data_dir_args]
        try:
            done = await processes.run(argv, env=_CLI_ENV, timeout=_UNREGISTER_TIMEOUT)
        except (AgentError, TimeoutError) as exc:
            self._publish(Error(f"`code tunnel unregister` failed: {exc!r}"))
            return
        if done.returncode != 0:
            said = escape(done.stderr.decode(errors="replace").strip())
            self._publish(Error(f"`code tunnel unregister` failed: {said}"))

    def close(self) -> None:
        if self._closer is None:
            self._closer = asyncio.get_running_loop().create_task(self._shut_down())

    async def _shut_down(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
        if self._cli is not None:
            await self._unregister(self._cli)
        self._finished = True
        self._deliver(None)

    async def wait_closed(self) -> None:
        if self._closer is not None:
            await asyncio.shield(self._closer)

    async def __aenter__(self) -> "VscodeTunnel":
        self.start()
        return self
