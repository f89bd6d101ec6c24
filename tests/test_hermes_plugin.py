"""The hermes-agent platform plugin, loaded by the real hermes-agent through its own plugin
discovery (``plugins: enabled:`` in a temporary HERMES_HOME), against the simulator over real
sockets. No LLM is involved: the message handler is the one a test registers with
``set_message_handler``, as hermes's gateway runner registers its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from qqbot_gateway.adapter.protocol import GatewayEvent
from qqbot_gateway.config import ConfigError
from qqbot_gateway.simulator import Simulator, SimulatorConfig
from qqbot_gateway.simulator.webhook import WebhookDeliverer
from tests.gateway_harness import APP_ID, INTERVAL, SECRET, poll_until, sim_config
from tests.hermes_harness import (
    Watch,
    c2c_message,
    hermes_home,
    load_platform,
    plugin_config,
)

pytest.importorskip("gateway.platforms.base", reason="hermes-agent is not installed")

from qqbot_gateway.integrations import hermes

#: hermes-agent's plugin discovery and its gateway, against the simulator.
pytestmark = pytest.mark.slow

PLATFORM = hermes.DEFAULT_PLATFORM


def extra_for(sim: Simulator, state_dir: Path, **more: Any) -> dict[str, Any]:
    extra: dict[str, Any] = {
        "state_dir": str(state_dir),
        "app_id": APP_ID,
        "api_base": sim.base_url,
        "token_url": sim.token_url,
        "dm_policy": "open",
        "group_policy": "open",
        "http_addr": "127.0.0.1:0",
        "ready_timeout": 10 * INTERVAL,
        "drain_timeout": 1,
    }
    extra.update(more)
    return extra


@pytest.fixture
def simulator_config() -> SimulatorConfig:
    return sim_config()


@asynccontextmanager
async def started(
    sim: Simulator, tmp_path: Path, *, secret: str = SECRET, **more: Any
) -> AsyncIterator[tuple[Any, Watch]]:
    """The plugin's adapter as hermes builds it, connected; disconnected at the end."""
    env = {"QQ_CLIENT_SECRET": secret, "QQ_ALLOW_ALL_USERS": "true"}
    with hermes_home(
        tmp_path / "hermes",
        plugin_config(PLATFORM, extra_for(sim, tmp_path / "state", **more)),
        env,
    ):
        adapter = load_platform(PLATFORM)
        watch = Watch(adapter, reply=lambda e: f"re: {e.text}")
        ok = await adapter.connect()
        # With webhook_require_validation the receiver listens but is not connected yet.
        assert ok == adapter.is_connected or more.get("webhook_require_validation")
        try:
            yield adapter, watch
        finally:
            await adapter.disconnect()


async def test_messages_reach_hermes_and_replies_are_passive(
    sim: Simulator, tmp_path: Path
) -> None:
    async with started(sim, tmp_path, chunk_size=80) as (adapter, watch):
        assert isinstance(adapter, hermes.QQBotGatewayAdapter)
        assert adapter.is_connected
        assert watch.marks[-1][0] == "connected"
        for event_type in hermes.MESSAGE_KINDS:
            if event_type != "MESSAGE_CREATE":  # the simulator does not generate it
                await sim.emit_event(event_type)
        await watch.until(lambda: len(watch.received) == 5, 10, "five messages")
        chat_types = sorted(e.source.chat_type for e in watch.received)
        assert chat_types == ["dm", "dm", "group", "group", "group"]
        for event in watch.received:
            assert not event.text.startswith("<@"), event.text  # mentions stripped
            assert event.message_id and event.source.user_id

        # Every reply reached the simulator as a passive reply: msg_id + msg_seq.
        await watch.until(lambda: len(sim.messages) >= 5, 10, "five replies")
        answered = {m.msg_id: m for m in sim.messages}
        assert set(answered) == {e.message_id for e in watch.received}
        assert {m.kind for m in sim.messages} == {"c2c", "group", "channel", "dms"}
        assert all(m.msg_seq == 1 for m in sim.messages)

        # A long reply is split; every chunk answers the same message with its own msg_seq.
        await sim.emit_event("C2C_MESSAGE_CREATE", c2c_message(1, "x" * 20))
        await watch.until(lambda: any(m.msg_id == "M00001" for m in sim.messages), 10, "echo")
        first = len(sim.messages)
        result = await adapter.send("MUSER00001", "word " * 40, reply_to="M00001")
        assert result.success
        chunks = sim.messages[first:]
        assert len(chunks) >= 3
        assert {m.msg_id for m in chunks} == {"M00001"}
        seqs = [m.msg_seq for m in chunks]
        assert len(set(seqs)) == len(seqs)
        assert all(m.body["msg_type"] == 2 for m in chunks)  # markdown, as hermes sends it
        # QQ takes 5 replies to one message: a reply that needs more is cut, with a note.
        first = len(sim.messages)
        result = await adapter.send("MUSER00001", "word " * 400, reply_to="M00001")
        assert result.success
        tail = sim.messages[first:]
        assert 1 + len(chunks) + len(tail) == hermes.MAX_REPLIES_PER_MESSAGE  # echo included
        assert "truncated" in tail[-1].body["markdown"]["content"]
        refused = await adapter.send("MUSER00001", "one more", reply_to="M00001")
        assert not refused.success and refused.error_kind == "rate_limited"

        info = await adapter.get_chat_info("MUSER00001")
        assert info["type"] == "dm"

        # The side server runs inside the hermes process, on its own address.
        assert adapter.telemetry is not None
        url = adapter.telemetry.http_url
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/healthz") as resp:
                assert resp.status == 200
            async with http.get(f"{url}/readyz") as resp:
                assert resp.status == 200
            async with http.get(f"{url}/metrics") as resp:
                assert "qqbot_gateway_heartbeats_sent_total" in await resp.text()
    assert not adapter.is_connected


