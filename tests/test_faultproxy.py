"""The fault proxy against a real echo server on loopback."""

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.faultproxy import FaultProxy

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class EchoServer:
    """Echoes what it reads; records how each connection ended and its read sizes."""

    def __init__(self) -> None:
        self.connections = 0
        self.endings: asyncio.Queue[str] = asyncio.Queue()
        self.read_sizes: list[int] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while data := await reader.read(65536):
                self.read_sizes.append(len(data))
                if data == b"RESET":
                    linger_zero = struct.pack("ii", 1, 0)
                    writer.get_extra_info("socket").setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, linger_zero
                    )
                    writer.transport.abort()
                    await self.endings.put("aborted")
                    return
                writer.write(data)
                await writer.drain()
            await self.endings.put("eof")
        except ConnectionResetError:
            await self.endings.put("reset")
        writer.close()


class Harness:
    """An echo server behind a proxy, and the clients a test opened."""

    def __init__(self, echo: EchoServer, proxy: FaultProxy) -> None:
        self.echo = echo
        self.proxy = proxy
        self.clients: list[asyncio.StreamWriter] = []

    async def connect(self) -> Stream:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.proxy.port)
        self.clients.append(writer)
        return reader, writer


@contextlib.asynccontextmanager
async def echo_through_proxy() -> AsyncIterator[Harness]:
    echo = EchoServer()
    server = await asyncio.start_server(echo.handle, "127.0.0.1", 0)
    async with server, FaultProxy("127.0.0.1", server.sockets[0].getsockname()[1]) as proxy:
        harness = Harness(echo, proxy)
        try:
            yield harness
        finally:
            for writer in harness.clients:
                writer.close()


async def round_trip(stream: Stream, data: bytes) -> bytes:
    reader, writer = stream
    writer.write(data)
    return await reader.readexactly(len(data))


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


def test_relays_both_ways_and_counts() -> None:
    async def body() -> None:
        async with echo_through_proxy() as h:
            stream = await h.connect()
            payload = os.urandom(1 << 20)
            assert await round_trip(stream, payload) == payload
            assert (h.proxy.stats.accepted, h.proxy.stats.live) == (1, 1)
            assert h.proxy.stats.bytes_up == h.proxy.stats.bytes_down == len(payload)
            stream[1].close()
            await h.proxy.wait_until(lambda s: s.live == 0)

    run(body)


def test_half_close_passes_through() -> None:
    async def body() -> None:
        async with echo_through_proxy() as h:
            reader, writer = await h.connect()
            writer.write(b"last words")
            writer.write_eof()
            assert await reader.read() == b"last words"
            assert await h.echo.endings.get() == "eof"

    run(body)


def test_cut_closes_both_peers_with_fin() -> None:
    async def body() -> None:
        async with echo_through_proxy() as h:
            reader, writer = await h.connect()
            assert await round_trip((reader, writer), b"hello") == b"hello"
            h.proxy.cut()
            assert await reader.read() == b""
            assert await h.echo.endings.get() == "eof"
            writer.close()
            await h.proxy.wait_until(lambda s: s.live == 0)
            assert h.proxy.stats.cuts == 1
            assert await round_trip(await h.connect(), b"again") == b"again"

    run(body)


def test_reset_closes_both_peers_with_rst() -> None:
    async def body() -> None:
        async with echo_through_proxy() as h:
            reader, writer = await h.connect()
            assert await round_trip((reader, writer), b"hello") == b"hello"
            h.proxy.reset()
            with pytest.raises(ConnectionResetError):
                await reader.read()
            assert await h.echo.endings.get() == "reset"

    run(body)


def test_server_reset_reaches_the_client_as_reset() -> None:
    async def body() -> None:
        async with echo_through_proxy() as h:
            reader, writer = await h.connect()
            writer.write(b"RESET")
            with pytest.raises(ConnectionResetError):
                await reader.read()
            assert await h.echo.endings.get() == "aborted"

    run(body)


def test_cut_after_delivers_exactly_that_many_bytes() -> None:
    async def body() -> None:
        async with echo_through_proxy() as h:
            reader, writer = await h.connect()
            payload = os.urandom(1 << 20)
            h.proxy.cut_after(300_001)
            writer.write(payload)
            received = await reader.read(-1)
            assert received == payload[:300_001]
            assert h.proxy.stats.cuts == 1
            assert await round_trip(await h.connect(), payload) == payload

    run(body)


def test_blackhole_holds_bytes_and_new_connections_until_lifted() -> None:
    async def body() -> None:
        async with echo_through_proxy() as h:
            reader, writer = await h.connect()
            assert await round_trip((reader, writer), b"before") == b"before"
            h.proxy.blackhole(True)
            writer.write(b"held")
            late_reader, late_writer = await h.connect()
            await h.proxy.wait_until(lambda s: s.accepted == 2)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.read(1), 0.3)
            assert h.echo.connections == 1
            h.proxy.blackhole(False)
            assert await reader.readexactly(4) == b"held"
            assert await round_trip((late_reader, late_writer), b"late") == b"late"
            assert h.echo.connections == 2

    run(body)


def test_slice_and_delay_keep_bytes_intact() -> None:
    async def body() -> None:
        async with echo_through_proxy() as h:
            stream = await h.connect()
            h.proxy.slice(1)
            h.proxy.delay(0.002)
            payload = bytes(range(64))
            assert await round_trip(stream, payload) == payload
            assert max(h.echo.read_sizes) < len(payload)

    run(body)


def test_refuse_resets_new_connections_only_while_on() -> None:
    async def body() -> None:
        async with echo_through_proxy() as h:
            h.proxy.refuse(True)
            reader, _ = await h.connect()
            with pytest.raises(ConnectionResetError):
                await reader.read()
            assert (h.proxy.stats.accepted, h.echo.connections) == (1, 0)
            h.proxy.refuse(False)
            assert await round_trip(await h.connect(), b"ok") == b"ok"

    run(body)


def test_unreachable_target_resets_the_client() -> None:
    async def body() -> None:
        listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        dead_port = listener.sockets[0].getsockname()[1]
        listener.close()
        await listener.wait_closed()
        async with FaultProxy("127.0.0.1", dead_port) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            with pytest.raises(ConnectionResetError):
                await reader.read()
            writer.close()

    run(body)


def test_controls_work_from_another_thread() -> None:
    async def body() -> None:
        async with echo_through_proxy() as h:
            reader, writer = await h.connect()
            assert await round_trip((reader, writer), b"hello") == b"hello"
            await asyncio.to_thread(h.proxy.cut)
            assert await reader.read() == b""

    run(body)
