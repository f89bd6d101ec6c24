"""A bot that answers every direct message and group @-message: the library, no side server.

Settings come from the environment, as for ``qqbot-gateway run`` (``QQBOT_APP_ID``,
``QQBOT_CLIENT_SECRET`` or ``QQBOT_CLIENT_SECRET_FILE``, ...; docs/configuration.md)::

    QQBOT_APP_ID=102000000 QQBOT_CLIENT_SECRET_FILE=./client-secret python examples/echo_bot.py

Ctrl-C or SIGTERM stops it; the session is kept for the next start (see below).
"""

from __future__ import annotations

import asyncio
import signal

from qqbot_gateway import GatewayEvent, QQBotClient, events, load_settings


async def main() -> None:
    # load_settings().client_config() is the configuration `qqbot-gateway run` uses, session
    # store included: QQBOT_STATE_DIR (default ~/.local/state/qqbot-gateway; `off` turns it off).
    client = QQBotClient(load_settings().client_config())

    @client.on("C2C_MESSAGE_CREATE")
    @client.on("GROUP_AT_MESSAGE_CREATE")
    async def echo(event: GatewayEvent) -> None:
        await client.api.reply(event, f"you said: {event.data['content']}")

    # Lifecycle events: every disconnect carries its reason.
    client.events.subscribe_to(
        events.Disconnected, lambda e: print(f"shard {e.shard} lost: {e.reason}", flush=True)
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    await client.start()  # connects every configured shard (resumes a stored session)
    print("running; Ctrl-C stops", flush=True)
    try:
        await stop.wait()
    finally:
        # With the store on: close 4000, handlers drained, final checkpoint: the next start
        # resumes and QQ replays what was sent in between. close(end_session=True) ends it.
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
