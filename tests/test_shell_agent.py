"""The Shell wire against a real agent: sessions, resume, gaps, limits, errors."""

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.service.registry import method_names
from protos import agent_pb2 as pb
from tests.agent_harness import METADATA, RawShell, agent_process, channel_to, running_agent


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer wrong"),)])
def test_every_method_refuses_a_missing_or_wrong_token(
    metadata: tuple[tuple[str, str], ...],
) -> None:
    async def main() -> None:
        async with running_agent() as server, channel_to(server) as channel:
            names = method_names()
            assert "Shell" in names and "Info" in names
            for name in [*names, "../grpc.health.v1.Health/Check"]:
                path = f"/tether.v1.Agent/{name}".replace("tether.v1.Agent/../", "")
                call: Any = channel.unary_unary(path)  # type: ignore[call-arg]
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(b"", metadata=metadata, timeout=5)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
            sessions = server.sessions.all()
            assert sessions == []

    run(main())


def test_exec_keeps_stdout_and_stderr_apart_and_reports_the_code() -> None:
    async def main() -> None:
        async with running_agent() as server, channel_to(server) as channel:
            shell = RawShell(channel)
            await shell.open(session_id="e1", command="cat; printf 'oops\\377' >&2; exit 7")
            payload = bytes(range(256)) * 64
            await shell.send_input(payload)
            await shell.send(pb.ShellClientFrame(eof=pb.StdinEof()))
            exit_ = await shell.finish()
            assert exit_.code == 7
            assert bytes(shell.received.stdout) == payload
            assert bytes(shell.received.stderr) == b"oops\xff"

    run(main())


def test_a_missing_command_exits_127_with_the_shells_message() -> None:
    async def main() -> None:
        async with running_agent() as server, channel_to(server) as channel:
            shell = RawShell(channel)
            await shell.open(session_id="m1", command="no-such-command-xyz")
            exit_ = await shell.finish()
            assert exit_.code == 127
            assert b"no-such-command-xyz" in shell.received.stderr
            assert b"not found" in shell.received.stderr

    run(main())


def test_a_signal_ends_the_process_and_is_reported() -> None:
    async def main() -> None:
        async with running_agent() as server, channel_to(server) as channel:
            shell = RawShell(channel)
            await shell.open(session_id="s1", command="echo ready; sleep 30")
            await shell.read_until_output(b"ready")
            await shell.send(pb.ShellClientFrame(signal=pb.Signal(number=signal.SIGTERM)))
            exit_ = await shell.finish()
            assert exit_.signal == signal.SIGTERM
            assert "SIGTERM" in exit_.message

    run(main())


def test_resume_continues_output_exactly_and_applies_input_once() -> None:
    async def main() -> None:
        async with running_agent() as server, channel_to(server) as channel:
            first = RawShell(channel)
            opened = await first.open(session_id="r1", command="cat")
            assert opened.created
            await first.send_input(b"one\n")
            await first.read_until_output(b"one\n")
            await first.until("ack")  # the agent has applied "one\n"
            first.call.cancel()

            second = RawShell(channel)
            opened = await second.open(session_id="r1", resume=True, output_offset=1)
            assert not opened.created
            assert opened.input_offset == 4
            await second.send_input(b"two\n")
            await second.read_until_output(b"ne\ntwo\n")
            assert bytes(second.received.stdout) == b"ne\ntwo\n"
            await second.send(pb.ShellClientFrame(eof=pb.StdinEof()))
            assert (await second.finish()).code == 0

    run(main())


def test_a_retried_open_attaches_instead_of_starting_twice() -> None:
    async def main() -> None:
        async with running_agent() as server, channel_to(server) as channel:
            first = RawShell(channel)
            a = await first.open(session_id="same", command="sleep 30")
            first.call.cancel()
            second = RawShell(channel)
            b = await second.open(session_id="same", command="sleep 30")
            assert a.created and not b.created and a.pid == b.pid
            assert len(server.sessions.all()) == 1

    run(main())


def test_output_beyond_the_buffer_while_detached_is_an_explicit_gap() -> None:
    async def main() -> None:
        async with running_agent(output_buffer=64 * 1024) as server, channel_to(server) as channel:
            first = RawShell(channel)
            await first.open(session_id="g1", command="read x; head -c 300000 /dev/zero; echo END")
            first.call.cancel()
            await asyncio.sleep(0.1)
            session = server.sessions.get("g1")
            session.write_input(b"go\n")
            while session.running:
                await asyncio.sleep(0.05)
            second = RawShell(channel)
            await second.open(session_id="g1", resume=True, output_offset=0)
            gap = (await second.until("gap")).gap
            exit_ = await second.finish()
            assert gap.offset == 0
            assert gap.size + len(second.received.stdout) == exit_.output_end
            assert gap.size >= 300000 + 4 - 64 * 1024
            assert bytes(second.received.stdout).endswith(b"END\n")

    run(main())


def test_unknown_session_resume_is_not_found() -> None:
    async def main() -> None:
        async with running_agent() as server, channel_to(server) as channel:
            shell = RawShell(channel)
            with pytest.raises(EOFError, match="NOT_FOUND"):
                await shell.open(session_id="ghost", resume=True)

    run(main())


def test_protocol_mismatch_names_both_versions() -> None:
    async def main() -> None:
        async with running_agent() as server, channel_to(server) as channel:
            shell = RawShell(channel)
            with pytest.raises(EOFError, match="FAILED_PRECONDITION"):
                await shell.open(session_id="p1", protocol_version=99)
            details = await shell.call.details()
            assert "protocol 99" in details and "speaks 1" in details

    run(main())


