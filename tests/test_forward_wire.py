"""The Forward stream spoken frame by frame against a real agent: open,
resume with offsets, grace expiry, idempotent open, protocol errors."""

import asyncio
from typing import Any

import grpc
import pytest

from protos import agent_pb2 as pb
from protos.codec import FORWARD_CLIENT, FORWARD_SERVER, Data
from protos.version import PROTOCOL_VERSION
from tests.agent_harness import METADATA, channel_to, running_agent
from tests.forward_harness import echo, run_async, target


class RawForward:
    """One Forward stream; data frames are collected as they arrive."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        method: Any = channel.stream_stream("/tether.v1.Agent/Forward")  # type: ignore[call-arg]
        self.call: Any = method(metadata=METADATA)
        self.data = bytearray()

    async def open(self, connection_id: str, port: int, **fields: Any) -> pb.ForwardOpened:
        request = pb.ForwardOpen(
            connection_id=connection_id, protocol_version=PROTOCOL_VERSION, port=port, **fields
        )
        await self.send(pb.ForwardClientFrame(open=request))
        frame = await self.next_control()
        assert frame.WhichOneof("kind") == "opened", frame
        return frame.opened

    async def send(self, frame: pb.ForwardClientFrame) -> None:
        await self.call.write(FORWARD_CLIENT.message(frame))

    async def send_data(self, data: bytes) -> None:
        await self.call.write(FORWARD_CLIENT.data(2, data))

    async def next_control(self) -> pb.ForwardServerFrame:
        while True:
            frame = FORWARD_SERVER.decode(await self.call.read())
            if isinstance(frame, Data):
                self.data += frame.data
                continue
            return frame

    async def read_data(self, size: int) -> None:
        while len(self.data) < size:
            frame = await self.next_control()
            assert frame.WhichOneof("kind") == "ack", frame


def test_resume_continues_byte_exact_from_the_named_offsets() -> None:
    async def main() -> None:
        async with target(echo) as port, running_agent() as agent, channel_to(agent) as channel:
            first = RawForward(channel)
            opened = await first.open("c1", port)
            assert opened.created and opened.send_offset == 0 and opened.recv_offset == 0
            await first.send_data(b"0123456789")
            await first.read_data(10)
            first.call.cancel()  # the stream breaks; the connection waits for a resume
            second = RawForward(channel)
            # Only 4 of the 10 echoed bytes "arrived": the agent sends from 4 again.
            opened = await second.open("c1", port, resume=True, recv_offset=4)
            assert not opened.created
            assert (opened.send_offset, opened.recv_offset) == (4, 10)
            await second.send_data(b"abc")
            await second.read_data(9)
            assert bytes(second.data) == b"456789abc"
            await second.send(pb.ForwardClientFrame(eof=pb.HalfClose(offset=13)))
            frame = await second.next_control()
            while frame.WhichOneof("kind") == "ack":
                frame = await second.next_control()
            assert frame.WhichOneof("kind") == "eof" and frame.eof.offset == 13
            await second.send(pb.ForwardClientFrame(ack=13))
            assert await second.call.read() == grpc.aio.EOF  # type: ignore[attr-defined]
            assert await second.call.code() == grpc.StatusCode.OK
            assert len(agent.forwards) == 0

    run_async(main)


def test_a_retried_open_attaches_and_a_late_resume_is_not_found() -> None:
    async def main() -> None:
        async with (
            target(echo) as port,
            running_agent(forward_grace=0.2) as agent,
            channel_to(agent) as channel,
        ):
            first = RawForward(channel)
            await first.open("c2", port)
            first.call.cancel()
            again = RawForward(channel)
            assert not (await again.open("c2", port)).created  # not dialled twice
            again.call.cancel()
            while len(agent.forwards):
                await asyncio.sleep(0.05)  # the grace period running out
            late = RawForward(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await late.open("c2", port, resume=True)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert "is gone" in (caught.value.details() or "")

    run_async(main)


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([pb.ForwardClientFrame(eof=pb.HalfClose(offset=5))], "end of stream at 5"),
        ([pb.ForwardClientFrame(ack=99)], "beyond the 0 bytes sent"),
        ([pb.ForwardClientFrame(open=pb.ForwardOpen())], "unexpected open frame"),
    ],
)
def test_protocol_errors_end_the_stream_and_the_connection(
    frames: list[pb.ForwardClientFrame], message: str
) -> None:
    async def main() -> None:
        async with target(echo) as port, running_agent() as agent, channel_to(agent) as channel:
            raw = RawForward(channel)
            await raw.open("c3", port)
            for frame in frames:
                await raw.send(frame)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await raw.next_control()
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in (caught.value.details() or "")
            assert len(agent.forwards) == 0

    run_async(main)


def test_bad_opens_are_refused_clearly() -> None:
    async def main() -> None:
        async with running_agent() as agent, channel_to(agent) as channel:
            version = PROTOCOL_VERSION
            cases = [
                (pb.ForwardOpen(connection_id="c4", port=0, protocol_version=version), "range"),
                (pb.ForwardOpen(connection_id="bad id!", port=80, protocol_version=version), "id"),
                (pb.ForwardOpen(connection_id="c5", port=80, protocol_version=999), "mismatch"),
            ]
            for request, message in cases:
                raw = RawForward(channel)
                await raw.send(pb.ForwardClientFrame(open=request))
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await raw.next_control()
                assert message in (caught.value.details() or ""), caught.value.details()

    run_async(main)
