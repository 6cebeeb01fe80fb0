"""Bytes through a real forward: local socket -> Forwarder -> Link -> agent ->
target on loopback, and back. Kubernetes' own port-forward cases, half-close
and reset semantics."""

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from connector.forwarder import Forwarder, parse_spec
from tests.forward_harness import (
    assert_reset,
    echo,
    echo_roundtrip,
    forwarding,
    free_port,
    reset_socket,
    run_async,
    target,
)

MiB = 1 << 20
# (write size, total): 64 MiB wherever the writes are big enough to send it in
# 256Ki writes or fewer; the small writes send 256Ki writes' worth.
WRITE_SIZES = [1, 16, 256, 4096, 64 * 1024, 256 * 1024, MiB]


def _total(write_size: int) -> int:
    return min(64 * MiB, write_size * 256 * 1024)


@pytest.mark.parametrize(
    "write_size",
    WRITE_SIZES,
    ids=[f"writes-of-{w}B-total-{_total(w) // 1024}KiB" for w in WRITE_SIZES],
)
def test_random_bytes_there_and_back_are_identical(tmp_path: Path, write_size: int) -> None:
    async def main() -> None:
        async with target(echo) as port, forwarding(tmp_path, f"0:{port}") as setup:
            reader, writer = await setup.connect()
            sent, received = await echo_roundtrip(reader, writer, _total(write_size), write_size)
            assert received == sent
            status = setup.forwarder.status()
            assert status.bytes_out == status.bytes_in == _total(write_size)

    run_async(main)


def test_64_mib_through_two_forwards_chained(tmp_path: Path) -> None:
    """client -> forward B -> agent -> forward A's listener -> agent -> echo."""

    async def main() -> None:
        async with (
            target(echo) as port,
            forwarding(tmp_path, f"0:{port}") as first,
            Forwarder(first.link, parse_spec(f"0:{first.forwarder.port}")) as second,
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", second.port)
            sent, received = await echo_roundtrip(reader, writer, 64 * MiB, MiB)
            assert received == sent
            assert first.forwarder.status().bytes_in == second.status().bytes_in == 64 * MiB

    run_async(main)


def test_connect_send_nothing_disconnect(tmp_path: Path) -> None:
    async def main() -> None:
        closed = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assert await reader.read() == b""
            writer.close()
            closed.set()

        async with target(handler) as port, forwarding(tmp_path, f"0:{port}") as setup:
            reader, writer = await setup.connect()
            writer.close()
            await closed.wait()
            assert await reader.read() == b""
            closed.clear()
            reader, writer = await setup.connect()
            writer.write_eof()
            await closed.wait()

    run_async(main)


def test_connect_send_data_disconnect(tmp_path: Path) -> None:
    async def main() -> None:
        payload = os.urandom(300_000)
        got: asyncio.Queue[bytes] = asyncio.Queue()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await got.put(await reader.read())
            writer.close()

        async with target(handler) as port, forwarding(tmp_path, f"0:{port}") as setup:
            for _ in range(2):
                _, writer = await setup.connect()
                writer.write(payload)
                writer.close()
                assert await got.get() == payload

    run_async(main)


def test_target_resets_on_accept_then_next_connection_works(tmp_path: Path) -> None:
    async def main() -> None:
        accepted = 0

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal accepted
            accepted += 1
            if accepted == 1:
                reset_socket(writer)
                return
            await echo(reader, writer)

        async with target(handler) as port, forwarding(tmp_path, f"0:{port}") as setup:
            reader, writer = await setup.connect()
            writer.write(b"hello")
            with pytest.raises(ConnectionResetError):
                await reader.read()
            reader, writer = await setup.connect()
            sent, received = await echo_roundtrip(reader, writer, MiB, 4096)
            assert received == sent

    run_async(main)


def test_nothing_listening_resets_that_connection_only(tmp_path: Path) -> None:
    async def main() -> None:
        port = free_port()
        async with forwarding(tmp_path, f"0:{port}") as setup:
            reader, writer = await setup.connect()
            with pytest.raises(ConnectionResetError):
                await reader.read()
            assert f"connection refused by 127.0.0.1:{port}" in str(setup.forwarder.status())
            server = await asyncio.start_server(echo, "127.0.0.1", port)
            async with server:
                reader, writer = await setup.connect()
                sent, received = await echo_roundtrip(reader, writer, MiB, 65536)
                assert received == sent

    run_async(main)


def test_client_closes_mid_download_and_next_request_succeeds(tmp_path: Path) -> None:
    async def main() -> None:
        body = os.urandom(40 * 1000 * 1000)
        aborted = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readexactly(4)
            try:
                writer.write(body)
                await writer.drain()
                writer.close()
            except ConnectionError:
                aborted.set()

        async with target(handler) as port, forwarding(tmp_path, f"0:{port}") as setup:
            reader, writer = await setup.connect()
            writer.write(b"GET\n")
            assert len(await reader.readexactly(MiB)) == MiB
            writer.close()
            await aborted.wait()
            reader, writer = await setup.connect()
            writer.write(b"GET\n")
            got = await reader.read(-1)
            assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
            writer.close()

    run_async(main)


def test_half_close_each_way_keeps_the_other_direction(tmp_path: Path) -> None:
    """The target ends its side first, then still reads everything the client
    sends; the client reads the target's EOF while still writing."""

    async def main() -> None:
        received = asyncio.get_running_loop().create_future()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"greeting")
            writer.write_eof()
            received.set_result(await reader.read())
            writer.close()

        async with target(handler) as port, forwarding(tmp_path, f"0:{port}") as setup:
            reader, writer = await setup.connect()
            assert await reader.read() == b"greeting"  # to EOF
            payload = os.urandom(3 * MiB)
            writer.write(payload)
            writer.write_eof()
            assert await received == payload
            writer.close()

    run_async(main)


def test_a_reset_reaches_the_target_as_a_reset_not_an_eof(tmp_path: Path) -> None:
    """At once: the agent does not wait out a (long) grace period for it."""

    async def main() -> None:
        outcome = asyncio.get_running_loop().create_future()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"ready")
            try:
                data = await reader.read()
                outcome.set_result(f"eof after {len(data)} bytes")
            except ConnectionResetError:
                outcome.set_result("reset")

        async with (
            target(handler) as port,
            forwarding(tmp_path, f"0:{port}", forward_grace=600) as setup,
        ):
            reader, writer = await setup.connect()
            writer.write(b"some bytes")
            assert await reader.readexactly(5) == b"ready"
            reset_socket(writer)
            assert await outcome == "reset"

    run_async(main)


def test_stopping_a_forward_resets_its_connections_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        outcome = asyncio.get_running_loop().create_future()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"ready")
            try:
                outcome.set_result(f"eof: {await reader.read()!r}")
            except ConnectionResetError:
                outcome.set_result("reset")

        async with (
            target(handler) as port,
            forwarding(tmp_path, f"0:{port}", forward_grace=600) as setup,
        ):
            reader, _ = await setup.connect()
            assert await reader.readexactly(5) == b"ready"
            setup.forwarder.close()
            await setup.forwarder.wait_closed()
            assert await outcome == "reset"
            await assert_reset(reader)
            assert len(setup.agent.forwards) == 0

    run_async(main)
