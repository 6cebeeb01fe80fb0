"""SendBuffer details that the state machine does not reach."""

import pytest

from protos.resumable import SendBuffer, StreamError


def test_rebase_renumbers_held_bytes_for_a_peer_that_never_saw_them() -> None:
    buffer = SendBuffer(1024)
    buffer.append(b"typed early")
    buffer.rebase(500)
    assert (buffer.start, buffer.end) == (500, 511)
    assert buffer.read(500, 100).data == b"typed early"
    buffer.ack(506)
    assert buffer.read(506, 100).data == b"early"
    with pytest.raises(StreamError, match="beyond"):
        buffer.ack(600)
