"""The one backoff: exponential, capped, jittered; the caller owns the attempt count.

Used by the reconnect planner (gateway reconnects), the OpenAPI client (REST retries) and the
token manager (refresh retries). A schedule is a value; the attempt number lives with whoever
retries, so "reset on healthy" is that owner setting it back to 0, and a test passes an ``rng``
(``lambda low, high: high``) to get exact delays::

    ceiling(n) = min(cap, base * 2**n)
    delay(n)   = rng(floor * ceiling(n), ceiling(n))

``floor = 0`` is full jitter (AWS's "full jitter": spreads many clients best); the token
manager uses ``floor = 0.5`` (equal jitter: never retry a refresh almost at once).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

__all__ = ["Backoff", "Rng", "Sleep", "backoff_delays"]

#: ``(low, high) -> a float in [low, high]``; :func:`random.uniform` in production.
Rng = Callable[[float, float], float]

#: ``asyncio.sleep`` in production; tests inject one that records, or returns at once (the
#: drivers wait with it through :func:`.waiting.sleep_or_wake`).
Sleep = Callable[[float], Awaitable[None]]

#: 2**64 already exceeds any cap in seconds; bounding the exponent keeps the float finite
#: however long an outage lasts.
_MAX_EXPONENT = 64


@dataclass(frozen=True, slots=True)
class Backoff:
    """An exponential schedule with a cap and jitter (see the module docstring)."""

    #: Ceiling of attempt 0; doubles per attempt.
    base: float
    #: No delay is ever longer than this.
    cap: float
    #: Lower edge of the jitter as a fraction of the ceiling (0 = full jitter).
    floor: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.base <= self.cap:
            raise ValueError("need 0 < base <= cap")
        if not 0.0 <= self.floor <= 1.0:
            raise ValueError("floor must be in [0, 1]")

    def ceiling(self, attempt: int) -> float:
        """The longest delay of attempt ``attempt`` (0-based)."""
        return min(self.cap, self.base * 2.0 ** min(max(attempt, 0), _MAX_EXPONENT))

    def delay(self, attempt: int, rng: Rng = random.uniform) -> float:
        """A jittered delay for attempt ``attempt``."""
        high = self.ceiling(attempt)
        return rng(self.floor * high, high)


def backoff_delays(base: float, cap: float, rng: Rng = random.uniform) -> Iterator[float]:
    """Full-jitter delays for attempts 0, 1, 2, ... forever: uniform(0, min(cap, base * 2**n))."""
    schedule = Backoff(base, cap)
    attempt = 0
    while True:
        yield schedule.delay(attempt, rng)
        attempt += 1
