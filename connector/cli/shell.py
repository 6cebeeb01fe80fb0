"""`tether connect` and `tether exec`: a shell or a command in the run."""

import asyncio
import os
import shlex
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated

import typer

from connector import config
from connector.link import Link, LinkState
from connector.remote_session import DISCONNECTED_EXIT_CODE, interactive, piped
from connector.terminal import StatusLine
from protos import agent_pb2 as pb

DEFAULT_TMUX_SESSION = "main"


def with_default_tmux_name(args: list[str]) -> list[str]:
    """`connect --tmux` with no name means the session "main" (a bare option
    value, which click cannot express): a `--tmux` that ends the line or is
    followed by another option gets the default name inserted."""
    if "connect" not in args:
        return args
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--":
            break
        if arg == "--tmux" and (i + 1 == len(out) or out[i + 1].startswith("-")):
            out.insert(i + 1, DEFAULT_TMUX_SESSION)
            break
    return out


RunArg = Annotated[str | None, typer.Argument(help="The run (default: the only configured run).")]
RankOpt = Annotated[int, typer.Option("--rank", "-r", min=0, help="Which node of the run.")]


def _state_reporter(status: StatusLine) -> Callable[[LinkState], None]:
    def report(state: LinkState) -> None:
        # A first connection that fails is retried too, and must show it.
        if state.kind == "reconnecting" or (state.kind == "connecting" and state.error):
            detail = f": {state.error}" if state.error else ""
            status.update(f"tether: {state.kind} ({state.retry_in:.0f}s){detail}")

    return report


async def _with_link(
    run: config.RunConfig,
    rank: int,
    status: StatusLine,
    session: Callable[[Link], Awaitable[int]],
) -> int:
    async with Link(run, rank, on_state=_state_reporter(status)) as link:
        return await session(link)


def connect(
    run: RunArg = None,
    rank: RankOpt = 0,
    command: Annotated[
        str | None, typer.Option("--command", "-c", help="Run this instead of a login shell.")
    ] = None,
    tmux: Annotated[
        str | None,
        typer.Option(
            "--tmux",
            help="Create or attach to this tmux session; a bare --tmux means 'main'.",
            show_default=False,
        ),
    ] = None,
    detach_others: Annotated[
        bool, typer.Option("--detach-others", help="With --tmux: detach other clients.")
    ] = False,
    escape_char: Annotated[
        str, typer.Option("--escape-char", "-e", help="Escape character, or 'none'.")
    ] = "~",
    attach: Annotated[
        str | None,
        typer.Option(
            "--attach",
            metavar="ID",
            help="Take up a session left running (see `tether sessions RUN ls`).",
        ),
    ] = None,
) -> None:
    """A shell in the run that survives Wi-Fi drops, sleep and network changes."""
    request = pb.ShellOpen(
        term=os.environ.get("TERM", "xterm-256color"),
        command=command or "",
        tmux_session=tmux or "",
        tmux_detach_others=detach_others,
    )
    status = StatusLine()
    run_config = config.get_run(run)
    session_id = attach or uuid.uuid4().hex

    def session(link: Link) -> Awaitable[int]:
        return interactive(
            link,
            request,
            escape_char=escape_char,
            status=status,
            session_id=session_id,
            attach=attach is not None,
        )

    code = asyncio.run(_with_link(run_config, rank, status, session))
    if code == DISCONNECTED_EXIT_CODE:
        status.write(
            f"tether: disconnected; the session keeps running on the agent until its idle "
            f"timeout: tether connect {run_config.name} --attach {session_id}"
        )
    raise typer.Exit(code)


def exec_(
    run: Annotated[str, typer.Argument(help="The run.")],
    command: Annotated[list[str], typer.Argument(help="The command and its arguments.")],
    rank: RankOpt = 0,
) -> None:
    """Run a command in the run: stdin, stdout, stderr and the exit code, binary-safe.

    One argument is a command line for the remote shell (`'make && ./a.out'`);
    several are quoted so that each reaches the program as it was given.
    """
    line = command[0] if len(command) == 1 else shlex.join(command)
    request = pb.ShellOpen(command=line)
    status = StatusLine()
    code = asyncio.run(
        _with_link(config.get_run(run), rank, status, lambda link: piped(link, request, status))
    )
    raise typer.Exit(code)
