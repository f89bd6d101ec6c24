"""The official SDK (qq-botpy 1.2.1) runs against the simulator: login, READY, an event, a reply.

botpy hard-codes its endpoints: the OpenAPI domain and scheme are class constants of
``botpy.http.Route`` (patched here), and the token URL is a string literal inside
``botpy.robot.Token.update_access_token``, so the ``aiohttp`` module that function sees is
replaced by a thin namespace whose ``ClientSession().post`` redirects that one URL. botpy itself
runs unmodified: its own token parsing, ``/users/@me``, ``/gateway/bot``, Identify, dispatch
parsing and ``message.reply``.

botpy has no clean shutdown (``Client.close`` only closes its HTTP session; the WebSocket loop and
heartbeat tasks are fire-and-forget), so the test cancels every task botpy created, bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import types
from typing import Any

import aiohttp
import botpy
import botpy.http
import botpy.robot
import pytest

from qqbot_gateway.simulator import Simulator

pytestmark = pytest.mark.timeout(30)

APP_ID = "1024"
SECRET = "s3cret"
QQ_TOKEN_URL = "https://bots.qq.com/app/getAppAccessToken"


class _TokenSession:
    """Stands in for ``aiohttp.ClientSession`` inside ``botpy.robot``: one URL redirected."""

    def __init__(self, token_url: str) -> None:
        self._token_url = token_url
        self._session = aiohttp.ClientSession()

    def post(self, url: str, **kwargs: Any) -> Any:
        target = self._token_url if url == QQ_TOKEN_URL else url
        return self._session.post(target, **kwargs)

    async def close(self) -> None:
        await self._session.close()


@pytest.fixture
def sim(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    """The shared simulator (production heartbeat interval: botpy ignores Hello and beats every
    30 s regardless), with botpy pointed at it."""
    s = sim
    monkeypatch.setattr(botpy.http.Route, "SCHEME", "http")
    monkeypatch.setattr(botpy.http.Route, "DOMAIN", f"127.0.0.1:{s.port}")
    fake_aiohttp = types.SimpleNamespace(
        ClientSession=lambda: _TokenSession(s.token_url),
        ClientTimeout=aiohttp.ClientTimeout,
    )
    monkeypatch.setattr(botpy.robot, "aiohttp", fake_aiohttp)
    return s


async def _stop_botpy(client: Any, before: set[asyncio.Task[Any]]) -> None:
    """Cancel every task botpy started (its loop, WebSocket, heartbeat, handlers), bounded."""
    await client.close()
    current = asyncio.current_task()
    spawned = [t for t in asyncio.all_tasks() if t not in before and t is not current]
    for task in spawned:
        task.cancel()
    if spawned:
        done, pending = await asyncio.wait(spawned, timeout=5)
        assert not pending, f"botpy tasks did not stop: {pending}"
        for task in done:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                task.result()


async def test_botpy_receives_event_and_replies(sim: Simulator) -> None:
    replied = asyncio.Event()
    received: list[str] = []

    class Bot(botpy.Client):  # type: ignore[misc]
        async def on_c2c_message_create(self, message: Any) -> None:
            received.append(message.content)
            await message.reply(content=f"echo: {message.content}")
            replied.set()

        async def on_group_at_message_create(self, message: Any) -> None:
            received.append(message.content)
            await message.reply(content="group echo")
            replied.set()

    before = set(asyncio.all_tasks())
    intents = botpy.Intents(public_messages=True, public_guild_messages=True)
    client = Bot(intents=intents, ext_handlers=False)
    runner = asyncio.get_running_loop().create_task(
        client.start(appid=APP_ID, secret=SECRET), name="botpy client"
    )
    try:
        await sim.wait_for(lambda: sim.sessions_created, timeout=10)
        assert sim.identifies[-1].outcome == "ready"
        assert sim.identifies[-1].intents == (1 << 25) | (1 << 30)

        records = await sim.emit_event(
            "C2C_MESSAGE_CREATE",
            {
                "author": {"user_openid": "USER1", "id": "USER1"},
                "content": "hello botpy",
                "id": "ROBOT1.0_interop1",
                "timestamp": "2026-01-01T12:00:00+08:00",
            },
        )
        assert [r.seq for r in records] == [2]
        await asyncio.wait_for(replied.wait(), 10)
        await sim.wait_for(lambda: sim.messages, timeout=5)

        replied.clear()
        await sim.emit_event("GROUP_AT_MESSAGE_CREATE")
        await asyncio.wait_for(replied.wait(), 10)
        await sim.wait_for(lambda: len(sim.messages) == 2, timeout=5)
    finally:
        runner.cancel()
        await _stop_botpy(client, before)

    assert received[0] == "hello botpy"
    c2c, group = sim.messages
    assert (c2c.kind, c2c.target, c2c.msg_id, c2c.msg_seq) == (
        "c2c",
        "USER1",
        "ROBOT1.0_interop1",
        1,
    )
    assert c2c.body["content"] == "echo: hello botpy"
    assert group.kind == "group" and group.body["content"] == "group echo"
    assert group.msg_id is not None and group.msg_id.startswith("ROBOT1.0_")
    # botpy fetched a token, logged in and asked for the gateway like against QQ.
    assert sim.token_fetches >= 1
    assert len(sim.written_events()) == 2