async def test_blackhole_is_detected_and_resumed_with_every_message_once(
    sim: Simulator, tmp_path: Path
) -> None:
    async with started(sim, tmp_path) as (adapter, watch):
        assert adapter.is_connected
        for i in range(5):
            await sim.emit_event("C2C_MESSAGE_CREATE", c2c_message(i), event_id=f"E{i}")
        await watch.until(lambda: len(watch.received) == 5, 10, "messages before the cut")
        marks_before = len(watch.marks)
        assert sim.blackhole(current=True) == 1
        for i in range(5, 25):  # sent while the link is dead: they wait in the replay buffer
            await sim.emit_event("C2C_MESSAGE_CREATE", c2c_message(i), event_id=f"E{i}")
        # hermes is told at once that the connection is gone, and that it is back after the
        # resume, which replays what the cut held back. Read from the marks hermes got, not
        # from the live flag: the resume over loopback can be over between two polls.
        await watch.until(
            lambda: len(watch.marks) >= marks_before + 2, 15 * INTERVAL, "disconnected, connected"
        )
        assert [m for m, _ in watch.marks[marks_before:]] == ["disconnected", "connected"]
        assert adapter.is_connected
        assert sim.resumes and sim.resumes[-1].outcome == "resumed"
        for i in range(25, 30):
            await sim.emit_event("C2C_MESSAGE_CREATE", c2c_message(i), event_id=f"E{i}")
        await watch.until(lambda: len(watch.received) >= 30, 10, "every message")
        await asyncio.sleep(3 * INTERVAL)  # room for a duplicate to show up
        counts = Counter(watch.message_ids())
        assert counts == Counter(f"M{i:05d}" for i in range(30))
        await watch.until(lambda: len(sim.messages) >= 30, 10, "every reply")
        assert Counter(m.msg_id for m in sim.messages) == counts
        assert not watch.fatal
        assert not adapter.has_fatal_error


@pytest.mark.parametrize("how", ["credentials", "close_4914"])
async def test_stopped_for_good_reaches_the_fatal_handler_once(
    sim: Simulator, tmp_path: Path, how: str
) -> None:
    async with started(sim, tmp_path) as (adapter, watch):
        assert adapter.is_connected
        if how == "credentials":
            sim.rotate_secret("a-new-secret-hermes-does-not-know")
            sim.expire_tokens()
            await sim.close_connections(4004)
        else:
            await sim.close_connections(4914)
        await watch.until(lambda: watch.fatal, 10 * INTERVAL, "the fatal-error handler")
        await asyncio.sleep(3 * INTERVAL)
        assert len(watch.fatal) == 1
        code, retryable = watch.fatal[0]
        assert retryable is False
        assert code is not None and code.startswith("qqbot_gateway_")
        assert not adapter.is_connected
        assert SECRET not in (adapter.fatal_error_message or "")
    assert len(watch.fatal) == 1


