"""The QQ OpenAPI subset a gateway bot needs: discovery and replies.

::

    info = await api.get_gateway_bot()          # url, shards, session_start_limit
    await api.reply(event, "hello")             # C2C, group, guild channel or guild DM
    await api.reply_long(event, long_text)      # chunks, each one a reply with its own msg_seq

Requests carry ``Authorization: QQBot {access_token}`` and ``X-Union-Appid``. Errors become
typed exceptions (:mod:`.errors`) carrying QQ's ``code``, ``message`` and ``trace_id`` (from the
body or the ``X-Tps-trace-ID`` header). Rate limits (HTTP 429, and the codes in
:data:`RATE_LIMIT_CODES`) are retried after the advised delay, a bounded number of times; a
rejected token (401 / code 11244) forces one token refresh and one retry. Server errors and
network failures are retried only for requests that are safe to repeat (``GET``): a message
POST is never sent twice behind the caller's back.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from .auth import TokenSource
from .backoff import Backoff, Sleep
from .errors import (
    APIConnectionError,
    APIError,
    ForbiddenError,
    MalformedResponseError,
    NotFoundError,
    RateLimitedError,
    ReplyRejectedError,
    ServerError,
    UnauthorizedError,
    error_fields,
)
from .protocol import GatewayEvent

__all__ = [
    "RATE_LIMIT_CODES",
    "GatewayBotInfo",
    "MessageResult",
    "MessageSeqAllocator",
    "OpenAPIClient",
    "ReplyTarget",
    "SessionStartLimit",
    "reply_target",
    "split_text",
]

_log = logging.getLogger("qqbot_gateway.api")

TRACE_HEADER: Final = "X-Tps-trace-ID"
#: Codes that mean "the access token is not valid (any more)": refresh once and retry.
TOKEN_CODES: Final = frozenset({11241, 11242, 11243, 11244})
#: Body codes retried like HTTP 429. Only 100001 ("too many requests") is documented as seen;
#: extend the set if QQ answers a rate limit with another code (an unverified list elsewhere).
RATE_LIMIT_CODES: Final = frozenset({100001})
#: Codes of rules about passive replies (window passed, reply limit, msg_seq reuse, proactive).
REPLY_RULE_CODES: Final = frozenset({22009, 40054005, 304027, *range(304045, 304053)})
#: Text chunk size for ``reply_long``; QQ's limit is not documented as a number, 2000
#: characters is what peers use.
DEFAULT_CHUNK: Final = 2000


@dataclass(frozen=True, slots=True)
class SessionStartLimit:
    total: int
    remaining: int
    #: Milliseconds until ``remaining`` resets (QQ sends ``reset_after`` in ms).
    reset_after_ms: int
    #: Sessions that may be started per 5 seconds.
    max_concurrency: int


@dataclass(frozen=True, slots=True)
class GatewayBotInfo:
    url: str
    shards: int
    session_start_limit: SessionStartLimit


@dataclass(frozen=True, slots=True)
class MessageResult:
    id: str | None
    timestamp: str | None
    trace_id: str | None
    raw: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ReplyTarget:
    """Where a reply to an event goes: ``kind`` is c2c, group, channel or dms."""

    kind: str
    target: str
    msg_id: str | None
    event_id: str | None


class MessageSeqAllocator:
    """A fresh ``msg_seq`` per message to the same ``msg_id`` (QQ rejects a reused pair).

    Bounded: the oldest message ids are forgotten first (QQ's reply windows are 5 to 60 min,
    and at most 5 replies per message are accepted anyway).
    """

    def __init__(self, max_ids: int = 10_000) -> None:
        if max_ids < 1:
            raise ValueError("max_ids must be >= 1")
        self._max = max_ids
        self._next: OrderedDict[str, int] = OrderedDict()

    def next(self, msg_id: str) -> int:
        seq = self._next.pop(msg_id, 1)
        self._next[msg_id] = seq + 1
        while len(self._next) > self._max:
            self._next.popitem(last=False)
        return seq

    def __len__(self) -> int:
        return len(self._next)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def reply_target(event: GatewayEvent) -> ReplyTarget:
    """Work out where a reply to ``event`` goes. Raises ValueError for events one cannot
    answer (e.g. a READY or a guild member update)."""
    d: dict[str, Any] = event.data if isinstance(event.data, dict) else {}
    t = event.type
    raw_author = d.get("author")
    author: dict[str, Any] = raw_author if isinstance(raw_author, dict) else {}
    msg_id = _str(d.get("id"))
    target: str | None
    if t == "C2C_MESSAGE_CREATE":
        target = _str(author.get("user_openid")) or _str(author.get("id"))
        kind = "c2c"
    elif t in ("GROUP_AT_MESSAGE_CREATE", "GROUP_MESSAGE_CREATE"):
        target, kind = _str(d.get("group_openid")), "group"
    elif t in ("AT_MESSAGE_CREATE", "MESSAGE_CREATE", "PUBLIC_MESSAGE_CREATE"):
        target, kind = _str(d.get("channel_id")), "channel"
    elif t == "DIRECT_MESSAGE_CREATE":
        target, kind = _str(d.get("guild_id")), "dms"
    elif t in ("FRIEND_ADD", "C2C_MSG_RECEIVE"):
        target, kind = _str(d.get("openid")), "c2c"
        msg_id = None
    elif t in ("GROUP_ADD_ROBOT", "GROUP_MSG_RECEIVE"):
        target, kind = _str(d.get("group_openid")), "group"
        msg_id = None
    elif t == "INTERACTION_CREATE":
        msg_id = None
        if _str(d.get("group_openid")):
            target, kind = _str(d.get("group_openid")), "group"
        elif _str(d.get("user_openid")):
            target, kind = _str(d.get("user_openid")), "c2c"
        elif _str(d.get("channel_id")):
            target, kind = _str(d.get("channel_id")), "channel"
        else:
            target, kind = None, "c2c"
    else:
        raise ValueError(f"cannot reply to a {t} event")
    if target is None:
        raise ValueError(f"{t} event has no reply target")
    # Message events are answered with msg_id; the others with the event's id (event_id).
    event_id = None if msg_id is not None else event.event_id
    if msg_id is None and event_id is None:
        raise ValueError(f"{t} event carries neither a message id nor an event id")
    return ReplyTarget(kind, target, msg_id, event_id)


def split_text(text: str, size: int = DEFAULT_CHUNK) -> list[str]:
    """Split ``text`` into chunks of at most ``size`` characters, at line breaks when possible."""
    if size < 1:
        raise ValueError("size must be >= 1")
    chunks: list[str] = []
    rest = text
    while len(rest) > size:
        cut = rest.rfind("\n", 0, size + 1)
        if cut <= 0:
            cut = size
        chunks.append(rest[:cut])
        rest = rest[cut:].lstrip("\n") if rest[cut : cut + 1] == "\n" else rest[cut:]
    if rest or not chunks:
        chunks.append(rest)
    return chunks


_SEND_PATHS: Final = {
    "c2c": "/v2/users/{}/messages",
    "group": "/v2/groups/{}/messages",
    "channel": "/channels/{}/messages",
    "dms": "/dms/{}/messages",
}


class OpenAPIClient:
    """A small, typed client for the QQ OpenAPI. Safe to share between shards and tasks."""

    def __init__(
        self,
        *,
        base_url: str,
        tokens: TokenSource,
        http: aiohttp.ClientSession,
        app_id: str,
        timeout: float = 10.0,
        max_retries: int = 3,
        max_retry_wait: float = 60.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must be an http(s) URL")
        if timeout <= 0 or max_retries < 0 or max_retry_wait <= 0:
            raise ValueError("need timeout > 0, max_retries >= 0, max_retry_wait > 0")
        self.base_url = base_url.rstrip("/")
        self._tokens = tokens
        self._http = http
        self._app_id = app_id
        self._timeout = timeout
        self._max_retries = max_retries
        self._max_retry_wait = max_retry_wait
        self._sleep = sleep
        self.msg_seq = MessageSeqAllocator()

    # --- discovery -------------------------------------------------------------------------
    async def get_gateway(self) -> str:
        data = await self.request("GET", "/gateway")
        url = data.get("url") if isinstance(data, dict) else None
        if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
            raise self._malformed("GET", "/gateway", "no ws:// or wss:// url")
        return url

    async def get_gateway_bot(self, *, retries: int | None = None) -> GatewayBotInfo:
        """``GET /gateway/bot``. ``retries`` overrides how often a network failure or a 5xx is
        retried here (the supervisor passes 0: its own backoff paces the attempts)."""
        path = "/gateway/bot"
        data, _ = await self._request("GET", path, None, idempotent=True, retries=retries)
        try:
            url = data["url"]
            if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
                raise ValueError("url")
            limit = data.get("session_start_limit") or {}
            info = GatewayBotInfo(
                url=url,
                shards=_int(data.get("shards", 1), "shards", minimum=1),
                session_start_limit=SessionStartLimit(
                    total=_int(limit.get("total", 1000), "total"),
                    remaining=_int(limit.get("remaining", 1000), "remaining"),
                    reset_after_ms=_int(limit.get("reset_after", 0), "reset_after"),
                    max_concurrency=_int(limit.get("max_concurrency", 1), "max_concurrency", 1),
                ),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise self._malformed("GET", path, f"unexpected shape ({exc})") from None
        return info

    async def get_me(self) -> dict[str, Any]:
        data = await self.request("GET", "/users/@me")
        if not isinstance(data, dict):
            raise self._malformed("GET", "/users/@me", "not a JSON object")
        return data

    # --- sending ---------------------------------------------------------------------------
    async def send_c2c(
        self, openid: str, content: str | None = None, **fields: Any
    ) -> MessageResult:
        """``POST /v2/users/{openid}/messages``. Keyword fields: msg_id, event_id, msg_seq,
        msg_type, markdown, keyboard, ark, media, embed, message_reference."""
        return await self._send("c2c", openid, content, fields)

    async def send_group(
        self, group_openid: str, content: str | None = None, **fields: Any
    ) -> MessageResult:
        """``POST /v2/groups/{group_openid}/messages``."""
        return await self._send("group", group_openid, content, fields)

    async def send_channel(
        self, channel_id: str, content: str | None = None, **fields: Any
    ) -> MessageResult:
        """``POST /channels/{channel_id}/messages`` (guild channel)."""
        return await self._send("channel", channel_id, content, fields)

    async def send_dm(
        self, guild_id: str, content: str | None = None, **fields: Any
    ) -> MessageResult:
        """``POST /dms/{guild_id}/messages`` (guild direct message session)."""
        return await self._send("dms", guild_id, content, fields)

    async def send(
        self, kind: str, target: str, content: str | None = None, **fields: Any
    ) -> MessageResult:
        """A message to ``target`` of ``kind``: ``c2c`` (a user's openid), ``group``,
        ``channel`` or ``dms`` (a guild id), as the four methods above."""
        if kind not in _SEND_PATHS:
            raise ValueError(f"unknown message kind {kind!r}; one of {', '.join(_SEND_PATHS)}")
        return await self._send(kind, target, content, fields)

    async def reply(
        self, event: GatewayEvent, content: str | None = None, **fields: Any
    ) -> MessageResult:
        """Answer ``event`` where it came from, as a passive reply (``msg_id`` or ``event_id``)
        with a fresh ``msg_seq``."""
        target = reply_target(event)
        if target.msg_id is not None:
            fields.setdefault("msg_id", target.msg_id)
        if target.event_id is not None:
            fields.setdefault("event_id", target.event_id)
        return await self._send(target.kind, target.target, content, fields)

    async def reply_long(
        self, event: GatewayEvent, text: str, *, chunk_size: int = DEFAULT_CHUNK
    ) -> list[MessageResult]:
        """Reply with ``text`` split into chunks; every chunk is a reply to ``event`` and has its
        own ``msg_seq``. Stops at the first failure (the exception says which chunk)."""
        results = []
        chunks = split_text(text, chunk_size)
        for index, chunk in enumerate(chunks):
            try:
                results.append(await self.reply(event, chunk))
            except APIError as exc:
                exc.add_note(f"chunk {index + 1} of {len(chunks)} failed; {index} were sent")
                raise
        return results

    async def _send(
        self, kind: str, target: str, content: str | None, fields: dict[str, Any]
    ) -> MessageResult:
        if not isinstance(target, str) or not target or "/" in target:
            raise ValueError(f"invalid {kind} target id {target!r}")
        body: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
        if content is not None:
            body["content"] = content
        body.setdefault("msg_type", _default_msg_type(body))
        if not any(body.get(k) for k in ("content", "markdown", "ark", "embed", "media")):
            raise ValueError("a message needs content, markdown, ark, embed or media")
        msg_id = body.get("msg_id")
        if isinstance(msg_id, str) and "msg_seq" not in body:
            body["msg_seq"] = self.msg_seq.next(msg_id)
        path = _SEND_PATHS[kind].format(target)
        data, trace_id = await self._request("POST", path, body, idempotent=False)
        raw = data if isinstance(data, dict) else {}
        return MessageResult(
            id=_str(raw.get("id")),
            timestamp=str(raw["timestamp"]) if raw.get("timestamp") is not None else None,
            trace_id=trace_id,
            raw=raw,
        )

    # --- transport -------------------------------------------------------------------------
    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request (with the retries described in the module docstring); returns the
        decoded JSON body (None for an empty body)."""
        data, _ = await self._request(method, path, body, idempotent=method in ("GET", "HEAD"))
        return data

    async def _request(
        self,
        method: str,
        path: str,
        body: Any,
        *,
        idempotent: bool,
        retries: int | None = None,
    ) -> tuple[Any, str | None]:
        url = self.base_url + path
        max_transient = self._max_retries if retries is None else max(0, retries)
        rate_limited = 0
        transient = 0
        refreshed = False
        while True:
            token = await self._tokens.get()
            headers = {"Authorization": f"QQBot {token}", "X-Union-Appid": self._app_id}
            try:
                async with asyncio.timeout(self._timeout):
                    async with self._http.request(method, url, json=body, headers=headers) as resp:
                        status = resp.status
                        raw = await resp.read()
                        trace_id = resp.headers.get(TRACE_HEADER)
                        retry_after_header = resp.headers.get("Retry-After")
            except (TimeoutError, aiohttp.ClientError) as exc:
                cause = (
                    f"timed out after {self._timeout:g}s"
                    if isinstance(exc, TimeoutError)
                    else type(exc).__name__
                )
                if idempotent and transient < max_transient:
                    transient += 1
                    await self._sleep(_backoff(transient))
                    continue
                raise APIConnectionError(method, path, cause) from None
            data = _decode(raw)
            code, message, body_trace = error_fields(data)
            trace_id = trace_id or body_trace
            if status < 300 and (code is None or code == 0 or not message):
                if raw and data is _UNDECODABLE:
                    raise self._malformed(method, path, "body is not JSON", status, trace_id)
                return (None if data is _UNDECODABLE else data), trace_id
            # An error: from here on, decide whether to retry.
            if (status == 401 or code in TOKEN_CODES) and not refreshed:
                refreshed = True
                await self._tokens.force_refresh(f"{method} {path} answered {status}", token)
                continue
            if status == 429 or code in RATE_LIMIT_CODES:
                wait = _retry_after(retry_after_header, data)
                if rate_limited < self._max_retries:
                    rate_limited += 1
                    delay = min(
                        self._max_retry_wait, wait if wait is not None else _backoff(rate_limited)
                    )
                    _log.info(
                        "%s %s rate limited (code %s); retrying in %.1fs", method, path, code, delay
                    )
                    await self._sleep(delay)
                    continue
                raise RateLimitedError(
                    method=method,
                    path=path,
                    status=status,
                    code=code,
                    message=message,
                    trace_id=trace_id,
                    retry_after=wait,
                )
            if status >= 500 and idempotent and transient < max_transient:
                transient += 1
                await self._sleep(_backoff(transient))
                continue
            raise _error_class(status, code)(
                method=method,
                path=path,
                status=status,
                code=code,
                message=message,
                trace_id=trace_id,
            )

    def _malformed(
        self,
        method: str,
        path: str,
        why: str,
        status: int = 200,
        trace_id: str | None = None,
    ) -> MalformedResponseError:
        return MalformedResponseError(
            method=method, path=path, status=status, code=None, message=why, trace_id=trace_id
        )


_UNDECODABLE: Final[Any] = object()


def _decode(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return _UNDECODABLE


def _error_class(status: int, code: int | None) -> type[APIError]:
    if code in REPLY_RULE_CODES:
        return ReplyRejectedError
    if status == 401 or code in TOKEN_CODES:
        return UnauthorizedError
    if status == 403:
        return ForbiddenError
    if status == 404:
        return NotFoundError
    if status >= 500:
        return ServerError
    return APIError


def _retry_after(header: str | None, data: Any) -> float | None:
    candidates: list[Any] = [header]
    if isinstance(data, dict):
        candidates.append(data.get("retry_after"))
    for value in candidates:
        if value is None or isinstance(value, bool):
            continue
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            continue
        if seconds >= 0 and seconds == seconds:
            return seconds
    return None


#: REST retries (5xx, network, a 429 without advice): full jitter from 0.5 s doubling, capped
#: at 10 s, so the few retries of one request finish well inside a handler's patience.
_REST_BACKOFF: Final = Backoff(base=0.5, cap=10.0)


def _backoff(attempt: int) -> float:
    return _REST_BACKOFF.delay(attempt)


def _int(value: Any, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{name} is not an integer")
    number = int(value)
    if number < minimum:
        raise ValueError(f"{name} is below {minimum}")
    return number


def _default_msg_type(body: Mapping[str, Any]) -> int:
    if body.get("markdown"):
        return 2
    if body.get("ark"):
        return 3
    if body.get("embed"):
        return 4
    if body.get("media"):
        return 7
    return 0
