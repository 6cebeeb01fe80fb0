"""A StatusReply as something a person reads at a glance, or as plain data.

Rendering is rich renderables built from Text cells, never markup: every
string from the far side (GPU and process names, hosts, errors) is escaped
with escape_text and cannot style or move the terminal. This module imports
rich at import time, so commands import it lazily.
"""

import time
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from connector.terminal import escape_text
from protos import agent_pb2 as pb

GiB = 1 << 30

_GPU_STATE_TEXT = {
    pb.GPU_STATE_NO_DRIVER: "no NVIDIA driver or NVML library in this container",
    pb.GPU_STATE_NO_DEVICES: "NVML works but sees no GPU",
    pb.GPU_STATE_ERROR: "NVML failed",
}


def as_plain(message: Message) -> dict[str, Any]:
    """Every field, defaults included, with 64-bit integers as numbers and
    enums by name: what a script wants from --json (the proto3 JSON mapping
    would quote every uint64)."""
    plain: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.is_repeated:
            plain[field.name] = [_plain_value(field, item) for item in value]
        else:
            plain[field.name] = _plain_value(field, value)
    return plain


def _plain_value(field: Any, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return as_plain(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values_by_number[value].name
    return value


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _far(text: str) -> Text:
    return Text(escape_text(text))


def _gpu_row(gpu: pb.Gpu) -> list[Text]:
    if gpu.error:
        return [
            Text(f"{gpu.index}!", style="bold red"),
            Text(escape_text(gpu.name or "?"), style="bold red"),
        ]
    used, total = gpu.memory_used_bytes / GiB, gpu.memory_total_bytes / GiB
    return [
        Text(str(gpu.index)),
        _far(gpu.name),
        Text(f"{gpu.utilization_percent}%"),
        Text(f"{used:.1f}/{total:.1f} GiB"),
        Text(f"{gpu.temperature_c}°C"),
        Text(f"{gpu.power_draw_w:.0f}/{gpu.power_limit_w:.0f} W"),
        Text(f"{gpu.sm_clock_mhz}/{gpu.memory_clock_mhz}"),
        Text(
            f"{gpu.ecc_corrected}/{gpu.ecc_uncorrected}",
            style="bold red" if gpu.ecc_uncorrected else "",
        ),
        _far(", ".join(gpu.throttle_reasons) or "-"),
    ]


def _gpu_processes(gpus: Sequence[pb.Gpu]) -> Table:
    table = Table("GPU", "PID", "PROCESS", "GPU MEMORY", box=None)
    for gpu in gpus:
        for p in gpu.processes:
            pid = f"{p.container_pid}" if p.container_pid else f"{p.pid} (host)"
            table.add_row(
                str(gpu.index), pid, _far(p.name or "?"), Text(_size(p.used_memory_bytes))
            )
    return table


def gpu_view(report: pb.GpuReport) -> RenderableType:
    """A row per GPU, a failed GPU marked, then the processes on the GPUs; or
    one clear line when there is no GPU to show."""
    if report.state != pb.GPU_STATE_OK:
        what = _GPU_STATE_TEXT.get(report.state, "GPU state unknown")
        detail = f": {escape_text(report.detail)}" if report.detail else ""
        return Text(f"GPU: {what}{detail}", style="yellow")
    columns = ["GPU", "NAME", "UTIL", "MEMORY", "TEMP", "POWER", "CLOCKS MHZ", "ECC C/U"]
    # Only the throttle reasons, last, wrap: the numbers stay whole on one line.
    table = Table(*columns, "THROTTLE", box=None, pad_edge=False)
    for column in table.columns[:-1]:
        column.no_wrap = True
    table.columns[-1].overflow = "fold"
    for gpu in report.gpus:
        table.add_row(*_gpu_row(gpu))
    versions = f"driver {report.driver_version}, CUDA {report.cuda_version}"
    parts: list[RenderableType] = [Text(escape_text(versions), style="dim"), table]
    parts.extend(
        Text(f"GPU {gpu.index} FAILED: {escape_text(gpu.error)}", style="bold red")
        for gpu in report.gpus
        if gpu.error
    )
    if any(gpu.processes for gpu in report.gpus):
        parts.append(_gpu_processes(report.gpus))
    return Group(*parts)


def system_view(system: pb.SystemReport) -> RenderableType:
    busiest = max(system.cpu_percent_per_core, default=0.0)
    lines = [
        f"CPU {system.cpu_percent:.0f}% of {system.cpu_count} cores (busiest {busiest:.0f}%)"
        f" · load {system.load1:.2f} {system.load5:.2f} {system.load15:.2f}",
        f"memory {_size(system.memory_used_bytes)} / {_size(system.memory_total_bytes)}"
        f" ({_size(system.memory_available_bytes)} available)"
        f" · disk {escape_text(system.disk_path)} {_size(system.disk_used_bytes)}"
        f" / {_size(system.disk_total_bytes)}"
        f" · net ↓{_size(system.net_rx_bytes_per_s)}/s ↑{_size(system.net_tx_bytes_per_s)}/s",
    ]
    parts: list[RenderableType] = [Text(line) for line in lines]
    if system.top_processes:
        table = Table("PID", "USER", "CPU", "RSS", "COMMAND", box=None)
        for p in system.top_processes:
            command = escape_text(p.cmdline or p.name)
            table.add_row(
                str(p.pid),
                _far(p.user),
                f"{p.cpu_percent:.0f}%",
                _size(p.rss_bytes),
                Text(command, overflow="ellipsis", no_wrap=True),
            )
        parts.append(table)
    return Group(*parts)


def node_view(reply: pb.StatusReply) -> RenderableType:
    """One node; the time of the report shows that a watch is live."""
    at = time.strftime("%H:%M:%S", time.localtime(reply.time_unix_ms / 1000))
    title = Text(f"rank {reply.rank} · {escape_text(reply.hostname)} · {at}", style="bold")
    return Group(title, gpu_view(reply.gpu), system_view(reply.system), Text(""))


def failed_node_view(rank: int, error: str) -> RenderableType:
    return Text(f"rank {rank}: {escape_text(error)}\n", style="bold red")


def totals(replies: Sequence[pb.StatusReply]) -> dict[str, Any]:
    """The run as a whole: what --all-ranks adds under the nodes."""
    gpus = [gpu for reply in replies for gpu in reply.gpu.gpus]
    working = [gpu for gpu in gpus if not gpu.error]
    return {
        "nodes": len(replies),
        "gpus": len(gpus),
        "failed_gpus": len(gpus) - len(working),
        "gpu_utilization_percent": (
            sum(g.utilization_percent for g in working) / len(working) if working else 0.0
        ),
        "gpu_memory_used_bytes": sum(g.memory_used_bytes for g in working),
        "gpu_memory_total_bytes": sum(g.memory_total_bytes for g in working),
        "power_draw_w": sum(g.power_draw_w for g in working),
        "cpu_percent": (
            sum(r.system.cpu_percent for r in replies) / len(replies) if replies else 0.0
        ),
        "memory_used_bytes": sum(r.system.memory_used_bytes for r in replies),
        "memory_total_bytes": sum(r.system.memory_total_bytes for r in replies),
    }


def total_view(total: Mapping[str, Any], unreachable: int) -> RenderableType:
    failed = f" ({total['failed_gpus']} failed)" if total["failed_gpus"] else ""
    missing = f", {unreachable} unreachable" if unreachable else ""
    return Text(
        f"total: {total['nodes']} nodes{missing} · {total['gpus']} GPUs{failed}"
        f" · GPU util {total['gpu_utilization_percent']:.0f}%"
        f" · GPU memory {_size(total['gpu_memory_used_bytes'])}"
        f" / {_size(total['gpu_memory_total_bytes'])}"
        f" · power {total['power_draw_w']:.0f} W"
        f" · CPU {total['cpu_percent']:.0f}%"
        f" · memory {_size(total['memory_used_bytes'])} / {_size(total['memory_total_bytes'])}",
        style="bold",
    )


def gpu_summary(report: pb.GpuReport) -> str:
    """One short phrase for `tether describe`."""
    if report.state != pb.GPU_STATE_OK:
        return _GPU_STATE_TEXT.get(report.state, "unknown")
    names = sorted({escape_text(gpu.name) for gpu in report.gpus if gpu.name})
    failed = sum(1 for gpu in report.gpus if gpu.error)
    text = f"{len(report.gpus)}× {', '.join(names) or 'GPU'}"
    return f"{text}, {failed} failed" if failed else text
