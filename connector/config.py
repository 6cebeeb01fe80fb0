"""The runs this connector knows, kept as TOML under the XDG config dir.

The file holds no secret: a run names its token *file*, which stays where the
person put it, so the config can be read, shared or backed up without leaking
access. It is still written 0600 because addresses and fingerprints describe
someone's infrastructure. Every change is a locked read-modify-write followed
by an atomic rename, so the CLI and the daemon pinning a fingerprint at the
same time cannot lose each other's edits or leave half a file.
"""

import contextlib
import dataclasses
import fcntl
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from connector.address import parse_address, parse_jump
from connector.errors import ConfigError
from protos.token import TokenFileError, read_token_file

_RUN_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
RANK_PLACEHOLDER = "{rank}"


# `tether forward list` and `tether forward stop` read these as subcommands.
RESERVED_RUN_NAMES = frozenset({"list", "stop"})


def validate_run_name(name: str) -> str:
    if not _RUN_NAME.fullmatch(name):
        raise ConfigError(f"run name {name!r} must be 1-64 letters, digits, '-', '_' or '.'")
    if name in RESERVED_RUN_NAMES:
        raise ConfigError(f"run name {name!r} is reserved (`tether forward {name}`)")
    return name


def normalize_fingerprint(text: str) -> str:
    """Lowercase hex without separators; accepts "SHA256:" and "AA:BB:..." forms."""
    hexdigits = text.strip().lower().removeprefix("sha256:").replace(":", "")
    if not _FINGERPRINT.fullmatch(hexdigits):
        raise ConfigError(f"fingerprint {text!r} is not a SHA-256 hex digest (64 hex digits)")
    return hexdigits


