"""The resumable byte stream both Shell and Forward are built on.

Every byte has an absolute offset per direction. The sender keeps what the
peer has not acknowledged in a `SendBuffer`; the receiver counts what it has
taken in a `ReceiveCursor` and acknowledges cumulatively. On resume each side
names the next offset it wants and the other retransmits from there, so a byte
is delivered exactly once; when the wanted bytes were already discarded the
sender reports an explicit gap instead of silently skipping them.

`Outbox` wraps a SendBuffer for asyncio: writers append, one sender task per
attached stream waits for bytes beyond its cursor, and producers that must not
overrun the limit (forwards) wait for space.
"""

import asyncio
from collections import deque
from dataclasses import dataclass

ACK_EVERY_BYTES = 64 * 1024
ACK_EVERY_SECONDS = 0.25


class StreamError(Exception):
    """A peer named an offset that cannot be right (beyond what was sent)."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """A run of bytes of one channel (stdout or stderr) starting at `offset`."""

    offset: int
    channel: int
    data: bytes


class SendBuffer:
    """Bytes written but not yet acknowledged, addressed by absolute offset."""

    def __init__(self, limit: int, start: int = 0) -> None:
        if limit <= 0:
            raise ValueError("limit must be positive")
        self.limit = limit
        self._chunks: deque[tuple[int, bytes]] = deque()
        self._start = start
        self._head = 0  # bytes of _chunks[0] already released
        self._end = start

    @property
    def start(self) -> int:
        """The offset of the oldest byte still held."""
        return self._start

    @property
    def end(self) -> int:
        """The offset the next written byte will get."""
        return self._end

    @property
    def size(self) -> int:
        return self._end - self._start

    def rebase(self, start: int) -> None:
        """Renumbers the held bytes to begin at `start`: for a sender whose
        offsets the peer has never seen (a client attaching to a session that
        another client fed)."""
        shift = start - self._start
        self._start += shift
        self._end += shift

    def append(self, data: bytes, channel: int = 0) -> None:
        if not data:
            return
        self._chunks.append((channel, data))
        self._end += len(data)

    def release(self, offset: int) -> int:
        """Forgets every byte below `offset`; returns how many were dropped."""
        target = min(max(offset, self._start), self._end)
        dropped = target - self._start
        remaining = dropped
        while remaining:
            _, data = self._chunks[0]
            left = len(data) - self._head
            if remaining >= left:
                self._chunks.popleft()
                self._head = 0
                remaining -= left
            else:
                self._head += remaining
                remaining = 0
        self._start = target
        return dropped

    def ack(self, offset: int) -> int:
        """A cumulative acknowledgement from the peer."""
        if offset > self._end:
            raise StreamError(f"ack for offset {offset} beyond the {self._end} bytes sent")
        return self.release(offset)

    def keep_newest(self, count: int) -> int:
        """Drops the oldest bytes beyond the newest `count`; returns how many."""
        return self.release(self._end - count)

    def read(self, offset: int, max_bytes: int) -> Chunk:
        """Up to `max_bytes` of one channel from `offset` (start <= offset < end)."""
        if not self._start <= offset < self._end:
            raise StreamError(f"offset {offset} is outside [{self._start}, {self._end})")
        pos = self._start
        skip = self._head
        parts: list[bytes] = []
        channel = -1
        taken = 0
        for chunk_channel, data in self._chunks:
            usable = len(data) - skip
            if pos + usable <= offset:
                pos += usable
                skip = 0
                continue
            if channel == -1:
                channel = chunk_channel
            elif chunk_channel != channel:
                break
            begin = skip + max(0, offset - pos)
            piece = data[begin : begin + max_bytes - taken]
            parts.append(piece)
            taken += len(piece)
            pos += usable
            skip = 0
            if taken >= max_bytes:
                break
        payload = parts[0] if len(parts) == 1 else b"".join(parts)
        return Chunk(offset, channel, payload)


class ReceiveCursor:
    """The receiving side's count of bytes taken, and when to acknowledge."""

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset
        self.acked = offset

    def take(self, size: int) -> None:
        self.offset += size

    @property
    def unacked(self) -> int:
        return self.offset - self.acked

    def ack_due(self) -> bool:
        """True once enough bytes arrived that an ack should go out now."""
        return self.unacked >= ACK_EVERY_BYTES

    def mark_acked(self) -> int:
        self.acked = self.offset
        return self.offset


class Wakeup:
    """Wakes every task waiting on it; cheaper than a Condition, no lock."""

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    def fire(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter


class Outbox:
    """A SendBuffer with asyncio wake-ups for its sender and its producer."""

    def __init__(self, limit: int) -> None:
        self.buffer = SendBuffer(limit)
        self.changed = Wakeup()
        self.closed = False

    def write(self, data: bytes, channel: int = 0) -> None:
        self.buffer.append(data, channel)
        self.changed.fire()

    def ack(self, offset: int) -> None:
        if self.buffer.ack(offset):
            self.changed.fire()

    def close(self) -> None:
        """No more bytes will be written; wakes every waiter."""
        self.closed = True
        self.changed.fire()
