"""The tether block in ~/.ssh/config, so that ssh, scp, rsync, sftp and VS
Code Remote-SSH reach a run by name (`ssh tether-RUN`, `tether-RUN-r1`).

Everything tether writes sits between two marker lines, one section per
run; updating a run rewrites its section and nothing else, and text outside
the block is never touched. The file is backed up before every change. The
block goes first in a new file: ssh takes the first value it finds, so a
`Host *` of the person's own further down cannot override the user, key or
known_hosts file of a run; a `Host *` line closes the block so that what
followed it before still applies to every host.

Each entry pins the agent's host key through HostKeyAlias in a known_hosts
file of tether's own, so strict host key checking holds even though every
run is reached through a ProxyCommand and has no address of its own.
"""

import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from connector.errors import ConfigError

BEGIN = "# >>> tether managed block >>>"
END = "# <<< tether managed block <<<"
_NOTE = "# Written by `tether ssh-config`: edits inside this block are replaced."
_RUN_HEADER = "# run "
_CLOSER = "Host *"
BACKUP_SUFFIX = ".tether-backup"
_HOST_LINE = re.compile(r"^\s*host(?:\s*=\s*|\s+)(.*)$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class RankHost:
    """One rank's agent as its SSH server described itself."""

    rank: int
    user: str
    host_key: str  # "type base64"


@dataclass(frozen=True, slots=True)
class Files:
    """The tether-managed files every entry names."""

    identity: Path
    known_hosts: Path


def run_alias(run: str) -> str:
    return f"tether-{run}"


def rank_alias(run: str, rank: int) -> str:
    return f"tether-{run}-r{rank}"


def _value(text: str) -> str:
    """`text` as one ssh_config argument: ssh expands %-tokens, so % is
    doubled, and an argument with blanks is quoted."""
    text = text.replace("%", "%%")
    return f'"{text}"' if any(c.isspace() for c in text) else text


PREFERRED_CIPHERS = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com"


def render_section(run: str, hosts: Sequence[RankHost], files: Files, tether: str) -> list[str]:
    """The block's lines for `run`: rank 0 also answers to tether-RUN."""
    lines = [f"{_RUN_HEADER}{run}"]
    for host in hosts:
        alias = rank_alias(run, host.rank)
        names = f"{run_alias(run)} {alias}" if host.rank == 0 else alias
        proxy = shlex.join([tether, "proxy", run, "--rank", str(host.rank)])
        lines += [
            f"Host {names}",
            f"    User {host.user}",
            f"    ProxyCommand {proxy.replace('%', '%%')}",
            f"    IdentityFile {_value(str(files.identity))}",
            "    IdentitiesOnly yes",
            f"    UserKnownHostsFile {_value(str(files.known_hosts))}",
            f"    HostKeyAlias {alias}",
            "    StrictHostKeyChecking yes",
            # The bytes already travel inside the link's TLS; AES-GCM (with
            # AES-NI on both ends) costs the Python server far less per GiB
            # than ssh's default chacha20.
            f"    Ciphers {PREFERRED_CIPHERS}",
        ]
    return lines


def _split(text: str) -> tuple[list[str], list[str] | None, list[str]]:
    """The lines before the block, inside it (None: no block), and after it."""
    lines = text.splitlines()
    if BEGIN not in lines:
        return lines, None, []
    start = lines.index(BEGIN)
    if END not in lines[start:]:
        raise ConfigError(f"the ssh config has {BEGIN!r} but no {END!r} after it; fix it by hand")
    end = lines.index(END, start)
    return lines[:start], lines[start + 1 : end], lines[end + 1 :]


def _sections(block: list[str]) -> dict[str, list[str]]:
    """Each run's lines in the block, in order."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in block:
        if line.startswith(_RUN_HEADER):
            current = sections.setdefault(line.removeprefix(_RUN_HEADER).strip(), [])
        if current is not None and line != _CLOSER:
            current.append(line)
    return sections


def merge(text: str, run: str, section: list[str]) -> str:
    """`text` with `run`'s section in the block replaced (or added)."""
    before, block, after = _split(text)
    sections = _sections(block or [])
    sections[run] = section
    new_block = [
        BEGIN,
        _NOTE,
        *(line for lines in sections.values() for line in lines),
        _CLOSER,
        END,
    ]
    if block is None:
        result = new_block + (["", *before] if before else [])
    else:
        result = before + new_block + after
    return "\n".join(result) + "\n"


def stray_entries(text: str) -> list[str]:
    """Warnings for `Host tether-...` lines outside the block: they are left
    alone, but one above the block would shadow tether's entries."""
    before, block, after = _split(text)
    offset = len(before) + (len(block) + 2 if block is not None else 0)
    numbered = list(enumerate(before, 1)) + list(enumerate(after, offset + 1))
    warnings = []
    for number, line in numbered:
        match = _HOST_LINE.match(line)
        if match and any(p.lower().startswith("tether-") for p in match.group(1).split()):
            warnings.append(
                f"line {number}: {line.strip()!r} is outside tether's managed block; "
                "left alone (it may take precedence over tether's entries)"
            )
    return warnings


def _atomic_write(path: Path, text: str, mode: int) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_config(path: Path, text: str) -> Path | None:
    """Writes the ssh config (through a symlink to its target), backing up
    the old one first; returns the backup's path, None when nothing changed
    or there was no file."""
    target = path.resolve()
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    old = target.read_text() if target.exists() else None
    if old == text:
        return None
    backup = None
    if old is not None:
        backup = target.with_name(target.name + BACKUP_SUFFIX)
        shutil.copy2(target, backup)
    mode = target.stat().st_mode & 0o777 if old is not None else 0o600
    _atomic_write(target, text, mode)
    return backup


def update_known_hosts(path: Path, keys: Mapping[str, str]) -> None:
    """Pins `keys` (alias -> "type base64") in tether's known_hosts file,
    replacing earlier keys of the same aliases."""
    kept = []
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if line.split(" ", 1)[0] not in keys]
    lines = kept + [f"{alias} {key}" for alias, key in keys.items()]
    _atomic_write(path, "\n".join(lines) + "\n", 0o600)


def apply(
    config_path: Path, run: str, hosts: Sequence[RankHost], files: Files, tether: str
) -> tuple[list[str], Path | None]:
    """Pins the host keys and writes `run`'s entries; returns the warnings
    and the backup's path."""
    update_known_hosts(files.known_hosts, {rank_alias(run, h.rank): h.host_key for h in hosts})
    text = config_path.read_text() if config_path.exists() else ""
    warnings = stray_entries(text)
    backup = write_config(config_path, merge(text, run, render_section(run, hosts, files, tether)))
    return warnings, backup