@dataclass(frozen=True, slots=True)
class RunConfig:
    """How to reach every rank of one run; validated on construction.

    Rank 0 is at `address` unless `rank_addresses` or `address_pattern` says
    otherwise. `fingerprint` pins rank 0's certificate; other ranks, which
    usually make their own certificates, are pinned in `rank_fingerprints`.
    """

    name: str
    address: str
    token_file: str
    fingerprint: str | None = None
    insecure_loopback: bool = False
    jump: str | None = None
    rank_addresses: Mapping[int, str] = field(default_factory=dict)
    address_pattern: str | None = None
    world_size: int | None = None
    rank_fingerprints: Mapping[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_run_name(self.name)
        parse_address(self.address)
        if not os.path.isabs(self.token_file):
            raise ConfigError(f"run {self.name}: token_file {self.token_file!r} is not absolute")
        if self.jump is not None:
            parse_jump(self.jump)
        for fp in [self.fingerprint, *self.rank_fingerprints.values()]:
            if fp is not None and normalize_fingerprint(fp) != fp:
                raise ConfigError(f"run {self.name}: fingerprint {fp!r} is not normalized")
        self._check_ranks()
        if self.insecure_loopback:
            for rank in self.ranks:
                if not parse_address(self.address_for(rank)).is_loopback:
                    raise ConfigError(
                        f"run {self.name}: insecure_loopback is only allowed for loopback "
                        f"addresses, and rank {rank} is at {self.address_for(rank)}"
                    )

    def _check_ranks(self) -> None:
        if (self.address_pattern is None) != (self.world_size is None):
            raise ConfigError(f"run {self.name}: address_pattern and world_size go together")
        if self.address_pattern is not None and RANK_PLACEHOLDER not in self.address_pattern:
            raise ConfigError(f"run {self.name}: address_pattern must contain {RANK_PLACEHOLDER}")
        if self.world_size is not None and self.world_size < 1:
            raise ConfigError(f"run {self.name}: world_size must be at least 1")
        ranks = self.ranks
        for rank, address in self.rank_addresses.items():
            if rank not in ranks:
                raise ConfigError(f"run {self.name}: rank {rank} is outside 0-{len(ranks) - 1}")
            parse_address(address, f"rank {rank} address")
        if self.address_pattern is None:
            missing = [r for r in ranks if r and r not in self.rank_addresses]
            if missing:
                raise ConfigError(f"run {self.name}: no address for ranks {missing}")
        for rank in ranks:
            parse_address(self.address_for(rank), f"rank {rank} address")

    @property
    def ranks(self) -> range:
        if self.world_size is not None:
            return range(self.world_size)
        return range(max(self.rank_addresses, default=0) + 1)

    def address_for(self, rank: int) -> str:
        """The HOST:PORT of `rank`'s agent; a rank the run does not have is an error."""
        ranks = self.ranks
        if rank not in ranks:
            have = "only rank 0" if len(ranks) == 1 else f"ranks 0-{len(ranks) - 1}"
            raise ConfigError(f"run {self.name} has {have}; rank {rank} is out of range")
        if rank in self.rank_addresses:
            return self.rank_addresses[rank]
        if self.address_pattern is not None:
            return self.address_pattern.replace(RANK_PLACEHOLDER, str(rank))
        return self.address

    def fingerprint_for(self, rank: int) -> str | None:
        return self.fingerprint if rank == 0 else self.rank_fingerprints.get(rank)

    def with_fingerprint(self, fingerprint: str | None, rank: int = 0) -> "RunConfig":
        """A copy with `rank`'s pin set (or removed, with None)."""
        self.address_for(rank)
        if rank == 0:
            return dataclasses.replace(self, fingerprint=fingerprint)
        pins = {r: fp for r, fp in self.rank_fingerprints.items() if r != rank}
        if fingerprint is not None:
            pins[rank] = fingerprint
        return dataclasses.replace(self, rank_fingerprints=pins)


# ------------------------------------------------------------------ paths


def _xdg_dir(variable: str, default: str) -> Path:
    """The XDG base dir; the spec says a relative value is to be ignored."""
    value = os.environ.get(variable, "")
    base = Path(value) if os.path.isabs(value) else Path.home() / default
    return base / "tether"


def config_path() -> Path:
    return _xdg_dir("XDG_CONFIG_HOME", ".config") / "config.toml"


def private_dir(path: Path) -> Path:
    """Creates `path` (and parents) if needed; a dir this creates is 0700."""
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def state_dir() -> Path:
    """The connector's state dir (session ids, forwards, logs), created 0700."""
    return private_dir(_xdg_dir("XDG_STATE_HOME", ".local/state"))


# ------------------------------------------------------------------ token


def _read_token_bytes(absolute: str) -> bytes:
    try:
        return read_token_file(absolute)
    except TokenFileError as exc:
        raise ConfigError(str(exc)) from None


def check_token_file(path: str) -> str:
    """The absolute path of a usable token file; group or other access is refused."""
    absolute = os.path.abspath(os.path.expanduser(path))
    _read_token_bytes(absolute)
    return absolute


def read_token(path: str) -> str:
    """The token, read fresh so that a rotated token is picked up on reconnect."""
    token = _read_token_bytes(os.path.abspath(os.path.expanduser(path)))
    if not token.isascii() or not token.decode().isprintable():
        raise ConfigError(f"token file {path} holds bytes that cannot go in a header")
    return token.decode()


# ------------------------------------------------------------------ TOML

T = TypeVar("T")


def _field(table: Mapping[str, Any], key: str, kind: type[T], where: str) -> T | None:
    value = table.get(key)
    if value is not None and not isinstance(value, kind):
        raise ConfigError(f"{where}: {key} must be a {kind.__name__}")
    return value


def _rank_table(table: Mapping[str, Any], key: str, where: str) -> dict[int, str]:
    raw = _field(table, key, dict, where) or {}
    out: dict[int, str] = {}
    for rank, value in raw.items():
        if not str(rank).isdigit() or not isinstance(value, str):
            raise ConfigError(f"{where}: {key} maps rank numbers to strings")
        out[int(rank)] = value
    return out


def _run_from_toml(name: str, table: Mapping[str, Any], where: str) -> RunConfig:
    where = f"{where} [runs.{name}]"
    address = _field(table, "address", str, where)
    token_file = _field(table, "token_file", str, where)
    if address is None or token_file is None:
        raise ConfigError(f"{where}: address and token_file are required")
    try:
        return RunConfig(
            name=name,
            address=address,
            token_file=token_file,
            fingerprint=_field(table, "fingerprint", str, where),
            insecure_loopback=bool(_field(table, "insecure_loopback", bool, where)),
            jump=_field(table, "jump", str, where),
            rank_addresses=_rank_table(table, "rank_addresses", where),
            address_pattern=_field(table, "address_pattern", str, where),
            world_size=_field(table, "world_size", int, where),
            rank_fingerprints=_rank_table(table, "rank_fingerprints", where),
        )
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _run_to_toml(run: RunConfig) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for f in dataclasses.fields(run):
        value = getattr(run, f.name)
        if f.name == "name" or value is None or value == {}:
            continue
        if isinstance(value, Mapping):
            value = {str(rank): v for rank, v in sorted(value.items())}
        table[f.name] = value
    return table


def load_config() -> dict[str, RunConfig]:
    """Every configured run by name; a missing file is an empty config."""
    path = config_path()
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    runs = _field(document, "runs", dict, str(path)) or {}
    return {name: _run_from_toml(name, table, str(path)) for name, table in runs.items()}


def save_config(runs: Mapping[str, RunConfig]) -> None:
    """Replaces the config file atomically, 0600, in a 0700 dir."""
    path = config_path()
    private_dir(path.parent)
    document = {"runs": {name: _run_to_toml(runs[name]) for name in sorted(runs)}}
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            tomli_w.dump(document, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def _editing() -> Iterator[dict[str, RunConfig]]:
    """Yields the runs to modify in place; saved when the block ends normally."""
    lock_path = private_dir(config_path().parent) / ".config.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        runs = load_config()
        yield runs
        save_config(runs)
    finally:
        os.close(fd)


# ------------------------------------------------------------------ runs


def _unknown_run(name: str, runs: Mapping[str, RunConfig]) -> ConfigError:
    known = ", ".join(sorted(runs)) or "none; add one with `tether runs add`"
    return ConfigError(f"no run named {name!r}; configured runs: {known}")


def add_run(run: RunConfig) -> bool:
    """Stores `run`, replacing one of the same name; True when it replaced one."""
    with _editing() as runs:
        replaced = run.name in runs
        runs[run.name] = run
    return replaced


def remove_run(name: str) -> RunConfig:
    with _editing() as runs:
        if name not in runs:
            raise _unknown_run(name, runs)
        return runs.pop(name)


def get_run(name: str | None) -> RunConfig:
    """The named run; with no name, the only configured run, as mcli does."""
    runs = load_config()
    if name is not None:
        if name not in runs:
            raise _unknown_run(name, runs)
        return runs[name]
    if len(runs) == 1:
        return next(iter(runs.values()))
    if not runs:
        raise ConfigError("no runs configured; add one with `tether runs add NAME ...`")
    raise ConfigError(f"several runs are configured ({', '.join(sorted(runs))}); name one")


def pin_fingerprint(name: str, fingerprint: str | None, rank: int = 0) -> RunConfig:
    """Records (or, with None, forgets) the certificate fingerprint of `rank`."""
    pin = None if fingerprint is None else normalize_fingerprint(fingerprint)
    with _editing() as runs:
        if name not in runs:
            raise _unknown_run(name, runs)
        runs[name] = runs[name].with_fingerprint(pin, rank)
        return runs[name]
