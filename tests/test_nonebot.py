"""The NoneBot2 adapter (``qqbot_gateway.integrations.nonebot``) with the real ``nonebot2`` and
``nonebot-adapter-qq`` from PyPI, the simulator behind them.

The end-to-end tests run ``tests/nonebot_app`` (a bot.py and a plugin written for the original
adapter) in a subprocess, configured as a NoneBot user configures the QQ adapter; the plugin
replies to every message and reports what it handled and NoneBot's connect/disconnect hooks.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nonebot.adapters.qq.config import BotInfo

from qqbot_gateway.config import ConfigError
from qqbot_gateway.integrations.nonebot import Adapter, gateway_settings
from qqbot_gateway.simulator import Simulator
from qqbot_gateway.simulator.webhook import WebhookDeliverer, WebhookFaults
from tests.gateway_harness import APP_ID, INTERVAL, SECRET, sim_config
from tests.nonebot_harness import (
    DRIVERS,
    KINDS,
    NoneBotProcess,
    bot_env,
    emit,
    message,
    replied_to,
)
from tests.ports import free_port

# --- settings (no NoneBot process) ----------------------------------------------------------

INFO = BotInfo.model_validate(
    {"id": "1020", "secret": "s3cret", "intent": {"c2c_group_at_messages": True}}
)


def _settings(environ: dict[str, str], dotenv: dict[str, Any] | None = None) -> Any:
    return gateway_settings(
        INFO,
        api_base="https://api.example/",
        token_url="https://auth.example/token",
        gateway_url=None,
        environ=environ,
        dotenv=dotenv or {},
    )


def test_settings_come_from_qq_bots_and_qqbot_settings() -> None:
    settings, warnings = _settings(
        {"QQBOT_DRAIN_TIMEOUT": "3", "QQBOT_STATE_DIR": "off", "QQBOT_APP_ID": "999"},
        {"qqbot_drain_timeout": 7, "qqbot_ack_probes": 2},
    )
    assert settings.app_id == "1020"  # QQ_BOTS wins; the QQBOT_ variable is named as ignored
    assert settings.client_secret.get() == "s3cret"
    assert settings.intents == INFO.intent.to_int()  # type: ignore[no-untyped-call]
    assert settings.api_base == "https://api.example"
    assert settings.token_url == "https://auth.example/token"
    assert settings.drain_timeout == 3.0  # the environment wins over .env, as in NoneBot
    assert settings.ack_probes == 2  # from .env
    assert settings.state_dir is None
    assert settings.http_addr is None  # no side server unless asked
    assert settings.transport == "websocket"
    assert warnings == ["QQBOT_APP_ID is ignored: QQ_BOTS and the QQ_* settings set it per bot"]


def test_settings_shard_and_side_server() -> None:
    info = BotInfo.model_validate({"id": "1020", "secret": "x", "shard": [1, 4]})
    settings, _ = gateway_settings(
        info,
        api_base="https://api.example",
        token_url="https://auth.example/token",
        gateway_url="ws://gw.example/ws",
        environ={"QQBOT_HTTP_ADDR": "127.0.0.1:9464"},
        dotenv={},
    )
    assert (settings.shard_count, settings.shard_ids) == (4, (1,))
    assert settings.gateway_url == "ws://gw.example/ws"
    assert settings.http_addr == ("127.0.0.1", 9464)
    bad = BotInfo.model_validate({"id": "1020", "secret": "x", "shard": [4, 4]})
    with pytest.raises(ConfigError, match=r"outside 0\.\.3"):
        gateway_settings(
            bad,
            api_base="https://a",
            token_url="https://t",
            gateway_url=None,
            environ={},
            dotenv={},
        )
    with pytest.raises(ConfigError, match="QQBOT_DRAIN_TIMEOUT"):
        _settings({"QQBOT_DRAIN_TIMEOUT": "soon"})


def test_adapter_is_the_original_with_its_classes() -> None:
    from nonebot.adapters.qq import Adapter as Original

    assert issubclass(Adapter, Original)
    assert Adapter.get_name() == Original.get_name() == "QQ"
    # The REST side and the event parsing are the original's, untouched.
    for name in ("_call_api", "payload_to_event", "get_auth_base"):
        assert getattr(Adapter, name) is getattr(Original, name)


# --- end to end -----------------------------------------------------------------------------


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator(sim_config(event_rate=0.0))
    await simulator.start("127.0.0.1", 0)
    try:
        yield simulator
    finally:
        await simulator.stop()


async def _listening(port: int, within: float = 30.0) -> None:
    """Until NoneBot's own server accepts connections on ``port`` (a webhook bot's connect hook
    can fire before uvicorn has bound it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if loop.time() > deadline:
                pytest.fail(f"NoneBot's server never listened on port {port}")
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return


