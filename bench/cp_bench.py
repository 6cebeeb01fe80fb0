"""One file to a run three ways, in the same run: scp straight to a local
OpenSSH sshd (the peer), scp through tether (`ssh -F` with the config
`tether ssh-config` writes, ProxyCommand `tether proxy`), and `tether cp`.

Every party is its own process, as in use: `tether-agent serve` (TLS on,
unless --no-tls), its embedded SSH server, the `tether` CLI, scp and sshd.
The destination is deleted before each copy (a `tether cp` would otherwise
find the file complete and skip it) and checked after it. Prints MB/s for
each and the ratios against the targets: scp through tether at least 0.8
times direct, `tether cp` at least scp through tether.

    .venv/bin/python -m bench.cp_bench [--mib 512] [--rounds 1] [--no-tls]
"""

import argparse
import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.cli_procs import Laptop, agent_serving
from tests.sshd import openssh_server

BLOCK = 1 << 20


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


def timed_copy(argv: list[str], env: dict[str, str], target: Path, digest: str) -> float:
    """Seconds that `argv` took to put the source at `target`, checked."""
    target.unlink(missing_ok=True)
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{argv[0]} failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
    if sha256_of(target) != digest:
        sys.exit(f"{argv[0]} left different bytes at {target}")
    return seconds


@contextlib.contextmanager
def tether_run(home: Path, tls: bool) -> Iterator[tuple[Laptop, Path]]:
    """An agent, a laptop that knows it as run "bench", and the ssh config
    `tether ssh-config` wrote for it."""
    with agent_serving(home / "agent", tls=tls) as agent:
        laptop = Laptop(home / "laptop")
        laptop.add_run("bench", agent.port, tls=tls)
        ssh_config = home / "ssh_config"
        done = laptop.tether("ssh-config", "bench", "--file", str(ssh_config))
        if done.returncode != 0:
            sys.exit(f"tether ssh-config failed: {done.stderr.decode(errors='replace')}")
        yield laptop, ssh_config


def best_rate(mib: int, rounds: int, copy: Callable[[], float]) -> float:
    """MB/s of the fastest of `rounds` copies (the least disturbed by the
    other load on the machine)."""
    return max(mib * BLOCK / copy() / 1e6 for _ in range(rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=512, help="size of the file")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-tls", action="store_true", help="the agent without TLS")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cp-bench-") as tmp:
        home = Path(tmp)
        source = home / "source.bin"
        digest = make_source(source, args.mib)
        target = home / "target.bin"
        env = dict(os.environ)
        with openssh_server(home / "sshd") as sshd:
            direct = ["scp", *sshd.ssh_options(), str(source), f"{sshd.user}@{sshd.host}:{target}"]
            scp_direct = best_rate(
                args.mib, args.rounds, lambda: timed_copy(direct, env, target, digest)
            )
        with tether_run(home / "tether", not args.no_tls) as (laptop, ssh_config):
            scp = ["scp", "-F", str(ssh_config), "-o", "BatchMode=yes"]
            scp += [str(source), f"tether-bench:{target}"]
            scp_tether = best_rate(
                args.mib, args.rounds, lambda: timed_copy(scp, laptop.env, target, digest)
            )
            cp = [str(Path(sys.executable).parent / "tether"), "cp", str(source)]
            cp.append(f"bench:{target}")
            tether_cp = best_rate(
                args.mib, args.rounds, lambda: timed_copy(cp, laptop.env, target, digest)
            )

    tls = "off" if args.no_tls else "on"
    print(f"{args.mib} MiB file, laptop -> container, best of {args.rounds}, agent TLS {tls}")
    print(f"  scp straight to sshd      {scp_direct:8.1f} MB/s")
    print(f"  scp through tether        {scp_tether:8.1f} MB/s")
    print(f"  tether cp                 {tether_cp:8.1f} MB/s")
    print(f"  scp through tether / direct   {scp_tether / scp_direct:5.2f}  (target >= 0.8)")
    print(f"  tether cp / scp via tether    {tether_cp / scp_tether:5.2f}  (target >= 1.0)")


if __name__ == "__main__":
    main()
