"""`tether ssh-config [RUN]`: ssh, scp, rsync, sftp and VS Code Remote-SSH
into every rank of a run, with no other setup.

Each rank's agent is given tether's own public key over the authenticated
link (AuthorizeSshKey) and answers with its user and host key, which go into
the managed block of ~/.ssh/config and tether's known_hosts file.
"""

import asyncio
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from connector import config, ssh_config
from connector.cli.shell import RunArg
from connector.config import RunConfig
from connector.errors import LinkError
from connector.link import Link
from connector.terminal import escape_text
from protos import agent_pb2 as pb

AUTHORIZE_TIMEOUT = 30.0


def ssh_files() -> ssh_config.Files:
    """tether's own key pair and known_hosts, in the connector's state dir."""
    directory = config.private_dir(config.state_dir() / "ssh")
    from connector import ssh  # asyncssh loads only for the commands that need it

    return ssh_config.Files(directory / ssh.CLIENT_KEY_FILE, directory / "known_hosts")


def tether_executable() -> str:
    """This program, by absolute path where it can be found: editors start
    ssh with a PATH of their own, where a bare `tether` may not resolve."""
    if os.path.basename(sys.argv[0]) == "tether":
        return os.path.abspath(sys.argv[0])
    return shutil.which("tether") or "tether"


async def authorize(link: Link, public_key: str) -> pb.AuthorizeSshKeyReply:
    """Gives the agent tether's public key; its SSH server answers with its
    port, user and host key (and starts, the first time)."""
    request = pb.AuthorizeSshKeyRequest(public_key=public_key)
    try:
        async with asyncio.timeout(AUTHORIZE_TIMEOUT):
            return await link.call("AuthorizeSshKey", request, pb.AuthorizeSshKeyReply)
    except TimeoutError:
        raise LinkError(
            f"run {link.run.name} rank {link.rank} did not answer in {AUTHORIZE_TIMEOUT:g}s"
        ) from None


async def _authorize_rank(run: RunConfig, rank: int, public_key: str) -> pb.AuthorizeSshKeyReply:
    async with Link(run, rank) as link:
        return await authorize(link, public_key)


async def _rank_hosts(run: RunConfig, public_key: str) -> list[ssh_config.RankHost]:
    from connector.ssh import host_key_line  # asyncssh loads only where it is needed

    replies = await asyncio.gather(*(_authorize_rank(run, rank, public_key) for rank in run.ranks))
    return [
        ssh_config.RankHost(rank, reply.user, host_key_line(reply.host_public_key))
        for rank, reply in zip(run.ranks, replies, strict=True)
    ]


def ssh_config_command(
    run: RunArg = None,
    file: Annotated[Path, typer.Option("--file", help="The ssh config file to update.")] = Path(
        "~/.ssh/config"
    ),
) -> None:
    """Add the run to ~/.ssh/config: then `ssh tether-RUN` (rank 0) or
    `ssh tether-RUN-rN`, and scp, rsync, sftp and VS Code Remote-SSH, just work."""
    run_config = config.get_run(run)
    from connector import ssh  # asyncssh loads only for the commands that need it

    files = ssh_files()
    _, public_key = ssh.ensure_client_key(files.identity.parent)
    hosts = asyncio.run(_rank_hosts(run_config, public_key))
    path = file.expanduser()
    warnings, backup = ssh_config.apply(path, run_config.name, hosts, files, tether_executable())
    for warning in warnings:
        typer.echo(f"tether: warning: {path}: {escape_text(warning)}", err=True)
    if backup is not None:
        typer.echo(f"backed up {path} to {backup}")
    names = [ssh_config.run_alias(run_config.name)]
    names += [ssh_config.rank_alias(run_config.name, host.rank) for host in hosts[1:]]
    typer.echo(f"wrote {', '.join(names)} to {path}; try: ssh {names[0]}")
