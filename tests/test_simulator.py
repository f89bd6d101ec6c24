"""The embedded QQ gateway simulator, over real sockets on 127.0.0.1 with short intervals."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from qqbot_gateway.adapter.protocol import Intents, Op
from qqbot_gateway.simulator import (
    MISSING,
    Simulator,
    SimulatorConfig,
    run_standalone,
)

pytestmark = pytest.mark.timeout(30)

APP_ID = "1024"
SECRET = "s3cret"
HB_MS = 300  # heartbeat interval used by these tests: short, so starvation shows in < 1 s
INTENTS = int(Intents.public_default())


def make_config(**overrides: Any) -> SimulatorConfig:
    values: dict[str, Any] = {
        "app_id": APP_ID,
        "client_secret": SECRET,
        "heartbeat_interval_ms": HB_MS,
        "seed": 7,
        "close_timeout": 0.5,
    }
    values.update(overrides)
    return SimulatorConfig(**values)


@pytest.fixture
def simulator_config() -> SimulatorConfig:
    return make_config()


# Every WebSocket a test opens, closed at the end of the test (no unclosed-connection warnings).
_OPEN: list[aiohttp.ClientWebSocketResponse] = []


@pytest.fixture(autouse=True)
async def _close_websockets(http: aiohttp.ClientSession) -> AsyncIterator[None]:
    # Set up before (so torn down after) the simulators, and before the session is closed.
    yield
    while _OPEN:
        # The simulators are stopped by now, so this returns at once.
        await asyncio.wait_for(_OPEN.pop().close(), 2)


async def fetch_token(http: aiohttp.ClientSession, sim: Simulator) -> str:
    async with http.post(sim.token_url, json={"appId": APP_ID, "clientSecret": SECRET}) as r:
        body = await r.json()
    return str(body["access_token"])


@pytest.fixture
async def token(http: aiohttp.ClientSession, sim: Simulator) -> str:
    return await fetch_token(http, sim)


class Client:
    """A bare gateway client: the test drives every frame."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def recv(self, wait: float = 2.0) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=wait)
        assert msg.type is aiohttp.WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
        payload: dict[str, Any] = json.loads(msg.data)
        return payload

    async def recv_until(self, pred: Any, wait: float = 2.0) -> dict[str, Any]:
        async with asyncio.timeout(wait):
            while True:
                frame = await self.recv(wait)
                if pred(frame):
                    return frame

    async def send(self, op: int, d: Any) -> None:
        await self.ws.send_str(json.dumps({"op": op, "d": d}))

    async def expect_close(self, wait: float = 2.0) -> int | None:
        """Read until the server's close; frames before it are skipped."""
        async with asyncio.timeout(wait):
            while True:
                msg = await self.ws.receive()
                if msg.type is aiohttp.WSMsgType.CLOSE:
                    return int(msg.data)  # the code in the server's close frame
                if msg.type is aiohttp.WSMsgType.CLOSED:
                    return self.ws.close_code
                if msg.type is aiohttp.WSMsgType.ERROR:
                    return None

    async def identify(
        self, token: str, *, shard: list[int] | None = None, intents: int = INTENTS
    ) -> dict[str, Any]:
        hello = await self.recv()
        assert hello["op"] == Op.HELLO
        await self.send(
            Op.IDENTIFY,
            {
                "token": f"QQBot {token}",
                "intents": intents,
                "shard": shard or [0, 1],
                "properties": {"$os": "linux"},
            },
        )
        return await self.recv()

    async def resume(self, token: str, session_id: str, seq: int) -> None:
        hello = await self.recv()
        assert hello["op"] == Op.HELLO
        await self.send(
            Op.RESUME, {"token": f"QQBot {token}", "session_id": session_id, "seq": seq}
        )


async def connect(http: aiohttp.ClientSession, sim: Simulator) -> Client:
    ws = await http.ws_connect(sim.ws_url)
    _OPEN.append(ws)
    return Client(ws)


# ---------------------------------------------------------------- token and REST


