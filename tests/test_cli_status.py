"""`tether status` and `tether describe` against real agents with a fake NVML."""

import asyncio
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

from tests.cli_harness import add_run, agent_thread, laptop, tether
from tests.cli_procs import TETHER
from tests.fake_nvml import FakeGpu, FakeNvml, FakeProcess
from tests.test_connect_terminal import tmux_pane

__all__ = ["laptop"]  # the fixture, used by name

XDG_KEYS = ("XDG_CONFIG_HOME", "XDG_STATE_HOME")
# Above the kernel's largest pid_max (2**22): a process of another pid namespace.
FOREIGN_PID = 2**22 + 7


def two_gpus(second_lost_at: str | None = None) -> FakeNvml:
    """Two GPUs, the first busy; the second may fall off the bus part-way."""
    nvml = FakeNvml(
        [
            FakeGpu(
                uuid="GPU-a",
                utilization=87,
                memory_used=30 * 2**30,
                temperature=71,
                power_mw=512_000,
                ecc=(3, 1),
                throttle_mask=0x4,
                compute=[FakeProcess(FOREIGN_PID, 2**30)],
            ),
            FakeGpu(name="NVIDIA A100-SXM4-40GB", uuid="GPU-b", memory_total=40 * 2**30),
        ],
        process_names={FOREIGN_PID: "python-train"},
    )
    if second_lost_at is not None:
        nvml.lose(1, at=second_lost_at)
    return nvml


def test_status_json_marks_the_gpu_that_fell_off_and_keeps_the_other(laptop: Path) -> None:
    with agent_thread(two_gpus("nvmlDeviceGetPowerUsage")) as agent:
        add_run("train", laptop, agent.address)
        result = tether("status", "train", "--json", "--top", "3")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["rank"] == 0 and report["hostname"]
    assert report["gpu"]["state"] == "GPU_STATE_OK"
    first, second = report["gpu"]["gpus"]
    assert first["uuid"] == "GPU-a" and first["error"] == ""
    assert first["utilization_percent"] == 87
    assert first["memory_used_bytes"] == 30 * 2**30  # a number, not a quoted uint64
    assert first["throttle_reasons"] == ["sw_power_cap"]
    assert first["processes"][0]["name"] == "python-train"
    assert second["uuid"] == "GPU-b" and "GPU is lost" in second["error"]
    assert report["system"]["cpu_count"] >= 1
    assert 0 < len(report["system"]["top_processes"]) <= 3


def test_status_table_reads_at_a_glance(laptop: Path) -> None:
    with agent_thread(two_gpus("nvmlDeviceGetTemperature")) as agent:
        add_run("train", laptop, agent.address)
        result = tether("status", "train")
    assert result.code == 0, result.err
    out = result.out
    assert "rank 0" in out
    assert "NVIDIA H100 80GB HBM3" in out and "87%" in out and "71°C" in out
    assert "512/700 W" in out and "3/1" in out and "sw_power_cap" in out
    assert "python-train" in out
    assert "FAILED: GPU is lost" in out
    assert "CPU" in out and "load" in out and "memory" in out and "disk" in out


def test_status_says_plainly_when_there_is_no_driver(laptop: Path) -> None:
    from tests.fake_nvml import NVMLError_LibraryNotFound

    with agent_thread(FakeNvml(init_error=NVMLError_LibraryNotFound)) as agent:
        add_run("train", laptop, agent.address)
        table = tether("status", "train")
        as_json = tether("status", "train", "--json")
    assert table.code == 0, table.err
    assert "GPU: no NVIDIA driver or NVML library" in table.out
    assert json.loads(as_json.out)["gpu"]["state"] == "GPU_STATE_NO_DRIVER"


def test_all_ranks_shows_every_node_and_a_total(laptop: Path) -> None:
    with (
        agent_thread(two_gpus(), rank=0, world_size=2) as first,
        agent_thread(two_gpus("nvmlDeviceGetName"), rank=1, world_size=2) as second,
    ):
        add_run("multi", laptop, first.address, second.address)
        table = tether("status", "multi", "--all-ranks")
        as_json = tether("status", "multi", "--all-ranks", "--json")
        one = tether("status", "multi", "--rank", "1", "--json")
        described = tether("describe", "multi", "--json")
    assert table.code == 0, table.err
    assert "rank 0" in table.out and "rank 1" in table.out
    assert "total: 2 nodes · 4 GPUs (1 failed)" in table.out
    report = json.loads(as_json.out)
    assert [node["rank"] for node in report["nodes"]] == [0, 1]
    assert report["total"]["gpus"] == 4 and report["total"]["failed_gpus"] == 1
    assert report["unreachable"] == {}
    assert json.loads(one.out)["rank"] == 1
    nodes = json.loads(described.out)["nodes"]
    assert [nodes[r]["info"]["rank"] for r in ("0", "1")] == [0, 1]
    assert nodes["1"]["info"]["world_size"] == 2