def test_an_oversized_frame_is_refused_and_the_session_survives() -> None:
    async def main() -> None:
        async with running_agent() as server, channel_to(server) as channel:
            shell = RawShell(channel)
            await shell.open(session_id="big", command="cat")
            await shell.send_input(b"x" * (5 << 20))
            with pytest.raises(EOFError, match="RESOURCE_EXHAUSTED"):
                await shell.until("exit")
            again = RawShell(channel)
            await again.open(session_id="big", resume=True)
            await again.send_input(b"still here\n")
            await again.read_until_output(b"still here\n")

    run(main())


def test_an_absurd_window_size_is_invalid() -> None:
    async def main() -> None:
        async with running_agent() as server, channel_to(server) as channel:
            shell = RawShell(channel)
            with pytest.raises(EOFError, match="INVALID_ARGUMENT"):
                await shell.open(session_id="w1", pty=True, size=pb.WindowSize(cols=100000, rows=5))
            ok = RawShell(channel)
            await ok.open(session_id="w2", pty=True, command="sleep 30")
            await ok.send(pb.ShellClientFrame(resize=pb.WindowSize(cols=0, rows=70000)))
            with pytest.raises(EOFError, match="INVALID_ARGUMENT"):
                await ok.until("exit")

    run(main())


def test_pty_session_sees_term_size_env_and_cwd(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_agent() as server, channel_to(server) as channel:
            shell = RawShell(channel)
            await shell.open(
                session_id="t1",
                pty=True,
                term="screen-256color",
                size=pb.WindowSize(cols=91, rows=33),
                env={"GREETING": "hello"},
                cwd=str(tmp_path),
                command='echo "$TERM $GREETING $(pwd) $(stty size)"',
            )
            assert (await shell.finish()).code == 0
            line = bytes(shell.received.stdout).decode()
            assert f"screen-256color hello {tmp_path} 33 91" in line

    run(main())


def test_idle_detached_sessions_are_reaped() -> None:
    async def main() -> None:
        async with running_agent(idle_timeout=0.3) as server, channel_to(server) as channel:
            shell = RawShell(channel)
            opened = await shell.open(session_id="idle", command="sleep 60")
            shell.call.cancel()
            for _ in range(100):
                if not server.sessions.all():
                    break
                await asyncio.sleep(0.05)
            assert server.sessions.all() == []
            with pytest.raises(ProcessLookupError):
                os.kill(opened.pid, 0)

    run(main())


def test_list_and_kill_sessions() -> None:
    async def main() -> None:
        async with running_agent() as server, channel_to(server) as channel:
            shell = RawShell(channel)
            opened = await shell.open(session_id="k1", command="sleep 60")
            list_call = channel.unary_unary(
                "/tether.v1.Agent/ListSessions",
                request_serializer=pb.ListSessionsRequest.SerializeToString,
                response_deserializer=pb.ListSessionsReply.FromString,
            )
            reply = await list_call(pb.ListSessionsRequest(), metadata=METADATA)
            assert [s.session_id for s in reply.sessions] == ["k1"]
            assert reply.sessions[0].attached and reply.sessions[0].running
            kill = channel.unary_unary(
                "/tether.v1.Agent/KillSession",
                request_serializer=pb.KillSessionRequest.SerializeToString,
                response_deserializer=pb.KillSessionReply.FromString,
            )
            await kill(pb.KillSessionRequest(session_id="k1"), metadata=METADATA)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await kill(pb.KillSessionRequest(session_id="k1"), metadata=METADATA)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(ProcessLookupError):
                os.kill(opened.pid, 0)

    run(main())


def test_sigterm_stops_the_agent_gracefully_and_leaves_no_child(tmp_path: Path) -> None:
    with agent_process(tmp_path) as (proc, port):

        async def main() -> tuple[int, bytes]:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                shell = RawShell(channel)
                opened = await shell.open(session_id="z", pty=True, command="echo up; sleep 600")
                await shell.read_until_output(b"up")
                proc.send_signal(signal.SIGTERM)
                notice = await shell.until("notice")
                return opened.pid, notice.notice.text.encode()

        pid, text = asyncio.run(main())
        assert b"stopping" in text
        assert proc.wait(15) == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    leftover = subprocess.run(["pgrep", "-f", "sleep 600"], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""


def test_a_port_in_use_is_one_clear_startup_error(tmp_path: Path) -> None:
    (tmp_path / "first").mkdir()
    with agent_process(tmp_path / "first") as (_, port):
        token = tmp_path / "token"
        token.write_text("t")
        token.chmod(0o600)
        done = subprocess.run(
            [sys.executable, "-m", "agent", "serve", "--listen", f"127.0.0.1:{port}",
             "--insecure-loopback", "--token-file", str(token)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("content", "mode", "problem"),
    [
        (None, 0o600, "No such file or directory"),
        ("", 0o600, "is empty"),
        ("secret", 0o644, "readable by group or others (mode 0644); run: chmod 600"),
    ],
)
def test_a_bad_token_file_is_a_startup_error_naming_the_problem(
    tmp_path: Path, content: str | None, mode: int, problem: str
) -> None:
    token = tmp_path / "token"
    if content is not None:
        token.write_text(content)
        token.chmod(mode)
    done = subprocess.run(
        [sys.executable, "-m", "agent", "serve", "--listen", "127.0.0.1:0",
         "--insecure-loopback", "--token-file", str(token)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"tether-agent: token file {token}" in done.stderr
    assert problem in done.stderr
    assert "listening" not in done.stdout
