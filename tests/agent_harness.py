"""A real agent on 127.0.0.1:0 and a raw Shell stream, for tests that speak the wire."""

import contextlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from agent.config import AgentConfig
from agent.server import AgentServer
from protos import agent_pb2 as pb
from protos.codec import SHELL_CLIENT, SHELL_SERVER, Data
from protos.version import PROTOCOL_VERSION

TOKEN = "test-token-0123456789"
METADATA = (("authorization", f"Bearer {TOKEN}"),)


@contextlib.asynccontextmanager
async def running_agent(**overrides: Any) -> AsyncIterator[AgentServer]:
    with tempfile.TemporaryDirectory(prefix="ta-") as state:
        overrides.setdefault("state_dir", Path(state))
        config = AgentConfig(
            host="127.0.0.1", port=0, token=TOKEN.encode(), insecure_loopback=True, **overrides
        )
        async with AgentServer(config) as server:
            yield server


@contextlib.asynccontextmanager
async def channel_to(server: AgentServer) -> AsyncIterator[grpc.aio.Channel]:
    options = [("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=options) as channel:
        yield channel


@dataclass
class Received:
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    frames: list[pb.ShellServerFrame] = field(default_factory=list)

    def kinds(self) -> list[str]:
        return [str(frame.WhichOneof("kind")) for frame in self.frames]


class RawShell:
    """One Shell stream, spoken frame by frame."""

    def __init__(self, channel: grpc.aio.Channel, metadata: Any = METADATA) -> None:
        method: Any = channel.stream_stream("/tether.v1.Agent/Shell")  # type: ignore[call-arg]
        self.call: Any = method(metadata=metadata)
        self.received = Received()

    async def open(self, **fields: Any) -> pb.ShellOpened:
        fields.setdefault("protocol_version", PROTOCOL_VERSION)
        await self.send(pb.ShellClientFrame(open=pb.ShellOpen(**fields)))
        frame = await self.next_control()
        assert frame.WhichOneof("kind") == "opened", frame
        return frame.opened

    async def send(self, frame: pb.ShellClientFrame) -> None:
        await self.call.write(SHELL_CLIENT.message(frame))

    async def send_input(self, data: bytes) -> None:
        await self.call.write(SHELL_CLIENT.data(2, data))

    async def _read(self) -> bytes:
        """The next frame; EOFError naming the status when the stream ended."""
        try:
            raw = await self.call.read()
        except grpc.aio.AioRpcError as exc:
            raise EOFError(f"stream ended: {exc.code()} {exc.details()}") from exc
        if raw is grpc.aio.EOF:  # type: ignore[attr-defined]
            raise EOFError(f"stream ended: {await self.call.code()}")
        assert isinstance(raw, bytes)
        return raw

    async def next_control(self) -> pb.ShellServerFrame:
        """Reads frames, collecting output, until a control frame arrives."""
        while True:
            frame = SHELL_SERVER.decode(await self._read())
            if isinstance(frame, Data):
                target = self.received.stderr if frame.field == 3 else self.received.stdout
                target += frame.data
                continue
            self.received.frames.append(frame)
            return frame

    async def until(self, kind: str) -> pb.ShellServerFrame:
        while True:
            frame = await self.next_control()
            if frame.WhichOneof("kind") == kind:
                return frame

    async def read_until_output(self, needle: bytes) -> None:
        while needle not in self.received.stdout:
            frame = SHELL_SERVER.decode(await self._read())
            if isinstance(frame, Data):
                target = self.received.stderr if frame.field == 3 else self.received.stdout
                target += frame.data
            else:
                self.received.frames.append(frame)

    async def finish(self) -> pb.Exit:
        """Reads to the exit frame, acknowledges it, and returns it."""
        frame = await self.until("exit")
        await self.send(pb.ShellClientFrame(close=pb.CloseSession()))
        return frame.exit


@contextlib.contextmanager
def agent_process(tmp_path: Path, *extra: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`tether-agent serve` as a real process on a free loopback port."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--insecure-loopback",
            "--token-file",
            str(token_file),
            "--state-dir",
            str(tmp_path / "agent-state"),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening on [^ ]+:(\d+)", line)
        assert match, f"agent did not start: {line}"
        yield proc, int(match.group(1))
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