async def test_token_flow(http: aiohttp.ClientSession, sim: Simulator) -> None:
    async with http.post(sim.token_url, json={"appId": APP_ID, "clientSecret": SECRET}) as r:
        assert r.status == 200
        body = await r.json()
    assert body["expires_in"] == "7200"  # a string, as QQ sends it
    assert isinstance(body["access_token"], str) and body["access_token"]
    # A second fetch far from expiry returns the same token.
    assert await fetch_token(http, sim) == body["access_token"]
    async with http.post(sim.token_url, json={"appId": APP_ID, "clientSecret": "bad"}) as r:
        assert r.status == 200  # QQ answers errors with HTTP 200
        assert await r.json() == {"code": 100016, "message": "invalid appid or secret"}
    assert sim.token_fetches == 3


async def test_token_faults(http: aiohttp.ClientSession, sim: Simulator) -> None:
    creds = {"appId": APP_ID, "clientSecret": SECRET}
    sim.set_token_fault("500")
    async with http.post(sim.token_url, json=creds) as r:
        assert r.status == 500
    sim.set_token_fault("error_200")
    async with http.post(sim.token_url, json=creds) as r:
        assert r.status == 200
        assert (await r.json())["code"] == 100001
    sim.set_token_fault("malformed")
    async with http.post(sim.token_url, json=creds) as r:
        with pytest.raises(json.JSONDecodeError):
            json.loads(await r.text())
    sim.set_token_fault(None, expires_in=60)
    async with http.post(sim.token_url, json=creds) as r:
        assert (await r.json())["expires_in"] == 60
    sim.set_token_fault(None, delay=0.2)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with http.post(sim.token_url, json=creds) as r:
        assert "access_token" in await r.json()
    assert loop.time() - t0 >= 0.2
    sim.reset_faults()
    async with http.post(sim.token_url, json=creds) as r:
        expires = (await r.json())["expires_in"]
    # The same token again, with its remaining lifetime (as QQ does), still a string.
    assert isinstance(expires, str) and 7190 <= int(expires) <= 7200


async def test_token_refresh_window(http: aiohttp.ClientSession) -> None:
    # With a TTL inside the refresh window every fetch yields a new token; old ones stay valid.
    async with Simulator(make_config(token_ttl=30)) as s:
        first = await fetch_token(http, s)
        second = await fetch_token(http, s)
        assert first != second
        assert s.token_valid(first) and s.token_valid(second)


async def test_gateway_endpoints_auth(
    http: aiohttp.ClientSession, sim: Simulator, token: str
) -> None:
    for path in ("/gateway", "/gateway/bot"):
        async with http.get(sim.base_url + path) as r:
            assert r.status == 401
            body = await r.json()
            assert body["code"] == 11244 and body["trace_id"] and body["message"]
            assert r.headers["X-Tps-trace-ID"] == body["trace_id"]
    auth = {"Authorization": f"QQBot {token}"}
    async with http.get(sim.base_url + "/gateway", headers=auth) as r:
        assert await r.json() == {"url": sim.ws_url}
    async with http.get(sim.base_url + "/gateway/bot", headers=auth) as r:
        body = await r.json()
    assert body["url"] == sim.ws_url and body["shards"] == 1
    assert set(body["session_start_limit"]) == {
        "total",
        "remaining",
        "reset_after",
        "max_concurrency",
    }
    sim.set_gateway_fault("500")
    async with http.get(sim.base_url + "/gateway/bot", headers=auth) as r:
        assert r.status == 500
    sim.set_gateway_fault("malformed")
    async with http.get(sim.base_url + "/gateway/bot", headers=auth) as r:
        with pytest.raises(json.JSONDecodeError):
            json.loads(await r.text())
    sim.set_gateway_fault(None)
    async with http.get(sim.base_url + "/users/@me", headers=auth) as r:
        assert (await r.json())["id"] == sim.config.bot_id


