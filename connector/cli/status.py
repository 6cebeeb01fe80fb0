"""`tether status`: the GPU and system picture of one node, or of every node."""

import asyncio
import json
from typing import TYPE_CHECKING, Annotated

import typer

from connector import config
from connector.cli.oneshot import AgentCalls, RankOpt, Ranks, RunArg, pick_ranks, successes
from connector.errors import TetherError
from protos import agent_pb2 as pb

if TYPE_CHECKING:
    from rich.console import RenderableType

Results = dict[int, pb.StatusReply | TetherError]


def status(
    run: RunArg = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh in place.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    rank: RankOpt = None,
    all_ranks: Annotated[
        bool, typer.Option("--all-ranks", help="Every node, in parallel, and a total.")
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.2, help="Seconds between refreshes with --watch.")
    ] = 2.0,
    top: Annotated[int, typer.Option(min=0, max=100, help="Top processes per node.")] = 8,
) -> None:
    """GPUs (utilization, memory, temperature, power, clocks, ECC, throttling,
    processes), CPU, memory, disk, network and the top processes."""
    if rank is not None and all_ranks:
        raise typer.BadParameter("give --rank N or --all-ranks, not both")
    run_config = config.get_run(run)
    ranks = pick_ranks(run_config, rank, every=all_ranks)
    request = pb.StatusRequest(top_processes=top)

    async def ask(calls: AgentCalls) -> pb.StatusReply:
        return await calls.call("Status", request, pb.StatusReply)

    async def main() -> Results:
        async with Ranks(run_config, ranks) as pool:
            if not watch:
                return await pool.each(ask)
            if as_json:
                while True:
                    typer.echo(json.dumps(_as_json(await pool.each(ask), all_ranks)))
                    await asyncio.sleep(interval)
            from rich.live import Live

            with Live(auto_refresh=False) as live:
                while True:
                    live.update(_view(await pool.each(ask), all_ranks), refresh=True)
                    await asyncio.sleep(interval)

    results = asyncio.run(main())
    failures = [r for r in results.values() if isinstance(r, TetherError)]
    if len(results) == 1 and failures:
        raise failures[0]
    if as_json:
        typer.echo(json.dumps(_as_json(results, all_ranks), indent=2))
    else:
        from rich.console import Console

        Console(highlight=False).print(_view(results, all_ranks))
    if failures:
        raise typer.Exit(max(exc.exit_code for exc in failures))


def _as_json(results: Results, all_ranks: bool) -> object:
    from connector.status_view import as_plain, totals

    replies = successes(results)
    if not all_ranks and replies:
        return as_plain(next(iter(replies.values())))
    return {
        "nodes": [as_plain(reply) for _, reply in sorted(replies.items())],
        "unreachable": {str(rank): str(r) for rank, r in results.items() if rank not in replies},
        "total": totals(list(replies.values())),
    }


def _view(results: Results, all_ranks: bool) -> "RenderableType":
    from rich.console import Group

    from connector.status_view import failed_node_view, node_view, total_view, totals

    parts = [
        failed_node_view(rank, str(r)) if isinstance(r, TetherError) else node_view(r)
        for rank, r in sorted(results.items())
    ]
    if all_ranks:
        replies = list(successes(results).values())
        parts.append(total_view(totals(replies), len(results) - len(replies)))
    return Group(*parts)
