"""The hermes platform adapter: a hermes QQ bot on this project's client.

How hermes loads it, the configuration it reads and what hermes gets from it instead of its
built-in QQ adapter are in the package's docstring (:mod:`qqbot_gateway.integrations.hermes`)
and in docs/hermes.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import mimetypes
import os
import re
import time
from collections import OrderedDict
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
from qqbot_gateway.adapter.client import QQBotClient
from qqbot_gateway.adapter.connection import tcp_connector
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
from qqbot_gateway.config import ConfigError
from qqbot_gateway.service import ReceiverError, start_receiver
from qqbot_gateway.telemetry import Telemetry

from .inbound import MESSAGE_KINDS, Inbound, env_true, inbound, matches
from .sender import guess_kind, split_chat_id
from .settings import ALLOW_ALL_ENV, HermesSettings, hermes_settings, platform_name

__all__ = ["MAX_REPLIES_PER_MESSAGE", "TRUNCATED_NOTE", "QQBotGatewayAdapter", "url_is_safe"]

_log = logging.getLogger("qqbot_gateway.hermes")

_MAX_ROUTES: Final = 10_000
_MAX_ATTACHMENTS: Final = 10
_TYPING_DEBOUNCE: Final = 50.0
#: QQ accepts at most this many passive replies to one message (C2C and group).
MAX_REPLIES_PER_MESSAGE: Final = 5
TRUNCATED_NOTE: Final = "\n\n[… truncated: QQ accepts 5 replies to one message]"


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
        self._http = aiohttp.ClientSession(timeout=timeout, connector=tcp_connector())
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
        if intake is None:
            return False
        status = intake.status()
        return status.listening and status.handlers_alive

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
                return matches(tuple(self._allow_from), msg.user_id)
            if policy == "open":
                return env_true(os.environ, ALLOW_ALL_ENV) or env_true(
                    os.environ, "GATEWAY_ALLOW_ALL_USERS"
                )
            return bool(policy == "pairing")  # hermes's runner runs the pairing handshake
        policy = self._group_policy
        if policy == "allowlist":
            allowed = tuple(self._group_allow_from)
            return matches(allowed, msg.chat_id) or (
                msg.guild_id is not None and matches(allowed, msg.guild_id)
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
        kind, target = split_chat_id(chat_id)
        if kind is not None:
            return kind, target
        known = self._routes.get(chat_id)
        if known is not None:
            return known, chat_id
        return guess_kind(chat_id), chat_id  # unknown chat, e.g. after a restart

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
                    result = await client.api.send(
                        kind, target, None, msg_id=msg_id, markdown={"content": chunk}
                    )
                else:
                    result = await client.api.send(kind, target, chunk, msg_id=msg_id)
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
                result = await client.api.send(
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


def _plain(text: str) -> str:
    from gateway.platforms.helpers import strip_markdown

    return str(strip_markdown(text))


def url_is_safe(url: str, guard: Any) -> bool:
    """An http(s) URL that hermes's SSRF guard accepts."""
    if urlsplit(url).scheme not in ("http", "https"):
        return False
    return bool(guard(url))
