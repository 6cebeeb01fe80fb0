"""Hypothesis state machine over the resumable stream (protos/resumable.py).

A sender with a SendBuffer and a receiver with a ReceiveCursor talk over a
connection that can be cut at any moment, losing whatever frames and acks
were in flight. While no connection is up the sender may, as the agent's
session policy does, drop its oldest bytes: it keeps what it held at the cut
plus up to its limit of newer ones. Whatever the sequence of
writes, deliveries, acks, cuts and resumes, the receiver must see the
sender's stream exactly once and in order, with every hole reported as a gap
of exactly the size of the bytes that were dropped.
"""

from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from protos.resumable import ReceiveCursor, SendBuffer


@dataclass(frozen=True)
class DataFrame:
    channel: int
    data: bytes


@dataclass(frozen=True)
class GapFrame:
    size: int


Frame = DataFrame | GapFrame


class ResumableStream(RuleBasedStateMachine):
    """One direction of a Shell stream, with the wire between its ends modelled."""

    @initialize(limit=st.integers(1, 64), drop_when_detached=st.booleans())
    def start(self, limit: int, drop_when_detached: bool) -> None:
        self.buffer = SendBuffer(limit)
        self.drop_when_detached = drop_when_detached
        self.written = bytearray()  # every byte the sender ever wrote
        self.written_channels = bytearray()
        self.dropped: set[int] = set()  # offsets the sender discarded unacknowledged
        self.cursor = ReceiveCursor()
        self.received: list[tuple[int, Frame]] = []  # (offset, frame) as taken
        self.in_flight: list[Frame] = []  # sender -> receiver, in order
        self.acks_in_flight: list[int] = []  # receiver -> sender
        self.connected = True
        self.send_offset = 0  # how far this connection has transmitted
        self.highest_ack = 0
        self.detached_room = limit

    # ------------------------------------------------------------ the sender

    @rule(data=st.binary(min_size=1, max_size=40), channel=st.integers(0, 1))
    def write(self, data: bytes, channel: int) -> None:
        self.buffer.append(data, channel)
        self.written += data
        self.written_channels += bytes([channel]) * len(data)
        if not self.connected and self.drop_when_detached:
            start = self.buffer.start
            dropped = self.buffer.keep_newest(self.detached_room)
            self.dropped.update(range(start, start + dropped))

    @precondition(lambda self: self.connected)
    @rule(max_bytes=st.integers(1, 50))
    def transmit(self, max_bytes: int) -> None:
        if self.send_offset >= self.buffer.end:
            return
        chunk = self.buffer.read(self.send_offset, max_bytes)
        assert chunk.offset == self.send_offset
        self.in_flight.append(DataFrame(chunk.channel, chunk.data))
        self.send_offset += len(chunk.data)

    # ------------------------------------------------------------ the receiver

    @rule(count=st.integers(1, 5))
    def deliver(self, count: int) -> None:
        for frame in self.in_flight[:count]:
            self.received.append((self.cursor.offset, frame))
            size = frame.size if isinstance(frame, GapFrame) else len(frame.data)
            self.cursor.take(size)
        del self.in_flight[:count]

    @precondition(lambda self: self.connected)
    @rule()
    def send_ack(self) -> None:
        self.acks_in_flight.append(self.cursor.mark_acked())

    @rule()
    def deliver_ack(self) -> None:
        if self.acks_in_flight:
            offset = self.acks_in_flight.pop(0)
            self.buffer.ack(offset)
            self.highest_ack = max(self.highest_ack, offset)

    # ------------------------------------------------------------ the link

    @precondition(lambda self: self.connected)
    @rule()
    def cut(self) -> None:
        self.in_flight.clear()
        self.acks_in_flight.clear()
        self.connected = False
        self.detached_room = self.buffer.size + self.buffer.limit

    @precondition(lambda self: not self.connected)
    @rule()
    def resume(self) -> None:
        """The receiver names its next offset; the sender carries on from there."""
        wanted = self.cursor.offset
        assert wanted <= self.buffer.end
        if wanted < self.buffer.start:
            self.in_flight.append(GapFrame(self.buffer.start - wanted))
            wanted = self.buffer.start
        self.send_offset = wanted
        self.connected = True

    @precondition(lambda self: self.connected)
    @rule()
    def settle(self) -> None:
        """With the link up, everything written reaches the receiver."""
        while self.send_offset < self.buffer.end:
            self.transmit(max_bytes=50)
        self.deliver(count=len(self.in_flight))
        assert self.cursor.offset == self.buffer.end == len(self.written)

    # ------------------------------------------------------------ the promises

    @invariant()
    def received_is_the_stream_with_explicit_gaps(self) -> None:
        position = 0
        for offset, frame in self.received:
            assert offset == position, "a frame was taken out of order"
            if isinstance(frame, GapFrame):
                hole = range(position, position + frame.size)
                assert frame.size > 0
                assert set(hole) <= self.dropped, "a gap covers bytes that were never dropped"
                position += frame.size
                continue
            end = position + len(frame.data)
            assert frame.data == bytes(self.written[position:end]), "wrong or repeated bytes"
            assert set(self.written_channels[position:end]) == {frame.channel}
            position = end
        assert position == self.cursor.offset

    @invariant()
    def only_acked_or_dropped_bytes_are_forgotten(self) -> None:
        forgotten = self.buffer.start
        assert forgotten <= self.highest_ack or all(
            offset in self.dropped for offset in range(self.highest_ack, forgotten)
        ), "the sender forgot bytes the receiver never acknowledged"

    @invariant()
    def nothing_is_dropped_without_the_policy(self) -> None:
        assert self.drop_when_detached or not self.dropped


ResumableStream.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
test_resumable_stream = ResumableStream.TestCase
