"""A plugin written for ``nonebot-adapter-qq``: answers every message with a passive reply."""

from nonebot import on_message
from nonebot.adapters.qq import Bot, MessageEvent

echo = on_message(priority=5, block=True)


@echo.handle()
async def reply(bot: Bot, event: MessageEvent) -> None:
    await echo.send(f"you said: {event.get_plaintext().strip()}")
