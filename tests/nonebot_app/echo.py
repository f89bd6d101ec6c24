"""A plugin written for ``nonebot-adapter-qq``: replies to every message, reports what it saw.

Each line on stdout is one JSON object: ``{"hook": "connect"|"disconnect", "t": ...}`` from
NoneBot's bot hooks, ``{"event": id, "type": ..., "msg": ...}`` per message a matcher handled.
``NB_MATCHER_SLEEP`` (seconds) makes the matcher slow.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from nonebot import get_driver, on_message
from nonebot.adapters.qq import Bot, MessageEvent

driver = get_driver()
#: Seconds the matcher takes before it replies (a slow plugin: an LLM call, a database).
_SLOW = float(os.environ.get("NB_MATCHER_SLEEP", "0"))


def _say(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def _self(bot: Bot) -> str | None:
    try:
        return str(bot.self_info.id)
    except RuntimeError:  # the original's "Bot ... is not connected!"
        return None


@driver.on_bot_connect
async def connected(bot: Bot) -> None:
    _say({"hook": "connect", "bot": bot.self_id, "self": _self(bot), "t": time.monotonic()})


@driver.on_bot_disconnect
async def disconnected(bot: Bot) -> None:
    _say({"hook": "disconnect", "bot": bot.self_id, "t": time.monotonic()})


echo = on_message(priority=5, block=True)


@echo.handle()
async def reply(bot: Bot, event: MessageEvent) -> None:
    text = event.get_plaintext().strip()
    _say({"event": event.event_id, "type": event.__type__.value, "msg": getattr(event, "id", None)})
    if _SLOW:
        await asyncio.sleep(_SLOW)
    await echo.send(f"echo: {text}")
