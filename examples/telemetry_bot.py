"""The echo bot with the side server: /healthz, /readyz, /metrics and the status page.

``QQBOT_HTTP_ADDR`` says where the side server listens (default ``0.0.0.0:8080``; it is for
the kubelet and Prometheus, keep it off the internet)::

    QQBOT_HTTP_ADDR=127.0.0.1:8080 python examples/telemetry_bot.py
    curl -s 'http://127.0.0.1:8080/healthz?verbose'
"""

from __future__ import annotations

import asyncio
import signal

from qqbot_gateway import GatewayEvent, QQBotClient, load_settings
from qqbot_gateway.telemetry import Telemetry, configure_logging


async def main() -> None:
    settings = load_settings()
    configure_logging("auto", "INFO")  # console on a terminal, JSON lines otherwise
    client = QQBotClient(settings.client_config())

    @client.on("C2C_MESSAGE_CREATE")
    @client.on("GROUP_AT_MESSAGE_CREATE")
    async def echo(event: GatewayEvent) -> None:
        await client.api.reply(event, f"you said: {event.data['content']}")

    # telemetry_config() reads QQBOT_HTTP_ADDR, QQBOT_LIVENESS_GRACE, ...; a
    # TelemetryConfig(http_port=8080) made by hand works too.
    telemetry = Telemetry(settings.telemetry_config())
    telemetry.attach(client)  # before start(): the metrics see the first connection
    await telemetry.start()
    print(f"side server on {telemetry.http_url}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    await client.start()
    try:
        await stop.wait()
    finally:
        telemetry.begin_shutdown()  # /readyz answers 503 from now on
        await client.close()
        await telemetry.stop()


if __name__ == "__main__":
    asyncio.run(main())
