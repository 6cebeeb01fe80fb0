"""`tether describe`: what a run is, node by node, in one screen."""

import asyncio
import json
import time
from dataclasses import dataclass
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
    span,
)
from connector.errors import TetherError
from connector.terminal import escape_text
from protos import agent_pb2 as pb


@dataclass(frozen=True, slots=True)
class Node:
    info: pb.InfoReply
    status: pb.StatusReply


async def _ask(calls: AgentCalls) -> Node:
    info, status = await asyncio.gather(
        calls.call("Info", pb.InfoRequest(), pb.InfoReply),
        calls.call("Status", pb.StatusRequest(top_processes=0), pb.StatusReply),
    )
    return Node(info, status)


def _deadline(info: pb.InfoReply) -> str:
    if not info.deadline_unix_ms:
        return "none"
    left = info.deadline_unix_ms / 1000 - time.time()
    return f"{local_time(info.deadline_unix_ms)} (in {span(left)})"


def _row(node: Node) -> list[str]:
    from connector.status_view import gpu_summary

    info = node.info
    return [
        str(info.rank),
        escape_text(info.hostname),
        escape_text(info.agent_version),
        local_time(info.started_unix_ms),
        _deadline(info),
        str(info.session_count),
        str(info.forward_count),
        gpu_summary(node.status.gpu),
    ]


def _as_json(name: str, results: dict[int, Node | TetherError]) -> dict[str, object]:
    from connector.status_view import as_plain

    nodes = {
        str(rank): {"error": str(r)}
        if isinstance(r, TetherError)
        else {"info": as_plain(r.info), "gpu": as_plain(r.status.gpu)}
        for rank, r in sorted(results.items())
    }
    return {"run": name, "ranks": len(results), "nodes": nodes}


def describe(
    run: RunArg = None,
    rank: RankOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """The run's name and ranks, and per node: host, agent version, started,
    deadline, sessions, forwards and GPUs."""
    run_config = config.get_run(run)
    ranks = pick_ranks(run_config, rank, every=True)
    results = asyncio.run(each_rank(run_config, ranks, _ask))
    failures = [r for r in results.values() if isinstance(r, TetherError)]
    if len(results) == 1 and failures:
        raise failures[0]
    if as_json:
        typer.echo(json.dumps(_as_json(run_config.name, results), indent=2))
    else:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        console = Console(highlight=False)
        count = len(run_config.ranks)
        ranks_text = "1 rank" if count == 1 else f"{count} ranks"
        console.print(Text(f"run {run_config.name}: {ranks_text}", style="bold"))
        columns = ["RANK", "HOST", "AGENT", "STARTED", "DEADLINE", "SESSIONS", "FORWARDS"]
        table = Table(*columns, "GPUS", box=None)
        for r, result in sorted(results.items()):
            if isinstance(result, TetherError):
                table.add_row(str(r), Text(f"unreachable: {escape_text(str(result))}", style="red"))
            else:
                table.add_row(*(Text(cell) for cell in _row(result)))
        console.print(table)
    if failures:
        raise typer.Exit(max(exc.exit_code for exc in failures))
