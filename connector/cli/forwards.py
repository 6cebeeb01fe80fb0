"""Background forwards, kept by the daemon: `tether forward list|stop` and
`tether forward RUN SPEC --background`.

`forward list` and `forward stop` read as subcommands of `forward`, whose
own arguments are a run and SPECs; `route_forward_subcommands` sends those
two words to this group, so a run cannot be named `list` or `stop`.
"""

import asyncio
import datetime
import json
from typing import Annotated

import grpc
import typer

from connector.daemon_client import daemon_stub
from connector.errors import TetherError
from connector.terminal import escape_text
from protos import daemon_pb2 as pb

app = typer.Typer(help="Background forwards kept by the daemon.", no_args_is_help=True)

SUBCOMMANDS = ("list", "stop")


def route_forward_subcommands(args: list[str]) -> list[str]:
    """`forward list ...` -> `forwards list ...`; anything else unchanged."""
    if len(args) >= 2 and args[0] == "forward" and args[1] in SUBCOMMANDS:
        return ["forwards", *args[1:]]
    return args


def start_in_background(run: str, rank: int, specs: list[str]) -> list[pb.ForwardEntry]:
    """Hands SPECs to the daemon, starting it when none runs."""
    from connector.cli.daemon import ensure_running

    ensure_running()

    async def add() -> list[pb.ForwardEntry]:
        async with daemon_stub() as stub:
            request = pb.AddForwardsRequest(run=run, rank=rank, specs=specs)
            try:
                return list((await stub.AddForwards(request, timeout=30)).forwards)
            except grpc.aio.AioRpcError as exc:  # the daemon's words, e.g. a port in use
                raise TetherError(exc.details() or exc.code().name) from None

    return asyncio.run(add())


def describe(entry: pb.ForwardEntry) -> str:
    when = (
        datetime.datetime.fromtimestamp(entry.last_contact_unix_ms / 1000).strftime("%H:%M:%S")
        if entry.last_contact_unix_ms
        else "never"
    )
    line = (
        f"{entry.run} r{entry.rank} {entry.spec} -> localhost:{entry.local_port}  "
        f"{entry.link_state}  {entry.active_connections} open / {entry.total_connections} total  "
        f"{entry.bytes_out} B out, {entry.bytes_in} B in  last contact {when}"
    )
    return escape_text(line + (f"  ({entry.error})" if entry.error else ""))


@app.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="For scripts.")] = False,
) -> None:
    """Every background forward and its state."""

    async def ask() -> pb.ListForwardsReply:
        async with daemon_stub() as stub:
            return await stub.ListForwards(pb.ListForwardsRequest(), timeout=10)

    reply = asyncio.run(ask())
    if as_json:
        keys = ("run", "rank", "spec", "local_port", "link_state", "active_connections")
        rows = [{k: getattr(e, k) for k in (*keys, "bytes_out", "bytes_in", "error")}
                for e in reply.forwards]  # fmt: skip
        typer.echo(json.dumps(rows, indent=1))
        return
    if not reply.forwards:
        typer.echo("no background forwards")
    for entry in reply.forwards:
        typer.echo(describe(entry))


@app.command()
def stop(
    run: Annotated[str, typer.Argument(help="The run whose forwards to stop.")],
    spec: Annotated[str, typer.Argument(help="Only this SPEC (default: all).")] = "",
) -> None:
    """Stop one background forward of a run, or all of them."""

    async def ask() -> int:
        async with daemon_stub() as stub:
            request = pb.StopForwardsRequest(run=run, spec=spec)
            return (await stub.StopForwards(request, timeout=30)).stopped

    stopped = asyncio.run(ask())
    if not stopped:
        what = f"forward {spec} of run {run}" if spec else f"forwards of run {run}"
        raise typer.BadParameter(f"no background {escape_text(what)}")
    typer.echo(f"stopped {stopped} forward{'s' if stopped != 1 else ''}")
