"""Sending without a gateway process: hermes's ``standalone_sender_fn`` (cron, notifications).

hermes calls it when no adapter of the platform runs in the calling process (a cron job in a
separate ``hermes cron`` process, ``send_message`` from the CLI)::

    await standalone_send(pconfig, chat_id, message, thread_id=None, media_files=None,
                          force_document=False)
    # -> {"success": True, "message_id": "..."} or {"error": "..."}

It reads the same settings as the adapter (``pconfig.extra`` plus the environment), fetches an
access token with this project's :class:`~qqbot_gateway.adapter.auth.TokenManager` and posts
through :class:`~qqbot_gateway.adapter.api.OpenAPIClient` (retries on 5xx and 429 with
``Retry-After``, the token refreshed once on 401), then closes both: nothing stays open.

Every message sent this way is a **proactive** message (there is no message to reply to), and
QQ limits those hard: 4 a month per user (C2C) and 4 a month per group, a user can turn them off,
and QQ announced that from 2025-04-21 proactive push is no longer offered to bots in general:
the API then answers an error, which reaches hermes as ``{"error": ...}`` (never a silent
success). Guild channels (``channel:<id>``) allow 20 a day per channel, guild DMs
(``dms:<guild_id>``) 2 a day per user. ``docs/hermes.md`` says the same.

Targets: ``c2c:<user_openid>``, ``group:<group_openid>``, ``channel:<channel_id>``,
``dms:<guild_id>``; a bare id is a user openid (C2C), a bare number a guild channel, as the
adapter routes chats it has not seen.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

import aiohttp

from qqbot_gateway.adapter.api import OpenAPIClient
from qqbot_gateway.adapter.auth import TokenManager
from qqbot_gateway.adapter.connection import tcp_connector
from qqbot_gateway.adapter.errors import APIConnectionError, APIError, AuthError
from qqbot_gateway.config import ConfigError

from .settings import hermes_settings, platform_name

__all__ = ["CHAT_KINDS", "split_chat_id", "standalone_send"]

_log = logging.getLogger("qqbot_gateway.hermes")

#: The prefixes a chat id may carry: where a message to it goes.
CHAT_KINDS: Final = ("c2c", "group", "channel", "dms")
#: The longest text one message may carry here (the adapter's default chunk size). hermes's
#: ``_send_to_platform`` splits at ``max_message_length`` (2000) before calling the sender.
MAX_TEXT: Final = 2000


def split_chat_id(chat_id: str) -> tuple[str | None, str]:
    """``("group", "ABC")`` for ``group:ABC``; ``(None, chat_id)`` without a known prefix."""
    kind, sep, rest = chat_id.partition(":")
    if sep and kind in CHAT_KINDS and rest:
        return kind, rest
    return None, chat_id


def guess_kind(target: str) -> str:
    """A chat never seen: openids are hex (a user), guild channel ids are numeric."""
    return "channel" if target.isdigit() else "c2c"


async def standalone_send(
    pconfig: Any,
    chat_id: str,
    message: str,
    *,
    thread_id: str | None = None,
    media_files: list[Any] | None = None,
    force_document: bool = False,
    environ: Mapping[str, str] | None = None,
    **_more: Any,
) -> dict[str, Any]:
    """Send ``message`` to ``chat_id`` as a proactive QQ message; hermes's result contract.

    ``thread_id`` does not exist on QQ and is ignored; ``media_files`` are not sent (QQ's
    rich-media upload needs a public URL): they are named in the error if nothing else was
    sent, and listed in the log otherwise. Keyword arguments newer hermes may add (e.g.
    ``caption``) are accepted and ignored rather than failing the delivery.
    """
    del thread_id, force_document
    name = platform_name(environ)
    extra = getattr(pconfig, "extra", None) or {}
    try:
        settings = hermes_settings(extra, environ, platform=name)
    except ConfigError as exc:
        return {"error": f"qqbot-gateway: {exc}"}
    kind, target = split_chat_id(str(chat_id).strip())
    if not target:
        return {"error": "qqbot-gateway: no chat id to send to"}
    kind = kind or guess_kind(target)
    text = (message or "").strip()
    if media_files:
        _log.warning(
            "qqbot-gateway: %d media file(s) not sent by the standalone sender "
            "(QQ uploads media from public URLs only)",
            len(media_files),
        )
        if not text:
            return {"error": "qqbot-gateway: media files are not sent without a live gateway"}
    if not text:
        return {"success": True, "message_id": None}
    if len(text) > MAX_TEXT:
        return {"error": f"qqbot-gateway: message longer than {MAX_TEXT} characters"}
    cfg = settings.service.client_config()
    timeout = aiohttp.ClientTimeout(total=cfg.request_timeout * 4)
    async with aiohttp.ClientSession(timeout=timeout, connector=tcp_connector()) as http:
        tokens = TokenManager(
            cfg.app_id,
            cfg.client_secret.get(),
            token_url=cfg.token_url,
            http=http,
            timeout=cfg.request_timeout,
            startup_attempts=2,
        )
        try:
            await tokens.start()
            api = OpenAPIClient(
                base_url=cfg.api_base,
                tokens=tokens,
                http=http,
                app_id=cfg.app_id,
                timeout=cfg.request_timeout,
            )
            result = await api.send(kind, target, text)
        except (APIError, APIConnectionError, AuthError) as exc:
            _log.warning("qqbot-gateway: standalone send to %s %s failed: %s", kind, target, exc)
            return {"error": f"qqbot-gateway: {kind} {target}: {exc}"}
        finally:
            await tokens.close()
    return {"success": True, "message_id": result.id}
