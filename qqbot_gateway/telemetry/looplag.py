"""Event loop lag monitor: sleep a short period, measure how late the wake-up was.

One task, one timer per period, two clock reads: cheap enough to run always. The latest
measurement feeds ``qqbot_gateway_event_loop_lag_seconds`` and the ``event_loop`` health check.
:meth:`LoopLagMonitor.current` also counts a wake-up that is due but has not happened yet, so a
probe answered right after a long stall (or a check made from another callback while the loop
is still catching up) sees the stall, not the previous calm sample.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Final

__all__ = ["DEFAULT_PERIOD", "LoopLagMonitor"]

#: 0.25 s: four samples a second resolve stalls well under the 2 s threshold, and a timer at
#: this rate costs nothing measurable.
DEFAULT_PERIOD: Final = 0.25


class LoopLagMonitor:
    def __init__(
        self,
        *,
        period: float = DEFAULT_PERIOD,
        on_sample: Callable[[float], None] | None = None,
    ) -> None:
        if period <= 0:
            raise ValueError("period must be positive")
        self.period = period
        self.on_sample = on_sample
        self.last_lag = 0.0
        self.max_lag = 0.0
        self.samples = 0
        self._due: float | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def current(self, now: float) -> float:
        """The lag to report at ``now``: the last sample, or the overdue wake-up if larger."""
        due = self._due
        if due is None or not self.running:
            return self.last_lag
        return max(self.last_lag, now - due)

    def start(self) -> None:
        if self.running:
            return
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="qqbot telemetry loop-lag monitor"
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        self._due = None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        period = self.period
        while True:
            start = loop.time()
            self._due = start + period
            await asyncio.sleep(period)
            lag = max(0.0, loop.time() - start - period)
            self.record(lag)

    def record(self, lag: float) -> None:
        self.last_lag = lag
        self.samples += 1
        if lag > self.max_lag:
            self.max_lag = lag
        if self.on_sample is not None:
            self.on_sample(lag)
