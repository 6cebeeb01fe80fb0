"""Real SSH jump hosts on loopback: OpenSSH's sshd, and an asyncssh server.

The connector reaches agents behind a jump host through a direct-tcpip
channel, so its tests need real servers that speak SSH: OpenSSH because that
is what clusters run, asyncssh because it is the other implementation the
connector must get along with. Each runs as the current user with keys made
for the test, and is described by an `SshJumpHost` that knows how to reach it.
"""

import asyncio
import contextlib
import getpass
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh

SSHD = "/usr/sbin/sshd"  # sshd re-executes itself, so it must be started by absolute path
_START_TIMEOUT = 15.0
_LOOPBACK_NAMES = frozenset({"127.0.0.1", "::1", "localhost"})


def client_options(port: int, key: Path, known_hosts: Path) -> list[str]:
    """OpenSSH client options for a test server on 127.0.0.1: no user config,
    only `key`, the host key pinned by `known_hosts`."""
    return [
        *("-F", "/dev/null", "-i", str(key), "-o", f"Port={port}"),
        *("-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"),
        *("-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes"),
        *("-o", "BatchMode=yes", "-o", "LogLevel=ERROR"),
    ]


@dataclass(frozen=True)
class SshJumpHost:
    """How to log in to a jump host started for a test."""

    host: str
    port: int
    user: str
    client_key: Path  # private key, OpenSSH format, no passphrase
    host_public_key: str  # "ssh-ed25519 AAAA..."
    known_hosts: Path  # a known_hosts file that pins host_public_key

    def ssh_options(self) -> list[str]:
        """Options for ssh, scp or sftp that reach this host and nothing else."""
        return client_options(self.port, self.client_key, self.known_hosts)

    def ssh_argv(self, *command: str) -> list[str]:
        """An `ssh` command line that runs `command` on this host."""
        return ["ssh", *self.ssh_options(), f"{self.user}@{self.host}", *command]


def _keygen(path: Path) -> str:
    """Make an ed25519 key pair at `path`; return the public key without its comment."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tether-test", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    kind, blob, *_ = path.with_suffix(".pub").read_text().split()
    return f"{kind} {blob}"


def _make_keys(workdir: Path) -> tuple[Path, str, Path]:
    """Host and client keys; returns (host key, client public key, client key)."""
    workdir.mkdir(parents=True, exist_ok=True)
    host_key, client_key = workdir / "host_ed25519", workdir / "client_ed25519"
    _keygen(host_key)
    client_public = _keygen(client_key)
    (workdir / "authorized_keys").write_text(client_public + "\n")
    return host_key, client_public, client_key


def _describe(workdir: Path, port: int, host_key: Path, client_key: Path) -> SshJumpHost:
    host_public = " ".join(host_key.with_suffix(".pub").read_text().split()[:2])
    known_hosts = workdir / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_public}\n")
    return SshJumpHost("127.0.0.1", port, getpass.getuser(), client_key, host_public, known_hosts)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _sshd_config(workdir: Path, port: int, host_key: Path) -> Path:
    config = workdir / "sshd_config"
    config.write_text(
        f"""\
ListenAddress 127.0.0.1
Port {port}
HostKey {host_key}
PidFile {workdir / "sshd.pid"}
AuthorizedKeysFile {workdir / "authorized_keys"}
UsePAM no
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowTcpForwarding yes
PrintMotd no
PrintLastLog no
MaxStartups 100
MaxSessions 100
Subsystem sftp internal-sftp
LogLevel INFO
"""
    )
    return config


class _Sshd:
    """A running sshd; drains its stderr (so it never blocks on a full pipe)
    and notices when it starts listening or dies."""

    def __init__(self, config: Path) -> None:
        self._process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._settled = threading.Event()
        self._listening = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("Server listening on"):
                self._listening = True
                self._settled.set()
        self._settled.set()

    def wait_listening(self) -> bool:
        """True once sshd listens; False if it exited or took too long."""
        self._settled.wait(_START_TIMEOUT)
        return self._listening

    def stop(self) -> None:
        """End sshd and its connections, and collect what it logged."""
        self._process.terminate()
        self._process.wait(_START_TIMEOUT)
        self._thread.join(_START_TIMEOUT)
        assert self._process.stderr is not None
        self._process.stderr.close()


@contextlib.contextmanager
def openssh_server(workdir: Path) -> Iterator[SshJumpHost]:
    """Run OpenSSH's sshd on 127.0.0.1 with a private config in `workdir`."""
    host_key, _, client_key = _make_keys(workdir)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege separation dir
    for _attempt in range(3):  # the free port may be taken before sshd binds it
        port = _free_port()
        sshd = _Sshd(_sshd_config(workdir, port, host_key))
        if sshd.wait_listening():
            break
        sshd.stop()
        if not any("Address already in use" in line for line in sshd.lines):
            raise RuntimeError("sshd did not start:\n" + "\n".join(sshd.lines))
    else:
        raise RuntimeError("sshd found no free port:\n" + "\n".join(sshd.lines))
    try:
        yield _describe(workdir, port, host_key, client_key)
    finally:
        sshd.stop()


class _LoopbackJumpServer(asyncssh.SSHServer):
    """Key-authenticated, allowing direct-tcpip to loopback only."""

    def __init__(self, connections: set[asyncssh.SSHServerConnection]) -> None:
        self._connections = connections
        self._connection: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._connection = conn
        self._connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._connection is not None:
            self._connections.discard(self._connection)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        return dest_host in _LOOPBACK_NAMES


@contextlib.contextmanager
def asyncssh_server(workdir: Path) -> Iterator[SshJumpHost]:
    """Run an asyncssh server on 127.0.0.1, in a thread with its own event
    loop so that any test, sync or async, can use it."""
    host_key, _, client_key = _make_keys(workdir)
    connections: set[asyncssh.SSHServerConnection] = set()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def listen() -> asyncssh.SSHAcceptor:
        return await asyncssh.listen(
            "127.0.0.1",
            0,
            server_factory=lambda: _LoopbackJumpServer(connections),
            server_host_keys=[str(host_key)],
            authorized_client_keys=str(workdir / "authorized_keys"),
        )

    async def close(acceptor: asyncssh.SSHAcceptor) -> None:
        acceptor.close()
        open_connections = list(connections)
        for conn in open_connections:
            conn.close()
        await asyncio.gather(acceptor.wait_closed(), *(c.wait_closed() for c in open_connections))

    try:
        acceptor = asyncio.run_coroutine_threadsafe(listen(), loop).result(_START_TIMEOUT)
        try:
            yield _describe(workdir, acceptor.get_port(), host_key, client_key)
        finally:
            asyncio.run_coroutine_threadsafe(close(acceptor), loop).result(_START_TIMEOUT)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_START_TIMEOUT)
        loop.close()
