"""Handlers for the service: ``qqbot-gateway run --handler handlers:echo`` (run it from this
directory: modules in the working directory are importable).

A handler taking two arguments gets the client too, to reply. It may be ``async``; it runs off
the read loop through a bounded queue, so a slow handler never stalls the heartbeat.
"""

from __future__ import annotations

from qqbot_gateway import GatewayEvent, QQBotClient

REPLY_TO = frozenset({"C2C_MESSAGE_CREATE", "GROUP_AT_MESSAGE_CREATE"})


async def echo(event: GatewayEvent, client: QQBotClient) -> None:
    if event.type in REPLY_TO:
        await client.api.reply(event, f"you said: {event.data['content']}")
