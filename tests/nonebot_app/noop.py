"""A no-op matcher that counts what it handled (the throughput benchmark's plugin).

Every ``NB_REPORT_EVERY`` events (default 500) one line ``{"handled": n, "t": monotonic}``."""

from __future__ import annotations

import json
import os
import sys
import time

from nonebot import get_driver, on_message
from nonebot.adapters.qq import Bot, MessageEvent

_EVERY = int(os.environ.get("NB_REPORT_EVERY", "500"))
_count = 0


def _say(record: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


@get_driver().on_bot_connect
async def connected(bot: Bot) -> None:
    _say({"hook": "connect", "t": time.monotonic()})


noop = on_message(priority=5, block=True)


@noop.handle()
async def handle(event: MessageEvent) -> None:
    global _count
    _count += 1
    if _count % _EVERY == 0:
        _say({"handled": _count, "t": time.monotonic()})
