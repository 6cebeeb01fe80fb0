"""GpuProbe over the fake NVML (and over the real pynvml, whatever this machine has)."""

import inspect
import os
from pathlib import Path

import pynvml
import pytest

from agent.gpu import GpuProbe, GpuSnapshot, GpuState, decode_throttle_reasons, host_to_local_pids
from tests import fake_nvml
from tests.fake_nvml import FakeGpu, FakeNvml, FakeProcess, LegacyFakeNvml

# Above the kernel's largest pid_max (2**22): never a local process.
FOREIGN_PID = 2**22 + 7


def two_gpus() -> list[FakeGpu]:
    return [
        FakeGpu(
            uuid="GPU-a",
            utilization=87,
            memory_utilization=40,
            memory_used=30 * 2**30,
            temperature=71,
            power_mw=512_345,
            power_limit_mw=700_000,
            ecc=(3, 1),
            throttle_mask=0x4 | 0x40,
            compute=[FakeProcess(os.getpid(), 2**30), FakeProcess(FOREIGN_PID, None)],
            graphics=[FakeProcess(os.getpid(), 2**30)],
        ),
        FakeGpu(name="NVIDIA A100-SXM4-40GB", uuid="GPU-b", memory_total=40 * 2**30),
    ]


def snapshot_of(nvml: object) -> GpuSnapshot:
    probe = GpuProbe(nvml)
    try:
        return probe.snapshot()
    finally:
        probe.close()


def test_the_fake_has_pynvmls_names_signatures_and_codes() -> None:
    for name, member in vars(FakeNvml).items() | vars(LegacyFakeNvml).items():
        if name.startswith("nvml"):
            real = inspect.signature(getattr(pynvml, name)).parameters
            assert list(inspect.signature(member).parameters)[1:] == list(real), name
        elif name.startswith("NVML_"):
            assert member == getattr(pynvml, name), name
    for name, member in vars(fake_nvml).items():
        if name.startswith("NVMLError_"):
            assert member().value == getattr(pynvml, name)().value, name
            assert str(member()) == str(getattr(pynvml, name)()), name
        elif name.startswith("NVML_ERROR_"):
            assert member == getattr(pynvml, name), name


def test_full_snapshot() -> None:
    snap = snapshot_of(FakeNvml(two_gpus(), process_names={FOREIGN_PID: "host-trainer"}))
    assert (snap.state, snap.detail) == (GpuState.OK, "")
    assert (snap.driver_version, snap.cuda_version) == ("550.54.15", "12.4")
    first, second = snap.gpus
    assert (first.index, first.name, first.uuid) == (0, "NVIDIA H100 80GB HBM3", "GPU-a")
    assert (first.utilization_percent, first.memory_utilization_percent) == (87, 40)
    assert (first.memory_used_bytes, first.memory_total_bytes) == (30 * 2**30, 80 * 2**30)
    assert first.temperature_c == 71
    assert (first.power_draw_w, first.power_limit_w) == (512.345, 700.0)
    assert (first.sm_clock_mhz, first.memory_clock_mhz) == (1980, 2619)
    assert (first.ecc_corrected, first.ecc_uncorrected) == (3, 1)
    assert first.throttle_reasons == ["sw_power_cap", "hw_thermal_slowdown"]
    own_name = Path("/proc/self/comm").read_text().strip()
    # One entry per process although it is both a compute and a graphics client.
    assert [(p.pid, p.container_pid, p.name, p.used_memory_bytes) for p in first.processes] == [
        (os.getpid(), os.getpid(), own_name, 2**30),
        (FOREIGN_PID, 0, "host-trainer", 0),
    ]
    assert first.error == ""
    assert (second.index, second.name, second.memory_total_bytes) == (
        1,
        "NVIDIA A100-SXM4-40GB",
        40 * 2**30,
    )
    assert (second.throttle_reasons, second.processes, second.error) == ([], [], "")


@pytest.mark.parametrize(
    "error", [fake_nvml.NVMLError_DriverNotLoaded, fake_nvml.NVMLError_LibraryNotFound]
)
def test_no_driver_is_said_and_retried(error: type[fake_nvml.NVMLError]) -> None:
    nvml = FakeNvml(two_gpus(), init_error=error)
    probe = GpuProbe(nvml)
    snap = probe.snapshot()
    assert snap.state is GpuState.NO_DRIVER and str(error()) in snap.detail and not snap.gpus
    nvml.init_error = None  # the driver came up later
    assert probe.snapshot().state is GpuState.OK
    probe.close()


def test_no_devices() -> None:
    snap = snapshot_of(FakeNvml([]))
    assert (snap.state, snap.gpus, snap.driver_version) == (GpuState.NO_DEVICES, [], "550.54.15")