async def test_refused_credentials_at_startup(sim: Simulator, tmp_path: Path) -> None:
    async with started(sim, tmp_path, secret="wrong-secret-0000") as (adapter, watch):
        assert not adapter.is_connected
        assert adapter.has_fatal_error
        assert adapter.fatal_error_code == "qqbot_gateway_credentials_refused"
        assert adapter.fatal_error_retryable is False
        assert not watch.fatal  # connect() returned False: hermes's runner reads the error
        assert adapter.client is None and adapter.telemetry is None  # nothing left running


# --- settings and mapping (no sockets) ------------------------------------------------------


def test_settings_precedence_and_errors(tmp_path: Path) -> None:
    env = {"QQ_APP_ID": "111", "QQ_CLIENT_SECRET": "hermes-secret", "QQBOT_INTENTS": "1"}
    s = hermes.hermes_settings({}, env)
    assert s.service.app_id == "111"
    assert s.service.client_secret is not None
    assert s.service.client_secret.get() == "hermes-secret"
    assert s.service.http_addr is None  # no side port unless asked for
    assert hermes.hermes_settings({}, {**env, "XDG_STATE_HOME": "/var/x"}).service.state_dir == (
        "/var/x/qqbot-gateway"  # the service's default: one owner per bot and shard per machine
    )
    assert hermes.hermes_settings({"state_dir": "off"}, env).service.state_dir is None
    assert s.service.intents == 1
    s = hermes.hermes_settings(
        {"app_id": 222, "intents": ["GUILDS"], "http_addr": "127.0.0.1:9464"},
        {**env, "QQBOT_APP_ID": "333"},
    )
    assert s.service.app_id == "222"  # extra wins over QQBOT_* wins over QQ_*
    assert s.service.http_addr == ("127.0.0.1", 9464)
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")
    s = hermes.hermes_settings({"client_secret_file": str(secret_file)}, env)
    assert s.service.client_secret is not None
    assert s.service.client_secret.get() == "from-file"
    s = hermes.hermes_settings({}, {**env, "QQBOT_HERMES_HTTP_ADDR": ":0"})
    assert s.service.http_addr == ("0.0.0.0", 0)  # noqa: S104 - what ":0" means
    warned = hermes.hermes_settings({"dm_polcy": "open", "group_sessions_per_user": True}, env)
    assert warned.warnings == (
        "platforms.qqbot_gateway.extra.dm_polcy: unknown setting (did you mean dm_policy?)",
    )

    bad = {
        "shard_count": ("x", "platforms.qqbot_gateway.extra.shard_count: expected a positive"),
        "dm_policy": ("everyone", "platforms.qqbot_gateway.extra.dm_policy: expected one of"),
        "api_base": ("ftp://x", "platforms.qqbot_gateway.extra.api_base: expected a http://"),
        "markdown_support": ("maybe", "platforms.qqbot_gateway.extra.markdown_support: expected"),
        "ack_miss_limit": (3, "platforms.qqbot_gateway.extra.ack_miss_limit: removed"),
    }
    for key, (value, message) in bad.items():
        with pytest.raises(ConfigError, match="^" + re.escape(message)):
            hermes.hermes_settings({key: value}, env)
    with pytest.raises(ConfigError, match=r"^QQBOT_SHARD_COUNT: expected"):
        hermes.hermes_settings({}, {**env, "QQBOT_SHARD_COUNT": "0"})
    with pytest.raises(ConfigError, match=r"app_id: required"):
        hermes.hermes_settings({}, {"QQ_CLIENT_SECRET": "s"})
    with pytest.raises(ConfigError, match=r"client_secret: required") as info:
        hermes.hermes_settings({}, {"QQ_APP_ID": "1"})
    assert "hermes-secret" not in str(info.value)


def _event(event_type: str, data: Any) -> GatewayEvent:
    return GatewayEvent(event_type, data, 1, "e1", 0, "s1")


