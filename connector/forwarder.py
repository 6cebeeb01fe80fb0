"""A forward: local listeners whose connections reach a port in the run.

The listeners belong to the Forwarder, not to the link: they stay open while
the link is down, and every accepted connection gets its own ForwardClient,
which waits a bounded time for the link and then resets. One connection
failing (a refused target, a reset) never touches the others or the
listener.

SPEC is ssh -L's: `PORT`, `LOCAL:REMOTE`, `LOCAL:HOST:REMOTE` or
`BIND:LOCAL:HOST:REMOTE`, IPv6 addresses in brackets. Without BIND the
forward listens on 127.0.0.1 and ::1 only.
"""

import asyncio
import contextlib
import errno
import logging
from dataclasses import dataclass

import psutil

from connector.errors import ConfigError
from connector.forward_client import LINK_WAIT, ForwardClient, ForwardLink
from protos.resource import Resource
from protos.socket_stream import Outcome, SocketEnd

log = logging.getLogger(__name__)

LOOPBACK_BINDS = ("127.0.0.1", "::1")
ANY_BINDS = ("0.0.0.0", "::")
FORWARD_BUFFER = 4 << 20
# Browsers and load tests open many connections at once; the kernel caps it.
LISTEN_BACKLOG = 4096
CLOSE_LINGER = 2.0
_MISSING_FAMILY = (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)


@dataclass(frozen=True, slots=True)
class ForwardSpec:
    """What one SPEC asks for. `local_port` 0 picks a free port."""

    text: str
    binds: tuple[str, ...]
    local_port: int
    host: str
    remote_port: int

    @property
    def target(self) -> str:
        host = self.host or "localhost"
        return f"[{host}]:{self.remote_port}" if ":" in host else f"{host}:{self.remote_port}"


def _fields(text: str) -> list[str]:
    """`text` split at colons outside brackets, brackets removed."""
    fields: list[str] = []
    current = ""
    bracketed = False
    for char in text:
        if char == "[" and not bracketed and not current:
            bracketed = True
        elif char == "]" and bracketed:
            bracketed = False
        elif char == ":" and not bracketed:
            fields.append(current)
            current = ""
        else:
            current += char
    if bracketed:
        raise ConfigError(f"bad forward {text!r}: an unclosed '['")
    fields.append(current)
    return fields


def _port(text: str, spec: str, what: str, lowest: int) -> int:
    if not text.isdigit() or not lowest <= int(text) <= 65535:
        raise ConfigError(f"bad forward {spec!r}: {what} {text!r} is not a port ({lowest}-65535)")
    return int(text)


def _binds(text: str, spec: str) -> tuple[str, ...]:
    if text in ("localhost", ""):
        return LOOPBACK_BINDS if text else ANY_BINDS
    if text == "*":
        return ANY_BINDS
    if any(char.isspace() for char in text):
        raise ConfigError(f"bad forward {spec!r}: bind address {text!r} has spaces")
    return (text,)


def parse_spec(text: str) -> ForwardSpec:
    """The forward SPEC describes; ConfigError saying what is wrong with it."""
    fields = _fields(text.strip())
    if len(fields) > 4:
        raise ConfigError(
            f"bad forward {text!r}: expected PORT, LOCAL:REMOTE, LOCAL:HOST:REMOTE "
            "or BIND:LOCAL:HOST:REMOTE"
        )
    binds = _binds(fields[0], text) if len(fields) == 4 else LOOPBACK_BINDS
    local = _port(fields[1 if len(fields) == 4 else 0], text, "local port", 0)
    host = fields[-2] if len(fields) >= 3 else ""
    if len(fields) >= 3 and not host:
        raise ConfigError(f"bad forward {text!r}: the remote host is empty")
    remote = _port(fields[-1], text, "remote port", 1)
    return ForwardSpec(text, binds, local, host, remote)


def port_holder(port: int) -> str:
    """Which process listens on local TCP `port`, where psutil can tell."""
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                if conn.pid is None:
                    return ""
                with contextlib.suppress(psutil.Error):
                    return f"{psutil.Process(conn.pid).name()} (pid {conn.pid})"
                return f"pid {conn.pid}"
    return ""


@dataclass(frozen=True, slots=True)
class ForwardStatus:
    """A forward's counters for a status line."""

    active: int
    total: int
    failed: int
    bytes_out: int
    bytes_in: int
    last_error: str | None


