"""A Shell stream displaced by a resume on another stream.

After a link drop the client resumes on a new connection while the agent may
still hold the old one open; frames the old connection delivers late (TCP
retransmits once a dead path comes back) must not be applied a second time,
and the old stream is told why it ends.
"""

import asyncio

import grpc
import pytest

from protos import agent_pb2 as pb
from tests.agent_harness import RawShell, channel_to, running_agent


def test_a_displaced_stream_is_told_and_its_late_input_is_not_applied() -> None:
    async def main() -> None:
        async with running_agent() as server, channel_to(server) as channel:
            old = RawShell(channel)
            await old.open(session_id="d1", command="cat")
            new = RawShell(channel)
            opened = await new.open(session_id="d1", resume=True)
            assert opened.input_offset == 0

            # The agent ends the displaced stream as soon as it sees the new
            # one, so the late write may find that stream over already.
            try:
                await old.send_input(b"stale\n")
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                pass
            else:
                notice = await old.until("notice")
                assert "another client" in notice.notice.text
                with pytest.raises(EOFError):
                    await old.next_control()

            await new.send_input(b"fresh\n")
            await new.read_until_output(b"fresh\n")
            await new.send(pb.ShellClientFrame(eof=pb.StdinEof()))
            assert (await new.finish()).code == 0
            assert bytes(new.received.stdout) == b"fresh\n"

    asyncio.run(main())
