"""Reaching the agent through an SSH jump host: OpenSSH's sshd and asyncssh's."""

import asyncio
import dataclasses
import os
import shutil
from pathlib import Path

from connector.address import parse_address, parse_jump
from connector.config import RunConfig
from connector.forwarder import Forwarder, parse_spec
from connector.link import Link, LinkState
from connector.ssh import JumpDialer
from tests.cli_procs import Laptop, agent_serving
from tests.faultproxy import FaultProxy
from tests.forward_harness import echo, free_port, target
from tests.sshd import SshJumpHost


class JumpLaptop(Laptop):
    """A Laptop with its own ~/.ssh: the jump host's key and ours."""

    def use_ssh_identity(self, host: SshJumpHost, known_hosts_line: str | None = None) -> None:
        ssh = self.home / "home" / ".ssh"
        ssh.mkdir(parents=True, mode=0o700, exist_ok=True)
        shutil.copy(host.client_key, ssh / "id_ed25519")
        (ssh / "id_ed25519").chmod(0o600)
        line = known_hosts_line or f"[{host.host}]:{host.port} {host.host_public_key}"
        (ssh / "known_hosts").write_text(line + "\n")

    @property
    def env(self) -> dict[str, str]:
        env = {**super().env, "HOME": str(self.home / "home")}
        env.pop("SSH_AUTH_SOCK", None)
        return env


def add_jump_run(laptop: Laptop, agent_port: int, host: SshJumpHost) -> None:
    done = laptop.tether(
        "runs", "add", "r", "--address", f"127.0.0.1:{agent_port}",
        "--token-file", str(laptop.token_file), "--jump", f"{host.user}@127.0.0.1:{host.port}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()


def test_exec_through_a_jump_host(tmp_path: Path, jump_host: SshJumpHost) -> None:
    laptop = JumpLaptop(tmp_path / "laptop")
    laptop.use_ssh_identity(jump_host)
    with agent_serving(tmp_path / "agent") as agent:
        add_jump_run(laptop, agent.port, jump_host)
        done = laptop.tether("exec", "r", "--", "echo via-jump; exit 4")
    assert done.returncode == 4, done.stderr.decode()
    assert done.stdout == b"via-jump\n"


def test_a_jump_host_key_mismatch_is_a_hard_error(
    tmp_path: Path, openssh_jump_host: SshJumpHost, asyncssh_jump_host: SshJumpHost
) -> None:
    laptop = JumpLaptop(tmp_path / "laptop")
    wrong = f"[127.0.0.1]:{openssh_jump_host.port} {asyncssh_jump_host.host_public_key}"
    laptop.use_ssh_identity(openssh_jump_host, known_hosts_line=wrong)
    with agent_serving(tmp_path / "agent") as agent:
        add_jump_run(laptop, agent.port, openssh_jump_host)
        done = laptop.tether("exec", "r", "--", "true", timeout=60)
    assert done.returncode == 255
    assert b"ssh-keygen -R 127.0.0.1" in done.stderr


def run_config(tmp_path: Path, agent_port: int, jump: str) -> RunConfig:
    token = tmp_path / "token"
    if not token.exists():
        token.write_text("x")
        token.chmod(0o600)
    return RunConfig(name="r", address=f"127.0.0.1:{agent_port}", token_file=str(token), jump=jump)


def test_a_jump_host_that_is_down_is_retried_visibly(tmp_path: Path) -> None:
    closed = free_port()

    async def main() -> None:
        states: list[LinkState] = []
        run = run_config(tmp_path, 1, f"127.0.0.1:{closed}")
        dialer = JumpDialer(parse_jump(run.jump or ""), parse_address(run.address))
        async with Link(run, on_state=states.append, dialer=dialer) as link:
            task = asyncio.ensure_future(link.channel())
            while not any(s.kind == "reconnecting" or s.retry_in for s in states):
                await asyncio.sleep(0.05)
            task.cancel()
        errors = [s.error or "" for s in states]
        assert any("cannot reach the jump host" in e for e in errors), errors

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_forward_recovers_when_the_ssh_connection_is_cut(
    tmp_path: Path, jump_host: SshJumpHost
) -> None:
    async def main() -> None:
        async with target(echo) as target_port, FaultProxy("127.0.0.1", jump_host.port) as proxy:
            known = tmp_path / "known_hosts"
            known.write_text(f"[127.0.0.1]:{proxy.port} {jump_host.host_public_key}\n")
            with agent_serving(tmp_path / "agent", tls=False) as agent:
                run = run_config(tmp_path, agent.port, f"127.0.0.1:{proxy.port}")
                run = dataclasses.replace(run, insecure_loopback=True)
                Path(run.token_file).write_text((tmp_path / "agent" / "agent-token").read_text())
                dialer = JumpDialer(
                    parse_jump(f"{jump_host.user}@127.0.0.1:{proxy.port}"),
                    parse_address(run.address),
                    known_hosts=str(known),
                    client_keys=[str(jump_host.client_key)],
                )
                async with (
                    Link(run, dialer=dialer) as link,
                    Forwarder(link, parse_spec(f"0:{target_port}")) as forwarder,
                ):
                    payload = os.urandom(200_000)
                    assert await _round_trip(forwarder.port, payload) == payload
                    cuts = proxy.stats.cuts
                    proxy.cut()
                    await proxy.wait_until(lambda s: s.cuts > cuts)
                    assert await _round_trip(forwarder.port, payload) == payload
                    assert proxy.stats.accepted >= 2

    asyncio.run(asyncio.wait_for(main(), 90))


async def _round_trip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    writer.write_eof()
    data = await reader.read()
    writer.close()
    return data
