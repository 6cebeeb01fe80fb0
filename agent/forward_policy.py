"""Which targets a forward may reach, decided once per connection.

A forward is a way into the container's network, so the target is checked
after name resolution, on the addresses that will actually be dialled: a host
is resolved once, every address it resolves to is vetted, and the connection
is made to those vetted addresses and nothing else (no second lookup that a
DNS answer could change). Vetting the resolved address is what catches every
spelling of a forbidden one: decimal, octal and hex IPv4, IPv4-mapped IPv6,
and names that resolve to it all come out of getaddrinfo as the same address.

By default only the container's loopback is allowed; other hosts only when
the agent's allowlist names them (an address, a network, or a host name).
Link-local and cloud metadata addresses and the unspecified address are
refused whatever the allowlist says.
"""

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from agent.errors import InvalidArgument, PermissionDenied

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_HOST = "127.0.0.1"
ALWAYS_REFUSED: tuple[tuple[Network, str], ...] = (
    (ipaddress.ip_network("169.254.0.0/16"), "a link-local or metadata address"),
    (ipaddress.ip_network("fe80::/10"), "a link-local address"),
    (ipaddress.ip_network("fd00:ec2::254/128"), "the cloud metadata address"),
)


@dataclass(frozen=True, slots=True)
class Target:
    """A vetted target: `addresses` are the only ones to connect to, in order."""

    host: str
    port: int
    addresses: tuple[str, ...]


def format_endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 spelling carries (mapped, compatible, 6to4)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    packed = int(address)
    if packed >> 32 == 0 and packed > 1:  # IPv4-compatible ::a.b.c.d (not :: or ::1)
        return ipaddress.IPv4Address(packed & 0xFFFFFFFF)
    return None


def _refusal(address: Address) -> str | None:
    """Why `address` is refused whatever the allowlist says, or None."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = _refusal(embedded)
            return f"{reason} (inside {address})" if reason else None
    if address.is_unspecified:
        return "the unspecified address"
    for network, reason in ALWAYS_REFUSED:
        if address.version == network.version and address in network:
            return reason
    return None


def _as_dialled(address: Address) -> Address:
    """IPv4-mapped IPv6 is dialled as the IPv4 address it maps."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class ForwardPolicy:
    """The agent's target rules: loopback, plus an allowlist of addresses,
    networks (CIDR) and host names."""

    def __init__(self, allowlist: Iterable[str] = ()) -> None:
        self._networks: list[Network] = []
        self._names: set[str] = set()
        for entry in allowlist:
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self._names.add(entry.strip().lower().rstrip("."))

    def _allowed(self, host: str, address: Address) -> bool:
        if address.is_loopback:
            return True
        if host.lower().rstrip(".") in self._names:
            return True
        return any(
            address.version == network.version and address in network for network in self._networks
        )

    async def vet(self, host: str, port: int) -> Target:
        """Resolves `host` once and returns the target to dial; raises
        PermissionDenied (with the reason) or InvalidArgument."""
        if not 1 <= port <= 65535:
            raise InvalidArgument(f"target port {port} is out of range (1..65535)")
        host = host or DEFAULT_HOST
        addresses = await _resolve(host, port)
        vetted: list[str] = []
        for raw in addresses:
            address = _as_dialled(ipaddress.ip_address(raw))
            reason = _refusal(address)
            if reason is not None:
                raise PermissionDenied(f"forward target {host} ({address}) is refused: {reason}")
            if not self._allowed(host, address):
                raise PermissionDenied(
                    f"forward target {host} ({address}) is refused: only the container's "
                    "loopback and the agent's forward allowlist may be reached"
                )
            if str(address) not in vetted:
                vetted.append(str(address))
        return Target(host, port, tuple(vetted))


async def _resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, IPv4 first (as the default target is)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise InvalidArgument(f"cannot resolve forward target {host!r}: {exc}") from exc
    ordered = sorted(infos, key=lambda info: info[0] != socket.AF_INET)
    addresses = [str(info[4][0]).split("%", 1)[0] for info in ordered]
    if not addresses:
        raise InvalidArgument(f"forward target {host!r} resolves to no address")
    return addresses
