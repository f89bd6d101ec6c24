"""The OpenAPI client against the simulator (real sockets) and a scripted HTTP server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from qqbot_gateway.adapter.api import (
    MessageSeqAllocator,
    OpenAPIClient,
    reply_target,
    split_text,
)
from qqbot_gateway.adapter.auth import TokenManager
from qqbot_gateway.adapter.errors import (
    APIConnectionError,
    APIError,
    ForbiddenError,
    MalformedResponseError,
    NotFoundError,
    RateLimitedError,
    ReplyRejectedError,
    ServerError,
)
from qqbot_gateway.adapter.protocol import GatewayEvent
from qqbot_gateway.simulator import Simulator, SimulatorConfig
from tests.ports import free_port

pytestmark = pytest.mark.timeout(30)

APP_ID = "1024"
SECRET = "s3cret"


def event(kind: str, data: dict[str, Any], event_id: str | None = "EVT:1") -> GatewayEvent:
    return GatewayEvent(type=kind, data=data, seq=1, event_id=event_id, shard=0, session_id="sess")


C2C = event(
    "C2C_MESSAGE_CREATE",
    {"id": "MSG-C2C", "content": "hi", "author": {"id": "U1", "user_openid": "U1"}},
)
GROUP = event(
    "GROUP_AT_MESSAGE_CREATE",
    {"id": "MSG-GROUP", "group_openid": "G1", "author": {"member_openid": "U2"}},
)
CHANNEL = event("AT_MESSAGE_CREATE", {"id": "MSG-CH", "channel_id": "123", "guild_id": "9"})
DM = event("DIRECT_MESSAGE_CREATE", {"id": "MSG-DM", "guild_id": "77", "channel_id": "5"})


class Sleeps:
    """Injected sleep: records the advised delays instead of waiting for them."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


class StaticTokens:
    def __init__(self) -> None:
        self.token = "tok-1"
        self.forced: list[str] = []

    async def get(self) -> str:
        return self.token

    async def force_refresh(self, reason: str, rejected: str | None = None) -> str:
        self.forced.append(reason)
        self.token = f"tok-{len(self.forced) + 1}"
        return self.token


@pytest.fixture
def simulator_config() -> SimulatorConfig:
    return SimulatorConfig(app_id=APP_ID, client_secret=SECRET, seed=3, shards=2)


@pytest.fixture
async def api(sim: Simulator, http: aiohttp.ClientSession) -> AsyncIterator[OpenAPIClient]:
    tokens = TokenManager(APP_ID, SECRET, token_url=sim.token_url, http=http)
    await tokens.start()
    try:
        yield OpenAPIClient(base_url=sim.base_url, tokens=tokens, http=http, app_id=APP_ID)
    finally:
        await tokens.close()


# --- against the simulator --------------------------------------------------------------------
async def test_gateway_discovery(api: OpenAPIClient, sim: Simulator) -> None:
    assert await api.get_gateway() == sim.ws_url
    info = await api.get_gateway_bot()
    assert info.url == sim.ws_url and info.shards == 2
    limit = info.session_start_limit
    assert limit.max_concurrency >= 1 and 0 <= limit.remaining <= limit.total
    assert limit.reset_after_ms >= 0


@pytest.mark.parametrize(
    ("ev", "kind", "target"),
    [(C2C, "c2c", "U1"), (GROUP, "group", "G1"), (CHANNEL, "channel", "123"), (DM, "dms", "77")],
)
async def test_reply_goes_where_the_event_came_from(
    api: OpenAPIClient, sim: Simulator, ev: GatewayEvent, kind: str, target: str
) -> None:
    result = await api.reply(ev, "pong")
    assert result.id and result.trace_id
    (sent,) = sim.messages
    assert (sent.kind, sent.target, sent.msg_id, sent.msg_seq) == (kind, target, ev.data["id"], 1)
    assert sent.body["content"] == "pong" and sent.body["msg_type"] == 0


async def test_every_reply_to_one_message_gets_a_fresh_msg_seq(
    api: OpenAPIClient, sim: Simulator
) -> None:
    for _ in range(3):
        await api.reply(GROUP, "again")
    assert [m.msg_seq for m in sim.messages] == [1, 2, 3]


async def test_long_reply_chunks_are_each_a_reply(api: OpenAPIClient, sim: Simulator) -> None:
    text = "\n".join(f"line {i:04d} " + "x" * 90 for i in range(45))  # ~4500 characters
    results = await api.reply_long(C2C, text, chunk_size=2000)
    sent = sim.messages
    assert len(results) == len(sent) == 3
    assert all(m.msg_id == "MSG-C2C" for m in sent)
    assert [m.msg_seq for m in sent] == [1, 2, 3]
    assert "".join(m.body["content"] + "\n" for m in sent).rstrip("\n") == text


async def test_reply_limit_is_a_typed_error_with_code_and_trace_id(
    api: OpenAPIClient, sim: Simulator
) -> None:
    for _ in range(5):
        await api.reply(CHANNEL, "ok")
    with pytest.raises(ReplyRejectedError) as info:
        await api.reply(CHANNEL, "one too many")
    err = info.value
    assert err.code == 22009 and err.status == 400 and err.trace_id
    assert err.trace_id in str(err) and "22009" in str(err)


