"""`tether proxy RUN [--rank N]`: the ProxyCommand `tether ssh-config` writes.

It provisions tether's key again on every connection, which also tells it
the SSH server's port (a restarted agent listens on a new one), then bridges
ssh to that port over a resumable Forward stream.
"""

import asyncio
from typing import Annotated

import typer

from connector import config
from connector.cli.shell import RankOpt
from connector.cli.ssh_config import authorize, ssh_files
from connector.config import RunConfig
from connector.link import Link
from connector.proxy import bridge


async def _proxy(run: RunConfig, rank: int) -> int:
    from connector import ssh  # asyncssh loads only for the commands that need it

    _, public_key = ssh.ensure_client_key(ssh_files().identity.parent)
    async with Link(run, rank) as link:
        reply = await authorize(link, public_key)
        return await bridge(link, reply.port)


def proxy(
    run: Annotated[str, typer.Argument(help="The run.")],
    rank: RankOpt = 0,
) -> None:
    """Carry ssh to the run's SSH server (use as ssh's ProxyCommand); the
    session survives link drops."""
    raise typer.Exit(asyncio.run(_proxy(config.get_run(run), rank)))
