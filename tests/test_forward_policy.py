"""The forward target policy: loopback by default, an allowlist, and the
addresses refused in every spelling; checked on the policy itself and on the
wire against a real agent (PERMISSION_DENIED with the reason)."""

import asyncio
from typing import Any

import grpc
import pytest

from agent.errors import InvalidArgument, PermissionDenied
from agent.forward_policy import ForwardPolicy, Target
from protos import agent_pb2 as pb
from protos.codec import FORWARD_CLIENT, FORWARD_SERVER, Data
from protos.version import PROTOCOL_VERSION
from tests.agent_harness import METADATA, channel_to, running_agent
from tests.forward_harness import run_async

METADATA_SPELLINGS = [
    "169.254.169.254",
    "2852039166",  # decimal
    "0251.0376.0251.0376",  # octal
    "0xa9fea9fe",  # hex
    "0xa9.0xfe.0xa9.0xfe",
    "169.254.43518",  # a.b.c with a 16-bit tail
    "::ffff:169.254.169.254",  # IPv4-mapped IPv6
    "::ffff:a9fe:a9fe",
    "::169.254.169.254",  # IPv4-compatible IPv6
    "2002:a9fe:a9fe::1",  # 6to4 around the metadata address
    "169.254.0.1",  # anywhere in link-local
    "fe80::1",
    "febf::1",
    "fd00:ec2::254",
    "0.0.0.0",
    "0",
    "::",
    "::ffff:0.0.0.0",
]


def vet(policy: ForwardPolicy, host: str, port: int = 8888) -> Target:
    async def main() -> Target:
        return await policy.vet(host, port)

    return asyncio.run(main())


@pytest.mark.parametrize("host", METADATA_SPELLINGS)
def test_refused_in_every_spelling_even_when_allowlisted(host: str) -> None:
    policy = ForwardPolicy(["0.0.0.0/0", "::/0", host])
    with pytest.raises(PermissionDenied, match="refused"):
        vet(policy, host)


@pytest.mark.parametrize(
    ("host", "dialled"),
    [
        ("", ("127.0.0.1",)),
        ("127.0.0.1", ("127.0.0.1",)),
        ("127.1.2.3", ("127.1.2.3",)),
        ("2130706433", ("127.0.0.1",)),
        ("::1", ("::1",)),
        ("::ffff:127.0.0.1", ("127.0.0.1",)),
    ],
)
def test_loopback_is_allowed_and_dialled_as_vetted(host: str, dialled: tuple[str, ...]) -> None:
    assert vet(ForwardPolicy(), host).addresses == dialled


def test_localhost_resolves_to_loopback_ipv4_first() -> None:
    target = vet(ForwardPolicy(), "localhost")
    assert target.addresses[0] == "127.0.0.1"
    assert set(target.addresses) <= {"127.0.0.1", "::1"}


@pytest.mark.parametrize("host", ["10.1.2.3", "192.168.0.7", "8.8.8.8", "2001:db8::1"])
def test_other_hosts_are_refused_by_default(host: str) -> None:
    with pytest.raises(PermissionDenied, match="allowlist"):
        vet(ForwardPolicy(), host)


def test_allowlist_by_address_network_and_name() -> None:
    policy = ForwardPolicy(["10.1.2.3", "192.168.0.0/24", "2001:db8::/32", "LocalHost"])
    assert vet(policy, "10.1.2.3").addresses == ("10.1.2.3",)
    assert vet(policy, "192.168.0.77").addresses == ("192.168.0.77",)
    assert vet(policy, "2001:db8::5").addresses == ("2001:db8::5",)
    with pytest.raises(PermissionDenied):
        vet(policy, "10.1.2.4")
    with pytest.raises(PermissionDenied):
        vet(policy, "192.168.1.1")


@pytest.mark.parametrize("port", [0, 65536, 100000])
def test_port_out_of_range_is_invalid(port: int) -> None:
    with pytest.raises(InvalidArgument, match="out of range"):
        vet(ForwardPolicy(), "127.0.0.1", port)


def test_unresolvable_name_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="cannot resolve"):
        vet(ForwardPolicy(), "no-such-host.invalid")


async def open_forward(channel: grpc.aio.Channel, host: str, port: int) -> Any:
    method: Any = channel.stream_stream("/tether.v1.Agent/Forward")  # type: ignore[call-arg]
    call = method(metadata=METADATA)
    request = pb.ForwardOpen(
        connection_id="c1", protocol_version=PROTOCOL_VERSION, host=host, port=port
    )
    await call.write(FORWARD_CLIENT.message(pb.ForwardClientFrame(open=request)))
    return call


def test_refusal_matrix_on_the_wire() -> None:
    """Each refused spelling ends its own stream with PERMISSION_DENIED and
    the reason; a host outside the allowlist is refused; loopback gets through."""

    async def main() -> None:
        async with (
            running_agent(forward_allowlist=("10.0.0.2",)) as agent,
            channel_to(agent) as channel,
        ):
            for host in ["169.254.169.254", "2852039166", "0xa9fea9fe", "fe80::1", "0.0.0.0"]:
                call = await open_forward(channel, host, 80)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call.read()
                assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "refused" in (caught.value.details() or "")
            call = await open_forward(channel, "10.0.0.1", 80)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call.read()
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "allowlist" in (caught.value.details() or "")
            server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.2", 0)
            async with server:
                port = server.sockets[0].getsockname()[1]
                call = await open_forward(channel, "127.0.0.2", port)
                frame = FORWARD_SERVER.decode(await call.read())
                assert not isinstance(frame, Data)
                assert frame.WhichOneof("kind") == "opened"
                call.cancel()

    run_async(main)
