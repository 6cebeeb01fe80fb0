"""`tether forward` as a person runs it: a real process, a real agent."""

import asyncio
import os
import re
import signal
import socket
import sys
from pathlib import Path

from tests.agent_harness import TOKEN, running_agent
from tests.forward_harness import echo, echo_roundtrip, run_async, target

MiB = 1 << 20


def _environment(tmp_path: Path, agent_port: int) -> dict[str, str]:
    """A config with one run, `train`, at the agent (XDG dirs in tmp_path)."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    config_dir = tmp_path / "config" / "tether"
    config_dir.mkdir(parents=True)
    (config_dir / "config.toml").write_text(
        f'[runs.train]\naddress = "127.0.0.1:{agent_port}"\n'
        f'token_file = "{token_file}"\ninsecure_loopback = true\n'
    )
    (config_dir / "config.toml").chmod(0o600)
    return {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_RUNTIME_DIR": str(tmp_path / "runtime"),
    }


async def _tether(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "connector",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


def test_foreground_forward_shows_status_and_carries_bytes(tmp_path: Path) -> None:
    async def main() -> None:
        async with target(echo) as port, running_agent() as agent:
            env = _environment(tmp_path, agent.port)
            process = await _tether(env, "forward", "train", f"0:{port}")
            assert process.stderr is not None
            line = (await process.stderr.readline()).decode()
            match = re.match(rf"localhost:(\d+) -> localhost:{port}  ", line)
            assert match, line
            reader, writer = await asyncio.open_connection("127.0.0.1", int(match.group(1)))
            sent, received = await echo_roundtrip(reader, writer, 8 * MiB, 64 * 1024)
            assert received == sent
            while "1 total" not in line or "connected" not in line:
                line = (await process.stderr.readline()).decode()
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 130

    run_async(main)


def test_bad_spec_and_port_in_use_are_one_clear_line(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_agent() as agent:
            env = _environment(tmp_path, agent.port)
            process = await _tether(env, "forward", "train", "9000::80")
            _, err = await process.communicate()
            assert process.returncode == 1
            assert err.decode() == "tether: bad forward '9000::80': the remote host is empty\n"
            with socket.socket() as holder:
                holder.bind(("127.0.0.1", 0))
                holder.listen()
                busy = holder.getsockname()[1]
                process = await _tether(env, "forward", "train", f"{busy}:80")
                _, err = await process.communicate()
            assert process.returncode == 1
            assert f"tether: local port {busy} is already in use by " in err.decode()

    run_async(main)


def test_a_wrong_token_ends_the_command_with_the_reason(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_agent() as agent:
            env = _environment(tmp_path, agent.port)
            (tmp_path / "token").write_text("not-the-token\n")
            process = await _tether(env, "forward", "train", "0:80")
            _, err = await process.communicate()
            assert process.returncode == 255
            assert "rejected the token" in err.decode()

    run_async(main)