async def test_expire_tokens(http: aiohttp.ClientSession, sim: Simulator, token: str) -> None:
    sim.expire_tokens()
    async with http.get(
        sim.base_url + "/gateway", headers={"Authorization": f"QQBot {token}"}
    ) as r:
        assert r.status == 401
        assert (await r.json())["code"] == 11244
    c = await connect(http, sim)
    await c.recv()
    await c.send(Op.IDENTIFY, {"token": f"QQBot {token}", "intents": INTENTS, "shard": [0, 1]})
    assert await c.expect_close() == 4004
    assert sim.identifies[-1].outcome == "bad_token"
    # A fresh token works again.
    fresh = await fetch_token(http, sim)
    assert fresh != token
    c2 = await connect(http, sim)
    assert (await c2.identify(fresh))["t"] == "READY"


async def test_send_endpoints(http: aiohttp.ClientSession, sim: Simulator, token: str) -> None:
    auth = {"Authorization": f"QQBot {token}"}
    url = sim.base_url + "/v2/users/OPENID1/messages"
    async with http.post(url, json={"content": "x", "msg_id": "m1"}) as r:
        assert r.status == 401
    body = {"content": "hi", "msg_type": 0, "msg_id": "m1", "msg_seq": 1}
    async with http.post(url, json=body, headers=auth) as r:
        assert r.status == 200
        answer = await r.json()
    assert answer["id"].startswith("ROBOT1.0_") and answer["timestamp"]
    async with http.post(url, json=body, headers=auth) as r:
        assert r.status == 400
        err = await r.json()
        assert err["code"] == 40054005 and err["trace_id"]
        assert r.headers["X-Tps-trace-ID"] == err["trace_id"]
    for seq in range(2, 6):
        async with http.post(url, json={**body, "msg_seq": seq}, headers=auth) as r:
            assert r.status == 200
    async with http.post(url, json={**body, "msg_seq": 6}, headers=auth) as r:
        assert (await r.json())["code"] == 22009
    targets = {
        "/v2/groups/G1/messages": "group",
        "/channels/C1/messages": "channel",
        "/dms/D1/messages": "dms",
    }
    for path in targets:
        async with http.post(sim.base_url + path, json={"content": "yo"}, headers=auth) as r:
            assert r.status == 200, await r.text()
    async with http.post(
        sim.base_url + "/v2/groups/G1/files",
        json={"file_type": 1, "url": "https://example.invalid/a.png", "srv_send_msg": False},
        headers=auth,
    ) as r:
        assert "file_info" in await r.json()
    kinds = [(m.kind, m.target) for m in sim.messages]
    assert kinds == [("c2c", "OPENID1")] * 5 + [
        ("group", "G1"),
        ("channel", "C1"),
        ("dms", "D1"),
        ("group_file", "G1"),
    ]
    assert [m.msg_seq for m in sim.messages[:5]] == [1, 2, 3, 4, 5]


# ---------------------------------------------------------------- gateway protocol


async def test_identify_ready_heartbeat(
    http: aiohttp.ClientSession, sim: Simulator, token: str
) -> None:
    c = await connect(http, sim)
    hello = await c.recv()
    assert hello == {"op": 10, "d": {"heartbeat_interval": HB_MS}}
    await c.send(Op.HEARTBEAT, None)  # before identify: lenient, ACKed
    assert await c.recv() == {"op": 11}
    await c.send(Op.IDENTIFY, {"token": f"QQBot {token}", "intents": INTENTS, "shard": [0, 1]})
    ready = await c.recv()
    assert ready["op"] == 0 and ready["s"] == 1 and ready["t"] == "READY"
    d = ready["d"]
    assert d["version"] == 1 and d["shard"] == [0, 1] and d["user"]["bot"] is True
    assert sim.sessions_created == [d["session_id"]]
    await c.send(Op.HEARTBEAT, 1)
    assert await c.recv() == {"op": 11}
    beats = sim.heartbeats()
    assert [b.d for b in beats] == [None, 1] and all(b.acked for b in beats)
    records = await sim.emit_events(3, "C2C_MESSAGE_CREATE")
    frames = [await c.recv() for _ in range(3)]
    assert [f["s"] for f in frames] == [2, 3, 4]
    assert [f["id"] for f in frames] == [r.event_id for r in records]
    msg = frames[0]["d"]
    assert msg["id"].startswith("ROBOT1.0_") and msg["author"]["user_openid"]
    assert frames[0]["id"].startswith("C2C_MESSAGE_CREATE:")
    await sim.wait_for(lambda: len(sim.written_events()) == 3)
    assert [w.seq for w in sim.written_events()] == [2, 3, 4]