class _Accepted(SocketEnd):
    """A local connection's SocketEnd that starts its client once accepted."""

    def __init__(self, forwarder: "Forwarder") -> None:
        super().__init__(FORWARD_BUFFER)
        self._forwarder = forwarder

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._forwarder._accepted(self)


class Forwarder(Resource):
    """Listeners for one SPEC; an async context manager."""

    def __init__(self, link: ForwardLink, spec: ForwardSpec, *, link_wait: float = LINK_WAIT):
        self.link = link
        self.spec = spec
        self._link_wait = link_wait
        self._servers: list[asyncio.Server] = []
        self._clients: dict[ForwardClient, asyncio.Task[Outcome]] = {}
        self._total = self._failed = self._done_out = self._done_in = 0
        self._last_error: str | None = None
        self.port = spec.local_port

    async def __aenter__(self) -> "Forwarder":
        await self.start()
        return self

    async def start(self) -> None:
        """Listens on every bind address; ConfigError when the port is taken."""
        loop = asyncio.get_running_loop()
        try:
            for bind in self.spec.binds:
                try:
                    server = await loop.create_server(
                        lambda: _Accepted(self), bind, self.port, backlog=LISTEN_BACKLOG
                    )
                except OSError as exc:
                    if exc.errno in _MISSING_FAMILY and bind == "::1" and self._servers:
                        continue  # no IPv6 loopback here: 127.0.0.1 serves alone
                    raise self._bind_error(bind, exc) from None
                self._servers.append(server)
                self.port = server.sockets[0].getsockname()[1]
        except BaseException:
            self.close()
            raise

    def _bind_error(self, bind: str, exc: OSError) -> ConfigError:
        if exc.errno == errno.EADDRINUSE:
            holder = port_holder(self.port)
            by = f" by {holder}" if holder else ""
            return ConfigError(f"local port {self.port} is already in use{by} ({self.spec.text})")
        return ConfigError(f"cannot listen on {bind} port {self.port}: {exc.strerror or exc}")

    def _accepted(self, end: SocketEnd) -> None:
        client = ForwardClient(
            self.link,
            end,
            self.spec.host,
            self.spec.remote_port,
            link_wait=self._link_wait,
            on_finished=self._finished,
        )
        task = asyncio.get_running_loop().create_task(client.run())
        self._clients[client] = task
        self._total += 1
        task.add_done_callback(lambda done: self._check(client, done))

    def _finished(self, client: ForwardClient) -> None:
        """Counts a connection that ended, before its application sees the end."""
        self._clients.pop(client, None)
        self._done_out += client.end.outbox.buffer.end
        self._done_in += client.end.delivered
        if client.error is not None:
            self._failed += 1
            self._last_error = client.error

    def _check(self, client: ForwardClient, task: "asyncio.Task[Outcome]") -> None:
        if client in self._clients:  # cancelled before it ran: nothing closed the socket
            self._finished(client)
            client.end.reset()
        failure = None if task.cancelled() else task.exception()
        if failure is not None:  # a bug, not the link or the agent: keep it visible
            log.error("forwarded connection failed", exc_info=failure)
            self._failed += 1
            self._last_error = f"internal error: {failure!r}"

    def status(self) -> ForwardStatus:
        live = list(self._clients)
        return ForwardStatus(
            active=len(live),
            total=self._total,
            failed=self._failed,
            bytes_out=self._done_out + sum(c.end.outbox.buffer.end for c in live),
            bytes_in=self._done_in + sum(c.end.delivered for c in live),
            last_error=self._last_error,
        )

    def close(self) -> None:
        """Stops listening and resets every connection, telling the agent
        (so its target sockets close now, not after the grace period)."""
        for server in self._servers:
            server.close()
        for client in self._clients:
            client.end.reset("the forward was stopped")

    async def wait_closed(self) -> None:
        for server in self._servers:
            await server.wait_closed()
        if self._clients:
            # Connections waiting for the link have no agent to tell.
            _, waiting = await asyncio.wait(self._clients.values(), timeout=CLOSE_LINGER)
            for task in waiting:
                task.cancel()
        while self._clients:
            await asyncio.gather(*self._clients.values(), return_exceptions=True)
