"""VscodeTunnel, VscodeStatus, VscodeStop: the tunnel's events and state as protobuf."""

import contextlib
from collections.abc import AsyncIterator

from agent.service.registry import Context
from agent.vscode import Error, Event, Log, Login, Ready
from agent.vscode_cli import Progress
from agent.vscode_manager import VscodeManager
from protos import agent_pb2 as pb


def _login_to_pb(login: Login) -> pb.VscodeLogin:
    return pb.VscodeLogin(url=login.url, code=login.code)


def event_to_pb(event: Event) -> pb.VscodeEvent:
    if isinstance(event, Progress):
        return pb.VscodeEvent(
            progress=pb.VscodeProgress(
                stage=event.stage, done_bytes=event.done_bytes, total_bytes=event.total_bytes
            )
        )
    if isinstance(event, Login):
        return pb.VscodeEvent(login=_login_to_pb(event))
    if isinstance(event, Ready):
        return pb.VscodeEvent(ready=pb.VscodeReady(name=event.name, url=event.url))
    if isinstance(event, Error):
        return pb.VscodeEvent(error=pb.VscodeError(message=event.message))
    assert isinstance(event, Log)
    return pb.VscodeEvent(log=event.line)


class VscodeService:
    def __init__(self, manager: VscodeManager) -> None:
        self._manager = manager

    async def VscodeTunnel(
        self, request: pb.VscodeTunnelRequest, context: Context
    ) -> AsyncIterator[pb.VscodeEvent]:
        """Starts the tunnel unless it runs; streams its events until it is ready.

        With `follow`, streams until the tunnel stops. A tunnel that is already
        ready answers at once with its link.
        """
        tunnel = await self._manager.start(request.name)
        async with contextlib.aclosing(tunnel.events()) as events:
            async for event in events:
                yield event_to_pb(event)
                if isinstance(event, Ready) and not request.follow:
                    return

    async def VscodeStatus(
        self, request: pb.VscodeStatusRequest, context: Context
    ) -> pb.VscodeStatusReply:
        status = self._manager.status()
        return pb.VscodeStatusReply(
            running=status.running,
            name=status.name,
            url=status.url,
            login=_login_to_pb(status.login) if status.login else None,
            restarts=status.restarts,
            last_error=status.last_error,
        )

    async def VscodeStop(
        self, request: pb.VscodeStopRequest, context: Context
    ) -> pb.VscodeStopReply:
        await self._manager.stop()
        return pb.VscodeStopReply(was_running=True)
