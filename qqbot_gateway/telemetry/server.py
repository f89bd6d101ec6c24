"""The HTTP side server: ``/healthz`` (``/livez``), ``/readyz``, ``/metrics`` and the status page
(``/``, ``/status``, ``/status.json`` and its two static files, see :mod:`.status`), nothing else.

It runs on the gateway's own event loop (no thread: if the loop is wedged, the probe times out,
which is the right answer) and is built so that requests to it never disturb the gateway:

* only ``GET`` (and ``HEAD`` on the probes); anything else is 404 / 405 with a short body;
* request lines and header fields are capped (``max_line_size`` / ``max_field_size`` /
  ``max_headers``, aiohttp answers 400 / 431 above them), and request bodies are never read;
* slow clients are bounded: a connection must complete a request every
  :data:`REQUEST_DEADLINE` seconds (a watchdog closes it otherwise, which also ends
  slow-header and idle keep-alive connections), and at most :data:`MAX_CONNECTIONS` are open;
* no access log (probes every few seconds are noise); handler errors are logged, never shown;
  a malformed request (bad request line, oversized or malformed header) is one WARNING
  line naming the peer and the fault, not aiohttp's ERROR with a traceback
  (:class:`MalformedRequestFilter`; counted in ``SideServer.malformed_requests`` and, through
  ``on_malformed``, in ``qqbot_gateway_side_server_malformed_requests_total``);
* bodies never contain a secret: health reasons pass through the log redactor.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from qqbot_gateway.adapter.protocol import url_host

from ._guard import ConnectionGuard, start_guarded, stop_guarded
from .health import Check, HealthReport
from .status import StatusPage

__all__ = ["MAX_CONNECTIONS", "REQUEST_DEADLINE", "SideServer"]

_log = logging.getLogger("qqbot_gateway.telemetry.server")
#: aiohttp's request handler logs through this one (its errors, never an access log).
_http_log = logging.getLogger("qqbot_gateway.telemetry.server.http")

#: Probes and scrapes send one small request; 10 s for a whole request line and headers is
#: generous for any real client on any network, and bounds what a slow client can hold.
REQUEST_DEADLINE: Final = 10.0
#: Kubelet probes plus a few Prometheus replicas need a handful; anything beyond is refused.
MAX_CONNECTIONS: Final = 64
#: 8 KiB: aiohttp's default too; stated here so the limit is ours and tested.
MAX_LINE_SIZE: Final = 8190
MAX_FIELD_SIZE: Final = 8190
MAX_HEADERS: Final = 64


#: A malformed request's description is cut here (it may quote the peer's bytes).
_DETAIL_LIMIT: Final = 160


class MalformedRequestFilter(logging.Filter):
    """Turns aiohttp's "Error handling request" ERROR with a traceback, for a request aiohttp
    could not parse, into one WARNING line, and counts it. Anything else passes unchanged.

    A port reachable from a network sees scanners and broken clients; each malformed request
    is the peer's fault, answered 400 by aiohttp, and needs no traceback. (A first request
    that is not HTTP at all, e.g. TLS, aiohttp itself logs at DEBUG only.)
    """

    def __init__(self, on_malformed: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self.count = 0
        self._on_malformed = on_malformed

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.levelno < logging.ERROR or not isinstance(exc, HttpProcessingError):
            return True
        self.count += 1
        self._on_malformed()
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        detail = " ".join(str(exc.message).split())[:_DETAIL_LIMIT]
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = "side server: malformed request from %s answered %s: %s: %s"
        record.args = (remote, exc.code, type(exc).__name__, detail)
        record.exc_info = record.exc_text = None
        return True


class SideServer:
    def __init__(
        self,
        *,
        registry: CollectorRegistry,
        evaluate: Callable[[], HealthReport],
        sanitize: Callable[[str], str] = lambda text: text,
        request_deadline: float = REQUEST_DEADLINE,
        max_connections: int = MAX_CONNECTIONS,
        status_page: StatusPage | None = None,
        on_malformed: Callable[[], None] = lambda: None,
    ) -> None:
        self._evaluate = evaluate
        self._sanitize = sanitize
        self._deadline = request_deadline
        self._guard = ConnectionGuard(deadline=request_deadline, max_connections=max_connections)
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        self._malformed = MalformedRequestFilter(on_malformed)
        self.host: str | None = None
        self.port: int | None = None
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/livez", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", make_aiohttp_handler(registry), allow_head=False)
        if status_page is not None:
            status_page.add_routes(app)
        self.app = app

    @property
    def malformed_requests(self) -> int:
        """Requests aiohttp could not parse (answered 400/431, logged as one WARNING each)."""
        return self._malformed.count

    @property
    def url(self) -> str | None:
        if self.host is None or self.port is None:
            return None
        return f"http://{url_host(self.host)}:{self.port}"

    async def start(self, host: str, port: int) -> None:
        _http_log.addFilter(self._malformed)
        self._runner, self._server = await start_guarded(
            self.app,
            self._guard,
            host,
            port,
            backlog=128,
            logger=_http_log,
            max_line_size=MAX_LINE_SIZE,
            max_field_size=MAX_FIELD_SIZE,
            max_headers=MAX_HEADERS,
        )
        sockname = self._server.sockets[0].getsockname()
        self.host, self.port = host, int(sockname[1])

    async def stop(self, within: float = 2.0) -> None:
        server, self._server = self._server, None
        runner, self._runner = self._runner, None
        await stop_guarded(runner, server, self._guard, within)
        _http_log.removeFilter(self._malformed)

    # --- handlers ------------------------------------------------------------------------
    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        self._guard.seen(request.protocol)
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:
            # 404 / 405: a short plain body, and for 405 the Allow header aiohttp computed.
            return web.Response(
                status=exc.status, text=f"{exc.status} {exc.reason}\n", headers=_allow(exc)
            )
        except Exception:  # noqa: BLE001 - a failing route must not show internals
            _log.exception("side server: %s %s failed", request.method, request.path)
            return web.Response(status=500, text="500 Internal Server Error\n")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    async def _healthz(self, request: web.Request) -> web.Response:
        report = self._evaluate()
        return self._render(request, report.healthy, report.checks, "healthz")

    async def _readyz(self, request: web.Request) -> web.Response:
        report = self._evaluate()
        return self._render(request, report.ready, report.readiness, "readyz")

    def _render(
        self, request: web.Request, ok: bool, checks: list[Check], what: str
    ) -> web.Response:
        status = 200 if ok else 503
        clean = [Check(c.name, c.ok, self._sanitize(c.reason)) for c in checks]
        if "verbose" in request.query:
            # kube-apiserver style, with the reason after passing checks too: the liveness
            # layer lines carry their state (ping armed, RTT, deadlines) only there.
            lines = [
                f"[+]{c.name} ok: {c.reason}" if c.ok else f"[-]{c.name} failed: {c.reason}"
                for c in clean
            ]
            lines.append(f"{what} check {'passed' if ok else 'failed'}")
            return web.Response(status=status, text="\n".join(lines) + "\n")
        body = {
            "status": "ok" if ok else "fail",
            "checks": [{"name": c.name, "ok": c.ok, "reason": c.reason} for c in clean],
        }
        return web.Response(status=status, text=json.dumps(body), content_type="application/json")


def _allow(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}
