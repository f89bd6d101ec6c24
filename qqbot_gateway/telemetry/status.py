"""The status page: a live view of every shard for people who would rather look than read.

Routes on the side server (registered by :class:`~.server.SideServer`)::

    GET /, /status          the page (HTML; its script and stylesheet ship in the package)
    GET /status.json        the status document: stable, versioned (docs/status.md)
    GET /static/status.js   the page's script, /static/status.css its stylesheet

The page polls ``/status.json`` once a second (a plain keep-alive request, which the side
server's per-request deadline allows; a Server-Sent Events stream would hold a connection open
past it). Every chart is inline SVG drawn by the page's own script, with its numbers as text
beside it; nothing is loaded from anywhere else (a Content-Security-Policy says so to the
browser).

:class:`StatusPage` builds the document from the :class:`~.history.StatusHistory` subscriber,
the health report (the same evaluation ``/healthz`` and ``/readyz`` answer with) and the
adapter's configuration. Nothing secret goes into it: no session id, no token, no URL with a
query, no handler error message; free text (health reasons, disconnect details) passes through
the log redactor.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from qqbot_gateway._version import __version__
from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter.types import LivenessConfig, ShardStatus, TransportConfig

from ._clock import Clock
from .health import Check, HealthReport
from .history import (
    RATE_WINDOW,
    Incident,
    Series,
    ShardHistory,
    StatusHistory,
    WebhookHistory,
)

__all__ = ["SCHEMA", "SCHEMA_VERSION", "StatusPage"]

#: The document's ``schema`` and ``version``. The version changes only for an incompatible
#: change (a field removed, renamed or changing meaning); fields are added without one.
SCHEMA: Final = "qqbot-gateway/status"
SCHEMA_VERSION: Final = 1
#: Points per age sparkline: about one per two seconds over the default five minutes.
_AGE_POINTS: Final = 150
#: "Events per second now" averages over this many whole seconds.
_RATE_NOW: Final = 10
#: Requests within this many seconds of a built document get the same body: however many
#: pages poll (or whoever floods the route), at most four documents a second are built (each
#: costs about 2 ms per shard with five full minutes of history).
DOCUMENT_REUSE: Final = 0.25

#: The browser may load nothing but the page's own script, stylesheet and JSON.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_PAGE_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
_ASSETS: Final = {
    "status.js": "application/javascript",
    "status.css": "text/css",
}


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    content_type: str
    etag: str


def _load(name: str, content_type: str) -> _Asset:
    body = importlib.resources.files(__package__).joinpath("static", name).read_bytes()
    return _Asset(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:16] + '"')


class StatusPage:
    """Builds the status document (:meth:`document`) and serves the page (:meth:`add_routes`).

    ``evaluate`` is the health evaluation (``Telemetry.evaluate``); ``loop_lag`` answers the
    current event loop lag; ``shard_status`` the supervisors' snapshots (attempts, next
    attempt). ``transport`` is ``"websocket"`` or ``"webhook"``.
    """

    def __init__(
        self,
        *,
        history: StatusHistory,
        evaluate: Callable[[], HealthReport],
        clock: Clock,
        liveness: LivenessConfig | None = None,
        transport: TransportConfig | None = None,
        transport_mode: str = "websocket",
        loop_lag: Callable[[float], float] | None = None,
        loop_lag_threshold: float = 2.0,
        shard_status: Callable[[], Sequence[ShardStatus]] | None = None,
        sanitize: Callable[[str], str] = lambda text: text,
        service_name: str = "qqbot-gateway",
        started_at: float | None = None,
    ) -> None:
        self.history = history
        self.evaluate = evaluate
        self.clock = clock
        self.liveness = liveness or LivenessConfig()
        self.transport = transport or TransportConfig()
        self.transport_mode = transport_mode
        self.loop_lag = loop_lag
        self.loop_lag_threshold = loop_lag_threshold
        self.shard_status = shard_status
        self.sanitize = sanitize
        self.service_name = service_name
        self.started_at = clock.monotonic() if started_at is None else started_at
        self._cached: tuple[float, str] | None = None
        self._page = _load("status.html", "text/html")
        self._assets = {name: _load(name, kind) for name, kind in _ASSETS.items()}

    # --- HTTP ----------------------------------------------------------------------------
    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self._serve_page)
        app.router.add_get("/status", self._serve_page)
        app.router.add_get("/status.json", self._serve_document)
        for name in self._assets:
            app.router.add_get(f"/static/{name}", self._serve_asset)

    async def _serve_page(self, request: web.Request) -> web.Response:
        return self._respond(request, self._page)

    async def _serve_asset(self, request: web.Request) -> web.Response:
        return self._respond(request, self._assets[request.path.rsplit("/", 1)[-1]])

    def _respond(self, request: web.Request, asset: _Asset) -> web.Response:
        headers = {**_PAGE_HEADERS, "ETag": asset.etag, "Cache-Control": "no-cache"}
        if request.headers.get("If-None-Match") == asset.etag:
            return web.Response(status=304, headers=headers)
        return web.Response(
            body=asset.body, content_type=asset.content_type, charset="utf-8", headers=headers
        )

    async def _serve_document(self, request: web.Request) -> web.Response:
        now = self.clock.monotonic()
        cached = self._cached
        if cached is not None and 0.0 <= now - cached[0] < DOCUMENT_REUSE:
            body = cached[1]
        else:
            body = json.dumps(self.document(), separators=(",", ":"), allow_nan=False)
            self._cached = (now, body)
        return web.Response(
            text=body,
            content_type="application/json",
            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"},
        )

    # --- the document --------------------------------------------------------------------
    def document(self) -> dict[str, Any]:
        """The status document, version :data:`SCHEMA_VERSION` (see docs/status.md)."""
        report = self.evaluate()
        now = self.clock.monotonic()
        wall = self.clock.wall()
        self.history.sample(now)  # the adapter's counters, as of now
        checks = {c.name: c for c in (*report.checks, *report.readiness)}
        statuses = self._statuses()
        lag = self.loop_lag(now) if self.loop_lag is not None else None
        history = self.history
        webhook = self._webhook(report, now) if self.transport_mode == "webhook" else None
        return {
            "schema": SCHEMA,
            "version": SCHEMA_VERSION,
            "generated_at": _r(wall, 3),
            "service": {
                "name": self.service_name,
                "version": __version__,
                "uptime_seconds": _r(now - self.started_at),
                "transport": self.transport_mode,
            },
            "health": {
                "healthz": self._verdict(report.healthy, report.checks),
                "readyz": self._verdict(report.ready, report.readiness),
            },
            "event_loop": {
                "lag_seconds": None if lag is None else _r(lag, 4),
                "threshold_seconds": self.loop_lag_threshold,
            },
            "auth": {
                "last_refresh_ago_seconds": _ago(now, history.token_refreshed_at),
                "last_failure_ago_seconds": _ago(now, history.token_failed_at),
                "last_failure": history.token_error,
            },
            "window_seconds": history.window,
            "rate_window_seconds": RATE_WINDOW,
            "shards": [
                self._shard(s, checks, statuses.get(n), now, wall, webhook)
                for n, s in sorted(history.shards.items())
            ],
            "webhook": webhook,
        }

    def _statuses(self) -> dict[int, ShardStatus]:
        if self.shard_status is None:
            return {}
        try:
            return {st.shard: st for st in self.shard_status()}
        except Exception:  # noqa: BLE001 - the page shows what it has; health reports the error
            return {}

    def _verdict(self, ok: bool, checks: list[Check]) -> dict[str, Any]:
        return {
            "status": "ok" if ok else "fail",
            "http_status": 200 if ok else 503,
            "checks": [
                {"name": c.name, "ok": c.ok, "reason": self.sanitize(c.reason)} for c in checks
            ],
        }

    def _shard(
        self,
        s: ShardHistory,
        checks: dict[str, Check],
        status: ShardStatus | None,
        now: float,
        wall: float,
        webhook: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if webhook is not None:  # no connection of its own: the receiver's condition
            condition, why = webhook["condition"], webhook["condition_reason"]
        else:
            condition, why = self._condition(s, checks, now)
        rtts = s.rtt_series(now)
        rtt_values = [v for _, v in rtts]
        recent = s.recent_types(now)
        span = max(1.0, min(float(RATE_WINDOW), now - s.started_at))
        per_second = s.events_per_second(now)
        last_seconds = per_second[-_RATE_NOW:]
        step = max(1.0, s.window / _AGE_POINTS)
        last_error = s.last_error
        return {
            "shard": s.shard,
            "condition": condition,
            "condition_reason": self.sanitize(why),
            # Cluster mode: "owner: ..." or "standby: ..." (the lease); None without Redis.
            "lease": (
                self.sanitize(checks[f"shard/{s.shard}/lease"].reason)
                if f"shard/{s.shard}/lease" in checks
                else None
            ),
            "state": s.state.value,
            "state_for_seconds": _r(now - s.state_since),
            "session": {
                "live": s.live,
                "live_for_seconds": _ago(now, s.live_since) if s.live else None,
                "established_by": s.live_mode if s.live else None,
                "ready_total": s.sessions,
                "resumed_total": s.resumes,
            },
            "connection": {
                "open": s.connected,
                "open_for_seconds": _ago(now, s.connected_at) if s.connected else None,
                "attempts": status.attempts if status is not None else None,
                "next_attempt_in_seconds": (
                    _r(max(0.0, status.next_attempt_at - now))
                    if status is not None
                    and status.next_attempt_at is not None
                    and s.state is ev.ConnectionState.BACKOFF
                    else None
                ),
            },
            "heartbeat": {
                "interval_seconds": s.interval,
                "unacked": s.unacked,
                "unacked_threshold": self.liveness.ack_miss_limit,
                "idle_deadline_seconds": (
                    self.liveness.idle_deadline(s.interval) if s.interval is not None else None
                ),
                "last_ack_ago_seconds": _ago(now, s.last_ack_at),
                "last_sent_ago_seconds": _ago(now, s.last_heartbeat_at),
                "rtt_seconds": {
                    "last": _r(s.last_rtt, 4) if s.last_rtt is not None else None,
                    "min": _r(min(rtt_values), 4) if rtt_values else None,
                    "median": _r(statistics.median(rtt_values), 4) if rtt_values else None,
                    "max": _r(max(rtt_values), 4) if rtt_values else None,
                },
            },
            "last_frame_ago_seconds": _ago(now, s.last_frame_at),
            "liveness_layers": self._layers(s, now),
            "series": {
                "heartbeat_rtt_seconds": _series(rtts, now, 4),
                "last_frame_age_seconds": _series(s.frame_age_series(now, step), now, 2),
                "last_frame_age_step_seconds": step,
                "events_per_second": _series(per_second, now, 0),
                "handler_queue_depth": _series(s.queue_depth_series(now), now, 0),
            },
            "events": {
                "total": s.events_total,
                "per_second": _r(sum(v for _, v in last_seconds) / max(1, len(last_seconds))),
                "duplicates_dropped": s.duplicates,
                "by_type": _rates("type", s.events_by_type, recent, span),
            },
            "handlers": {
                "queue_depth": s.queue_depth,
                "queue_capacity": s.queue_capacity,
                "completed_total": s.handled,
                "errors_total": s.handler_errors,
                "errors_by_type": [
                    {"type": name, "count": count}
                    for name, count in sorted(s.errors_by_type.items(), key=lambda kv: -kv[1])
                ],
                "last_error": (
                    None
                    if last_error is None
                    else {
                        "ago_seconds": _ago(now, last_error[0]),
                        "event_type": last_error[1],
                        "handler": last_error[2],
                        "error_type": last_error[3],
                    }
                ),
            },
            "incidents": [
                self._incident(i, now, wall) for i in reversed(s.incidents)
            ],  # newest first
        }

    def _condition(self, s: ShardHistory, checks: dict[str, Check], now: float) -> tuple[str, str]:
        """One word for the shard and a sentence why; see docs/status.md for the words."""
        n = s.shard
        supervisor = checks.get(f"shard/{n}/supervisor")
        connection = checks.get(f"shard/{n}/connection")
        session = checks.get(f"shard/{n}/session")
        ready = checks.get(f"shard/{n}/ready")
        lease = checks.get(f"shard/{n}/lease")
        if lease is not None and lease.reason.startswith("standby"):
            # Cluster mode: another process owns the shard; this one waits to take over.
            return "standby", lease.reason
        if s.state is ev.ConnectionState.FATAL or s.fatal is not None:
            return "down", f"stopped for good: {s.fatal or 'fatal close'}"
        if supervisor is not None and not supervisor.ok:
            return "down", supervisor.reason
        if s.state is ev.ConnectionState.STOPPED or s.stopped is not None:
            return "stopped", f"stopped ({s.stopped or 'shutdown'})"
        if s.zombie is not None:
            z = s.zombie
            return "zombie", f"zombie connection ({z.reason}) declared {now - z.at:.1f}s ago"
        if connection is not None and not connection.ok:
            return "zombie", connection.reason
        if s.live:
            if ready is not None and not ready.ok:
                return "degraded", ready.reason
            how = "resumed" if s.live_mode == "resume" else "identified"
            return "live", f"session live for {_human(now - (s.live_since or now))} ({how})"
        if session is not None and not session.ok:
            return "down", session.reason
        incident = s.open_incident()
        if incident is not None:
            cause = (
                f"zombie connection ({incident.zombie.reason})"
                if incident.zombie is not None
                else incident.reason
            )
            tries = f", {incident.attempts} attempt(s)" if incident.attempts else ""
            return "reconnecting", (
                f"reconnecting after {cause} {_human(now - incident.at)} ago{tries}"
            )
        return "starting", f"{s.state.value} for {_human(now - s.state_since)}"

    def _webhook(self, report: HealthReport, now: float) -> dict[str, Any]:
        """The callback view (webhook transport); see docs/status.md."""
        wh = self.history.webhook
        if wh is None:  # no receiver event yet
            wh = WebhookHistory(window=self.history.window, started_at=self.started_at)
        condition, why = self._webhook_condition(wh, report, now)
        acks = wh.ack_series(now)
        durations = [d for _, d in acks]
        recent = wh.recent_outcomes(now)
        span = max(1.0, min(float(RATE_WINDOW), now - wh.started_at))
        return {
            "condition": condition,
            "condition_reason": self.sanitize(why),
            "listening": wh.listening,
            "url": wh.url,
            "listening_for_seconds": _ago(now, wh.listening_since) if wh.listening else None,
            "stopped": wh.stopped,
            "stopped_error": wh.stopped_error,
            "last_callback_ago_seconds": _ago(now, wh.last_valid_at),
            "last_request_ago_seconds": _ago(now, wh.last_request_at),
            "validated_ago_seconds": _ago(now, wh.validated_at),
            "requests_total": wh.requests,
            "signature_failures_total": wh.rejected,
            "by_outcome": _rates("outcome", wh.by_outcome, recent, span),
            "ack_seconds": {
                "last": _r(durations[-1], 4) if durations else None,
                "median": _r(statistics.median(durations), 4) if durations else None,
                "max": _r(max(durations), 4) if durations else None,
            },
            "series": {
                "ack_seconds": _series(acks, now, 4),
                "requests_per_second": _series(wh.per_second(now), now, 0),
                "rejected_per_second": _series(wh.per_second(now, rejected=True), now, 0),
            },
        }

    def _webhook_condition(
        self, wh: WebhookHistory, report: HealthReport, now: float
    ) -> tuple[str, str]:
        if wh.stopped == "shutdown":
            return "stopped", "receiver stopped by shutdown"
        if wh.stopped is not None:
            return "down", f"receiver stopped ({wh.stopped})"
        unhealthy = [c for c in report.checks if c.name.startswith("webhook/") and not c.ok]
        if unhealthy:
            return "down", "; ".join(c.reason for c in unhealthy)
        if not wh.listening:
            return "starting", "the callback receiver is not listening yet"
        unready = [c for c in report.readiness if c.name.startswith("webhook/") and not c.ok]
        if unready:
            return "degraded", "; ".join(c.reason for c in unready)
        last = wh.last_valid_at
        heard = f"last valid callback {_human(now - last)} ago" if last else "no callback yet"
        return "live", f"listening for {_human(now - (wh.listening_since or now))}; {heard}"

    def _layers(self, s: ShardHistory, now: float) -> list[dict[str, Any]]:
        """The liveness layers, what each watches and whether it is armed now."""
        lv, tr = self.liveness, self.transport
        h = s.interval
        watching = s.connected and s.hello and h is not None
        idle = lv.idle_deadline(h) if h is not None else None
        if h is not None:
            ack = (
                f"each heartbeat's ACK due within {lv.ack_timeout_min * h:.3g}-"
                f"{lv.ack_timeout_max * h:.3g}s, {lv.ack_probes} probe(s); "
                f"{s.unacked} unacknowledged now"
            )
        else:
            ack = (
                f"ACK due within {lv.ack_timeout_min:g}-{lv.ack_timeout_max:g} x interval, "
                f"{lv.ack_probes} probe(s) (no Hello yet)"
            )
        handshake = (
            f"Hello within {lv.hello_timeout:g}s, READY/RESUMED within "
            f"{lv.handshake_deadline(h or lv.max_heartbeat_interval):g}s"
            if lv.hello_timeout is not None
            else "off"
        )
        if tr.tcp_keepalive:
            keepalive = (
                f"probes after {tr.tcp_keepidle}s idle, every {tr.tcp_keepintvl}s, "
                f"{tr.tcp_keepcnt} unanswered drop the link"
            )
        else:
            keepalive = "off"
        # Until Hello the socket has the transport's value; after it, one derived from H.
        user_timeout = lv.tcp_user_timeout(h) if h is not None and s.hello else None
        if user_timeout is None:
            user_timeout = tr.tcp_user_timeout
        return [
            _layer("ack", "Heartbeat ACKs (op 11)", True, watching, ack),
            _layer(
                "idle",
                "Receive-idle deadline",
                lv.idle_timeout_factor is not None,
                watching and idle is not None,
                "off"
                if lv.idle_timeout_factor is None
                else f"no frame for {idle:g}s is a zombie ({lv.idle_timeout_factor:g} x interval)"
                if idle is not None
                else f"{lv.idle_timeout_factor:g} x interval (no Hello yet)",
            ),
            _layer(
                "handshake",
                "Hello and READY deadlines",
                lv.hello_timeout is not None,
                s.state is ev.ConnectionState.HANDSHAKING,
                handshake,
            ),
            self._ping_layer(s),
            _layer("tcp_keepalive", "TCP keepalive", tr.tcp_keepalive, s.connected, keepalive),
            _layer(
                "tcp_user_timeout",
                "TCP_USER_TIMEOUT",
                user_timeout is not None,
                s.connected,
                "off"
                if user_timeout is None
                else f"data unacknowledged for {user_timeout:.3g}s drops the link",
            ),
            _layer(
                "event_loop",
                "Event loop lag monitor",
                self.loop_lag is not None,
                self.loop_lag is not None,
                f"lag above {self.loop_lag_threshold:g}s fails /healthz",
            ),
        ]

    def _ping_layer(self, s: ShardHistory) -> dict[str, Any]:
        """The session's WebSocket ping layer, with the state the session reports for it."""
        lv = self.liveness
        title = "WebSocket ping/pong"
        if not lv.ws_ping:
            return _layer("ws_ping", title, False, False, "off")
        parts: list[str] = []
        if s.interval is not None:
            parts.append(f"ping after {lv.ping_quiet * s.interval:.3g}s of silence")
        if s.pong_deadline is not None:
            parts.append(f"pong within {s.pong_deadline:.3g}s")
        if s.last_pong_rtt is not None:
            parts.append(f"last pong {s.last_pong_rtt * 1000:.2g} ms")
        if s.ping_detail:
            parts.append(s.ping_detail)
        state = s.ping_state if s.connected and s.ping_state else None
        # Before its first report the layer waits for Hello (its cadence derives from it).
        armed = s.connected and (state == "armed" or (state is None and s.hello))
        layer = _layer("ws_ping", title, True, armed, "; ".join(parts) or "waiting for Hello")
        if state is not None:
            layer["state"] = state
        return layer

    def _incident(self, i: Incident, now: float, wall: float) -> dict[str, Any]:
        z = i.zombie
        end = i.recovered_at
        return {
            "id": i.seq,
            "at": _r(wall - (now - i.at), 3),
            "ago_seconds": _r(now - i.at),
            "reason": i.reason,
            "close_code": i.close_code,
            "detail": self.sanitize(i.detail),
            "resumable": i.resumable,
            "connection_age_seconds": (
                _r(i.connection_age) if i.connection_age is not None else None
            ),
            "zombie": (
                None
                if z is None
                else {
                    "reason": z.reason,
                    "unacked": z.unacked,
                    "silent_for_seconds": _r(z.idle_for),
                    "heartbeat_interval_seconds": _r(z.heartbeat_interval),
                }
            ),
            "attempts": i.attempts,
            "last_attempt_reason": i.last_attempt_reason,
            "recovered": end is not None,
            "recovered_by": i.recovered_by,
            "recovery_seconds": _r(end - i.at) if end is not None else None,
            "down_for_seconds": _r((end if end is not None else now) - i.at),
            "replayed": i.replayed,
            "fatal": None if i.fatal is None else self.sanitize(i.fatal),
        }


