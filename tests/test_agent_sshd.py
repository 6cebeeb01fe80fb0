"""The agent's embedded SSH server, driven by the real OpenSSH clients
(ssh, scp, sftp, rsync) on loopback, and asyncssh where a test must see the
exit signal itself."""

import asyncio
import contextlib
import hashlib
import os
import pwd
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import grpc
import pytest

from agent.errors import InvalidArgument
from agent.sshd import SshServer, agent_user
from protos import agent_pb2 as pb
from protos.agent_pb2_grpc import AgentStub
from tests.agent_harness import METADATA, channel_to, running_agent
from tests.sshd import client_options

pytestmark = pytest.mark.timeout(60)


@dataclass(frozen=True)
class Client:
    """How the OpenSSH tools reach one running SshServer."""

    port: int
    user: str
    key: Path
    known_hosts: Path

    def options(self) -> list[str]:
        return client_options(self.port, self.key, self.known_hosts)

    def connect(self) -> Any:
        """An asyncssh connection as this client: await it, or `async with` it
        (asyncssh's own wrapper type is private, hence Any)."""
        return asyncssh.connect(
            "127.0.0.1",
            self.port,
            username=self.user,
            client_keys=[str(self.key)],
            known_hosts=str(self.known_hosts),
        )

    @property
    def target(self) -> str:
        return f"{self.user}@127.0.0.1"

    def ssh(self, *command: str) -> list[str]:
        return ["ssh", *self.options(), self.target, *command]


def keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return path.with_suffix(".pub").read_text()


@contextlib.asynccontextmanager
async def sshd(tmp_path: Path) -> AsyncIterator[Client]:
    public = keygen(tmp_path / "id_ed25519")
    async with SshServer(tmp_path / "state") as server:
        assert server.authorize(public)
        yield client_of(tmp_path, server.port, server.user, server.host_public_key)


def client_of(tmp_path: Path, port: int, user: str, host_public_key: str) -> Client:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_public_key}\n")
    return Client(port, user, tmp_path / "id_ed25519", known_hosts)


async def run(argv: list[str], stdin: bytes = b"") -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin)
    assert proc.returncode is not None
    return proc.returncode, out, err


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_exec_output_and_exit_codes(tmp_path: Path) -> None:
    async def main() -> None:
        async with sshd(tmp_path) as client:
            assert await run(client.ssh("echo", "ok")) == (0, b"ok\n", b"")
            code, out, err = await run(client.ssh("echo out; echo err >&2; exit 7"))
            assert (code, out, err) == (7, b"out\n", b"err\n")
            code, out, _ = await run(client.ssh("tr a-z A-Z"), stdin=b"piped stdin\n")
            assert (code, out) == (0, b"PIPED STDIN\n")
            setenv = ["ssh", "-o", "SetEnv=LANG=C.UTF-8 FOO=bar", *client.options(), client.target]
            code, out, _ = await run([*setenv, "echo $LANG/$FOO/$HOME"])
            assert (code, out) == (0, f"C.UTF-8//{pwd.getpwuid(os.getuid()).pw_dir}\n".encode())

    asyncio.run(main())


def test_wrong_user_and_unknown_key_are_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with sshd(tmp_path) as client:
            assert client.user == agent_user()
            stranger = ["ssh", *client.options(), "nobody-else@127.0.0.1", "true"]
            assert (await run(stranger))[0] == 255
            keygen(tmp_path / "other")
            other = Client(client.port, client.user, tmp_path / "other", client.known_hosts)
            assert (await run(other.ssh("true")))[0] == 255

    asyncio.run(main())


def test_death_by_signal_is_reported_as_exit_signal(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            sshd(tmp_path) as client,
            client.connect() as conn,
        ):
            result = await conn.run("kill -TERM $$")
            assert result.exit_signal is not None and result.exit_signal[0] == "TERM"

    asyncio.run(main())


def test_pty_session_sees_a_terminal(tmp_path: Path) -> None:
    async def main() -> None:
        async with sshd(tmp_path) as client:
            command = "test -t 0 && echo tty:$TERM; stty size; exit 3"
            code, out, _ = await run(["ssh", "-tt", *client.options(), client.target, command])
            assert code == 3
            lines = out.decode().splitlines()
            assert lines[0].startswith("tty:") and lines[0] != "tty:"
            assert len(lines[1].split()) == 2

    asyncio.run(main())


def test_interactive_login_shell_over_a_pty(tmp_path: Path) -> None:
    async def main() -> None:
        async with sshd(tmp_path) as client:
            code, out, _ = await run(
                ["ssh", "-tt", *client.options(), client.target],
                stdin=b"echo hi-$((6*7))\nexit 5\n",
            )
            assert code == 5
            assert b"hi-42" in out

    asyncio.run(main())


@pytest.mark.parametrize("scp_flags", [[], ["-O"]], ids=["sftp-protocol", "scp-protocol"])
def test_scp_there_and_back(tmp_path: Path, scp_flags: list[str]) -> None:
    async def main() -> None:
        source = tmp_path / "source.bin"
        source.write_bytes(os.urandom(3 << 20))
        there, back = tmp_path / "there.bin", tmp_path / "back.bin"
        async with sshd(tmp_path) as client:
            scp = ["scp", *scp_flags, *client.options()]
            assert (await run([*scp, str(source), f"{client.target}:{there}"]))[0] == 0
            assert (await run([*scp, f"{client.target}:{there}", str(back)]))[0] == 0
        assert sha256(back) == sha256(there) == sha256(source)

    asyncio.run(main())