async def test_event_shapes(http: aiohttp.ClientSession, sim: Simulator, token: str) -> None:
    c = await connect(http, sim)
    await c.identify(token)
    for t in ("GROUP_AT_MESSAGE_CREATE", "AT_MESSAGE_CREATE", "DIRECT_MESSAGE_CREATE", "X_NEW"):
        await sim.emit_event(t)
    group, at, dm, unknown = [await c.recv() for _ in range(4)]
    assert group["d"]["group_openid"] and group["d"]["author"]["member_openid"]
    assert at["d"]["guild_id"] and at["d"]["channel_id"] and at["d"]["author"]["username"]
    assert dm["d"]["direct_message"] is True
    assert unknown["t"] == "X_NEW"


async def test_resume_replays_missed_events(
    http: aiohttp.ClientSession, sim: Simulator, token: str
) -> None:
    c = await connect(http, sim)
    ready = await c.identify(token)
    session_id = ready["d"]["session_id"]
    await sim.emit_events(2, "C2C_MESSAGE_CREATE")
    assert [(await c.recv())["s"] for _ in range(2)] == [2, 3]
    await c.ws.close(code=4000)  # a non-1000 close keeps the session resumable
    await sim.wait_for(lambda: not sim.open_connections())
    missed = await sim.emit_events(3, "GROUP_AT_MESSAGE_CREATE")
    assert [r.seq for r in missed] == [4, 5, 6]
    c2 = await connect(http, sim)
    await c2.resume(token, session_id, 3)
    replay = [await c2.recv() for _ in range(3)]
    assert [f["s"] for f in replay] == [4, 5, 6]
    assert [f["id"] for f in replay] == [r.event_id for r in missed]
    assert await c2.recv() == {"op": 0, "s": 6, "t": "RESUMED", "d": ""}
    assert sim.resumes[-1].outcome == "resumed" and sim.resumes[-1].replayed == 3
    # New events continue the sequence on the new connection.
    await sim.emit_event("C2C_MESSAGE_CREATE")
    assert (await c2.recv())["s"] == 7
    await sim.wait_for(lambda: len(sim.written_events()) == 6)
    assert [w.replayed for w in sim.written_events()] == [False] * 2 + [True] * 3 + [False]
    assert sim.dropped_events() == []


async def test_resume_failures(http: aiohttp.ClientSession, sim: Simulator, token: str) -> None:
    # Unknown session: op 9 false, then close 4006.
    c = await connect(http, sim)
    await c.resume(token, "no-such-session", 1)
    assert await c.recv() == {"op": 9, "d": False}
    assert await c.expect_close() == 4006
    # A seq ahead of the server's: 4007.
    c = await connect(http, sim)
    sid = (await c.identify(token))["d"]["session_id"]
    await c.ws.close(code=4000)
    c = await connect(http, sim)
    await c.resume(token, sid, 99)
    assert await c.expect_close() == 4007
    # The session is gone now: the events it could not deliver are dropped.
    assert sim.session(sid) is not None and sim.session(sid).state == "invalidated"  # type: ignore[union-attr]
    # reject_next_resumes: a good resume is refused once.
    c = await connect(http, sim)
    sid = (await c.identify(token))["d"]["session_id"]
    await c.ws.close(code=4000)
    await sim.wait_for(lambda: not sim.open_connections())
    await sim.emit_event("C2C_MESSAGE_CREATE")
    sim.reject_next_resumes(1)
    c = await connect(http, sim)
    await c.resume(token, sid, 1)
    assert await c.recv() == {"op": 9, "d": False}
    assert [r.outcome for r in sim.resumes] == ["unknown_session", "seq_ahead", "rejected_fault"]
    assert len(sim.dropped_events()) == 1


