"""`tether daemon start|stop|status`: the per-user daemon that keeps forwards."""

import asyncio
import logging

import typer

from connector.daemon_client import DaemonNotRunning, daemon_stub, log_path, start_daemon
from protos import daemon_pb2 as pb

app = typer.Typer(help="The per-user daemon that keeps background forwards.", no_args_is_help=True)


async def _status() -> pb.ListForwardsReply:
    async with daemon_stub() as stub:
        return await stub.ListForwards(pb.ListForwardsRequest(), timeout=5)


def running_pid() -> int | None:
    try:
        return asyncio.run(_status()).pid
    except DaemonNotRunning:
        return None


def ensure_running() -> int:
    """The daemon's pid, starting it when none runs."""
    return running_pid() or start_daemon()


@app.command()
def start() -> None:
    """Start the daemon (it puts back the forwards it had)."""
    pid = running_pid()
    if pid:
        typer.echo(f"tether daemon already running (pid {pid})")
        return
    typer.echo(f"tether daemon started (pid {start_daemon()}); log: {log_path()}")


@app.command()
def stop() -> None:
    """Stop the daemon; its forwards come back with the next start."""

    async def shutdown() -> None:
        async with daemon_stub() as stub:
            await stub.Shutdown(pb.ShutdownRequest(), timeout=5)

    asyncio.run(shutdown())
    typer.echo("tether daemon stopped")


@app.command()
def status() -> None:
    """Whether the daemon runs, and how many forwards it keeps."""
    reply = asyncio.run(_status())
    typer.echo(
        f"tether daemon running (pid {reply.pid}), {len(reply.forwards)} forwards; "
        f"log: {reply.log_path}"
    )


@app.command(hidden=True)
def run() -> None:
    """Run the daemon in the foreground (what `start` launches)."""
    from connector.daemon import serve
    from protos.memory import tune_malloc

    tune_malloc()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(serve())
