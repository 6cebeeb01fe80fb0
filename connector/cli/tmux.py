"""`tether tmux RUN ls|new|kill|rename`: the tmux sessions the agent keeps."""

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer

from connector import config
from connector.cli.oneshot import AgentCalls, local_time, pick_ranks, span
from connector.terminal import escape_text
from protos import agent_pb2 as pb

app = typer.Typer(
    help="List, create, kill and rename the run's tmux sessions.", no_args_is_help=True
)

T = TypeVar("T")
RankOpt = Annotated[int, typer.Option("--rank", "-r", min=0, help="Which node of the run.")]
NameArg = Annotated[str, typer.Argument(metavar="NAME", help="The tmux session.")]


@app.callback()
def tmux(
    ctx: typer.Context,
    run: Annotated[str, typer.Argument(metavar="RUN", help="The run.")],
) -> None:
    """The agent runs tmux on its own socket; sessions outlive the agent."""
    ctx.obj = run


def _call(ctx: typer.Context, rank: int, work: Callable[[AgentCalls], Awaitable[T]]) -> T:
    run = config.get_run(ctx.obj)
    pick_ranks(run, rank, every=False)

    async def main() -> T:
        async with AgentCalls(run, rank) as calls:
            return await work(calls)

    return asyncio.run(main())


@app.command("ls")
def list_sessions(ctx: typer.Context, rank: RankOpt = 0) -> None:
    """Show the sessions: windows, attached clients, created, last activity."""

    async def work(calls: AgentCalls) -> pb.TmuxListReply:
        return await calls.call("TmuxList", pb.TmuxListRequest(), pb.TmuxListReply)

    sessions = _call(ctx, rank, work).sessions
    if not sessions:
        typer.echo(
            f"no tmux sessions on run {ctx.obj} rank {rank}; start one with "
            f"`tether tmux {ctx.obj} new NAME` or `tether connect {ctx.obj} --tmux`"
        )
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    now = time.time()
    table = Table("NAME", "WINDOWS", "ATTACHED", "CREATED", "ACTIVITY", box=None)
    for s in sessions:
        table.add_row(
            Text(escape_text(s.name)),
            str(s.windows),
            str(s.attached),
            local_time(s.created_unix * 1000),
            f"{span(now - s.activity_unix)} ago",
        )
    Console(highlight=False).print(table)


@app.command("new")
def new(
    ctx: typer.Context,
    name: NameArg,
    command: Annotated[
        str | None, typer.Option("--command", "-c", help="Run this in the new session.")
    ] = None,
    rank: RankOpt = 0,
) -> None:
    """Create a detached session, sized like this terminal (attach with `connect --tmux`)."""
    cols, rows = shutil.get_terminal_size()
    request = pb.TmuxCreateRequest(
        name=name, command=command or "", size=pb.WindowSize(cols=cols, rows=rows)
    )

    async def work(calls: AgentCalls) -> pb.TmuxCreateReply:
        return await calls.call("TmuxCreate", request, pb.TmuxCreateReply)

    reply = _call(ctx, rank, work)
    shown = escape_text(reply.session.name)
    if reply.created:
        typer.echo(f"created tmux session {shown}; attach: tether connect {ctx.obj} --tmux {shown}")
    else:
        typer.echo(f"tmux session {shown} already exists; nothing changed")


@app.command("kill")
def kill(ctx: typer.Context, name: NameArg, rank: RankOpt = 0) -> None:
    """End a session and every process in it."""

    async def work(calls: AgentCalls) -> pb.TmuxKillReply:
        return await calls.call(
            "TmuxKill", pb.TmuxKillRequest(name=name), pb.TmuxKillReply, idempotent=False
        )

    _call(ctx, rank, work)
    typer.echo(f"killed tmux session {escape_text(name)}")


@app.command("rename")
def rename(
    ctx: typer.Context,
    old: Annotated[str, typer.Argument(metavar="OLD", help="The session's name now.")],
    new_name: Annotated[str, typer.Argument(metavar="NEW", help="Its new name.")],
    rank: RankOpt = 0,
) -> None:
    """Rename a session."""
    request = pb.TmuxRenameRequest(old_name=old, new_name=new_name)

    async def work(calls: AgentCalls) -> pb.TmuxRenameReply:
        return await calls.call("TmuxRename", request, pb.TmuxRenameReply, idempotent=False)

    _call(ctx, rank, work)
    typer.echo(f"renamed tmux session {escape_text(old)} to {escape_text(new_name)}")
