"""Real forwards on loopback: an agent, a Link, a Forwarder, and targets.

`forwarding()` starts a real agent (optionally behind the tests' FaultProxy),
a Link to it and a Forwarder for one SPEC, and yields them together; the
targets are small asyncio servers on 127.0.0.1:0.
"""

import asyncio
import contextlib
import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.server import AgentServer
from connector.backoff import Backoff
from connector.config import RunConfig
from connector.forwarder import Forwarder, parse_spec
from connector.link import Link, LinkState
from tests.agent_harness import TOKEN, running_agent
from tests.faultproxy import FaultProxy

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run_async(coroutine: Callable[[], Awaitable[None]], limit: float = 120) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(limit):
            await coroutine()

    asyncio.run(bounded())


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echoes until EOF, then half-closes back."""
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        await writer.drain()
    writer.close()


async def assert_reset(reader: asyncio.StreamReader) -> None:
    """The connection ends in a reset, not an EOF."""
    with pytest.raises(ConnectionResetError):
        await reader.read()


def reset_socket(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@contextlib.asynccontextmanager
async def target(handler: Handler) -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 running `handler` per connection; yields its port."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0, backlog=1024)
    async with server:
        yield server.sockets[0].getsockname()[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Setup:
    agent: AgentServer
    link: Link
    forwarder: Forwarder
    proxy: FaultProxy | None

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.forwarder.port)


def _run_config(tmp_path: Path, port: int) -> RunConfig:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    return RunConfig(
        name="train",
        address=f"127.0.0.1:{port}",
        token_file=str(token_file),
        insecure_loopback=True,
    )


@contextlib.asynccontextmanager
async def forwarding(
    tmp_path: Path,
    spec: str,
    *,
    fault_proxy: bool = False,
    link_wait: float = 10.0,
    on_state: Callable[[LinkState], None] | None = None,
    **agent_config: Any,
) -> AsyncIterator[Setup]:
    """An agent, a Link (through a FaultProxy if asked) and a Forwarder for `spec`."""
    async with contextlib.AsyncExitStack() as stack:
        agent = await stack.enter_async_context(running_agent(**agent_config))
        port = agent.port
        proxy = None
        if fault_proxy:
            proxy = await stack.enter_async_context(FaultProxy("127.0.0.1", agent.port))
            port = proxy.port
        link = Link(
            _run_config(tmp_path, port),
            on_state=on_state,
            backoff=Backoff(first=0.05, cap=0.4),
        )
        await stack.enter_async_context(link)
        forwarder = Forwarder(link, parse_spec(spec), link_wait=link_wait)
        await stack.enter_async_context(forwarder)
        yield Setup(agent, link, forwarder, proxy)


async def echo_roundtrip(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    size: int,
    write_size: int,
    on_progress: Callable[[int], None] = lambda sent: None,
) -> tuple[str, str]:
    """Sends `size` random bytes in writes of `write_size`, half-closes, and
    reads the echo to EOF; returns the sha256 of what went and what came."""
    payload = os.urandom(size)
    view = memoryview(payload)

    async def send() -> None:
        sent = 0
        while sent < size:
            piece = view[sent : sent + write_size]
            writer.write(piece)
            sent += len(piece)
            on_progress(sent)
            if writer.transport.get_write_buffer_size() > 1 << 20:
                await writer.drain()
        writer.write_eof()

    async def receive() -> str:
        got = hashlib.sha256()
        while data := await reader.read(1 << 20):
            got.update(data)
        return got.hexdigest()

    sending = asyncio.ensure_future(send())
    received = await receive()
    await sending
    writer.close()
    return hashlib.sha256(payload).hexdigest(), received
