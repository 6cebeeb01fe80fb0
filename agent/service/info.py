"""Info and Ping: who this agent is, and proof that the path to it is alive."""

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent import __version__
from agent.service.registry import Context
from protos import agent_pb2 as pb
from protos.version import PROTOCOL_VERSION

CAPABILITIES = ("shell", "exec", "forward", "tmux", "status", "vscode", "ssh", "deadline")


@dataclass(frozen=True, slots=True)
class Identity:
    run_name: str
    rank: int
    world_size: int
    started: float


class InfoService:
    def __init__(
        self,
        identity: Identity,
        *,
        counts: Callable[[], tuple[int, int]],
        deadline: Callable[[], float | None],
    ) -> None:
        self._identity = identity
        self._counts = counts
        self._deadline = deadline

    async def Info(self, request: pb.InfoRequest, context: Context) -> pb.InfoReply:
        sessions, forwards = self._counts()
        deadline = self._deadline()
        return pb.InfoReply(
            agent_version=__version__,
            protocol_version=PROTOCOL_VERSION,
            hostname=socket.gethostname(),
            run_name=self._identity.run_name,
            rank=self._identity.rank,
            world_size=self._identity.world_size,
            capabilities=CAPABILITIES,
            started_unix_ms=int(self._identity.started * 1000),
            deadline_unix_ms=int(deadline * 1000) if deadline else 0,
            session_count=sessions,
            forward_count=forwards,
        )

    async def Ping(self, request: pb.PingRequest, context: Context) -> pb.PingReply:
        return pb.PingReply(agent_time_unix_ms=int(time.time() * 1000))
