"""The run's lifetime: the agent is the "sleeper" that keeps the container alive.

A run gets a deadline (its start plus a maximum duration); nobody inside the
run should be surprised by it, so every attached session is told 10 minutes
and 1 minute before, and whenever the deadline moves. At the deadline the
agent asks for the same graceful stop as SIGTERM, so it exits and the
container ends. The duration can be changed while the run is up, always
counted from the run's start, as mcli counts it.
"""

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Sequence

from agent.errors import InvalidArgument
from protos.resource import Resource

# Seconds before the deadline at which attached sessions are warned.
DEFAULT_WARNINGS = (600.0, 60.0)


def describe_span(seconds: float) -> str:
    """A duration the way a person says it: "2 h 05 min", "9 min", "40 s"."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min" if not secs else f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def describe_moment(unix: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unix))


def check_hours(hours: float) -> float:
    """A max duration must be a positive, finite number of hours."""
    if not math.isfinite(hours) or hours <= 0:
        raise InvalidArgument(f"a max duration must be more than 0 hours, got {hours}")
    return hours


class Lifetime(Resource):
    """Warns before the deadline and asks for a stop at it; an async context manager.

    `on_notice` writes a line into every attached session; `on_stop` asks the
    agent for its graceful stop (it must not block).
    """

    def __init__(
        self,
        started: float,
        max_duration_hours: float | None,
        *,
        on_notice: Callable[[str], None],
        on_stop: Callable[[], None],
        warnings: Sequence[float] = DEFAULT_WARNINGS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.started = started
        self._on_notice = on_notice
        self._on_stop = on_stop
        self._warnings = sorted(warnings, reverse=True)
        self._clock = clock
        self._deadline: float | None = None
        self._warned: set[float] = set()
        if max_duration_hours is not None:
            self._move_deadline(started + check_hours(max_duration_hours) * 3600)
        self._changed = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def deadline(self) -> float | None:
        """The deadline as a Unix time, None when the run has none."""
        return self._deadline

    def set_max_duration(self, hours: float) -> float:
        """Moves the deadline to the run's start plus `hours`; returns it.

        A deadline at or before now is refused: it would end the run at once,
        which is what Stop is for."""
        deadline = self.started + check_hours(hours) * 3600
        now = self._clock()
        if deadline <= now:
            up = now - self.started
            raise InvalidArgument(
                f"the run has been up for {describe_span(up)} ({up / 3600:.2f} h), so a max "
                f"duration of {hours:g} h would end it in the past; give more than "
                f"{up / 3600:.2f} hours"
            )
        self._move_deadline(deadline)
        self._on_notice(
            f"tether: the run's deadline changed: it now ends at {describe_moment(deadline)}, "
            f"in {describe_span(deadline - now)}"
        )
        self._changed.set()
        return deadline

    def stop(self, reason: str) -> None:
        """Tells attached sessions why, then asks for the agent's graceful stop once."""
        if self._stopping:
            return
        self._stopping = True
        self._on_notice(f"tether: the run is stopping: {reason}")
        self._on_stop()

    def _move_deadline(self, deadline: float) -> None:
        """Warnings whose moment already passed for the new deadline are not
        given: the change notice itself says how long is left."""
        self._deadline = deadline
        left = deadline - self._clock()
        self._warned = {w for w in self._warnings if left <= w}

    async def _watch(self) -> None:
        while True:
            self._changed.clear()
            deadline = self._deadline
            if deadline is None:
                await self._changed.wait()
                continue
            left = deadline - self._clock()
            if left <= 0:
                self.stop(f"its deadline, {describe_moment(deadline)}, has passed")
                return
            due = [w for w in self._warnings if w not in self._warned and left <= w]
            if due:
                self._warned.update(due)
                self._on_notice(
                    f"tether: this run ends in {describe_span(left)}, at "
                    f"{describe_moment(deadline)} (extend it with "
                    f"`tether update RUN --max-duration HOURS`)"
                )
                continue
            pending = [left - w for w in self._warnings if w not in self._warned]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min([left, *pending]))

    async def __aenter__(self) -> "Lifetime":
        self._task = asyncio.get_running_loop().create_task(self._watch())
        return self

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def wait_closed(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
