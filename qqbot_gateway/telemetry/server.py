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
* bodies never contain a secret: health reasons pass through the log redactor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from .health import Check, HealthReport
from .status import StatusPage

__all__ = ["MAX_CONNECTIONS", "REQUEST_DEADLINE", "SideServer"]

_log = logging.getLogger("qqbot_gateway.telemetry.server")

#: Probes and scrapes send one small request; 10 s for a whole request line and headers is
#: generous for any real client on any network, and bounds what a slow client can hold.
REQUEST_DEADLINE: Final = 10.0
#: Kubelet probes plus a few Prometheus replicas need a handful; anything beyond is refused.
MAX_CONNECTIONS: Final = 64
#: 8 KiB: aiohttp's default too; stated here so the limit is ours and tested.
MAX_LINE_SIZE: Final = 8190
MAX_FIELD_SIZE: Final = 8190
MAX_HEADERS: Final = 64


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
    ) -> None:
        self._evaluate = evaluate
        self._sanitize = sanitize
        self._deadline = request_deadline
        self._max_connections = max_connections
        self._requests: dict[Any, int] = {}
        self._open = 0
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
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
    def url(self) -> str | None:
        if self.host is None or self.port is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self, host: str, port: int) -> None:
        runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            max_line_size=MAX_LINE_SIZE,
            max_field_size=MAX_FIELD_SIZE,
            max_headers=MAX_HEADERS,
            keepalive_timeout=self._deadline,
            shutdown_timeout=1.0,
        )
        await runner.setup()
        loop = asyncio.get_running_loop()
        factory = runner.server
        assert factory is not None

        def protocol_factory() -> asyncio.BaseProtocol:
            proto = factory()
            self._open += 1
            self._requests[proto] = 0
            if self._open > self._max_connections:
                loop.call_soon(self._drop, proto)
            loop.call_later(self._deadline, self._watchdog, proto, 0)
            return proto

        try:
            self._server = await loop.create_server(
                protocol_factory, host, port, reuse_address=True, backlog=128
            )
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        sockname = self._server.sockets[0].getsockname()
        self.host, self.port = host, int(sockname[1])

    def _drop(self, proto: Any) -> None:
        self._forget(proto)
        transport = getattr(proto, "transport", None)
        if transport is not None:
            transport.close()

    def _forget(self, proto: Any) -> None:
        if self._requests.pop(proto, None) is not None:
            self._open -= 1

    def _watchdog(self, proto: Any, seen: int) -> None:
        count = self._requests.get(proto)
        if count is None:
            return
        if getattr(proto, "transport", None) is None:  # closed: forget it
            self._forget(proto)
            return
        if count == seen:  # no request completed its headers in a whole deadline
            self._drop(proto)
            return
        asyncio.get_running_loop().call_later(self._deadline, self._watchdog, proto, count)

    async def stop(self, within: float = 2.0) -> None:
        server, self._server = self._server, None
        runner, self._runner = self._runner, None
        if server is not None:
            server.close()
        if runner is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await runner.cleanup()  # closes open connections (bounded below)
        if server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await server.wait_closed()
        self._requests.clear()
        self._open = 0

    # --- handlers ------------------------------------------------------------------------
    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        proto = request.protocol
        if proto in self._requests:
            self._requests[proto] += 1
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
