"""The asyncssh half of the embedded SSH server (see agent/sshd.py): the
listener, who may log in, what a session runs, sftp, and direct-tcpip to
loopback only.

A login is the agent's own user with a public key from the authorized-keys
file in the state dir, read at every login so that a key works as soon as
AuthorizeSshKey adds it. This is the only agent module that imports asyncssh.
"""

import asyncio
import contextlib
import ipaddress
import os
import signal
from collections.abc import Awaitable
from pathlib import Path
from typing import cast

import asyncssh

from agent import processes
from agent.errors import AgentError, FailedPrecondition, InvalidArgument, PermissionDenied
from agent.fdio import read_fd, write_fd
from agent.session_table import home_dir, login_shell
from agent.sshd import AUTHORIZED_KEYS_FILE
from protos.resource import Resource

HOST_KEY_FILE = "ssh_host_ed25519_key"
# What a login may bring from the client's environment (ssh's SendEnv).
_ACCEPTED_ENV_PREFIXES = ("LANG", "LC_")
_SHELL_EXIT_FAILED = 127

SSH_WINDOW_BYTES = 8 << 20
SSH_PACKET_BYTES = 256 << 10


def _loopback_target(host: str) -> str:
    """The loopback address a direct-tcpip target names; anything else is
    refused without a DNS lookup, so no name can point the server elsewhere."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise PermissionDenied(f"forwarding to {host!r}: only loopback targets") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not address.is_loopback:
        raise PermissionDenied(f"forwarding to {host}: only loopback targets")
    return str(address)


def _load_or_create_host_key(path: Path) -> asyncssh.SSHKey:
    if path.exists():
        return asyncssh.read_private_key(path)
    key = asyncssh.generate_private_key("ssh-ed25519")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key())
    return key


def _public_line(key: asyncssh.SSHKey) -> str:
    """The key as "type base64", without a comment."""
    kind, blob, *_ = key.export_public_key().decode().split()
    return f"{kind} {blob}"


def parse_public_key(line: str) -> asyncssh.SSHKey:
    """One public key in authorized_keys form ("type base64 [comment]")."""
    text = line.strip()
    if not text or "\n" in text or "\r" in text:
        raise InvalidArgument("the public key must be exactly one line")
    try:
        return asyncssh.import_public_key(text)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise InvalidArgument(f"not a public key: {exc}") from None


def authorize(path: Path, line: str) -> bool:
    """Adds a public key to the authorized-keys file at `path`; False when
    the key was there already (whatever its comment)."""
    key = parse_public_key(line)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.touch(mode=0o600, exist_ok=True)
    for kept in path.read_text().splitlines():
        with contextlib.suppress(InvalidArgument):  # a line someone wrote by hand
            if parse_public_key(kept).public_data == key.public_data:
                return False
    with path.open("a") as f:
        f.write(key.export_public_key().decode())
    return True


class _Login(asyncssh.SSHServer):
    """One connection's policy: the agent's user, its authorized keys, and
    direct-tcpip to loopback only."""

    def __init__(self, owner: "SshListener") -> None:
        self._owner = owner
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._owner.connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._owner.connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        if username == self._owner.user and self._conn is not None:
            self._conn.set_authorized_keys(self._owner.authorized_keys())
        return True

    def password_auth_supported(self) -> bool:
        return False

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Awaitable["asyncssh.SSHTCPSession[bytes]"]:
        try:
            target = _loopback_target(dest_host)
        except PermissionDenied as exc:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, str(exc)
            ) from None
        assert self._conn is not None
        forwarder = self._conn.forward_connection(target, dest_port)
        return cast(Awaitable["asyncssh.SSHTCPSession[bytes]"], forwarder)


class _HomeSftpServer(asyncssh.SFTPServer):
    """asyncssh's SFTP server on the whole filesystem as the agent's user,
    with relative paths taken from the home directory as OpenSSH's
    sftp-server does, and an exit status at the end (scp, which speaks SFTP
    since OpenSSH 9, reports a failed copy without one)."""

    def map_path(self, path: bytes) -> bytes:
        return path if path.startswith(b"/") else os.path.join(os.fsencode(home_dir()), path)

    def exit(self) -> None:
        self.channel.exit(0)


class SshListener(Resource):
    """The asyncssh server and every session it runs."""

    def __init__(self, state_dir: Path, user: str, host: str, port: int) -> None:
        self._state_dir = state_dir
        self.user = user
        self._address = (host, port)
        self.port = 0
        self.host_public_key = ""
        self.connections: set[asyncssh.SSHServerConnection] = set()
        self._children: set[processes.Child] = set()
        self._acceptor: asyncssh.SSHAcceptor | None = None

    @property
    def authorized_keys_path(self) -> Path:
        return self._state_dir / AUTHORIZED_KEYS_FILE

    async def start(self) -> None:
        self._state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        host_key = _load_or_create_host_key(self._state_dir / HOST_KEY_FILE)
        self.authorized_keys_path.touch(mode=0o600, exist_ok=True)
        self._acceptor = await asyncssh.listen(
            *self._address,
            server_factory=lambda: _Login(self),
            server_host_keys=[host_key],
            process_factory=self._serve_process,
            sftp_factory=_HomeSftpServer,
            line_editor=False,
            encoding=None,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_scp=False,
            # Larger windows and packets than asyncssh's defaults: fewer,
            # bigger messages per GiB (about 15% less CPU for scp here).
            window=SSH_WINDOW_BYTES,
            max_pktsize=SSH_PACKET_BYTES,
        )
        self.port = self._acceptor.sockets[0].getsockname()[1]
        self.host_public_key = _public_line(host_key)

    def authorized_keys(self) -> asyncssh.SSHAuthorizedKeys:
        return asyncssh.read_authorized_keys(str(self.authorized_keys_path))

    # ------------------------------------------------------------ sessions

    def _argv(self, process: "asyncssh.SSHServerProcess[bytes]") -> list[str]:
        if process.subsystem:
            raise FailedPrecondition(f"no subsystem {process.subsystem!r} here")
        if process.command is None:
            return [login_shell(), "-l"]
        return [login_shell(), "-c", process.command]

    def _spawn(self, process: "asyncssh.SSHServerProcess[bytes]") -> processes.Child:
        argv = self._argv(process)
        env = {k: v for k, v in process.env.items() if k.startswith(_ACCEPTED_ENV_PREFIXES)}
        env.update(USER=self.user, LOGNAME=self.user, HOME=home_dir(), SHELL=login_shell())
        if process.term_type:
            env["TERM"] = process.term_type
            cols, rows, *_ = process.term_size
            return processes.spawn_pty(
                argv, env=env, cwd=home_dir(), cols=cols or 80, rows=rows or 24
            )
        return processes.spawn_pipes(argv, env=env, cwd=home_dir())

    async def _serve_process(self, process: "asyncssh.SSHServerProcess[bytes]") -> None:
        """Runs one shell, command or subsystem and reports how it ended."""
        try:
            child = self._spawn(process)
        except (AgentError, OSError) as exc:
            process.stderr.write(f"tether-agent: {exc}\r\n".encode())
            process.exit(_SHELL_EXIT_FAILED)
            return
        self._children.add(child)
        try:
            returncode = await _bridge(process, child)
        finally:
            self._children.discard(child)
            child.close_fds()
        if returncode < 0:
            process.exit_with_signal(signal.Signals(-returncode).name.removeprefix("SIG"))
        else:
            process.exit(returncode)

    # ------------------------------------------------------------ lifetime

    async def __aenter__(self) -> "SshListener":
        await self.start()
        return self

    def close(self) -> None:
        """Stops listening, drops every connection and hangs up every child."""
        if self._acceptor is not None:
            self._acceptor.close()
        for conn in list(self.connections):
            conn.close()
        for child in self._children:
            child.signal_group(signal.SIGHUP)

    async def wait_closed(self) -> None:
        if self._acceptor is not None:
            await self._acceptor.wait_closed()
        for conn in list(self.connections):
            await conn.wait_closed()
        await asyncio.gather(*(child.terminate() for child in list(self._children)))


async def _bridge(process: "asyncssh.SSHServerProcess[bytes]", child: processes.Child) -> int:
    """Carries bytes between the channel and the child until it exits and its
    output is drained; a closed channel hangs the child up, as sshd does."""
    exited = asyncio.ensure_future(child.wait())
    pty = child.master >= 0
    outputs = (
        [(child.master, process.stdout)]
        if pty
        else [
            (child.stdout, process.stdout),
            (child.stderr, process.stderr),
        ]
    )
    pumps = [asyncio.ensure_future(_copy_output(fd, out, exited)) for fd, out in outputs]
    feeding = asyncio.ensure_future(_feed_input(process, child))
    hangup = asyncio.ensure_future(process.channel.wait_closed())
    hangup.add_done_callback(lambda _: child.signal_group(signal.SIGHUP))
    try:
        await asyncio.gather(exited, *pumps)
    finally:
        for task in (feeding, hangup, *pumps):
            task.cancel()
    return exited.result()


async def _copy_output(
    fd: int, out: "asyncssh.SSHWriter[bytes]", exited: "asyncio.Future[int]"
) -> None:
    with contextlib.suppress(BrokenPipeError, ConnectionError, asyncssh.Error):
        while data := await read_fd(fd, after=exited):
            out.write(data)
            await out.drain()


async def _feed_input(process: "asyncssh.SSHServerProcess[bytes]", child: processes.Child) -> None:
    """stdin, window changes and signals from the client, to the child."""
    pty = child.master >= 0
    fd = child.master if pty else child.stdin
    while True:
        try:
            data = await process.stdin.read(1 << 16)
        except asyncssh.TerminalSizeChanged as change:
            if pty:
                processes.set_window_size(fd, change.width, change.height)
            continue
        except asyncssh.SignalReceived as received:
            signum = getattr(signal, f"SIG{received.signal}", None)
            if isinstance(signum, signal.Signals):
                child.signal_group(signum)
            continue
        except asyncssh.BreakReceived:
            continue
        if not data or not await write_fd(fd, data):
            break
    if not pty:
        os.close(child.stdin)
        child.stdin = -1
