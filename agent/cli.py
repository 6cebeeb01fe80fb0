"""`tether-agent`: serve, and a health probe for the image's HEALTHCHECK."""

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from agent.auth import TOKEN_ENV, load_token
from agent.config import AgentConfig, parse_listen
from agent.errors import AgentError
from protos.memory import tune_malloc

app = typer.Typer(add_completion=False, no_args_is_help=True, help="The tether agent.")
log = logging.getLogger("tether-agent")

MiB = 1 << 20
DEFAULT_STATE_DIR = Path.home() / ".local/state/tether-agent"
# The run image sets it, so that its HEALTHCHECK probes the port the agent serves on.
LISTEN_ENV = "TETHER_LISTEN"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"tether-agent: {message}", err=True)
    return typer.Exit(2)


@app.command()
def serve(
    token_file: Annotated[
        Path | None,
        typer.Option(envvar=TOKEN_ENV, help="File (mode 0600) holding the run's token."),
    ] = None,
    listen: Annotated[
        str, typer.Option(envvar=LISTEN_ENV, help="HOST:PORT to listen on.")
    ] = "0.0.0.0:7777",
    run_name: Annotated[str, typer.Option(help="The run's name.")] = "run",
    rank: Annotated[int, typer.Option(min=0, help="This node's rank.")] = 0,
    world_size: Annotated[int, typer.Option(min=1, help="Nodes in the run.")] = 1,
    state_dir: Annotated[
        Path, typer.Option(help="Where the agent keeps its certificate and state.")
    ] = DEFAULT_STATE_DIR,
    tls_cert: Annotated[Path | None, typer.Option(help="Use this certificate.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Use this key.")] = None,
    insecure_loopback: Annotated[
        bool, typer.Option(help="Plaintext, allowed only on a loopback address.")
    ] = False,
    output_buffer_mib: Annotated[
        float, typer.Option(min=0.0625, help="Per-session output kept for resumes.")
    ] = 8.0,
    idle_timeout_hours: Annotated[
        float, typer.Option(min=0.0, help="A detached session ends after this idle time.")
    ] = 12.0,
    max_sessions: Annotated[int, typer.Option(min=1)] = 64,
    forward_allow: Annotated[
        list[str] | None,
        typer.Option(
            envvar="TETHER_FORWARD_ALLOW",
            help="A host, address or CIDR network forwards may reach besides the "
            "container's loopback (repeatable). Link-local and metadata addresses never.",
        ),
    ] = None,
    forward_buffer_mib: Annotated[
        float, typer.Option(min=1.0, help="Unacknowledged bytes kept per forwarded connection.")
    ] = 4.0,
    forward_grace: Annotated[
        float, typer.Option(min=0.0, help="Seconds a forwarded connection waits for a resume.")
    ] = 60.0,
    max_duration: Annotated[
        float | None,
        typer.Option(
            envvar="TETHER_MAX_DURATION",
            help="Hours from the start after which the agent stops and the container ends.",
        ),
    ] = None,
    sleeper: Annotated[
        bool,
        typer.Option(
            envvar="TETHER_SLEEPER",
            help="The agent is the run's main process (the image sets this): "
            "--max-duration is then required, so no run is forgotten.",
        ),
    ] = False,
    vscode_cli: Annotated[
        str | None, typer.Option(help="The VS Code `code` CLI to use (else PATH, cache, download).")
    ] = None,
    vscode_url: Annotated[
        str | None,
        typer.Option(
            help="Where to download the VS Code CLI (default: the official stable build)."
        ),
    ] = None,
    vscode_sha256: Annotated[
        str | None, typer.Option(help="The hex sha256 the downloaded CLI archive must have.")
    ] = None,
    vscode_data_dir: Annotated[
        str | None,
        typer.Option(
            help="The tunnel's --cli-data-dir: put it on persistent storage to keep the login."
        ),
    ] = None,
) -> None:
    """Serve shells, forwards, tmux, status and VS Code to tether connectors."""
    tune_malloc()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if token_file is None:
        raise _fail(f"no token: pass --token-file PATH or set {TOKEN_ENV}")
    if (tls_cert is None) != (tls_key is None):
        raise _fail("--tls-cert and --tls-key go together")
    if sleeper and max_duration is None:
        raise _fail(
            "this agent keeps the run alive, so it needs to know when to stop: "
            "pass --max-duration HOURS (or set TETHER_MAX_DURATION); "
            "`tether update RUN --max-duration` can move it later"
        )
    try:
        host, port = parse_listen(listen)
        config = AgentConfig(
            host=host,
            port=port,
            token=load_token(str(token_file)),
            state_dir=state_dir,
            run_name=run_name,
            rank=rank,
            world_size=world_size,
            insecure_loopback=insecure_loopback,
            tls_cert=tls_cert,
            tls_key=tls_key,
            output_buffer=int(output_buffer_mib * MiB),
            idle_timeout=idle_timeout_hours * 3600,
            max_sessions=max_sessions,
            forward_allowlist=tuple(forward_allow or ()),
            forward_buffer=int(forward_buffer_mib * MiB),
            forward_grace=forward_grace,
            max_duration_hours=max_duration,
            vscode_cli=vscode_cli,
            vscode_url=vscode_url,
            vscode_sha256=vscode_sha256,
            vscode_data_dir=vscode_data_dir,
        )
        asyncio.run(_serve(config))
    except AgentError as exc:
        raise _fail(str(exc)) from None


async def _serve(config: AgentConfig) -> None:
    from agent.server import AgentServer

    server = AgentServer(config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.stop_requested.set)
    async with server:
        where = f"{config.host}:{server.port}"
        mode = "plaintext (loopback)" if config.insecure_loopback else "TLS"
        print(f"tether-agent listening on {where} ({mode})", flush=True)
        if server.fingerprint:
            print(f"tether-agent fingerprint SHA256:{server.fingerprint}", flush=True)
        await server.stop_requested.wait()
        log.info("stopping")


@app.command()
def health(
    token_file: Annotated[Path | None, typer.Option(envvar=TOKEN_ENV)] = None,
    address: Annotated[str, typer.Option(help="The agent's HOST:PORT.")] = "127.0.0.1:7777",
    insecure_loopback: Annotated[bool, typer.Option()] = False,
    state_dir: Annotated[Path, typer.Option()] = DEFAULT_STATE_DIR,
) -> None:
    """Exit 0 when the agent at ADDRESS answers the gRPC health check (HEALTHCHECK)."""
    from agent.probe import check_health

    if token_file is None:
        raise _fail(f"no token: pass --token-file PATH or set {TOKEN_ENV}")
    try:
        token = load_token(str(token_file))
    except AgentError as exc:
        raise _fail(str(exc)) from None
    ok, detail = asyncio.run(check_health(address, token, insecure_loopback, state_dir))
    typer.echo(detail, err=not ok)
    raise typer.Exit(0 if ok else 1)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