async def _all_handled_and_replied(bot: NoneBotProcess, sim: Simulator, ids: list[str]) -> None:
    want = set(ids)
    msg_ids = {i.split(":", 1)[1] for i in ids}
    await bot.until(lambda: want <= set(bot.handled()), 30, f"{len(want)} events handled")
    await bot.until(lambda: msg_ids <= set(replied_to(sim)), 30, "a reply to every message")


def _assert_once(bot: NoneBotProcess) -> None:
    dupes = {k: n for k, n in Counter(bot.handled()).items() if n > 1}
    assert not dupes, f"handled more than once: {dupes}"


@pytest.mark.slow
@pytest.mark.parametrize("driver", sorted(DRIVERS))
async def test_plugin_for_the_original_runs_unchanged(
    sim: Simulator, tmp_path: Path, driver: str
) -> None:
    """C2C, group @, guild @ and DM messages reach the plugin's matcher, whose ``send`` replies
    passively (msg_id of the message, msg_seq) in the right place; with QQBOT_HTTP_ADDR the
    side server answers in the NoneBot process."""
    port = free_port()
    env = bot_env(
        sim,
        driver=DRIVERS[driver],
        state_dir=tmp_path / "state",
        extra={"QQBOT_HTTP_ADDR": f"127.0.0.1:{port}"},
    )
    bot = await NoneBotProcess(env).start()
    try:
        await bot.connected()
        ids = await emit(sim, 0, 8)
        await _all_handled_and_replied(bot, sim, ids)
        kinds = Counter(m.kind for m in sim.messages)
        assert kinds == {"c2c": 2, "group": 2, "channel": 2, "dms": 2}, kinds
        for m in sim.messages:
            assert m.msg_seq is not None and m.body["content"].startswith("echo: hello")
        async with aiohttp.ClientSession() as http:
            answers: list[tuple[int, str]] = []

            async def healthy() -> bool:
                async with http.get(f"http://127.0.0.1:{port}/healthz?verbose") as resp:
                    answers.append((resp.status, await resp.text()))
                    return resp.status == 200

            # polled: a startup stall of a loaded machine may fail the loop-lag check a moment
            for _ in range(50):
                if await healthy():
                    break
                await asyncio.sleep(0.2)
            assert answers[-1][0] == 200, answers[-1]
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert "qqbot_gateway_heartbeat_acks_total" in await resp.text()
    finally:
        status = await bot.stop()
    assert status == 0, bot.describe()
    _assert_once(bot)
    # shutdown keeps the session (close 4000), as `qqbot-gateway run` does
    assert sim.connections[-1].close_code == 4000
    assert bot.hooks()[0] == "connect"
    assert bot.records[0].get("self") == BOT_USER  # as the original: known before the hook


#: The simulator's bot user (``/users/@me`` and READY).
BOT_USER = sim_config().bot_id

FAULTS = ("blackhole", "stop_acks", "reconnect", "close_4009")


async def _inject(sim: Simulator, fault: str, bot: NoneBotProcess) -> None:
    disconnects = bot.hooks().count("disconnect")
    if fault == "blackhole":
        sim.blackhole(current=True)
    elif fault == "stop_acks":
        sim.stop_acks()
    elif fault == "reconnect":
        await sim.send_reconnect()
    else:
        await sim.close_connections(4009, "session timed out")
    # what a user sees: NoneBot's disconnect hook, then its connect hook, once each
    await bot.until(
        lambda: bot.hooks().count("disconnect") > disconnects, 20 * INTERVAL, f"{fault} noticed"
    )
    if fault == "stop_acks":
        sim.resume_acks()
    if fault == "blackhole":
        sim.unblackhole()


@pytest.mark.slow
async def test_faults_lose_nothing_and_hooks_follow_the_link(
    sim: Simulator, tmp_path: Path
) -> None:
    """A blackhole, stopped ACKs, op 7 and close 4009 in turn: every message is handled once and
    answered, and NoneBot's connect/disconnect hooks fire once per real change."""
    bot = await NoneBotProcess(bot_env(sim, state_dir=tmp_path / "state")).start()
    ids: list[str] = []
    try:
        await bot.connected()
        n = 0
        for round_, fault in enumerate(FAULTS, start=1):
            ids += await emit(sim, n, 4, prefix="F")
            n += 4
            await _inject(sim, fault, bot)
            ids += await emit(sim, n, 4, prefix="F")  # while the link is being replaced
            n += 4
            await bot.connected(count=round_ + 1, timeout=30)
            ids += await emit(sim, n, 4, prefix="F")
            n += 4
        await _all_handled_and_replied(bot, sim, ids)
    finally:
        status = await bot.stop()
    assert status == 0, bot.describe()
    _assert_once(bot)
    hooks = bot.hooks()
    rounds = len(FAULTS)
    live = hooks[: 2 * rounds + 1]
    assert live == ["connect", "disconnect"] * rounds + ["connect"], hooks
    resumed = [r for r in sim.resumes if r.outcome == "resumed"]
    assert len(resumed) >= rounds  # each fault ended in a resume, not a new session
    assert len(sim.sessions_created) == 1


