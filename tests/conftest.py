"""Shared pytest fixtures: fixtures only, each small.

Other fixtures will be added here by others; helpers they build on live in
their own tests/ modules (as the jump hosts live in tests/sshd.py).
"""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sshd import SshJumpHost, asyncssh_server, openssh_server
from tests.vscode_harness import Downloads


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


@pytest.fixture
def downloads() -> Iterator[Downloads]:
    """A loopback HTTP server for the stand-in VS Code CLI's tarball."""
    server = Downloads()
    yield server
    server.close()


@pytest.fixture
def fake_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the stand-in `code` records its calls and looks for the login
    approval; the agent passes the variable on to it."""
    state = tmp_path / "fake"
    monkeypatch.setenv("FAKE_CODE_STATE", str(state))
    return state
