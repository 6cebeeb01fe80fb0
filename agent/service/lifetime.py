"""The lifetime area: move the run's deadline, or stop the run now."""

import asyncio

from agent.lifetime import Lifetime
from agent.service.registry import Context
from protos import agent_pb2 as pb

# The reason is shown in every attached session: one short printable line.
MAX_REASON = 200


class LifetimeService:
    def __init__(self, lifetime: Lifetime) -> None:
        self._lifetime = lifetime

    async def SetDeadline(
        self, request: pb.SetDeadlineRequest, context: Context
    ) -> pb.SetDeadlineReply:
        deadline = self._lifetime.set_max_duration(request.max_duration_hours)
        return pb.SetDeadlineReply(deadline_unix_ms=int(deadline * 1000))

    async def Stop(self, request: pb.StopRequest, context: Context) -> pb.StopReply:
        """Replies first: the stop is asked for on the next turn of the loop, and
        the server's graceful shutdown lets this reply finish going out."""
        reason = "".join(c for c in request.reason if c.isprintable())[:MAX_REASON]
        asyncio.get_running_loop().call_soon(
            self._lifetime.stop, f"stop requested: {reason or 'no reason given'}"
        )
        return pb.StopReply()
