"""`tether cp SRC DST`: a file or a directory tree between the laptop and a
run, with `RUN:PATH` on one side. Directories are always copied whole (no
-r: `--rank` has no short form here, so nothing is mistaken for scp's -r).

The copy is SFTP from tether's own client (connector/ssh.py) to the agent's
SSH server, carried by one resumable Forward stream as `tether proxy` is, so
a link cut pauses the copy instead of ending it; if the session does end,
the same command again continues where it stopped (connector/cp.py).
"""

import asyncio
import sys
import time
from typing import Annotated

import typer

from connector import config
from connector.cli.ssh_config import authorize, ssh_files
from connector.cp import Copy, CopyError, Endpoint, LocalSide, Plan, Side, Tally, parse_endpoint
from connector.link import Link
from connector.proxy import carry


def _sides(source: str, target: str) -> tuple[Endpoint, Endpoint, str]:
    """Both endpoints and the run between them; exactly one is in a run."""
    ends = parse_endpoint(source), parse_endpoint(target)
    runs = {end.run for end in ends if end.run is not None}
    if len(runs) != 1 or all(end.run is not None for end in ends):
        raise CopyError(
            "name the run on exactly one side, as RUN:PATH "
            "(a laptop path with a colon can be written ./a:b)"
        )
    return ends[0], ends[1], runs.pop()


async def _with_progress(copy: Copy, plan: Plan) -> Tally:
    """The copy under a rich progress bar (bytes, rate, time left) on stderr."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    console = Console(stderr=True)
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task("copy", total=plan.tally.to_send)
        return await copy.run(plan, lambda n: progress.advance(task, n))


def _summary(tally: Tally, seconds: float) -> str:
    rate = tally.sent / max(seconds, 1e-6) / 1e6
    parts = [
        f"{tally.files} file{'' if tally.files == 1 else 's'}",
        f"sent {tally.sent} bytes in {seconds:.1f}s ({rate:.1f} MB/s)",
    ]
    if tally.complete:
        parts.append(f"{tally.complete} already complete")
    if tally.resumed:
        parts.append(f"{tally.resumed} resumed")
    if tally.skipped_special:
        parts.append(f"{tally.skipped_special} symlinks or special files not copied")
    return "tether cp: " + ", ".join(parts)


async def _copy(source: str, target: str, rank: int) -> Tally:
    source_end, target_end, run_name = _sides(source, target)
    run = config.get_run(run_name)
    from connector import ssh  # asyncssh loads only for the commands that need it

    client_key, public_key = ssh.ensure_client_key(ssh_files().identity.parent)
    async with Link(run, rank) as link:
        reply = await authorize(link, public_key)
        sock, _, relay = await carry(link, reply.port)
        try:
            async with ssh.sftp_over(sock, reply.user, reply.host_public_key, client_key) as remote:
                local = LocalSide()
                sides: tuple[Side, Side] = (
                    (local, remote) if source_end.run is None else (remote, local)
                )
                copy = Copy(sides[0], source_end, sides[1], target_end)
                return await _with_progress(copy, await copy.plan())
        finally:
            relay.cancel()
            sock.close()


def cp(
    source: Annotated[str, typer.Argument(help="What to copy: a laptop path, or RUN:PATH.")],
    target: Annotated[str, typer.Argument(help="Where to: a laptop path, or RUN:PATH.")],
    rank: Annotated[int, typer.Option("--rank", min=0, help="Which node of the run.")] = 0,
) -> None:
    """Copy files or directories to or from a run, keeping modes and mtimes;
    run it again after an interruption and it resumes.

    A directory becomes DST (made, or merged into); it goes inside DST under
    its own name when DST ends with / or is `RUN:` or `.`. A laptop path
    with a colon can be written ./a:b."""
    started = time.monotonic()
    tally = asyncio.run(_copy(source, target, rank))
    print(_summary(tally, time.monotonic() - started), file=sys.stderr)
