"""Local byte plumbing for a remote session: stdin in, stdout and stderr out.

stdin is read with the event loop's reader (no thread, no polling) when it is
a tty or a pipe, and from a thread when it is a regular file, which epoll
cannot watch. Output is written straight to the fd: small writes (keystroke
echo) go out at once from the loop, large ones from a thread so a slow
consumer never freezes the link's heartbeat.
"""

import asyncio
import os
from collections.abc import Callable

READ_BYTES = 256 * 1024
LARGE_WRITE = 64 * 1024


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


async def write_output(fd: int, data: bytes) -> None:
    if len(data) > LARGE_WRITE:
        await asyncio.to_thread(write_all, fd, data)
    else:
        write_all(fd, data)


class StdinReader:
    """Feeds stdin to `on_data` and reports EOF to `on_eof`, until closed."""

    def __init__(
        self,
        fd: int,
        on_data: Callable[[bytes], None],
        on_eof: Callable[[], None],
        *,
        has_room: Callable[[], bool] = lambda: True,
    ) -> None:
        self._fd = fd
        self._on_data = on_data
        self._on_eof = on_eof
        self._has_room = has_room
        self._loop = asyncio.get_running_loop()
        self._watching = False
        self._room = asyncio.Event()
        self._thread_task: asyncio.Task[None] | None = None
        try:
            self._watch()
        except PermissionError:  # a regular file or /dev/null: epoll cannot watch it
            self._thread_task = self._loop.create_task(self._read_in_thread())

    def _watch(self) -> None:
        if not self._watching:
            self._loop.add_reader(self._fd, self._on_readable)
            self._watching = True

    def _unwatch(self) -> None:
        if self._watching:
            self._loop.remove_reader(self._fd)
            self._watching = False

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, READ_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._unwatch()
            self._on_eof()
            return
        self._on_data(data)
        if not self._has_room():
            self._unwatch()

    def room_available(self) -> None:
        """The consumer has space again: resume reading if paused."""
        if self._thread_task is None and self._has_room():
            self._watch()
        self._room.set()

    async def _read_in_thread(self) -> None:
        while True:
            while not self._has_room():
                self._room.clear()
                await self._room.wait()
            data = await asyncio.to_thread(os.read, self._fd, READ_BYTES)
            if not data:
                self._on_eof()
                return
            self._on_data(data)

    def close(self) -> None:
        self._unwatch()
        if self._thread_task is not None:
            self._thread_task.cancel()
            self._thread_task = None
