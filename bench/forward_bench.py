"""Throughput of one TCP stream through `tether forward`, against raw loopback
and socat measured in the same run.

Every party is its own process, as in use: the target (sends N bytes on
connect, or counts what it receives), `tether-agent serve` (TLS off,
loopback), `tether forward` and this client. Prints MB/s per direction.

    .venv/bin/python -m bench.forward_bench [--mib 256] [--rounds 3]
"""

import argparse
import contextlib
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

TOKEN = "bench-token-0123456789"
BLOCK = 1 << 20


def _serve(listener: socket.socket, size: int) -> None:
    """The target: `d` downloads `size` bytes; `u` uploads until EOF."""
    block = os.urandom(BLOCK)
    while True:
        conn, _ = listener.accept()
        with conn:
            mode = conn.recv(1)
            if mode == b"d":
                left = size
                while left:
                    left -= conn.send(block[: min(BLOCK, left)])
                conn.shutdown(socket.SHUT_WR)
                conn.recv(1)
            else:
                buffer = bytearray(BLOCK)
                total = 0
                while n := conn.recv_into(buffer):
                    total += n
                conn.sendall(str(total).encode())


@contextlib.contextmanager
def target(size: int) -> Iterator[int]:
    listener = socket.create_server(("127.0.0.1", 0))
    process = multiprocessing.Process(target=_serve, args=(listener, size), daemon=True)
    process.start()
    try:
        yield listener.getsockname()[1]
    finally:
        process.kill()
        listener.close()


def measure(port: int, size: int, direction: str) -> float:
    """MB/s of one `direction` ("down" or "up") transfer of `size` bytes."""
    with socket.create_connection(("127.0.0.1", port)) as conn:
        buffer = bytearray(BLOCK)
        start = time.perf_counter()
        if direction == "down":
            conn.sendall(b"d")
            got = 0
            while n := conn.recv_into(buffer):
                got += n
            assert got == size, f"got {got} of {size} bytes"
        else:
            conn.sendall(b"u")
            view = memoryview(os.urandom(BLOCK))
            left = size
            while left:
                conn.sendall(view[: min(BLOCK, left)])
                left -= min(BLOCK, left)
            conn.shutdown(socket.SHUT_WR)
            assert int(conn.recv(64)) == size
        return size / (time.perf_counter() - start) / 1e6


def _port_from(process: subprocess.Popen[str], pattern: str) -> int:
    assert process.stdout is not None
    for line in process.stdout:
        match = re.search(pattern, line)
        if match:
            return int(match.group(1))
    raise RuntimeError(f"{process.args!r} exited without {pattern!r}")


@contextlib.contextmanager
def spawned(argv: list[str], pattern: str, env: dict[str, str]) -> Iterator[int]:
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        yield _port_from(process, pattern)
    finally:
        process.terminate()
        process.wait(10)


@contextlib.contextmanager
def tether_forward(work: Path, target_port: int) -> Iterator[int]:
    token = work / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    env = {**os.environ, "XDG_CONFIG_HOME": str(work / "config"), "PYTHONUNBUFFERED": "1"}
    agent = [sys.executable, "-m", "agent", "serve", "--listen", "127.0.0.1:0"]
    agent += ["--insecure-loopback", "--token-file", str(token), "--state-dir", str(work / "s")]
    agent += os.environ.get("BENCH_AGENT_ARGS", "").split()
    with spawned(agent, r"listening on [^ ]+:(\d+)", env) as agent_port:
        config = work / "config" / "tether"
        config.mkdir(parents=True, exist_ok=True)
        (config / "config.toml").write_text(
            f'[runs.bench]\naddress = "127.0.0.1:{agent_port}"\n'
            f'token_file = "{token}"\ninsecure_loopback = true\n'
        )
        forward = [sys.executable, "-m", "connector", "forward", "bench", f"0:{target_port}"]
        with spawned(forward, r"localhost:(\d+) -> ", env) as port:
            yield port


@contextlib.contextmanager
def socat(target_port: int) -> Iterator[int]:
    port = free_port()
    argv = ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"]
    process = subprocess.Popen([*argv, f"TCP:127.0.0.1:{target_port}"])
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def report(name: str, port: int, size: int, rounds: int) -> None:
    for direction in ("down", "up"):
        figures = [measure(port, size, direction) for _ in range(rounds)]
        best = max(figures)
        print(f"{name:16s} {direction:4s} best {best:8.0f} MB/s  all {[round(f) for f in figures]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = args.mib << 20
    print(f"one stream, {args.mib} MiB per transfer, loopback, {os.cpu_count()} CPUs")
    with target(size) as port, tempfile.TemporaryDirectory() as work:
        report("raw loopback", port, size, args.rounds)
        if shutil.which("socat"):
            with socat(port) as socat_port:
                report("socat", socat_port, size, args.rounds)
        with tether_forward(Path(work), port) as forward_port:
            report("tether forward", forward_port, size, args.rounds)


if __name__ == "__main__":
    main()
