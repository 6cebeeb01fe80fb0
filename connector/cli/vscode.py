"""`tether vscode RUN`: a VS Code tunnel into one node of the run.

The agent finds or downloads the `code` CLI and runs the tunnel under its own
supervision; this command only starts it and walks the person through what
the tunnel needs from them: the GitHub device login, then where to connect.
Leaving the command (Ctrl-C) leaves the tunnel running on the agent; running
it again shows where it stands.
"""

import asyncio
import webbrowser
from typing import TYPE_CHECKING, Annotated

import grpc
import typer

from connector import config
from connector.cli.oneshot import AgentCalls, pick_ranks
from connector.errors import LinkError, RemoteError, TetherError
from connector.link import is_link_loss, translate_rpc_error
from connector.terminal import escape_text
from protos import agent_pb2 as pb
from protos.agent_pb2_grpc import AgentStub

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID


def vscode(
    run: Annotated[str, typer.Argument(metavar="RUN", help="The run.")],
    rank: Annotated[int, typer.Option("--rank", "-r", min=0, help="Which node of the run.")] = 0,
    name: Annotated[
        str | None,
        typer.Option(help="The tunnel's name (default: RUN-rRANK, fitted to VS Code's rules)."),
    ] = None,
    open_browser: Annotated[
        bool, typer.Option("--open", help="Open the login page and the editor in the browser.")
    ] = False,
    status: Annotated[bool, typer.Option("--status", help="Only show the tunnel's state.")] = False,
    stop: Annotated[
        bool, typer.Option("--stop", help="Stop the tunnel and unregister it.")
    ] = False,
) -> None:
    """Open VS Code on a node of the run, in the browser or the desktop app."""
    if status and stop:
        raise TetherError("--status and --stop do not go together")
    run_config = config.get_run(run)
    pick_ranks(run_config, rank, every=False)
    where = f"run {run_config.name} rank {rank}"

    async def main() -> None:
        async with AgentCalls(run_config, rank) as calls:
            if stop:
                await _stop(calls, where)
            elif status:
                _show_status(await _status(calls), where)
            else:
                await _tunnel(calls, where, name or "", open_browser)

    asyncio.run(main())


async def _status(calls: AgentCalls) -> pb.VscodeStatusReply:
    return await calls.call("VscodeStatus", pb.VscodeStatusRequest(), pb.VscodeStatusReply)


async def _stop(calls: AgentCalls, where: str) -> None:
    try:
        await calls.call("VscodeStop", pb.VscodeStopRequest(), pb.VscodeStopReply, idempotent=False)
    except RemoteError as exc:
        if exc.code != "FAILED_PRECONDITION":
            raise
        raise TetherError(f"no VS Code tunnel is running on {where}") from None
    typer.echo(f"stopped the VS Code tunnel on {where} and unregistered it")


async def _tunnel(calls: AgentCalls, where: str, name: str, open_browser: bool) -> None:
    """Shows the running tunnel, or starts one and follows it until it is ready."""
    current = await _status(calls)
    if current.running and current.url and name in ("", current.name):
        _show_status(current, where)
        return
    view = _TunnelView(where, open_browser)
    # The status call above connected (or gave up on an unreachable agent).
    channel = await calls.link.channel()
    request = pb.VscodeTunnelRequest(name=name)
    try:
        async for event in AgentStub(channel).VscodeTunnel(request, metadata=calls.link.metadata):
            view.show(event)
    except grpc.aio.AioRpcError as exc:
        if is_link_loss(exc) and await calls.link.is_lost(channel):
            raise _dropped(where) from None
        raise TetherError(
            f"the VS Code tunnel on {where} did not start: "
            f"{translate_rpc_error(exc, calls.run.name)}"
        ) from None
    except asyncio.CancelledError as exc:
        if not is_link_loss(exc):
            raise
        raise _dropped(where) from None
    finally:
        view.close()
    if not view.ready:
        raise TetherError(f"the VS Code tunnel on {where} stopped before it was ready")


