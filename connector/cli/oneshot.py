"""Unary calls to one rank or every rank of a run, for commands that ask and print.

A Link retries forever, as a shell that must survive the Wi-Fi has to; a
command such as `tether status` or `tether stop` should instead say plainly
that a run cannot be reached, so these calls give up after a few failed
connection attempts. Ranks are asked in parallel, and one unreachable node
never hides the answers of the others.
"""

import asyncio
import datetime
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, TypeVar

import typer
from google.protobuf.message import Message

from connector.config import RunConfig
from connector.errors import LinkError, TetherError
from connector.link import Link, LinkState
from connector.terminal import escape_text
from protos.resource import Resource

# Failed attempts (about 0.5 + 1 s of backoff between them) before giving up.
CONNECT_ATTEMPTS = 3

R = TypeVar("R", bound=Message)
T = TypeVar("T")

RunArg = Annotated[str | None, typer.Argument(help="The run (default: the only configured run).")]
RankOpt = Annotated[
    int | None, typer.Option("--rank", "-r", min=0, help="Only this node of the run.")
]


def pick_ranks(run: RunConfig, rank: int | None, *, every: bool) -> list[int]:
    """The ranks a command talks to: the one asked for (which must exist),
    else every rank or rank 0."""
    if rank is not None:
        run.address_for(rank)  # a clear ConfigError for a rank the run does not have
        return [rank]
    return list(run.ranks) if every else [0]


class AgentCalls(Resource):
    """A Link to one rank that gives up on an agent it cannot reach; an async
    context manager."""

    def __init__(self, run: RunConfig, rank: int, *, attempts: int = CONNECT_ATTEMPTS) -> None:
        self.run = run
        self.rank = rank
        self._attempts = attempts
        self._unreachable: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.link = Link(run, rank, on_state=self._watch)

    def _watch(self, state: LinkState) -> None:
        if state.retry_in > 0 and state.attempt >= self._attempts and not self._unreachable.done():
            self._unreachable.set_exception(
                LinkError(
                    f"cannot reach run {self.run.name} rank {self.rank} at {self.link.address} "
                    f"({state.error}); it may have stopped already"
                )
            )

    async def call(
        self,
        method: str,
        request: Message,
        reply_type: type[R],
        *,
        timeout: float = 30.0,
        idempotent: bool = True,
    ) -> R:
        call = asyncio.ensure_future(
            self.link.call(method, request, reply_type, timeout=timeout, idempotent=idempotent)
        )
        either: set[asyncio.Future[Any]] = {call, self._unreachable}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not call.done():  # the agent is unreachable, or this caller was cancelled
                call.cancel()
                await asyncio.gather(call, return_exceptions=True)
        if call.cancelled():
            self._unreachable.result()
        return call.result()

    def close(self) -> None:
        self.link.close()
        if not self._unreachable.done():
            self._unreachable.cancel()
        elif not self._unreachable.cancelled():
            self._unreachable.exception()  # seen: a link that gave up while idle is no error

    async def wait_closed(self) -> None:
        await self.link.wait_closed()


class Ranks(Resource):
    """AgentCalls to several ranks, kept across rounds (as `status --watch`
    makes); an async context manager. A rank that could not be reached gets a
    fresh link for the next round."""

    def __init__(self, run: RunConfig, ranks: Sequence[int]) -> None:
        self.run = run
        self._calls = {rank: AgentCalls(run, rank) for rank in ranks}

    async def each(self, work: Callable[[AgentCalls], Awaitable[T]]) -> dict[int, T | TetherError]:
        """`work` against every rank at once; a rank's failure is its result."""

        async def one(rank: int, calls: AgentCalls) -> T | TetherError:
            try:
                return await work(calls)
            except LinkError as exc:
                calls.close()
                await calls.wait_closed()
                self._calls[rank] = AgentCalls(self.run, rank)
                return exc
            except TetherError as exc:
                return exc

        ranks = list(self._calls)
        results = await asyncio.gather(*(one(rank, self._calls[rank]) for rank in ranks))
        return dict(zip(ranks, results, strict=True))

    def close(self) -> None:
        for calls in self._calls.values():
            calls.close()

    async def wait_closed(self) -> None:
        await asyncio.gather(*(calls.wait_closed() for calls in self._calls.values()))


async def each_rank(
    run: RunConfig, ranks: Sequence[int], work: Callable[[AgentCalls], Awaitable[T]]
) -> dict[int, T | TetherError]:
    """`work` once against every rank at once; a rank's failure is its result."""
    async with Ranks(run, ranks) as pool:
        return await pool.each(work)


def successes(results: dict[int, T | TetherError]) -> dict[int, T]:
    return {rank: r for rank, r in results.items() if not isinstance(r, TetherError)}


def report_failures(results: dict[int, T | TetherError]) -> None:
    """Prints each rank's failure on stderr; exits 1 (255 if unreachable) if any."""
    failures = {rank: r for rank, r in results.items() if isinstance(r, TetherError)}
    if not failures:
        return
    if len(results) == 1:
        raise next(iter(failures.values()))
    for rank, exc in sorted(failures.items()):
        typer.echo(f"tether: rank {rank}: {escape_text(str(exc))}", err=True)
    raise typer.Exit(max(exc.exit_code for exc in failures.values()))


def local_time(unix_ms: int) -> str:
    """A moment in the laptop's own time zone."""
    moment = datetime.datetime.fromtimestamp(unix_ms / 1000).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z")


def span(seconds: float) -> str:
    """A duration, short: 3d04h, 2h05m, 9m05s, 40s."""
    seconds = max(0, round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
