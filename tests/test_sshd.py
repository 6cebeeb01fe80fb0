"""The jump hosts the connector's tests rely on, checked with real clients."""

import asyncio
import subprocess

import asyncssh
import pytest

from tests.sshd import SshJumpHost


def test_openssh_client_runs_a_command(openssh_jump_host: SshJumpHost) -> None:
    done = subprocess.run(
        openssh_jump_host.ssh_argv("echo", "ok"), capture_output=True, text=True, timeout=30
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "ok\n", "")


def test_openssh_client_rejects_a_host_key_it_does_not_pin(
    openssh_jump_host: SshJumpHost, asyncssh_jump_host: SshJumpHost
) -> None:
    argv = openssh_jump_host.ssh_argv("echo", "ok")
    argv[argv.index(f"UserKnownHostsFile={openssh_jump_host.known_hosts}")] = (
        f"UserKnownHostsFile={asyncssh_jump_host.known_hosts}"
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 255
    assert "Host key verification failed" in done.stderr


async def _connect(host: SshJumpHost) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        host.host,
        host.port,
        username=host.user,
        client_keys=[str(host.client_key)],
        known_hosts=str(host.known_hosts),
    )


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


def test_direct_tcpip_reaches_a_loopback_server(jump_host: SshJumpHost) -> None:
    async def body() -> None:
        async with (
            await asyncio.start_server(_echo, "127.0.0.1", 0) as echo,
            await _connect(jump_host) as conn,
        ):
            reader, writer = await conn.open_connection(
                "127.0.0.1", echo.sockets[0].getsockname()[1]
            )
            payload = bytes(range(256)) * 4096
            writer.write(payload)
            writer.write_eof()
            assert await reader.read() == payload
            writer.close()

    asyncio.run(asyncio.wait_for(body(), 30))


def test_asyncssh_jump_host_refuses_targets_off_loopback(asyncssh_jump_host: SshJumpHost) -> None:
    async def body() -> None:
        async with await _connect(asyncssh_jump_host) as conn:
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.open_connection("192.0.2.1", 80)

    asyncio.run(asyncio.wait_for(body(), 30))
