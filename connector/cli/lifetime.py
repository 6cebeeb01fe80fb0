"""`tether update` and `tether stop`: the run's deadline, and ending the run now.

Both act on every node of the run unless --rank names one: each node's agent
keeps its own container alive, so a deadline or a stop that reached only some
of them would leave the others running.
"""

import asyncio
import getpass
import socket
import time
from typing import Annotated

import typer

from connector import config
from connector.cli.oneshot import (
    AgentCalls,
    RankOpt,
    RunArg,
    each_rank,
    local_time,
    pick_ranks,
    report_failures,
    span,
    successes,
)
from connector.errors import RemoteError, TetherError
from protos import agent_pb2 as pb


def _which(ranks: list[int], every: range) -> str:
    if len(every) == 1:
        return ""
    if len(ranks) == 1:
        return f" rank {ranks[0]}"
    return f" ({len(ranks)} nodes)"


def update(
    max_duration: Annotated[
        float,
        typer.Option(
            "--max-duration", metavar="HOURS", help="The run's new length, counted from its start."
        ),
    ],
    run: RunArg = None,
    rank: RankOpt = None,
) -> None:
    """Move the run's deadline; the agent refuses one that has already passed."""
    run_config = config.get_run(run)
    ranks = pick_ranks(run_config, rank, every=True)
    request = pb.SetDeadlineRequest(max_duration_hours=max_duration)

    async def set_deadline(calls: AgentCalls) -> pb.SetDeadlineReply:
        try:
            return await calls.call("SetDeadline", request, pb.SetDeadlineReply)
        except RemoteError as exc:
            if exc.code != "INVALID_ARGUMENT":
                raise
            raise TetherError(
                f"the agent refused --max-duration {max_duration:g}: {exc.message}"
            ) from None

    results = asyncio.run(each_rank(run_config, ranks, set_deadline))
    now_ms = time.time() * 1000
    for r, reply in sorted(successes(results).items()):
        where = f"run {run_config.name}" + (f" rank {r}" if len(ranks) > 1 else "")
        left = span((reply.deadline_unix_ms - now_ms) / 1000)
        typer.echo(f"{where} now ends at {local_time(reply.deadline_unix_ms)} (in {left})")
    report_failures(results)


def stop(
    run: RunArg = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    rank: RankOpt = None,
) -> None:
    """Stop the run gracefully: its agents end their sessions and exit, and the
    containers end."""
    run_config = config.get_run(run)
    ranks = pick_ranks(run_config, rank, every=True)
    what = f"run {run_config.name}{_which(ranks, run_config.ranks)}"
    if not yes:
        typer.confirm(f"Stop {what}? Its sessions and processes end.", abort=True)
    request = pb.StopRequest(reason=f"tether stop by {getpass.getuser()}@{socket.gethostname()}")

    async def stop_one(calls: AgentCalls) -> pb.StopReply:
        return await calls.call("Stop", request, pb.StopReply, idempotent=False)

    results = asyncio.run(each_rank(run_config, ranks, stop_one))
    for r in sorted(successes(results)):
        where = f"run {run_config.name}" + (f" rank {r}" if len(ranks) > 1 else "")
        typer.echo(f"{where} is stopping")
    report_failures(results)