def test_a_gpu_lost_part_way_is_marked_and_the_others_still_shown() -> None:
    nvml = FakeNvml([FakeGpu(uuid="GPU-0"), FakeGpu(uuid="GPU-1"), FakeGpu(uuid="GPU-2")])
    nvml.lose(1, at="nvmlDeviceGetPowerUsage")
    snap = snapshot_of(nvml)
    assert snap.state is GpuState.OK
    ok0, lost, ok2 = snap.gpus
    assert (ok0.error, ok0.power_draw_w, ok2.error, ok2.power_draw_w) == ("", 70.0, "", 70.0)
    assert (lost.index, lost.uuid, lost.error) == (1, "GPU-1", "GPU is lost")
    assert lost.temperature_c == 30 and lost.power_draw_w == 0.0  # read before, and not after


def test_a_gpu_lost_before_its_handle() -> None:
    nvml = FakeNvml([FakeGpu(uuid="GPU-0"), FakeGpu(uuid="GPU-1")])
    nvml.lose(0)
    lost, ok = snapshot_of(nvml).gpus
    assert (lost.index, lost.name, lost.error) == (0, "", "GPU is lost")
    assert (ok.uuid, ok.error) == ("GPU-1", "")


def test_unsupported_ecc_is_zero_not_an_error() -> None:
    (gpu,) = snapshot_of(FakeNvml([FakeGpu(ecc=None)])).gpus
    assert (gpu.ecc_corrected, gpu.ecc_uncorrected, gpu.error) == (0, 0, "")


def test_the_older_throttle_call_is_used_where_the_newer_is_missing() -> None:
    (gpu,) = snapshot_of(LegacyFakeNvml([FakeGpu(throttle_mask=0x1 | 0x8 | 0x4000)])).gpus
    assert gpu.throttle_reasons == ["gpu_idle", "hw_slowdown", "other(0x4000)"]


def test_nvml_failing_as_a_whole_is_an_error_state_not_an_exception() -> None:
    nvml = FakeNvml(two_gpus(), init_error=fake_nvml.NVMLError)
    assert snapshot_of(nvml).state is GpuState.ERROR
    broken = FakeNvml(two_gpus())
    setattr(broken, "nvmlDeviceGetCount", lambda: 1 // 0)  # noqa: B010 - replaces a method
    snap = snapshot_of(broken)
    assert snap.state is GpuState.ERROR and snap.detail.startswith("ZeroDivisionError")


def test_nvml_is_initialised_once_and_shut_down_on_close() -> None:
    nvml = FakeNvml(two_gpus())
    probe = GpuProbe(nvml)
    probe.snapshot()
    probe.snapshot()
    assert nvml.init_calls == 1
    probe.close()
    probe.close()
    assert nvml.shutdown_calls == 1


def test_pids_map_from_the_host_namespace_to_the_agents(tmp_path: Path) -> None:
    def process(name: str, nspids: str, comm: str = "") -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "status").write_text(f"Name:\tx\nNSpid:\t{nspids}\nUid:\t0\n")
        if comm:
            (tmp_path / name / "comm").write_text(comm + "\n")

    process("self", "5000\t7")
    process("5000", "5000\t7")
    process("6001", "6001\t12")
    process("12", "6001\t12", comm="trainer")  # the same process, seen from our namespace
    process("6002", "6002")  # the host's own process, outside our namespace
    (tmp_path / "cpuinfo").write_text("")
    assert host_to_local_pids(tmp_path) == {5000: 7, 6001: 12}
    nvml = FakeNvml([FakeGpu(compute=[FakeProcess(6001, 5), FakeProcess(6002, 6)])])
    probe = GpuProbe(nvml, proc_root=tmp_path)
    (gpu,) = probe.snapshot().gpus
    probe.close()
    assert [(p.pid, p.container_pid, p.name) for p in gpu.processes] == [
        (6001, 12, "trainer"),
        (6002, 0, ""),
    ]


def test_decode_throttle_reasons() -> None:
    assert decode_throttle_reasons(0) == []
    assert decode_throttle_reasons(0x100 | 0x80) == [
        "hw_power_brake_slowdown",
        "display_clock_setting",
    ]


def test_the_real_nvml_never_raises() -> None:
    """On a GPU machine this reads the real GPUs; elsewhere it says there is no driver."""
    probe = GpuProbe()
    snap = probe.snapshot()
    probe.close()
    assert snap.state in (GpuState.OK, GpuState.NO_DRIVER, GpuState.NO_DEVICES), snap.detail
    if snap.state is GpuState.OK:
        assert snap.gpus and all(g.name and g.uuid and g.memory_total_bytes for g in snap.gpus)
