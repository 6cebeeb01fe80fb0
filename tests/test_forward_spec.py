"""Forward SPECs as ssh -L writes them, and the local listeners' clear errors."""

import asyncio
import os
import socket
from pathlib import Path

import pytest

from connector.errors import ConfigError
from connector.forwarder import ANY_BINDS, LOOPBACK_BINDS, Forwarder, ForwardSpec, parse_spec
from tests.forward_harness import free_port, run_async


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8888", ("8888", LOOPBACK_BINDS, 8888, "", 8888)),
        ("9000:8888", ("9000:8888", LOOPBACK_BINDS, 9000, "", 8888)),
        ("9000:localhost:8888", ("9000:localhost:8888", LOOPBACK_BINDS, 9000, "localhost", 8888)),
        ("9000:[::1]:8888", ("9000:[::1]:8888", LOOPBACK_BINDS, 9000, "::1", 8888)),
        ("0.0.0.0:9000:db:5432", ("0.0.0.0:9000:db:5432", ("0.0.0.0",), 9000, "db", 5432)),
        ("[::]:9000:[fd00::5]:22", ("[::]:9000:[fd00::5]:22", ("::",), 9000, "fd00::5", 22)),
        ("*:9000:h:1", ("*:9000:h:1", ANY_BINDS, 9000, "h", 1)),
        ("localhost:9000:h:1", ("localhost:9000:h:1", LOOPBACK_BINDS, 9000, "h", 1)),
        ("0:8888", ("0:8888", LOOPBACK_BINDS, 0, "", 8888)),
    ],
)
def test_spec_forms(text: str, expected: tuple[object, ...]) -> None:
    assert parse_spec(text) == ForwardSpec(*expected)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "local port '' is not a port"),
        ("http", "local port 'http' is not a port"),
        ("70000", "local port '70000' is not a port"),
        ("0", "remote port '0' is not a port"),
        ("8888:0", "remote port '0' is not a port"),
        ("-1:80", "local port '-1' is not a port"),
        ("8888:", "remote port '' is not a port"),
        ("9000::8888", "the remote host is empty"),
        ("9000:[::1:8888", "an unclosed '\\['"),
        ("a:b:c:d:e", "expected PORT, LOCAL:REMOTE"),
        ("::1:9000:h:80", "expected PORT"),
        ("bad host:9000:h:80", "has spaces"),
    ],
)
def test_malformed_spec_says_why(text: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        parse_spec(text)


class _NoLink:
    """A link that never comes up: listeners do not need one."""

    metadata = ()

    async def channel(self) -> None:
        await asyncio.Event().wait()


def test_local_port_in_use_names_the_port_and_the_holder(tmp_path: Path) -> None:
    async def main() -> None:
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        try:
            forwarder = Forwarder(_NoLink(), parse_spec(f"{port}:80"))  # type: ignore[arg-type]
            with pytest.raises(ConfigError) as caught:
                await forwarder.start()
            message = str(caught.value)
            assert f"local port {port} is already in use" in message
            assert f"(pid {os.getpid()})" in message
        finally:
            holder.close()

    run_async(main)


def test_listens_on_both_loopbacks_with_one_port() -> None:
    async def main() -> None:
        port = free_port()
        async with Forwarder(_NoLink(), parse_spec(f"{port}:80")) as forwarder:  # type: ignore[arg-type]
            assert forwarder.port == port
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            if socket.has_ipv6:
                with socket.socket(socket.AF_INET6) as probe:
                    probe.connect(("::1", port))

    run_async(main)
