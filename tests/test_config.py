"""Run configuration: the TOML file, rank addresses, and `tether runs`."""

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from connector import config
from connector.address import parse_address, parse_jump
from connector.cli.app import app
from connector.config import RunConfig
from connector.errors import ConfigError

FP_A = "a" * 64
FP_B = "0123456789abcdef" * 4


@pytest.fixture(autouse=True)
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own config and state dirs."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path


@pytest.fixture
def token_file(tmp_path: Path) -> str:
    path = tmp_path / "token"
    path.write_text("secret-token\n")
    path.chmod(0o600)
    return str(path)


def make_run(token_file: str, name: str = "train", **fields: Any) -> RunConfig:
    return RunConfig(name=name, address="node0.example:7777", token_file=token_file, **fields)


def test_round_trip_keeps_every_field_and_writes_0600(token_file: str) -> None:
    run = make_run(
        token_file,
        fingerprint=FP_A,
        jump="alice@bastion:2222",
        rank_addresses={1: "node1.example:7777", 2: "[fd00::2]:7777"},
        rank_fingerprints={2: FP_B},
    )
    assert config.add_run(run) is False
    assert config.load_config() == {"train": run}

    path = config.config_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert "secret-token" not in path.read_text()
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_replacing_and_removing(token_file: str) -> None:
    config.add_run(make_run(token_file))
    assert config.add_run(make_run(token_file, fingerprint=FP_A)) is True
    assert config.get_run("train").fingerprint == FP_A
    assert config.remove_run("train").name == "train"
    assert config.load_config() == {}
    with pytest.raises(ConfigError, match="no run named 'train'"):
        config.remove_run("train")


def test_default_run_is_the_only_one(token_file: str) -> None:
    with pytest.raises(ConfigError, match="no runs configured"):
        config.get_run(None)
    config.add_run(make_run(token_file))
    assert config.get_run(None).name == "train"
    config.add_run(make_run(token_file, name="eval"))
    with pytest.raises(ConfigError, match=r"several runs are configured \(eval, train\)"):
        config.get_run(None)
    with pytest.raises(ConfigError, match="configured runs: eval, train"):
        config.get_run("nope")