async def test_resume_window_expires(http: aiohttp.ClientSession) -> None:
    async with Simulator(make_config(resume_window=0.2)) as s:
        token = await fetch_token(http, s)
        c = await connect(http, s)
        sid = (await c.identify(token))["d"]["session_id"]
        await c.ws.close(code=4000)
        await s.wait_for(lambda: not s.open_connections())
        await asyncio.sleep(0.3)
        c = await connect(http, s)
        await c.resume(token, sid, 1)
        assert await c.recv() == {"op": 9, "d": False}
        assert s.resumes[-1].outcome == "expired"


async def test_heartbeat_starvation_closes_4009(
    http: aiohttp.ClientSession, sim: Simulator, token: str
) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()  # before Hello: the deadline counts from it
    c = await connect(http, sim)
    ready = await c.identify(token)
    assert await c.expect_close(wait=2.0) == 4009
    # About 1.45 x the interval (0.435 s) after Hello; margins for a loaded machine's timers.
    assert 0.4 < loop.time() - t0 < 1.5
    closed = sim.connections[-1]
    assert closed.closed_by == "server" and closed.close_code == 4009
    # 4009 keeps the session resumable.
    info = sim.session(ready["d"]["session_id"])
    assert info is not None and info.state == "active"


async def test_stop_acks_events_keep_flowing(
    http: aiohttp.ClientSession, sim: Simulator, token: str
) -> None:
    c = await connect(http, sim)
    await c.identify(token)
    sim.stop_acks()
    await c.send(Op.HEARTBEAT, 1)
    await sim.emit_event("C2C_MESSAGE_CREATE")
    frame = await c.recv()
    assert frame["op"] == 0  # the event, no ACK before it
    with pytest.raises(TimeoutError):
        await c.recv(wait=0.15)
    assert sim.heartbeats()[-1].acked is False
    sim.resume_acks()
    await c.send(Op.HEARTBEAT, 2)
    assert await c.recv() == {"op": 11}


async def test_blackhole_is_silence_then_heal(
    http: aiohttp.ClientSession, sim: Simulator, token: str
) -> None:
    c = await connect(http, sim)
    sid = (await c.identify(token))["d"]["session_id"]
    assert sim.blackhole() == 1
    beats_before = len(sim.heartbeats())
    await c.send(Op.HEARTBEAT, 1)
    await sim.emit_events(2, "C2C_MESSAGE_CREATE")
    # Three intervals of silence: no ACK, no event, no close (no 4009 either).
    with pytest.raises(TimeoutError):
        await c.ws.receive(timeout=3 * HB_MS / 1000)
    assert not c.ws.closed
    assert len(sim.heartbeats()) == beats_before  # the server did not read it
    assert sim.written_events() == []
    assert sim.state()["connections"]["blackholed"] == 1
    # Heal: the forgotten socket is aborted; a new connection resumes and gets the events.
    assert sim.unblackhole() == 1
    await c.expect_close(wait=2.0)
    assert sim.connections[0].closed_by == "abort"
    c2 = await connect(http, sim)
    await c2.resume(token, sid, 1)
    assert [(await c2.recv())["s"] for _ in range(2)] == [2, 3]
    assert (await c2.recv())["t"] == "RESUMED"


async def test_blackhole_new_connections(http: aiohttp.ClientSession, sim: Simulator) -> None:
    sim.blackhole(current=False, new=True)
    c = await connect(http, sim)
    with pytest.raises(TimeoutError):
        await c.ws.receive(timeout=0.3)  # no Hello
    sim.unblackhole()
    await c.expect_close()
    c2 = await connect(http, sim)
    assert (await c2.recv())["op"] == Op.HELLO


