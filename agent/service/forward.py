"""The Forward stream: one stream per forwarded TCP connection.

The first client frame opens the connection (dialling the vetted target) or
resumes it; the agent answers with the offsets both sides continue from, and
a Relay (protos/socket_stream.py) carries bytes, acks, half-closes and resets
until the connection is complete, reset, or the stream breaks (then the
connection waits out its grace period for a resume).
"""

from typing import Any

from grpc.aio import EOF  # type: ignore[attr-defined]

from agent.errors import FailedPrecondition, InvalidArgument
from agent.forwarding import ForwardConnection, ForwardTable
from agent.service.registry import Context
from agent.service.shell import check_protocol
from protos import agent_pb2 as pb
from protos.codec import FORWARD_CLIENT, FORWARD_SERVER, Data
from protos.resumable import StreamError
from protos.socket_stream import AGENT_SIDE, Outcome, Relay


class ForwardService:
    def __init__(self, table: ForwardTable) -> None:
        self._table = table

    async def Forward(self, request_iterator: Any, context: Context) -> None:
        raw = await context.read()
        if raw is EOF:
            return
        frame = FORWARD_CLIENT.decode(raw)
        if isinstance(frame, Data) or frame.WhichOneof("kind") != "open":
            raise InvalidArgument("the first Forward frame must be open")
        request = frame.open
        check_protocol(request.protocol_version)
        connection, created = await self._table.open(
            request.connection_id, request.host, request.port, resume=request.resume
        )
        outcome = await self._relay(connection, created, request.recv_offset, context)
        if outcome is Outcome.DISPLACED:
            raise FailedPrecondition(
                f"forwarded connection {connection.id!r} was resumed on another stream"
            )

    async def _relay(
        self, connection: ForwardConnection, created: bool, recv_offset: int, context: Context
    ) -> Outcome:
        async def read() -> bytes | None:
            raw = await context.read()
            return None if raw is EOF else bytes(raw)

        relay = Relay(connection.end, AGENT_SIDE, read, context.write)
        self._table.attach(connection, relay)
        outcome = Outcome.ENDED
        try:
            send_from = connection.end.resume_at(recv_offset)
            opened = pb.ForwardOpened(
                connection_id=connection.id,
                created=created,
                send_offset=send_from,
                recv_offset=connection.end.delivered,
            )
            await context.write(FORWARD_SERVER.message(pb.ForwardServerFrame(opened=opened)))
            outcome = await relay.run(send_from, end_when_complete=True)
            return outcome
        except StreamError as exc:  # the client broke the protocol: end the connection
            outcome = Outcome.RESET
            raise InvalidArgument(str(exc)) from None
        finally:
            self._table.detach(connection, relay, outcome)
