"""The GPU picture, read through NVML.

The NVML module is injected (pynvml from nvidia-ml-py by default, a fake in
tests) so the real code path is the tested one. A snapshot never raises: a
missing driver, no devices, or NVML failing as a whole are explicit states,
and a GPU that fails part-way (one that fell off the bus) is marked on its
own entry while the others are still reported.
"""

import contextlib
import enum
import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from protos.resource import Resource

T = TypeVar("T")

# Clock event ("throttle") reason bits, as NVML defines them.
_THROTTLE_REASONS = {
    0x001: "gpu_idle",
    0x002: "applications_clocks_setting",
    0x004: "sw_power_cap",
    0x008: "hw_slowdown",
    0x010: "sync_boost",
    0x020: "sw_thermal_slowdown",
    0x040: "hw_thermal_slowdown",
    0x080: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


class GpuState(enum.Enum):
    OK = "ok"
    NO_DRIVER = "no_driver"
    NO_DEVICES = "no_devices"
    ERROR = "error"


@dataclass(slots=True)
class GpuProcessInfo:
    pid: int
    container_pid: int
    name: str
    used_memory_bytes: int


@dataclass(slots=True)
class GpuInfo:
    index: int
    name: str = ""
    uuid: str = ""
    utilization_percent: int = 0
    memory_utilization_percent: int = 0
    memory_used_bytes: int = 0
    memory_total_bytes: int = 0
    temperature_c: int = 0
    power_draw_w: float = 0.0
    power_limit_w: float = 0.0
    sm_clock_mhz: int = 0
    memory_clock_mhz: int = 0
    ecc_corrected: int = 0
    ecc_uncorrected: int = 0
    throttle_reasons: list[str] = field(default_factory=list)
    processes: list[GpuProcessInfo] = field(default_factory=list)
    # Non-empty when this GPU failed; the fields read before the failure stay.
    error: str = ""


@dataclass(slots=True)
class GpuSnapshot:
    state: GpuState
    detail: str = ""
    driver_version: str = ""
    cuda_version: str = ""
    gpus: list[GpuInfo] = field(default_factory=list)


def decode_throttle_reasons(mask: int) -> list[str]:
    names = [name for bit, name in _THROTTLE_REASONS.items() if mask & bit]
    unknown = mask & ~sum(_THROTTLE_REASONS)
    return [*names, f"other(0x{unknown:x})"] if unknown else names


def _text(value: str | bytes) -> str:
    """Older pynvml releases return bytes where newer ones return str."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _cuda_version(raw: int) -> str:
    return f"{raw // 1000}.{raw % 1000 // 10}"


def host_to_local_pids(proc_root: Path = Path("/proc")) -> dict[int, int]:
    """Maps pids as the outermost visible pid namespace sees them to the agent's own.

    NVML reports pids in the namespace the driver sees (usually the host's).
    /proc/<pid>/status lists a process's pid at every namespace level from the
    procfs's own down to its innermost (NSpid); the agent's level is the depth
    of its own NSpid line. When the procfs is the agent's own namespace this is
    the identity over local processes: there is nothing more to learn from it.
    """
    own = _nspids(proc_root / "self" / "status")
    if not own:
        return {}
    depth = len(own) - 1
    mapping: dict[int, int] = {}
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        nspids = _nspids(entry / "status")
        if len(nspids) > depth:
            mapping[nspids[0]] = nspids[depth]
    return mapping


def _nspids(status: Path) -> list[int]:
    try:
        text = status.read_text()
    except OSError:  # the process exited, or is not ours to read
        return []
    for line in text.splitlines():
        if line.startswith("NSpid:"):
            return [int(part) for part in line.split()[1:]]
    return []


class GpuProbe(Resource):
    """Takes GPU snapshots; NVML is initialised once, on first use, and shut down by close().

    Snapshots block (NVML calls into the driver): call them from a thread.
    """

    def __init__(self, nvml_module: Any = None, proc_root: Path = Path("/proc")) -> None:
        # pynvml is untyped, and the fake only shares its shape: Any on purpose.
        self._nvml: Any = nvml_module
        self._proc_root = proc_root
        self._initialised = False
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._initialised:
                self._initialised = False
                with contextlib.suppress(self._nvml.NVMLError):
                    self._nvml.nvmlShutdown()

    async def wait_closed(self) -> None:
        """Returns at once: close() already released NVML."""

    def snapshot(self) -> GpuSnapshot:
        with self._lock:
            try:
                return self._snapshot()
            except Exception as exc:  # never a stack trace to the caller
                return GpuSnapshot(GpuState.ERROR, f"{type(exc).__name__}: {exc}")

    def _snapshot(self) -> GpuSnapshot:
        failed = self._init()
        if failed is not None:
            return failed
        nvml = self._nvml
        try:
            count = nvml.nvmlDeviceGetCount()
            driver = _text(nvml.nvmlSystemGetDriverVersion())
            cuda = _cuda_version(nvml.nvmlSystemGetCudaDriverVersion())
        except nvml.NVMLError as exc:
            return GpuSnapshot(GpuState.ERROR, f"NVML failed: {exc}")
        if count == 0:
            return GpuSnapshot(GpuState.NO_DEVICES, "NVML reports no GPU", driver, cuda)
        # Scanning /proc costs; do it once a snapshot, and only if a GPU has processes.
        pids = functools.cache(lambda: host_to_local_pids(self._proc_root))
        gpus = [self._read_gpu(index, pids) for index in range(count)]
        return GpuSnapshot(GpuState.OK, "", driver, cuda, gpus)

    def _init(self) -> GpuSnapshot | None:
        """Initialises NVML if needed; returns the snapshot to report when it cannot."""
        if self._initialised:
            return None
        if self._nvml is None:
            try:
                import pynvml
            except ImportError as exc:
                return GpuSnapshot(GpuState.ERROR, f"nvidia-ml-py is not installed: {exc}")
            self._nvml = pynvml
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except (nvml.NVMLError_LibraryNotFound, nvml.NVMLError_DriverNotLoaded) as exc:
            return GpuSnapshot(GpuState.NO_DRIVER, f"no NVIDIA driver: {exc}")
        except nvml.NVMLError as exc:
            return GpuSnapshot(GpuState.ERROR, f"NVML did not start: {exc}")
        self._initialised = True
        return None

    def _read_gpu(self, index: int, pids: Callable[[], dict[int, int]]) -> GpuInfo:
        gpu = GpuInfo(index)
        try:
            self._fill(gpu, pids)
        except self._nvml.NVMLError as exc:
            gpu.error = str(exc) or type(exc).__name__
        return gpu

    def _optional(self, default: T, call: Callable[..., T], *args: Any) -> T:
        """A reading this GPU does not support (ECC on most consumer boards) is `default`."""
        try:
            return call(*args)
        except self._nvml.NVMLError_NotSupported:
            return default

    def _fill(self, gpu: GpuInfo, pids: Callable[[], dict[int, int]]) -> None:
        nvml = self._nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(gpu.index)
        gpu.name = _text(nvml.nvmlDeviceGetName(handle))
        gpu.uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        rates = self._optional(None, nvml.nvmlDeviceGetUtilizationRates, handle)  # not under MIG
        if rates is not None:
            gpu.utilization_percent, gpu.memory_utilization_percent = rates.gpu, rates.memory
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        gpu.memory_used_bytes, gpu.memory_total_bytes = memory.used, memory.total
        gpu.temperature_c = self._optional(
            0, nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU
        )
        gpu.power_draw_w = self._optional(0, nvml.nvmlDeviceGetPowerUsage, handle) / 1000
        gpu.power_limit_w = self._optional(0, nvml.nvmlDeviceGetEnforcedPowerLimit, handle) / 1000
        gpu.sm_clock_mhz = self._optional(
            0, nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM
        )
        gpu.memory_clock_mhz = self._optional(
            0, nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_MEM
        )
        gpu.ecc_corrected = self._ecc(handle, nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED)
        gpu.ecc_uncorrected = self._ecc(handle, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)
        reasons = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or (
            nvml.nvmlDeviceGetCurrentClocksThrottleReasons
        )
        gpu.throttle_reasons = decode_throttle_reasons(self._optional(0, reasons, handle))
        gpu.processes = self._processes(handle, pids)

    def _ecc(self, handle: Any, kind: int) -> int:
        """The volatile (since the driver loaded) count; 0 where ECC is off or absent."""
        nvml = self._nvml
        return self._optional(
            0, nvml.nvmlDeviceGetTotalEccErrors, handle, kind, nvml.NVML_VOLATILE_ECC
        )

    def _processes(self, handle: Any, pids: Callable[[], dict[int, int]]) -> list[GpuProcessInfo]:
        nvml = self._nvml
        none: list[Any] = []
        running: dict[int, Any] = {}
        for listing in (
            nvml.nvmlDeviceGetComputeRunningProcesses,
            nvml.nvmlDeviceGetGraphicsRunningProcesses,
        ):
            for proc in self._optional(none, listing, handle):
                running.setdefault(proc.pid, proc)
        if not running:
            return []
        mapping = pids()
        return [
            GpuProcessInfo(
                pid,
                mapping.get(pid, 0),
                self._process_name(pid, mapping.get(pid, 0)),
                proc.usedGpuMemory or 0,
            )
            for pid, proc in running.items()
        ]

    def _process_name(self, pid: int, local_pid: int) -> str:
        """The local /proc name when the pid maps here; NVML's otherwise; "" if neither."""
        if local_pid:
            try:
                return (self._proc_root / str(local_pid) / "comm").read_text().strip()
            except OSError:
                pass
        try:
            return _text(self._nvml.nvmlSystemGetProcessName(pid))
        except self._nvml.NVMLError:
            return ""
