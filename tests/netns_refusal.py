"""The refusal matrix inside a network namespace: run as
`unshare --net -- python -m tests.netns_refusal` by test_forward_netns.py.

The namespace has only its loopback interface, which also carries 10.0.0.2
(on the agent's allowlist), 10.0.0.3 (not on it) and the metadata address
169.254.169.254, each with a real listener. So a refusal is shown against a
target that would have answered, and nothing can leave the namespace even
if a check were wrong. Prints one JSON object: host -> status code name (or
"OPENED").
"""

import asyncio
import json
import subprocess
from typing import Any

import grpc

from protos import agent_pb2 as pb
from protos.codec import FORWARD_CLIENT, FORWARD_SERVER, Data
from protos.version import PROTOCOL_VERSION
from tests.agent_harness import METADATA, channel_to, running_agent

ADDRESSES = ("10.0.0.2", "10.0.0.3", "169.254.169.254")
HOSTS = (
    "10.0.0.2",
    "10.0.0.3",
    "169.254.169.254",
    "2852039166",
    "0251.0376.0251.0376",
    "0xa9fea9fe",
    "::ffff:169.254.169.254",
    "0.0.0.0",
    "127.0.0.1",
)


def _network() -> None:
    for argv in (
        ["ip", "link", "set", "lo", "up"],
        *(["ip", "addr", "add", f"{address}/32", "dev", "lo"] for address in ADDRESSES),
    ):
        subprocess.run(argv, check=True)


async def _outcome(channel: grpc.aio.Channel, host: str, port: int) -> str:
    method: Any = channel.stream_stream("/tether.v1.Agent/Forward")  # type: ignore[call-arg]
    call = method(metadata=METADATA)
    request = pb.ForwardOpen(
        connection_id=f"c-{host}", protocol_version=PROTOCOL_VERSION, host=host, port=port
    )
    await call.write(FORWARD_CLIENT.message(pb.ForwardClientFrame(open=request)))
    try:
        frame = FORWARD_SERVER.decode(await call.read())
    except grpc.aio.AioRpcError as exc:
        return str(exc.code().name)
    finally:
        call.cancel()
    return "OPENED" if not isinstance(frame, Data) and frame.HasField("opened") else "?"


async def main() -> dict[str, str]:
    # Every IPv4 address of the namespace answers, the refused ones included.
    server = await asyncio.start_server(lambda r, w: w.close(), "0.0.0.0", 0)
    port = server.sockets[0].getsockname()[1]
    async with (
        running_agent(forward_allowlist=("10.0.0.2",)) as agent,
        channel_to(agent) as channel,
    ):
        return {host: await _outcome(channel, host, port) for host in HOSTS}


if __name__ == "__main__":
    _network()
    print(json.dumps(asyncio.run(main())))
