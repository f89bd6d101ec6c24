"""What the plugin hands to hermes's ``register_platform``.

hermes's platform registry grew over time (``is_connected``, ``setup_fn``,
``env_enablement_fn``, ``apply_yaml_config_fn``, ``cron_deliver_env_var``,
``standalone_sender_fn``, ...). :func:`register` decides what to pass from the running hermes
itself, never from its version string: the keyword parameters of ``ctx.register_platform``,
and, when it forwards ``**kwargs`` to its ``PlatformEntry`` (hermes 0.19 and main both do), the
fields of that ``PlatformEntry``. A keyword hermes still refuses (a ``TypeError`` naming it) is
dropped and the registration retried, so a plugin never fails to load over an optional hook.
"""

from __future__ import annotations

import asyncio
import getpass
import inspect
import logging
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from qqbot_gateway.adapter.errors import AuthError, InvalidCredentialsError
from qqbot_gateway.config import ConfigError

from .sender import split_chat_id, standalone_send
from .settings import (
    ALLOW_ALL_ENV,
    ALLOWED_USERS_ENV,
    HOME_CHANNEL_ENV,
    HOME_CHANNEL_NAME_ENV,
    INSTALL_HINT,
    PLUGIN_KEYS,
    REQUIRED_ENV,
    SERVICE_KEYS,
    hermes_settings,
    platform_name,
)

__all__ = [
    "apply_yaml_config",
    "check_requirements",
    "env_enablement",
    "is_connected",
    "platform_entry",
    "register",
    "setup",
    "validate_config",
]

_log = logging.getLogger("qqbot_gateway.hermes")

#: hermes's own QQ credentials: they also start its built-in adapter, so they only count towards
#: "configured" when the plugin takes the built-in's place (``QQBOT_HERMES_PLATFORM=qqbot``).
_HERMES_QQ_ENV: Final = ("QQ_APP_ID", "QQ_CLIENT_SECRET")
_BUILTIN_NAME: Final = "qqbot"
#: What every hermes with plugin platforms accepts: never dropped.
_BASE_KEYWORDS: Final = frozenset({"name", "label", "adapter_factory", "check_fn"})
_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")
_reported: set[str] = set()


def check_requirements() -> bool:
    """hermes calls this before creating the adapter: everything is a hard dependency."""
    return True


def validate_config(config: Any) -> bool:
    """False (with one ERROR line naming the setting) when the platform block is unusable."""
    try:
        hermes_settings(getattr(config, "extra", None) or {}, platform=platform_name())
    except ConfigError as exc:
        message = str(exc)
        if message not in _reported:
            _reported.add(message)
            _log.error("qqbot-gateway: %s", message)
        return False
    return True


def _own_environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    environ = os.environ if environ is None else environ
    if platform_name(environ) == _BUILTIN_NAME:
        return environ
    return {k: v for k, v in environ.items() if k not in _HERMES_QQ_ENV}


def is_connected(config: Any, environ: Mapping[str, str] | None = None) -> bool:
    """Configured (hermes's ``is_connected``: its setup screen, ``gateway status``, and whether
    the environment alone enables the platform): ``extra`` plus ``QQBOT_*`` variables give a
    valid configuration with an AppID and a secret. Quiet: no log line.

    hermes's ``QQ_APP_ID`` / ``QQ_CLIENT_SECRET`` do not count here (they belong to its built-in
    adapter; two adapters on one AppID is what the docs warn about) unless the plugin runs
    under the built-in's name."""
    extra = getattr(config, "extra", None) or {}
    try:
        hermes_settings(extra, _own_environ(environ), platform=platform_name(environ))
    except ConfigError:
        return False
    return True


