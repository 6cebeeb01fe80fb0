"""A TCP proxy on loopback that breaks the network on command.

Tests put it between a client and a server to show that what we build
survives the faults a real network has: a clean close (`cut`), a reset
(`reset`), a path that goes silent without closing (`blackhole`), latency
(`delay`), small segments (`slice`) and a refused connection (`refuse`).
`cut_after` cuts at an exact byte count, so a test can break a transfer in
its middle deterministically instead of racing a timer.

Every control may be called from the proxy's own event loop or from any
other thread; from another thread it returns once the change has been made.
"""

import asyncio
import concurrent.futures
import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

_READ_SIZE = 256 * 1024
# How long a cut waits for the peer to close after our FIN before closing
# anyway; closing a socket with unread input would send a reset instead.
_CUT_GRACE = 5.0


@dataclass
class ProxyStats:
    """What has passed through the proxy since it started."""

    accepted: int = 0
    live: int = 0  # connections with a socket still open
    bytes_up: int = 0  # client -> server
    bytes_down: int = 0  # server -> client
    cuts: int = 0  # connections closed by cut(), cut_after() or reset()


def _close(writer: asyncio.StreamWriter, *, reset: bool) -> None:
    """Close one socket: with FIN, or with RST when `reset`."""
    if reset:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    else:
        writer.close()


def _write_eof(writer: asyncio.StreamWriter) -> None:
    """Send a FIN once what is buffered has gone out."""
    if not writer.is_closing():
        with contextlib.suppress(OSError):
            writer.write_eof()


async def _discard_until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Swallow what the peer still sends after our FIN, then close quietly."""
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(_CUT_GRACE):
            while await reader.read(_READ_SIZE):
                pass
    writer.close()


class _Relay:
    """One accepted client connection and, once connected, its upstream."""

    def __init__(
        self, proxy: "FaultProxy", reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._proxy = proxy
        self._ends = [(reader, writer)]
        self._pumps: list[asyncio.Task[None]] = []
        self._gone = asyncio.Event()

    async def run(self, target: tuple[str, int]) -> None:
        """Relay until either side or a control ends it, then wait for both
        peers to close their sockets too."""
        await self._relay(target)
        self.close(reset=False)
        await asyncio.gather(*self._pumps, return_exceptions=True)
        await asyncio.gather(*(_discard_until_eof(r, w) for r, w in self._ends))

    async def _relay(self, target: tuple[str, int]) -> None:
        if not await self._wait_for_path():
            return
        try:
            upstream = await asyncio.open_connection(*target)
        except OSError:
            self.close(reset=True)
            return
        self._ends.append(upstream)
        if self._gone.is_set():
            _close(upstream[1], reset=True)
            return
        (client_r, client_w), (server_r, server_w) = self._ends
        self._pumps = [
            asyncio.create_task(self._pump(client_r, server_w, upstream=True)),
            asyncio.create_task(self._pump(server_r, client_w, upstream=False)),
        ]
        await asyncio.gather(*self._pumps, return_exceptions=True)

    async def _wait_for_path(self) -> bool:
        """Stall while blackholed, as a SYN does on a dead path; False if closed meanwhile."""
        waits = [
            asyncio.create_task(self._proxy._flowing.wait()),
            asyncio.create_task(self._gone.wait()),
        ]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()
        return not self._gone.is_set()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        """Copy one direction, applying the proxy's faults to every piece."""
        try:
            while data := await reader.read(_READ_SIZE):
                await self._proxy._forward(data, writer, upstream=upstream)
                if self._gone.is_set():
                    return
            _write_eof(writer)
        except OSError:
            self.close(reset=True)

    def close(self, *, reset: bool) -> bool:
        """Stop relaying: with a FIN each peer still reads what was sent before
        it; a reset also ends a connection that a FIN already closed.
        Returns whether the connection was still relaying."""
        was_relaying = not self._gone.is_set()
        self._gone.set()
        for pump in self._pumps:
            if pump is not asyncio.current_task():
                pump.cancel()
        for _, writer in self._ends:
            if reset:
                _close(writer, reset=True)
            else:
                _write_eof(writer)
        return was_relaying


