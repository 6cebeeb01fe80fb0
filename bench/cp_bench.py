"""One file to a run three ways, in the same run: scp straight to a local
OpenSSH sshd (the peer), scp through tether (`ssh -F` with the config
`tether ssh-config` writes, ProxyCommand `tether proxy`), and `tether cp`.

Every party is its own process, as in use: `tether-agent serve` (TLS on,
unless --no-tls), its embedded SSH server, the `tether` CLI, scp and sshd.
The destination is deleted before each copy (a `tether cp` would otherwise
find the file complete and skip it) and checked after it. Prints MB/s for
each and the ratios against the targets (scp through tether at least 0.8
times direct, `tether cp` at least scp through tether), and the CPU seconds
per GiB on each side: on a shared machine the wall clock moves with the
neighbours' load, the CPU a copy costs does not.

    .venv/bin/python -m bench.cp_bench [--mib 512] [--rounds 1] [--no-tls]
"""

import argparse
import contextlib
import ctypes
import hashlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.cli_procs import Laptop, agent_serving
from tests.sshd import openssh_server

BLOCK = 1 << 20
PR_SET_CHILD_SUBREAPER = 36


@dataclass
class Way:
    """One way to copy the file: the command, its environment, and the
    process whose CPU (its own and its children's) is the server side."""

    name: str
    argv: list[str]
    env: dict[str, str]
    server_pid: int


@dataclass
class Figures:
    mb_per_s: float
    client_cpu_per_gib: float
    server_cpu_per_gib: float


def make_source(path: Path, mib: int) -> str:
    """A file of random bytes (nothing compresses it); its sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as file:
        for _ in range(mib):
            block = os.urandom(BLOCK)
            digest.update(block)
            file.write(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def server_cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def become_subreaper() -> None:
    """ssh does not wait for its ProxyCommand: made our child when orphaned,
    the `tether proxy` is reaped here and its CPU counted (Linux only)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")


def client_cpu(servers: set[int]) -> float:
    """CPU of every process the copy started, once all have ended (all are
    ours to reap, see become_subreaper), the servers aside."""
    for child in psutil.Process().children():
        if child.pid not in servers:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child.pid, 0)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(way: Way, mib: int, target: Path, digest: str) -> Figures:
    target.unlink(missing_ok=True)
    servers = {way.server_pid}
    cpu_before = client_cpu(servers), server_cpu(way.server_pid)
    start = time.perf_counter()
    done = subprocess.run(way.argv, env=way.env, stdin=subprocess.DEVNULL, capture_output=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{way.name} failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
    gib = mib / 1024
    client = (client_cpu(servers) - cpu_before[0]) / gib
    server = (server_cpu(way.server_pid) - cpu_before[1]) / gib
    if sha256_of(target) != digest:
        sys.exit(f"{way.name} left different bytes at {target}")
    return Figures(mib * BLOCK / seconds / 1e6, client, server)


def sshd_pid(config_dir: Path) -> int:
    """The sshd that tests/sshd.py started with its config in `config_dir`."""
    for process in psutil.process_iter(["cmdline"]):
        if str(config_dir / "sshd_config") in (process.info["cmdline"] or []):
            return process.pid
    sys.exit(f"no sshd with a config in {config_dir}")


@contextlib.contextmanager
def tether_run(home: Path, tls: bool) -> Iterator[tuple[Laptop, Path, int]]:
    """An agent, a laptop that knows it as run "bench", the ssh config
    `tether ssh-config` wrote for it, and the agent's pid."""
    with agent_serving(home / "agent", tls=tls) as agent:
        laptop = Laptop(home / "laptop")
        laptop.add_run("bench", agent.port, tls=tls)
        ssh_config = home / "ssh_config"
        done = laptop.tether("ssh-config", "bench", "--file", str(ssh_config))
        if done.returncode != 0:
            sys.exit(f"tether ssh-config failed: {done.stderr.decode(errors='replace')}")
        yield laptop, ssh_config, agent.proc.pid


def best(way: Way, args: argparse.Namespace, target: Path, digest: str) -> Figures:
    """The fastest of the rounds: the one the neighbours disturbed least."""
    rounds = [measure(way, args.mib, target, digest) for _ in range(args.rounds)]
    return max(rounds, key=lambda figures: figures.mb_per_s)


def report(args: argparse.Namespace, results: dict[str, Figures]) -> None:
    tls = "off" if args.no_tls else "on"
    print(f"{args.mib} MiB file, laptop -> container, best of {args.rounds}, agent TLS {tls}")
    print(f"  {'':24} {'MB/s':>8} {'client CPU s/GiB':>17} {'server CPU s/GiB':>17}")
    for name, figures in results.items():
        print(
            f"  {name:24} {figures.mb_per_s:8.1f} {figures.client_cpu_per_gib:17.2f} "
            f"{figures.server_cpu_per_gib:17.2f}"
        )
    direct, via, cp = (results[name].mb_per_s for name in results)
    print(f"  scp through tether / direct   {via / direct:5.2f}  (target >= 0.8)")
    print(f"  tether cp / scp via tether    {cp / via:5.2f}  (target >= 1.0)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=512, help="size of the file")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-tls", action="store_true", help="the agent without TLS")
    args = parser.parse_args()
    become_subreaper()

    results: dict[str, Figures] = {}
    with tempfile.TemporaryDirectory(prefix="cp-bench-") as tmp:
        home = Path(tmp)
        source = home / "source.bin"
        digest = make_source(source, args.mib)
        target = home / "target.bin"
        with openssh_server(home / "sshd") as sshd:
            argv = ["scp", *sshd.ssh_options(), str(source), f"{sshd.user}@{sshd.host}:{target}"]
            way = Way("scp straight to sshd", argv, dict(os.environ), sshd_pid(home / "sshd"))
            results[way.name] = best(way, args, target, digest)
        with tether_run(home / "tether", not args.no_tls) as (laptop, ssh_config, agent_pid):
            argv = ["scp", "-F", str(ssh_config), "-o", "BatchMode=yes"]
            argv += [str(source), f"tether-bench:{target}"]
            way = Way("scp through tether", argv, laptop.env, agent_pid)
            results[way.name] = best(way, args, target, digest)
            tether = str(Path(sys.executable).parent / "tether")
            argv = [tether, "cp", str(source), f"bench:{target}"]
            way = Way("tether cp", argv, laptop.env, agent_pid)
            results[way.name] = best(way, args, target, digest)
    report(args, results)


if __name__ == "__main__":
    main()
