"""The status area: GPU and system snapshots as StatusReply, once or as a stream.

The probes block (NVML calls into the driver, psutil reads /proc), so every
snapshot runs in a worker thread and the event loop keeps serving shells.
"""

import asyncio
import math
import time
from collections.abc import AsyncIterator

from agent.gpu import GpuInfo, GpuProbe, GpuSnapshot, GpuState
from agent.service.registry import Context
from agent.system import SystemProbe, SystemSnapshot
from protos import agent_pb2 as pb

MIN_INTERVAL_S = 0.2
MAX_INTERVAL_S = 3600.0
DEFAULT_INTERVAL_S = 2.0
# More than a screenful of processes costs the agent CPU and helps no one.
MAX_TOP_PROCESSES = 100

_GPU_STATES = {
    GpuState.OK: pb.GPU_STATE_OK,
    GpuState.NO_DRIVER: pb.GPU_STATE_NO_DRIVER,
    GpuState.NO_DEVICES: pb.GPU_STATE_NO_DEVICES,
    GpuState.ERROR: pb.GPU_STATE_ERROR,
}


def watch_interval(requested: float) -> float:
    """The interval a watch uses: unset (0) is the default, the rest clamped to bounds."""
    if math.isnan(requested) or requested <= 0:
        return DEFAULT_INTERVAL_S
    return min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, requested))


def _gpu(gpu: GpuInfo) -> pb.Gpu:
    return pb.Gpu(
        index=gpu.index,
        name=gpu.name,
        uuid=gpu.uuid,
        utilization_percent=gpu.utilization_percent,
        memory_utilization_percent=gpu.memory_utilization_percent,
        memory_used_bytes=gpu.memory_used_bytes,
        memory_total_bytes=gpu.memory_total_bytes,
        temperature_c=gpu.temperature_c,
        power_draw_w=gpu.power_draw_w,
        power_limit_w=gpu.power_limit_w,
        sm_clock_mhz=gpu.sm_clock_mhz,
        memory_clock_mhz=gpu.memory_clock_mhz,
        ecc_corrected=gpu.ecc_corrected,
        ecc_uncorrected=gpu.ecc_uncorrected,
        throttle_reasons=gpu.throttle_reasons,
        processes=[
            pb.GpuProcess(
                pid=p.pid,
                container_pid=p.container_pid,
                name=p.name,
                used_memory_bytes=p.used_memory_bytes,
            )
            for p in gpu.processes
        ],
        error=gpu.error,
    )


def gpu_report(snapshot: GpuSnapshot) -> pb.GpuReport:
    return pb.GpuReport(
        state=_GPU_STATES[snapshot.state],
        detail=snapshot.detail,
        driver_version=snapshot.driver_version,
        cuda_version=snapshot.cuda_version,
        gpus=[_gpu(gpu) for gpu in snapshot.gpus],
    )


def system_report(snapshot: SystemSnapshot) -> pb.SystemReport:
    load1, load5, load15 = snapshot.load
    return pb.SystemReport(
        cpu_percent=snapshot.cpu_percent,
        cpu_percent_per_core=snapshot.cpu_percent_per_core,
        cpu_count=snapshot.cpu_count,
        load1=load1,
        load5=load5,
        load15=load15,
        memory_total_bytes=snapshot.memory_total_bytes,
        memory_used_bytes=snapshot.memory_used_bytes,
        memory_available_bytes=snapshot.memory_available_bytes,
        disk_path=snapshot.disk_path,
        disk_total_bytes=snapshot.disk_total_bytes,
        disk_used_bytes=snapshot.disk_used_bytes,
        net_rx_bytes_per_s=snapshot.net_rx_bytes_per_s,
        net_tx_bytes_per_s=snapshot.net_tx_bytes_per_s,
        top_processes=[
            pb.ProcessInfo(
                pid=p.pid,
                name=p.name,
                user=p.user,
                cpu_percent=p.cpu_percent,
                rss_bytes=p.rss_bytes,
                cmdline=p.cmdline,
            )
            for p in snapshot.top_processes
        ],
    )


class StatusService:
    def __init__(
        self, gpu_probe: GpuProbe, system_probe: SystemProbe, hostname: str, rank: int
    ) -> None:
        self._gpu_probe = gpu_probe
        self._system_probe = system_probe
        self._hostname = hostname
        self._rank = rank

    def _reply(self, top: int) -> pb.StatusReply:
        """One full report; blocking, run in a thread."""
        return pb.StatusReply(
            hostname=self._hostname,
            rank=self._rank,
            time_unix_ms=int(time.time() * 1000),
            gpu=gpu_report(self._gpu_probe.snapshot()),
            system=system_report(self._system_probe.snapshot(min(top, MAX_TOP_PROCESSES))),
        )

    async def Status(self, request: pb.StatusRequest, context: Context) -> pb.StatusReply:
        return await asyncio.to_thread(self._reply, request.top_processes)

    async def WatchStatus(
        self, request: pb.WatchStatusRequest, context: Context
    ) -> AsyncIterator[pb.StatusReply]:
        """A report at once, then one per interval, measured start to start."""
        interval = watch_interval(request.interval_seconds)
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            yield await asyncio.to_thread(self._reply, request.top_processes)
            due = max(due + interval, loop.time())
            await asyncio.sleep(due - loop.time())
