"""What `tether-agent serve` was told, in one immutable place."""

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import InvalidArgument

MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class AgentConfig:
    host: str = "0.0.0.0"
    port: int = 7777
    token: bytes = b""
    state_dir: Path = Path("tether-agent-state")
    run_name: str = "run"
    rank: int = 0
    world_size: int = 1
    insecure_loopback: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    output_buffer: int = 8 * MiB
    idle_timeout: float = 12 * 3600.0
    max_sessions: int = 64
    max_message: int = 4 * MiB
    # Hours from the run's start; None: no deadline (the agent runs until stopped).
    max_duration_hours: float | None = None
    # Seconds before the deadline at which attached sessions are warned.
    deadline_warnings: tuple[float, ...] = (600.0, 60.0)
    forward_allowlist: tuple[str, ...] = field(default_factory=tuple)
    max_forwards: int = 4096
    forward_grace: float = 60.0
    forward_buffer: int = 4 * MiB
    # The VS Code CLI: a configured binary, or a download URL (None: the
    # official stable build) with an optional sha256, and the tunnel's data dir.
    vscode_cli: str | None = None
    vscode_url: str | None = None
    vscode_sha256: str | None = None
    vscode_data_dir: str | None = None

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT, [V6]:PORT."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidArgument(f"--listen wants HOST:PORT, got {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)