def test_all_ranks_still_shows_the_nodes_that_answer(laptop: Path) -> None:
    with agent_thread(two_gpus(), rank=0, world_size=2) as first:
        with agent_thread(two_gpus(), rank=1, world_size=2) as gone:
            gone_address = gone.address
        add_run("multi", laptop, first.address, gone_address)
        result = tether("status", "multi", "--all-ranks")
    assert result.code == 255
    assert "rank 0" in result.out and "total: 1 nodes, 1 unreachable" in result.out
    assert "rank 1: cannot reach run multi rank 1" in result.out


def test_a_rank_out_of_range_is_a_clear_error(laptop: Path) -> None:
    add_run("train", laptop, "127.0.0.1:9")
    for command in (["status"], ["describe"], ["tmux"], ["stop", "-y"]):
        if command == ["tmux"]:
            args = ["tmux", "train", "ls", "--rank", "5"]
        else:
            args = [command[0], "train", *command[1:], "--rank", "5"]
        result = tether(*args)
        assert result.code == 1, (args, result.out)
        assert "run train has only rank 0; rank 5 is out of range" in result.err, args


def test_rank_and_all_ranks_exclude_each_other(laptop: Path) -> None:
    add_run("train", laptop, "127.0.0.1:9")
    result = tether("status", "train", "--rank", "0", "--all-ranks")
    assert result.code == 2
    assert "not both" in result.err


def test_describe_names_the_run_its_nodes_and_their_gpus(laptop: Path) -> None:
    with agent_thread(two_gpus("nvmlDeviceGetUUID"), run_name="train") as agent:
        add_run("train", laptop, agent.address)
        table = tether("describe", "train")
        as_json = tether("describe", "train", "--json")
    assert table.code == 0, table.err
    assert "run train: 1 rank" in table.out
    assert "2× NVIDIA A100-SXM4-40GB, NVIDIA H100 80GB HBM3, 1 failed" in table.out
    assert "none" in table.out  # no deadline
    node = json.loads(as_json.out)["nodes"]["0"]
    assert node["info"]["run_name"] == "train" and node["info"]["agent_version"]
    assert len(node["gpu"]["gpus"]) == 2


def test_watch_json_prints_a_report_per_interval(laptop: Path) -> None:
    with agent_thread(two_gpus()) as agent:
        add_run("train", laptop, agent.address)
        argv = [TETHER, "status", "train", "--watch", "--json", "--interval", "0.2", "--top", "0"]
        with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as proc:
            try:
                assert proc.stdout is not None
                first, second = (json.loads(proc.stdout.readline()) for _ in range(2))
            finally:
                proc.terminate()
    assert first["gpu"]["gpus"][0]["uuid"] == "GPU-a"
    assert second["time_unix_ms"] >= first["time_unix_ms"]


def test_watch_refreshes_in_place_in_a_real_terminal(laptop: Path) -> None:
    async def main(address: str) -> None:
        add_run("train", laptop, address)
        env = " ".join(f"{key}={shlex.quote(os.environ[key])}" for key in XDG_KEYS)
        command = shlex.join([TETHER, "status", "train", "--watch", "--interval", "0.3"])
        with tmux_pane() as pane:
            # The pane's own width, not the wide COLUMNS the other tests print with.
            pane.start(f"env -u COLUMNS {env} {command} --top 3; echo EXIT=$?; sleep 60")
            header = r"rank 0 · \S+ · (\d\d:\d\d:\d\d)"
            first = re.findall(header, await pane.wait_for(header))[0]
            # The next report, with a later time, in the same place.
            screen = await pane.wait_for(rf"rank 0 · \S+ · (?!{first})\d\d:\d\d:\d\d")
            assert len(re.findall(r"rank 0 · ", screen)) == 1, screen
            assert "GPU-a" not in screen and "NVIDIA H100" in screen
            pane.press("C-c")
            await pane.wait_for(r"^EXIT=130$")

    with agent_thread(two_gpus()) as agent:
        asyncio.run(main(agent.address))


def test_far_side_strings_cannot_style_or_move_the_terminal(laptop: Path) -> None:
    nvml = FakeNvml(
        [FakeGpu(name="\x1b[2J[bold]GPU[/bold]", compute=[FakeProcess(FOREIGN_PID, 1)])],
        process_names={FOREIGN_PID: "\x1b]0;title\x07train"},
    )
    with agent_thread(nvml) as agent:
        add_run("train", laptop, agent.address)
        table = tether("status", "train")
        summary = tether("describe", "train")
    assert table.code == 0, table.err
    assert "\x1b" not in table.out and "\x07" not in table.out
    assert "^[[2J[bold]GPU[/bold]" in table.out and "^[]0;title^Gtrain" in table.out
    assert "^[[2J[bold]GPU[/bold]" in summary.out
