"""The tmux area: protobuf in, TmuxManager calls, protobuf out."""

from agent.service.registry import Context
from agent.tmux import TmuxManager, TmuxSessionInfo
from protos import agent_pb2 as pb


def _session(info: TmuxSessionInfo) -> pb.TmuxSession:
    return pb.TmuxSession(
        name=info.name,
        windows=info.windows,
        attached=info.attached,
        created_unix=info.created_unix,
        activity_unix=info.activity_unix,
    )


class TmuxService:
    def __init__(self, manager: TmuxManager) -> None:
        self._manager = manager

    async def TmuxList(self, request: pb.TmuxListRequest, context: Context) -> pb.TmuxListReply:
        return pb.TmuxListReply(sessions=[_session(s) for s in await self._manager.list()])

    async def TmuxCreate(
        self, request: pb.TmuxCreateRequest, context: Context
    ) -> pb.TmuxCreateReply:
        info, created = await self._manager.create(
            request.name, request.command or None, request.size.cols, request.size.rows
        )
        return pb.TmuxCreateReply(session=_session(info), created=created)

    async def TmuxKill(self, request: pb.TmuxKillRequest, context: Context) -> pb.TmuxKillReply:
        await self._manager.kill(request.name)
        return pb.TmuxKillReply()

    async def TmuxRename(
        self, request: pb.TmuxRenameRequest, context: Context
    ) -> pb.TmuxRenameReply:
        await self._manager.rename(request.old_name, request.new_name)
        return pb.TmuxRenameReply()
