"""tether connect beside OpenSSH, in one run, on loopback.

    .venv/bin/python -m bench.shell_bench [--bulk-mib 256] [--echoes 500]

Starts a tether-agent (TLS on) and a private sshd on 127.0.0.1, then drives
`tether connect` and `ssh -tt` through the same local PTY harness:

- keystroke echo round trip (p50, p99): one byte to a remote `cat` in raw mode;
- bulk PTY output: `cat` of a text file through the remote PTY to ours;
- connect to first prompt: process start to the first remote output;
- resume: the link is refused and cut, then let back; time from the link
  coming back to the session answering again (ssh has no resume).
"""

import argparse
import asyncio
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.ptyrun import PtyRun
from tests.faultproxy import FaultProxy
from tests.sshd import SshJumpHost, openssh_server

BIN = Path(sys.executable).parent
READY = "echo RE''ADY"  # the quotes keep the echoed command from matching READY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def tether_agent(work: Path) -> Iterator[dict[str, str]]:
    """A TLS agent and a configured run named `bench`; yields the env to use."""
    token = work / "token"
    token.write_text(secrets.token_urlsafe(32))
    token.chmod(0o600)
    port = free_port()
    env = {**os.environ, "XDG_CONFIG_HOME": str(work / "cfg"), "XDG_STATE_HOME": str(work / "st")}
    agent = subprocess.Popen(
        [
            str(BIN / "tether-agent"),
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--token-file",
            str(token),
            "--state-dir",
            str(work / "agent"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert agent.stdout is not None
        agent.stdout.readline()
        env["BENCH_AGENT_PORT"] = str(port)
        env["BENCH_TOKEN"] = str(token)
        add_run("bench", port, env)
        subprocess.run([str(BIN / "tether"), "exec", "bench", "--", "true"], env=env, check=True)
        yield env
    finally:
        agent.terminate()
        agent.wait(10)


def add_run(name: str, port: int, env: dict[str, str]) -> None:
    subprocess.run(
        [
            str(BIN / "tether"),
            "runs",
            "add",
            name,
            "--address",
            f"127.0.0.1:{port}",
            "--token-file",
            env["BENCH_TOKEN"],
        ],
        env=env,
        check=True,
        capture_output=True,
    )


def tether_argv(command: str, run: str = "bench") -> list[str]:
    return [str(BIN / "tether"), "connect", run, "--command", command]


def ssh_argv(host: SshJumpHost, command: str) -> list[str]:
    argv = host.ssh_argv(command)
    return [argv[0], "-tt", *argv[1:]]


def echo_latency(argv: list[str], env: dict[str, str], count: int) -> tuple[float, float]:
    run = PtyRun(argv, env)
    try:
        run.wait_for(b"READY")
        samples = [run.echo_round_trip(b"x") for _ in range(count)]
    finally:
        run.close()
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def bulk_throughput(argv: list[str], env: dict[str, str]) -> float:
    run = PtyRun(argv, env)
    try:
        run.wait_for(b"READY")
        start = time.perf_counter()
        size = run.drain_to_eof()
        return size / (time.perf_counter() - start)
    finally:
        run.close()


def time_to_prompt(argv: list[str], env: dict[str, str], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        run = PtyRun(argv, env)
        try:
            times.append(run.wait_for(b"READY"))
        finally:
            run.close()
    return statistics.median(times)


@contextmanager
def proxy_in_thread(port: int) -> Iterator[FaultProxy]:
    loop = asyncio.new_event_loop()
    proxy = FaultProxy("127.0.0.1", port)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(proxy.start(), loop).result(10)
    try:
        yield proxy
    finally:
        loop.call_soon_threadsafe(proxy.close)
        asyncio.run_coroutine_threadsafe(proxy.wait_closed(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def resume_time(env: dict[str, str], outage: float) -> float:
    """Seconds from the link coming back to the session echoing a key again."""
    with proxy_in_thread(int(env["BENCH_AGENT_PORT"])) as proxy:
        add_run("bench-proxy", proxy.port, env)
        run = PtyRun(tether_argv(f"stty raw -echo; {READY}; cat", "bench-proxy"), env)
        try:
            run.wait_for(b"READY")
            proxy.refuse(True)
            proxy.cut()
            time.sleep(outage)
            run.seen.clear()
            back = time.perf_counter()
            proxy.refuse(False)
            os.write(run.master, b"z")
            run.wait_for(b"z", timeout=60)
            echoed = time.perf_counter() - back
            run.wait_for(b"resumed", timeout=5)
            return echoed
        finally:
            run.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bulk-mib", type=int, default=256)
    parser.add_argument("--echoes", type=int, default=500)
    parser.add_argument("--outage", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        blob = work / "bulk.txt"
        with open(blob, "wb") as f:
            line = (secrets.token_hex(49) + "\n").encode()
            f.write(line * (args.bulk_mib * (1 << 20) // len(line)))
        with tether_agent(work) as env, openssh_server(work / "sshd") as host:
            rows: list[tuple[str, float, float, str]] = []
            raw_cat = f"stty raw -echo; {READY}; cat"
            t50, t99 = echo_latency(tether_argv(raw_cat), env, args.echoes)
            s50, s99 = echo_latency(ssh_argv(host, raw_cat), env, args.echoes)
            rows.append(("echo p50 (ms)", t50 * 1e3, s50 * 1e3, "lower is better"))
            rows.append(("echo p99 (ms)", t99 * 1e3, s99 * 1e3, "target: ≤ ssh + 0.3"))
            bulk = f"{READY}; cat {blob}"
            tb = bulk_throughput(tether_argv(bulk), env)
            sb = bulk_throughput(ssh_argv(host, bulk), env)
            rows.append(("bulk PTY output (MB/s)", tb / 1e6, sb / 1e6, "target: ≥ ssh"))
            tp = time_to_prompt(tether_argv(READY), env)
            sp = time_to_prompt(ssh_argv(host, READY), env)
            rows.append(("connect to prompt (ms)", tp * 1e3, sp * 1e3, "target: ≤ ssh"))
            echoed = resume_time(env, args.outage)
            rows.append(("link back to resumed (ms)", echoed * 1e3, float("nan"), "ssh: no resume"))
    print(f"{'metric':28} {'tether':>10} {'ssh':>10} {'ratio':>7}  note")
    for name, ours, theirs, note in rows:
        ratio = ours / theirs if theirs == theirs and theirs else float("nan")
        print(f"{name:28} {ours:10.2f} {theirs:10.2f} {ratio:7.2f}  {note}")


if __name__ == "__main__":
    main()
