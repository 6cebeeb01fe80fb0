"""The seam between a Link and the bytes under it.

A Link does not care how its TCP bytes reach the agent: straight, or through
an SSH jump host (connector/ssh.py, the only module that imports asyncssh,
forwards a local loopback port to the agent). A dialer answers one question
per connection attempt: which HOST:PORT should gRPC connect to now?
"""

from typing import Protocol


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
