"""`tether cp`: files between the laptop and a run, resumable.

The copy engine sees two `Side`s, the laptop's filesystem and the run's
over SFTP (connector/ssh.py), through one small interface, so that upload
and download are the same code read in either direction.

Resuming is the point. A file is written under a `.tether-part` name next
to its destination and renamed only once its bytes, mode and mtime are all
in place, so a file under its final name with the source's size and mtime
is complete and is skipped, and a partial file is always one of ours. A
re-run continues a partial file from its size, less `RESUME_MARGIN`: writes
to the run are pipelined, so a copy that died may have left a hole below the
partial file's end, never further below it than the bytes that were in
flight. Mtimes are whole seconds, as SFTP (version 3) and `scp -p` keep them.
"""

import asyncio
import errno
import os
import posixpath
import stat
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from connector.errors import TetherError

BLOCK = 256 << 10
# Blocks a Side keeps in flight on a pipelined stream (reads or writes).
WINDOW = 16
RESUME_MARGIN = BLOCK * WINDOW
PARTIAL_SUFFIX = ".tether-part"
# Files copied at once: many small files are bound by round trips, not bytes.
PARALLEL_FILES = 8

T = TypeVar("T")


class CopyError(TetherError):
    """A copy cannot go on: a missing path, a full disk, a file that changed."""


@dataclass(frozen=True)
class Endpoint:
    """One side of `tether cp SRC DST`: `run` is None for the laptop."""

    run: str | None
    path: str

    def describe(self, path: str) -> str:
        return path if self.run is None else f"{self.run}:{path}"


def parse_endpoint(text: str) -> Endpoint:
    """`RUN:PATH` names a path in a run; anything else, including a path
    whose first colon comes after a slash (`./a:b`), is the laptop's."""
    head, colon, tail = text.partition(":")
    if colon and head and "/" not in head:
        return Endpoint(head, tail or ".")
    return Endpoint(None, text)


@dataclass(frozen=True)
class Entry:
    """What the copy needs of a stat: the kind, and what is kept."""

    is_dir: bool
    is_file: bool
    size: int
    mode: int  # permission bits only
    mtime: int

    @classmethod
    def from_mode(cls, st_mode: int, size: int, mtime: float) -> "Entry":
        return cls(
            stat.S_ISDIR(st_mode), stat.S_ISREG(st_mode), size, stat.S_IMODE(st_mode), int(mtime)
        )


class Sink(Protocol):
    async def write(self, data: bytes) -> None: ...


class Side(Protocol):
    """A filesystem the copy reads from or writes to. Failures are OSErrors
    with an errno (the run's side translates SFTP's status codes), except a
    lost connection, which is the run side's TetherError."""

    async def stat(self, path: str) -> Entry | None:
        """Without following a final symlink; None when nothing is there."""

    async def scandir(self, path: str) -> list[tuple[str, Entry]]: ...

    async def mkdir(self, path: str) -> None: ...

    def read(self, path: str, offset: int) -> AsyncGenerator[bytes, None]:
        """The file's bytes from `offset` to its end, in order."""

    def append(self, path: str, offset: int) -> AbstractAsyncContextManager[Sink]:
        """Writes `path` from `offset` on, created 0600 and cut at `offset` first."""

    async def settle(self, path: str, mode: int, mtime: int, final: str | None) -> None:
        """Sets mode and mtime, then renames to `final` (when given)."""


