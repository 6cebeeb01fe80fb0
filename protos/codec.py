"""Hand-coded data frames for the Shell and Forward streams.

Python gRPC is bound by messages per second, and building or parsing a
protobuf message for every data frame costs more than the bytes do. The
stream RPCs are therefore registered with identity serializers on both ends,
and this module turns frames into bytes: data frames (a oneof `bytes` field)
by hand, everything else through protobuf. The bytes are exactly what
protobuf would produce, so any generated client can still speak the wire.
"""

from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf.message import DecodeError, Message

from protos import agent_pb2 as pb

M = TypeVar("M", bound=Message)

_WIRE_LEN = 2


class FrameError(ValueError):
    """Bytes that are not a frame of the expected stream."""


@dataclass(frozen=True, slots=True)
class Data:
    """A data frame: `field` is the oneof field number, `data` its payload."""

    field: int
    data: bytes


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(raw: bytes, pos: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while pos < len(raw) and shift < 64:
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise FrameError("truncated varint")


class FrameCodec(Generic[M]):
    """Encodes and decodes the frames of one direction of one stream RPC."""

    def __init__(self, message_type: type[M], data_fields: tuple[int, ...]) -> None:
        self._message_type = message_type
        self._tags = {(field << 3) | _WIRE_LEN: field for field in data_fields}
        self._tag_bytes = {field: _varint((field << 3) | _WIRE_LEN) for field in data_fields}

    def data(self, field: int, payload: bytes) -> bytes:
        """The encoded data frame: tag, length, payload."""
        return b"".join((self._tag_bytes[field], _varint(len(payload)), payload))

    def message(self, message: M) -> bytes:
        return message.SerializeToString()

    def decode(self, raw: bytes) -> M | Data:
        """A `Data` for a data frame, else the parsed control message."""
        if raw and raw[0] in self._tags:
            size, pos = _read_varint(raw, 1)
            if pos + size == len(raw):
                return Data(self._tags[raw[0]], raw[pos:])
        try:
            message = self._message_type.FromString(raw)
        except DecodeError as exc:
            raise FrameError(f"not a {self._message_type.__name__}: {exc}") from exc
        return message


SHELL_CLIENT = FrameCodec(pb.ShellClientFrame, (2,))
SHELL_SERVER = FrameCodec(pb.ShellServerFrame, (2, 3))
FORWARD_CLIENT = FrameCodec(pb.ForwardClientFrame, (2,))
FORWARD_SERVER = FrameCodec(pb.ForwardServerFrame, (2,))

SHELL_INPUT = 2
SHELL_STDOUT = 2
SHELL_STDERR = 3
FORWARD_DATA = 2

# The stream methods registered with identity serializers on both ends.
RAW_METHODS = frozenset({"Shell", "Forward"})