async def test_expired_token_is_refreshed_once_and_the_request_retried(
    api: OpenAPIClient, sim: Simulator
) -> None:
    sim.expire_tokens()
    before = sim.token_fetches
    await api.reply(C2C, "still works")
    assert sim.token_fetches == before + 1
    assert len(sim.messages) == 1


@pytest.mark.parametrize("mode", ["malformed", "500"])
async def test_gateway_bot_faults_are_typed(api: OpenAPIClient, sim: Simulator, mode: str) -> None:
    sim.set_gateway_fault(mode)
    api._sleep = Sleeps()  # GETs are retried on 5xx: do not wait for real
    expected: type[APIError] = MalformedResponseError if mode == "malformed" else ServerError
    with pytest.raises(expected):
        await api.get_gateway_bot()


async def test_refused_connection_is_an_api_connection_error(
    http: aiohttp.ClientSession,
) -> None:
    port = free_port()  # nothing listens on it
    sleeps = Sleeps()
    api = OpenAPIClient(
        base_url=f"http://127.0.0.1:{port}",
        tokens=StaticTokens(),
        http=http,
        app_id=APP_ID,
        sleep=sleeps,
    )
    with pytest.raises(APIConnectionError, match="GET /gateway/bot"):
        await api.get_gateway_bot()
    assert len(sleeps.delays) == 3  # GET is safe to repeat: retried, then reported
    sleeps.delays.clear()
    with pytest.raises(APIConnectionError):
        await api.get_gateway_bot(retries=0)  # the supervisor paces its own attempts
    assert sleeps.delays == []
    with pytest.raises(APIConnectionError):
        await api.send_c2c("U1", "hi", msg_id="M")
    assert sleeps.delays == []  # a message is never re-sent behind the caller's back


# --- a scripted server for rate limits and server errors --------------------------------------
Script = list[Callable[[web.Request], web.Response]]


