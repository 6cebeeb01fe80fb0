"""The Shell stream: one attachment of one client to one session.

The client's first frame opens or resumes; after that two loops run side by
side: one reads client frames (input, resize, signal, acks, detach, close),
the other sends output from the client's offset, with a gap frame first when
that output is gone, then the exit once the client has all of the output.
"""

import asyncio
from typing import Any

from grpc.aio import EOF  # type: ignore[attr-defined]

from agent.errors import FailedPrecondition, InvalidArgument
from agent.service.registry import Context
from agent.session_table import SessionTable
from agent.sessions import Session, SessionSpec
from protos import agent_pb2 as pb
from protos.codec import SHELL_CLIENT, SHELL_SERVER, SHELL_STDERR, SHELL_STDOUT, Data
from protos.resumable import ACK_EVERY_BYTES, ACK_EVERY_SECONDS
from protos.socket_stream import first_of
from protos.version import PROTOCOL_VERSION

FRAME_BYTES = 1 << 20
_CHANNEL_FIELD = {0: SHELL_STDOUT, 1: SHELL_STDERR}


def check_protocol(version: int) -> None:
    if version != PROTOCOL_VERSION:
        raise FailedPrecondition(
            f"protocol mismatch: the connector speaks tether protocol {version}, "
            f"this agent speaks {PROTOCOL_VERSION}; install matching versions"
        )


def spec_from(open_: pb.ShellOpen) -> SessionSpec:
    return SessionSpec(
        session_id=open_.session_id,
        argv=list(open_.argv),
        pty=open_.pty,
        term=open_.term,
        cols=open_.size.cols or 80,
        rows=open_.size.rows or 24,
        env=dict(open_.env),
        cwd=open_.cwd or None,
        tmux_session=open_.tmux_session,
    )


