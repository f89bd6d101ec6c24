"""Clocks shared by the telemetry subscribers.

Lifecycle events carry ``monotonic`` (the event loop's clock). Ages and health verdicts are
computed on that clock; only the ``*_timestamp_seconds`` gauges and span times need wall time,
derived as ``wall_now - (mono_now - event.monotonic)`` so that an event replayed in a test with
an explicit time lands where it belongs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Clock"]


@dataclass(slots=True)
class Clock:
    """A monotonic clock (``loop.time`` once started) and a wall clock, both injectable."""

    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = field(default=time.time)

    def wall_of(self, mono: float) -> float:
        """Unix time of the monotonic instant ``mono``."""
        return self.wall() - (self.monotonic() - mono)

    def wall_ns_of(self, mono: float) -> int:
        return int(self.wall_of(mono) * 1e9)
