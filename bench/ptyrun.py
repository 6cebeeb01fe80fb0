"""A command on a local PTY, driven and timed the way a person's terminal would be.

The benchmarks run `tether connect` and `ssh -tt` under the same harness:
both get a real terminal, their output is drained from the master side, and
keystrokes are written to it.
"""

import os
import pty
import select
import signal
import subprocess
import time
from collections.abc import Mapping


class PtyRun:
    def __init__(self, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=dict(env or os.environ),
            start_new_session=True,
        )
        os.close(slave)
        self.seen = bytearray()

    def read_some(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return b""
        try:
            data = os.read(self.master, 1 << 20)
        except OSError:  # EIO: the command ended
            raise EOFError from None
        if not data:
            raise EOFError
        self.seen += data
        return data

    def wait_for(self, needle: bytes, timeout: float = 30.0) -> float:
        """Seconds until `needle` appears in the output."""
        start = time.perf_counter()
        deadline = start + timeout
        while needle not in self.seen:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{needle!r} not seen; got {bytes(self.seen[-300:])!r}")
            self.read_some(0.5)
        return time.perf_counter() - start

    def drain_to_eof(self, timeout: float = 300.0) -> int:
        """Reads until the command ends; returns the bytes read."""
        total = 0
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            try:
                total += len(self._read_nosave())
            except EOFError:
                return total
        raise TimeoutError("the command did not end")

    def _read_nosave(self) -> bytes:
        ready, _, _ = select.select([self.master], [], [], 1.0)
        if not ready:
            return b""
        try:
            data = os.read(self.master, 1 << 20)
        except OSError:
            raise EOFError from None
        if not data:
            raise EOFError
        return data

    def echo_round_trip(self, byte: bytes) -> float:
        """Writes one byte; seconds until it comes back."""
        self.seen.clear()
        start = time.perf_counter()
        os.write(self.master, byte)
        while byte not in self.seen:
            self.read_some(5.0)
        return time.perf_counter() - start

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        os.close(self.master)