class LocalSide:
    """The laptop's filesystem. Calls block, but on chunks small enough that
    the event loop (and the forward it runs) never notices."""

    async def stat(self, path: str) -> Entry | None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        return Entry.from_mode(st.st_mode, st.st_size, st.st_mtime)

    async def scandir(self, path: str) -> list[tuple[str, Entry]]:
        with os.scandir(path) as entries:
            found = [(e.name, e.stat(follow_symlinks=False)) for e in entries]
        return [(name, Entry.from_mode(s.st_mode, s.st_size, s.st_mtime)) for name, s in found]

    async def mkdir(self, path: str) -> None:
        os.mkdir(path, 0o700)

    async def read(self, path: str, offset: int) -> AsyncGenerator[bytes, None]:
        fd = os.open(path, os.O_RDONLY)
        try:
            while data := os.pread(fd, BLOCK, offset):
                offset += len(data)
                yield data
        finally:
            os.close(fd)

    @asynccontextmanager
    async def append(self, path: str, offset: int) -> AsyncIterator[Sink]:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, offset)
            os.lseek(fd, offset, os.SEEK_SET)
            yield _LocalSink(fd)
        finally:
            os.close(fd)

    async def settle(self, path: str, mode: int, mtime: int, final: str | None) -> None:
        os.chmod(path, mode)
        os.utime(path, (mtime, mtime))
        if final is not None:
            os.replace(path, final)


@dataclass
class _LocalSink:
    fd: int

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]


@dataclass
class Tally:
    """What a copy did, for the closing line and for tests."""

    files: int = 0
    complete: int = 0  # already there, skipped
    resumed: int = 0
    skipped_special: int = 0  # symlinks, sockets, devices: not copied
    to_send: int = 0
    sent: int = 0


_Listing = dict[str, Entry]


@dataclass
class _FileJob:
    source: str
    target: str
    entry: Entry
    offset: int = 0


@dataclass
class Plan:
    """Everything to do, known before the first byte moves (for the bar)."""

    directories: list[tuple[str, Entry, bool]] = field(default_factory=list)  # bool: exists
    files: list[_FileJob] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)


