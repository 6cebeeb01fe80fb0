"""Parsing of the network addresses a person types: HOST:PORT and jump hosts.

IPv6 literals take brackets, as in URLs and ssh -L ("[::1]:7777"), because a
bare "::1:7777" cannot be split unambiguously.
"""

import ipaddress
import re
from dataclasses import dataclass

from connector.errors import ConfigError

_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9_])?")
_USER = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]*")
SSH_PORT = 22


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """True for "localhost" and every loopback IP literal (127/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_port(text: str, what: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"{what}: port {text!r} is not a number from 1 to 65535")
    return int(text)


def parse_host(text: str, what: str) -> str:
    """A host name or IP literal, brackets already removed."""
    if ":" in text:
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            raise ConfigError(f"{what}: {text!r} is not an IPv6 address") from None
        return text
    if not _HOST_NAME.fullmatch(text):
        raise ConfigError(f"{what}: {text!r} is not a host name or IP address")
    return text


def _split_host_port(text: str, what: str) -> tuple[str, str | None]:
    """Splits "host", "host:port", "[v6]" or "[v6]:port"; the port may be absent."""
    if text.startswith("["):
        close = text.find("]")
        rest = text[close + 1 :]
        if close < 0 or (rest and not rest.startswith(":")):
            raise ConfigError(f"{what}: {text!r} has unbalanced brackets; write [IPv6]:PORT")
        return text[1:close], rest[1:] if rest else None
    if text.count(":") > 1:
        raise ConfigError(f"{what}: put an IPv6 address in brackets, as in [::1]:7777")
    host, sep, port = text.partition(":")
    return host, port if sep else None


def parse_address(text: str, what: str = "address") -> Address:
    """HOST:PORT, with an IPv6 host in brackets; `what` names the field in errors."""
    host, port = _split_host_port(text.strip(), what)
    if port is None:
        raise ConfigError(f"{what}: {text!r} needs a port, as in HOST:PORT")
    return Address(parse_host(host, what), parse_port(port, what))


@dataclass(frozen=True, slots=True)
class JumpHost:
    """An SSH jump host: `[USER@]HOST[:PORT]`; no user means ssh's default."""

    user: str | None
    host: str
    port: int = SSH_PORT

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port != SSH_PORT else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{user}{host}{port}"


def parse_jump(text: str) -> JumpHost:
    what = "jump host"
    user, at, rest = text.strip().rpartition("@")
    if at and not _USER.fullmatch(user):
        raise ConfigError(f"{what}: {user!r} is not a user name")
    host, port = _split_host_port(rest, what)
    return JumpHost(
        user or None,
        parse_host(host, what),
        SSH_PORT if port is None else parse_port(port, what),
    )
