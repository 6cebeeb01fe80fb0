"""Awaitable reads and writes on a child's non-blocking pipe or PTY fds.

The SSH server copies bytes between a channel and a child's fds; these two
functions are the fd half of that, with the two rules a copy needs: a PTY
whose slave side is gone (EIO) is an end of file like a pipe's, and once
the child has exited, output that stops coming is the end even when a
background process still holds the fd open (otherwise `ssh host 'job &'`
would hang forever).
"""

import asyncio
import errno
import os
from typing import Any

READ_SIZE = 256 << 10
# After the child's exit: how long the output may stay silent before it is over.
EXIT_QUIET_SECONDS = 0.2


def _set_once(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)


async def _ready(fd: int, *, write: bool, timeout: float | None) -> bool:
    """Waits until `fd` is readable (or writable); False on timeout."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    add, remove = (
        (loop.add_writer, loop.remove_writer) if write else (loop.add_reader, loop.remove_reader)
    )
    add(fd, _set_once, ready)
    try:
        await asyncio.wait_for(ready, timeout)
        return True
    except TimeoutError:
        return False
    finally:
        remove(fd)


async def read_fd(fd: int, *, after: "asyncio.Future[int]") -> bytes:
    """The next bytes from `fd`; b"" at its end, or once `after` (the child's
    exit) is done and nothing more arrives for EXIT_QUIET_SECONDS."""
    while True:
        try:
            return os.read(fd, READ_SIZE)
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno == errno.EIO:  # a PTY with every slave fd closed
                return b""
            raise
        if after.done():
            if not await _ready(fd, write=False, timeout=EXIT_QUIET_SECONDS):
                return b""
            continue
        readable = asyncio.ensure_future(_ready(fd, write=False, timeout=None))
        try:
            waiting: list[asyncio.Future[Any]] = [readable, after]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            readable.cancel()


async def write_fd(fd: int, data: bytes) -> bool:
    """Writes all of `data`; False when the reader is gone (the child closed
    its stdin or exited), which ends the copy without an error."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await _ready(fd, write=True, timeout=None)
        except (BrokenPipeError, ConnectionError):
            return False
        except OSError as exc:
            if exc.errno == errno.EIO:
                return False
            raise
    return True
