"""The plugin's ``register()`` against the registration contexts of hermes 0.19 (installed) and of
hermes main, and the hooks it registers: ``is_connected``, ``env_enablement_fn``,
``apply_yaml_config_fn``, the required variables, the documented keys.

``MainPlatformEntry`` and ``MainContext.register_platform`` copy hermes main as of commit
``00067189dfecf833d4d009c2dd977ae85cf800e0`` of NousResearch/hermes-agent:
``gateway/platform_registry.py`` (``PlatformEntry``: every field, in order, with its default)
and ``hermes_cli/plugins.py`` (``PluginContext.register_platform``: the signature, and the body
reduced to what it does with the arguments: ``plugin_name`` defaulted, everything forwarded to
``PlatformEntry``, ``source="plugin"``). As in main, ``register_platform`` imports
``PlatformEntry`` from ``gateway.platform_registry`` when called: the tests put the copy there.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("gateway.platforms.base", reason="hermes-agent is not installed")

from qqbot_gateway.config import CLUSTER_SETTINGS, ConfigError, load_settings
from qqbot_gateway.integrations import hermes
from qqbot_gateway.integrations.hermes import registration

ROOT = Path(__file__).resolve().parent.parent
HOOKS = (
    "is_connected",
    "setup_fn",
    "env_enablement_fn",
    "apply_yaml_config_fn",
    "cron_deliver_env_var",
    "standalone_sender_fn",
)


@dataclass
class MainPlatformEntry:
    """hermes main's ``PlatformEntry`` (commit 00067189), fields and defaults as there."""

    name: str
    label: str
    adapter_factory: Callable[[Any], Any]
    check_fn: Callable[[], bool]
    validate_config: Callable[[Any], bool] | None = None
    ensure_deps_fn: Callable[[], bool] | None = None
    is_connected: Callable[[Any], bool] | None = None
    required_env: list[str] = field(default_factory=list)
    install_hint: str = ""
    setup_fn: Callable[[], None] | None = None
    source: str = "plugin"
    plugin_name: str = ""
    allowed_users_env: str = ""
    allow_all_env: str = ""
    max_message_length: int = 0
    pii_safe: bool = False
    emoji: str = "🔌"
    allow_update_command: bool = True
    platform_hint: str = ""
    env_enablement_fn: Callable[[], dict[str, Any] | None] | None = None
    apply_yaml_config_fn: Callable[[dict[str, Any], dict[str, Any]], Any] | None = None
    cron_deliver_env_var: str = ""
    parse_target_ref_fn: Callable[[str], Any] | None = None
    validate_target_ref_fn: Callable[[str], Any] | None = None
    send_message_handler: Callable[..., Any] | None = None
    standalone_sender_fn: Callable[..., Awaitable[dict[str, Any]]] | None = None


@dataclass
class OlderPlatformEntry:
    """A hermes from before the cron and enablement hooks (no such fields)."""

    name: str
    label: str
    adapter_factory: Callable[[Any], Any]
    check_fn: Callable[[], bool]
    validate_config: Callable[[Any], bool] | None = None
    required_env: list[str] = field(default_factory=list)
    install_hint: str = ""
    source: str = "plugin"
    plugin_name: str = ""
    allowed_users_env: str = ""
    allow_all_env: str = ""
    max_message_length: int = 0
    emoji: str = "🔌"
    platform_hint: str = ""


class MainContext:
    """``PluginContext.register_platform`` of hermes main (commit 00067189)."""

    def __init__(self) -> None:
        self.entries: list[Any] = []

    def register_platform(
        self,
        name: str,
        label: str,
        adapter_factory: Callable[..., Any],
        check_fn: Callable[..., Any],
        validate_config: Callable[..., Any] | None = None,
        required_env: list[str] | None = None,
        install_hint: str = "",
        **entry_kwargs: Any,
    ) -> Any:
        from gateway.platform_registry import PlatformEntry

        entry_kwargs.setdefault("plugin_name", "qqbot-gateway")
        entry = PlatformEntry(
            name=name,
            label=label,
            adapter_factory=adapter_factory,
            check_fn=check_fn,
            validate_config=validate_config,
            required_env=required_env or [],
            install_hint=install_hint,
            source="plugin",
            **entry_kwargs,
        )
        self.entries.append(entry)
        return entry