def test_inbound_mapping() -> None:
    group = hermes.inbound(
        _event(
            "GROUP_AT_MESSAGE_CREATE",
            {"id": "g1", "group_openid": "G", "author": {"member_openid": "U"}, "content": " hi"},
        )
    )
    assert group is not None
    assert (group.kind, group.chat_id, group.user_id, group.chat_type, group.text) == (
        "group",
        "G",
        "U",
        "group",
        "hi",
    )
    channel = hermes.inbound(
        _event(
            "AT_MESSAGE_CREATE",
            {
                "id": "c1",
                "channel_id": "42",
                "guild_id": "7",
                "author": {"id": "9", "username": "nick"},
                "content": "<@!123> what time is it",
            },
        )
    )
    assert channel is not None
    assert (channel.kind, channel.chat_id, channel.text, channel.user_name) == (
        "channel",
        "42",
        "what time is it",
        "nick",
    )
    dm = hermes.inbound(
        _event("DIRECT_MESSAGE_CREATE", {"id": "d1", "guild_id": "77", "author": {"id": "9"}})
    )
    assert dm is not None and (dm.kind, dm.chat_id, dm.chat_type) == ("dms", "77", "dm")
    quoting = hermes.inbound(
        _event(
            "C2C_MESSAGE_CREATE",
            {
                "id": "q1",
                "author": {"user_openid": "U"},
                "content": "and this?",
                "message_type": 103,
                "msg_elements": [
                    {"content": "the quoted words", "attachments": [{"content_type": "voice"}]}
                ],
            },
        )
    )
    assert quoting is not None
    assert quoting.quote == "the quoted words"
    assert quoting.attachments == ({"content_type": "voice"},)
    assert hermes.inbound(_event("READY", {"session_id": "x"})) is None
    assert hermes.inbound(_event("C2C_MESSAGE_CREATE", {"author": {"id": "u"}})) is None
    assert hermes.inbound(_event("C2C_MESSAGE_CREATE", "not a dict")) is None


async def test_takes_the_builtin_name_when_asked(sim: Simulator, tmp_path: Path) -> None:
    """``QQBOT_HERMES_PLATFORM=qqbot``: hermes builds the plugin for its ``platforms.qqbot``
    block instead of its own QQ adapter (conversations and pairings keyed by ``qqbot`` stay)."""
    from gateway.config import Platform
    from gateway.platform_registry import platform_registry

    env = {"QQ_CLIENT_SECRET": SECRET, "QQBOT_HERMES_PLATFORM": "qqbot"}
    config = plugin_config("qqbot", extra_for(sim, tmp_path / "state", dm_policy="pairing"))
    try:
        with hermes_home(tmp_path / "hermes", config, env):
            adapter = load_platform("qqbot")
            assert isinstance(adapter, hermes.QQBotGatewayAdapter)
            assert adapter.platform is Platform.QQBOT
            watch = Watch(adapter)
            assert await adapter.connect()
            try:
                await sim.emit_event("C2C_MESSAGE_CREATE", c2c_message(7))
                await watch.until(lambda: watch.received, 10, "a message")
                assert watch.received[0].source.platform is Platform.QQBOT
            finally:
                await adapter.disconnect()
    finally:
        platform_registry.unregister("qqbot")
    assert platform_registry.get("qqbot") is None  # hermes's own adapter is back


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


