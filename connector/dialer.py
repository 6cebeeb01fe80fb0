"""The seam between a Link and the bytes under it.

A Link does not care how its TCP bytes reach the agent: straight, or through
an SSH jump host (connector/ssh.py, the only module that imports asyncssh,
forwards a local loopback port to the agent). A dialer answers one question
per connection attempt: which HOST:PORT should gRPC connect to now?
"""

import asyncio
from typing import Protocol

from connector import tls
from connector.address import parse_address, parse_jump
from connector.config import RunConfig
from connector.errors import TetherError

# How long a reachability probe may take before it counts as "no answer".
PROBE_TIMEOUT = 1.0


class Dialer(Protocol):
    """Called once per connection attempt. `dial` raises LinkError for what a
    retry may fix (the jump host is down) and FatalLinkError for what it
    cannot (a host key mismatch); it re-establishes whatever it needs."""

    async def dial(self) -> str: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class DirectDialer:
    """Straight TCP to the agent's own address."""

    def __init__(self, address: str) -> None:
        self._address = address

    async def dial(self) -> str:
        return self._address

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


def dialer_for(run: RunConfig, address: str) -> Dialer:
    """Straight to the agent, or through the run's jump host."""
    if run.jump is None:
        return DirectDialer(address)
    from connector.ssh import JumpDialer  # asyncssh is only loaded for jump hosts

    return JumpDialer(parse_jump(run.jump), parse_address(address))


async def agent_answers(dialer: Dialer, *, tls_on: bool) -> bool:
    """A cheap sign of the agent itself: its TLS handshake, or with
    plaintext a TCP connection (a relay in the path may accept that)."""
    try:
        address = await dialer.dial()
        if tls_on:
            await tls.fetch_certificate(address, PROBE_TIMEOUT)
            return True
        host, _, port = address.rpartition(":")
        # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a
        # cancel that lands as the connection fails, and close() then hangs.
        async with asyncio.timeout(PROBE_TIMEOUT):
            _, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    except (TetherError, OSError, TimeoutError):
        return False
    writer.close()
    return True