class Copy:
    """One `tether cp`: plan, then `run`, reporting bytes to `advance`."""

    def __init__(self, source: Side, source_end: Endpoint, target: Side, target_end: Endpoint):
        self._source, self._source_end = source, source_end
        self._target, self._target_end = target, target_end
        self._failure: TetherError | None = None

    async def plan(self) -> Plan:
        path = self._source_end.path
        entry = await self._checked(self._source, self._source_end, path)
        if entry is None:
            raise CopyError(f"{self._source_end.describe(path)}: no such file or directory")
        plan = Plan()
        await self._plan_entry(plan, path, await self._destination(path, entry), entry)
        return plan

    async def run(self, plan: Plan, advance: Callable[[int], None]) -> Tally:
        for path, _, exists in plan.directories:
            if not exists:
                await self._guarded(self._target_end, path, self._target.mkdir(path))
        gate = asyncio.Semaphore(PARALLEL_FILES)

        async def one(job: _FileJob) -> None:
            async with gate:
                if self._failure is None:
                    try:
                        plan.tally.sent += await self._copy_file(job, advance)
                    except TetherError as exc:
                        self._failure = self._failure or exc

        # The first failure stops the other files between two blocks, not by
        # cancelling them: a cancelled SFTP request leaves asyncssh's tasks
        # under it with errors nobody retrieves, which asyncio then prints.
        await asyncio.gather(*(one(job) for job in plan.files))
        if self._failure is not None:
            raise self._failure
        for path, entry, _ in reversed(plan.directories):  # children change a parent's mtime
            settled = self._target.settle(path, entry.mode, entry.mtime, None)
            await self._guarded(self._target_end, path, settled)
        return plan.tally

    async def _destination(self, source: str, entry: Entry) -> str:
        """Where `source` goes. A file goes into DST when DST is a directory,
        as with scp. A directory *becomes* DST (made, or merged into), so
        that the same command run again resumes instead of nesting a second
        copy inside the first; it goes into DST under its own name only when
        DST says it is a directory by its spelling: `RUN:`, `.`, or a
        trailing slash. Either way the parent must exist."""
        path = self._target_end.path
        found = await self._checked(self._target, self._target_end, path)
        into = path.endswith("/") or posixpath.basename(path) in ("", ".", "..")
        if found is not None and found.is_dir and (into or not entry.is_dir):
            return posixpath.join(path, posixpath.basename(source.rstrip("/")) or ".")
        if into:
            raise CopyError(f"{self._target_end.describe(path)}: no such directory")
        parent = posixpath.dirname(path.rstrip("/")) or "."
        above = await self._checked(self._target, self._target_end, parent)
        if above is None or not above.is_dir:
            raise CopyError(f"{self._target_end.describe(parent)}: no such directory")
        return path

    async def _plan_entry(
        self, plan: Plan, source: str, target: str, entry: Entry, siblings: _Listing | None = None
    ) -> None:
        """`siblings`: what the target's directory holds, listed once for
        all its files (one round trip per directory, not two per file)."""
        if entry.is_dir:
            present = await self._target_listing(target)
            plan.directories.append((target, entry, present is not None))
            listing = self._source.scandir(source)
            for name, child in sorted(await self._guarded(self._source_end, source, listing)):
                await self._plan_entry(
                    plan,
                    posixpath.join(source, name),
                    posixpath.join(target, name),
                    child,
                    present or {},
                )
        elif entry.is_file:
            await self._plan_file(plan, _FileJob(source, target, entry), siblings)
        else:
            plan.tally.skipped_special += 1

    async def _target_listing(self, path: str) -> _Listing | None:
        """The directory's entries by name; None when it is not there yet."""
        found = await self._checked(self._target, self._target_end, path)
        if found is None or not found.is_dir:
            return None
        return dict(await self._guarded(self._target_end, path, self._target.scandir(path)))

    async def _plan_file(self, plan: Plan, job: _FileJob, siblings: _Listing | None) -> None:
        plan.tally.files += 1
        there, part = await self._existing(job.target, siblings)
        if there is not None and (there.size, there.mtime) == (job.entry.size, job.entry.mtime):
            plan.tally.complete += 1
            return
        if part is not None and part.is_file and 0 < part.size <= job.entry.size:
            job.offset = max(0, part.size - RESUME_MARGIN)
            plan.tally.resumed += 1
        plan.tally.to_send += job.entry.size - job.offset
        plan.files.append(job)

    async def _existing(
        self, target: str, siblings: _Listing | None
    ) -> tuple[Entry | None, Entry | None]:
        """What is at `target` and at its partial name."""
        partial = target + PARTIAL_SUFFIX
        if siblings is None:
            there = await self._checked(self._target, self._target_end, target)
            return there, await self._checked(self._target, self._target_end, partial)
        return siblings.get(posixpath.basename(target)), siblings.get(posixpath.basename(partial))

    async def _copy_file(self, job: _FileJob, advance: Callable[[int], None]) -> int:
        partial = job.target + PARTIAL_SUFFIX
        sent = 0
        chunks = self._source.read(job.source, job.offset)
        async with (
            aclosing(chunks),
            _errors_named(self._target_end, job.target),
            self._target.append(partial, job.offset) as sink,
        ):
            while self._failure is None:
                data = await self._guarded(self._source_end, job.source, anext(chunks, None))
                if data is None:
                    break
                await self._guarded(self._target_end, job.target, sink.write(data))
                sent += len(data)
                advance(len(data))
        if self._failure is not None:
            return sent  # left partial, for the re-run
        if job.offset + sent != job.entry.size:
            raise CopyError(
                f"{self._source_end.describe(job.source)} changed while it was copied; "
                "run the copy again"
            )
        settled = self._target.settle(partial, job.entry.mode, job.entry.mtime, job.target)
        await self._guarded(self._target_end, job.target, settled)
        return sent

    async def _checked(self, side: Side, end: Endpoint, path: str) -> Entry | None:
        return await self._guarded(end, path, side.stat(path))

    async def _guarded(self, end: Endpoint, path: str, step: Awaitable[T]) -> T:
        async with _errors_named(end, path):
            return await step


@asynccontextmanager
async def _errors_named(end: Endpoint, path: str) -> AsyncIterator[None]:
    """An OSError becomes one line naming the side and path it happened on."""
    try:
        yield
    except OSError as exc:
        where = end.describe(path)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CopyError(
                f"{where}: no space left on the destination ({exc.strerror}); "
                "make room and run the same command again to resume"
            ) from None
        raise CopyError(f"{where}: {exc.strerror or exc}") from None
