"""Handlers for the worker processes of tests/test_cluster_stream_e2e.py (``--handler``)."""

from __future__ import annotations

import asyncio
from typing import Any


async def slow(event: Any) -> None:
    """10 ms of waiting (an API call's worth, scaled down): a worker always has entries in
    flight, so a SIGKILL leaves some pending."""
    await asyncio.sleep(0.01)