class ExplicitContext:
    """A registrar with named parameters only (no ``**kwargs``): nothing else may be passed."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def register_platform(
        self,
        name: str,
        label: str,
        adapter_factory: Callable[..., Any],
        check_fn: Callable[..., Any],
        validate_config: Callable[..., Any] | None = None,
        required_env: list[str] | None = None,
        install_hint: str = "",
        emoji: str = "",
    ) -> None:
        self.calls.append(dict(locals()))


def test_register_on_hermes_main_passes_every_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.platform_registry

    monkeypatch.setattr(gateway.platform_registry, "PlatformEntry", MainPlatformEntry)
    monkeypatch.delenv(hermes.PLATFORM_ENV, raising=False)
    ctx = MainContext()
    entry = hermes.register(ctx)
    assert isinstance(entry, MainPlatformEntry) and ctx.entries == [entry]
    assert entry.name == hermes.DEFAULT_PLATFORM and entry.plugin_name == "qqbot-gateway"
    for hook in HOOKS:
        assert getattr(entry, hook), hook
    assert entry.standalone_sender_fn is hermes.standalone_send
    assert entry.cron_deliver_env_var == hermes.HOME_CHANNEL_ENV == "QQBOT_HERMES_HOME_CHANNEL"
    assert entry.is_connected is hermes.is_connected
    assert entry.required_env == ["QQBOT_APP_ID", "QQBOT_CLIENT_SECRET"]
    assert not {"QQ_APP_ID", "QQ_CLIENT_SECRET"} & set(entry.required_env)
    assert entry.max_message_length == 2000 and entry.allowed_users_env == "QQ_ALLOWED_USERS"
    # Nothing main has and the plugin does not implement is set.
    assert entry.parse_target_ref_fn is None and entry.send_message_handler is None


def test_register_on_an_older_hermes_leaves_the_new_hooks_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gateway.platform_registry

    monkeypatch.setattr(gateway.platform_registry, "PlatformEntry", OlderPlatformEntry)
    ctx = MainContext()
    entry = hermes.register(ctx)
    assert isinstance(entry, OlderPlatformEntry)
    assert entry.emoji == "🐧" and entry.required_env == list(hermes.REQUIRED_ENV)

    explicit = ExplicitContext()
    hermes.register(explicit)
    (call,) = explicit.calls
    assert call["emoji"] == "🐧" and call["install_hint"] == hermes.INSTALL_HINT


def test_a_keyword_refused_at_call_time_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A registrar whose signature cannot be read: every keyword is tried, refused ones go."""
    import gateway.platform_registry

    monkeypatch.setattr(gateway.platform_registry, "PlatformEntry", OlderPlatformEntry)
    entries: list[Any] = []

    class Opaque:
        def __getattr__(self, name: str) -> Any:
            if name != "register_platform":
                raise AttributeError(name)

            def register_platform(*args: Any, **kwargs: Any) -> Any:
                entries.append(OlderPlatformEntry(*args, **kwargs))
                return entries[-1]

            register_platform.__signature__ = None  # type: ignore[attr-defined]
            return register_platform

    monkeypatch.setattr(registration, "accepted_keywords", lambda fn: None)
    entry = hermes.register(Opaque())
    assert entries == [entry] and entry.emoji == "🐧"


def test_register_on_the_installed_hermes() -> None:
    """hermes 0.19.0's own PlatformEntry takes every hook: all are registered there too."""
    from gateway.platform_registry import PlatformEntry

    fields_019 = {f.name for f in fields(PlatformEntry)}
    accepted = registration.accepted_keywords(MainContext().register_platform)
    assert accepted is not None and fields_019 <= accepted
    wanted = set(registration.platform_entry("x"))
    assert wanted <= fields_019, wanted - fields_019


def test_is_connected_and_env_enablement() -> None:
    own = {"QQBOT_APP_ID": "1", "QQBOT_CLIENT_SECRET": "s", "QQBOT_STATE_DIR": "off"}
    hermes_qq = {"QQ_APP_ID": "1", "QQ_CLIENT_SECRET": "s", "QQBOT_STATE_DIR": "off"}

    class Config:
        def __init__(self, extra: dict[str, Any]) -> None:
            self.extra = extra

    assert hermes.is_connected(Config({}), own)
    assert not hermes.is_connected(Config({}), {"QQBOT_APP_ID": "1"})
    # hermes's own names belong to its built-in adapter: not "configured" for the plugin ...
    assert not hermes.is_connected(Config({}), hermes_qq)
    # ... unless the plugin takes the built-in's place.
    assert hermes.is_connected(Config({}), {**hermes_qq, hermes.PLATFORM_ENV: "qqbot"})
    assert hermes.is_connected(Config({"app_id": "1", "client_secret": "s"}), {})
    assert not hermes.is_connected(Config({"app_id": "1", "shard_count": "x"}), own)

    assert hermes.env_enablement({}) is None
    assert hermes.env_enablement(hermes_qq) is None
    assert hermes.env_enablement(own) == {"app_id": "1"}
    seeded = hermes.env_enablement({**own, hermes.HOME_CHANNEL_ENV: "group:G1"})
    assert seeded == {"app_id": "1", "home_channel": {"chat_id": "group:G1", "name": "Home"}}