async def test_reconnect_and_invalid_session(
    http: aiohttp.ClientSession, sim: Simulator, token: str
) -> None:
    c = await connect(http, sim)
    sid = (await c.identify(token))["d"]["session_id"]
    assert await sim.send_reconnect() == 1
    assert await c.recv() == {"op": 7, "d": None}
    await sim.send_invalid_session(True, close_code=None)
    assert await c.recv() == {"op": 9, "d": True}
    assert sim.session(sid).state == "active"  # type: ignore[union-attr]
    await sim.send_invalid_session(False)
    assert await c.recv() == {"op": 9, "d": False}
    assert await c.expect_close() == 4006
    assert sim.session(sid).state == "invalidated"  # type: ignore[union-attr]


async def test_close_codes_from_server(
    http: aiohttp.ClientSession, sim: Simulator, token: str
) -> None:
    c = await connect(http, sim)
    await c.identify(token)
    assert await sim.close_connections(4009, "session timed out") == 1
    assert await c.expect_close() == 4009
    assert sim.connections[-1].close_reason == "session timed out"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", 4002),
        (json.dumps({"op": 42, "d": None}), 4001),
        (json.dumps({"op": 2, "d": {"token": 1}}), 4002),
        (json.dumps({"op": 2, "d": {"token": "QQBot x", "intents": 1, "shard": [0, 1]}}), 4004),
    ],
)
async def test_client_protocol_errors(
    http: aiohttp.ClientSession, sim: Simulator, frame: str, code: int
) -> None:
    c = await connect(http, sim)
    await c.recv()
    await c.ws.send_str(frame)
    assert await c.expect_close() == code


async def test_invalid_shard_and_disallowed_intents(
    http: aiohttp.ClientSession, token: str, sim: Simulator
) -> None:
    c = await connect(http, sim)
    await c.recv()
    await c.send(Op.IDENTIFY, {"token": f"QQBot {token}", "intents": INTENTS, "shard": [2, 2]})
    assert await c.expect_close() == 4010
    async with Simulator(make_config(disallowed_intents=int(Intents.GUILD_MESSAGES))) as s:
        tok = await fetch_token(http, s)
        c = await connect(http, s)
        await c.recv()
        await c.send(
            Op.IDENTIFY,
            {"token": f"QQBot {tok}", "intents": int(Intents.GUILD_MESSAGES), "shard": [0, 1]},
        )
        assert await c.recv() == {"op": 9, "d": False}
        assert await c.expect_close() == 4014


async def test_refuse_connections(http: aiohttp.ClientSession, sim: Simulator) -> None:
    sim.refuse_connections("503")
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(sim.ws_url)
    assert info.value.status == 503
    sim.refuse_connections("reset")
    with pytest.raises((aiohttp.ClientConnectionError, aiohttp.WSServerHandshakeError)):
        await http.ws_connect(sim.ws_url)
    sim.accept_connections()
    c = await connect(http, sim)
    assert (await c.recv())["op"] == Op.HELLO
    # aiohttp retries once on a reset keep-alive connection, so 2 or 3 attempts were refused.
    assert sim.refused_connections >= 2


async def test_withhold_hello_and_ready(
    http: aiohttp.ClientSession, sim: Simulator, token: str
) -> None:
    sim.withhold_hello()
    c = await connect(http, sim)
    with pytest.raises(TimeoutError):
        await c.recv(wait=0.2)
    sim.withhold_hello(False)
    sim.withhold_ready()
    c = await connect(http, sim)
    await c.recv()
    await c.send(Op.IDENTIFY, {"token": f"QQBot {token}", "intents": INTENTS, "shard": [0, 1]})
    await c.send(Op.HEARTBEAT, None)
    assert await c.recv() == {"op": 11}  # served, but no READY
    assert sim.identifies[-1].outcome == "withheld"


async def test_hello_interval_override(http: aiohttp.ClientSession, sim: Simulator) -> None:
    sim.set_hello_interval(0)
    assert (await (await connect(http, sim)).recv())["d"] == {"heartbeat_interval": 0}
    sim.set_hello_interval("abc")
    assert (await (await connect(http, sim)).recv())["d"] == {"heartbeat_interval": "abc"}
    sim.set_hello_interval(MISSING)
    assert (await (await connect(http, sim)).recv())["d"] == {}
    sim.clear_hello_interval()
    assert (await (await connect(http, sim)).recv())["d"] == {"heartbeat_interval": HB_MS}


