"""The webhook receiver: an aiohttp server that feeds signed callbacks to the client's intake.

::

    client = QQBotClient(ClientConfig(..., mode="webhook", webhook=WebhookConfig(port=8443)))
    await client.start()
    receiver = WebhookReceiver(client.webhook, health=lambda: telemetry.evaluate().healthy)
    await receiver.start()          # WebhookListening: /readyz can turn ready
    ...
    await receiver.stop()           # after client.webhook.close(): late callbacks get a 503

It has its own address (``QQBOT_WEBHOOK_ADDR``), never the side port: the side server must not
be public, this one must be reachable by the platform (directly with TLS, or behind an ingress or
reverse proxy over plain HTTP). What it answers, each counted by outcome
(``qqbot_gateway_webhook_requests_total``):

* ``POST <path>``: the protocol (:class:`~qqbot_gateway.adapter.webhook.WebhookIntake`): 200
  with the op 12 ACK (once the dispatch is durable in the intake journal, when the session
  store is on) or the op 13 answer; 401 for a missing, bad or stale signature; 400 for a signed
  body that is not a callback; 503 + ``Retry-After`` while the handler queue is full, the
  journal cannot be written or the process shuts down (the platform retries);
* a body over ``max_body`` bytes: 413 (by ``Content-Length`` before reading, or while reading);
  a body that does not arrive within :data:`BODY_DEADLINE`: 408;
* another method on the path: 405 with ``Allow: POST``; another path: 404;
* ``GET /healthz``: ``ok`` / ``fail`` and nothing else, for load balancers that probe the
  serving port (the detailed report stays on the private side port).

A bad request never disturbs the service: answers are computed in the request, nothing is
buffered beyond one body, at most :data:`MAX_CONNECTIONS` connections are open and each must
complete a request's headers every :data:`IDLE_DEADLINE` seconds (slow-header clients and idle
keep-alive connections are closed), no access log, no body or signature in a log line.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Final

from aiohttp import web

from qqbot_gateway.adapter.protocol import url_host
from qqbot_gateway.adapter.webhook import (
    BAD_METHOD,
    NOT_FOUND,
    SLOW_BODY,
    TOO_LARGE,
    WebhookConfig,
    WebhookIntake,
)
from qqbot_gateway.telemetry._guard import ConnectionGuard, start_guarded, stop_guarded

__all__ = ["BODY_DEADLINE", "IDLE_DEADLINE", "MAX_CONNECTIONS", "WebhookReceiver"]

_log = logging.getLogger("qqbot_gateway.telemetry.webhook")

#: A callback body is a few KB; 10 s to deliver it is generous on any network and bounds what
#: a slow client can hold.
BODY_DEADLINE: Final = 10.0
#: A connection must complete a request's headers this often. 75 s: longer than the idle
#: timeout of the proxies in front (nginx keeps upstream connections 60 s), so a proxy never
#: sends on a connection we are closing; slow-header clients are bounded by it too.
IDLE_DEADLINE: Final = 75.0
#: The platform and an ingress need tens; 512 bounds file descriptors and memory under abuse.
MAX_CONNECTIONS: Final = 512
_HEALTH_PATH: Final = "/healthz"


class WebhookReceiver:
    """Serves a :class:`~qqbot_gateway.adapter.webhook.WebhookIntake` over HTTP(S); see the
    module docstring. ``health`` answers ``GET /healthz`` on the receiver's port."""

    def __init__(
        self,
        intake: WebhookIntake,
        config: WebhookConfig | None = None,
        *,
        health: Callable[[], bool] | None = None,
        body_deadline: float = BODY_DEADLINE,
    ) -> None:
        self.intake = intake
        self.config = cfg = config or intake.config
        self._health = health
        self._body_deadline = body_deadline
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        self._guard = ConnectionGuard(deadline=IDLE_DEADLINE, max_connections=MAX_CONNECTIONS)
        self.host: str | None = None
        self.port: int | None = None
        app = web.Application(client_max_size=cfg.max_body)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.app = app

    @property
    def scheme(self) -> str:
        return "https" if self.config.tls_cert else "http"

    @property
    def url(self) -> str | None:
        """The callback URL as seen from this host (the platform sees the public one)."""
        if self.host is None or self.port is None:
            return None
        return f"{self.scheme}://{url_host(self.host)}:{self.port}{self.config.path}"

    def _ssl_context(self) -> ssl.SSLContext | None:
        cfg = self.config
        if cfg.tls_cert is None or cfg.tls_key is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        return ctx

    async def start(self) -> None:
        """Listen on the configured address; raises OSError (port in use, bad TLS files)."""
        cfg = self.config
        ctx = self._ssl_context()
        runner, server = await start_guarded(
            self.app, self._guard, cfg.host, cfg.port, backlog=512, ssl_context=ctx
        )
        self._runner, self._server = runner, server
        sockname = server.sockets[0].getsockname()
        self.host, self.port = cfg.host, int(sockname[1])
        self.intake.serving = server.is_serving
        self.intake.listening(self.url or "")
        _log.info("webhook receiver listening on %s", self.url)

    async def stop(self, within: float = 5.0) -> None:
        runner, self._runner = self._runner, None
        server, self._server = self._server, None
        if runner is None or server is None:
            return
        self.intake.stopped("shutdown")
        await stop_guarded(runner, server, self._guard, within)

    # --- requests ------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received = asyncio.get_running_loop().time()
        self._guard.seen(request.protocol)
        cfg = self.config
        intake = self.intake
        if request.path != cfg.path:
            if request.path == _HEALTH_PATH and request.method in ("GET", "HEAD"):
                return self._healthz()
            reply = intake.refuse(NOT_FOUND, 404, received_at=received, detail="not found")
            return _response(reply.status, reply.body, reply.content_type)
        if request.method != "POST":
            reply = intake.refuse(BAD_METHOD, 405, received_at=received, detail="POST only")
            return _response(reply.status, reply.body, reply.content_type, {"Allow": "POST"})
        length = request.content_length
        if length is not None and length > cfg.max_body:
            reply = intake.refuse(TOO_LARGE, 413, received_at=received, detail="body too large")
            return _response(reply.status, reply.body, reply.content_type, {"Connection": "close"})
        try:
            async with asyncio.timeout(self._body_deadline):
                body = await _read_limited(request, cfg.max_body)
        except TimeoutError:
            reply = intake.refuse(SLOW_BODY, 408, received_at=received, detail="body too slow")
            return _response(reply.status, reply.body, reply.content_type, {"Connection": "close"})
        if body is None:
            reply = intake.refuse(TOO_LARGE, 413, received_at=received, detail="body too large")
            return _response(reply.status, reply.body, reply.content_type, {"Connection": "close"})
        reply = await intake.receive(request.headers, body, received_at=received)
        return _response(reply.status, reply.body, reply.content_type, dict(reply.headers))

    def _healthz(self) -> web.Response:
        ok = True
        if self._health is not None:
            try:
                ok = self._health()
            except Exception:  # noqa: BLE001 - a failing evaluator is a failing probe
                _log.exception("webhook receiver: health evaluation failed")
                ok = False
        return web.Response(status=200 if ok else 503, text="ok\n" if ok else "fail\n")


async def _read_limited(request: web.Request, limit: int) -> bytes | None:
    """The body, or None once it passes ``limit`` bytes (chunked bodies have no length)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _response(
    status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
) -> web.Response:
    response = web.Response(status=status, body=body, content_type=content_type, headers=headers)
    response.headers["Cache-Control"] = "no-store"
    return response
