"""SSH on the laptop side (keys, the jump-host dialer, `tether cp`'s SFTP
client); the only connector module that imports asyncssh.

`tether ssh-config` gives the OpenSSH client a key pair of tether's own, so
that logging in to a run never depends on (or touches) the person's keys, and
pins each agent's host key in a known_hosts file of tether's own.
"""

import asyncio
import contextlib
import errno
import os
import socket
import stat
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncssh

from connector.address import Address, JumpHost
from connector.cp import BLOCK, WINDOW, Entry, Sink
from connector.errors import ConfigError, FatalLinkError, LinkError, RemoteError

CLIENT_KEY_FILE = "id_ed25519"
SSH_KEEPALIVE_SECONDS = 10
SSH_CONNECT_TIMEOUT = 10
T = TypeVar("T")


def ensure_client_key(directory: Path) -> tuple[Path, str]:
    """The tether-managed key pair in `directory`, made once: the private
    key's path (0600) and the public key as one authorized_keys line."""
    private = directory / CLIENT_KEY_FILE
    public = private.with_name(CLIENT_KEY_FILE + ".pub")
    if not private.exists():
        key = asyncssh.generate_private_key("ssh-ed25519", comment="tether")
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private_key())
        public.write_bytes(key.export_public_key())
    try:
        key = asyncssh.read_private_key(private)
    except (OSError, asyncssh.KeyImportError) as exc:
        raise ConfigError(f"tether's SSH key {private} cannot be read: {exc}") from None
    return private, key.export_public_key().decode().strip()


def host_key_line(text: str) -> str:
    """The agent's host key as "type base64", checked: it goes into a
    known_hosts file, so a malformed or multi-line answer must not."""
    if "\n" in text.strip():
        raise RemoteError("INVALID_HOST_KEY", "the agent sent a host key of several lines")
    try:
        key = asyncssh.import_public_key(text.strip())
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise RemoteError(
            "INVALID_HOST_KEY", f"the agent sent an unusable host key: {exc}"
        ) from None
    kind, blob, *_ = key.export_public_key().decode().split()
    return f"{kind} {blob}"


class JumpDialer:
    """Reaches the agent through an SSH jump host (the Link's Dialer).

    One SSH connection to the jump host, with keys from ssh-agent and ~/.ssh
    and strict checking against ~/.ssh/known_hosts, carries a local port
    forward to the agent; gRPC dials that loopback port. A connection that
    dropped is made again on the next dial, so a lost SSH connection is
    re-established as part of the link's own reconnect.
    """

    def __init__(
        self,
        jump: JumpHost,
        target: Address,
        *,
        known_hosts: str | None = None,
        client_keys: list[str] | None = None,
    ) -> None:
        self._jump = jump
        self._target = target
        self._known_hosts = known_hosts or str(Path.home() / ".ssh" / "known_hosts")
        self._client_keys = client_keys
        self._conn: asyncssh.SSHClientConnection | None = None
        self._listener: asyncssh.SSHListener | None = None

    def _alive(self) -> bool:
        conn = self._conn
        return conn is not None and not conn.is_closed()

    async def dial(self) -> str:
        if not self._alive():
            self._drop()
            self._conn = await self._connect()
            self._listener = await self._conn.forward_local_port(
                "127.0.0.1", 0, self._target.host, self._target.port
            )
        assert self._listener is not None
        return f"127.0.0.1:{self._listener.get_port()}"

    async def _connect(self) -> asyncssh.SSHClientConnection:
        options: dict[str, object] = {
            "port": self._jump.port,
            "known_hosts": self._known_hosts,
            "keepalive_interval": SSH_KEEPALIVE_SECONDS,
            "keepalive_count_max": 3,
            "connect_timeout": SSH_CONNECT_TIMEOUT,
        }
        if self._jump.user:
            options["username"] = self._jump.user
        if self._client_keys is not None:
            options["client_keys"] = self._client_keys
        try:
            return await asyncssh.connect(self._jump.host, **options)
        except asyncssh.HostKeyNotVerifiable as exc:
            raise FatalLinkError(
                f"the jump host {self._jump} presented a host key that {self._known_hosts} "
                f"does not have or does not match ({exc.reason}); if it changed on purpose, "
                f"remove the old key with `ssh-keygen -R {self._jump.host}` and add the new one"
            ) from None
        except asyncssh.PermissionDenied as exc:
            raise FatalLinkError(
                f"the jump host {self._jump} refused our keys: {exc.reason}"
            ) from None
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise LinkError(f"cannot reach the jump host {self._jump}: {exc}") from None

    def _drop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        self._drop()

    async def wait_closed(self) -> None:
        """Nothing lingers: close() closed the listener and the connection."""


