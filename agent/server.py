"""The agent's gRPC server and everything it owns, as one async context manager.

`AgentServer` makes the TLS identity, the session table and the other areas,
serves them behind the token check, and on close() tells attached clients,
ends every child and stops the server: nothing is left behind.
"""

import asyncio
import contextlib
import logging
import socket
import time
from typing import Any

import grpc
from grpc_health.v1 import _async as health_async
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent import tls
from agent.auth import TokenInterceptor
from agent.config import AgentConfig
from agent.errors import FailedPrecondition, InvalidArgument
from agent.forward_policy import ForwardPolicy
from agent.forwarding import ForwardTable
from agent.gpu import GpuProbe
from agent.lifetime import Lifetime
from agent.service.forward import ForwardService
from agent.service.info import Identity, InfoService
from agent.service.lifetime import LifetimeService
from agent.service.registry import build_handler
from agent.service.shell import ShellService
from agent.service.ssh import SshService
from agent.service.status import StatusService
from agent.service.tmux import TmuxService
from agent.service.vscode import VscodeService
from agent.session_table import SessionTable, home_dir
from agent.sshd import SshServer
from agent.system import SystemProbe
from agent.tmux import TmuxManager
from agent.vscode_cli import CliSource
from agent.vscode_manager import VscodeManager, default_tunnel_name
from protos.version import AGENT_SERVICE

log = logging.getLogger(__name__)

STOP_NOTICE = "tether-agent is stopping; this session ends now"


def server_options(config: AgentConfig) -> list[tuple[str, Any]]:
    """Keepalive the connector may use (no GOAWAY too_many_pings), and limits."""
    return [
        ("grpc.max_receive_message_length", config.max_message),
        ("grpc.max_send_message_length", 2 * config.max_message),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.so_reuseport", 0),
    ]


class AgentServer:
    def __init__(self, config: AgentConfig, *, nvml_module: Any = None) -> None:
        if not config.token:
            raise InvalidArgument("the agent needs a token")
        if config.insecure_loopback and not config.is_loopback:
            raise InvalidArgument(
                f"--insecure-loopback needs a loopback listen address, not {config.host}"
            )
        self.config = config
        self.started = time.time()
        self.port = 0
        self.fingerprint = ""
        self.tmux = TmuxManager(config.state_dir)
        self.sessions = SessionTable(
            output_buffer=config.output_buffer,
            idle_timeout=config.idle_timeout,
            max_sessions=config.max_sessions,
            tmux_argv=self.tmux.attach_argv,
        )
        self.forwards = ForwardTable(
            ForwardPolicy(config.forward_allowlist),
            max_forwards=config.max_forwards,
            grace=config.forward_grace,
            buffer=config.forward_buffer,
        )
        self.gpu = GpuProbe(nvml_module=nvml_module)
        source = CliSource(
            cache_dir=config.state_dir / "vscode",
            path=config.vscode_cli,
            url=config.vscode_url,
            sha256=config.vscode_sha256,
        )
        self.sshd = SshServer(config.state_dir)
        self.vscode = VscodeManager(
            source,
            default_tunnel_name(config.run_name, config.rank),
            cli_data_dir=config.vscode_data_dir,
        )
        # Set by SIGTERM, the deadline or a Stop call: `serve` then closes the server.
        self.stop_requested = asyncio.Event()
        self.lifetime = Lifetime(
            self.started,
            config.max_duration_hours,
            on_notice=self.sessions.notice_all,
            on_stop=self.stop_requested.set,
            warnings=config.deadline_warnings,
        )
        self._server: grpc.aio.Server | None = None
        self._health = health_async.HealthServicer()
        self._stopped = asyncio.Event()

    def _areas(self) -> list[object]:
        identity = Identity(
            self.config.run_name, self.config.rank, self.config.world_size, self.started
        )
        return [
            InfoService(
                identity,
                counts=lambda: (len(self.sessions), len(self.forwards)),
                deadline=self.lifetime.deadline,
            ),
            ShellService(self.sessions),
            ForwardService(self.forwards),
            TmuxService(self.tmux),
            StatusService(
                self.gpu,
                SystemProbe(home_dir()),
                socket.gethostname(),
                self.config.rank,
            ),
            VscodeService(self.vscode),
            SshService(self.sshd),
            LifetimeService(self.lifetime),
        ]

    async def start(self) -> None:
        config = self.config
        await self.tmux.__aenter__()
        await self.sessions.__aenter__()
        await self.lifetime.__aenter__()
        server = grpc.aio.server(
            interceptors=[TokenInterceptor(config.token)], options=server_options(config)
        )
        server.add_generic_rpc_handlers([build_handler(self._areas())])
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        self.port = await self._listen(server)
        await server.start()
        self._server = server
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(AGENT_SERVICE, health_pb2.HealthCheckResponse.SERVING)

    async def _listen(self, server: grpc.aio.Server) -> int:
        """Binds the listen address (TLS unless plaintext on loopback); a port
        that is taken is one clear error, not gRPC's traceback."""
        config = self.config
        host = f"[{config.host}]" if ":" in config.host else config.host
        address = f"{host}:{config.port}"
        try:
            if config.insecure_loopback:
                return server.add_insecure_port(address)
            identity = (
                tls.load_given(config.tls_cert, config.tls_key)
                if config.tls_cert and config.tls_key
                else await tls.load_or_create_apart(config.state_dir)
            )
            self.fingerprint = identity.fingerprint
            credentials = grpc.ssl_server_credentials([(identity.key_pem, identity.cert_pem)])
            return server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise FailedPrecondition(
                f"cannot listen on {address}: the port is in use or the address is not "
                f"this machine's ({exc})"
            ) from None

    async def __aenter__(self) -> "AgentServer":
        try:
            await self.start()
        except BaseException:
            await self.close(grace=0)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self, grace: float = 1.0) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        await self._health.enter_graceful_shutdown()
        self.sessions.notice_all(STOP_NOTICE)
        await asyncio.sleep(0.05)  # lets the notice frames go out before the exits
        self.lifetime.close()
        await self.lifetime.wait_closed()
        await self.sessions.close()
        self.forwards.close()
        await self.forwards.wait_closed()
        self.vscode.close()
        await self.vscode.wait_closed()
        self.sshd.close()
        await self.sshd.wait_closed()
        self.gpu.close()
        if self._server is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._server.stop(grace)

    async def wait_closed(self) -> None:
        await self._stopped.wait()
        if self._server is not None:
            await self._server.wait_for_termination()