def test_sftp_batch_mode(tmp_path: Path) -> None:
    async def main() -> None:
        (tmp_path / "up.txt").write_text("up")
        remote = tmp_path / "remote"
        batch = tmp_path / "batch"
        batch.write_text(
            f"mkdir {remote}\nput {tmp_path / 'up.txt'} {remote}/up.txt\n"
            f"get {remote}/up.txt {tmp_path / 'down.txt'}\nls {remote}\n"
        )
        async with sshd(tmp_path) as client:
            code, out, err = await run(["sftp", "-b", str(batch), *client.options(), client.target])
            assert code == 0, err
        assert (tmp_path / "down.txt").read_text() == "up"
        assert b"up.txt" in out

    asyncio.run(main())


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_rsync_of_a_small_tree(tmp_path: Path) -> None:
    async def main() -> None:
        tree = tmp_path / "tree"
        for index in range(50):
            path = tree / f"d{index % 5}" / f"f{index}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"file {index}\n" * index)
        os.utime(tree / "d0" / "f0.txt", (1_000_000_000, 1_000_000_000))
        async with sshd(tmp_path) as client:
            shell = " ".join(["ssh", *client.options()])
            copy = tmp_path / "copy"
            code, _, err = await run(
                ["rsync", "-a", "-e", shell, f"{tree}/", f"{client.target}:{copy}/"]
            )
            assert code == 0, err
        originals = sorted(p.relative_to(tree) for p in tree.rglob("*"))
        assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == originals
        for name in originals:
            if (tree / name).is_file():
                assert (copy / name).read_bytes() == (tree / name).read_bytes()
        assert (copy / "d0" / "f0.txt").stat().st_mtime == 1_000_000_000

    asyncio.run(main())


async def _echo_server() -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


def test_direct_tcpip_reaches_loopback_only(tmp_path: Path) -> None:
    async def main() -> None:
        echo = await _echo_server()
        port = echo.sockets[0].getsockname()[1]
        async with (
            echo,
            sshd(tmp_path) as client,
            client.connect() as conn,
        ):
            for host in ("127.0.0.1", "localhost"):
                reader, writer = await conn.open_connection(host, port)
                writer.write(b"ping")
                writer.write_eof()
                assert await reader.read() == b"ping"
            for host in ("10.0.0.1", "169.254.169.254", "example.com"):
                with pytest.raises(asyncssh.ChannelOpenError):
                    await conn.open_connection(host, port)

    asyncio.run(main())


def test_authorize_rejects_bad_lines_and_dedupes(tmp_path: Path) -> None:
    server = SshServer(tmp_path / "state")
    public = keygen(tmp_path / "key")
    for bad in ("", "not a key", "ssh-ed25519 AAAAnotbase64!!", f"{public.strip()}\n{public}"):
        with pytest.raises(InvalidArgument):
            server.authorize(bad)
    assert server.authorize(public)
    kind, blob, _ = public.split()
    assert not server.authorize(f"{kind} {blob} another-comment")
    assert len(server.authorized_keys_path.read_text().splitlines()) == 1
    assert server.authorized_keys_path.stat().st_mode & 0o777 == 0o600


def test_host_key_is_kept_across_restarts(tmp_path: Path) -> None:
    async def main() -> None:
        async with SshServer(tmp_path / "state") as first:
            key = first.host_public_key
        async with SshServer(tmp_path / "state") as second:
            assert second.host_public_key == key
        assert (tmp_path / "state" / "ssh_host_ed25519_key").stat().st_mode & 0o777 == 0o600

    asyncio.run(main())


def test_authorize_over_grpc_then_log_in(tmp_path: Path) -> None:
    async def main() -> None:
        public = keygen(tmp_path / "id_ed25519")
        async with (
            running_agent(state_dir=tmp_path / "agent") as agent,
            channel_to(agent) as channel,
        ):
            stub = AgentStub(channel)
            bad = pb.AuthorizeSshKeyRequest(public_key="ssh-ed25519 nonsense")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.AuthorizeSshKey(bad, metadata=METADATA)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            request = pb.AuthorizeSshKeyRequest(public_key=public)
            reply = await stub.AuthorizeSshKey(request, metadata=METADATA)
            assert await stub.AuthorizeSshKey(request, metadata=METADATA) == reply
            client = client_of(tmp_path, reply.port, reply.user, reply.host_public_key)
            assert await run(client.ssh("echo", "ok")) == (0, b"ok\n", b"")

    asyncio.run(main())


def test_close_ends_sessions_and_their_children(tmp_path: Path) -> None:
    async def main() -> None:
        public = keygen(tmp_path / "id_ed25519")
        server = SshServer(tmp_path / "state")
        server.authorize(public)
        await server.start()
        client = client_of(tmp_path, server.port, server.user, server.host_public_key)
        conn = await client.connect()
        process = await conn.create_process("echo $$; exec sleep 60")
        pid = int(await process.stdout.readline())
        server.close()
        await server.wait_closed()
        await conn.wait_closed()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    asyncio.run(main())


def test_window_changes_and_signals_reach_the_child(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            sshd(tmp_path) as client,
            client.connect() as conn,
        ):
            tty = await conn.create_process(
                "stty size; read line; stty size", term_type="xterm", term_size=(80, 24)
            )
            assert (await tty.stdout.readline()).strip() == "24 80"
            tty.change_terminal_size(100, 40)
            tty.stdin.write("\n")
            assert "40 100" in await tty.stdout.read()
            assert (await tty.wait()).exit_status == 0

            script = "trap 'echo got-usr1; exit 4' USR1; echo ready; while :; do sleep 0.1; done"
            piped = await conn.create_process(script)
            assert await piped.stdout.readline() == "ready\n"
            piped.send_signal("USR1")
            assert await piped.stdout.read() == "got-usr1\n"
            assert (await piped.wait()).exit_status == 4

    asyncio.run(main())
