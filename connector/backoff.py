"""When to try again: exponential backoff with jitter, reset by a healthy period.

Jitter keeps a fleet of laptops (or the forwards of one daemon) from hammering
an agent in lockstep after it comes back. Each delay is drawn from the upper
half of its step, so the first retry comes after 0.5-1 s, which is soon enough
to ride out a Wi-Fi blip yet never a tight loop. Failures only reset after the
link has stayed up for a while, so a link that flaps keeps backing off.
"""

import random
import time
from collections.abc import Callable


class Backoff:
    def __init__(
        self,
        first: float = 1.0,
        cap: float = 12.0,
        healthy_after: float = 30.0,
        *,
        uniform: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.first = first
        self.cap = cap
        self.healthy_after = healthy_after
        self._uniform = uniform
        self._clock = clock
        self._failures = 0
        self._up_since: float | None = None

    def next_delay(self) -> float:
        """Seconds to wait after one more failed attempt."""
        ceiling = min(self.cap, self.first * 2.0**self._failures)
        if ceiling < self.cap:  # past the cap the count would only overflow
            self._failures += 1
        return ceiling * (0.5 + 0.5 * self._uniform())

    def connected(self) -> None:
        self._up_since = self._clock()

    def dropped(self) -> float:
        """Seconds to wait before reconnecting a link that just went down: none
        after a healthy period (which also resets the steps), else the next step."""
        healthy = (
            self._up_since is not None and self._clock() - self._up_since >= self.healthy_after
        )
        self._up_since = None
        if healthy:
            self._failures = 0
            return 0.0
        return self.next_delay()
