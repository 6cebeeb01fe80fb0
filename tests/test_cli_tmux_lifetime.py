"""`tether tmux`, `tether update` and `tether stop` against a real agent."""

import time
from pathlib import Path

import pytest

from tests.cli_harness import add_run, agent_thread, laptop, tether

__all__ = ["laptop"]  # the fixture, used by name


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ~/.tmux.conf of the person running the tests."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()


@pytest.mark.usefixtures("home")
def test_tmux_new_ls_rename_kill(laptop: Path) -> None:
    with agent_thread() as agent:
        add_run("train", laptop, agent.address)
        empty = tether("tmux", "train", "ls")
        assert empty.code == 0, empty.err
        assert "no tmux sessions on run train rank 0" in empty.out

        created = tether("tmux", "train", "new", "work", "--command", "sleep 60")
        assert created.code == 0, created.err
        assert "created tmux session work" in created.out
        again = tether("tmux", "train", "new", "work")
        assert "already exists" in again.out

        listed = tether("tmux", "train", "ls")
        assert listed.code == 0 and "work" in listed.out and "NAME" in listed.out

        renamed = tether("tmux", "train", "rename", "work", "train-1")
        assert renamed.code == 0, renamed.err
        listed = tether("tmux", "train", "ls")
        assert "train-1" in listed.out and "work" not in listed.out

        killed = tether("tmux", "train", "kill", "train-1")
        assert killed.code == 0, killed.err
        assert "no tmux sessions" in tether("tmux", "train", "ls").out


@pytest.mark.usefixtures("home")
def test_tmux_unknown_session_and_bad_name_are_clear_errors(laptop: Path) -> None:
    with agent_thread() as agent:
        add_run("train", laptop, agent.address)
        assert tether("tmux", "train", "new", "main", "--command", "sleep 60").code == 0
        unknown = tether("tmux", "train", "kill", "nope")
        assert unknown.code == 1
        assert "no tmux session" in unknown.err and "NOT_FOUND" in unknown.err
        missing = tether("tmux", "train", "rename", "nope", "other")
        assert missing.code == 1 and "NOT_FOUND" in missing.err
        bad = tether("tmux", "train", "new", "x; rm -rf ~")
        assert bad.code == 1
        assert "bad tmux session name" in bad.err and "INVALID_ARGUMENT" in bad.err
        assert "Traceback" not in bad.err + bad.out


def test_update_prints_the_new_expiry_and_the_agent_keeps_it(laptop: Path) -> None:
    with agent_thread() as agent:
        add_run("train", laptop, agent.address)
        result = tether("update", "train", "--max-duration", "5")
        deadline = agent.server.lifetime.deadline()
    assert result.code == 0, result.err
    assert deadline == pytest.approx(agent.server.started + 5 * 3600)
    assert "run train now ends at" in result.out
    assert time.strftime("%Y-%m-%d", time.localtime(deadline)) in result.out


@pytest.mark.parametrize(
    ("hours", "says"),
    [("0", "a max duration must be more than 0 hours"), ("1e-9", "the run has been up for")],
)
def test_update_shows_the_agents_refusal(laptop: Path, hours: str, says: str) -> None:
    with agent_thread(max_duration_hours=5.0) as agent:
        add_run("train", laptop, agent.address)
        result = tether("update", "train", "--max-duration", hours)
        assert agent.server.lifetime.deadline() == agent.server.started + 5 * 3600
    assert result.code == 1
    assert f"tether: the agent refused --max-duration {float(hours):g}: {says}" in result.err


def test_stop_asks_first_then_stops_and_a_second_stop_finds_it_gone(laptop: Path) -> None:
    with agent_thread() as agent:
        add_run("train", laptop, agent.address)
        declined = tether("stop", "train", input="n\n")
        assert declined.code == 1 and "Stop run train?" in declined.out
        assert not agent.server.stop_requested.is_set()

        stopped = tether("stop", "train", input="y\n")
        assert stopped.code == 0, stopped.err
        assert "run train is stopping" in stopped.out
        assert agent.stopped()

    again = tether("stop", "train", "-y")
    assert again.code == 255
    assert "cannot reach run train rank 0" in again.err
    assert "it may have stopped already" in again.err