async def test_raw_frames_and_delay(
    http: aiohttp.ClientSession, sim: Simulator, token: str
) -> None:
    c = await connect(http, sim)
    await c.identify(token)
    await sim.send_raw("invalid_json")
    msg = await c.ws.receive(timeout=1)
    assert msg.type is aiohttp.WSMsgType.TEXT
    with pytest.raises(json.JSONDecodeError):
        json.loads(msg.data)
    await sim.send_raw("binary")
    assert (await c.ws.receive(timeout=1)).type is aiohttp.WSMsgType.BINARY
    for kind in ("unknown_op", "missing_fields", "wrong_types"):
        await sim.send_raw(kind)
        assert isinstance(json.loads((await c.ws.receive(timeout=1)).data), dict)
    await sim.send_raw("huge", size=100_000)
    assert len((await c.ws.receive(timeout=1)).data) >= 99_000
    sim.set_outgoing_delay(0.3)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await c.send(Op.HEARTBEAT, 1)
    assert await c.recv() == {"op": 11}
    assert loop.time() - t0 >= 0.3


async def test_event_generator_and_pause(http: aiohttp.ClientSession) -> None:
    cfg = make_config(event_rate=40.0, heartbeat_interval_ms=2000)
    async with Simulator(cfg) as s:
        tok = await fetch_token(http, s)
        c = await connect(http, s)
        await c.identify(tok)
        frames = [await c.recv() for _ in range(5)]
        assert [f["s"] for f in frames] == [2, 3, 4, 5, 6]
        assert all(f["id"] for f in frames)
        s.pause_events()
        await asyncio.sleep(0.1)
        count = len(s.emitted_events())
        await asyncio.sleep(0.2)
        assert len(s.emitted_events()) == count
        s.resume_events()
        await s.wait_for(lambda: len(s.emitted_events()) > count + 2)


async def test_multiple_shards_emit_per_shard(
    http: aiohttp.ClientSession, sim: Simulator, token: str
) -> None:
    c0 = await connect(http, sim)
    c1 = await connect(http, sim)
    await c0.identify(token, shard=[0, 2])
    await c1.identify(token, shard=[1, 2])
    await sim.emit_event("C2C_MESSAGE_CREATE", shard=1)
    assert (await c1.recv())["s"] == 2
    with pytest.raises(TimeoutError):
        await c0.recv(wait=0.1)
    assert [r.shard for r in sim.emitted_events()] == [1]
    assert sim.state()["shards"]["1"]["emitted"] == 1


async def test_control_api(http: aiohttp.ClientSession, sim: Simulator, token: str) -> None:
    c = await connect(http, sim)
    await c.identify(token)
    async with http.post(sim.control_url + "/faults", json={"fault": "stop_acks"}) as r:
        assert (await r.json())["ok"] is True
    assert sim.faults.acks_stopped
    async with http.post(sim.control_url + "/events", json={"type": "X", "count": 2}) as r:
        assert len((await r.json())["emitted"]) == 2
    assert [(await c.recv())["t"] for _ in range(2)] == ["X", "X"]
    async with http.post(
        sim.control_url + "/faults", json={"fault": "close", "code": 4009, "reason": "bye"}
    ) as r:
        assert (await r.json())["result"] == 1
    assert await c.expect_close() == 4009
    async with http.post(sim.control_url + "/faults", json={"fault": "nope"}) as r:
        assert r.status == 400
    async with http.post(sim.control_url + "/reset") as r:
        assert r.status == 200
    assert not sim.faults.acks_stopped
    async with http.get(sim.control_url + "/state") as r:
        text = await r.text()
    state = json.loads(text)
    assert state["connections"]["total"] == 1 and state["shards"]["0"]["emitted"] == 2
    assert SECRET not in text and token not in text


