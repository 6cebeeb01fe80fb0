"""SystemProbe on this machine, and StatusService over it and the fake NVML."""

import asyncio
import subprocess
import sys
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, cast

import psutil

from agent.gpu import GpuProbe
from agent.service.status import StatusService, watch_interval
from agent.system import SystemProbe, SystemSnapshot
from protos import agent_pb2 as pb
from tests.fake_nvml import FakeGpu, FakeNvml, NVMLError_LibraryNotFound

NO_CONTEXT: Any = None


def check_sane(snap: SystemSnapshot, disk_path: str) -> None:
    assert 0.0 <= snap.cpu_percent <= 100.0
    assert snap.cpu_count == psutil.cpu_count() == len(snap.cpu_percent_per_core)
    assert all(0.0 <= p <= 100.0 for p in snap.cpu_percent_per_core)
    assert all(load >= 0.0 for load in snap.load)
    assert 0 < snap.memory_used_bytes <= snap.memory_total_bytes
    assert 0 < snap.memory_available_bytes <= snap.memory_total_bytes
    assert snap.disk_path == disk_path and 0 < snap.disk_used_bytes <= snap.disk_total_bytes
    assert snap.net_rx_bytes_per_s >= 0.0 and snap.net_tx_bytes_per_s >= 0.0


def test_snapshots_are_sane_and_rates_non_negative(tmp_path: Path) -> None:
    probe = SystemProbe(str(tmp_path))
    for _ in range(2):
        check_sane(probe.snapshot(top=0), str(tmp_path))
    assert probe.snapshot(top=0).top_processes == []


_SPINNER = """
import sys, time
print("ready", flush=True)
sys.stdin.readline()
start = time.process_time()
while time.process_time() - start < 0.3:
    pass
print("done", flush=True)
sys.stdin.readline()
"""


def test_top_processes_measures_cpu_between_snapshots(tmp_path: Path) -> None:
    spinner = subprocess.Popen(
        [sys.executable, "-c", _SPINNER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert spinner.stdin is not None and spinner.stdout is not None
    try:
        assert spinner.stdout.readline() == "ready\n"
        probe = SystemProbe(str(tmp_path))
        everyone = len(psutil.pids()) + 10
        probe.snapshot(top=everyone)  # the sample each process's CPU time is measured from
        spinner.stdin.write("go\n")
        spinner.stdin.flush()
        assert spinner.stdout.readline() == "done\n"  # it has burnt 0.3 s of CPU since
        top = probe.snapshot(top=everyone).top_processes
    finally:
        spinner.kill()
        spinner.wait()
    assert len(top) == len({p.pid for p in top}) > 1
    assert [p.cpu_percent for p in top] == sorted((p.cpu_percent for p in top), reverse=True)
    assert all(p.cpu_percent >= 0.0 and p.name and p.user for p in top)
    (spun,) = [p for p in top if p.pid == spinner.pid]
    assert spun.cpu_percent > 0.0 and spun.rss_bytes > 0
    # The script makes the command line long: it is cut, and says so.
    assert spun.cmdline.startswith(f"{sys.executable} -c") and spun.cmdline.endswith("…")
    assert len(spun.cmdline) == 200
    assert len(probe.snapshot(top=3).top_processes) == 3


def test_a_vanished_working_dir_reports_zero_disk(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    snap = SystemProbe(str(gone)).snapshot(top=0)
    assert (snap.disk_total_bytes, snap.disk_used_bytes) == (0, 0)


def test_watch_interval_is_clamped() -> None:
    assert watch_interval(0.0) == 2.0  # unset: the default
    assert watch_interval(float("nan")) == 2.0
    assert watch_interval(0.001) == 0.2
    assert watch_interval(5.0) == 5.0
    assert watch_interval(1e9) == watch_interval(float("inf")) == 3600.0


def make_service(tmp_path: Path, nvml: FakeNvml) -> StatusService:
    return StatusService(GpuProbe(nvml), SystemProbe(str(tmp_path)), "node-3", 3)


def test_status_reply(tmp_path: Path) -> None:
    nvml = FakeNvml([FakeGpu(uuid="GPU-0", ecc=None), FakeGpu(uuid="GPU-1")])
    nvml.lose(1, at="nvmlDeviceGetMemoryInfo")
    service = make_service(tmp_path, nvml)
    reply = asyncio.run(service.Status(pb.StatusRequest(top_processes=4), NO_CONTEXT))
    assert (reply.hostname, reply.rank) == ("node-3", 3) and reply.time_unix_ms > 0
    assert reply.gpu.state == pb.GPU_STATE_OK
    assert (reply.gpu.driver_version, reply.gpu.cuda_version) == ("550.54.15", "12.4")
    ok, lost = reply.gpu.gpus
    assert (ok.uuid, ok.power_limit_w, ok.ecc_corrected, ok.error) == ("GPU-0", 700.0, 0, "")
    assert (lost.index, lost.uuid, lost.error) == (1, "GPU-1", "GPU is lost")
    assert reply.system.cpu_count == psutil.cpu_count()
    assert reply.system.disk_path == str(tmp_path) and len(reply.system.top_processes) == 4


def test_status_without_a_driver(tmp_path: Path) -> None:
    service = make_service(tmp_path, FakeNvml(init_error=NVMLError_LibraryNotFound))
    reply = asyncio.run(service.Status(pb.StatusRequest(), NO_CONTEXT))
    assert reply.gpu.state == pb.GPU_STATE_NO_DRIVER and "Library Not Found" in reply.gpu.detail
    assert reply.system.memory_total_bytes > 0 and not reply.system.top_processes


def test_watch_status_reports_at_once_then_per_interval(tmp_path: Path) -> None:
    service = make_service(tmp_path, FakeNvml([FakeGpu()]))
    request = pb.WatchStatusRequest(interval_seconds=0.2, top_processes=1)

    async def first_reports(count: int) -> list[pb.StatusReply]:
        stream = cast(
            AsyncGenerator[pb.StatusReply, None], service.WatchStatus(request, NO_CONTEXT)
        )
        try:
            return [await anext(stream) for _ in range(count)]
        finally:
            await stream.aclose()

    reports = asyncio.run(first_reports(3))
    times = [r.time_unix_ms for r in reports]
    assert times == sorted(times) and len(set(times)) == 3
    assert all(r.gpu.state == pb.GPU_STATE_OK and len(r.system.top_processes) == 1 for r in reports)