def test_apply_yaml_config() -> None:
    block = {
        "enabled": True,
        "app_id": "1",
        "dm_policy": "open",
        "group_policy": "allowlist",
        "not_ours": 3,
        "extra": {"dm_policy": "allowlist"},
    }
    assert hermes.apply_yaml_config({}, block) == {"app_id": "1", "group_policy": "allowlist"}
    assert hermes.apply_yaml_config({}, {"enabled": True}) is None
    assert hermes.apply_yaml_config({}, "nonsense") is None


def test_group_policy_default_admits_no_group_message() -> None:
    env = {"QQBOT_APP_ID": "1", "QQBOT_CLIENT_SECRET": "s", "QQBOT_STATE_DIR": "off"}
    assert hermes.hermes_settings({}, env).group_policy == "disabled"
    # hermes's built-in adapter spells the same thing "pairing".
    assert hermes.hermes_settings({"group_policy": "pairing"}, env).group_policy == "disabled"


def test_the_service_loader_knows_the_hermes_variables() -> None:
    warnings: list[str] = []
    env = {
        "QQBOT_APP_ID": "1",
        "QQBOT_CLIENT_SECRET": "s",
        hermes.HTTP_ADDR_ENV: "127.0.0.1:9464",
        hermes.PLATFORM_ENV: "qqbot",
        hermes.HOME_CHANNEL_ENV: "group:G1",
        "QQBOT_HOME_CHANNEL": "G1",  # hermes's built-in adapter's, often in the same .env
    }
    load_settings(env=env, warn=warnings.append)
    assert warnings == []
    load_settings(
        env={**env, "QQBOT_HERMES_PLATFROM": "x", "QQBOT_SHARDS": "2"}, warn=warnings.append
    )
    assert len(warnings) == 1 and "QQBOT_SHARDS" in warnings[0]  # the prefix is hermes's alone


def _documented_keys() -> set[str]:
    text = (ROOT / "docs" / "hermes.md").read_text(encoding="utf-8")
    section = text.split("## Settings", 1)[1].split("\n## ", 1)[0]
    keys: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            keys.update(re.findall(r"`([a-z_]+)`", first))
    return keys


def test_docs_list_every_key_the_plugin_accepts() -> None:
    accepted = set(hermes.PLUGIN_KEYS) | set(hermes.SERVICE_KEYS)
    documented = _documented_keys()
    assert accepted - documented == set(), "accepted but not in docs/hermes.md"
    assert documented - accepted == set(), "in docs/hermes.md but not accepted"


def test_the_shipped_manifest_matches_the_code(tmp_path: Path) -> None:
    """``plugin.yaml`` (package data, so in the wheel) as hermes 0.19.0's manifest parser reads
    it: a platform plugin named like the entry point, asking for this project's variables."""
    import importlib.resources

    from hermes_cli.plugins import PluginManager

    resource = importlib.resources.files("qqbot_gateway.integrations.hermes") / "plugin.yaml"
    assert resource.is_file()
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert '"integrations/hermes/plugin.yaml"' in pyproject  # package-data: shipped
    plugin_dir = tmp_path / "qqbot-gateway"
    plugin_dir.mkdir()
    (plugin_dir / "plugin.yaml").write_text(resource.read_text(encoding="utf-8"))
    manifest = PluginManager()._parse_manifest(plugin_dir / "plugin.yaml", plugin_dir, "user", "")
    assert manifest is not None
    assert manifest.name == hermes.ENTRY_POINT and manifest.kind == "platform"
    required = [e["name"] if isinstance(e, dict) else e for e in manifest.requires_env]
    assert required == list(hermes.REQUIRED_ENV)
    text = resource.read_text(encoding="utf-8")
    for var in (hermes.HOME_CHANNEL_ENV, hermes.HTTP_ADDR_ENV, hermes.PLATFORM_ENV):
        assert f"name: {var}" in text


@pytest.mark.parametrize("key", sorted(CLUSTER_SETTINGS))
def test_cluster_settings_are_refused_not_ignored(key: str) -> None:
    from qqbot_gateway.integrations.hermes.settings import hermes_settings

    env = {"QQBOT_APP_ID": "1", "QQBOT_CLIENT_SECRET": "s"}
    with pytest.raises(ConfigError, match=f"platforms.qqbot_gateway.extra.{key}: cluster mode"):
        hermes_settings({key: "x"}, environ=env)
    with pytest.raises(ConfigError, match=f"QQBOT_{key.upper()}: cluster mode"):
        hermes_settings({}, environ={**env, f"QQBOT_{key.upper()}": "x"})
