"""Access tokens against the simulator's token endpoint, over real sockets."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter.auth import TokenManager, parse_expires_in, refresh_margin
from qqbot_gateway.adapter.errors import InvalidCredentialsError, TokenFetchError
from qqbot_gateway.simulator import Simulator, SimulatorConfig
from tests.ports import free_port

from .conftest import StartSim
from .gateway_harness import Recorder

pytestmark = pytest.mark.timeout(30)

APP_ID = "1024"
SECRET = "s3cret-value-never-logged"


@pytest.fixture
def simulator_config() -> SimulatorConfig:
    return SimulatorConfig(app_id=APP_ID, client_secret=SECRET, seed=1)


def recorder(bus: ev.EventBus) -> Recorder:
    rec = Recorder()
    bus.subscribe(rec.on_lifecycle)
    return rec


def manager(
    sim: Simulator, http: aiohttp.ClientSession, bus: ev.EventBus | None = None, **kw: Any
) -> TokenManager:
    return TokenManager(
        APP_ID,
        kw.pop("secret", SECRET),
        token_url=kw.pop("token_url", sim.token_url),
        http=http,
        bus=bus,
        **kw,
    )


async def rest_accepts(http: aiohttp.ClientSession, sim: Simulator, token: str) -> bool:
    headers = {"Authorization": f"QQBot {token}"}
    async with http.get(f"{sim.base_url}/users/@me", headers=headers) as resp:
        return resp.status == 200


# --- pure helpers -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "seconds"), [("7200", 7200.0), (7200, 7200.0), (" 60 ", 60.0), (59.5, 59.5)]
)
def test_expires_in_accepts_strings_and_numbers(value: object, seconds: float) -> None:
    assert parse_expires_in(value) == seconds


@pytest.mark.parametrize("value", ["abc", "", 0, -1, "0", True, None, "inf", "nan", [7200]])
def test_expires_in_rejects_nonsense(value: object) -> None:
    with pytest.raises(ValueError, match="expires_in"):
        parse_expires_in(value)


def test_refresh_margin_scales_with_the_lifetime() -> None:
    assert refresh_margin(7200) == 300  # QQ's usual token: refresh 5 min ahead
    assert refresh_margin(60) == 30  # a token handed out in the old one's last minute
    assert refresh_margin(4) == 2
    for lifetime in (1, 3, 10, 60, 61, 100, 900, 7200, 86400):
        assert 0 < refresh_margin(lifetime) < lifetime


# --- against the simulator --------------------------------------------------------------------
async def test_fetches_a_token_the_server_accepts(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    bus = ev.EventBus()
    rec = recorder(bus)
    tm = manager(sim, http, bus)
    await tm.start()
    try:
        token = await tm.get()
        assert await rest_accepts(http, sim, token)
        assert tm.expires_in is not None and 7100 < tm.expires_in <= 7200
        refreshed = rec.of(ev.TokenRefreshed)
        assert len(refreshed) == 1 and refreshed[0].expires_in == 7200 and not refreshed[0].forced
        assert await tm.get() == token and sim.token_fetches == 1
    finally:
        await tm.close()


async def test_concurrent_callers_share_one_fetch(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.set_token_fault(None, delay=0.2)  # keep the fetch in flight while the callers pile up
    tm = manager(sim, http)
    try:
        tokens = await asyncio.gather(*(tm.get() for _ in range(25)))
        assert len(set(tokens)) == 1
        assert sim.token_fetches == 1
        sim.expire_tokens()
        fresh = await asyncio.gather(*(tm.force_refresh("4004", tokens[0]) for _ in range(10)))
        assert len(set(fresh)) == 1 and fresh[0] != tokens[0]
        assert sim.token_fetches == 2  # ten refusals of one token: one new fetch
        assert await tm.force_refresh("late 4004", tokens[0]) == fresh[0]
        assert sim.token_fetches == 2  # refused token already replaced: no fetch
    finally:
        await tm.close()


async def test_a_cancelled_caller_does_not_cancel_the_shared_fetch(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.set_token_fault(None, delay=0.3)
    tm = manager(sim, http)
    try:
        first = asyncio.create_task(tm.get())
        second = asyncio.create_task(tm.get())
        await asyncio.sleep(0.05)
        first.cancel()
        assert await rest_accepts(http, sim, await second)
        assert sim.token_fetches == 1
    finally:
        await tm.close()


@pytest.mark.slow  # real token lifetimes of seconds
async def test_refreshes_ahead_of_expiry_so_get_never_waits(
    http: aiohttp.ClientSession, start_sim: StartSim
) -> None:
    # 3 s tokens, renewed by the server in their last second: margin 1.5 s.
    sim = await start_sim(token_ttl=3, token_refresh_window=1.0)
    tm = manager(sim, http)
    try:
        await tm.start()
        seen: list[str] = []
        # Every answer of get() is a token the server accepts, without a fetch on the caller,
        # across several server-side renewals.
        for _ in range(40):
            token = await tm.get()
            assert await rest_accepts(http, sim, token)
            assert tm.expires_in is not None and tm.expires_in > 0.3
            seen.append(token)
            await asyncio.sleep(0.1)
        assert len(set(seen)) >= 2 and sim.token_fetches >= 3
    finally:
        await tm.close()


async def test_expires_in_of_60_is_handled(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.set_token_fault(None, expires_in="60")
    tm = manager(sim, http)
    try:
        await tm.start()
        assert tm.expires_in is not None and 59 <= tm.expires_in <= 60
        assert await rest_accepts(http, sim, await tm.get())
    finally:
        await tm.close()


@pytest.mark.parametrize(
    ("mode", "match", "code"),
    [
        ("error_200", "code 100001", 100001),
        ("500", "HTTP 500", 500),
        ("malformed", "not JSON object", None),
    ],
)
async def test_token_endpoint_errors_are_typed_and_reported(
    sim: Simulator, http: aiohttp.ClientSession, mode: str, match: str, code: int | None
) -> None:
    bus = ev.EventBus()
    rec = recorder(bus)
    sim.set_token_fault(mode)
    tm = manager(sim, http, bus)
    try:
        with pytest.raises(TokenFetchError, match=match) as info:
            await tm.get()
        assert info.value.code == code
        failed = rec.of(ev.TokenRefreshFailed)
        assert len(failed) == 1 and failed[0].code == code
        sim.set_token_fault(None)
        assert await rest_accepts(http, sim, await tm.get())  # recovers on the next call
    finally:
        await tm.close()


async def test_slow_token_endpoint_times_out(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.set_token_fault(None, delay=2.0)
    tm = manager(sim, http, timeout=0.3)
    try:
        with pytest.raises(TokenFetchError, match="timed out"):
            await tm.get()
    finally:
        await tm.close()


async def test_bad_credentials_fail_start_clearly_without_the_secret(
    sim: Simulator, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tm = manager(sim, http, secret="wrong-secret-value")
    with pytest.raises(InvalidCredentialsError) as info:
        await tm.start()
    await tm.close()
    assert info.value.code == 100016
    assert "app id or secret" in str(info.value)
    assert sim.token_fetches == 1  # no retry against refused credentials
    text = caplog.text + str(info.value) + repr(tm)
    assert "wrong-secret-value" not in text


async def test_unreachable_token_url_fails_start_after_a_few_attempts(
    http: aiohttp.ClientSession,
) -> None:
    port = free_port()  # nothing listens on it
    tm = TokenManager(
        APP_ID,
        SECRET,
        token_url=f"http://127.0.0.1:{port}/app/getAppAccessToken",
        http=http,
        retry_base=0.05,
        startup_attempts=3,
    )
    with pytest.raises(TokenFetchError, match="unreachable"):
        await tm.start()
    await tm.close()


@pytest.mark.slow  # real token lifetimes of seconds
async def test_refresher_retries_with_backoff_and_recovers_before_expiry(
    http: aiohttp.ClientSession, start_sim: StartSim
) -> None:
    sim = await start_sim(token_ttl=4, token_refresh_window=4.0)  # every fetch: a new token
    bus = ev.EventBus()
    rec = recorder(bus)
    tm = manager(sim, http, bus, retry_base=0.1, retry_cap=0.4)
    try:
        await tm.start()
        sim.set_token_fault("error_200")
        # Margin for 4 s tokens is 2 s: the refresher starts failing after ~2 s.
        await sim.wait_for(lambda: len(rec.of(ev.TokenRefreshFailed)) >= 2, timeout=6)
        failures = rec.of(ev.TokenRefreshFailed)
        assert all(f.retry_in is not None and 0 < f.retry_in <= 0.4 for f in failures)
        sim.set_token_fault(None)
        before = len(rec.of(ev.TokenRefreshed))
        await sim.wait_for(lambda: len(rec.of(ev.TokenRefreshed)) > before, timeout=3)
        assert await rest_accepts(http, sim, await tm.get())
        assert tm.expires_in is not None and tm.expires_in > 3
    finally:
        await tm.close()


async def test_force_refresh_replaces_a_revoked_token(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    tm = manager(sim, http)
    try:
        await tm.start()
        old = await tm.get()
        sim.expire_tokens()
        assert not await rest_accepts(http, sim, old)
        new = await tm.force_refresh("gateway close 4004", old)
        assert new != old and await rest_accepts(http, sim, new)
    finally:
        await tm.close()


async def test_rejects_bad_construction(http: aiohttp.ClientSession) -> None:
    with pytest.raises(ValueError, match="app_id"):
        TokenManager("", SECRET, token_url="https://x", http=http)
    with pytest.raises(ValueError, match="client_secret"):
        TokenManager(APP_ID, "", token_url="https://x", http=http)
    with pytest.raises(ValueError, match="http"):
        TokenManager(APP_ID, SECRET, token_url="ftp://x", http=http)


async def test_a_refused_token_is_never_handed_out_again(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    tm = manager(sim, http)
    try:
        await tm.start()
        old = await tm.get()
        sim.expire_tokens()
        sim.set_token_fault("500")
        with pytest.raises(TokenFetchError):
            await tm.force_refresh("gateway close 4004", old)
        # The refresh failed, but the refused token is not returned as if it were valid.
        with pytest.raises(TokenFetchError):
            await tm.get()
        sim.set_token_fault(None)
        new = await tm.get()
        assert new != old and await rest_accepts(http, sim, new)
    finally:
        await tm.close()


class FakeTime:
    """An injected clock and sleep: sleeping advances the clock at once (the first ``limit``
    sleeps), then blocks until cancelled. Nothing here waits on the real clock."""

    def __init__(self, limit: int) -> None:
        self.now = 1000.0
        self.slept: list[float] = []
        self._limit = limit

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if len(self.slept) >= self._limit:
            await asyncio.Event().wait()
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


async def test_startup_retries_sleep_with_the_injected_sleep(http: aiohttp.ClientSession) -> None:
    port = free_port()  # nothing listens on it
    fake = FakeTime(limit=10)
    tm = TokenManager(
        APP_ID,
        SECRET,
        token_url=f"http://127.0.0.1:{port}/app/getAppAccessToken",
        http=http,
        retry_base=1.0,
        retry_cap=60.0,
        startup_attempts=4,
        clock=fake.clock,
        sleep=fake.sleep,
    )
    with pytest.raises(TokenFetchError, match="unreachable"):
        await tm.start()
    await tm.close()
    assert fake.slept == [0.5, 1.0, 2.0]  # half the backoff ceiling, no jitter: 4 attempts


async def test_refresh_schedule_runs_on_the_injected_clock(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    fake = FakeTime(limit=3)
    tm = manager(sim, http, clock=fake.clock, sleep=fake.sleep)
    try:
        await tm.start()
        await sim.wait_for(lambda: len(fake.slept) == 3 and tm.fetches == 4, timeout=10)
        # each refresh waits until the margin before the (fake) expiry, then fetches
        lead = 7200 - refresh_margin(7200)
        assert fake.slept == pytest.approx([lead] * 3, abs=5.0)
    finally:
        await tm.close()