def _dropped(where: str) -> LinkError:
    return LinkError(
        f"the link to {where} dropped; the tunnel goes on starting on the agent: "
        "run this command again to follow it"
    )


def _console() -> "Console":
    from rich.console import Console

    return Console(highlight=False)


def _show_status(reply: pb.VscodeStatusReply, where: str) -> None:
    if not reply.running:
        typer.echo(f"no VS Code tunnel is running on {where}")
        if reply.last_error:
            typer.echo(f"its last error: {escape_text(reply.last_error)}")
        return
    if reply.url:
        state = "ready"
    elif reply.HasField("login"):
        state = "waiting for the GitHub login"
    else:
        state = "starting"
    typer.echo(f"VS Code tunnel {escape_text(reply.name)} on {where}: {state}")
    if reply.restarts:
        typer.echo(f"restarted {reply.restarts} times; last error: {escape_text(reply.last_error)}")
    if reply.HasField("login") and not reply.url:
        _show_login(_console(), reply.login)
    if reply.url:
        _show_ready(_console(), reply.name, reply.url)


def _show_login(console: "Console", login: pb.VscodeLogin) -> None:
    from rich.panel import Panel
    from rich.text import Text

    body = Text()
    body.append("1. Open   ")
    body.append(escape_text(login.url), style="bold underline")
    body.append("\n2. Enter  ")
    body.append(escape_text(login.code), style="bold")
    title = Text("Sign in with GitHub to authorize the tunnel")
    console.print(Panel(body, title=title, expand=False))


def _show_ready(console: "Console", name: str, url: str) -> None:
    from rich.panel import Panel
    from rich.text import Text

    shown = escape_text(name)
    body = Text()
    body.append("In the browser:  ")
    body.append(escape_text(url), style="bold underline")
    body.append(
        '\nIn VS Code:      install the "Remote - Tunnels" extension, run\n'
        '                 "Remote-Tunnels: Connect to Tunnel..." from the Command\n'
        "                 Palette, sign in with the same GitHub account and pick\n"
        f"                 {shown}"
    )
    title = Text(f"VS Code tunnel {shown} is ready")
    console.print(Panel(body, title=title, expand=False))


class _TunnelView:
    """Shows the tunnel's events as they come: a download bar, the login, the link."""

    def __init__(self, where: str, open_browser: bool) -> None:
        self._where = where
        self._open_browser = open_browser
        self._console = _console()
        self._progress: tuple[Progress, TaskID] | None = None
        self.ready = False

    def show(self, event: pb.VscodeEvent) -> None:
        kind = event.WhichOneof("kind")
        if kind == "progress":
            self._show_progress(event.progress)
            return
        self.close()
        if kind == "login":
            _show_login(self._console, event.login)
            self._browse(event.login.url)
            self._console.print("Waiting for the login (Ctrl-C leaves the tunnel waiting)...")
        elif kind == "ready":
            self.ready = True
            _show_ready(self._console, event.ready.name, event.ready.url)
            self._browse(event.ready.url)
        elif kind == "error":
            typer.echo(f"tether: {self._where}: {escape_text(event.error.message)}", err=True)

    def _show_progress(self, progress: pb.VscodeProgress) -> None:
        from rich.markup import escape as markup_escape

        if self._progress is None:
            from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

            bar = Progress(
                *Progress.get_default_columns(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=self._console,
            )
            bar.start()
            self._progress = (bar, bar.add_task("VS Code CLI"))
        bar, task = self._progress
        description = markup_escape(f"VS Code CLI: {escape_text(progress.stage)}")
        if progress.stage == "download":
            total = progress.total_bytes or None  # None: the server did not say
            bar.update(task, description=description, completed=progress.done_bytes, total=total)
        else:  # later stages keep the bar where the download left it
            bar.update(task, description=description)

    def _browse(self, url: str) -> None:
        if self._open_browser and not webbrowser.open(url):
            typer.echo(f"tether: could not open a browser at {escape_text(url)}", err=True)

    def close(self) -> None:
        """Ends the download bar, once its events are over."""
        if self._progress is not None:
            self._progress[0].stop()
            self._progress = None
