"""SSH keys on the laptop side; the only connector module that imports asyncssh.

`tether ssh-config` gives the OpenSSH client a key pair of tether's own, so
that logging in to a run never depends on (or touches) the person's keys, and
pins each agent's host key in a known_hosts file of tether's own.
"""

import os
from pathlib import Path

import asyncssh

from connector.address import Address, JumpHost
from connector.errors import ConfigError, FatalLinkError, LinkError, RemoteError

CLIENT_KEY_FILE = "id_ed25519"
SSH_KEEPALIVE_SECONDS = 10
SSH_CONNECT_TIMEOUT = 10


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
