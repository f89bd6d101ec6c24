"""Callbacks served by your own web application (here aiohttp.web; any framework will do).

With the session store on (the default of ``load_settings()``, ``QQBOT_STATE_DIR``) the intake
has a journal: a callback is made durable before it is ACKed, so its answer is asynchronous and
``await client.webhook.receive(headers, body)`` is the call; ``handle()`` is only for an
intake without a journal and raises RuntimeError otherwise. ``WebhookReceiver``
(examples/webhook_bot.py) also bounds body size, read time and connections: do the same in
your server.
"""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web

from qqbot_gateway import GatewayEvent, QQBotClient, load_settings


async def main() -> None:
    settings = load_settings()  # QQBOT_TRANSPORT=webhook
    client = QQBotClient(settings.client_config())

    @client.on("C2C_MESSAGE_CREATE")
    @client.on("GROUP_AT_MESSAGE_CREATE")
    async def echo(event: GatewayEvent) -> None:
        await client.api.reply(event, f"you said: {event.data['content']}")

    await client.start()
    intake = client.webhook  # None before start()
    assert intake is not None

    async def callback(request: web.Request) -> web.Response:
        reply = await intake.receive(request.headers, await request.read())
        return web.Response(
            status=reply.status,
            body=reply.body,
            content_type=reply.content_type,
            headers=dict(reply.headers),
        )

    app = web.Application(client_max_size=settings.webhook_max_body)
    app.router.add_post(settings.webhook_path, callback)
    runner = web.AppRunner(app)
    await runner.setup()
    host, port = settings.webhook_addr
    await web.TCPSite(runner, host, port).start()
    intake.listening(f"http://{host}:{port}{settings.webhook_path}")
    print(f"receiving callbacks on http://{host}:{port}{settings.webhook_path}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await client.close()
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
