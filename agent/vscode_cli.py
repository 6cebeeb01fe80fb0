"""Finding the VS Code `code` CLI, downloading and caching it when the image lacks it.

The agent must bring up a tunnel in an image nobody prepared for it, so the CLI
is looked for where a person may have put it (a configured path, PATH), then in
the agent's own cache, and only then fetched. The fetch is the one place where
the agent pulls an executable from the network, so it insists on TLS (plain
http only to loopback, which is how the tests serve it), checks a configured
sha256, and unpacks nothing that could land outside its own directory.
"""

import asyncio
import hashlib
import http.client
import ipaddress
import os
import platform
import shutil
import ssl
import tarfile
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import FailedPrecondition, Unavailable

_CHUNK = 256 * 1024
_TIMEOUT = 60.0

# platform.machine() -> the platform part of the official download URL. The
# alpine builds are statically linked, so they run on any Linux userland.
_LINUX_BUILDS = {
    "x86_64": "cli-alpine-x64",
    "amd64": "cli-alpine-x64",
    "aarch64": "cli-alpine-arm64",
    "arm64": "cli-alpine-arm64",
    "armv7l": "cli-linux-armhf",
}


@dataclass(frozen=True, slots=True)
class Progress:
    """How far the CLI download has come; total is 0 when the server did not say."""

    stage: str
    done_bytes: int
    total_bytes: int


ProgressFn = Callable[[Progress], None]


@dataclass(frozen=True, slots=True)
class CliSource:
    """Where the `code` CLI may come from.

    cache_dir: the agent's own copy lives at cache_dir/bin/code (the agent uses
      <state_dir>/vscode). path: a configured CLI, used as is. url: None means
      the official stable build for this OS and architecture. sha256: the hex
      digest the downloaded archive must have. search_path: the PATH to search;
      None means the agent's own.
    """

    cache_dir: Path
    path: str | None = None
    url: str | None = None
    sha256: str | None = None
    search_path: str | None = None

    @property
    def cached_cli(self) -> Path:
        return self.cache_dir / "bin" / "code"


def default_cli_url(system: str | None = None, machine: str | None = None) -> str:
    """The official stable CLI for this machine (a tar.gz holding one `code` binary)."""
    system = system or platform.system()
    machine = (machine or platform.machine()).lower()
    build = _LINUX_BUILDS.get(machine) if system == "Linux" else None
    if build is None:
        raise FailedPrecondition(
            f"there is no default VS Code CLI download for {system} {machine}; "
            "configure the CLI's path or a download URL"
        )
    return f"https://update.code.visualstudio.com/latest/{build}/stable"


async def locate_cli(source: CliSource, progress: ProgressFn) -> str:
    """The path of a runnable `code`: configured, on PATH, cached, or downloaded now."""
    if source.path:
        if not os.access(source.path, os.X_OK):
            raise FailedPrecondition(
                f"the configured VS Code CLI {source.path!r} is missing or not executable"
            )
        return source.path
    on_path = shutil.which("code", path=source.search_path)
    if on_path:
        return on_path
    if os.access(source.cached_cli, os.X_OK):
        return str(source.cached_cli)
    url = source.url or default_cli_url()
    _check_url(url)
    await _download_and_install(source, url, progress)
    return str(source.cached_cli)


def _check_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and _is_loopback(parts.hostname or ""):
        return
    raise FailedPrecondition(
        f"refusing to download the VS Code CLI from {url!r}: only https URLs are allowed"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _download_and_install(source: CliSource, url: str, progress: ProgressFn) -> None:
    loop = asyncio.get_running_loop()

    def report(event: Progress) -> None:
        loop.call_soon_threadsafe(progress, event)

    source.cache_dir.mkdir(parents=True, exist_ok=True)
    cancelled = threading.Event()
    try:
        await asyncio.to_thread(_install, source, url, report, cancelled)
    except asyncio.CancelledError:
        cancelled.set()  # the thread stops at its next chunk
        raise


def _install(source: CliSource, url: str, report: ProgressFn, cancelled: threading.Event) -> None:
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=source.cache_dir) as work:
        archive = Path(work) / "cli.tar"
        digest = _fetch(url, archive, report, cancelled)
        if source.sha256 and digest != source.sha256.lower():
            raise FailedPrecondition(
                f"the VS Code CLI from {url} failed its checksum: "
                f"expected sha256 {source.sha256.lower()}, got {digest}"
            )
        report(Progress("extract", 0, 0))
        unpacked = Path(work) / "unpacked"
        binary = _extract_cli(archive, unpacked, url)
        binary.chmod(0o755)
        source.cached_cli.parent.mkdir(parents=True, exist_ok=True)
        os.replace(binary, source.cached_cli)


def _fetch(url: str, dest: Path, report: ProgressFn, cancelled: threading.Event) -> str:
    """Streams `url` into `dest`, reporting progress; returns the sha256 hex digest."""
    digest = hashlib.sha256()
    context = ssl.create_default_context()
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT, context=context) as response:  # noqa: S310 (scheme vetted by _check_url)
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            report(Progress("download", done, total))
            with dest.open("wb") as out:
                while chunk := response.read(_CHUNK):
                    if cancelled.is_set():
                        raise Unavailable("the VS Code CLI download was cancelled")
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    report(Progress("download", done, total))
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response's socket
        raise Unavailable(
            f"cannot download the VS Code CLI from {url}: HTTP {exc.code} {exc.reason}"
        ) from exc
    except urllib.error.URLError as exc:
        raise Unavailable(f"cannot download the VS Code CLI from {url}: {exc.reason}") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise Unavailable(f"cannot download the VS Code CLI from {url}: {exc!r}") from exc
    return digest.hexdigest()


def _extract_cli(archive: Path, dest: Path, url: str) -> Path:
    """Unpacks the archive into `dest` after vetting every member; returns `code`."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _vet_member(member, url)
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise Unavailable(
            f"the VS Code CLI download from {url} is not a valid tar archive ({exc})"
        ) from exc
    for candidate in sorted(dest.rglob("code")):
        if candidate.is_file() and not candidate.is_symlink():
            return candidate
    raise Unavailable(f"the VS Code CLI archive from {url} holds no `code` program")


def _vet_member(member: tarfile.TarInfo, url: str) -> None:
    """Refuses members that would write outside the extraction directory."""
    name = member.name
    unsafe = (
        name.startswith("/")
        or ".." in Path(name).parts
        or not (member.isfile() or member.isdir() or member.issym() or member.islnk())
    )
    if not unsafe and (member.issym() or member.islnk()):
        target = Path(member.linkname)
        base = Path(name).parent if member.issym() else Path()
        unsafe = target.is_absolute() or _escapes(base / target)
    if unsafe:
        raise Unavailable(
            f"the VS Code CLI archive from {url} has an unsafe member {name!r}; refusing it"
        )


def _escapes(relative: Path) -> bool:
    depth = 0
    for part in relative.parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return True
    return False