@pytest.mark.slow
async def test_restart_resumes_the_stored_session(sim: Simulator, tmp_path: Path) -> None:
    """SIGTERM keeps the session; what QQ sent while the bot was down is handled and answered
    by the next process, and nothing handled before is handled again."""
    state = tmp_path / "state"
    first = await NoneBotProcess(bot_env(sim, state_dir=state)).start()
    try:
        await first.connected()
        before = await emit(sim, 0, 4, prefix="R")
        await _all_handled_and_replied(first, sim, before)
    finally:
        assert await first.stop() == 0, first.describe()
    assert sim.connections[-1].close_code == 4000
    during = await emit(sim, 4, 8, prefix="R")  # into the resumable session's replay buffer
    second = await NoneBotProcess(bot_env(sim, state_dir=state)).start()
    try:
        await second.connected()
        await _all_handled_and_replied(second, sim, during)
    finally:
        assert await second.stop() == 0, second.describe()
    assert not set(before) & set(second.handled()), "handled again after the restart"
    # no READY in the second process, yet its connect hook knows the bot's own user
    assert [r["self"] for r in second.records if r.get("hook") == "connect"] == [BOT_USER]
    _assert_once(second)
    assert len(sim.sessions_created) == 1  # the second process resumed it


@pytest.mark.slow
async def test_bad_credentials_are_one_error_line(sim: Simulator) -> None:
    bot = await NoneBotProcess(bot_env(sim, secret="wrong-secret")).start()
    try:
        await bot.until(
            lambda: any("bad credentials" in line for line in bot.log), 30, "the error line"
        )
        fetches = sim.token_fetches
        await asyncio.sleep(4 * INTERVAL)  # no retry loop: no further token request
        assert sim.token_fetches == fetches
    finally:
        status = await bot.stop()
    errors = [line for line in bot.log if "[ERROR]" in line]
    assert len(errors) == 1, "\n".join(bot.log)
    assert f"QQ bot {APP_ID}: bad credentials" in errors[0]
    assert "wrong-secret" not in "\n".join(bot.log)
    assert "connect" not in bot.hooks()
    assert status == 0


@pytest.mark.slow
async def test_fatal_close_code_stops_the_bot_with_one_line(sim: Simulator) -> None:
    port = free_port()
    bot = await NoneBotProcess(bot_env(sim, extra={"QQBOT_HTTP_ADDR": f"127.0.0.1:{port}"})).start()
    try:
        await bot.connected()
        opened = len(sim.connections)
        await sim.close_connections(4914, "bot offline")
        await bot.until(lambda: "disconnect" in bot.hooks(), 10, "the disconnect hook")
        await asyncio.sleep(4 * INTERVAL)
        assert len(sim.connections) == opened, "reconnected after a fatal close"
        async with aiohttp.ClientSession() as http:  # the liveness probe fails: restart me
            async with http.get(f"http://127.0.0.1:{port}/healthz?verbose") as resp:
                body = await resp.text()
                assert resp.status == 503, body
                assert "stopped for good" in body
    finally:
        await bot.stop()
    errors = [line for line in bot.log if "[ERROR]" in line]
    assert len(errors) == 1, "\n".join(bot.log)
    assert "stopped for good" in errors[0]
    assert bot.hooks() == ["connect", "disconnect"]


