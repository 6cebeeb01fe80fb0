"""A stand-in for nvidia-ml-py's `pynvml`, for machines without a GPU.

It has the names, signatures, constants and exception classes of the pynvml
calls the agent makes (tests/test_gpu.py checks them against the real
module), over a configurable list of GPUs. A GPU can be made to fall off the
bus part-way through a snapshot, and the driver or library can be missing.
"""

from dataclasses import dataclass, field
from typing import Any, ClassVar

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15

NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0


class NVMLError(Exception):
    """Like pynvml's: carries the NVML return code in `value`; subclasses need none."""

    code: ClassVar[int] = 999
    message: ClassVar[str] = "Unknown Error"

    def __init__(self, value: int | None = None) -> None:
        self.value = self.code if value is None else value
        super().__init__(self.value)

    def __str__(self) -> str:
        return self.message


class NVMLError_Uninitialized(NVMLError):
    code, message = NVML_ERROR_UNINITIALIZED, "Uninitialized"


class NVMLError_NotSupported(NVMLError):
    code, message = NVML_ERROR_NOT_SUPPORTED, "Not Supported"


class NVMLError_DriverNotLoaded(NVMLError):
    code, message = NVML_ERROR_DRIVER_NOT_LOADED, "Driver Not Loaded"


class NVMLError_LibraryNotFound(NVMLError):
    code, message = NVML_ERROR_LIBRARY_NOT_FOUND, "NVML Shared Library Not Found"


class NVMLError_GpuIsLost(NVMLError):
    code, message = NVML_ERROR_GPU_IS_LOST, "GPU is lost"


@dataclass
class FakeProcess:
    """pynvml's process entry: `pid` and `usedGpuMemory` (None where unknown)."""

    pid: int
    usedGpuMemory: int | None


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    utilization: int = 0
    memory_utilization: int = 0
    memory_used: int = 0
    memory_total: int = 80 * 2**30
    temperature: int = 30
    power_mw: int = 70_000
    power_limit_mw: int = 700_000
    sm_clock: int = 1980
    memory_clock: int = 2619
    # None: the board does not support ECC (NVMLError_NotSupported).
    ecc: tuple[int, int] | None = (0, 0)
    throttle_mask: int = 0
    compute: list[FakeProcess] = field(default_factory=list)
    graphics: list[FakeProcess] = field(default_factory=list)


@dataclass
class _Utilization:
    gpu: int
    memory: int


@dataclass
class _Memory:
    total: int
    free: int
    used: int


class LegacyFakeNvml:
    """An older nvidia-ml-py, before the clock-event spelling of the throttle call.

    Pass an instance where the agent takes the pynvml module.
    """

    NVML_TEMPERATURE_GPU = NVML_TEMPERATURE_GPU
    NVML_CLOCK_SM = NVML_CLOCK_SM
    NVML_CLOCK_MEM = NVML_CLOCK_MEM
    NVML_MEMORY_ERROR_TYPE_CORRECTED = NVML_MEMORY_ERROR_TYPE_CORRECTED
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = NVML_MEMORY_ERROR_TYPE_UNCORRECTED
    NVML_VOLATILE_ECC = NVML_VOLATILE_ECC
    NVMLError = NVMLError
    NVMLError_Uninitialized = NVMLError_Uninitialized
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_DriverNotLoaded = NVMLError_DriverNotLoaded
    NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    NVMLError_GpuIsLost = NVMLError_GpuIsLost

    def __init__(
        self,
        gpus: list[FakeGpu] | None = None,
        *,
        init_error: type[Exception] | None = None,
        driver_version: str = "550.54.15",
        cuda_version: int = 12040,
        process_names: dict[int, str] | None = None,
    ) -> None:
        self.gpus = list(gpus or [])
        self.init_error = init_error
        self.driver_version = driver_version
        self.cuda_version = cuda_version
        self.process_names = dict(process_names or {})
        self.init_calls = 0
        self.shutdown_calls = 0
        self._initialised = False
        self._lost: set[int] = set()
        self._lose_at: dict[int, str] = {}

    def lose(self, index: int, at: str | None = None) -> None:
        """GPU `index` falls off the bus: at once, or when the agent calls `at` on it."""
        if at is None:
            self._lost.add(index)
        else:
            self._lose_at[index] = at

    def _gpu(self, handle: int, call: str) -> FakeGpu:
        if not self._initialised:
            raise NVMLError_Uninitialized()
        if self._lose_at.get(handle) == call:
            self._lost.add(handle)
        if handle in self._lost:
            raise NVMLError_GpuIsLost()
        return self.gpus[handle]

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise self.init_error()
        self._initialised = True

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1
        self._initialised = False

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self.cuda_version

    def nvmlSystemGetProcessName(self, pid: int) -> str:
        if pid not in self.process_names:
            raise NVMLError(NVML_ERROR_NO_PERMISSION)  # as for another user's process
        return self.process_names[pid]

    def nvmlDeviceGetCount(self) -> int:
        if not self._initialised:
            raise NVMLError_Uninitialized()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._gpu(index, "nvmlDeviceGetHandleByIndex")
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:
        return self._gpu(handle, "nvmlDeviceGetName").name

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self._gpu(handle, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> _Utilization:
        gpu = self._gpu(handle, "nvmlDeviceGetUtilizationRates")
        return _Utilization(gpu.utilization, gpu.memory_utilization)

    def nvmlDeviceGetMemoryInfo(self, handle: int, version: Any = None) -> _Memory:
        gpu = self._gpu(handle, "nvmlDeviceGetMemoryInfo")
        return _Memory(gpu.memory_total, gpu.memory_total - gpu.memory_used, gpu.memory_used)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        assert sensor == NVML_TEMPERATURE_GPU
        return self._gpu(handle, "nvmlDeviceGetTemperature").temperature

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return self._gpu(handle, "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        return self._gpu(handle, "nvmlDeviceGetEnforcedPowerLimit").power_limit_mw

    def nvmlDeviceGetClockInfo(self, handle: int, type: int) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetClockInfo")
        return {NVML_CLOCK_SM: gpu.sm_clock, NVML_CLOCK_MEM: gpu.memory_clock}[type]

    def nvmlDeviceGetTotalEccErrors(self, handle: int, errorType: int, counterType: int) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetTotalEccErrors")
        assert counterType == NVML_VOLATILE_ECC
        if gpu.ecc is None:
            raise NVMLError_NotSupported()
        return gpu.ecc[errorType]

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: int) -> int:
        return self._gpu(handle, "nvmlDeviceGetCurrentClocksThrottleReasons").throttle_mask

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[FakeProcess]:
        return list(self._gpu(handle, "nvmlDeviceGetComputeRunningProcesses").compute)

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: int) -> list[FakeProcess]:
        return list(self._gpu(handle, "nvmlDeviceGetGraphicsRunningProcesses").graphics)


class FakeNvml(LegacyFakeNvml):
    """The current nvidia-ml-py, which also has the clock-event spelling of the throttle call."""

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: int) -> int:
        return self._gpu(handle, "nvmlDeviceGetCurrentClocksEventReasons").throttle_mask