def _rates(
    key: str, totals: dict[str, int], recent: dict[str, int], span: float
) -> list[dict[str, Any]]:
    """``[{key: name, "total", "per_minute"}]``, busiest first (recent rate, then total)."""
    ordered = sorted(totals.items(), key=lambda kv: (-recent.get(kv[0], 0), -kv[1], kv[0]))
    return [
        {key: name, "total": total, "per_minute": _r(recent.get(name, 0) * 60.0 / span)}
        for name, total in ordered
    ]


def _layer(name: str, title: str, enabled: bool, armed: bool, detail: str) -> dict[str, Any]:
    """One liveness layer; ``state`` is ``armed``, ``idle`` (nothing to watch now) or ``off``,
    or the ping layer's own word (``calibrating``, ``suspended``, ``disabled``)."""
    state = "off" if not enabled else "armed" if armed else "idle"
    return {
        "name": name,
        "title": title,
        "enabled": enabled,
        "armed": enabled and armed,
        "state": state,
        "detail": detail,
    }


def _r(value: float, digits: int = 2) -> float:
    """Rounded, and never NaN or infinite (JSON has neither)."""
    if not math.isfinite(value):
        return 0.0
    return round(value, digits)


def _ago(now: float, at: float | None) -> float | None:
    return None if at is None else _r(max(0.0, now - at))


def _series(points: Series, now: float, digits: int) -> list[list[float]]:
    """``[[seconds_ago, value], ...]`` oldest first."""
    return [[_r(max(0.0, now - t)), _r(v, digits)] for t, v in points]


def _human(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m {int(seconds % 60)}s"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h {int(seconds % 3600 // 60)}m"
    return f"{int(seconds // 86400)}d {int(seconds % 86400 // 3600)}h"
