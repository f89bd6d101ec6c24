"""The plugin's settings: ``platforms.<name>.extra`` plus the environment, validated once.

Every key accepted here is in :data:`PLUGIN_KEYS` (the plugin's own) or :data:`SERVICE_KEYS`
(the service's settings under their lowercase names); ``docs/hermes.md`` documents each one and
a test keeps the two in step.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from qqbot_gateway.config import (
    CLUSTER_SETTINGS,
    ENV_PREFIX,
    REMOVED_SETTINGS,
    SETTING_NAMES,
    ConfigError,
    Settings,
    load_settings,
    refuse_removed_env,
)

__all__ = [
    "ALLOWED_USERS_ENV",
    "ALLOW_ALL_ENV",
    "DEFAULT_PLATFORM",
    "ENTRY_POINT",
    "HOME_CHANNEL_ENV",
    "HTTP_ADDR_ENV",
    "INSTALL_HINT",
    "PLATFORM_ENV",
    "PLUGIN_KEYS",
    "REQUIRED_ENV",
    "SERVICE_KEYS",
    "HermesSettings",
    "hermes_settings",
    "platform_name",
]

#: The name under ``plugins: enabled:`` (the entry point's name in pyproject.toml).
ENTRY_POINT: Final = "qqbot-gateway"
#: The platform key under ``platforms:``; differs from the built-in ``qqbot`` so that both can
#: run side by side while migrating. ``QQBOT_HERMES_PLATFORM=qqbot`` takes the built-in's place.
DEFAULT_PLATFORM: Final = "qqbot_gateway"
PLATFORM_ENV: Final = "QQBOT_HERMES_PLATFORM"
#: The side server's own address setting inside hermes (``http_addr`` in ``extra`` wins); off
#: unless set, so a hermes process never opens a port it was not asked to.
HTTP_ADDR_ENV: Final = "QQBOT_HERMES_HTTP_ADDR"
#: The chat cron jobs deliver to (``deliver: qqbot_gateway``), e.g. ``group:<group_openid>`` or
#: ``c2c:<user_openid>``: hermes's ``cron_deliver_env_var`` for this platform.
HOME_CHANNEL_ENV: Final = "QQBOT_HERMES_HOME_CHANNEL"
HOME_CHANNEL_NAME_ENV: Final = "QQBOT_HERMES_HOME_CHANNEL_NAME"
#: What ``hermes gateway setup`` asks for: this project's names. hermes's own ``QQ_APP_ID`` /
#: ``QQ_CLIENT_SECRET`` also start hermes's built-in QQ adapter, so they are not asked for
#: (they are still read, as a last resort, for ``QQBOT_HERMES_PLATFORM=qqbot``).
REQUIRED_ENV: Final = ("QQBOT_APP_ID", "QQBOT_CLIENT_SECRET")
#: hermes's allow-list settings for QQ, shared with its built-in adapter so they carry over.
ALLOWED_USERS_ENV: Final = "QQ_ALLOWED_USERS"
ALLOW_ALL_ENV: Final = "QQ_ALLOW_ALL_USERS"
INSTALL_HINT: Final = (
    "pip install 'qqbot-gateway[hermes] @ git+<repository URL>' (or pip install "
    "'.[hermes]' in a checkout): qqbot-gateway is not on PyPI"
)

POLICIES: Final = ("open", "allowlist", "pairing", "disabled")
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})

#: Keys of ``extra`` this plugin reads besides the service settings.
PLUGIN_KEYS: Final = (
    "http_addr",
    "markdown_support",
    "dm_policy",
    "allow_from",
    "group_policy",
    "group_allow_from",
    "ready_timeout",
    "chunk_size",
)
#: Service settings that hermes owns inside its process (logging), or that have their own name
#: here (the side server's address).
_NOT_FROM_SERVICE: Final = frozenset({"log_format", "log_level", "http_addr"})
#: The service settings accepted in ``extra`` under their lowercase names.
SERVICE_KEYS: Final = tuple(
    k for k in SETTING_NAMES if k not in _NOT_FROM_SERVICE and k not in CLUSTER_SETTINGS
)
_SETTING_VAR = re.compile(re.escape(ENV_PREFIX) + r"[A-Z0-9_]+")


def platform_name(environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    name = environ.get(PLATFORM_ENV, "").strip().lower()
    return name or DEFAULT_PLATFORM


@dataclass(frozen=True, slots=True)
class HermesSettings:
    """The plugin's validated settings: the service's, plus what hermes users configure today."""

    service: Settings
    markdown_support: bool = True
    dm_policy: str = "pairing"
    allow_from: tuple[str, ...] = ()
    #: Groups and guild channels: no group message unless asked (``pairing`` is accepted as
    #: hermes's built-in adapter spells the same thing).
    group_policy: str = "disabled"
    group_allow_from: tuple[str, ...] = ()
    #: connect() waits this long for READY before reporting a retryable failure to hermes
    #: (below hermes's own 30 s connect timeout).
    ready_timeout: float = 25.0
    #: Long replies are split into chunks of at most this many characters, each one a passive
    #: reply to the same message with its own msg_seq.
    chunk_size: int = 2000
    warnings: tuple[str, ...] = field(default=(), compare=False)


def _as_text(value: Any) -> str:
    if isinstance(value, bool):  # YAML's true / on / yes: the service's settings parse these
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _bool(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{name}: expected true or false, got {raw!r}")


def _list(raw: Any) -> tuple[str, ...]:
    items = raw if isinstance(raw, list | tuple) else str(raw).split(",")
    return tuple(s for s in (str(x).strip() for x in items) if s)


def _number(name: str, raw: Any, *, integer: bool = False) -> float:
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = int(raw) if integer else float(raw)
    except (TypeError, ValueError):
        what = "a positive integer" if integer else "a positive number of seconds"
        raise ConfigError(f"{name}: expected {what}, got {raw!r}") from None
    if value <= 0:
        what = "a positive integer" if integer else "a positive number of seconds"
        raise ConfigError(f"{name}: expected {what}, got {raw!r}")
    return value


def hermes_settings(
    extra: Mapping[str, Any] | None,
    environ: Mapping[str, str] | None = None,
    *,
    platform: str = DEFAULT_PLATFORM,
) -> HermesSettings:
    """Validate a ``platforms.<name>.extra`` block plus the environment.

    Precedence: ``extra``, then ``QQBOT_*`` variables, then hermes's ``QQ_APP_ID`` /
    ``QQ_CLIENT_SECRET``. Raises :class:`~qqbot_gateway.config.ConfigError` naming the setting.
    """
    extra = dict(extra or {})
    environ = os.environ if environ is None else environ
    where = f"platforms.{platform}.extra"
    for key, why in REMOVED_SETTINGS.items():  # an error: ignoring one would change behaviour
        if key in extra:
            raise ConfigError(f"{where}.{key}: {why}")
    refuse_removed_env(environ)
    for key in sorted(CLUSTER_SETTINGS):  # refused, not ignored: the user expects them to act
        var = ENV_PREFIX + key.upper()
        name = f"{where}.{key}" if key in extra else var if environ.get(var, "").strip() else None
        if name is not None:
            raise ConfigError(
                f"{name}: cluster mode (Redis leases, stream delivery) runs under "
                "`qqbot-gateway run`, not inside hermes; unset it for the plugin"
            )
    env: dict[str, str] = {}
    names: dict[str, str] = {}  # QQBOT_X -> the name to show in a message
    for key in SERVICE_KEYS:
        var = ENV_PREFIX + key.upper()
        if environ.get(var, "").strip():
            env[var] = environ[var]
    for var in ("XDG_STATE_HOME", "HOME"):  # where the session store lives by default
        if environ.get(var, "").strip():
            env[var] = environ[var]
    if not {"QQBOT_CLIENT_SECRET", "QQBOT_CLIENT_SECRET_FILE"} & set(env):
        if environ.get("QQ_CLIENT_SECRET", "").strip():
            env["QQBOT_CLIENT_SECRET"] = environ["QQ_CLIENT_SECRET"]
            names["QQBOT_CLIENT_SECRET"] = "QQ_CLIENT_SECRET"
    if "QQBOT_APP_ID" not in env and environ.get("QQ_APP_ID", "").strip():
        env["QQBOT_APP_ID"] = environ["QQ_APP_ID"]
        names["QQBOT_APP_ID"] = "QQ_APP_ID"
    if {"client_secret", "client_secret_file"} & set(extra):
        for var in ("QQBOT_CLIENT_SECRET", "QQBOT_CLIENT_SECRET_FILE"):
            env.pop(var, None)
    for key in SERVICE_KEYS:
        if key in extra and extra[key] is not None:
            var = ENV_PREFIX + key.upper()
            try:
                env[var] = _as_text(extra[key])
            except ValueError as exc:
                raise ConfigError(f"{where}.{key}: {exc}") from None
            names[var] = f"{where}.{key}"

    def _named(var: str) -> str:
        if var in names or var in env:
            return names.get(var, var)
        key = var[len(ENV_PREFIX) :].lower()  # not set anywhere: the key the user would add
        return f"{where}.{key}" if key in SERVICE_KEYS else var

    http_addr = extra.get("http_addr")
    if http_addr is not None:
        env["QQBOT_HTTP_ADDR"] = _as_text(http_addr)
        names["QQBOT_HTTP_ADDR"] = f"{where}.http_addr"
    else:
        env["QQBOT_HTTP_ADDR"] = environ.get(HTTP_ADDR_ENV, "").strip() or "off"
        names["QQBOT_HTTP_ADDR"] = HTTP_ADDR_ENV
    try:
        service = load_settings(env=env, warn=lambda _: None)
    except ConfigError as exc:  # named as the user wrote it: extra's key, or hermes's variable
        raise ConfigError(_SETTING_VAR.sub(lambda m: _named(m.group(0)), str(exc))) from None
    # Later messages of the service (e.g. "cannot listen on ...") name the setting the same way.
    service = replace(
        service,
        sources=tuple((k, names.get(ENV_PREFIX + k.upper(), v)) for k, v in service.sources),
    )
    if service.transport == "webhook" and "QQBOT_WEBHOOK_ADDR" not in env:
        # The service listens on 0.0.0.0:8443 by default; inside hermes no port opens unasked.
        raise ConfigError(
            f"{where}.webhook_addr: required with transport: webhook (or QQBOT_WEBHOOK_ADDR): "
            "the receiver's host:port, e.g. 0.0.0.0:8443 (QQ calls ports 80, 443, 8080 and 8443 "
            "only) or 127.0.0.1:8080 behind a reverse proxy"
        )
    if not service.app_id:
        raise ConfigError(f"{where}.app_id: required (or QQ_APP_ID / QQBOT_APP_ID)")
    if service.client_secret is None:
        raise ConfigError(
            f"{where}.client_secret: required (or QQ_CLIENT_SECRET, QQBOT_CLIENT_SECRET or "
            "QQBOT_CLIENT_SECRET_FILE; a file keeps it out of config.yaml)"
        )

    values: dict[str, Any] = {}
    if "markdown_support" in extra:
        values["markdown_support"] = _bool(f"{where}.markdown_support", extra["markdown_support"])
    for key in ("dm_policy", "group_policy"):
        if key in extra:
            policy = str(extra[key]).strip().lower()
            if key == "group_policy" and policy == "pairing":
                policy = "disabled"  # hermes's built-in adapter: pairing admits no group message
            if policy not in POLICIES:
                raise ConfigError(
                    f"{where}.{key}: expected one of {', '.join(POLICIES)}, got {extra[key]!r}"
                )
            values[key] = policy
    for key in ("allow_from", "group_allow_from"):
        if key in extra and extra[key] is not None:
            values[key] = _list(extra[key])
    if "ready_timeout" in extra:
        values["ready_timeout"] = _number(f"{where}.ready_timeout", extra["ready_timeout"])
    if "chunk_size" in extra:
        values["chunk_size"] = int(
            _number(f"{where}.chunk_size", extra["chunk_size"], integer=True)
        )
    known = (*SERVICE_KEYS, *PLUGIN_KEYS)
    warnings = []
    for key in extra:
        if key in known or not isinstance(key, str):
            continue
        match = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
        if match:
            warnings.append(f"{where}.{key}: unknown setting (did you mean {match[0]}?)")
    return HermesSettings(service=service, warnings=tuple(warnings), **values)
