"""The hermes plugin end to end against the simulator, for what newer QQ and newer hermes added:
cron delivered by hermes's own scheduler through the plugin's standalone sender (no gateway
process), the environment alone enabling the platform in hermes's own config loader,
``hermes gateway setup`` checking credentials, and ``GROUP_MESSAGE_CREATE`` handled like a group
@-message (group policy, allow-list, passive reply) while member events are left to the library.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from qqbot_gateway.simulator import Simulator, SimulatorConfig
from tests.gateway_harness import APP_ID, SECRET, sim_config
from tests.hermes_harness import PLUGIN, Watch, hermes_home, load_platform, plugin_config

pytest.importorskip("gateway.platforms.base", reason="hermes-agent is not installed")

from qqbot_gateway.integrations import hermes
from tests.test_hermes_plugin import PLATFORM, extra_for, started

pytestmark = pytest.mark.slow

GROUP = "C9F778FE6ADF9D1D1DBE395BF744A33A"
USER = "E4F4AEA33253A2797FB897C50B81D7ED"


@pytest.fixture
def simulator_config() -> SimulatorConfig:
    return sim_config()


def _deliver(job: dict[str, Any], content: str) -> str | None:
    """hermes's cron delivery, as its scheduler runs it after a job (no gateway in-process)."""
    from cron.scheduler import _deliver_result

    result: str | None = _deliver_result(job, content)
    return result


def _job(deliver: str) -> dict[str, Any]:
    return {"id": "job1", "name": "daily", "deliver": deliver}


async def test_cron_reaches_a_group_and_a_user_through_the_standalone_sender(
    sim: Simulator, tmp_path: Path
) -> None:
    extra = extra_for(sim, tmp_path / "state")
    env = {"QQBOT_CLIENT_SECRET": SECRET, hermes.HOME_CHANNEL_ENV: f"group:{GROUP}"}
    config = {**plugin_config(PLATFORM, extra), "cron": {"wrap_response": False}}
    with hermes_home(tmp_path / "hermes", config, env):
        # No adapter of the platform runs in this process: hermes uses the standalone sender.
        for deliver, text in (
            (f"{PLATFORM}:group:{GROUP}", "report for the group"),
            (f"{PLATFORM}:c2c:{USER}", "report for a user"),
            (PLATFORM, "report for the home chat"),  # QQBOT_HERMES_HOME_CHANNEL
        ):
            error = await asyncio.to_thread(_deliver, _job(deliver), text)
            assert error is None, error
    sent = [(m.kind, m.target, m.msg_id, m.body.get("content")) for m in sim.messages]
    assert ("group", GROUP, None, "report for the group") in sent
    assert ("c2c", USER, None, "report for a user") in sent
    assert ("group", GROUP, None, "report for the home chat") in sent
    assert all(m.msg_id is None and m.event_id is None for m in sim.messages)  # proactive


async def test_cron_errors_reach_hermes(start_sim: Any, tmp_path: Path) -> None:
    """QQ refusing proactive messages (as it does since 2025-04-21 for most bots) and refused
    credentials are errors hermes records for the job, never a silent success."""
    sim = await start_sim(allow_proactive=False)
    config = {**plugin_config(PLATFORM, extra_for(sim, tmp_path / "state")), "cron": {}}
    with hermes_home(tmp_path / "hermes", config, {"QQBOT_CLIENT_SECRET": SECRET}):
        error = await asyncio.to_thread(_deliver, _job(f"{PLATFORM}:group:{GROUP}"), "x")
        assert error is not None and "proactive message not allowed" in error, error
    with hermes_home(tmp_path / "hermes2", config, {"QQBOT_CLIENT_SECRET": "wrong"}):
        error = await asyncio.to_thread(_deliver, _job(f"{PLATFORM}:c2c:{USER}"), "x")
        assert error is not None and "qqbot-gateway" in error, error
        assert "wrong" not in error  # the secret never appears
    assert sim.messages == []