@pytest.mark.slow
async def test_webhook_bot_on_nonebots_own_server(sim: Simulator, tmp_path: Path) -> None:
    """``use_websocket: false``: QQ's callbacks on the original's route of NoneBot's server
    (~fastapi), through the client's intake: validation answered, forged copies refused,
    replays and duplicate storms handled once, every message answered by the plugin."""
    port = free_port()
    env = bot_env(
        sim,
        driver="~fastapi+~httpx",
        state_dir=tmp_path / "state",
        use_websocket=False,
        extra={"HOST": "127.0.0.1", "PORT": str(port)},
    )
    bot = await NoneBotProcess(env).start()
    payloads: list[dict[str, Any]] = []
    for index in range(8):
        event_type, data = message(KINDS[index % len(KINDS)], index, prefix="W")
        event_id = f"{event_type}:{data['id']}"
        payloads.append({"op": 0, "id": event_id, "d": data, "s": index + 1, "t": event_type})
    faults = WebhookFaults(bad_signature=0.3, replay=0.5, duplicate_storm=0.3, storm_size=3)
    try:
        await bot.connected()
        await _listening(port)
        url = f"http://127.0.0.1:{port}/qq/webhook"
        async with WebhookDeliverer(url, secret=SECRET, app_id=APP_ID, faults=faults, seed=5) as qq:
            assert await qq.validate()
            assert await qq.deliver_many(payloads, concurrency=4) == len(payloads)
            assert not qq.stats.unexpected, qq.stats.unexpected
        await _all_handled_and_replied(bot, sim, [p["id"] for p in payloads])
    finally:
        status = await bot.stop()
    # uvicorn (the ~fastapi driver) re-raises SIGTERM once its graceful shutdown is over
    assert status in (0, -signal.SIGTERM), bot.describe()
    assert bot.hooks() == ["connect", "disconnect"]  # the shutdown ran: routes stopped
    _assert_once(bot)
    assert sorted(bot.handled()) == sorted(p["id"] for p in payloads)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("driver", "use_websocket", "says"),
    [
        ("~none", True, "needs an HTTP client driver"),
        ("~aiohttp", False, "use_websocket: false"),
    ],
)
async def test_a_driver_that_cannot_work_is_refused_at_startup(
    sim: Simulator, driver: str, use_websocket: bool, says: str
) -> None:
    bot = await NoneBotProcess(bot_env(sim, driver=driver, use_websocket=use_websocket)).start()
    assert bot.proc is not None
    async with asyncio.timeout(30):
        await bot.proc.wait()
    status = await bot.stop()
    assert status != 0
    assert any(says in line for line in bot.log), "\n".join(bot.log)
    assert not sim.connections


@pytest.mark.slow
async def test_token_endpoint_down_at_startup_is_retried(sim: Simulator) -> None:
    """Unlike bad credentials, a failing token endpoint may pass: a warning, then the bot
    connects once it answers again (no error line, no process restart)."""
    sim.set_token_fault("500")
    bot = await NoneBotProcess(bot_env(sim)).start()
    try:
        await bot.until(
            lambda: any("trying again in" in line for line in bot.log), 40, "the retry warning"
        )
        sim.set_token_fault(None)
        await bot.connected(timeout=40)
        ids = await emit(sim, 0, 4, prefix="T")
        await _all_handled_and_replied(bot, sim, ids)
    finally:
        await bot.stop()
    assert not [line for line in bot.log if "[ERROR]" in line], "\n".join(bot.log)


_API_BASE_PROBE = """
import nonebot
from qqbot_gateway.integrations.nonebot import Adapter
nonebot.init()
print(Adapter(nonebot.get_driver()).get_api_base())
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "https://api.bot.qq.com/"),
        ({"QQ_IS_SANDBOX": "true"}, "https://sandbox.api.sgroup.qq.com/"),
        ({"QQ_IS_SANDBOX": "true", "QQ_API_BASE": "http://127.0.0.1:1/"}, "http://127.0.0.1:1/"),
    ],
)
async def test_api_base_and_sandbox(env: dict[str, str], expected: str) -> None:
    """QQ_API_BASE as in the original; QQ_IS_SANDBOX (older versions' key) picks the sandbox
    OpenAPI when no QQ_API_BASE is given."""
    import os
    import sys

    from tests.nonebot_harness import ROOT

    clean = {k: v for k, v in os.environ.items() if not k.startswith(("QQ_", "QQBOT_"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _API_BASE_PROBE,
        cwd=str(ROOT),
        env={**clean, "DRIVER": "~aiohttp", "PYTHONPATH": str(ROOT), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip().splitlines()[-1] == expected


@pytest.mark.slow
async def test_slow_matchers_meet_the_bounded_queue(sim: Simulator, tmp_path: Path) -> None:
    """A slow plugin under a burst: at most QQBOT_HANDLER_QUEUE_SIZE events are in NoneBot's
    hands, the client's queue takes the rest and, full, lets QQ replay them after a resume:
    every message is handled once and answered, memory stays bounded."""
    env = bot_env(
        sim,
        state_dir=tmp_path / "state",
        extra={"QQBOT_HANDLER_QUEUE_SIZE": "4", "NB_MATCHER_SLEEP": str(0.5 * INTERVAL)},
    )
    bot = await NoneBotProcess(env).start()
    try:
        await bot.connected()
        ids = await emit(sim, 0, 24, prefix="S")
        await _all_handled_and_replied(bot, sim, ids)
    finally:
        assert await bot.stop() == 0, bot.describe()
    _assert_once(bot)
    assert any("handler_backpressure" in line for line in bot.log), "no backpressure"
    assert len(sim.sessions_created) == 1  # backpressure resumed; it never re-identified