async def test_stop_is_bounded_and_idempotent(http: aiohttp.ClientSession) -> None:
    s = Simulator(make_config(heartbeat_interval_ms=5000))
    await s.start()
    tok = await fetch_token(http, s)
    holed = await connect(http, s)
    await holed.recv()
    assert s.blackhole() == 1
    open_client = await connect(http, s)
    await open_client.identify(tok)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await s.stop()
    await s.stop()
    assert loop.time() - t0 < 2.5
    assert await open_client.expect_close() == 1001
    assert s.connections[0].closed_by == "abort"
    assert not [t for t in asyncio.all_tasks() if (t.get_name() or "").startswith("simulator")]


async def test_run_standalone() -> None:
    stop = asyncio.Event()
    seen: list[str] = []

    async def ready(s: Simulator) -> None:
        seen.append(s.base_url)
        async with aiohttp.ClientSession() as http, http.get(s.control_url + "/state") as r:
            assert r.status == 200
        stop.set()

    await asyncio.wait_for(
        run_standalone(make_config(), "127.0.0.1", 0, ready_callback=ready, stop_event=stop), 5
    )
    assert seen and seen[0].startswith("http://127.0.0.1:")


async def test_ignore_pings_and_reply_latency(http: aiohttp.ClientSession) -> None:
    # A long interval: the simulator's heartbeat watchdog must not close the link mid-test.
    sim = Simulator(make_config(heartbeat_interval_ms=10_000))
    await sim.start(host="127.0.0.1", port=0)
    try:
        await _ignore_pings_and_reply_latency(http, sim)
    finally:
        await sim.stop()


async def _ignore_pings_and_reply_latency(http: aiohttp.ClientSession, sim: Simulator) -> None:
    token = await fetch_token(http, sim)
    ws = await http.ws_connect(sim.ws_url, autoping=False)
    _OPEN.append(ws)
    c = Client(ws)
    await c.identify(token)
    loop = asyncio.get_running_loop()

    async def pong_after(payload: bytes) -> float | None:
        start = loop.time()
        await ws.ping(payload)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.6):
                while True:
                    msg = await ws.receive()
                    if msg.type is aiohttp.WSMsgType.PONG and msg.data == payload:
                        return loop.time() - start
                    assert msg.type is not aiohttp.WSMsgType.CLOSED, "the link closed"
        return None

    assert await pong_after(b"a") is not None  # healthy: answered at once
    sim.ignore_pings()
    assert sim.state()["faults"]["pings_ignored"] is True
    assert await pong_after(b"b") is None
    await c.send(Op.HEARTBEAT, 1)
    assert await c.recv() == {"op": 11}  # only pings are ignored
    sim.ignore_pings(False)
    # Every reply (op 11 and pong) delayed by the spike: the latency knob, each on its own.
    sim.set_reply_latency(0.0, spike_rate=1.0, spike=0.2, seed=1)
    delay = await pong_after(b"c")
    assert delay is not None and delay >= 0.2
    start = loop.time()
    await c.send(Op.HEARTBEAT, 1)
    assert await c.recv() == {"op": 11}
    assert loop.time() - start >= 0.2
    sim.set_reply_latency(None)
    assert sim.state()["faults"]["reply_latency"] is None


def test_latency_model_median_and_cap() -> None:
    from qqbot_gateway.simulator.faults import LatencyModel

    model = LatencyModel(0.05, jitter=10.0, seed=3)
    draws = sorted(model.sample() for _ in range(5000))
    assert 0.045 <= draws[len(draws) // 2] <= 0.055  # the median
    assert draws[-1] <= 0.5 + 1e-12  # cut at 10x the median
    spiky = LatencyModel(0.05, spike_rate=0.01, spike=0.2, seed=3)
    assert 20 <= sum(spiky.sample() == 0.2 for _ in range(5000)) <= 80  # about 1 %
    with pytest.raises(ValueError, match="spike_rate"):
        LatencyModel(spike_rate=2.0)
