"""Waiting in the drivers: an injected sleep that something else can cut short.

A driver module (it runs tasks); the schedules themselves are pure (:mod:`.backoff`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from .backoff import Sleep

__all__ = ["sleep_or_wake"]


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