async def test_the_environment_alone_enables_the_platform(sim: Simulator, tmp_path: Path) -> None:
    """No ``platforms:`` block: hermes's loader asks ``is_connected`` and ``env_enablement_fn``."""
    from gateway.config import Platform, load_gateway_config

    base = {"plugins": {"enabled": [PLUGIN]}}
    own = {
        "QQBOT_APP_ID": APP_ID,
        "QQBOT_CLIENT_SECRET": SECRET,
        "QQBOT_API_BASE": sim.base_url,
        "QQBOT_TOKEN_URL": sim.token_url,
        hermes.HOME_CHANNEL_ENV: f"c2c:{USER}",
    }
    with hermes_home(tmp_path / "a", base, own):
        from hermes_cli.plugins import discover_plugins

        discover_plugins(force=True)
        cfg = load_gateway_config().platforms.get(Platform(PLATFORM))
        assert cfg is not None and cfg.enabled
        assert cfg.extra.get("app_id") == APP_ID and "client_secret" not in cfg.extra
        assert cfg.home_channel is not None and cfg.home_channel.chat_id == f"c2c:{USER}"
    # hermes's own QQ_* variables start its built-in adapter; they do not enable the plugin.
    theirs = {"QQ_APP_ID": APP_ID, "QQ_CLIENT_SECRET": SECRET}
    saved = {k: os.environ.pop(k, None) for k in own}
    try:
        with hermes_home(tmp_path / "b", base, theirs):
            discover_plugins(force=True)
            cfg = load_gateway_config().platforms.get(Platform(PLATFORM))
            assert cfg is None or not cfg.enabled
    finally:
        os.environ.update({k: v for k, v in saved.items() if v is not None})


async def test_setup_checks_the_credentials_before_saving(sim: Simulator, tmp_path: Path) -> None:
    said: list[str] = []
    env = {"QQBOT_TOKEN_URL": sim.token_url}

    def run(answers: list[str], secret: str) -> None:
        hermes.setup(
            ask=lambda _prompt: answers.pop(0),
            ask_secret=lambda _prompt: secret,
            say=said.append,
            environ={**os.environ, **env},
        )

    before = dict(os.environ)
    try:
        with hermes_home(tmp_path / "h", {}, env) as home:
            await _setup_twice(run, said, home)
    finally:  # hermes's save_env_value sets os.environ too: leave nothing to later tests
        os.environ.clear()
        os.environ.update(before)


async def _setup_twice(run: Any, said: list[str], home: Path) -> None:
    """Refused credentials save nothing; accepted ones are saved under this project's names."""
    await asyncio.to_thread(run, [APP_ID], "wrong")
    assert any("refused" in line for line in said), said
    assert not (home / ".env").exists() or "QQBOT_APP_ID" not in (home / ".env").read_text()
    await asyncio.to_thread(run, [APP_ID, f"group:{GROUP}"], SECRET)
    assert any("credentials accepted" in line for line in said), said
    saved = (home / ".env").read_text()
    assert f"QQBOT_APP_ID={APP_ID}" in saved and "QQBOT_CLIENT_SECRET=" in saved
    assert f"{hermes.HOME_CHANNEL_ENV}=group:{GROUP}" in saved
    assert "QQ_APP_ID" not in saved and "QQ_CLIENT_SECRET" not in saved
    assert SECRET not in "\n".join(said)


def _group_message(index: int, group: str = GROUP) -> dict[str, Any]:
    return {
        "id": f"G{index:05d}",
        "author": {"member_openid": f"MEMBER{index:05d}", "id": f"MEMBER{index:05d}"},
        "content": f"plain group message {index}",
        "group_openid": group,
        "group_id": group,
        "timestamp": "2026-07-01T12:00:00+08:00",
    }


async def test_group_message_create_reaches_hermes_like_an_at_message(
    sim: Simulator, tmp_path: Path
) -> None:
    other = "0" * 32
    async with started(sim, tmp_path, group_policy="allowlist", group_allow_from=[GROUP]) as (
        adapter,
        watch,
    ):
        await sim.emit_event("GROUP_MESSAGE_CREATE", _group_message(1))
        await sim.emit_event("GROUP_MESSAGE_CREATE", _group_message(2, group=other))  # refused
        await sim.emit_event(
            "GROUP_AT_MESSAGE_CREATE", {**_group_message(3), "content": " @bot hi"}
        )
        for t in hermes.NOT_MAPPED:
            await sim.emit_event(t, {"group_openid": GROUP, "member_openid": "X", "timestamp": 1})
        await watch.until(lambda: len(watch.received) >= 2, 10, "two group messages")
        await watch.until(lambda: len(sim.messages) >= 2, 10, "two replies")
        assert [e.message_id for e in watch.received] == ["G00001", "G00003"]
        first, at = watch.received
        assert first.source.chat_type == "group" and first.source.chat_id == GROUP
        assert first.text == "plain group message 1" and at.text == "hi"
        replies = {m.msg_id: m for m in sim.messages}
        assert replies["G00001"].kind == "group" and replies["G00001"].target == GROUP
        assert replies["G00001"].msg_seq == 1  # a passive reply to the message
        # Member events reach the client (counted by type) but not hermes.
        url = adapter.telemetry.http_url
        async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as resp:
            text = await resp.text()
        for t in hermes.NOT_MAPPED:
            assert f'type="{t}"' in text, t
        await asyncio.sleep(0.2)
        assert len(watch.received) == 2