async def test_inbound_attachments(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Images become hermes photos, files are cached and named, QQ's voice transcript is text;
    downloads go through hermes's SSRF guard (loopback allowed here by hermes's own switch)."""
    from tools import url_safety

    async def png(_: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    async def text(_: web.Request) -> web.Response:
        return web.Response(text="hello", content_type="text/plain")

    files = web.Application()
    files.router.add_get("/a.png", png)
    files.router.add_get("/notes.txt", text)
    runner = web.AppRunner(files)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    attachments = [
        {"content_type": "image/png", "url": f"{base}/a.png", "filename": "a.png"},
        {"content_type": "text/plain", "url": f"{base}/notes.txt", "filename": "notes.txt"},
        {"content_type": "voice", "url": f"{base}/v.silk", "asr_refer_text": "你好"},
    ]
    try:
        async with started(sim, tmp_path) as (_, watch):
            url_safety._reset_allow_private_cache()  # hermes's default: no loopback URLs
            data = {**c2c_message(1, "refused"), "attachments": attachments[:1]}
            await sim.emit_event("C2C_MESSAGE_CREATE", data)
            await watch.until(lambda: watch.received, 10, "the first message")
            assert watch.received[0].media_urls == []
            assert "[attachment not retrieved: a.png]" in watch.received[0].text

            monkeypatch.setenv("HERMES_ALLOW_PRIVATE_URLS", "true")
            url_safety._reset_allow_private_cache()
            data = {**c2c_message(2, "see attached"), "attachments": attachments}
            await sim.emit_event("C2C_MESSAGE_CREATE", data)
            await watch.until(lambda: len(watch.received) == 2, 10, "the second message")
            event = watch.received[1]
            assert event.message_type.value == "photo"
            assert len(event.media_urls) == 1 and event.media_types == ["image/png"]
            assert await asyncio.to_thread(Path(event.media_urls[0]).read_bytes) == PNG
            assert "see attached" in event.text
            assert "[file: notes.txt (" in event.text and "[Voice] 你好" in event.text
    finally:
        await runner.cleanup()
        monkeypatch.delenv("HERMES_ALLOW_PRIVATE_URLS", raising=False)
        url_safety._reset_allow_private_cache()


async def test_no_ready_is_a_retryable_failure_and_a_cancel_leaves_nothing(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.withhold_ready(True)
    async with started(sim, tmp_path, ready_timeout=2 * INTERVAL) as (adapter, watch):
        assert not adapter.is_connected
        assert adapter.fatal_error_code == "qqbot_gateway_not_ready"
        assert adapter.fatal_error_retryable is True  # hermes retries in the background
        assert adapter.client is None and not watch.fatal
        # hermes's own connect timeout cancels connect(): nothing is left running.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(adapter.connect(), timeout=INTERVAL)
        assert adapter.client is None and adapter.telemetry is None


async def test_a_restart_of_hermes_resumes_the_session(sim: Simulator, tmp_path: Path) -> None:
    """The session store: hermes stops (the session stays resumable), messages keep coming,
    hermes starts again and gets them, each once, from a resume."""
    env = {"QQ_CLIENT_SECRET": SECRET, "QQ_ALLOW_ALL_USERS": "true"}
    config = plugin_config(PLATFORM, extra_for(sim, tmp_path / "state"))
    with hermes_home(tmp_path / "hermes", config, env):
        first = load_platform(PLATFORM)
        before = Watch(first)
        assert await first.connect()
        for i in range(3):
            await sim.emit_event("C2C_MESSAGE_CREATE", c2c_message(i), event_id=f"R{i}")
        await before.until(lambda: len(before.received) == 3, 10, "messages before the stop")
        await first.disconnect()
        for i in range(3, 8):  # nobody connected: QQ keeps them for a resume
            await sim.emit_event("C2C_MESSAGE_CREATE", c2c_message(i), event_id=f"R{i}")
        second = load_platform(PLATFORM)
        after = Watch(second)
        assert await second.connect()
        try:
            await after.until(lambda: len(after.received) >= 5, 10, "messages sent while down")
            await asyncio.sleep(2 * INTERVAL)  # room for a duplicate to show up
            assert sorted(after.message_ids()) == [f"M{i:05d}" for i in range(3, 8)]
            assert sim.resumes and sim.resumes[-1].outcome == "resumed"
            assert len(sim.identifies) == 1
        finally:
            await second.disconnect()


async def test_hermes_gateway_run_end_to_end(sim: Simulator, tmp_path: Path) -> None:
    """The real ``hermes gateway run`` (hermes's own runner, no LLM configured) with the plugin:
    a message gets hermes's answers as passive replies, a blackhole shows in hermes's status file
    as disconnected then connected, refused credentials make it fatal and hermes exits."""
    home = tmp_path / "hermes"
    home.mkdir()
    extra = extra_for(sim, tmp_path / "state", http_addr="off")
    (home / "config.yaml").write_text(yaml.safe_dump(plugin_config(PLATFORM, extra)))
    env = {
        **os.environ,
        "HERMES_HOME": str(home),
        "QQBOT_CLIENT_SECRET": SECRET,  # not QQ_CLIENT_SECRET: that turns hermes's own QQ on
        "QQ_ALLOW_ALL_USERS": "true",
    }
    status = home / "gateway_state.json"

    def state() -> str | None:
        try:
            return str(json.loads(status.read_text())["platforms"][PLATFORM]["state"])
        except (OSError, ValueError, KeyError):
            return None

    def log_tail() -> str:
        lines = (tmp_path / "gateway.log").read_text(errors="replace").splitlines()
        return "; hermes's log ends:\n" + "\n".join(lines[-30:])

    hermes_cli = Path(sys.executable).with_name("hermes")
    with (tmp_path / "gateway.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            str(hermes_cli), "gateway", "run", env=env, stdout=log, stderr=log
        )
        try:
            await poll_until(lambda: state() == "connected", 60, "hermes: connected")
            await sim.emit_event("C2C_MESSAGE_CREATE", c2c_message(1, "hello hermes"))
            # hermes's runner answers (no model configured: it says so) as passive replies.
            await poll_until(lambda: sim.messages, 30, "hermes's answer")
            assert all(m.msg_id == "M00001" and m.kind == "c2c" for m in sim.messages)
            assert len({m.msg_seq for m in sim.messages}) == len(sim.messages)

            # The link goes half-open and the gateway refuses new connections for a while, so
            # "disconnected" lasts until the test has seen it: a resume over loopback can take
            # less than one poll, and the file is hermes's to write, not ours to watch closely.
            resumes = len(sim.resumes)
            sim.refuse_connections()
            sim.blackhole(current=True)
            await poll_until(
                lambda: state() == "disconnected",
                20 * INTERVAL,
                lambda: f"disconnected (state {state()!r}){log_tail()}",
            )
            sim.accept_connections()
            await poll_until(
                lambda: state() == "connected" and len(sim.resumes) > resumes,
                20 * INTERVAL,
                lambda: f"connected again (state {state()!r}){log_tail()}",
            )
            assert sim.resumes[-1].outcome == "resumed"

            sim.rotate_secret("a-new-secret-hermes-does-not-know")
            sim.expire_tokens()
            await sim.close_connections(4004)
            async with asyncio.timeout(60):
                assert await proc.wait() == 0  # the only platform is gone: hermes exits
            final = json.loads(status.read_text())["platforms"][PLATFORM]
            assert final["state"] == "fatal"
            assert final["error_code"] == "qqbot_gateway_token_error"
            assert SECRET not in json.dumps(final)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_images_go_out_as_native_qq_media(sim: Simulator, tmp_path: Path) -> None:
    async with started(sim, tmp_path) as (adapter, watch):
        await sim.emit_event("C2C_MESSAGE_CREATE", c2c_message(1))
        await poll_until(lambda: sim.messages, 10, "the echo")
        url = "https://images.example/cat.png"
        result = await adapter.send_image("MUSER00001", url, caption="a cat", reply_to="M00001")
        assert result.success
        upload, message = sim.messages[-2:]
        assert (upload.kind, upload.body["url"], upload.body["file_type"]) == ("c2c_file", url, 1)
        assert message.kind == "c2c" and message.body["msg_type"] == 7
        assert message.body["media"] == {"file_info": upload.id}
        assert (message.msg_id, message.msg_seq) == ("M00001", 2)  # passive, after the echo
        # A guild channel has no such upload: hermes's default (the URL as text) applies.
        await adapter.send_image("channel:42", url, caption="a cat")
        assert sim.messages[-1].kind == "channel"
        assert url in sim.messages[-1].body["content"]
        assert watch.received


# --- the webhook transport --------------------------------------------------------------------


def _dispatch(index: int, text: str) -> dict[str, Any]:
    """A C2C message as QQ posts it to the callback URL (op 0)."""
    data = c2c_message(index, text)
    return {"op": 0, "id": f"W{index}", "d": data, "s": index, "t": "C2C_MESSAGE_CREATE"}


async def test_webhook_transport_in_hermes(sim: Simulator, tmp_path: Path) -> None:
    """``transport: webhook``: the service's receiver runs inside hermes. Validation gates the
    connected state (webhook_require_validation), a signed C2C message reaches hermes and its
    reply is a passive reply, a forged callback never reaches hermes, a redelivery is dropped,
    and disconnect() is the end of "connected"."""
    webhook: dict[str, Any] = {
        "transport": "webhook",
        "webhook_addr": "127.0.0.1:0",
        "webhook_path": "/qq",
        "webhook_require_validation": True,
    }
    async with started(sim, tmp_path, **webhook) as (adapter, watch):
        assert adapter.receiver is not None and adapter.client is not None
        url = adapter.receiver.url
        assert url is not None and url.endswith("/qq")
        assert not adapter.is_connected and not watch.marks  # listening, not validated yet
        assert adapter.client.supervisors == {}  # no WebSocket, no shard
        assert adapter.telemetry is not None
        readyz = f"{adapter.telemetry.http_url}/readyz"
        async with (
            aiohttp.ClientSession() as http,
            WebhookDeliverer(url, secret=SECRET, app_id=APP_ID) as platform,
        ):
            async with http.get(readyz) as resp:
                assert resp.status == 503 and "no valid op 13" in await resp.text()
            assert await platform.validate()
            await watch.until(lambda: adapter.is_connected, 10, "connected after op 13")
            assert [m for m, _ in watch.marks] == ["connected"]
            async with http.get(readyz) as resp:
                assert resp.status == 200  # the side server tells the same truth

            # A forged callback (one bit of the signature flipped) is refused.
            forged = json.dumps(_dispatch(2, "forged")).encode()
            headers = platform.signed_headers(forged)
            signature = bytearray(bytes.fromhex(headers["X-Signature-Ed25519"]))
            signature[0] ^= 1
            headers["X-Signature-Ed25519"] = signature.hex()
            assert (await platform.post(forged, headers))[0] == 401

            message = _dispatch(1, "hello over webhooks")
            assert await platform.deliver(message)  # ACKed (op 12) once durable
            await watch.until(lambda: sim.messages, 10, "hermes's reply")
            reply = sim.messages[0]
            assert (reply.kind, reply.msg_id, reply.msg_seq) == ("c2c", "M00001", 1)
            assert reply.body["markdown"]["content"] == "re: hello over webhooks"
            assert await platform.deliver(message)  # QQ redelivers: ACKed, dropped
            # Group @-messages, guild channel @-messages and guild DMs, as QQ posts them.
            others = [
                platform.make_event(t)
                for t in ("GROUP_AT_MESSAGE_CREATE", "AT_MESSAGE_CREATE", "DIRECT_MESSAGE_CREATE")
            ]
            for payload in others:
                assert await platform.deliver(payload)
            await watch.until(lambda: len(sim.messages) >= 4, 10, "every reply")
            await asyncio.sleep(0.3)  # room for a duplicate or the forged one to show up
        # hermes answers each message in a task of its own: compared without order.
        expected = [("c2c", "M00001")]
        expected += [
            (k, p["d"]["id"]) for k, p in zip(("group", "channel", "dms"), others, strict=True)
        ]
        assert sorted(watch.message_ids()) == sorted(msg_id for _, msg_id in expected)
        assert sorted(e.source.chat_type for e in watch.received) == ["dm", "dm", "group", "group"]
        assert sorted((m.kind, m.msg_id, m.msg_seq) for m in sim.messages) == sorted(
            (kind, msg_id, 1) for kind, msg_id in expected
        )
        assert not watch.fatal
        assert platform.stats.unexpected == []
    assert not adapter.is_connected
    assert [m for m, _ in watch.marks] == ["connected", "disconnected"]
    assert adapter.receiver is None and adapter.client is None


@pytest.mark.parametrize("how", ["port_taken", "bad_tls"])
async def test_a_receiver_that_cannot_listen_is_a_fatal_error(
    sim: Simulator, tmp_path: Path, how: str
) -> None:
    """A receiver that cannot listen (the port is taken; the TLS files are no PEM): connect()
    returns False with a fatal, non-retryable error naming the setting, which hermes's runner
    reads and shows (its status file says so), and nothing is left running."""
    where = "platforms.qqbot_gateway.extra"
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        extra = {"transport": "webhook", "webhook_addr": f"127.0.0.1:{port}"}
        code, expected = "qqbot_gateway_webhook_addr_in_use", f"cannot listen on 127.0.0.1:{port} "
        expected += f"({where}.webhook_addr): "
        if how == "bad_tls":
            pem = tmp_path / "not.pem"
            pem.write_text("not a certificate\n")
            extra = {**extra, "webhook_addr": "127.0.0.1:0"}
            extra.update(webhook_tls_cert=str(pem), webhook_tls_key=str(pem))
            code = "qqbot_gateway_webhook_tls"
            expected = f"cannot use the TLS certificate/key ({where}.webhook_tls_cert): "
        async with started(sim, tmp_path, **extra) as (adapter, watch):
            assert not adapter.is_connected and not watch.marks
            assert adapter.fatal_error_code == code
            assert adapter.fatal_error_retryable is False
            assert (adapter.fatal_error_message or "").startswith(expected)
            status = json.loads((tmp_path / "hermes" / "gateway_state.json").read_text())
            assert status["platforms"][PLATFORM]["state"] == "fatal"
            assert status["platforms"][PLATFORM]["error_code"] == code
            assert adapter.client is None and adapter.receiver is None
            assert adapter.telemetry is None
        assert not watch.fatal  # connect() returned False: hermes's runner reads the error


def test_webhook_settings(tmp_path: Path) -> None:
    env = {"QQ_APP_ID": "111", "QQ_CLIENT_SECRET": "hermes-secret"}
    where = "platforms.qqbot_gateway.extra"
    s = hermes.hermes_settings(
        {}, {**env, "QQBOT_TRANSPORT": "webhook", "QQBOT_WEBHOOK_ADDR": "127.0.0.1:8080"}
    )
    assert (s.service.transport, s.service.webhook_addr) == ("webhook", ("127.0.0.1", 8080))
    s = hermes.hermes_settings({"transport": "websocket"}, {**env, "QQBOT_TRANSPORT": "webhook"})
    assert s.service.transport == "websocket"  # extra wins over the environment
    cert = tmp_path / "cert.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    hook = {"transport": "webhook", "webhook_addr": "0.0.0.0:8443"}
    bad: list[tuple[dict[str, Any], dict[str, str], str]] = [
        ({"transport": "webhook"}, {}, f"{where}.webhook_addr: required with transport: webhook"),
        ({}, {"QQBOT_TRANSPORT": "webhook"}, f"{where}.webhook_addr: required"),
        ({"transport": "carrier-pigeon"}, {}, f"{where}.transport: expected one of"),
        ({**hook, "webhook_addr": "8443"}, {}, f"{where}.webhook_addr: expected host:port"),
        ({**hook, "webhook_path": "qq"}, {}, f"{where}.webhook_path: expected a path"),
        (
            {**hook, "webhook_tls_cert": str(cert)},
            {},
            f"{where}.webhook_tls_cert: TLS needs {where}.webhook_tls_key as well",
        ),
        (
            hook,
            {"QQBOT_WEBHOOK_TLS_KEY": str(cert)},
            f"QQBOT_WEBHOOK_TLS_KEY: TLS needs {where}.webhook_tls_cert as well",
        ),
        ({**hook, "webhook_tls_key": str(tmp_path / "nope")}, {}, f"{where}.webhook_tls_key: "),
        ({**hook, "shard_count": 2}, {}, f"{where}.shard_count: the webhook transport has no"),
        ({**hook, "http_addr": "0.0.0.0:8443"}, {}, f"{where}.webhook_addr: port 8443 is the side"),
        ({**hook, "webhook_max_body": 10}, {}, f"{where}.webhook_max_body: "),
    ]
    for extra, more_env, message in bad:
        with pytest.raises(ConfigError, match="^" + re.escape(message)) as info:
            hermes.hermes_settings(extra, {**env, **more_env})
        assert "\n" not in str(info.value) and "QQBOT_TRANSPORT" not in str(info.value)


async def test_webhook_callbacks_acked_before_a_restart_of_hermes_are_handed_over(
    sim: Simulator, tmp_path: Path
) -> None:
    """The intake journal inside hermes: callbacks QQ got an ACK for but hermes had not taken
    when it stopped reach the next hermes process, each once; a redelivery after the restart
    is dropped."""
    env = {"QQ_CLIENT_SECRET": SECRET, "QQ_ALLOW_ALL_USERS": "true"}
    extra = extra_for(
        sim, tmp_path / "state", transport="webhook", webhook_addr="127.0.0.1:0", http_addr="off"
    )
    messages = [_dispatch(i, f"message {i}") for i in range(1, 4)]
    with hermes_home(tmp_path / "hermes", plugin_config(PLATFORM, extra), env):
        first = load_platform(PLATFORM)
        Watch(first)
        taken: list[str] = []
        stuck = asyncio.Event()  # never set: hermes takes nothing before it stops

        async def busy_hermes(event: Any) -> None:
            taken.append(event.message_id)
            await stuck.wait()

        first.handle_message = busy_hermes
        assert await first.connect()
        async with WebhookDeliverer(first.receiver.url, secret=SECRET, app_id=APP_ID) as platform:
            for message in messages:
                assert await platform.deliver(message)  # ACKed: durable in the journal
        await poll_until(lambda: taken, 10, "the first message in hermes's hands")
        await first.disconnect()  # drain_timeout 1 s: the handler is cancelled

        second = load_platform(PLATFORM)
        watch = Watch(second)
        assert await second.connect()
        try:
            await watch.until(lambda: len(watch.received) >= 3, 10, "the handed-over messages")
            async with WebhookDeliverer(
                second.receiver.url, secret=SECRET, app_id=APP_ID
            ) as platform:
                assert await platform.deliver(messages[0])  # QQ redelivers: dropped
            await asyncio.sleep(0.3)
            assert watch.message_ids() == ["M00001", "M00002", "M00003"]
        finally:
            await second.disconnect()