class FaultProxy:
    """Relays 127.0.0.1:`port` to `target_host`:`target_port`, with faults on demand."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self.stats = ProxyStats()
        self._delay = 0.0
        self._slice: int | None = None
        self._refusing = False
        self._cut_after: int | None = None
        self._relays: set[_Relay] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._watchers: list[tuple[Callable[[ProxyStats], bool], asyncio.Future[None]]] = []
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "the proxy is not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        await self.wait_closed()

    def close(self) -> None:
        """Stop listening and reset every live connection."""
        if self._server is not None:
            self._server.close()
        self._flowing.set()
        for relay in list(self._relays):
            relay.close(reset=True)

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()
        while self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)

    # Controls.

    def cut(self) -> None:
        """Close every live connection cleanly, with a FIN to both peers."""
        self._on_loop(lambda: self._close_all(reset=False))

    def reset(self) -> None:
        """Close every live connection with a RST to both peers."""
        self._on_loop(lambda: self._close_all(reset=True))

    def blackhole(self, on: bool) -> None:
        """Hold every byte, both ways, without closing anything; new
        connections are accepted but not relayed. Held bytes flow again when
        it is turned off, as TCP retransmits once a dead path comes back."""
        self._on_loop(self._flowing.clear if on else self._flowing.set)

    def delay(self, seconds: float) -> None:
        """Wait this long before forwarding each piece (0 turns it off)."""
        self._on_loop(lambda: setattr(self, "_delay", seconds))

    def slice(self, size: int | None) -> None:
        """Forward in pieces of at most `size` bytes (None turns it off)."""
        if size is not None and size < 1:
            raise ValueError(f"slice size must be positive, not {size}")
        self._on_loop(lambda: setattr(self, "_slice", size))

    def refuse(self, on: bool) -> None:
        """Reset new connections as soon as they are accepted."""
        self._on_loop(lambda: setattr(self, "_refusing", on))

    def cut_after(self, nbytes: int) -> None:
        """Once `nbytes` more bytes have gone server -> client, forward no more
        and cut every connection, once."""
        if nbytes < 1:
            raise ValueError(f"cut_after needs a positive byte count, not {nbytes}")
        self._on_loop(lambda: setattr(self, "_cut_after", nbytes))

    async def wait_until(self, predicate: Callable[[ProxyStats], bool]) -> None:
        """Return once `predicate(stats)` holds; checked whenever stats change."""
        if predicate(self.stats):
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._watchers.append((predicate, done))
        try:
            await done
        finally:
            self._watchers.remove((predicate, done))

    # Machinery.

    def _on_loop(self, action: Callable[[], object]) -> None:
        """Run `action` on the proxy's loop; from another thread, wait until it ran."""
        running = None
        with contextlib.suppress(RuntimeError):
            running = asyncio.get_running_loop()
        if self._loop is None or running is self._loop:
            action()
            return
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            try:
                action()
            except BaseException as exc:
                done.set_exception(exc)
            else:
                done.set_result(None)

        self._loop.call_soon_threadsafe(run)
        done.result()

    def _stats_changed(self) -> None:
        for predicate, done in self._watchers:
            if not done.done() and predicate(self.stats):
                done.set_result(None)

    def _close_all(self, *, reset: bool) -> None:
        self.stats.cuts += sum(relay.close(reset=reset) for relay in list(self._relays))
        self._stats_changed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        if self._refusing:
            self._stats_changed()
            _close(writer, reset=True)
            return
        relay = _Relay(self, reader, writer)
        self._relays.add(relay)
        self.stats.live += 1
        self._stats_changed()
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await relay.run(self._target)
        finally:
            self._handlers.discard(task)
            self._relays.discard(relay)
            self.stats.live -= 1
            self._stats_changed()

    async def _forward(self, data: bytes, writer: asyncio.StreamWriter, *, upstream: bool) -> None:
        step = self._slice or len(data)
        for start in range(0, len(data), step):
            piece = data[start : start + step]
            await self._flowing.wait()
            if self._delay:
                await asyncio.sleep(self._delay)
            if not upstream and self._cut_after is not None:
                piece = piece[: self._cut_after]
                self._cut_after -= len(piece)
            writer.write(piece)
            if upstream:
                self.stats.bytes_up += len(piece)
            else:
                self.stats.bytes_down += len(piece)
            if self._cut_after == 0:
                self._cut_after = None
                self._close_all(reset=False)
                return
            self._stats_changed()
            await writer.drain()
