"""The Link against a small real gRPC agent on loopback.

The agent here is the generated servicer with Info, Ping and a few unary
methods, behind the real token interceptor and the real agent certificate
(agent/tls.py), so the connector's TLS pinning is checked against the exact
certificate shape the agent makes.
"""

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.auth import TokenInterceptor
from agent.tls import load_or_create
from connector import config
from connector.backoff import Backoff
from connector.config import RunConfig
from connector.errors import FatalLinkError, LinkError, RemoteError
from connector.link import Link, LinkState, is_link_loss
from protos import agent_pb2 as pb
from protos import agent_pb2_grpc as pbg
from protos.agent_pb2_grpc import AgentStub
from protos.version import PROTOCOL_VERSION
from tests.faultproxy import FaultProxy

TOKEN = "link-test-token"
Context = grpc.aio.ServicerContext[Any, Any]


def fast_backoff() -> Backoff:
    return Backoff(first=0.05, cap=0.4)


class TinyAgent(pbg.AgentServicer):
    def __init__(self, protocol_version: int) -> None:
        self.protocol_version = protocol_version
        self.status_started = asyncio.Event()
        self.stop_calls = 0

    async def Info(self, request: pb.InfoRequest, context: Context) -> pb.InfoReply:
        return pb.InfoReply(
            agent_version="tiny", protocol_version=self.protocol_version, run_name="train"
        )

    async def Ping(self, request: pb.PingRequest, context: Context) -> pb.PingReply:
        return pb.PingReply(agent_time_unix_ms=1)

    async def Status(self, request: pb.StatusRequest, context: Context) -> pb.StatusReply:
        """Never answers: a call left in flight while the path dies."""
        self.status_started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def KillSession(
        self, request: pb.KillSessionRequest, context: Context
    ) -> pb.KillSessionReply:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"no session {request.session_id}")

    async def Stop(self, request: pb.StopRequest, context: Context) -> pb.StopReply:
        self.stop_calls += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the agent's own dependency is down")


@dataclass
class Agent:
    port: int
    fingerprint: str
    servicer: TinyAgent


@contextlib.asynccontextmanager
async def tiny_agent(
    state_dir: Path,
    *,
    port: int = 0,
    protocol_version: int = PROTOCOL_VERSION,
    insecure: bool = False,
) -> AsyncIterator[Agent]:
    identity = load_or_create(state_dir)
    server = grpc.aio.server(interceptors=[TokenInterceptor(TOKEN.encode())])
    servicer = TinyAgent(protocol_version)  # type: ignore[abstract]  # implements what tests call
    pbg.add_AgentServicer_to_server(servicer, server)
    address = f"127.0.0.1:{port}"
    if insecure:
        port = server.add_insecure_port(address)
    else:
        credentials = grpc.ssl_server_credentials([(identity.key_pem, identity.cert_pem)])
        port = server.add_secure_port(address, credentials)
    await server.start()
    try:
        yield Agent(port, identity.fingerprint, servicer)
    finally:
        await server.stop(None)


class States:
    """Records what the link reports; lets a test wait for a state."""

    def __init__(self) -> None:
        self.seen: list[LinkState] = []
        self._waiters: list[tuple[Callable[[LinkState], bool], asyncio.Future[LinkState]]] = []

    def __call__(self, state: LinkState) -> None:
        self.seen.append(state)
        for predicate, future in self._waiters:
            if not future.done() and predicate(state):
                future.set_result(state)

    async def wait_for(self, predicate: Callable[[LinkState], bool], start: int = 0) -> LinkState:
        for state in self.seen[start:]:
            if predicate(state):
                return state
        future: asyncio.Future[LinkState] = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, future))
        return await future

    def kinds(self) -> list[str]:
        return [state.kind for state in self.seen]