async def test_group_messages_are_off_by_default(sim: Simulator, tmp_path: Path) -> None:
    extra = extra_for(sim, tmp_path / "state")
    del extra["group_policy"]
    env = {"QQBOT_CLIENT_SECRET": SECRET, "QQ_ALLOW_ALL_USERS": "true"}
    with hermes_home(tmp_path / "hermes", plugin_config(PLATFORM, extra), env):
        adapter = load_platform(PLATFORM)
        watch = Watch(adapter)
        assert await adapter.connect()
        try:
            assert adapter.settings.group_policy == "disabled"
            await sim.emit_event("GROUP_MESSAGE_CREATE", _group_message(1))
            await sim.emit_event("GROUP_AT_MESSAGE_CREATE", _group_message(2))
            await sim.emit_event("C2C_MESSAGE_CREATE")  # a DM still arrives: the link works
            await watch.until(lambda: len(watch.received) == 1, 10, "the C2C message")
            await asyncio.sleep(0.2)
            assert [e.source.chat_type for e in watch.received] == ["dm"]
        finally:
            await adapter.disconnect()


async def test_the_standalone_sender_directly(sim: Simulator, tmp_path: Path) -> None:
    """What hermes's contract leaves to the sender: targets, limits, a result for every case."""

    from gateway.config import PlatformConfig

    def config() -> Any:
        return PlatformConfig(
            enabled=True, extra={**extra_for(sim, tmp_path / "s"), "client_secret": SECRET}
        )

    env = {"QQBOT_STATE_DIR": "off"}
    send = hermes.standalone_send
    ok = await send(config(), "channel:1234567", "to a channel", thread_id="t", environ=env)
    assert ok["success"] and ok["message_id"]
    assert await send(config(), f"dms:{GROUP}", "to a guild DM", environ=env) == {
        "success": True,
        "message_id": sim.messages[-1].id,
    }
    bare = await send(config(), USER, "a bare openid is C2C", caption="new in main", environ=env)
    assert bare["success"]
    assert [(m.kind, m.target) for m in sim.messages] == [
        ("channel", "1234567"),
        ("dms", GROUP),
        ("c2c", USER),
    ]
    media_only = await send(config(), USER, "", media_files=[("/tmp/x.png", False)], environ=env)
    assert "media" in media_only["error"]
    assert "2000" in (await send(config(), USER, "x" * 2001, environ=env))["error"]
    assert (await send(config(), USER, "  ", environ=env)) == {"success": True, "message_id": None}

    broken_extra = {"app_id": APP_ID, "shard_count": "x", "client_secret": SECRET}
    broken = await send(PlatformConfig(enabled=True, extra=broken_extra), USER, "x", environ=env)
    assert "shard_count" in broken["error"]
    assert len(sim.messages) == 3


async def test_the_package_directory_is_a_hermes_directory_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For a hermes that only scans ``~/.hermes/plugins/<name>/``: the package directory, linked
    there, is found by hermes 0.19.0's directory discovery through the shipped ``plugin.yaml``
    (``kind: platform``) and registers the platform (the entry point hidden for the test)."""
    import importlib.metadata as md

    real = md.entry_points

    def without_ours(**kwargs: Any) -> Any:
        found: Any = real(**kwargs)
        if kwargs.get("group") == "hermes_agent.plugins":
            return md.EntryPoints([])
        if not kwargs:
            return md.EntryPoints([e for e in found.select() if e.group != "hermes_agent.plugins"])
        return found

    monkeypatch.setattr(md, "entry_points", without_ours)
    home = tmp_path / "hermes"
    (home / "plugins").mkdir(parents=True)
    (home / "plugins" / PLUGIN).symlink_to(Path(hermes.__file__).parent, target_is_directory=True)
    with hermes_home(home, {"plugins": {"enabled": [PLUGIN]}}, {}):
        from gateway.platform_registry import platform_registry
        from hermes_cli.plugins import discover_plugins, get_plugin_manager

        discover_plugins(force=True)
        loaded = get_plugin_manager()._plugins[PLUGIN]
        assert loaded.enabled and loaded.error is None
        assert (loaded.manifest.source, loaded.manifest.kind) == ("user", "platform")
        entry = platform_registry.get(PLATFORM)
        assert entry is not None and entry.standalone_sender_fn is not None
        assert entry.required_env == list(hermes.REQUIRED_ENV)
    monkeypatch.undo()
    discover_plugins(force=True)  # the entry point again, for the tests after this one