def env_enablement(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """hermes's ``env_enablement_fn``: what to seed into ``extra`` when the environment alone
    configures the bot (``QQBOT_APP_ID`` + ``QQBOT_CLIENT_SECRET`` or ``..._FILE``); None when
    it does not, so installing the plugin never starts a connect loop by itself. The secret is
    not copied into ``extra``: the plugin reads it from the environment when it connects."""
    env = os.environ if environ is None else environ
    if not is_connected(None, env):
        return None
    seed: dict[str, Any] = {}
    app_id = env.get("QQBOT_APP_ID", "").strip()
    if app_id:
        seed["app_id"] = app_id
    home = env.get(HOME_CHANNEL_ENV, "").strip()
    if home:
        name = env.get(HOME_CHANNEL_NAME_ENV, "").strip() or "Home"
        seed["home_channel"] = {"chat_id": home, "name": name}
    return seed


def apply_yaml_config(yaml_cfg: Mapping[str, Any], platform_cfg: Any) -> dict[str, Any] | None:
    """hermes's ``apply_yaml_config_fn``: settings written beside ``extra`` instead of inside it
    (a top-level ``qqbot_gateway:`` block, or ``platforms.qqbot_gateway.app_id``) are moved into
    ``extra``; a key also present in ``extra`` keeps ``extra``'s value. Sets no variable."""
    del yaml_cfg
    if not isinstance(platform_cfg, Mapping):
        return None
    raw_extra = platform_cfg.get("extra")
    inside = raw_extra if isinstance(raw_extra, Mapping) else {}
    known = (*SERVICE_KEYS, *PLUGIN_KEYS)
    seeded = {k: platform_cfg[k] for k in known if k in platform_cfg and k not in inside}
    return seeded or None


def setup(
    *,
    ask: Callable[[str], str] = input,
    ask_secret: Callable[[str], str] = getpass.getpass,
    say: Callable[[str], None] = print,
    environ: Mapping[str, str] | None = None,
) -> None:
    """hermes's ``setup_fn`` (``hermes gateway setup``): asks for the AppID and secret, checks
    them by fetching an access token, and saves ``QQBOT_APP_ID``, ``QQBOT_CLIENT_SECRET`` and
    the optional cron home chat in hermes's ``.env``. hermes's ``QQ_*`` names are not written:
    they would start hermes's built-in QQ adapter too."""
    from hermes_cli.config import save_env_value

    say("QQ Bot (qqbot-gateway): credentials from https://q.qq.com (Development > Settings)")
    app_id = ask("  AppID: ").strip()
    if not app_id:
        say("  Skipped: no AppID.")
        return
    secret = ask_secret("  AppSecret (not shown): ").strip()
    if not secret:
        say("  Skipped: no AppSecret.")
        return
    env = dict(os.environ if environ is None else environ)
    verdict = _check_credentials(app_id, secret, env)
    if verdict.startswith("refused"):
        say(f"  QQ {verdict}: nothing saved.")
        return
    say(f"  {verdict}")
    save_env_value("QQBOT_APP_ID", app_id)
    save_env_value("QQBOT_CLIENT_SECRET", secret)
    home = ask(
        "  Home chat for cron deliveries (group:<group_openid> or c2c:<user_openid>; empty: none): "
    ).strip()
    if home:
        kind, _target = split_chat_id(home)
        if kind is None:
            say("  Note: a chat id without group: / c2c: is sent as a C2C message.")
        save_env_value(HOME_CHANNEL_ENV, home)
    say("  Saved to hermes's .env. Next: hermes plugins enable qqbot-gateway; hermes gateway run")


def _check_credentials(app_id: str, secret: str, env: Mapping[str, str]) -> str:
    """One token fetch with the given credentials: ``"credentials accepted"``, ``"refused:
    ..."`` or a line saying the check could not be made (the values are saved then)."""
    from qqbot_gateway.adapter.auth import TokenManager

    env = {**env, "QQBOT_APP_ID": app_id, "QQBOT_CLIENT_SECRET": secret}
    env.pop("QQBOT_CLIENT_SECRET_FILE", None)
    try:
        cfg = hermes_settings({}, env).service.client_config()
    except ConfigError as exc:
        return f"could not check the credentials ({exc}); saved unchecked"

    async def fetch() -> None:
        import aiohttp

        async with aiohttp.ClientSession() as http:
            tokens = TokenManager(
                cfg.app_id,
                cfg.client_secret.get(),
                token_url=cfg.token_url,
                http=http,
                timeout=cfg.request_timeout,
                startup_attempts=1,
            )
            try:
                await tokens.start()
            finally:
                await tokens.close()

    try:
        asyncio.run(fetch())
    except InvalidCredentialsError as exc:
        return f"refused the credentials ({exc})"
    except (AuthError, OSError) as exc:
        return f"could not reach QQ's token endpoint ({exc}); saved unchecked"
    except RuntimeError as exc:  # called inside a running event loop
        return f"could not check the credentials ({exc}); saved unchecked"
    return "credentials accepted (an access token was issued)"


def platform_entry(name: str) -> dict[str, Any]:
    """Everything the plugin would like to register, by ``PlatformEntry`` field name."""
    return {
        "name": name,
        "label": "QQ Bot (qqbot-gateway)",
        "adapter_factory": _adapter_factory,
        "check_fn": check_requirements,
        "validate_config": validate_config,
        "is_connected": is_connected,
        "required_env": list(REQUIRED_ENV),
        "install_hint": INSTALL_HINT,
        "setup_fn": setup,
        "allowed_users_env": ALLOWED_USERS_ENV,
        "allow_all_env": ALLOW_ALL_ENV,
        "max_message_length": 2000,
        "emoji": "🐧",
        "platform_hint": (
            "You are chatting on QQ. Replies are split into messages of at most 2000 "
            "characters; keep them short."
        ),
        "env_enablement_fn": env_enablement,
        "apply_yaml_config_fn": apply_yaml_config,
        "cron_deliver_env_var": HOME_CHANNEL_ENV,
        "standalone_sender_fn": standalone_send,
    }


def _adapter_factory(config: Any) -> Any:
    from .adapter import QQBotGatewayAdapter

    return QQBotGatewayAdapter(config)


def accepted_keywords(register_platform: Callable[..., Any]) -> frozenset[str] | None:
    """The keywords ``register_platform`` takes; None when that cannot be known (then every
    keyword is tried, and refused ones are dropped one by one)."""
    try:
        signature = inspect.signature(register_platform)
    except (TypeError, ValueError):
        return None
    params = signature.parameters.values()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {
        "self"
    }
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        return frozenset(names)
    # hermes forwards **entry_kwargs to PlatformEntry: its fields are what it accepts.
    try:
        from gateway.platform_registry import PlatformEntry
    except ImportError:
        return None
    try:
        names |= set(inspect.signature(PlatformEntry).parameters)
    except (TypeError, ValueError):
        return None
    return frozenset(names)


def register(ctx: Any) -> Any:
    """hermes's plugin hook: registers the platform (``platforms: qqbot_gateway:``) with every
    hook the running hermes accepts."""
    wanted = platform_entry(platform_name())
    accepted = accepted_keywords(ctx.register_platform)
    kwargs = {k: v for k, v in wanted.items() if accepted is None or k in accepted}
    while True:  # bounded: every turn returns, raises or drops one keyword
        try:
            return ctx.register_platform(**kwargs)
        except TypeError as exc:
            match = _UNEXPECTED.search(str(exc))
            refused = match.group(1) if match else None
            if refused is None or refused not in kwargs or refused in _BASE_KEYWORDS:
                raise
            _log.info("qqbot-gateway: this hermes does not take %s: registered without it", refused)
            del kwargs[refused]
