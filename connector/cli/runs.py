"""`tether runs add|list|remove|unpin`: the runs this laptop can reach."""

import json
from typing import Annotated, Any

import typer

from connector import config
from connector.address import parse_address
from connector.config import RunConfig
from connector.errors import ConfigError

app = typer.Typer(help="Add, list and remove the runs tether can reach.", no_args_is_help=True)


def _parse_rank_addresses(specs: list[str]) -> dict[int, str]:
    """Turns repeated N=HOST:PORT options into a rank table."""
    table: dict[int, str] = {}
    for spec in specs:
        rank, sep, address = spec.partition("=")
        if not sep or not rank.isdigit():
            raise ConfigError(f"--rank-address {spec!r}: write N=HOST:PORT, as in 1=node1:7777")
        if int(rank) in table:
            raise ConfigError(f"--rank-address: rank {rank} is given twice")
        table[int(rank)] = str(parse_address(address, f"rank {rank} address"))
    return table


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Letters, digits, - _ .")],
    token_file: Annotated[
        str,
        typer.Option(
            metavar="PATH", help="The file holding the run's token (mode 0600); it is not copied."
        ),
    ],
    address: Annotated[
        str | None,
        typer.Option(metavar="HOST:PORT", help="The agent (rank 0); IPv6 in brackets."),
    ] = None,
    fingerprint: Annotated[
        str | None,
        typer.Option(
            metavar="SHA256",
            help="The agent certificate's SHA-256; without it the first one seen is pinned.",
        ),
    ] = None,
    insecure_loopback: Annotated[
        bool,
        typer.Option(
            "--insecure-loopback", help="Plaintext gRPC; only for an agent on a loopback address."
        ),
    ] = False,
    jump: Annotated[
        str | None,
        typer.Option(metavar="[USER@]HOST[:PORT]", help="Reach the agent through this SSH host."),
    ] = None,
    rank_address: Annotated[
        list[str] | None,
        typer.Option(metavar="N=HOST:PORT", help="Rank N of a multi-node run is here; repeat."),
    ] = None,
    address_pattern: Annotated[
        str | None,
        typer.Option(metavar="HOST:PORT", help="An address with {rank} in it; needs --world-size."),
    ] = None,
    world_size: Annotated[
        int | None,
        typer.Option(metavar="N", min=1, help="The number of ranks --address-pattern covers."),
    ] = None,
) -> None:
    """Remember how to reach a run; a run of the same name is replaced."""
    if address is None:
        if address_pattern is None:
            raise ConfigError("give --address HOST:PORT (or --address-pattern with --world-size)")
        address = address_pattern.replace(config.RANK_PLACEHOLDER, "0")
    run = RunConfig(
        name=config.validate_run_name(name),
        address=str(parse_address(address)),
        token_file=config.check_token_file(token_file),
        fingerprint=None if fingerprint is None else config.normalize_fingerprint(fingerprint),
        insecure_loopback=insecure_loopback,
        jump=jump,
        rank_addresses=_parse_rank_addresses(rank_address or []),
        address_pattern=address_pattern,
        world_size=world_size,
    )
    replaced = config.add_run(run)
    typer.echo(f"{'replaced' if replaced else 'added'} run {run.name} at {run.address}")
    if not run.insecure_loopback and run.fingerprint is None:
        typer.echo("the agent's certificate will be pinned on first connect")


def _tls_summary(run: RunConfig) -> str:
    if run.insecure_loopback:
        return "off (loopback)"
    pinned = [rank for rank in run.ranks if run.fingerprint_for(rank)]
    if not pinned:
        return "pin on first use"
    first = run.fingerprint_for(pinned[0]) or ""
    if len(run.ranks) == 1:
        return f"pinned {first[:16]}…"
    return f"pinned {len(pinned)}/{len(run.ranks)} ranks"


def _as_json(run: RunConfig) -> dict[str, Any]:
    return {
        "name": run.name,
        "addresses": {str(rank): run.address_for(rank) for rank in run.ranks},
        "token_file": run.token_file,
        "fingerprints": {
            str(rank): fp for rank in run.ranks if (fp := run.fingerprint_for(rank)) is not None
        },
        "insecure_loopback": run.insecure_loopback,
        "jump": run.jump,
    }


@app.command("list")
def list_runs(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show every configured run."""
    runs = config.load_config()
    if as_json:
        typer.echo(json.dumps([_as_json(runs[name]) for name in sorted(runs)], indent=2))
        return
    if not runs:
        typer.echo("no runs configured; add one with `tether runs add NAME --address ...`")
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table("NAME", "ADDRESS", "RANKS", "TLS", "JUMP", "TOKEN FILE", box=None)
    for name in sorted(runs):
        run = runs[name]
        cells = [name, run.address, str(len(run.ranks)), _tls_summary(run), run.jump or "-"]
        # Text cells, not markup: "[fe80::1]:7777" must not be read as a style.
        table.add_row(*(Text(cell) for cell in [*cells, run.token_file]))
    Console(highlight=False).print(table)


@app.command("remove")
def remove(name: Annotated[str, typer.Argument(metavar="NAME", help="The run to forget.")]) -> None:
    """Forget a run (its token file is left where it is)."""
    run = config.remove_run(name)
    typer.echo(f"removed run {run.name}")


@app.command("unpin")
def unpin(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The run whose pin to drop.")],
    rank: Annotated[int, typer.Option(help="The rank whose pin to drop.")] = 0,
) -> None:
    """Forget a pinned certificate, so the next connect trusts and pins the new one."""
    config.pin_fingerprint(name, None, rank)
    typer.echo(f"run {name} rank {rank}: certificate pin removed")
