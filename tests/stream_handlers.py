"""Handlers for the worker processes of tests/test_cluster_stream_e2e.py (``--handler``)."""

from __future__ import annotations

import asyncio
from typing import Any


async def slow(event: Any) -> None:
    """100 ms of waiting (an API call): a busy worker always has entries in flight, so a
    SIGKILL leaves some pending."""
    await asyncio.sleep(0.1)


async def echo(event: Any, client: Any) -> None:
    """The handler a bot would run with local delivery: a passive reply through client.api."""
    if event.type == "C2C_MESSAGE_CREATE":
        await client.api.reply(event, f"echo: {event.data.get('content', '')}")


def poison(event: Any) -> None:
    """Fails on every delivery of an event whose content is ``poison``."""
    data = event.data if isinstance(event.data, dict) else {}
    if data.get("content") == "poison":
        raise ValueError("this handler cannot take poison")


_first_deliveries: set[str] = set()


def flaky(event: Any) -> None:
    """Fails the first delivery of every fifth event this process sees (a claim runs the entry
    again, and then it succeeds), and every delivery of an event whose content is ``poison``
    (it ends in the dead-letter stream)."""
    poison(event)
    key = str(event.event_id)
    if key in _first_deliveries:
        return
    _first_deliveries.add(key)
    if len(_first_deliveries) % 5 == 0:
        raise RuntimeError("a flaky handler failed on a first delivery")
