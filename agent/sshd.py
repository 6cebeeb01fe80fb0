"""The agent's embedded SSH server: ssh, scp, rsync, sftp and VS Code
Remote-SSH into the container, with no sshd in the image.

It listens on the container's loopback only; the way in is a Forward stream
over the authenticated gRPC link (`tether proxy` as ssh's ProxyCommand), so
it is never on a public interface and an ssh session rides on a resumable
stream. It knows one user, the agent's own, and public keys only.

This is what the rest of the agent sees; the work is in agent/ssh_listener.py,
imported on first use: asyncssh and cryptography add about 18 MB to the
agent's RSS and most runs never use ssh.
"""

import asyncio
import ipaddress
import os
import pwd
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import FailedPrecondition, InvalidArgument
from protos.resource import Resource

if TYPE_CHECKING:
    from agent.ssh_listener import SshListener

AUTHORIZED_KEYS_FILE = "ssh_authorized_keys"


def agent_user() -> str:
    """The one user this server logs in: the agent's own."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


class SshServer(Resource):
    """The embedded SSH server; an async context manager with close()/wait_closed().

    start() is idempotent, so the server can be started on first use.
    """

    def __init__(self, state_dir: Path, *, host: str = "127.0.0.1", port: int = 0) -> None:
        if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
            raise InvalidArgument(f"the SSH server listens on loopback only, not {host}")
        self._state_dir = state_dir
        self._host = host
        self._requested_port = port
        self.user = agent_user()
        self._listener: SshListener | None = None
        self._start_lock = asyncio.Lock()
        self._closed = False

    @property
    def port(self) -> int:
        return self._listener.port if self._listener else 0

    @property
    def host_public_key(self) -> str:
        """One line, "type base64"; empty until started."""
        return self._listener.host_public_key if self._listener else ""

    @property
    def authorized_keys_path(self) -> Path:
        return self._state_dir / AUTHORIZED_KEYS_FILE

    async def start(self) -> None:
        async with self._start_lock:
            if self._closed:
                raise FailedPrecondition("the SSH server is closed")
            if self._listener is not None:
                return
            from agent.ssh_listener import SshListener

            listener = SshListener(self._state_dir, self.user, self._host, self._requested_port)
            await listener.start()
            self._listener = listener

    def authorize(self, line: str) -> bool:
        """Adds a public key ("type base64 [comment]") to the authorized keys;
        False when it was there. InvalidArgument for anything else."""
        from agent.ssh_listener import authorize

        return authorize(self.authorized_keys_path, line)

    async def __aenter__(self) -> "SshServer":
        await self.start()
        return self

    def close(self) -> None:
        """Stops listening, drops every connection and hangs up every child."""
        self._closed = True
        if self._listener is not None:
            self._listener.close()

    async def wait_closed(self) -> None:
        if self._listener is not None:
            await self._listener.wait_closed()
