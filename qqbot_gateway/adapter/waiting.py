"""Waiting in the drivers: an injected sleep that something else can cut short; the loop's
clock, read per event.

A driver module (it runs tasks); the schedules themselves are pure (:mod:`.backoff`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from .backoff import Sleep

__all__ = ["loop_clock", "sleep_or_wake"]


def loop_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """``loop.time``, or the function it calls when that is all it does: asyncio's own loops
    return ``time.monotonic()``, and calling that directly saves a Python frame (about 40 ns,
    read several times per event). A loop with a clock of its own keeps it."""
    if type(loop).time is asyncio.BaseEventLoop.time:
        return time.monotonic
    return loop.time


async def sleep_or_wake(sleep: Sleep, wake: asyncio.Event, seconds: float, *, name: str) -> None:
    """Wait ``seconds`` with the injected ``sleep``, or until ``wake`` is set, whichever is first.

    The caller clears ``wake`` before deciding to wait. Both helper tasks are named, owned and
    cancelled here, also when the caller itself is cancelled.
    """
    if wake.is_set():
        return
    sleeper = asyncio.create_task(_await(sleep(seconds)), name=f"{name} sleep")
    waker = asyncio.create_task(wake.wait(), name=f"{name} wake")
    try:
        await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sleeper, waker):
            task.cancel()
        await asyncio.wait((sleeper, waker))
    if not sleeper.cancelled():
        sleeper.result()  # a failing injected sleep is a bug: raise it, do not swallow it


async def _await(awaitable: Awaitable[None]) -> None:
    await awaitable