class Attachment:
    """The agent's half of one Shell stream."""

    def __init__(self, session: Session, table: SessionTable, context: Context) -> None:
        self.session = session
        self._table = table
        self._context = context
        self._acked_input = session.input_offset
        self._ack_timer: asyncio.TimerHandle | None = None
        self._ack_due = False
        self._offset = 0
        self._notices_seen = 0
        self._exit_sent = False

    async def _send(self, raw: bytes) -> None:
        # Only one task writes: run() sends `opened`, then the pump all else.
        await self._context.write(raw)

    async def _send_frame(self, frame: pb.ShellServerFrame) -> None:
        await self._send(SHELL_SERVER.message(frame))

    async def run(self, output_offset: int, created: bool) -> None:
        session = self.session
        if output_offset > session.output.buffer.end:
            raise InvalidArgument(
                f"resume asks for output offset {output_offset}, "
                f"beyond the {session.output.buffer.end} bytes produced"
            )
        session.attach(self)
        try:
            await self._send_frame(
                pb.ShellServerFrame(
                    opened=pb.ShellOpened(
                        session_id=session.id,
                        created=created,
                        output_offset=max(output_offset, session.output.buffer.start),
                        input_offset=session.input_offset,
                        pid=session.child.pid,
                    )
                )
            )
            await first_of(self._read_client(), self._pump_output(output_offset))
        finally:
            if self._ack_timer is not None:
                self._ack_timer.cancel()
            session.detach(self)

    async def _pump_output(self, offset: int) -> None:
        """Sends whatever is due, one frame at a time; waits only when nothing
        is. Deciding is synchronous, so no wake-up can fall between the last
        look and the wait."""
        self._offset = offset
        self._notices_seen = self.session.notice_seq
        while True:
            if self.session.attachment is not self:
                text = "tether: this session was attached from another client"
                await self._send_frame(pb.ShellServerFrame(notice=pb.Notice(text=text)))
                return
            frame = self._next_frame()
            if frame is None:
                await self.session.output.changed.wait()
            else:
                await self._send(frame)

    def _next_frame(self) -> bytes | None:
        """The next frame for the client, in order: a gap, output, a notice,
        an ack of input, the exit; None when nothing is due."""
        session, buffer = self.session, self.session.output.buffer
        if self._offset < buffer.start:
            gap = pb.Gap(offset=self._offset, size=buffer.start - self._offset)
            self._offset = buffer.start
            return SHELL_SERVER.message(pb.ShellServerFrame(gap=gap))
        if buffer.end > self._offset:
            chunk = buffer.read(self._offset, FRAME_BYTES)
            self._offset += len(chunk.data)
            session.note_sent(self._offset)
            return SHELL_SERVER.data(_CHANNEL_FIELD[chunk.channel], chunk.data)
        for seq, text in session.notices:
            if seq > self._notices_seen:
                self._notices_seen = seq
                return SHELL_SERVER.message(pb.ShellServerFrame(notice=pb.Notice(text=text)))
        if self._ack_due:
            return SHELL_SERVER.message(pb.ShellServerFrame(ack=self._take_ack()))
        status = session.exit
        if status is not None and not self._exit_sent and self._offset >= status.output_end:
            self._exit_sent = True
            exit_frame = pb.Exit(
                code=status.code,
                signal=status.signal,
                output_end=status.output_end,
                message=status.message,
            )
            return SHELL_SERVER.message(pb.ShellServerFrame(exit=exit_frame))
        return None

    def _take_ack(self) -> int:
        """The input offset to acknowledge now; clears the pending ack."""
        self._ack_due = False
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        self._acked_input = self.session.input_offset
        return self._acked_input

    def _input_arrived(self) -> None:
        if self.session.input_offset - self._acked_input >= ACK_EVERY_BYTES:
            self._request_ack()
        elif self._ack_timer is None:
            loop = asyncio.get_running_loop()
            self._ack_timer = loop.call_later(ACK_EVERY_SECONDS, self._request_ack)

    def _request_ack(self) -> None:
        self._ack_due = True
        self.session.output.changed.fire()

    async def _read_client(self) -> None:
        session = self.session
        while True:
            raw = await self._context.read()
            if raw is EOF:
                return
            frame = SHELL_CLIENT.decode(raw)
            if isinstance(frame, Data):
                await session.wait_input_space()
                if session.attachment is self:
                    session.write_input(frame.data)
                    self._input_arrived()
                continue
            if session.attachment is not self:
                # Displaced: the client has moved to a newer stream and resends
                # input there from the offset it was given; the pump ends this one.
                continue
            kind = frame.WhichOneof("kind")
            if kind == "ack":
                session.ack_output(frame.ack)
            elif kind == "resize":
                session.resize(frame.resize.cols, frame.resize.rows)
            elif kind == "signal":
                session.send_signal(frame.signal.number)
            elif kind == "eof":
                session.close_input()
            elif kind == "detach":
                return
            elif kind == "close":
                self._table.forget(session.id)
                return
            else:
                raise InvalidArgument(f"unexpected {kind} frame after open")


class ShellService:
    def __init__(self, table: SessionTable) -> None:
        self._table = table

    async def Shell(self, request_iterator: Any, context: Context) -> None:
        raw = await context.read()
        if raw is EOF:
            return
        frame = SHELL_CLIENT.decode(raw)
        if isinstance(frame, Data) or frame.WhichOneof("kind") != "open":
            raise InvalidArgument("the first Shell frame must be open")
        check_protocol(frame.open.protocol_version)
        session, created = self._table.open(
            spec_from(frame.open),
            command=frame.open.command,
            resume=frame.open.resume,
            detach_others=frame.open.tmux_detach_others,
        )
        await Attachment(session, self._table, context).run(frame.open.output_offset, created)

    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: Context
    ) -> pb.ListSessionsReply:
        reply = pb.ListSessionsReply()
        for session in self._table.all():
            spec = session.spec
            reply.sessions.append(
                pb.SessionInfo(
                    session_id=session.id,
                    argv=spec.argv,
                    pty=spec.pty,
                    attached=session.attachment is not None,
                    running=session.running,
                    exit_code=session.exit.code if session.exit else 0,
                    created_unix_ms=int(session.created * 1000),
                    output_offset=session.output.buffer.end,
                    tmux_session=spec.tmux_session,
                    pid=session.child.pid,
                )
            )
        return reply

    async def KillSession(
        self, request: pb.KillSessionRequest, context: Context
    ) -> pb.KillSessionReply:
        await self._table.kill(request.session_id)
        return pb.KillSessionReply()
