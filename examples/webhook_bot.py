"""The webhook transport as a library: QQ posts signed callbacks, the same handlers answer.

``QQBOT_TRANSPORT=webhook`` (plus ``QQBOT_WEBHOOK_ADDR``, ``QQBOT_WEBHOOK_PATH``) and the
``webhook`` extra (``pip install '.[webhook]'`` in a checkout, for Ed25519; docs/install.md)::

    QQBOT_TRANSPORT=webhook QQBOT_WEBHOOK_ADDR=127.0.0.1:8443 python examples/webhook_bot.py

``client.webhook`` (the intake that checks signatures, answers op 13 and queues events) is None
until ``start()``; ``WebhookReceiver`` serves it over HTTP(S), as ``qqbot-gateway run`` does.
"""

from __future__ import annotations

import asyncio
import signal

from qqbot_gateway import GatewayEvent, QQBotClient, load_settings
from qqbot_gateway.telemetry import WebhookReceiver


async def main() -> None:
    settings = load_settings()
    client = QQBotClient(settings.client_config())  # mode="webhook" from QQBOT_TRANSPORT

    @client.on("C2C_MESSAGE_CREATE")
    @client.on("GROUP_AT_MESSAGE_CREATE")
    async def echo(event: GatewayEvent) -> None:
        await client.api.reply(event, f"you said: {event.data['content']}")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    await client.start()  # replays what a previous process ACKed and did not handle
    assert client.webhook is not None  # set by start() in webhook mode
    receiver = WebhookReceiver(client.webhook)
    await receiver.start()
    print(f"receiving callbacks on {receiver.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await client.close()  # new callbacks get 503 (QQ retries), the queue drains
        await receiver.stop()


if __name__ == "__main__":
    asyncio.run(main())
