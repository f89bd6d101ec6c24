"""The simulator's REST side: the token endpoint, discovery (``/gateway``, ``/gateway/bot``),
``/users/@me`` and the send endpoints with QQ's passive-reply rules (window, five replies per
message, ``msg_seq`` once)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from qqbot_gateway.simulator.core import CODE_BAD_REQUEST, SimulatorCore, json_response
from qqbot_gateway.simulator.faults import (
    GatewayFault,
    TokenFault,
)
from qqbot_gateway.simulator.records import (
    SentMessage,
)

__all__ = ["RestAPI"]

#: QQ answers a bad or expired token with this code on REST.
CODE_TOKEN_EXPIRED: Final = 11244
CODE_BAD_CREDENTIALS: Final = 100016
CODE_TOKEN_BUSY: Final = 100001  # "too many requests": the transient error_200 fault
CODE_MSG_LIMIT: Final = 22009  # more than 5 replies to one message
CODE_MSG_SEQ_DUPLICATE: Final = 40054005  # same msg_id + msg_seq twice
CODE_MSG_EXPIRED: Final = 304027  # passive reply window passed
CODE_PROACTIVE_LIMIT: Final = 304045

#: At most 5 passive replies per received message (QQ's documented limit).
MAX_REPLIES_PER_MSG: Final = 5
#: Passive reply windows in seconds (C2C 60 min; group, channel and DM 5 min).
REPLY_WINDOWS: Final[dict[str, float]] = {
    "c2c": 3600.0,
    "group": 300.0,
    "channel": 300.0,
    "dms": 300.0,
}


class RestAPI(SimulatorCore):
    """The HTTP endpoints a bot calls (see the module docstring)."""

    def _add_rest_routes(self, r: web.UrlDispatcher) -> None:
        r.add_post("/app/getAppAccessToken", self._h_token)
        r.add_get("/gateway", self._h_gateway)
        r.add_get("/gateway/bot", self._h_gateway_bot)
        r.add_get("/users/@me", self._h_me)
        r.add_post("/v2/users/{target}/messages", self._sender("c2c"))
        r.add_post("/v2/groups/{target}/messages", self._sender("group"))
        r.add_post("/channels/{target}/messages", self._sender("channel"))
        r.add_post("/dms/{target}/messages", self._sender("dms"))
        r.add_post("/v2/users/{target}/files", self._sender("c2c_file"))
        r.add_post("/v2/groups/{target}/files", self._sender("group_file"))

    def _check_auth(self, request: web.Request) -> web.Response | None:
        self.rest_requests += 1
        if self._auth_token(request.headers.get("Authorization")):
            return None
        return self._error(401, CODE_TOKEN_EXPIRED, "token not exist or expire")

    async def _h_token(self, request: web.Request) -> web.Response:
        self.token_fetches += 1
        f = self.faults
        if f.token_delay > 0:
            await asyncio.sleep(f.token_delay)
        if f.token_fault is TokenFault.HTTP_500:
            return json_response({"code": 500, "message": "internal error"}, status=500)
        if f.token_fault is TokenFault.ERROR_200:
            return json_response({"code": CODE_TOKEN_BUSY, "message": "too many requests"})
        if f.token_fault is TokenFault.MALFORMED:
            return web.Response(body=b'{"access_token": ', content_type="application/json")
        try:
            body = await request.json()
        except ValueError:
            body = None
        if (
            not isinstance(body, dict)
            or body.get("appId") != self.config.app_id
            or body.get("clientSecret") != self._client_secret
        ):
            return json_response(
                {"code": CODE_BAD_CREDENTIALS, "message": "invalid appid or secret"}
            )
        token, remaining = self.issue_token()
        expires: int | str
        if f.token_expires_in is not None:
            expires = f.token_expires_in
        else:
            seconds = max(1, int(remaining))
            expires = str(seconds) if self.config.token_expires_as_string else seconds
        return json_response({"access_token": token, "expires_in": expires})

    async def _gateway_fault(self) -> web.Response | None:
        f = self.faults
        if f.gateway_delay > 0:
            await asyncio.sleep(f.gateway_delay)
        if f.gateway_fault is GatewayFault.HTTP_500:
            return self._error(500, 500, "internal error")
        if f.gateway_fault is GatewayFault.HTTP_503:
            return self._error(503, 503, "service unavailable")
        if f.gateway_fault is GatewayFault.MALFORMED:
            return web.Response(body=b'{"url": "ws', content_type="application/json")
        return None

    async def _h_gateway(self, request: web.Request) -> web.Response:
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        faulty = await self._gateway_fault()
        return faulty if faulty is not None else self._ok({"url": self.ws_url})

    async def _h_gateway_bot(self, request: web.Request) -> web.Response:
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        faulty = await self._gateway_fault()
        if faulty is not None:
            return faulty
        limit = self.config.session_start_limit
        return self._ok(
            {
                "url": self.ws_url,
                "shards": self.config.shards,
                "session_start_limit": {
                    "total": limit.total,
                    "remaining": limit.remaining,
                    "reset_after": limit.reset_after,
                    "max_concurrency": limit.max_concurrency,
                },
            }
        )

    async def _h_me(self, request: web.Request) -> web.Response:
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        return self._ok(
            {
                "id": self.config.bot_id,
                "username": self.config.bot_username,
                "avatar": "",
                "union_openid": "",
                "union_user_account": "",
            }
        )

    def _sender(self, kind: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            return await self._h_send(request, kind)

        return handler

    async def _h_send(self, request: web.Request, kind: str) -> web.Response:
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        target = request.match_info["target"]
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self._error(400, CODE_BAD_REQUEST, "request body must be a JSON object")
        now = self._now()
        ts = self._factory.timestamp()
        if kind.endswith("_file"):
            if not body.get("url") or not isinstance(body.get("file_type"), int):
                return self._error(400, CODE_BAD_REQUEST, "file_type and url are required")
            file_id = self._factory.message_id()
            self._messages.append(SentMessage(kind, target, body, None, None, None, file_id, now))
            return self._ok({"file_uuid": file_id, "file_info": file_id, "ttl": 0, "id": file_id})
        msg_id = body.get("msg_id") if isinstance(body.get("msg_id"), str) else None
        event_id = body.get("event_id") if isinstance(body.get("event_id"), str) else None
        raw_seq = body.get("msg_seq")
        try:
            msg_seq = 1 if raw_seq is None else int(raw_seq)
        except (TypeError, ValueError):
            return self._error(400, CODE_BAD_REQUEST, "msg_seq must be an integer")
        if not any(body.get(k) for k in ("content", "markdown", "ark", "embed", "media")):
            return self._error(400, CODE_BAD_REQUEST, "message is empty")
        if msg_id is None and event_id is None and not self.config.allow_proactive:
            return self._error(400, CODE_PROACTIVE_LIMIT, "proactive message not allowed")
        if msg_id is not None:
            born = self._msg_times.get(msg_id)
            if born is not None and now - born > REPLY_WINDOWS[kind]:
                return self._error(400, CODE_MSG_EXPIRED, "message expired for passive reply")
            used = self._replies.setdefault(msg_id, set())
            if msg_seq in used:
                return self._error(400, CODE_MSG_SEQ_DUPLICATE, "msg_seq duplicated")
            if len(used) >= MAX_REPLIES_PER_MSG:
                return self._error(400, CODE_MSG_LIMIT, "msg limit exceed")
            used.add(msg_seq)
        new_id = self._factory.message_id()
        self._messages.append(
            SentMessage(kind, target, body, msg_id, msg_seq, event_id, new_id, now)
        )
        answer: dict[str, Any] = {"id": new_id, "timestamp": ts}
        if kind in ("channel", "dms"):
            answer.update(
                {
                    "channel_id": target if kind == "channel" else "",
                    "guild_id": target if kind == "dms" else "",
                    "content": body.get("content", ""),
                    "author": {
                        "id": self.config.bot_id,
                        "username": self.config.bot_username,
                        "bot": True,
                    },
                }
            )
        return self._ok(answer)
