"""ssh's ProxyCommand: stdin and stdout carried to the agent's SSH server
over one resumable Forward stream, so an ssh, scp or rsync session outlives
a Wi-Fi drop or a laptop sleep shorter than the agent's grace period.

The forward client relays a socket, so the bridge hands it one end of a
socketpair and copies between the other end and the two pipes ssh gave us.
"""

import asyncio
import os
import socket
import sys

from connector.forward_client import ForwardClient, ForwardLink
from connector.terminal import escape_text
from protos.socket_stream import Outcome, SocketEnd

# What the forward holds unacknowledged, as listeners of `tether forward` do.
PROXY_BUFFER = 4 << 20
COPY_BYTES = 256 << 10


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Until EOF, then a half-close, so each direction ends on its own."""
    try:
        while data := await reader.read(COPY_BYTES):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        else:
            writer.close()
    except ConnectionError:
        writer.close()


async def _pipes(stdin: int, stdout: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=COPY_BYTES)
    read_pipe = os.fdopen(stdin, "rb", buffering=0, closefd=False)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), read_pipe)
    write_pipe = os.fdopen(stdout, "wb", buffering=0, closefd=False)
    transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), write_pipe
    )
    return reader, asyncio.StreamWriter(transport, protocol, None, loop)


async def carry(
    link: ForwardLink, port: int
) -> tuple[socket.socket, ForwardClient, "asyncio.Future[Outcome]"]:
    """A socket whose bytes a resumable Forward carries to 127.0.0.1:`port`
    in the container; the relay ends once the connection has."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    end = SocketEnd(PROXY_BUFFER)
    await loop.connect_accepted_socket(lambda: end, sock=ours)
    client = ForwardClient(link, end, "127.0.0.1", port)
    return theirs, client, asyncio.ensure_future(client.run())


async def bridge(
    link: ForwardLink, port: int, *, stdin: int | None = None, stdout: int | None = None
) -> int:
    """Carries stdin/stdout to 127.0.0.1:`port` in the container until both
    sides are done; 0 when the connection ended cleanly, 255 (ssh's "could
    not reach the far side") when it was reset, with the reason on stderr."""
    theirs, client, relay = await carry(link, port)
    sock_reader, sock_writer = await asyncio.open_connection(sock=theirs)
    pipe_reader, pipe_writer = await _pipes(
        sys.stdin.fileno() if stdin is None else stdin,
        sys.stdout.fileno() if stdout is None else stdout,
    )
    upstream = asyncio.ensure_future(_copy(pipe_reader, sock_writer))
    try:
        await _copy(sock_reader, pipe_writer)
        outcome = await relay
    finally:
        upstream.cancel()
        relay.cancel()
        sock_writer.close()
        pipe_writer.close()
    if outcome is Outcome.COMPLETE:
        return 0
    reason = escape_text(client.error or "the connection was reset")
    print(f"tether proxy: {reason}", file=sys.stderr)
    return 255