@pytest.fixture
async def scripted(http: aiohttp.ClientSession) -> AsyncIterator[tuple[Script, list[Any], str]]:
    script: Script = []
    seen: list[Any] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append((request.method, request.path, dict(request.headers)))
        return script.pop(0)(request) if script else web.json_response({"id": "ok"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield script, seen, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def error(status: int, code: int, headers: dict[str, str] | None = None) -> Any:
    body = {"message": "nope", "code": code, "err_code": code, "trace_id": f"trace-{code}"}
    return lambda _r: web.json_response(body, status=status, headers=headers)


async def test_429_is_retried_after_the_advised_delay(
    scripted: tuple[Script, list[Any], str], http: aiohttp.ClientSession
) -> None:
    script, seen, url = scripted
    script += [error(429, 0, {"Retry-After": "2"}), error(429, 0, {"Retry-After": "0.5"})]
    sleeps = Sleeps()
    api = OpenAPIClient(base_url=url, tokens=StaticTokens(), http=http, app_id=APP_ID, sleep=sleeps)
    result = await api.send_group("G1", "hi", msg_id="M1")
    assert result.id == "ok"
    assert sleeps.delays == [2.0, 0.5]
    assert len(seen) == 3
    headers = seen[0][2]
    assert headers["Authorization"] == "QQBot tok-1" and headers["X-Union-Appid"] == APP_ID


async def test_send_by_kind_posts_where_the_named_method_does(
    scripted: tuple[Script, list[Any], str], http: aiohttp.ClientSession
) -> None:
    _script, seen, url = scripted
    api = OpenAPIClient(base_url=url, tokens=StaticTokens(), http=http, app_id=APP_ID)
    for kind in ("c2c", "group", "channel", "dms"):
        assert (await api.send(kind, "T1", "hi")).id == "ok"
    await api.send_c2c("T1", "hi")
    await api.send_group("T1", "hi")
    await api.send_channel("T1", "hi")
    await api.send_dm("T1", "hi")
    paths = [(method, path) for method, path, _headers in seen]
    assert paths[:4] == paths[4:] and len(paths) == 8
    with pytest.raises(ValueError, match="unknown message kind 'guild'"):
        await api.send("guild", "T1", "hi")
    assert len(seen) == 8, "nothing sent for an unknown kind"


async def test_rate_limit_that_persists_raises_with_retry_after(
    scripted: tuple[Script, list[Any], str], http: aiohttp.ClientSession
) -> None:
    script, _seen, url = scripted
    script += [error(429, 0, {"Retry-After": "7"})] * 4
    api = OpenAPIClient(
        base_url=url, tokens=StaticTokens(), http=http, app_id=APP_ID, sleep=Sleeps()
    )
    with pytest.raises(RateLimitedError) as info:
        await api.send_c2c("U1", "hi", msg_id="M1")
    assert info.value.retry_after == 7.0 and info.value.status == 429


async def test_rate_limit_code_with_http_200_is_retried(
    scripted: tuple[Script, list[Any], str], http: aiohttp.ClientSession
) -> None:
    script, seen, url = scripted
    script.append(error(200, 100001))
    sleeps = Sleeps()
    api = OpenAPIClient(base_url=url, tokens=StaticTokens(), http=http, app_id=APP_ID, sleep=sleeps)
    await api.send_c2c("U1", "hi", msg_id="M1")
    assert len(seen) == 2 and len(sleeps.delays) == 1


async def test_advised_delay_is_capped(
    scripted: tuple[Script, list[Any], str], http: aiohttp.ClientSession
) -> None:
    script, _seen, url = scripted
    script.append(error(429, 0, {"Retry-After": "3600"}))
    sleeps = Sleeps()
    api = OpenAPIClient(
        base_url=url,
        tokens=StaticTokens(),
        http=http,
        app_id=APP_ID,
        sleep=sleeps,
        max_retry_wait=30,
    )
    await api.send_c2c("U1", "hi", msg_id="M1")
    assert sleeps.delays == [30]


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [(403, 11263, ForbiddenError), (404, 0, NotFoundError), (500, 500, ServerError)],
)
async def test_errors_map_to_types_and_posts_are_not_repeated(
    scripted: tuple[Script, list[Any], str],
    http: aiohttp.ClientSession,
    status: int,
    code: int,
    kind: type[APIError],
) -> None:
    script, seen, url = scripted
    script.append(error(status, code, {"X-Tps-trace-ID": "hdr-trace"}))
    api = OpenAPIClient(
        base_url=url, tokens=StaticTokens(), http=http, app_id=APP_ID, sleep=Sleeps()
    )
    with pytest.raises(kind) as info:
        await api.send_channel("123", "hi", msg_id="M1")
    assert info.value.status == status and info.value.trace_id == "hdr-trace"
    assert len(seen) == 1
    assert "tok-1" not in str(info.value)  # never the token


async def test_401_forces_one_refresh_then_gives_up(
    scripted: tuple[Script, list[Any], str], http: aiohttp.ClientSession
) -> None:
    script, seen, url = scripted
    script += [error(401, 11244), error(401, 11244)]
    tokens = StaticTokens()
    api = OpenAPIClient(base_url=url, tokens=tokens, http=http, app_id=APP_ID, sleep=Sleeps())
    with pytest.raises(APIError) as info:
        await api.get_me()
    assert info.value.code == 11244 and len(tokens.forced) == 1
    assert [s[2]["Authorization"] for s in seen] == ["QQBot tok-1", "QQBot tok-2"]


async def test_success_status_with_a_non_json_body_is_malformed(
    scripted: tuple[Script, list[Any], str], http: aiohttp.ClientSession
) -> None:
    script, _seen, url = scripted
    script.append(lambda _r: web.Response(text="<html>gateway</html>"))
    api = OpenAPIClient(
        base_url=url, tokens=StaticTokens(), http=http, app_id=APP_ID, sleep=Sleeps()
    )
    with pytest.raises(MalformedResponseError):
        await api.get_me()


# --- pure helpers -----------------------------------------------------------------------------
def test_reply_targets_for_every_answerable_event() -> None:
    assert reply_target(C2C).kind == "c2c"
    friend = reply_target(event("FRIEND_ADD", {"openid": "U9"}, event_id="E9"))
    assert (friend.kind, friend.target, friend.msg_id, friend.event_id) == ("c2c", "U9", None, "E9")
    robot = reply_target(event("GROUP_ADD_ROBOT", {"group_openid": "G9"}, event_id="E8"))
    assert (robot.kind, robot.event_id) == ("group", "E8")
    click = reply_target(event("INTERACTION_CREATE", {"group_openid": "G3"}, event_id="E7"))
    assert (click.kind, click.target, click.event_id) == ("group", "G3", "E7")
    for bad in (
        event("READY", {"session_id": "x"}),
        event("C2C_MESSAGE_CREATE", {"id": "M", "author": {}}),
        event("FRIEND_ADD", {"openid": "U9"}, event_id=None),
    ):
        with pytest.raises(ValueError, match="event"):
            reply_target(bad)


def test_split_text_keeps_every_character_within_the_size() -> None:
    text = "a" * 4500
    chunks = split_text(text, 2000)
    assert [len(c) for c in chunks] == [2000, 2000, 500] and "".join(chunks) == text
    assert split_text("") == [""]
    lines = "para one\npara two\npara three"
    assert split_text(lines, 18) == ["para one\npara two", "para three"]


def test_msg_seq_allocator_is_per_message_and_bounded() -> None:
    alloc = MessageSeqAllocator(max_ids=2)
    assert [alloc.next("a"), alloc.next("a"), alloc.next("b"), alloc.next("a")] == [1, 2, 1, 3]
    alloc.next("c")  # evicts the least recently used id, "b"
    assert len(alloc) == 2 and alloc.next("b") == 1


async def test_send_rejects_empty_messages_and_bad_targets(api: OpenAPIClient) -> None:
    with pytest.raises(ValueError, match="needs content"):
        await api.send_c2c("U1")
    with pytest.raises(ValueError, match="target"):
        await api.send_group("../x", "hi")