@pytest.fixture(autouse=True)
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def add_run(tmp_path: Path, port: int, token: str = TOKEN, **fields: Any) -> RunConfig:
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    run = RunConfig(name="train", address=f"127.0.0.1:{port}", token_file=str(token_file), **fields)
    config.add_run(run)
    return run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_async(coroutine: Callable[[], Any]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(60):
            await coroutine()

    asyncio.run(bounded())


def test_first_connect_pins_the_certificate(tmp_path: Path) -> None:
    async def main() -> None:
        async with tiny_agent(tmp_path / "agent") as agent:
            add_run(tmp_path, agent.port)
            first = States()
            async with Link(config.get_run("train"), on_state=first) as link:
                await link.channel()
                assert link.info is not None and link.info.agent_version == "tiny"
            assert first.kinds() == ["connecting", "connected"]
            assert first.seen[-1].pinned == agent.fingerprint
            assert config.get_run("train").fingerprint == agent.fingerprint

            again = States()
            async with Link(config.get_run("train"), on_state=again) as link:
                reply = await link.call("Ping", pb.PingRequest(), pb.PingReply)
            assert reply.agent_time_unix_ms == 1
            assert again.seen[-1] == LinkState("connected", attempt=1)

    run_async(main)


def test_a_changed_certificate_is_refused_at_once(tmp_path: Path) -> None:
    old = load_or_create(tmp_path / "old-agent").fingerprint

    async def main() -> None:
        async with tiny_agent(tmp_path / "agent") as agent:
            add_run(tmp_path, agent.port, fingerprint=old)
            states = States()
            async with Link(config.get_run("train"), on_state=states) as link:
                with pytest.raises(FatalLinkError) as info:
                    await link.channel()
            message = str(info.value)
            assert f"pinned {old}, presented {agent.fingerprint}" in message
            assert f"tether runs add train ... --fingerprint {agent.fingerprint}" in message
            assert "tether runs unpin train" in message
            assert states.kinds() == ["connecting"]
            assert config.get_run("train").fingerprint == old

    run_async(main)


def test_a_wrong_token_is_fatal_and_pins_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        async with tiny_agent(tmp_path / "agent") as agent:
            add_run(tmp_path, agent.port, token="not-the-token")
            async with Link(config.get_run("train")) as link:
                with pytest.raises(FatalLinkError) as info:
                    await link.channel()
            assert str(info.value) == (
                "the agent rejected the token (UNAUTHENTICATED): check --token-file for run train"
            )
            assert config.get_run("train").fingerprint is None

    run_async(main)


def test_a_protocol_mismatch_names_both_versions(tmp_path: Path) -> None:
    async def main() -> None:
        newer = PROTOCOL_VERSION + 1
        async with tiny_agent(tmp_path / "agent", protocol_version=newer) as agent:
            add_run(tmp_path, agent.port)
            async with Link(config.get_run("train")) as link:
                with pytest.raises(FatalLinkError) as info:
                    await link.channel()
            assert f"agent speaks protocol {newer}, this tether speaks {PROTOCOL_VERSION}" in str(
                info.value
            )

    run_async(main)


def test_an_agent_that_is_down_is_retried_until_it_is_up(tmp_path: Path) -> None:
    async def main() -> None:
        port = free_port()
        add_run(tmp_path, port)
        states = States()
        async with Link(config.get_run("train"), on_state=states, backoff=fast_backoff()) as link:
            waiting = asyncio.create_task(link.channel())
            await states.wait_for(lambda s: s.attempt == 3 and s.retry_in > 0)
            assert not waiting.done()
            async with tiny_agent(tmp_path / "agent", port=port):
                await waiting
                assert (await link.call("Info", pb.InfoRequest(), pb.InfoReply)).run_name == "train"
        waits = [s for s in states.seen if s.retry_in > 0]
        assert [s.attempt for s in waits[:3]] == [1, 2, 3]
        assert waits[0].retry_in < waits[1].retry_in < waits[2].retry_in
        assert all(s.kind == "connecting" for s in waits)
        assert all(f"cannot reach 127.0.0.1:{port}" in (s.error or "") for s in waits)
        assert states.seen[-1].kind == "connected"

    run_async(main)


def test_a_blackhole_is_found_by_the_heartbeat_and_survived(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            tiny_agent(tmp_path / "agent") as agent,
            FaultProxy("127.0.0.1", agent.port) as proxy,
        ):
            add_run(tmp_path, proxy.port)
            states = States()
            link = Link(
                config.get_run("train"),
                on_state=states,
                heartbeat_interval=0.2,
                heartbeat_timeout=0.5,
                backoff=fast_backoff(),
            )
            async with link:
                channel = await link.channel()

                async def in_flight() -> bool:
                    """Whether the call in flight ended as a link loss."""
                    try:
                        await AgentStub(channel).Status(pb.StatusRequest(), metadata=link.metadata)
                    except (asyncio.CancelledError, grpc.aio.AioRpcError) as exc:
                        return is_link_loss(exc)
                    raise AssertionError("Status answered")

                stuck = asyncio.create_task(in_flight())
                await agent.servicer.status_started.wait()
                proxy.blackhole(True)
                dropped = await states.wait_for(lambda s: s.kind == "reconnecting")
                assert "heartbeat failed: DEADLINE_EXCEEDED" in (dropped.error or "")
                assert await stuck

                mark = len(states.seen)
                proxy.blackhole(False)
                await states.wait_for(lambda s: s.kind == "connected", start=mark)
                assert await link.channel() is not channel
                assert (await link.call("Ping", pb.PingRequest(), pb.PingReply)).agent_time_unix_ms

    run_async(main)


def test_agent_errors_are_translated_and_not_retried(tmp_path: Path) -> None:
    async def main() -> None:
        async with tiny_agent(tmp_path / "agent") as agent:
            add_run(tmp_path, agent.port)
            async with Link(config.get_run("train")) as link:
                with pytest.raises(RemoteError) as info:
                    await link.call(
                        "KillSession", pb.KillSessionRequest(session_id="s1"), pb.KillSessionReply
                    )
                assert (info.value.code, info.value.message) == ("NOT_FOUND", "no session s1")

                with pytest.raises(RemoteError) as info:
                    await link.call("Stop", pb.StopRequest(), pb.StopReply)
                assert info.value.code == "UNAVAILABLE"
                assert agent.servicer.stop_calls == 1

    run_async(main)


def test_waiting_for_a_link_can_be_cancelled_and_closed(tmp_path: Path) -> None:
    async def main() -> None:
        add_run(tmp_path, free_port())
        states = States()
        link = Link(config.get_run("train"), on_state=states, backoff=fast_backoff())
        cancelled = asyncio.create_task(link.channel())
        closed = asyncio.create_task(link.channel())
        await states.wait_for(lambda s: s.retry_in > 0)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert not closed.done()
        link.close()
        with pytest.raises(LinkError, match="closed"):
            await closed
        await link.wait_closed()
        with pytest.raises(LinkError, match="closed"):
            await link.channel()

    run_async(main)


def test_insecure_loopback_skips_tls(tmp_path: Path) -> None:
    async def main() -> None:
        async with tiny_agent(tmp_path / "agent", insecure=True) as agent:
            add_run(tmp_path, agent.port, insecure_loopback=True)
            async with Link(config.get_run("train")) as link:
                reply = await link.call("Info", pb.InfoRequest(), pb.InfoReply)
            assert reply.agent_version == "tiny"
            assert config.get_run("train").fingerprint is None

    run_async(main)


def test_backoff_grows_caps_and_resets_after_a_healthy_period() -> None:
    now = [0.0]
    top = Backoff(
        first=1.0, cap=12.0, healthy_after=30.0, uniform=lambda: 1.0, clock=lambda: now[0]
    )
    assert [top.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 12.0, 12.0]
    top.connected()
    now[0] += 5
    assert top.dropped() == 12.0  # a link that flaps keeps backing off
    top.connected()
    now[0] += 30
    assert top.dropped() == 0.0  # after a healthy period: at once, and from the start
    assert top.next_delay() == 1.0
    low = Backoff(first=1.0, uniform=lambda: 0.0)
    assert [low.next_delay() for _ in range(2)] == [0.5, 1.0]
