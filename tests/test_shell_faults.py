"""`tether exec` against a real agent through a TCP fault proxy: cuts lose and
repeat nothing, and bad input ends with a clear error instead of a hang."""

import asyncio
import hashlib
import os
import pty
import signal
from collections.abc import Callable
from pathlib import Path

from protos.version import PROTOCOL_VERSION
from tests.cli_procs import TETHER, Laptop, agent_serving, finish, read_until
from tests.faultproxy import FaultProxy, ProxyStats

MiB = 1 << 20
SEQ_COUNT = 2_000_000
SEQ_OUTPUT = b"".join(b"%d\n" % n for n in range(1, SEQ_COUNT + 1))


async def cut_when(proxy: FaultProxy, *conditions: Callable[[ProxyStats], bool]) -> None:
    """Cuts every connection each time the next condition on the traffic holds."""
    for condition in conditions:
        await proxy.wait_until(condition)
        proxy.cut()


def down_at(nbytes: int) -> Callable[[ProxyStats], bool]:
    return lambda stats: stats.bytes_down >= nbytes


def up_at(nbytes: int) -> Callable[[ProxyStats], bool]:
    return lambda stats: stats.bytes_up >= nbytes


def test_output_across_cuts_is_exactly_seq(tmp_path: Path) -> None:
    """Three cuts while ~15 MB of `seq` output flows: no gap, no duplicate.

    The agent keeps 64 MiB for resumes here instead of the default 8: while
    the client is away (up to a second of backoff) `seq` runs on and finishes,
    and the agent rightly drops what exceeds its buffer while nobody is
    attached, reporting a gap. This test is about the stream across cuts, so
    the buffer is sized to hold the whole outage.
    """

    async def main() -> None:
        laptop = Laptop(tmp_path / "laptop")
        with agent_serving(tmp_path / "agent", "--output-buffer-mib", "64", tls=False) as agent:
            async with FaultProxy("127.0.0.1", agent.port) as proxy:
                laptop.add_run("run", proxy.port, tls=False)
                proc = await laptop.start("exec", "run", "--", "seq", "1", str(SEQ_COUNT))
                cutter = asyncio.ensure_future(
                    cut_when(proxy, down_at(2 * MiB), down_at(6 * MiB), down_at(10 * MiB))
                )
                done = await finish(proc)
                assert cutter.done(), done.stderr.decode()
                assert proxy.stats.cuts >= 3
        assert done.code == 0, done.stderr.decode()
        assert done.stdout == SEQ_OUTPUT
        assert b"resumed, nothing lost" in done.stderr

    asyncio.run(main())


