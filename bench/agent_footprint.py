"""The agent's footprint while a run sits idle, beside sshd's in the same run.

    .venv/bin/python -m bench.agent_footprint [--seconds 60] [--sessions 10]

Measures RSS and CPU (percent of one core) of a TLS tether-agent over an idle
window, then again with N attached `tether connect` sessions each sitting at
an idle shell; sshd with N idle `ssh -tt` sessions is measured the same way.
Targets: idle RSS at most 60 MB, idle CPU at most 0.5% of a core.
"""

import argparse
import tempfile
import time
from pathlib import Path

import psutil

from bench.ptyrun import PtyRun
from bench.shell_bench import READY, ssh_argv, tether_agent, tether_argv
from tests.sshd import openssh_server


def footprint(pids: list[int], seconds: float) -> tuple[float, float]:
    """(RSS in MB summed over pids and their children, CPU % of one core)."""
    procs = [psutil.Process(pid) for pid in pids]
    procs += [child for proc in procs for child in proc.children(recursive=True)]

    def cpu_seconds() -> float:
        total = 0.0
        for proc in procs:
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    before = cpu_seconds()
    time.sleep(seconds)
    used = cpu_seconds() - before
    rss = 0
    for proc in procs:
        try:
            rss += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return rss / 1e6, 100.0 * used / seconds


def listening_pid(port: int) -> int:
    for conn in psutil.net_connections(kind="tcp"):
        address = conn.laddr
        if conn.status != psutil.CONN_LISTEN or not isinstance(address, tuple) or not address:
            continue
        if address[1] == port and conn.pid:
            return int(conn.pid)
    raise RuntimeError(f"nothing listens on port {port}")


def attached(argvs: list[list[str]], env: dict[str, str]) -> list[PtyRun]:
    runs = [PtyRun(argv, env) for argv in argvs]
    for run in runs:
        run.wait_for(b"READY")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--sessions", type=int, default=10)
    args = parser.parse_args()
    idle_shell = f"{READY}; exec sleep 100000"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with tether_agent(work) as env, openssh_server(work / "sshd") as host:
            tether = listening_pid(int(env["BENCH_AGENT_PORT"]))
            sshd = listening_pid(host.port)
            rows = [
                ("idle", footprint([tether], args.seconds), footprint([sshd], args.seconds)),
            ]
            ours = attached([tether_argv(idle_shell)] * args.sessions, env)
            theirs = attached([ssh_argv(host, idle_shell)] * args.sessions, env)
            try:
                rows.append(
                    (
                        f"{args.sessions} sessions",
                        footprint([tether], args.seconds),
                        footprint([sshd], args.seconds),
                    )
                )
            finally:
                for run in ours + theirs:
                    run.close()
    header = ("state", "agent RSS MB", "agent CPU %", "sshd RSS MB", "sshd CPU %")
    print(f"{header[0]:14} " + " ".join(f"{h:>13}" for h in header[1:]))
    for name, (rss, cpu), (srss, scpu) in rows:
        print(f"{name:14} {rss:13.1f} {cpu:13.2f} {srss:13.1f} {scpu:13.2f}")
    print("targets: idle agent RSS <= 60 MB, idle agent CPU <= 0.5 %")


if __name__ == "__main__":
    main()
