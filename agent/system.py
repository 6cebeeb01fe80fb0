"""The container's CPU, memory, disk, network and busiest processes, through psutil.

Rates and percentages are deltas between two samples. The probe keeps its own
previous samples (CPU times, network counters, one psutil.Process per pid)
rather than psutil's module-wide ones, so a snapshot never blocks to measure
and two probes never disturb each other. The first snapshot measures from the
moment the probe was made.
"""

import itertools
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

_CMDLINE_MAX = 200
_LOOPBACK = "lo"


@dataclass(frozen=True, slots=True)
class ProcessSample:
    pid: int
    name: str
    user: str
    cpu_percent: float
    rss_bytes: int
    cmdline: str


@dataclass(frozen=True, slots=True)
class SystemSnapshot:
    cpu_percent: float
    cpu_percent_per_core: list[float]
    cpu_count: int
    load: tuple[float, float, float]
    memory_total_bytes: int
    memory_used_bytes: int
    memory_available_bytes: int
    disk_path: str
    disk_total_bytes: int
    disk_used_bytes: int
    net_rx_bytes_per_s: float
    net_tx_bytes_per_s: float
    top_processes: list[ProcessSample] = field(default_factory=list)


def _busy_and_total(times: Any) -> tuple[float, float]:
    """Busy and total CPU seconds; guest time is already counted in user and nice."""
    fields = times._asdict()
    total = sum(fields.values()) - fields.get("guest", 0.0) - fields.get("guest_nice", 0.0)
    idle = fields["idle"] + fields.get("iowait", 0.0)
    return total - idle, total


def _percent(before: Any, after: Any) -> float:
    busy_before, total_before = _busy_and_total(before)
    busy_after, total_after = _busy_and_total(after)
    elapsed = total_after - total_before
    if elapsed <= 0:
        return 0.0
    return min(100.0, max(0.0, 100.0 * (busy_after - busy_before) / elapsed))


def _net_bytes() -> tuple[int, int]:
    """Received and sent bytes over every interface but loopback (forwards ride on it)."""
    counters = psutil.net_io_counters(pernic=True)
    nics = [c for name, c in counters.items() if name != _LOOPBACK]
    return sum(c.bytes_recv for c in nics), sum(c.bytes_sent for c in nics)


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class SystemProbe:
    """Takes system snapshots; blocking (it reads /proc), so call it from a thread."""

    def __init__(self, disk_path: str) -> None:
        self._disk_path = disk_path
        self._lock = threading.Lock()
        self._cpu = psutil.cpu_times()
        self._cpu_per_core = psutil.cpu_times(percpu=True)
        self._net = _net_bytes()
        self._net_at = time.monotonic()
        self._processes: dict[int, psutil.Process] = {}

    def snapshot(self, top: int) -> SystemSnapshot:
        with self._lock:
            per_core = self._cpu_percent_per_core()
            memory = psutil.virtual_memory()
            disk_total, disk_used = self._disk()
            rx_rate, tx_rate = self._net_rates()
            return SystemSnapshot(
                cpu_percent=self._cpu_percent(),
                cpu_percent_per_core=per_core,
                cpu_count=len(per_core),
                load=os.getloadavg(),
                memory_total_bytes=memory.total,
                memory_used_bytes=memory.used,
                memory_available_bytes=memory.available,
                disk_path=self._disk_path,
                disk_total_bytes=disk_total,
                disk_used_bytes=disk_used,
                net_rx_bytes_per_s=rx_rate,
                net_tx_bytes_per_s=tx_rate,
                top_processes=self._top_processes(top) if top > 0 else [],
            )

    def _cpu_percent(self) -> float:
        now = psutil.cpu_times()
        percent = _percent(self._cpu, now)
        self._cpu = now
        return percent

    def _cpu_percent_per_core(self) -> list[float]:
        now = psutil.cpu_times(percpu=True)
        percents = [
            _percent(before, after) for before, after in zip(self._cpu_per_core, now, strict=False)
        ]
        self._cpu_per_core = now
        return percents

    def _disk(self) -> tuple[int, int]:
        try:
            usage = psutil.disk_usage(self._disk_path)
        except OSError:  # the working dir went away: report nothing rather than fail
            return 0, 0
        return usage.total, usage.used

    def _net_rates(self) -> tuple[float, float]:
        now, now_at = _net_bytes(), time.monotonic()
        elapsed = now_at - self._net_at
        # A vanished interface makes a sum go down: clamp to zero rather than go negative.
        rx_rate, tx_rate = (
            max(0, after - before) / elapsed if elapsed > 0 else 0.0
            for before, after in zip(self._net, now, strict=True)
        )
        self._net, self._net_at = now, now_at
        return rx_rate, tx_rate

    def _top_processes(self, top: int) -> list[ProcessSample]:
        """The `top` processes by CPU since the last snapshot (0% for ones not seen before)."""
        busy: list[tuple[float, psutil.Process]] = []
        seen: dict[int, psutil.Process] = {}
        for pid in psutil.pids():
            try:
                proc = self._processes.get(pid)
                if proc is None or not proc.is_running():  # new, or the pid was reused
                    proc = psutil.Process(pid)
                busy.append((proc.cpu_percent(None), proc))
                seen[pid] = proc
            except psutil.Error:  # gone, or not ours to read
                continue
        self._processes = seen
        busy.sort(key=lambda entry: entry[0], reverse=True)
        samples = (_sample(proc, cpu) for cpu, proc in busy)
        return list(itertools.islice((s for s in samples if s is not None), top))


def _sample(proc: psutil.Process, cpu_percent: float) -> ProcessSample | None:
    try:
        with proc.oneshot():
            return ProcessSample(
                pid=proc.pid,
                name=proc.name(),
                user=proc.username(),
                cpu_percent=cpu_percent,
                rss_bytes=proc.memory_info().rss,
                cmdline=_truncate(" ".join(proc.cmdline()), _CMDLINE_MAX),
            )
    except psutil.Error:
        return None
