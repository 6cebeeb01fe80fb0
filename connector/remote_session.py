"""Runs one remote session against the local terminal or pipes.

`interactive` is `tether connect`: raw mode, escapes, window size, one status
line. `piped` is `tether exec`: no PTY, stdin through, stdout and stderr kept
apart. Both return the remote command's exit code; both resume across link
failures through ShellClient.
"""

import asyncio
import contextlib
import sys
from collections.abc import Callable

from connector.escapes import Disconnect, EscapeFilter, LocalMessage
from connector.session_io import StdinReader, write_output
from connector.shell_client import (
    STDERR,
    Event,
    LinkLike,
    NoticeEvent,
    Reconnecting,
    Resumed,
    ShellClient,
)
from connector.terminal import RawTerminal, StatusLine
from protos import agent_pb2 as pb

# ssh's code for a session the person ended from this side with `~.`.
DISCONNECTED_EXIT_CODE = 255


def describe_event(event: Event) -> str:
    if isinstance(event, Reconnecting):
        return f"tether: reconnecting… ({event.error})"
    if isinstance(event, Resumed):
        if event.lost_bytes:
            return f"tether: resumed, {event.lost_bytes} bytes lost"
        return "tether: resumed, nothing lost"
    return event.text


def _reporter(status: StatusLine) -> Callable[[Event], None]:
    def report(event: Event) -> None:
        text = describe_event(event)
        if isinstance(event, Reconnecting):
            status.update(text)
        elif isinstance(event, NoticeEvent):
            status.write(text)
        else:
            status.clear()
            status.write(text)

    return report


async def _output(channel: int, data: bytes) -> None:
    await write_output(2 if channel == STDERR else 1, data)


async def interactive(
    link: LinkLike,
    request: pb.ShellOpen,
    *,
    escape_char: str = "~",
    status: StatusLine | None = None,
    session_id: str | None = None,
    attach: bool = False,
) -> int:
    """A PTY session on the local terminal; returns the remote exit code, or
    DISCONNECTED_EXIT_CODE after `~.` (the session then keeps running)."""
    status = status or StatusLine()
    escapes = EscapeFilter(escape_char)
    disconnected = asyncio.Event()
    client: ShellClient

    def typed(data: bytes) -> None:
        for action in escapes.feed(data):
            if isinstance(action, Disconnect):
                disconnected.set()
            elif isinstance(action, LocalMessage):
                status.write(action.text)
            else:
                client.send_input(action)

    with RawTerminal(sys.stdin.fileno(), on_resize=lambda size: client.resize(*size)) as term:
        request.pty = True
        client = ShellClient(
            link,
            request,
            on_output=_output,
            on_event=_reporter(status),
            session_id=session_id,
            attach=attach,
        )
        client.resize(*term.size())
        reader = StdinReader(
            sys.stdin.fileno(), typed, lambda: None, has_room=client.has_input_room
        )
        try:
            return await _until_exit(client, disconnected)
        finally:
            reader.close()


async def _until_exit(client: ShellClient, disconnected: asyncio.Event) -> int:
    session = asyncio.ensure_future(client.run())
    stop = asyncio.ensure_future(disconnected.wait())
    try:
        await asyncio.wait({session, stop}, return_when=asyncio.FIRST_COMPLETED)
        if session.done():
            return session.result().shell_code
        return DISCONNECTED_EXIT_CODE
    finally:
        for task in (session, stop):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def piped(link: LinkLike, request: pb.ShellOpen, status: StatusLine | None = None) -> int:
    """A session without a PTY on stdin, stdout and stderr."""
    status = status or StatusLine()
    request.pty = False
    reader: StdinReader | None = None
    client = ShellClient(
        link,
        request,
        on_output=_output,
        on_event=_reporter(status),
        on_input_room=lambda: reader.room_available() if reader else None,
    )
    reader = StdinReader(
        sys.stdin.fileno(), client.send_input, client.close_input, has_room=client.has_input_room
    )
    try:
        result = await client.run()
        return result.shell_code
    finally:
        reader.close()