def read_all(fd: int) -> bytes:
    """Everything the far end of a pty writes until it closes."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except OSError:  # EIO: every slave fd is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_connect_shows_exactly_seq_on_its_terminal_across_cuts(tmp_path: Path) -> None:
    """The same through `tether connect`: a remote PTY, shown on a local one.

    stderr (the status line) goes to a pipe, so the local terminal holds
    only the remote output, in which the remote PTY turned each LF into
    CR LF. The buffer is 64 MiB for the reason given above.
    """

    async def main() -> None:
        laptop = Laptop(tmp_path / "laptop")
        with agent_serving(tmp_path / "agent", "--output-buffer-mib", "64", tls=False) as agent:
            async with FaultProxy("127.0.0.1", agent.port) as proxy:
                laptop.add_run("run", proxy.port, tls=False)
                master, slave = pty.openpty()
                proc = await asyncio.create_subprocess_exec(
                    *[TETHER, "connect", "run", "--command", f"seq 1 {SEQ_COUNT}"],
                    stdin=slave,
                    stdout=slave,
                    stderr=asyncio.subprocess.PIPE,
                    env=laptop.env,
                )
                os.close(slave)
                shown = asyncio.ensure_future(asyncio.to_thread(read_all, master))
                cutter = asyncio.ensure_future(
                    cut_when(proxy, down_at(2 * MiB), down_at(6 * MiB), down_at(10 * MiB))
                )
                try:
                    done = await finish(proc)
                    screen = await shown
                finally:
                    os.close(master)
                assert cutter.done(), done.stderr.decode()
        assert done.code == 0, done.stderr.decode()
        assert screen == SEQ_OUTPUT.replace(b"\n", b"\r\n")
        assert b"resumed, nothing lost" in done.stderr

    asyncio.run(main())


def test_32_mib_round_trip_through_cat_across_cuts(tmp_path: Path) -> None:
    """Input and output both cross the cuts; each byte arrives once, in order."""
    payload = os.urandom(32 * MiB)

    async def main() -> None:
        laptop = Laptop(tmp_path / "laptop")
        with agent_serving(tmp_path / "agent", tls=False) as agent:
            async with FaultProxy("127.0.0.1", agent.port) as proxy:
                laptop.add_run("run", proxy.port, tls=False)
                proc = await laptop.start("exec", "run", "--", "cat")
                cutter = asyncio.ensure_future(
                    cut_when(proxy, up_at(6 * MiB), down_at(16 * MiB), up_at(28 * MiB))
                )
                done = await finish(proc, payload)
                assert cutter.done(), "the transfer ended before every cut happened"
        assert done.code == 0, done.stderr.decode()
        assert hashlib.sha256(done.stdout).hexdigest() == hashlib.sha256(payload).hexdigest()
        assert len(done.stdout) == len(payload)

    asyncio.run(main())


def test_non_utf8_output_passes_unchanged(tmp_path: Path) -> None:
    laptop = Laptop(tmp_path / "laptop")
    with agent_serving(tmp_path / "agent", tls=False) as agent:
        laptop.add_run("run", agent.port, tls=False)
        script = r"printf '\377\376caf\351\200\n'; printf '\300\001' >&2"
        done = laptop.tether("exec", "run", "--", script)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"\xff\xfecaf\xe9\x80\n"
    assert done.stderr == b"\xc0\x01"


def test_a_missing_command_exits_127_with_the_shells_message(tmp_path: Path) -> None:
    laptop = Laptop(tmp_path / "laptop")
    with agent_serving(tmp_path / "agent", tls=False) as agent:
        laptop.add_run("run", agent.port, tls=False)
        done = laptop.tether("exec", "run", "--", "no-such-command-here", "--flag")
    assert done.returncode == 127
    assert b"no-such-command-here: command not found" in done.stderr


def test_a_wrong_token_is_a_clear_error_without_retries(tmp_path: Path) -> None:
    laptop = Laptop(tmp_path / "laptop")
    laptop.token_file.write_text("not-the-token")
    with agent_serving(tmp_path / "agent") as agent:
        laptop.add_run("run", agent.port)
        done = laptop.tether("exec", "run", "--", "echo", "never")
    assert done.returncode == 255
    assert b"rejected the token" in done.stderr
    assert b"reconnecting" not in done.stderr and b"retry" not in done.stderr
    assert done.stdout == b""


def test_a_protocol_mismatch_names_both_versions(tmp_path: Path) -> None:
    laptop = Laptop(tmp_path / "laptop")
    with agent_serving(tmp_path / "agent", tls=False, protocol=PROTOCOL_VERSION + 1) as agent:
        laptop.add_run("run", agent.port, tls=False)
        done = laptop.tether("exec", "run", "--", "echo", "never")
    assert done.returncode == 255
    message = done.stderr.decode()
    assert f"protocol {PROTOCOL_VERSION + 1}" in message and f"{PROTOCOL_VERSION};" in message
    assert "reconnecting" not in message and done.stdout == b""


def test_an_unreachable_agent_shows_retries_and_ctrl_c_exits_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        laptop = Laptop(tmp_path / "laptop")
        async with FaultProxy("127.0.0.1", 9) as proxy:  # nothing listens on the target
            proxy.refuse(True)
            laptop.add_run("run", proxy.port, tls=False)
            proc = await laptop.start("exec", "run", "--", "true")
            shown = await read_until(proc.stderr, b"\n")
            await read_until(proc.stderr, b"\n")  # a second attempt: it keeps trying
            proc.send_signal(signal.SIGINT)
            done = await finish(proc)
        assert b"tether: connecting" in shown, shown
        assert done.code == 130
        assert b"Traceback" not in done.stderr

    asyncio.run(main())


def test_a_session_gone_after_an_agent_restart_stops_the_retries(tmp_path: Path) -> None:
    """The agent dies mid-session and a new one takes its port: the client
    resumes, hears NOT_FOUND, says the session is gone and exits."""

    async def main() -> None:
        laptop = Laptop(tmp_path / "laptop")
        with agent_serving(tmp_path / "agent", tls=False) as first:
            laptop.add_run("run", first.port, tls=False)
            # cat ends by itself when the killed agent's pipe closes under it.
            proc = await laptop.start("exec", "run", "--", "echo started; exec cat")
            assert proc.stdout is not None
            assert await proc.stdout.readline() == b"started\n"
            first.proc.kill()
            first.proc.wait()
            await read_until(proc.stderr, b"reconnecting")
            with agent_serving(tmp_path / "agent", tls=False, port=first.port):
                done = await finish(proc)
        assert done.code == 255, done.stderr
        assert b"the session is gone" in done.stderr

    asyncio.run(main())