# Data leaves in AES-GCM (AES-NI in OpenSSL) and uncompressed: a copy is
# bound by CPU per byte, and most of what people copy is already compressed.
_COPY_CIPHERS = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
]
_SFTP_ERRNO: list[tuple[type[asyncssh.SFTPError], int]] = [
    (asyncssh.SFTPNoSuchFile, errno.ENOENT),
    (asyncssh.SFTPNoSuchPath, errno.ENOENT),
    (asyncssh.SFTPPermissionDenied, errno.EACCES),
    (asyncssh.SFTPWriteProtect, errno.EROFS),
    (asyncssh.SFTPNoSpaceOnFilesystem, errno.ENOSPC),
    (asyncssh.SFTPQuotaExceeded, errno.EDQUOT),
    (asyncssh.SFTPNotADirectory, errno.ENOTDIR),
    (asyncssh.SFTPFileIsADirectory, errno.EISDIR),
]


@contextlib.contextmanager
def _sftp_errors(path: str) -> Iterator[None]:
    """SFTP's status codes as the OSErrors the copy engine reads; a lost
    session as a LinkError that says a re-run resumes. Version 3 servers
    send "no space" as a plain failure, so its text is read too."""
    try:
        yield
    except (
        asyncssh.SFTPConnectionLost,
        asyncssh.SFTPNoConnection,
        asyncssh.DisconnectError,
        ConnectionError,
    ) as exc:
        raise LinkError(
            f"the copy's SSH session ended ({exc}); run the same command again to resume"
        ) from None
    except asyncssh.SFTPError as exc:
        number = next((n for kind, n in _SFTP_ERRNO if isinstance(exc, kind)), errno.EIO)
        if "no space left" in exc.reason.lower():
            number = errno.ENOSPC
        raise OSError(number, exc.reason or os.strerror(number), path) from None


def _entry(attrs: asyncssh.SFTPAttrs) -> Entry:
    mode = attrs.permissions or 0
    if attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY:
        mode |= stat.S_IFDIR
    return Entry.from_mode(mode, attrs.size or 0, attrs.mtime or 0)


async def _oldest(requests: deque["asyncio.Task[T]"]) -> T:
    """The oldest request's result. Shielded, and kept in `requests` until
    done, so that a cancel or a failure leaves it to _settle_quietly."""
    result = await asyncio.shield(requests[0])
    requests.popleft()
    return result


async def _settle_quietly(requests: Iterable["asyncio.Task[Any]"]) -> None:
    """Lets requests already sent end, their outcome no longer wanted:
    cancelling one instead leaves asyncssh's own tasks under it with
    errors nobody retrieves, which asyncio then prints."""
    await asyncio.gather(*requests, return_exceptions=True)


class _PipelinedSink:
    """Writes at increasing offsets with up to WINDOW blocks in flight."""

    def __init__(self, file: asyncssh.SFTPClientFile, offset: int, path: str) -> None:
        self._file, self._offset, self._path = file, offset, path
        self._pending: deque[asyncio.Task[int]] = deque()

    async def write(self, data: bytes) -> None:
        if len(self._pending) >= WINDOW:
            with _sftp_errors(self._path):
                await _oldest(self._pending)
        self._pending.append(asyncio.ensure_future(self._file.write(data, self._offset)))
        self._offset += len(data)

    async def drain(self) -> None:
        with _sftp_errors(self._path):
            while self._pending:
                await _oldest(self._pending)

    async def abandon(self) -> None:
        await _settle_quietly(self._pending)


