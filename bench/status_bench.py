"""`tether status --all-ranks` against N local agents: the time to a full table.

    .venv/bin/python -m bench.status_bench [--ranks 16] [--rounds 5]

Starts N `tether-agent serve` processes on loopback (ranks 0..N-1 of one run,
TLS on, certificates pinned by a first call), then times the whole command a
person types, process start to exit: `tether status RUN --all-ranks`, beside
the same N nodes asked one after another (`tether status RUN --rank K` for
each K) in the same run. Prints the median of each and their ratio.
"""

import argparse
import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent


@contextlib.contextmanager
def agents(work: Path, count: int, token: Path) -> Iterator[list[int]]:
    """N agents on free loopback ports; yields their ports."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for rank in range(count):
            argv = [str(BIN / "tether-agent"), "serve", "--listen", "127.0.0.1:0"]
            argv += ["--token-file", str(token), "--state-dir", str(work / f"agent{rank}")]
            argv += ["--rank", str(rank), "--world-size", str(count), "--run-name", "bench"]
            procs.append(
                subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            )
        ports = []
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # "tether-agent listening on 127.0.0.1:PORT (TLS)"
            ports.append(int(line.split()[3].rpartition(":")[2]))
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tsb-") as folder:
        work = Path(folder)
        token = work / "token"
        token.write_text(secrets.token_urlsafe(32))
        token.chmod(0o600)
        env = {**os.environ, "XDG_CONFIG_HOME": str(work / "cfg"), "COLUMNS": "200"}
        env["XDG_STATE_HOME"] = str(work / "st")
        with agents(work, args.ranks, token) as ports:
            add = [str(BIN / "tether"), "runs", "add", "bench", "--token-file", str(token)]
            add += ["--address", f"127.0.0.1:{ports[0]}"]
            for rank, port in enumerate(ports[1:], start=1):
                add += ["--rank-address", f"{rank}=127.0.0.1:{port}"]
            subprocess.run(add, env=env, check=True, stdout=subprocess.DEVNULL)
            status = [str(BIN / "tether"), "status", "bench"]
            timed([*status, "--all-ranks"], env)  # pins every certificate
            parallel = [timed([*status, "--all-ranks"], env) for _ in range(args.rounds)]
            one_by_one = [
                sum(timed([*status, "--rank", str(rank)], env) for rank in range(args.ranks))
                for _ in range(args.rounds)
            ]
    all_ranks, sequential = statistics.median(parallel), statistics.median(one_by_one)
    last = args.ranks - 1
    print(f"{args.ranks} agents, median of {args.rounds} rounds, process start to exit:")
    print(f"  tether status --all-ranks               {all_ranks:6.2f} s to the full table")
    print(f"  tether status --rank K for K in 0..{last:<3d}  {sequential:6.2f} s one after another")
    print(f"  ratio (one by one / all ranks)          {sequential / all_ranks:6.1f}x")


if __name__ == "__main__":
    main()