def test_rank_addresses_explicit_and_by_pattern(token_file: str) -> None:
    explicit = make_run(token_file, rank_addresses={1: "node1:7777"})
    assert [explicit.address_for(r) for r in explicit.ranks] == ["node0.example:7777", "node1:7777"]
    with pytest.raises(ConfigError, match=r"has ranks 0-1; rank 2 is out of range"):
        explicit.address_for(2)

    pattern = make_run(token_file, address_pattern="node{rank}.example:7777", world_size=3)
    assert pattern.address_for(2) == "node2.example:7777"
    with pytest.raises(ConfigError, match="rank 3 is out of range"):
        pattern.address_for(3)
    with pytest.raises(ConfigError, match="only rank 0; rank 1 is out of range"):
        make_run(token_file).address_for(1)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"rank_addresses": {2: "node2:7777"}}, r"no address for ranks \[1\]"),
        ({"address_pattern": "node:7777", "world_size": 2}, "must contain {rank}"),
        ({"address_pattern": "node{rank}:7777"}, "go together"),
        ({"insecure_loopback": True}, "only allowed for loopback"),
        ({"fingerprint": "AB" * 32}, "not normalized"),
        ({"jump": "a b@host"}, "not a user name"),
    ],
)
def test_invalid_runs_are_refused(token_file: str, fields: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        make_run(token_file, **fields)


@pytest.mark.parametrize("name", ["", "a" * 65, "x; rm", "ü", "a/b"])
def test_bad_run_names(token_file: str, name: str) -> None:
    with pytest.raises(ConfigError, match="must be 1-64 letters"):
        make_run(token_file, name=name)


def test_addresses_and_jump_hosts_parse() -> None:
    assert str(parse_address("[::1]:7777")) == "[::1]:7777"
    assert parse_address("[::1]:7777").is_loopback
    assert parse_address("127.0.0.2:1").is_loopback
    assert not parse_address("10.0.0.1:1").is_loopback
    for bad, error in [
        ("::1:7777", "brackets"),
        ("host", "needs a port"),
        ("host:0", "1 to 65535"),
        ("host:http", "1 to 65535"),
        ("[::1:7777", "unbalanced"),
        ("bad_host!:1", "not a host name"),
    ]:
        with pytest.raises(ConfigError, match=error):
            parse_address(bad)
    jump = parse_jump("alice@[fd00::1]:2200")
    assert (jump.user, jump.host, jump.port) == ("alice", "fd00::1", 2200)
    assert str(parse_jump("bastion")) == "bastion"
    assert parse_jump(str(jump)) == jump


def test_fingerprint_pins_per_rank(token_file: str) -> None:
    config.add_run(make_run(token_file, rank_addresses={1: "node1:7777"}))
    config.pin_fingerprint("train", "SHA256:" + ":".join(["AA"] * 32), rank=0)
    config.pin_fingerprint("train", FP_B, rank=1)
    run = config.get_run("train")
    assert (run.fingerprint_for(0), run.fingerprint_for(1)) == (FP_A, FP_B)
    config.pin_fingerprint("train", None, rank=1)
    assert config.get_run("train").fingerprint_for(1) is None
    with pytest.raises(ConfigError, match="out of range"):
        config.pin_fingerprint("train", FP_A, rank=5)


def test_token_file_checks(tmp_path: Path, token_file: str) -> None:
    assert config.read_token(token_file) == "secret-token"
    os.chmod(token_file, 0o640)
    with pytest.raises(ConfigError, match=f"run: chmod 600 {token_file}"):
        config.read_token(token_file)
    with pytest.raises(ConfigError, match="No such file"):
        config.check_token_file(str(tmp_path / "missing"))


def test_malformed_file_names_itself() -> None:
    path = config.config_path()
    path.parent.mkdir(parents=True)
    path.write_text("[runs.x]\naddress = 7\n")
    with pytest.raises(ConfigError, match=r"\[runs.x\]: address must be a str"):
        config.load_config()


# ------------------------------------------------------------------ the CLI


def tether(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_cli_add_list_remove(token_file: str) -> None:
    code, out, _ = tether(
        "runs", "add", "train", "--address", "node0:7777", "--token-file", token_file,
        "--rank-address", "1=[fd00::1]:7777", "--jump", "alice@bastion",
    )  # fmt: skip
    assert code == 0, out
    assert "added run train at node0:7777" in out
    assert "pinned on first connect" in out

    code, out, _ = tether("runs", "list")
    assert code == 0
    assert "train" in out and "node0:7777" in out and "alice@bastion" in out

    code, out, _ = tether("runs", "list", "--json")
    assert json.loads(out) == [
        {
            "name": "train",
            "addresses": {"0": "node0:7777", "1": "[fd00::1]:7777"},
            "token_file": token_file,
            "fingerprints": {},
            "insecure_loopback": False,
            "jump": "alice@bastion",
        }
    ]

    assert tether("runs", "remove", "train")[:2] == (0, "removed run train\n")
    code, out, err = tether("runs", "remove", "train")
    assert code == 1
    assert (
        err
        == "tether: no run named 'train'; configured runs: none; add one with `tether runs add`\n"
    )


def test_cli_refuses_a_token_file_others_can_read(token_file: str) -> None:
    os.chmod(token_file, 0o644)
    code, _, err = tether("runs", "add", "x", "--address", "h:1", "--token-file", token_file)
    assert code == 1
    assert f"run: chmod 600 {token_file}" in err
    assert config.load_config() == {}


def test_cli_insecure_loopback_only_on_loopback(token_file: str) -> None:
    args = ["runs", "add", "x", "--token-file", token_file, "--insecure-loopback"]
    code, _, err = tether(*args, "--address", "10.1.2.3:7777")
    assert code == 1
    assert "only allowed for loopback" in err
    code, out, _ = tether(*args, "--address", "[::1]:7777")
    assert code == 0
    assert config.get_run("x").insecure_loopback
    assert "pinned" not in out


def test_cli_address_pattern_and_fingerprint(token_file: str) -> None:
    code, _, err = tether(
        "runs", "add", "big", "--token-file", token_file, "--address-pattern",
        "node{rank}:7777", "--world-size", "4", "--fingerprint", FP_A.upper(),
    )  # fmt: skip
    assert code == 0, err
    run = config.get_run("big")
    assert (run.address, run.address_for(3), run.fingerprint) == ("node0:7777", "node3:7777", FP_A)
    code, _, err = tether("runs", "add", "y", "--token-file", token_file, "--address", "h:99999")
    assert (code, err) == (1, "tether: address: port '99999' is not a number from 1 to 65535\n")
