"""The run's lifetime against a real agent: warnings, deadline changes, stop, expiry."""

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from agent.errors import InvalidArgument
from agent.lifetime import Lifetime, describe_span
from protos import agent_pb2 as pb
from protos.agent_pb2_grpc import AgentStub
from tests.agent_harness import METADATA, TOKEN, RawShell, agent_process, channel_to, running_agent


def hours_from_now(started: float, seconds: float) -> float:
    """The max duration, counted from `started`, that ends `seconds` from now."""
    return (time.time() - started + seconds) / 3600


async def next_notice(shell: RawShell) -> str:
    frame = await asyncio.wait_for(shell.until("notice"), 30)
    return frame.notice.text


def test_attached_sessions_hear_the_change_both_warnings_and_the_stop() -> None:
    async def main() -> None:
        agent = running_agent(deadline_warnings=(2.0, 1.0))
        async with agent as server, channel_to(server) as channel:
            shell = RawShell(channel)
            await shell.open(session_id="w1", command="sleep 60", pty=True)
            stub = AgentStub(channel)
            info = await stub.Info(pb.InfoRequest(), metadata=METADATA)
            assert info.deadline_unix_ms == 0
            hours = hours_from_now(server.started, 3.0)
            reply = await stub.SetDeadline(
                pb.SetDeadlineRequest(max_duration_hours=hours), metadata=METADATA
            )
            assert reply.deadline_unix_ms == int((server.started + hours * 3600) * 1000)
            info = await stub.Info(pb.InfoRequest(), metadata=METADATA)
            assert info.deadline_unix_ms == reply.deadline_unix_ms

            changed = await next_notice(shell)
            assert "deadline changed" in changed and "UTC" in changed
            first, second = await next_notice(shell), await next_notice(shell)
            assert "ends in" in first and "tether update" in first
            assert "ends in" in second
            stopping = await next_notice(shell)
            assert "stopping" in stopping and "has passed" in stopping
            await asyncio.wait_for(server.stop_requested.wait(), 30)

    asyncio.run(main())


@pytest.mark.parametrize("hours", [0.0, -1.0, float("nan"), float("inf")])
def test_a_max_duration_that_is_not_positive_and_finite_is_refused(hours: float) -> None:
    async def main() -> None:
        async with running_agent() as server, channel_to(server) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await AgentStub(channel).SetDeadline(
                    pb.SetDeadlineRequest(max_duration_hours=hours), metadata=METADATA
                )
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "more than 0 hours" in (info.value.details() or "")
            assert server.lifetime.deadline() is None

    asyncio.run(main())


def test_a_max_duration_below_the_time_already_up_is_refused_saying_so() -> None:
    async def main() -> None:
        async with running_agent(max_duration_hours=5.0) as server, channel_to(server) as channel:
            before = server.lifetime.deadline()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await AgentStub(channel).SetDeadline(
                    pb.SetDeadlineRequest(max_duration_hours=1e-9), metadata=METADATA
                )
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "the run has been up for" in (info.value.details() or "")
            assert server.lifetime.deadline() == before

    asyncio.run(main())


def test_stop_replies_then_tells_sessions_and_asks_for_the_graceful_stop() -> None:
    async def main() -> None:
        async with running_agent() as server, channel_to(server) as channel:
            shell = RawShell(channel)
            await shell.open(session_id="s1", command="sleep 60", pty=True)
            await AgentStub(channel).Stop(
                pb.StopRequest(reason="done\x1b[2J for today"), metadata=METADATA
            )
            notice = await next_notice(shell)
            assert "stop requested: done[2J for today" in notice
            await asyncio.wait_for(server.stop_requested.wait(), 30)

    asyncio.run(main())


def test_the_deadline_ends_a_real_agent_process_cleanly(tmp_path: Path) -> None:
    with agent_process(tmp_path, "--max-duration", str(1.5 / 3600)) as (proc, _port):
        assert proc.wait(60) == 0
        assert proc.stdout is not None
        assert "stopping" in proc.stdout.read()


def test_serve_refuses_a_max_duration_of_zero(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    argv = [sys.executable, "-m", "agent", "serve", "--listen", "127.0.0.1:0"]
    result = subprocess.run(
        [*argv, "--insecure-loopback", "--token-file", str(token), "--max-duration", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "more than 0 hours" in result.stderr


def test_lifetime_refuses_a_bad_duration_at_construction() -> None:
    with pytest.raises(InvalidArgument):
        Lifetime(time.time(), 0.0, on_notice=print, on_stop=lambda: None)


@pytest.mark.parametrize(
    ("seconds", "text"), [(40, "40 s"), (540, "9 min"), (545, "9 min 05 s"), (7500, "2 h 05 min")]
)
def test_spans_read_the_way_people_say_them(seconds: float, text: str) -> None:
    assert describe_span(seconds) == text


def test_a_sleeper_agent_refuses_to_start_without_a_duration(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    token.chmod(0o600)
    done = subprocess.run(
        [sys.executable, "-m", "agent", "serve", "--listen", "127.0.0.1:0",
         "--token-file", str(token), "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=60, env={**os.environ, "TETHER_SLEEPER": "1"},
    )  # fmt: skip
    assert done.returncode == 2
    assert "pass --max-duration HOURS" in done.stderr
