"""Shared pytest fixtures: fixtures only, each small.

Other fixtures will be added here by others; helpers they build on live in
their own tests/ modules (as the jump hosts live in tests/sshd.py).
"""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sshd import SshJumpHost, asyncssh_server, openssh_server


@pytest.fixture
def openssh_jump_host(tmp_path: Path) -> Iterator[SshJumpHost]:
    """OpenSSH's sshd on 127.0.0.1, logged in to as the current user."""
    with openssh_server(tmp_path / "openssh") as host:
        yield host


@pytest.fixture
def asyncssh_jump_host(tmp_path: Path) -> Iterator[SshJumpHost]:
    """An asyncssh server on 127.0.0.1 that allows direct-tcpip to loopback only."""
    with asyncssh_server(tmp_path / "asyncssh") as host:
        yield host


@pytest.fixture(params=["openssh", "asyncssh"])
def jump_host(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SshJumpHost]:
    """Each kind of jump host in turn, for tests that must work through both."""
    start = openssh_server if request.param == "openssh" else asyncssh_server
    with start(tmp_path / request.param) as host:
        yield host
