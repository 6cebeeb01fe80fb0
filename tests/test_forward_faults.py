"""Forwards under faults: the link cut mid-transfer, down for longer than the
grace period, down when a connection arrives; many connections at once; the
agent's limit. The tests' FaultProxy sits between the connector and the agent."""

import asyncio
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

from agent.server import AgentServer
from connector.forwarder import Forwarder, parse_spec
from connector.link import LinkState
from tests.faultproxy import ProxyStats
from tests.forward_harness import (
    assert_reset,
    echo,
    echo_roundtrip,
    forwarding,
    free_port,
    run_async,
    target,
)

MiB = 1 << 20


def carrying(connections: int, bytes_up: int) -> Callable[[ProxyStats], bool]:
    """The proxy has accepted `connections` and carried `bytes_up` upstream."""

    def reached(stats: ProxyStats) -> bool:
        return stats.accepted >= connections and stats.bytes_up >= bytes_up

    return reached


def test_16_mib_with_the_link_cut_three_times_arrives_byte_identical(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            target(echo) as port,
            forwarding(tmp_path, f"0:{port}", fault_proxy=True) as setup,
        ):
            proxy = setup.proxy
            assert proxy is not None

            async def cut_three_times() -> None:
                # Each cut once the link carries traffic again; by 10 MiB up,
                # at least 6 MiB of the echo are still to come back.
                for attempt, threshold in enumerate([2 * MiB, 6 * MiB, 10 * MiB], start=1):
                    await proxy.wait_until(carrying(attempt, threshold))
                    proxy.cut()

            cutter = asyncio.ensure_future(cut_three_times())
            reader, writer = await setup.connect()
            sent, received = await echo_roundtrip(reader, writer, 16 * MiB, 64 * 1024)
            assert received == sent
            assert cutter.done()
            assert proxy.stats.accepted >= 4  # the link dialled again after each cut
            assert setup.forwarder.status().total == 1  # one local connection throughout

    run_async(main)


def test_link_down_past_the_grace_period_resets_both_ends(tmp_path: Path) -> None:
    async def main() -> None:
        target_saw = asyncio.get_running_loop().create_future()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"hello")
            try:
                target_saw.set_result(f"eof: {await reader.read()!r}")
            except ConnectionResetError:
                target_saw.set_result("reset")

        async with (
            target(handler) as port,
            forwarding(tmp_path, f"0:{port}", fault_proxy=True, forward_grace=0.3) as setup,
        ):
            proxy = setup.proxy
            assert proxy is not None
            reader, _ = await setup.connect()
            assert await reader.readexactly(5) == b"hello"
            proxy.refuse(True)
            proxy.cut()
            assert await target_saw == "reset"
            assert len(setup.agent.forwards) == 0
            proxy.refuse(False)
            await assert_reset(reader)
            assert "gone" in (setup.forwarder.status().last_error or "")

    run_async(main)


def test_connection_accepted_while_the_link_is_down_waits_then_resets(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            target(echo) as port,
            forwarding(tmp_path, f"0:{port}", fault_proxy=True, link_wait=0.5) as setup,
        ):
            proxy = setup.proxy
            assert proxy is not None
            proxy.refuse(True)
            proxy.cut()
            reader, writer = await setup.connect()
            writer.write(b"anyone?")
            await assert_reset(reader)
            assert "down for 0.5s" in (setup.forwarder.status().last_error or "")
            # The listener stayed, and a connection made while the link is
            # down goes through once the link is back within the wait (a
            # second forward on the same link, with a wait no test box misses).
            async with Forwarder(setup.link, parse_spec(f"0:{port}"), link_wait=60) as patient:
                reader, writer = await asyncio.open_connection("127.0.0.1", patient.port)
                writer.write(b"early bytes")
                proxy.refuse(False)
                assert await reader.readexactly(11) == b"early bytes"
                sent, received = await echo_roundtrip(reader, writer, MiB, 4096)
                assert received == sent
            reader, writer = await setup.connect()
            sent, received = await echo_roundtrip(reader, writer, MiB, 4096)
            assert received == sent

    run_async(main)


def test_500_concurrent_connections_and_one_refused_target(tmp_path: Path) -> None:
    async def main() -> None:
        dead_port = free_port()
        async with (
            target(echo) as port,
            forwarding(tmp_path, f"0:{port}") as setup,
            Forwarder(setup.link, parse_spec(f"0:{dead_port}")) as dead,
        ):

            async def one(index: int) -> bool:
                reader, writer = await setup.connect()
                payload = os.urandom(1000 + index)
                writer.write(payload)
                writer.write_eof()
                echoed = await reader.read()
                writer.close()
                return echoed == payload

            async def refused() -> bool:
                reader, _ = await asyncio.open_connection("127.0.0.1", dead.port)
                await assert_reset(reader)
                return True

            results = await asyncio.gather(refused(), *(one(i) for i in range(499)))
            assert all(results)
            assert setup.forwarder.status().total == 499

    run_async(main)


def test_past_the_agent_limit_only_the_new_connection_fails(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            target(echo) as port,
            forwarding(tmp_path, f"0:{port}", max_forwards=2) as setup,
        ):
            held = [await setup.connect() for _ in range(2)]
            for reader, writer in held:
                writer.write(b"ping")
                assert await reader.readexactly(4) == b"ping"
            reader, writer = await setup.connect()
            await assert_reset(reader)
            assert "RESOURCE_EXHAUSTED" in (setup.forwarder.status().last_error or "")
            for reader, writer in held:
                sent, received = await echo_roundtrip(reader, writer, MiB, 65536)
                assert received == sent

    run_async(main)


def test_blackholed_link_is_found_and_the_transfer_resumes(tmp_path: Path) -> None:
    """The path stops passing bytes without closing anything: the link's
    heartbeat finds it, and the transfer completes once the path is back."""

    async def main() -> None:
        reconnecting = asyncio.Event()

        def on_state(state: LinkState) -> None:
            if state.kind == "reconnecting":
                reconnecting.set()

        async with (
            target(echo) as port,
            forwarding(tmp_path, f"0:{port}", fault_proxy=True, on_state=on_state) as setup,
        ):
            proxy = setup.proxy
            assert proxy is not None

            async def blackhole_for_a_while() -> None:
                await proxy.wait_until(carrying(1, 2 * MiB))
                proxy.blackhole(True)
                await reconnecting.wait()
                proxy.blackhole(False)

            outage = asyncio.ensure_future(blackhole_for_a_while())
            reader, writer = await setup.connect()
            sent, received = await echo_roundtrip(reader, writer, 8 * MiB, 64 * 1024)
            assert received == sent
            assert outage.done()

    run_async(main)


def test_agent_away_fails_clearly_and_the_listener_works_when_it_is_back(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            target(echo) as port,
            forwarding(tmp_path, f"0:{port}", link_wait=0.5) as setup,
        ):
            agent_port = setup.agent.port
            reader, writer = await setup.connect()
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            await setup.agent.close()
            await assert_reset(reader)
            assert "the agent is stopping" in (setup.forwarder.status().last_error or "")
            reader, writer = await setup.connect()
            await assert_reset(reader)
            assert "down for 0.5s" in (setup.forwarder.status().last_error or "")
            config = dataclasses.replace(setup.agent.config, port=agent_port)
            async with AgentServer(config):
                await setup.link.channel()  # the link is back
                reader, writer = await setup.connect()
                sent, received = await echo_roundtrip(reader, writer, MiB, 65536)
                assert received == sent

    run_async(main)
