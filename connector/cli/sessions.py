"""`tether sessions RUN [ls|kill ID]`: the shell sessions an agent keeps.

A session outlives its client: after `~.`, a crash of the laptop, or a
connector that was killed, it keeps running (and its output keeps being
buffered) until the agent's idle timeout; `tether connect RUN --attach ID`
takes it up again, replaying what is still buffered.
"""

import asyncio
import time
from typing import Annotated, TypeVar

import typer
from google.protobuf.message import Message

from connector import config
from connector.cli.oneshot import AgentCalls, local_time, pick_ranks, span
from connector.terminal import escape_text
from protos import agent_pb2 as pb

R = TypeVar("R", bound=Message)

app = typer.Typer(help="The shell sessions the run's agent keeps.", no_args_is_help=True)

RunArg = Annotated[str, typer.Argument(metavar="RUN", help="The run.")]
RankOpt = Annotated[int, typer.Option("--rank", "-r", min=0, help="Which node of the run.")]


async def _ask(run_name: str, rank: int, method: str, request: Message, reply: type[R]) -> R:
    run = config.get_run(run_name)
    pick_ranks(run, rank, every=False)
    async with AgentCalls(run, rank) as calls:
        return await calls.call(method, request, reply)


@app.command("ls")
def list_sessions(run: RunArg, rank: RankOpt = 0) -> None:
    """Every session: id, command, attached or not, running or its exit code."""
    reply = asyncio.run(
        _ask(run, rank, "ListSessions", pb.ListSessionsRequest(), pb.ListSessionsReply)
    )
    if not reply.sessions:
        typer.echo(f"no shell sessions on run {run} rank {rank}")
        return
    now = time.time()
    for s in reply.sessions:
        state = "running" if s.running else f"exited {s.exit_code}"
        where = "attached" if s.attached else "detached"
        what = " ".join(s.argv) or "login shell"
        if s.tmux_session:
            what = f"tmux {s.tmux_session}"
        age = span(now - s.created_unix_ms / 1000)
        typer.echo(
            escape_text(
                f"{s.session_id}  {state:9} {where:8} pid {s.pid:<7} {age:>7} old  "
                f"(since {local_time(s.created_unix_ms)})  {what}"
            )
        )


@app.command()
def kill(
    run: RunArg,
    session_id: Annotated[str, typer.Argument(metavar="ID", help="The session's id.")],
    rank: RankOpt = 0,
) -> None:
    """End a session and its processes."""
    request = pb.KillSessionRequest(session_id=session_id)
    asyncio.run(_ask(run, rank, "KillSession", request, pb.KillSessionReply))
    typer.echo(f"killed session {escape_text(session_id)}")
