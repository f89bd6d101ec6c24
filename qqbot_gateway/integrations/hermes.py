"""hermes-agent platform plugin: a hermes QQ bot on this project's client.

hermes-agent loads it through its own plugin discovery (entry point group
``hermes_agent.plugins``, name ``qqbot-gateway``) once it is listed in ``config.yaml``::

    plugins:
      enabled: [qqbot-gateway]
    platforms:
      qqbot_gateway:
        enabled: true
        extra:
          app_id: "102000000"          # or QQ_APP_ID / QQBOT_APP_ID in the environment
          http_addr: "0.0.0.0:9464"    # optional: /healthz, /readyz, /metrics in this process
          transport: webhook           # optional: QQ's HTTP callbacks instead of the WebSocket
          webhook_addr: "127.0.0.1:8080"   # required with webhook (behind a TLS reverse proxy)

The secret comes from ``QQ_CLIENT_SECRET`` (hermes's name), ``QQBOT_CLIENT_SECRET`` or
``QQBOT_CLIENT_SECRET_FILE``, or ``client_secret`` / ``client_secret_file`` in ``extra``.
Every ``QQBOT_*`` setting of the service (see :mod:`qqbot_gateway.config`) is accepted in
``extra`` under its lowercase name; ``extra`` wins over the environment. ``docs/hermes.md`` has
the full list, the differences from hermes's built-in QQ adapter and a migration path.

What hermes gets from this adapter instead of its built-in one: layered liveness (ACK tracking,
receive-idle deadline, WebSocket ping, TCP keepalive) so a half-open link is replaced within a
fraction of a heartbeat interval (about 1.4 against a server that ignores pings); resume with
replayed events delivered exactly once, across a restart of hermes too (the session store,
``QQBOT_STATE_DIR``); a bounded handler queue; and a connected state that tells the truth:
``_mark_disconnected`` as soon as a zombie is detected or a shard backs off, ``_mark_connected``
on READY/RESUMED, and a fatal error (``_set_fatal_error`` + ``_notify_fatal_error``, once) only
when a shard stopped for good.

With ``transport: webhook`` there is no connection: the service's webhook receiver
(:func:`qqbot_gateway.service.start_receiver`, the code ``qqbot-gateway run`` uses) runs in the
hermes process on ``webhook_addr``, callbacks go through the intake journal and the dedupe
window into the same handler, and hermes is connected while the receiver listens (with
``webhook_require_validation``: once QQ's op 13 arrived). A receiver that cannot listen makes
``connect()`` fail with the error set, as hermes's own servers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import errno
import logging
import mimetypes
import os
import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
from gateway.config import Platform, PlatformConfig
from gateway.platforms.base import (
    BasePlatformAdapter,
    MessageEvent,
    MessageType,
    SendResult,
    cache_document_from_bytes,
    cache_image_from_bytes,
    classify_send_error,
)

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter.api import MessageResult
from qqbot_gateway.adapter.client import QQBotClient
from qqbot_gateway.adapter.errors import (
    APIConnectionError,
    APIError,
    AuthError,
    InvalidCredentialsError,
    RateLimitedError,
    ServerError,
)
from qqbot_gateway.adapter.protocol import GatewayEvent
from qqbot_gateway.adapter.store import StoreError
from qqbot_gateway.adapter.webhook import VALIDATED
from qqbot_gateway.config import (
    ENV_PREFIX,
    REMOVED_SETTINGS,
    SETTING_NAMES,
    ConfigError,
    Settings,
    load_settings,
    refuse_removed_env,
)
from qqbot_gateway.service import ReceiverError, start_receiver
from qqbot_gateway.telemetry import Telemetry

__all__ = [
    "DEFAULT_PLATFORM",
    "ENTRY_POINT",
    "HermesSettings",
    "QQBotGatewayAdapter",
    "check_requirements",
    "hermes_settings",
    "register",
    "validate_config",
]

_log = logging.getLogger("qqbot_gateway.hermes")

#: The name under ``plugins: enabled:`` (the entry point's name in pyproject.toml).
ENTRY_POINT: Final = "qqbot-gateway"
#: The platform key under ``platforms:``; differs from the built-in ``qqbot`` so that both can
#: run side by side while migrating. ``QQBOT_HERMES_PLATFORM=qqbot`` takes the built-in's place.
DEFAULT_PLATFORM: Final = "qqbot_gateway"
PLATFORM_ENV: Final = "QQBOT_HERMES_PLATFORM"
#: The side server's own address setting inside hermes (``http_addr`` in ``extra`` wins); off
#: unless set, so a hermes process never opens a port it was not asked to.
HTTP_ADDR_ENV: Final = "QQBOT_HERMES_HTTP_ADDR"
#: hermes's allow-list settings for QQ, shared with its built-in adapter so they carry over.
ALLOWED_USERS_ENV: Final = "QQ_ALLOWED_USERS"
ALLOW_ALL_ENV: Final = "QQ_ALLOW_ALL_USERS"
INSTALL_HINT: Final = "pip install 'qqbot-gateway[hermes]'"

#: Dispatch types that carry a user message, and where each one is answered.
MESSAGE_KINDS: Final[dict[str, str]] = {
    "C2C_MESSAGE_CREATE": "c2c",
    "GROUP_AT_MESSAGE_CREATE": "group",
    "AT_MESSAGE_CREATE": "channel",
    "MESSAGE_CREATE": "channel",
    "DIRECT_MESSAGE_CREATE": "dms",
}
_CHAT_KINDS: Final = ("c2c", "group", "channel", "dms")
_POLICIES: Final = ("open", "allowlist", "pairing", "disabled")
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})

#: Keys of ``extra`` this plugin reads besides the service settings.
_PLUGIN_KEYS: Final = (
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
_SERVICE_KEYS: Final = tuple(k for k in SETTING_NAMES if k not in _NOT_FROM_SERVICE)
_SETTING_VAR = re.compile(re.escape(ENV_PREFIX) + r"[A-Z0-9_]+")

_MAX_ROUTES: Final = 10_000
_MAX_ATTACHMENTS: Final = 10
_TYPING_DEBOUNCE: Final = 50.0
#: QQ accepts at most this many passive replies to one message (C2C and group).
MAX_REPLIES_PER_MESSAGE: Final = 5
TRUNCATED_NOTE: Final = "\n\n[… truncated: QQ accepts 5 replies to one message]"
_MENTION = re.compile(r"^\s*(?:<@!?\d+>\s*)+")
_GROUP_MENTION = re.compile(r"^\s*@\S+\s+")


# --- settings -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HermesSettings:
    """The plugin's validated settings: the service's, plus what hermes users configure today."""

    service: Settings
    markdown_support: bool = True
    dm_policy: str = "pairing"
    allow_from: tuple[str, ...] = ()
    group_policy: str = "pairing"
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
    env: dict[str, str] = {}
    names: dict[str, str] = {}  # QQBOT_X -> the name to show in a message
    for key in _SERVICE_KEYS:
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
    for key in _SERVICE_KEYS:
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
        return f"{where}.{key}" if key in _SERVICE_KEYS else var

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
            if policy not in _POLICIES:
                raise ConfigError(
                    f"{where}.{key}: expected one of {', '.join(_POLICIES)}, got {extra[key]!r}"
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
    known = (*_SERVICE_KEYS, *_PLUGIN_KEYS)
    warnings = []
    for key in extra:
        if key in known or not isinstance(key, str):
            continue
        match = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
        if match:
            warnings.append(f"{where}.{key}: unknown setting (did you mean {match[0]}?)")
    return HermesSettings(service=service, warnings=tuple(warnings), **values)


# --- inbound ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Inbound:
    """A user message, in the terms hermes uses (chat, user, chat type)."""

    kind: str  # c2c, group, channel or dms: where the reply goes
    chat_id: str
    user_id: str
    user_name: str | None
    chat_type: str  # "dm" or "group", as hermes's built-in QQ adapter reports them
    guild_id: str | None
    text: str
    msg_id: str
    timestamp: datetime
    attachments: tuple[dict[str, Any], ...]
    #: Text of the message this one quotes (QQ's ``message_type`` 103, ``msg_elements``).
    quote: str = ""


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def inbound(event: GatewayEvent) -> Inbound | None:
    """Map a message dispatch to :class:`Inbound`; None for other events or unusable data."""
    kind = MESSAGE_KINDS.get(event.type)
    d = event.data
    if kind is None or not isinstance(d, dict):
        return None
    msg_id = _str(d.get("id"))
    raw_author = d.get("author")
    author: dict[str, Any] = raw_author if isinstance(raw_author, dict) else {}
    raw_member = d.get("member")
    member: dict[str, Any] = raw_member if isinstance(raw_member, dict) else {}
    raw_content = d.get("content")
    content = raw_content if isinstance(raw_content, str) else ""
    guild_id = _str(d.get("guild_id"))
    user_name = None
    if kind == "c2c":
        chat_id = _str(author.get("user_openid")) or _str(author.get("id"))
        user_id, chat_type = chat_id, "dm"
    elif kind == "group":
        chat_id = _str(d.get("group_openid"))
        user_id = _str(author.get("member_openid")) or _str(author.get("id"))
        chat_type = "group"
        content = _GROUP_MENTION.sub("", content) if content.lstrip().startswith("@") else content
    elif kind == "channel":
        chat_id = _str(d.get("channel_id"))
        user_id = _str(author.get("id"))
        user_name = _str(member.get("nick")) or _str(author.get("username"))
        chat_type = "group"
        content = _MENTION.sub("", content)
    else:  # dms: a guild direct-message session is addressed by its guild id
        chat_id = guild_id
        user_id = _str(author.get("id"))
        user_name = _str(author.get("username"))
        chat_type = "dm"
    if chat_id is None or user_id is None or msg_id is None:
        return None
    raw_attachments = d.get("attachments")
    listed = list(raw_attachments) if isinstance(raw_attachments, list) else []
    quoted: list[str] = []
    elements = d.get("msg_elements")
    if str(d.get("message_type")) == "103" and isinstance(elements, list):
        for element in elements:
            if not isinstance(element, dict):
                continue
            said = element.get("content")
            if isinstance(said, str) and said.strip():
                quoted.append(said.strip())
            if isinstance(element.get("attachments"), list):
                listed += element["attachments"]  # a quoted image or voice counts too
    attachments = tuple(a for a in listed if isinstance(a, dict))
    return Inbound(
        kind=kind,
        chat_id=chat_id,
        user_id=user_id,
        user_name=user_name,
        chat_type=chat_type,
        guild_id=guild_id,
        text=content.strip(),
        msg_id=msg_id,
        timestamp=_timestamp(d.get("timestamp")),
        attachments=attachments,
        quote=" ".join(quoted),
    )


def _timestamp(raw: Any) -> datetime:
    if isinstance(raw, str) and raw:
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(raw)
        with contextlib.suppress(ValueError):
            return datetime.fromtimestamp(int(raw) / 1000, tz=UTC)
    return datetime.now(tz=UTC)


def _matches(entries: tuple[str, ...], value: str) -> bool:
    value = value.strip().lower()
    return any(e.lower() in ("*", value) for e in entries)


def _env_true(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() in _TRUE


# --- the adapter --------------------------------------------------------------------------


class QQBotGatewayAdapter(BasePlatformAdapter):
    """A hermes platform adapter running on :class:`~qqbot_gateway.adapter.client.QQBotClient`."""

    SUPPORTS_MESSAGE_EDITING = False

    def __init__(self, config: PlatformConfig, platform: Any = None) -> None:
        name = platform_name()
        super().__init__(config, platform if platform is not None else Platform(name))
        self._config_error: str | None = None
        self.settings: HermesSettings | None = None
        try:
            self.settings = hermes_settings(
                config.extra or {}, platform=getattr(self.platform, "value", name)
            )
        except ConfigError as exc:
            self._config_error = str(exc)
        s = self.settings
        # hermes's runner reads these to decide whether intake already applied an allow-list.
        self._dm_policy = s.dm_policy if s else "disabled"
        self._group_policy = s.group_policy if s else "disabled"
        self._allow_from = list(s.allow_from) if s else []
        self._group_allow_from = list(s.group_allow_from) if s else []
        self.MAX_MESSAGE_LENGTH = s.chunk_size if s else 2000
        self.client: QQBotClient | None = None
        self.telemetry: Telemetry | None = None
        #: The webhook receiver (``transport: webhook``) while it runs.
        self.receiver: Any = None
        self._webhook = False  # the transport of the current connect()
        self._listening = False
        self._validated = False
        self._http: aiohttp.ClientSession | None = None
        self._unsubscribe: Any = None
        self._states: dict[int, ev.ConnectionState] = {}
        self._zombies: set[int] = set()
        self._connected = False
        self._connecting = False
        self._closing = False
        self._fatal_reported = False
        self._fatal_task: asyncio.Task[None] | None = None
        self._routes: OrderedDict[str, str] = OrderedDict()  # chat_id -> kind
        self._last_msg: OrderedDict[str, str] = OrderedDict()  # chat_id -> last inbound msg_id
        self._typing_at: dict[str, float] = {}
        self._replies: OrderedDict[str, int] = OrderedDict()  # msg_id -> replies sent to it

    # --- hermes properties ---------------------------------------------------------------
    @property
    def name(self) -> str:
        return "QQBot (qqbot-gateway)"

    @property
    def enforces_own_access_policy(self) -> bool:
        return True

    # --- connection lifecycle ------------------------------------------------------------
    async def connect(self, *, is_reconnect: bool = False) -> bool:
        """Start the client and wait (bounded) for every shard to be READY; with the webhook
        transport, start the client and the receiver (connected once it listens)."""
        del is_reconnect  # a resume replays what QQ still holds either way
        if self.client is not None:
            return self._connected
        if self.settings is None:
            self._set_fatal_error(
                "qqbot_gateway_config", self._config_error or "invalid config", retryable=False
            )
            _log.error("qqbot-gateway: %s", self._config_error)
            return False
        for warning in self.settings.warnings:
            _log.warning("qqbot-gateway: %s", warning)
        service = self.settings.service
        # A new attempt starts clean: an earlier attempt's error is not this one's.
        self._fatal_error_code = self._fatal_error_message = None
        self._fatal_error_retryable = True
        self._closing = False
        self._fatal_reported = False
        self._connecting = True
        client = QQBotClient(service.client_config())
        for event_type in MESSAGE_KINDS:
            client.add_handler(self._on_gateway_event, event_type)
        self._states = dict.fromkeys(client.config.shards, ev.ConnectionState.IDLE)
        self._zombies.clear()
        webhook = service.transport == "webhook"
        self._webhook, self._listening, self._validated = webhook, False, False
        kinds: tuple[type[ev.LifecycleEvent], ...] = (
            ev.StateChanged,
            ev.ZombieDetected,
            ev.ShardFatal,
            ev.SupervisorStopped,
        )
        if webhook:
            kinds = (ev.WebhookListening, ev.WebhookStopped)
            if service.webhook_require_validation:
                kinds += (ev.WebhookRequest,)
        self._unsubscribe = client.events.subscribe(self._on_lifecycle, kinds=kinds)
        self.client = client
        timeout = aiohttp.ClientTimeout(total=client.config.request_timeout * 3)
        self._http = aiohttp.ClientSession(timeout=timeout)
        try:
            if service.http_addr is not None:
                telemetry = Telemetry(service.telemetry_config())
                telemetry.attach(client)
                self.telemetry = telemetry
                await telemetry.start()
            await client.start()
            if webhook:
                self.receiver = await start_receiver(service, client, health=self._healthy)
                # Listening is connected; with webhook_require_validation, the first op 13 is.
                ready = self._connected or service.webhook_require_validation
            else:
                ready = await self._wait_ready(self.settings.ready_timeout)
        except ReceiverError as exc:
            code, retryable = _receiver_failure(exc)
            return await self._failed(code, str(exc), retryable)
        except InvalidCredentialsError as exc:
            return await self._failed("qqbot_gateway_credentials_refused", str(exc), False)
        except AuthError as exc:
            return await self._failed("qqbot_gateway_token_unreachable", str(exc), True)
        except StoreError as exc:  # another process owns the shard's session, or the disk fails
            return await self._failed("qqbot_gateway_session_store", str(exc), True)
        except OSError as exc:
            return await self._failed("qqbot_gateway_side_server", f"side server: {exc}", True)
        except asyncio.CancelledError:
            # hermes gave up on connect() (its own timeout): leave nothing running behind.
            await asyncio.shield(self._shutdown())
            raise
        finally:
            self._connecting = False
        if self.has_fatal_error:  # a shard stopped for good during the handshake
            return await self._failed(
                self.fatal_error_code or "qqbot_gateway_fatal",
                self.fatal_error_message or "shard stopped",
                self.fatal_error_retryable,
            )
        if not ready and webhook:
            return await self._failed("qqbot_gateway_not_ready", "receiver not listening", True)
        if not ready:
            reasons = {s.last_reason for s in client.shard_status() if s.last_reason}
            detail = f" (last: {', '.join(sorted(reasons))})" if reasons else ""
            message = f"no READY within {self.settings.ready_timeout:g}s{detail}"
            return await self._failed("qqbot_gateway_not_ready", message, True)
        return True

    def _healthy(self) -> bool:
        """``GET /healthz`` on the receiver's port: the side server's verdict when it runs."""
        if self.telemetry is not None:
            return self.telemetry.evaluate().healthy
        intake = self.client.webhook if self.client is not None else None
        return intake is not None and intake.status().listening and intake.status().handlers_alive

    async def _wait_ready(self, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self._connected:
                return True
            if self.has_fatal_error:
                return False
            await asyncio.sleep(0.05)
        return self._connected

    async def _failed(self, code: str, message: str, retryable: bool) -> bool:
        self._set_fatal_error(code, message, retryable=retryable)
        _log.error("qqbot-gateway: connect failed: %s", message)
        await self._shutdown()
        return False

    async def disconnect(self) -> None:
        """Stop the shards (handlers get ``drain_timeout`` to finish) and the side server.

        With the session store (the default) the session stays resumable: the next start of
        hermes resumes it and receives what QQ sent meanwhile."""
        self._closing = True
        self._mark_disconnected()
        await self._shutdown()

    async def _shutdown(self) -> None:
        self._closing = True
        client, self.client = self.client, None
        receiver, self.receiver = self.receiver, None
        telemetry, self.telemetry = self.telemetry, None
        http, self._http = self._http, None
        if telemetry is not None:
            telemetry.begin_shutdown()
        drain = self.settings.service.drain_timeout if self.settings else 5.0
        if client is not None:
            # With the webhook transport callbacks get a 503 from here on (QQ retries them),
            # the journal and the handlers drain, and only then does the receiver stop.
            await client.close(drain_timeout=drain)
        if receiver is not None:
            await receiver.stop()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if telemetry is not None:
            await telemetry.stop()
        if http is not None:
            await http.close()
        self._connected = False

    # --- truth for hermes ----------------------------------------------------------------
    def _on_lifecycle(self, event: ev.LifecycleEvent) -> None:
        shard = event.shard
        if isinstance(event, ev.WebhookListening | ev.WebhookStopped):
            self._listening = isinstance(event, ev.WebhookListening)
            self._sync_connected()
        elif isinstance(event, ev.WebhookRequest):
            if event.outcome == VALIDATED and not self._validated:
                self._validated = True
                self._sync_connected()
        elif isinstance(event, ev.StateChanged) and shard is not None:
            self._states[shard] = event.new
            if event.new is ev.ConnectionState.READY:
                self._zombies.discard(shard)
            self._sync_connected()
        elif isinstance(event, ev.ZombieDetected) and shard is not None:
            # The connection is dead now, before it is even closed: say so at once.
            self._zombies.add(shard)
            self._sync_connected()
        elif isinstance(event, ev.ShardFatal):
            code = "qqbot_gateway_" + re.sub(r"[^a-z0-9]+", "_", event.reason.lower()).strip("_")
            self._stopped_for_good(code, f"shard {shard}: {event.message}", retryable=False)
        elif isinstance(event, ev.SupervisorStopped) and event.reason == "crashed":
            self._stopped_for_good(
                "qqbot_gateway_crashed", f"shard {shard} supervisor crashed: {event.error}", True
            )

    def _live(self) -> bool:
        if self._webhook:  # no connection: the receiver listening (and validated, if required)
            s = self.settings
            required = s is not None and s.service.webhook_require_validation
            return self._listening and (self._validated or not required)
        return bool(self._states) and all(
            state is ev.ConnectionState.READY and shard not in self._zombies
            for shard, state in self._states.items()
        )

    def _sync_connected(self) -> None:
        live = self._live()
        if live == self._connected or self._closing:
            return
        self._connected = live
        if live:
            if not self.has_fatal_error:
                self._mark_connected()
        else:
            self._mark_disconnected()

    def _stopped_for_good(self, code: str, message: str, retryable: bool) -> None:
        if self._closing or self._fatal_reported:
            return
        self._fatal_reported = True
        self._connected = False
        self._set_fatal_error(code, message, retryable=retryable)
        if self._connecting:
            return  # connect() returns False with the error; hermes's runner takes it from there
        self._fatal_task = asyncio.get_running_loop().create_task(
            self._notify_fatal_error(), name="qqbot-gateway fatal notify"
        )

    # --- inbound -------------------------------------------------------------------------
    async def _on_gateway_event(self, event: GatewayEvent) -> None:
        msg = inbound(event)
        if msg is None or not self._admitted(msg):
            return
        self._remember(msg.chat_id, msg.kind, msg.msg_id)
        text = msg.text
        if msg.quote:
            text = "\n\n".join(x for x in (f"[Quoted message]:\n{msg.quote}", text) if x)
        media: list[str] = []
        media_types: list[str] = []
        if msg.attachments:
            media, media_types, notes = await self._attachments(msg.attachments)
            if notes:
                text = "\n\n".join(x for x in (text, *notes) if x)
        if not text and not media:
            return
        message_type = MessageType.TEXT
        if media:
            message_type = MessageType.PHOTO
        await self.handle_message(
            MessageEvent(
                text=text,
                message_type=message_type,
                source=self.build_source(
                    chat_id=msg.chat_id,
                    chat_type=msg.chat_type,
                    user_id=msg.user_id,
                    user_name=msg.user_name,
                    guild_id=msg.guild_id,
                    message_id=msg.msg_id,
                ),
                raw_message=event.data,
                message_id=msg.msg_id,
                media_urls=media,
                media_types=media_types,
                timestamp=msg.timestamp,
            )
        )

    def _admitted(self, msg: Inbound) -> bool:
        """The intake policies of hermes's QQ adapter (``dm_policy``, ``group_policy``)."""
        if msg.chat_type == "dm":
            policy = self._dm_policy
            if policy == "allowlist":
                return _matches(tuple(self._allow_from), msg.user_id)
            if policy == "open":
                return _env_true(os.environ, ALLOW_ALL_ENV) or _env_true(
                    os.environ, "GATEWAY_ALLOW_ALL_USERS"
                )
            return bool(policy == "pairing")  # hermes's runner runs the pairing handshake
        policy = self._group_policy
        if policy == "allowlist":
            allowed = tuple(self._group_allow_from)
            return _matches(allowed, msg.chat_id) or (
                msg.guild_id is not None and _matches(allowed, msg.guild_id)
            )
        return bool(policy == "open")

    def _remember(self, chat_id: str, kind: str, msg_id: str) -> None:
        for table, value in ((self._routes, kind), (self._last_msg, msg_id)):
            table.pop(chat_id, None)
            table[chat_id] = value
            while len(table) > _MAX_ROUTES:
                table.popitem(last=False)

    async def _attachments(
        self, attachments: tuple[dict[str, Any], ...]
    ) -> tuple[list[str], list[str], list[str]]:
        media: list[str] = []
        media_types: list[str] = []
        notes: list[str] = []
        for att in attachments[:_MAX_ATTACHMENTS]:
            ctype = str(att.get("content_type") or "").strip().lower()
            url = str(att.get("url") or "").strip()
            if url.startswith("//"):
                url = "https:" + url
            filename = str(att.get("filename") or "") or PurePosixPath(urlsplit(url).path).name
            if ctype == "voice" or ctype.startswith("audio/"):
                said = att.get("asr_refer_text")
                if isinstance(said, str) and said.strip():
                    notes.append(f"[Voice] {said.strip()}")
                else:
                    notes.append("[Voice] (no transcript from QQ; speech-to-text is not mapped)")
                continue
            data = await self._download(url) if url else None
            if data is None:
                notes.append(f"[attachment not retrieved: {filename or ctype or 'unknown'}]")
                continue
            try:
                if ctype.startswith("image/"):
                    ext = mimetypes.guess_extension(ctype) or ".jpg"
                    media.append(cache_image_from_bytes(data, ext))
                    media_types.append(ctype)
                else:
                    path = cache_document_from_bytes(data, filename or "qq_attachment")
                    label = "video" if ctype.startswith("video/") else "file"
                    notes.append(f"[{label}: {filename or ctype} ({path})]")
            except (OSError, ValueError) as exc:
                _log.warning("qqbot-gateway: attachment %s not cached: %s", filename, exc)
                notes.append(f"[attachment not retrieved: {filename or ctype}]")
        return media, media_types, notes

    async def _download(self, url: str) -> bytes | None:
        """Fetch an attachment with hermes's SSRF guard and its inbound size cap."""
        from gateway.platforms.base import get_inbound_media_max_bytes
        from tools.url_safety import is_safe_url

        # The guard resolves the host name: off the event loop, so DNS never stalls heartbeats.
        if self._http is None or not await asyncio.to_thread(url_is_safe, url, is_safe_url):
            _log.warning("qqbot-gateway: attachment URL refused: %s", url[:80])
            return None
        cap = get_inbound_media_max_bytes()
        try:
            async with self._http.get(url) as resp:
                resp.raise_for_status()
                data = bytearray()
                async for chunk in resp.content.iter_chunked(65536):
                    data += chunk
                    if cap > 0 and len(data) > cap:
                        _log.warning("qqbot-gateway: attachment over %d bytes: dropped", cap)
                        return None
                return bytes(data)
        except (aiohttp.ClientError, TimeoutError) as exc:
            _log.warning("qqbot-gateway: attachment download failed: %s", exc)
            return None

    # --- outbound ------------------------------------------------------------------------
    def _route(self, chat_id: str) -> tuple[str, str]:
        kind, sep, rest = chat_id.partition(":")
        if sep and kind in _CHAT_KINDS and rest:
            return kind, rest
        known = self._routes.get(chat_id)
        if known is not None:
            return known, chat_id
        # Unknown chat (e.g. after a restart): openids are hex, guild channel ids are numeric.
        return ("channel" if chat_id.isdigit() else "c2c"), chat_id

    async def send(
        self,
        chat_id: str,
        content: str,
        reply_to: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> SendResult:
        """A passive reply (``msg_id`` + a fresh ``msg_seq`` per chunk) to ``reply_to`` or to the
        chat's last message; long text is split, every chunk a reply to the same message."""
        del metadata
        client = self.client
        if client is None or self.settings is None:
            return SendResult(success=False, error="not connected", retryable=True)
        if not content or not content.strip():
            return SendResult(success=True)
        kind, target = self._route(chat_id)
        msg_id = reply_to or self._last_msg.get(chat_id)
        markdown = self.settings.markdown_support and kind in ("c2c", "group")
        text = content if markdown or kind in ("channel", "dms") else _plain(content)
        chunks = self._fit(text, msg_id)
        if not chunks:
            return SendResult(
                success=False,
                error=f"message {msg_id} has had {MAX_REPLIES_PER_MESSAGE} replies (QQ's limit)",
                error_kind="rate_limited",
            )
        ids: list[str] = []
        for index, chunk in enumerate(chunks):
            try:
                if markdown:
                    result = await _post(
                        client, kind, target, None, msg_id=msg_id, markdown={"content": chunk}
                    )
                else:
                    result = await _post(client, kind, target, chunk, msg_id=msg_id)
            except (APIError, APIConnectionError, ValueError) as exc:
                _log.warning(
                    "qqbot-gateway: send to %s %s failed at chunk %d/%d: %s",
                    kind,
                    target,
                    index + 1,
                    len(chunks),
                    exc,
                )
                retryable = isinstance(exc, APIConnectionError | ServerError | RateLimitedError)
                return SendResult(
                    success=False,
                    message_id=ids[-1] if ids else None,
                    error=str(exc),
                    retryable=retryable and not ids,
                    retry_after=getattr(exc, "retry_after", None),
                    error_kind=classify_send_error(exc, str(exc)),
                    continuation_message_ids=tuple(ids[:-1]),
                )
            if result.id:
                ids.append(result.id)
            if msg_id is not None:
                self._count_reply(msg_id)
        return SendResult(
            success=True,
            message_id=ids[-1] if ids else None,
            continuation_message_ids=tuple(ids[:-1]),
        )

    def _fit(self, text: str, msg_id: str | None) -> list[str]:
        """Chunks of ``text``; as a passive reply, within what QQ still accepts for ``msg_id``
        (the tail is cut with a note rather than refused half-way through)."""
        size = self.settings.chunk_size if self.settings is not None else 2000
        chunks: list[str] = self.truncate_message(text, size)
        if msg_id is None:
            return chunks
        budget = MAX_REPLIES_PER_MESSAGE - self._replies.get(msg_id, 0)
        if budget <= 0:
            return []
        if len(chunks) <= budget:
            return chunks
        # The longest head of the text that fits in the budget together with the note.
        best = [TRUNCATED_NOTE.strip()[:size]]
        low, high = 0, min(len(text), budget * size)
        while low <= high:
            cut = (low + high) // 2
            trial = self.truncate_message(text[:cut].rstrip() + TRUNCATED_NOTE, size)
            if len(trial) <= budget:
                best, low = trial, cut + 1
            else:
                high = cut - 1
        return best

    def _count_reply(self, msg_id: str) -> None:
        self._replies[msg_id] = self._replies.pop(msg_id, 0) + 1
        while len(self._replies) > _MAX_ROUTES:
            self._replies.popitem(last=False)

    async def send_image(
        self,
        chat_id: str,
        image_url: str,
        caption: str | None = None,
        reply_to: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> SendResult:
        """A native QQ image (upload by URL, then a msg_type 7 passive reply) to a C2C user or a
        group; anything else, or a failure, falls back to hermes's default (the URL as text)."""
        client = self.client
        kind, target = self._route(chat_id)
        msg_id = reply_to or self._last_msg.get(chat_id)
        usable = (
            client is not None
            and kind in ("c2c", "group")
            and urlsplit(image_url).scheme in ("http", "https")
            and (msg_id is None or self._replies.get(msg_id, 0) < MAX_REPLIES_PER_MESSAGE)
        )
        if client is not None and usable:
            path = f"/v2/{'users' if kind == 'c2c' else 'groups'}/{target}/files"
            try:
                upload = await client.api.request(
                    "POST", path, {"file_type": 1, "url": image_url, "srv_send_msg": False}
                )
                file_info = upload.get("file_info") if isinstance(upload, dict) else None
                if not isinstance(file_info, str) or not file_info:
                    raise ValueError("the upload answered no file_info")
                result = await _post(
                    client,
                    kind,
                    target,
                    caption or None,
                    msg_type=7,
                    media={"file_info": file_info},
                    msg_id=msg_id,
                )
            except (APIError, APIConnectionError, ValueError) as exc:
                _log.warning(
                    "qqbot-gateway: native image to %s failed (%s): sent as text", kind, exc
                )
            else:
                if msg_id is not None:
                    self._count_reply(msg_id)
                return SendResult(success=True, message_id=result.id)
        fallback: SendResult = await super().send_image(
            chat_id, image_url, caption=caption, reply_to=reply_to, metadata=metadata
        )
        return fallback

    async def send_typing(self, chat_id: str, metadata: Any = None) -> None:
        """QQ's "typing" notice (C2C only, answers the chat's last message), at most every 50 s."""
        del metadata
        client = self.client
        kind, target = self._route(chat_id)
        msg_id = self._last_msg.get(chat_id)
        if client is None or kind != "c2c" or msg_id is None or not self._connected:
            return
        now = time.monotonic()
        if now - self._typing_at.get(chat_id, -_TYPING_DEBOUNCE) < _TYPING_DEBOUNCE:
            return
        self._typing_at[chat_id] = now
        with contextlib.suppress(APIError, APIConnectionError, ValueError):
            await client.api.send_c2c(
                target,
                None,
                msg_type=6,
                msg_id=msg_id,
                input_notify={"input_type": 1, "input_second": 60},
            )

    async def get_chat_info(self, chat_id: str) -> dict[str, Any]:
        kind, target = self._route(chat_id)
        chat_type = {"c2c": "dm", "dms": "dm", "group": "group", "channel": "channel"}[kind]
        return {"name": target, "type": chat_type, "chat_id": chat_id, "qq_kind": kind}

    def format_message(self, content: str) -> str:
        if self.settings is not None and not self.settings.markdown_support:
            return _plain(content)
        return content


def _receiver_failure(exc: ReceiverError) -> tuple[str, bool]:
    """hermes's fatal-error code for a receiver that cannot listen, and whether to retry: a port
    another process holds, a port we may not bind or unusable TLS files stay so (hermes's own
    api_server treats a port in use the same way); anything else may clear up."""
    if exc.errno is None:
        return "qqbot_gateway_webhook_tls", False
    if exc.errno == errno.EADDRINUSE:
        return "qqbot_gateway_webhook_addr_in_use", False
    if exc.errno == errno.EACCES:
        return "qqbot_gateway_webhook_addr_denied", False
    return "qqbot_gateway_webhook_listen", True


async def _post(
    client: QQBotClient, kind: str, target: str, content: str | None, **fields: Any
) -> MessageResult:
    api = client.api
    if kind == "c2c":
        return await api.send_c2c(target, content, **fields)
    if kind == "group":
        return await api.send_group(target, content, **fields)
    if kind == "channel":
        return await api.send_channel(target, content, **fields)
    return await api.send_dm(target, content, **fields)


def _plain(text: str) -> str:
    from gateway.platforms.helpers import strip_markdown

    return str(strip_markdown(text))


def url_is_safe(url: str, guard: Any) -> bool:
    """An http(s) URL that hermes's SSRF guard accepts."""
    if urlsplit(url).scheme not in ("http", "https"):
        return False
    return bool(guard(url))


# --- registration -------------------------------------------------------------------------


def platform_name(environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    name = environ.get(PLATFORM_ENV, "").strip().lower()
    return name or DEFAULT_PLATFORM


def check_requirements() -> bool:
    """hermes calls this before creating the adapter: everything is a hard dependency."""
    return True


_reported: set[str] = set()


def validate_config(config: PlatformConfig) -> bool:
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


def register(ctx: Any) -> None:
    """hermes's plugin hook: registers the platform (``platforms: qqbot_gateway:``)."""
    name = platform_name()
    ctx.register_platform(
        name=name,
        label="QQ Bot (qqbot-gateway)",
        adapter_factory=lambda cfg: QQBotGatewayAdapter(cfg),
        check_fn=check_requirements,
        validate_config=validate_config,
        required_env=["QQ_APP_ID", "QQ_CLIENT_SECRET"],
        install_hint=INSTALL_HINT,
        allowed_users_env=ALLOWED_USERS_ENV,
        allow_all_env=ALLOW_ALL_ENV,
        max_message_length=2000,
        emoji="🐧",
        platform_hint=(
            "You are chatting on QQ. Replies are split into messages of at most 2000 "
            "characters; keep them short."
        ),
    )
