"""Throughput of one TCP stream through `tether forward` (TLS on and off),
against raw loopback, socat and `ssh -L` (default cipher and aes128-gcm)
measured in the same run, with the CPU seconds per GiB of the forwarding
processes.

Every party is its own process, as in use: the target (sends N bytes on
connect, or counts what it receives), `tether-agent serve`, `tether forward`
(or socat, or ssh and sshd) and this client. Prints MB/s per direction.

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
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

TOKEN = "bench-token-0123456789"
BLOCK = 1 << 20


@dataclass
class Way:
    """A way to reach the target: the port to connect to, and the processes
    doing the forwarding (their CPU time is counted, children included)."""

    port: int
    pids: list[int]

    def rss_mib(self) -> float:
        total = 0
        for pid in self.pids:
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                for each in [process, *process.children(recursive=True)]:
                    total += each.memory_info().rss
        return total / (1 << 20)

    def cpu_seconds(self) -> float:
        total = 0.0
        for pid in self.pids:
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                times = process.cpu_times()  # with children that have exited (socat forks)
                total += times.user + times.system + times.children_user + times.children_system
                for child in process.children(recursive=True):
                    times = child.cpu_times()
                    total += times.user + times.system
        return total


def _serve(listener: socket.socket, size: int) -> None:
    """The target: a thread per connection (see `_answer`)."""
    block = os.urandom(BLOCK)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_answer, args=(conn, block, size), daemon=True).start()


def _answer(conn: socket.socket, block: bytes, size: int) -> None:
    """`d` downloads `size` bytes; `u` uploads until EOF and says how many."""
    with conn, contextlib.suppress(ConnectionError):  # reset when the bench ends
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
def spawned(
    argv: list[str], pattern: str, env: dict[str, str]
) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """`argv` running, and the port its output names."""
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        yield _port_from(process, pattern), process
    finally:
        process.terminate()
        process.wait(10)


def _fingerprint(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    for line in process.stdout:
        if "fingerprint SHA256:" in line:
            return line.rsplit("SHA256:", 1)[1].strip()
    raise RuntimeError("the agent printed no fingerprint")


@contextlib.contextmanager
def tether_forward(work: Path, target_port: int, *, tls: bool) -> Iterator[Way]:
    work.mkdir()
    token = work / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    env = {**os.environ, "XDG_CONFIG_HOME": str(work / "config"), "PYTHONUNBUFFERED": "1"}
    agent = [sys.executable, "-m", "agent", "serve", "--listen", "127.0.0.1:0"]
    agent += ["--token-file", str(token), "--state-dir", str(work / "s")]
    agent += [] if tls else ["--insecure-loopback"]
    agent += os.environ.get("BENCH_AGENT_ARGS", "").split()
    with spawned(agent, r"listening on [^ ]+:(\d+)", env) as (agent_port, agent_process):
        pin = (
            f'fingerprint = "{_fingerprint(agent_process)}"' if tls else "insecure_loopback = true"
        )
        config = work / "config" / "tether"
        config.mkdir(parents=True, exist_ok=True)
        (config / "config.toml").write_text(
            f'[runs.bench]\naddress = "127.0.0.1:{agent_port}"\ntoken_file = "{token}"\n{pin}\n'
        )
        forward = [sys.executable, "-m", "connector", "forward", "bench", f"0:{target_port}"]
        with spawned(forward, r"localhost:(\d+) -> ", env) as (port, connector):
            yield Way(port, [agent_process.pid, connector.pid])


@contextlib.contextmanager
def ssh_forward(work: Path, target_port: int, cipher: str | None) -> Iterator[Way]:
    from tests.sshd import openssh_server

    with openssh_server(work) as host:
        port = free_port()
        argv = ["ssh", *host.ssh_options(), "-N", "-L", f"{port}:127.0.0.1:{target_port}"]
        argv += ["-c", cipher] if cipher else []
        process = subprocess.Popen([*argv, f"{host.user}@{host.host}"])
        try:
            _wait_listening(port)
            yield Way(port, [process.pid, _sshd_pid(host.port)])
        finally:
            process.terminate()
            process.wait(10)


def _sshd_pid(port: int) -> int:
    for conn in psutil.net_connections(kind="tcp"):
        listening = conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port
        if listening and conn.pid:
            return conn.pid
    raise RuntimeError("no sshd listening")


def _wait_listening(port: int) -> None:
    for _ in range(200):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@contextlib.contextmanager
def socat(target_port: int) -> Iterator[Way]:
    port = free_port()
    argv = ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"]
    process = subprocess.Popen([*argv, f"TCP:127.0.0.1:{target_port}"])
    try:
        _wait_listening(port)
        yield Way(port, [process.pid])
    finally:
        process.terminate()
        process.wait(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def report(name: str, way: Way, size: int, rounds: int) -> None:
    for direction in ("down", "up"):
        cpu_before = way.cpu_seconds()
        figures = [measure(way.port, size, direction) for _ in range(rounds)]
        cpu_per_gib = (way.cpu_seconds() - cpu_before) / (size * rounds / (1 << 30))
        print(
            f"{name:24s} {direction:4s} best {max(figures):6.0f} MB/s  "
            f"all {[round(f) for f in figures]}  CPU {cpu_per_gib:5.2f} s/GiB"
        )


def report_parallel(name: str, way: Way, size: int, streams: int) -> None:
    """Aggregate MB/s of `streams` concurrent downloads, each in its own process."""
    with multiprocessing.Pool(streams) as pool:
        start = time.perf_counter()
        pool.starmap(measure, [(way.port, size, "down")] * streams)
        elapsed = time.perf_counter() - start
    print(f"{name:24s} {streams} streams down {size * streams / elapsed / 1e6:6.0f} MB/s in all")


def report_idle(name: str, way: Way, count: int) -> None:
    """RSS of the forwarding processes holding `count` idle connections."""
    before = way.rss_mib()
    held = [socket.create_connection(("127.0.0.1", way.port)) for _ in range(count)]
    for conn in held:
        conn.sendall(b"u")  # the target now waits for the upload's end
    time.sleep(2)  # let the far sides settle; RSS is a gauge, not an event
    after = way.rss_mib()
    print(f"{name:24s} {count} idle connections: RSS {before:.0f} -> {after:.0f} MiB")
    for conn in held:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=8, help="concurrent streams")
    parser.add_argument("--idle", type=int, default=1000, help="idle connections held")
    args = parser.parse_args()
    size = args.mib << 20
    print(f"one stream, {args.mib} MiB per transfer, loopback, {os.cpu_count()} CPUs")
    with target(size) as port, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        report("raw loopback", Way(port, []), size, args.rounds)
        if shutil.which("socat"):
            with socat(port) as way:
                report("socat", way, size, args.rounds)
        if shutil.which("sshd") or Path("/usr/sbin/sshd").exists():
            for cipher in (None, "aes128-gcm@openssh.com"):
                with ssh_forward(work / f"ssh-{cipher}", port, cipher) as way:
                    name = f"ssh -L {cipher or 'default'}"
                    report(name, way, size, args.rounds)
                    report_parallel(name, way, size, args.streams)
        for tls in (True, False):
            with tether_forward(work / f"tether-{tls}", port, tls=tls) as way:
                name = f"tether forward TLS {'on' if tls else 'off'}"
                report(name, way, size, args.rounds)
                report_parallel(name, way, size, args.streams)
        # Fresh processes: after bulk transfers the pinned malloc thresholds
        # keep freed buffers mapped, which says nothing about idle cost.
        with tether_forward(work / "tether-idle", port, tls=True) as way:
            report_idle("tether forward TLS on", way, args.idle)


if __name__ == "__main__":
    main()