class RemoteSide:
    """A run's filesystem over SFTP, for connector.cp (its `Side`)."""

    def __init__(self, sftp: asyncssh.SFTPClient) -> None:
        self._sftp = sftp

    async def stat(self, path: str) -> Entry | None:
        try:
            with _sftp_errors(path):
                return _entry(await self._sftp.lstat(path))
        except FileNotFoundError:
            return None

    async def scandir(self, path: str) -> list[tuple[str, Entry]]:
        with _sftp_errors(path):
            names = [name async for name in self._sftp.scandir(path)]
        return [
            (str(name.filename), _entry(name.attrs))
            for name in names
            if name.filename not in (".", "..")
        ]

    async def mkdir(self, path: str) -> None:
        with _sftp_errors(path):
            await self._sftp.mkdir(path, asyncssh.SFTPAttrs(permissions=0o700))

    async def read(self, path: str, offset: int) -> AsyncGenerator[bytes, None]:
        """Blocks ahead of the one handed out are already asked for, so the
        link stays busy while the laptop writes."""
        pending: deque[asyncio.Task[bytes]] = deque()
        with _sftp_errors(path):
            async with self._sftp.open(path, "rb", block_size=BLOCK) as file:
                try:
                    size = (await file.stat()).size or 0
                    for at in range(offset, size, BLOCK):
                        if len(pending) >= WINDOW:
                            yield await _oldest(pending)
                        pending.append(asyncio.ensure_future(file.read(BLOCK, at)))
                    while pending:
                        yield await _oldest(pending)
                finally:
                    await _settle_quietly(pending)

    @contextlib.asynccontextmanager
    async def append(self, path: str, offset: int) -> AsyncIterator[Sink]:
        flags = asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | (0 if offset else asyncssh.FXF_TRUNC)
        with _sftp_errors(path):
            file = await self._sftp.open(
                path, flags, asyncssh.SFTPAttrs(permissions=0o600), encoding=None, block_size=BLOCK
            )
        sink = _PipelinedSink(file, offset, path)
        try:
            if offset:
                with _sftp_errors(path):
                    await file.truncate(offset)
            yield sink
            await sink.drain()
        finally:
            await sink.abandon()
            with contextlib.suppress(asyncssh.Error, ConnectionError):
                await file.close()

    async def settle(self, path: str, mode: int, mtime: int, final: str | None) -> None:
        attrs = asyncssh.SFTPAttrs(permissions=mode, atime=mtime, mtime=mtime)
        with _sftp_errors(path):
            await self._sftp.setstat(path, attrs)
            if final is not None:
                await self._sftp.posix_rename(path, final)


@contextlib.asynccontextmanager
async def sftp_over(
    sock: socket.socket, user: str, host_key: str, client_key: Path
) -> AsyncIterator[RemoteSide]:
    """An SFTP session with the agent's SSH server on a socket already
    carried to it. The host key came over the pinned, authenticated link
    (AuthorizeSshKey), so it is trusted for this connection alone."""
    try:
        conn = await asyncssh.connect(
            "tether-agent",  # a name for asyncssh's logs: a socketpair has no peer address
            sock=sock,
            username=user,
            client_keys=[str(client_key)],
            known_hosts=([asyncssh.import_public_key(host_key)], [], []),
            encryption_algs=_COPY_CIPHERS,
            compression_algs=["none"],
            agent_path=None,
            config=[],
            connect_timeout=SSH_CONNECT_TIMEOUT,
        )
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise LinkError(f"the run's SSH server did not let us in: {exc}") from None
    async with conn:
        with _sftp_errors(""):
            sftp = await conn.start_sftp_client()
        async with sftp:
            yield RemoteSide(sftp)
