"""The agent's one VS Code tunnel: its name, starting it, stopping it, shutdown.

A run gets at most one tunnel per agent, named after the run and rank so that
runs never collide on a fixed name (a second tunnel with a taken name takes
over the first one's registration).
"""

import asyncio
import hashlib
import re

from agent.errors import FailedPrecondition, InvalidArgument
from agent.vscode import DEFAULT_POLICY, RestartPolicy, TunnelStatus, VscodeTunnel
from agent.vscode_cli import CliSource
from protos.resource import Resource

# VS Code accepts at most 20 characters, letters, digits and '-'. Default names
# keep to lowercase, since the name also appears in a host name.
MAX_NAME = 20
_VALID_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_HASH_LEN = 4


def default_tunnel_name(run: str, rank: int) -> str:
    """`<run>-r<rank>` fitted to VS Code's rules.

    A run name too long to fit is cut and given a short hash of the full name,
    so two long runs that share a prefix still get different tunnels.
    """
    suffix = f"-r{rank}"
    base = re.sub(r"[^a-z0-9]+", "-", run.lower()).strip("-") or "run"
    room = MAX_NAME - len(suffix)
    if len(base) > room:
        tag = hashlib.sha256(run.encode()).hexdigest()[:_HASH_LEN]
        base = f"{base[: room - _HASH_LEN - 1].rstrip('-')}-{tag}"
    return base + suffix


def check_tunnel_name(name: str) -> None:
    if len(name) > MAX_NAME or not _VALID_NAME.fullmatch(name):
        raise InvalidArgument(
            f"{name!r} is not a valid VS Code tunnel name: use at most {MAX_NAME} "
            "letters, digits and '-', not starting or ending with '-'"
        )


class VscodeManager(Resource):
    """Starts the tunnel on request, stops it on request and at agent shutdown."""

    def __init__(
        self,
        source: CliSource,
        default_name: str,
        *,
        cli_data_dir: str | None = None,
        policy: RestartPolicy = DEFAULT_POLICY,
    ) -> None:
        check_tunnel_name(default_name)
        self._source = source
        self._default_name = default_name
        self._cli_data_dir = cli_data_dir
        self._policy = policy
        self._tunnel: VscodeTunnel | None = None
        self._starting = asyncio.Lock()

    def running(self) -> VscodeTunnel | None:
        tunnel = self._tunnel
        return tunnel if tunnel is not None and tunnel.running else None

    async def start(self, name: str = "") -> VscodeTunnel:
        """The running tunnel, or a new one named `name` (default: run and rank)."""
        name = name or self._default_name
        check_tunnel_name(name)
        async with self._starting:
            return await self._start_locked(name)

    async def _start_locked(self, name: str) -> VscodeTunnel:
        current = self.running()
        if current is not None:
            if current.name != name:
                raise FailedPrecondition(
                    f"the VS Code tunnel {current.name!r} is already running; "
                    f"stop it before starting {name!r}"
                )
            return current
        if self._tunnel is not None:
            # Its unregister must not land after the new tunnel registers.
            await self._tunnel.wait_closed()
        tunnel = VscodeTunnel(
            self._source, name, cli_data_dir=self._cli_data_dir, policy=self._policy
        )
        tunnel.start()
        self._tunnel = tunnel
        return tunnel

    def status(self) -> TunnelStatus:
        if self._tunnel is None:
            return TunnelStatus(False, "", "", None, 0, "")
        return self._tunnel.status()

    async def stop(self) -> None:
        """Stops and unregisters the tunnel."""
        tunnel = self.running()
        if tunnel is None:
            raise FailedPrecondition("no VS Code tunnel is running")
        tunnel.close()
        await tunnel.wait_closed()

    def close(self) -> None:
        if self._tunnel is not None:
            self._tunnel.close()

    async def wait_closed(self) -> None:
        if self._tunnel is not None:
            await self._tunnel.wait_closed()
