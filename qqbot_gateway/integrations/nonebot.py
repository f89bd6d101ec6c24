"""A drop-in NoneBot2 adapter: ``nonebot-adapter-qq``'s bots and events on this project's client.

A NoneBot project changes one import line (and installs ``qqbot-gateway[nonebot]``)::

    # before: from nonebot.adapters.qq import Adapter as QQAdapter
    from qqbot_gateway.integrations.nonebot import Adapter as QQAdapter

    driver.register_adapter(QQAdapter)

Everything else stays: the configuration keys of ``nonebot-adapter-qq`` (``QQ_BOTS`` with
``id``, ``secret``, ``intent``, ``shard``, ``use_websocket``; ``QQ_API_BASE``; ``QQ_AUTH_BASE``;
``QQ_IS_SANDBOX``), and its ``Bot``, ``Event`` and ``Message`` classes: this adapter subclasses
``nonebot.adapters.qq.Adapter`` and keeps its REST side (``_call_api`` through the NoneBot
driver's HTTP client, the bot's own access token), its event parsing (``payload_to_event``,
``event_id`` from the frame's ``id``) and ``Bot.handle_event`` (reply and @-me checks), so
``bot.send``, ``event.reply`` and passive replies with ``msg_id``/``msg_seq`` work unchanged.

What is replaced is the WebSocket side: one :class:`~qqbot_gateway.adapter.client.QQBotClient`
per configured bot instead of the original's ``_forward_ws`` loop (op 1 on a timer, op 11
discarded, no read timeout). So a NoneBot bot gets layered liveness (a half-open link or
stopped ACKs are detected in about one heartbeat interval), resume with replayed events
delivered once, the session store across restarts (``QQBOT_STATE_DIR``), the bounded handler
queue, and, with ``QQBOT_HTTP_ADDR`` set, the side server (``/healthz``, ``/readyz``,
``/metrics``, the status page) of ``qqbot-gateway run``.

Lifecycle: NoneBot's startup (``on_ready``) starts the bots, its shutdown closes them the way
``run`` does (close code 4000, handlers drained, the session kept for the next start).
``bot_connect`` runs when every shard of a bot is READY or RESUMED, ``bot_disconnect`` as soon
as one is not (a zombie counts at once), each once per real change. A fatal close (4914, bad
credentials) is one error line and that bot stops; it is never retried.

``use_websocket: false`` (QQ's HTTP callbacks) is served where the original serves it, on
NoneBot's own server (``/qq/``, ``/qq/webhook``, ``/qq/webhook/``; an ASGI driver such as
``~fastapi``), but through the client's webhook intake: Ed25519 signature and replay window
always checked, event-id dedupe, the bounded queue and, with the session store, the intake
journal (a callback is durable before its ACK; a restart re-delivers what was ACKed and not
handled). Such a bot is connected while its routes are served.

Every ``QQBOT_*`` setting of the service (see :mod:`qqbot_gateway.config`) applies, from the
environment or NoneBot's ``.env`` files, except the ones ``QQ_BOTS`` owns (app id, secret,
intents, shards, endpoints, transport). The side server is off unless ``QQBOT_HTTP_ADDR`` is
set (NoneBot itself listens on 8080). ``docs/nonebot.md`` has the details and the measurements.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final

import aiohttp
from nonebot import get_plugin_config
from nonebot.adapters.qq import Adapter as OriginalAdapter
from nonebot.adapters.qq import Bot, ReadyEvent
from nonebot.adapters.qq.config import BotInfo
from nonebot.adapters.qq.event import GuildMessageEvent, MessageAuditEvent, QQMessageEvent
from nonebot.adapters.qq.models import Dispatch, Opcode, User
from nonebot.adapters.qq.store import audit_result
from nonebot.drivers import (
    URL,
    ASGIMixin,
    Driver,
    HTTPClientMixin,
    HTTPServerSetup,
    Request,
    Response,
)
from nonebot.log import LoguruHandler, logger
from pydantic import BaseModel
from typing_extensions import override

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter.api import OpenAPIClient
from qqbot_gateway.adapter.auth import TokenManager
from qqbot_gateway.adapter.backoff import Backoff
from qqbot_gateway.adapter.client import QQBotClient
from qqbot_gateway.adapter.errors import AuthError, InvalidCredentialsError
from qqbot_gateway.adapter.protocol import GatewayEvent
from qqbot_gateway.adapter.store import StoreError, StoreLockedError
from qqbot_gateway.adapter.types import Secret
from qqbot_gateway.config import ENV_PREFIX, SETTING_NAMES, ConfigError, Settings, load_settings
from qqbot_gateway.telemetry import Telemetry, TelemetryConfigError

__all__ = ["SANDBOX_API_BASE", "Adapter", "BotRunner", "SandboxConfig", "gateway_settings"]

_log = logging.getLogger("qqbot_gateway.nonebot")

#: QQ's sandbox OpenAPI (``QQ_IS_SANDBOX=true`` without an explicit ``QQ_API_BASE``).
SANDBOX_API_BASE: Final = "https://sandbox.api.sgroup.qq.com/"
INSTALL_HINT: Final = "pip install 'qqbot-gateway[nonebot]'"
#: Service settings that ``QQ_BOTS`` and the ``QQ_*`` keys own for each bot: a ``QQBOT_*``
#: value for one of them would disagree with the bot's entry, so it is ignored (with a warning).
OWNED_BY_QQ_BOTS: Final = frozenset(
    {
        "app_id",
        "client_secret",
        "client_secret_file",
        "intents",
        "shard_count",
        "shard_id",
        "api_base",
        "token_url",
        "transport",
    }
)
#: NoneBot owns logging in its process.
_NOT_FROM_SERVICE: Final = frozenset({"log_format", "log_level"})
#: Shutdown: the client's close gets the drain timeout plus this (as ``run``'s _CLOSE_MARGIN).
_CLOSE_MARGIN: Final = 5.0
#: Startup asks ``GET /users/@me`` for at most this long (best effort, see BotRunner.start).
_ME_TIMEOUT: Final = 5.0
#: ... and, while it keeps failing, again before a message event at most this often (seconds):
#: each attempt holds up the shard's events for up to _ME_TIMEOUT.
_ME_RETRY: Final = 30.0
#: A start that failed on something that may pass (the token endpoint down) is tried again
#: after 2, 4, 8, ... seconds, at most a minute apart (the client's own token retries come
#: first: TokenManager tries 3 times at startup).
_RETRY: Final = Backoff(base=2.0, cap=60.0)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def gateway_settings(
    info: BotInfo,
    *,
    api_base: str,
    token_url: str,
    gateway_url: str | None,
    environ: Mapping[str, str],
    dotenv: Mapping[str, Any],
) -> tuple[Settings, list[str]]:
    """The service settings for one ``QQ_BOTS`` entry, and warnings to log.

    ``QQBOT_*`` settings come from ``environ`` first, then from NoneBot's ``.env`` values
    (``dotenv``, keys in lower case as NoneBot keeps them); the bot's identity and endpoints
    come from ``info`` and the ``QQ_*`` keys. The side server is off unless ``QQBOT_HTTP_ADDR``
    is set. Raises :class:`~qqbot_gateway.config.ConfigError`."""
    env: dict[str, str] = {}
    warnings: list[str] = []
    for key in SETTING_NAMES:
        var = ENV_PREFIX + key.upper()
        value: Any = environ.get(var)
        if value is None or not str(value).strip():
            value = dotenv.get(var.lower())
        if value is None or not _text(value).strip() or key in _NOT_FROM_SERVICE:
            continue
        if key in OWNED_BY_QQ_BOTS:
            warnings.append(f"{var} is ignored: QQ_BOTS and the QQ_* settings set it per bot")
            continue
        env[var] = _text(value)
    for var in ("XDG_STATE_HOME", "HOME", "QQBOT_CONFIG"):  # where the session store lives
        if environ.get(var, "").strip():
            env[var] = environ[var]
    env.setdefault("QQBOT_HTTP_ADDR", "off")  # no port opens inside NoneBot unless asked
    settings = load_settings(env=env, warn=warnings.append)
    if info.shard is not None:
        index, count = info.shard
        shard_count, shard_ids = count, (index,)
        if not 0 <= index < count:
            raise ConfigError(f"QQ_BOTS[{info.id}].shard: {index} is outside 0..{count - 1}")
    else:
        shard_count, shard_ids = settings.shard_count, None
    settings = replace(
        settings,
        app_id=info.id,
        client_secret=Secret(info.secret),
        intents=info.intent.to_int(),  # type: ignore[no-untyped-call]
        shard_count=shard_count,
        shard_ids=shard_ids,
        api_base=api_base.rstrip("/"),
        token_url=token_url,
        gateway_url=gateway_url,
        transport="websocket" if info.use_websocket else "webhook",
    )
    if not info.use_websocket:  # callbacks have no shards: one logical shard 0
        settings = replace(settings, shard_count=1, shard_ids=(0,))
    return settings, warnings


class SandboxConfig(BaseModel):
    """``QQ_IS_SANDBOX``: a key of older nonebot-adapter-qq versions, read the same way."""

    qq_is_sandbox: bool = False


class BotRunner:
    """One ``QQ_BOTS`` entry: its NoneBot ``Bot``, its client, its side server, its link state."""

    def __init__(self, adapter: Adapter, info: BotInfo, settings: Settings) -> None:
        self.adapter = adapter
        self.info = info
        self.settings = settings
        self.bot = Bot(adapter, info.id, info)
        #: ``use_websocket: false``: QQ's callbacks arrive on NoneBot's own server (/qq/webhook)
        #: and go through the client's webhook intake; there is no connection.
        self.webhook = not info.use_websocket
        self._listening = False
        self.client: QQBotClient | None = None
        self.telemetry: Telemetry | None = None
        self.connected = False
        self.stopped = False  # fatal: this bot stopped for good
        self._states: dict[int, ev.ConnectionState] = {}
        self._zombies: set[int] = set()
        self._closing = False
        self._stopping = False  # stop() was called: no further start
        self._retry: asyncio.Task[bool] | None = None
        self._attempts = 0
        self._me_asked: float | None = None
        #: NoneBot's handling of each event runs in its own task, as in the original adapter
        #: (matchers of different events run concurrently); at most this many at once, then
        #: the client's handler queue takes the backpressure (and, full, resumes later).
        self._tasks: set[asyncio.Task[None]] = set()
        self._max_tasks = max(1, settings.handler_queue_size)

    @property
    def name(self) -> str:
        return f"QQ bot {self.info.id}"

    # --- start and stop --------------------------------------------------------------------
    async def start(self) -> bool:
        """Start the client (and the side server). False if it cannot: after one error line
        when that is for good, or with a warning and a later attempt when it may pass."""
        if self._stopping:
            return False
        self._closing = False
        settings = self.settings
        try:
            if settings.shard_ids is None:
                settings = self.settings = await self._discover_shards(settings)
            client = QQBotClient(settings.client_config())
            client.add_handler(self._on_event)
            if not self.webhook:
                self._states = dict.fromkeys(client.config.shards, ev.ConnectionState.IDLE)
            # Subscribed before start(): this observer sees a SessionReady before the shard's
            # own state change to READY, so the bot knows itself when NoneBot's hooks run.
            client.events.subscribe(
                self._on_lifecycle,
                kinds=(
                    ev.SessionReady,
                    ev.StateChanged,
                    ev.ZombieDetected,
                    ev.ShardFatal,
                    ev.SupervisorStopped,
                    ev.WebhookListening,
                    ev.WebhookStopped,
                ),
            )
            self.client = client
            if settings.http_addr is not None:
                telemetry = Telemetry(settings.telemetry_config())
                telemetry.attach(client)
                self.telemetry = telemetry
                try:
                    await telemetry.start()
                except OSError as exc:
                    host, port = settings.http_addr
                    raise ConfigError(
                        f"side server: cannot listen on {host}:{port} "
                        f"({settings.source('http_addr')}): {exc.strerror or exc}"
                    ) from None
            if settings.state_dir is not None or self.webhook:
                # A session resumed from the store brings no READY (the bot's own user) into
                # this process: ask for it as the original's webhook path does (best effort).
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(_ME_TIMEOUT):
                        self.bot.self_info = await self.bot.me()
            await client.start()
            if self.webhook and client.webhook is not None:
                # NoneBot's server serves the callback routes: listening from now on.
                client.webhook.listening(self.adapter.webhook_url)
        except InvalidCredentialsError as exc:
            return await self._failed(f"bad credentials: {exc}; check QQ_BOTS id and secret")
        except AuthError as exc:  # the token endpoint unreachable or failing: may pass
            return await self._failed(
                f"no access token from {settings.token_url}: {exc}", retry=True
            )
        except StoreLockedError as exc:
            holder = f"pid {exc.holder_pid}" if exc.holder_pid is not None else "another process"
            return await self._failed(
                f"{holder} already runs this bot ({exc}); stop it first, or set "
                "QQBOT_STATE_LOCK=wait"
            )
        except StoreError as exc:
            return await self._failed(
                f"session store: {exc} (QQBOT_STATE_DIR: a writable directory, or off)"
            )
        except (ConfigError, TelemetryConfigError, ValueError) as exc:
            return await self._failed(str(exc))
        side = self.telemetry.http_url if self.telemetry else "off"
        if self.webhook:
            what = f"receiving webhooks on {self.adapter.webhook_url}"
        else:
            shards = ", ".join(str(s) for s in settings.client_config().shards)
            what = f"running shard(s) {shards} of {settings.shard_count}"
        logger.opt(colors=False).info(f"{self.name}: qqbot-gateway {what}; side server {side}")
        self._attempts = 0
        return True

    async def _discover_shards(self, settings: Settings) -> Settings:
        """No ``shard`` in the bot's entry: ask ``GET /gateway/bot`` as the original does."""
        cfg = settings.client_config()
        timeout = aiohttp.ClientTimeout(total=cfg.request_timeout)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            tokens = TokenManager(
                cfg.app_id, cfg.client_secret.get(), token_url=cfg.token_url, http=http
            )
            await tokens.start()
            try:
                api = OpenAPIClient(
                    base_url=cfg.api_base,
                    tokens=tokens,
                    http=http,
                    app_id=cfg.app_id,
                    timeout=cfg.request_timeout,
                )
                try:
                    shards = (await api.get_gateway_bot()).shards
                except Exception as exc:  # noqa: BLE001 - one shard, and the client retries
                    _log.warning(
                        "%s: GET /gateway/bot failed (%s); running %d shard(s)",
                        self.name,
                        exc,
                        settings.shard_count,
                    )
                    shards = settings.shard_count
            finally:
                await tokens.close()
        return replace(settings, shard_count=shards, shard_ids=None)

    async def _failed(self, message: str, *, retry: bool = False) -> bool:
        await self._close()
        if retry and not self._stopping:
            delay = _RETRY.ceiling(self._attempts)
            self._attempts += 1
            logger.opt(colors=False).warning(f"{self.name}: {message}; trying again in {delay:g}s")
            self._retry = asyncio.create_task(self._start_later(delay), name=f"{self.name} start")
            return False
        self.stopped = True
        logger.opt(colors=False).error(f"{self.name}: {message}")
        return False

    async def _start_later(self, delay: float) -> bool:
        await asyncio.sleep(delay)
        return await self.start()

    async def stop(self) -> None:
        """Close as ``run`` does: 4000 and the session kept (with a store), handlers drained."""
        self._stopping = True
        retry, self._retry = self._retry, None
        if retry is not None and retry is not asyncio.current_task():
            retry.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await retry
        await self._close()

    async def _close(self) -> None:
        self._closing = True
        client, self.client = self.client, None
        telemetry, self.telemetry = self.telemetry, None
        if telemetry is not None:
            telemetry.begin_shutdown()
        drain = self.settings.drain_timeout
        if client is not None:
            try:
                async with asyncio.timeout(drain + _CLOSE_MARGIN):
                    # Webhook: callbacks get a 503 from here on (QQ retries them).
                    await client.close(drain_timeout=drain)
                    if client.webhook is not None:
                        client.webhook.stopped("shutdown")
                    if self._tasks:  # NoneBot's matchers still running for handed-over events
                        await asyncio.wait(self._tasks, timeout=drain)
            except TimeoutError:
                _log.warning("%s: shutdown: the client did not close in time", self.name)
        for task in list(self._tasks):
            task.cancel()
        if telemetry is not None:
            await telemetry.stop()
        self._set_connected(False)

    # --- events --------------------------------------------------------------------------
    async def _on_event(self, event: GatewayEvent) -> None:
        """The client's handler: the original's ``dispatch_event``, one frame at a time."""
        adapter, bot = self.adapter, self.bot
        data = event.data
        payload = Dispatch.model_construct(
            opcode=Opcode.DISPATCH,
            data=data if isinstance(data, dict | str) else {},
            sequence=event.seq,
            type=event.type,
            id=event.event_id,
        )
        if event.seq is not None:
            bot.on_dispatch(payload)
        try:
            nb_event = adapter.payload_to_event(payload)
        except Exception as exc:  # noqa: BLE001 - as the original: log and skip it
            first = str(exc).splitlines()[0] if str(exc) else ""
            logger.opt(colors=False).warning(
                f"{self.name}: failed to parse {event.type} (id {event.event_id}): "
                f"{type(exc).__name__}: {first}"
            )
            return
        if isinstance(nb_event, ReadyEvent):
            bot.on_ready(nb_event)
        elif event.type == "RESUMED" and event.session_id is not None:
            bot._session_id = event.session_id  # what on_ready would have set
        if bot._self_info is None and isinstance(nb_event, GuildMessageEvent | QQMessageEvent):
            # A session resumed from the store has had no READY in this process and the
            # startup's GET /users/@me failed: the @-me check needs the bot's own user, as
            # the original's webhook path fetches it. Asked again at most every _ME_RETRY.
            now = asyncio.get_running_loop().time()
            if self._me_asked is None or now - self._me_asked >= _ME_RETRY:
                self._me_asked = now
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(_ME_TIMEOUT):
                        bot.self_info = await bot.me()
        if isinstance(nb_event, MessageAuditEvent):
            audit_result.add_result(nb_event)
        while len(self._tasks) >= self._max_tasks:
            await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.create_task(bot.handle_event(nb_event), name=f"nonebot {event.type}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def callback(self, request: Request) -> Response:
        """A POST on NoneBot's callback route for this bot: the intake's answer."""
        intake = self.client.webhook if self.client is not None else None
        if intake is None:
            return Response(503, content="bot not running")
        content = request.content
        body = content.encode() if isinstance(content, str) else bytes(content or b"")
        reply = await intake.receive(request.headers, body)
        headers = {"Content-Type": reply.content_type, **dict(reply.headers)}
        return Response(reply.status, headers=headers, content=reply.body)

    # --- the link's truth for NoneBot ------------------------------------------------------
    def _on_lifecycle(self, event: ev.LifecycleEvent) -> None:
        shard = event.shard
        if isinstance(event, ev.SessionReady):
            # What the original's on_ready sets before its bot_connect; the READY event the
            # handler gets next carries the full user and sets it again.
            self.bot._session_id = event.session_id
            if event.user_id:
                self.bot.self_info = User(id=event.user_id, username=event.username, bot=True)
            return
        if isinstance(event, ev.WebhookListening | ev.WebhookStopped):
            self._listening = isinstance(event, ev.WebhookListening)
        elif isinstance(event, ev.StateChanged) and shard is not None:
            self._states[shard] = event.new
            if event.new is ev.ConnectionState.READY:
                self._zombies.discard(shard)
        elif isinstance(event, ev.ZombieDetected) and shard is not None:
            self._zombies.add(shard)  # the link is dead now, before it is even closed
        elif isinstance(event, ev.ShardFatal | ev.SupervisorStopped):
            # Stopped for good: the client logged the one error line (close code, what to do).
            if not isinstance(event, ev.SupervisorStopped) or event.reason != "shutdown":
                self.stopped = True
        live = self._listening or (
            bool(self._states)
            and all(
                state is ev.ConnectionState.READY and s not in self._zombies
                for s, state in self._states.items()
            )
        )
        self._set_connected(live and not self._closing)

    def _set_connected(self, live: bool) -> None:
        if live == self.connected:
            return
        self.connected = live
        if live:
            self.adapter.bot_connect(self.bot)
            logger.opt(colors=False).info(f"{self.name} connected")
        else:
            self.adapter.bot_disconnect(self.bot)
            logger.opt(colors=False).info(f"{self.name} disconnected")


class Adapter(OriginalAdapter):
    """``nonebot.adapters.qq.Adapter`` with its WebSocket side run by this project's client."""

    @override
    def __init__(self, driver: Driver, **kwargs: Any) -> None:
        self.runners: list[BotRunner] = []
        self.sandbox = get_plugin_config(SandboxConfig).qq_is_sandbox
        super().__init__(driver, **kwargs)

    @override
    def setup(self) -> None:
        if not isinstance(self.driver, HTTPClientMixin):
            raise RuntimeError(
                f"Current driver {self.config.driver} does not support http client requests! "
                "qqbot-gateway's QQ adapter needs an HTTP client driver for the bot's API "
                "calls: DRIVER=~aiohttp, or ~httpx (with ~fastapi etc.); no WebSocket driver "
                "is needed (the gateway connection is qqbot-gateway's own)."
            )
        webhook = [bot.id for bot in self.qq_config.qq_bots if not bot.use_websocket]
        if webhook and not isinstance(self.driver, ASGIMixin):
            raise RuntimeError(
                f"Current driver {self.config.driver} does not support ASGI server! "
                f"QQ_BOTS with use_websocket: false (bot {', '.join(webhook)}) receive QQ's "
                "callbacks on NoneBot's own server: DRIVER=~fastapi+~httpx, for example."
            )
        _route_library_logs()
        self.on_ready(self.startup)
        self.driver.on_shutdown(self.shutdown)

    @override
    def get_api_base(self) -> URL:
        if self.sandbox and "qq_api_base" not in self.qq_config.model_fields_set:
            return URL(SANDBOX_API_BASE)
        return URL(str(self.qq_config.qq_api_base))

    @property
    def webhook_url(self) -> str:
        """Where QQ's callbacks are served (the original's routes on NoneBot's server)."""
        host = getattr(self.config, "host", "127.0.0.1")
        port = getattr(self.config, "port", 8080)
        return f"http://{host}:{port}/qq/webhook"

    @override
    async def _handle_http(self, request: Request) -> Response:
        """The original's routes (``/qq/``, ``/qq/webhook``, ``/qq/webhook/``), answered by the
        client's webhook intake: signature, replay window, dedupe and, with the session store,
        the intake journal (a callback is durable before its ACK)."""
        bot_id = request.headers.get("X-Bot-Appid")
        hooks = [r for r in self.runners if r.webhook]
        runner = next((r for r in hooks if r.info.id == bot_id), None)
        if runner is None and not bot_id and len(hooks) == 1:
            runner = hooks[0]  # one webhook bot: a request without the header is for it
        if runner is None:
            log = (
                "Missing X-Bot-Appid header in request" if not bot_id else f"Bot {bot_id} not found"
            )
            logger.opt(colors=False).warning(f"QQ webhook: {log}")
            return Response(403, content="Bot not found")
        return await runner.callback(request)

    @override
    async def startup(self) -> None:
        if isinstance(self.driver, ASGIMixin):
            for path, name in (("/qq/", "Root"), ("/qq/webhook", ""), ("/qq/webhook/", "Slash")):
                self.setup_http_server(
                    HTTPServerSetup(
                        URL(path),
                        "POST",
                        f"{self.get_name()} {name} Webhook".replace("  ", " "),
                        self._handle_http,
                    )
                )
        extra = dict(self.config.model_extra or {})
        custom = self.qq_config.qq_custom_gateway_url
        for info in self.qq_config.qq_bots:
            try:
                settings, warnings = gateway_settings(
                    info,
                    api_base=str(self.get_api_base()),
                    token_url=str(self.get_auth_base()),
                    gateway_url=str(custom) if custom is not None else None,
                    environ=os.environ,
                    dotenv=extra,
                )
            except ConfigError as exc:
                logger.opt(colors=False).error(f"QQ bot {info.id}: {exc}")
                continue
            for warning in dict.fromkeys(warnings):
                logger.opt(colors=False).warning(f"QQ bot {info.id}: {warning}")
            if settings.http_addr is not None:
                if any(r.settings.http_addr is not None for r in self.runners):
                    # One side server per process: its health report follows one client.
                    logger.opt(colors=False).warning(
                        f"QQ bot {info.id}: no side server (QQBOT_HTTP_ADDR serves the first "
                        "bot of QQ_BOTS only)"
                    )
                    settings = replace(settings, http_addr=None)
            runner = BotRunner(self, info, settings)
            self.runners.append(runner)
            await runner.start()

    @override
    async def shutdown(self) -> None:
        runners, self.runners = self.runners, []
        await asyncio.gather(*(r.stop() for r in runners), return_exceptions=True)


def _route_library_logs() -> None:
    """This project's log lines (``qqbot_gateway.*``, stdlib logging) go to NoneBot's loguru
    logger, unless the application configured that logger itself."""
    lib = logging.getLogger("qqbot_gateway")
    if lib.handlers:
        return
    lib.addHandler(LoguruHandler())
    lib.setLevel(logging.INFO)
    lib.propagate = False
