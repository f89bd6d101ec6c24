"""``Telemetry``: metrics, traces, logs and health wired to one client, plus the side server.

::

    tel = Telemetry(TelemetryConfig(http_port=8080))
    tel.attach(client)          # subscribe to client.events, register shards, set handler_context
    await tel.start()           # loop-lag monitor + HTTP side server, on this loop
    ...
    tel.begin_shutdown()        # /readyz -> 503 before the gateway closes
    await client.close()
    await tel.stop()            # bounded

Telemetry observes and never steers: it only subscribes to the adapter's lifecycle events and
sets the adapter's ``handler_context`` hook; without it the adapter behaves the same.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CollectorRegistry

from qqbot_gateway.adapter import events as ev

from ._client import ClientLike
from ._clock import Clock
from .health import HealthConfig, HealthEvaluator, HealthReport
from .history import StatusHistory
from .logs import LifecycleLogger, add_secrets, redactor
from .looplag import DEFAULT_PERIOD, LoopLagMonitor
from .metrics import GatewayMetrics, Verdict
from .otel import DEFAULT_SAMPLE_RATIO, DEFAULT_SLOW_HANDLER, Tracing, exporters_from_env
from .server import SideServer
from .status import StatusPage
from .store_metrics import StoreMetrics

__all__ = ["Telemetry", "TelemetryConfig"]

_log = logging.getLogger("qqbot_gateway.telemetry")

#: The health verdict is re-evaluated this often (besides every probe and scrape) so that a
#: change is logged even when nobody is probing.
_EVALUATE_EVERY: Final = 1.0


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    service_name: str = "qqbot-gateway"
    #: OpenTelemetry ``service.instance.id``; None uses the host name (the pod name).
    service_instance_id: str | None = None
    #: See :class:`~.health.HealthConfig` for the reasoning behind the defaults.
    liveness_grace: float = 300.0
    loop_lag_threshold: float = 2.0
    http_host: str = "0.0.0.0"  # noqa: S104 - the side port is meant for kubelet and Prometheus
    #: 0 picks a free port (tests); None runs no side server.
    http_port: int | None = 8080
    #: Traces, when an exporter is configured (``span_exporter`` or the ``OTEL_*`` variables);
    #: without one there are no spans at all. False: no tracing even with an exporter.
    tracing: bool = True
    #: Share of dispatched events traced (``QQBOT_TRACE_SAMPLE_RATIO``); failed, slow and
    #: replayed events and connection attempts are always traced. See ``otel``.
    trace_sample_ratio: float = DEFAULT_SAMPLE_RATIO
    #: A handler running this long (seconds) is traced even when its event was sampled out.
    trace_slow_handler: float = DEFAULT_SLOW_HANDLER
    loop_lag_period: float = DEFAULT_PERIOD
    stall_margin: float = 10.0
    #: Bound on ``stop()``: server shutdown and span flush each get at most this long.
    stop_timeout: float = 5.0
    #: Serve the status page (``/``, ``/status``, ``/status.json``) on the side server.
    status_page: bool = True

    def __post_init__(self) -> None:
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise ValueError(f"http_port {self.http_port} is not a TCP port")
        if self.loop_lag_period <= 0 or self.stop_timeout <= 0:
            raise ValueError("loop_lag_period and stop_timeout must be positive")
        if not 0.0 <= self.trace_sample_ratio <= 1.0:
            raise ValueError("trace_sample_ratio must be within 0..1")
        if self.trace_slow_handler <= 0:
            raise ValueError("trace_slow_handler must be positive")
        HealthConfig(self.liveness_grace, self.loop_lag_threshold, self.stall_margin)


class Telemetry:
    def __init__(
        self,
        config: TelemetryConfig | None = None,
        *,
        registry: CollectorRegistry | None = None,
        span_exporter: SpanExporter | None = None,
        env: Mapping[str, str] | None = None,
        process_collectors: bool = True,
    ) -> None:
        self.config = cfg = config or TelemetryConfig()
        self.registry = registry if registry is not None else CollectorRegistry()
        self.clock = Clock()
        self._span_exporter = span_exporter
        # Decided now, so that "OTLP asked for but not installed" fails at startup.
        self._exporters = exporters_from_env(env) if cfg.tracing and span_exporter is None else []
        self.tracing: Tracing | None = None
        self.loop_lag = LoopLagMonitor(period=cfg.loop_lag_period, on_sample=self._on_lag)
        self.health = HealthEvaluator(
            config=HealthConfig(cfg.liveness_grace, cfg.loop_lag_threshold, cfg.stall_margin),
            clock=self._now,
            loop_lag=self.loop_lag.current,
            sanitize=redactor().text,
        )
        self.metrics = GatewayMetrics(
            self.registry,
            clock=self.clock,
            process_collectors=process_collectors,
            exemplar=self._exemplar,
            verdict=self._verdict,
            dispatch_exemplar=self._dispatch_exemplar,
        )
        self.store_metrics = StoreMetrics(self.registry, clock=self.clock)
        self.lifecycle_log = LifecycleLogger()
        #: The status page's bounded history (a subscriber like the others).
        self.history = StatusHistory(sanitize=redactor().text)
        self.server: SideServer | None = None
        self._client: ClientLike | None = None
        self._unsubscribe: list[Callable[[], None]] = []
        self._subscribers: tuple[Callable[[ev.LifecycleEvent], None], ...] = ()
        self._last_failing: frozenset[str] = frozenset()
        self._last_ready: bool | None = None
        self._since_eval = 0.0
        self._started = False
        self._mode = "websocket"

    # --- wiring --------------------------------------------------------------------------
    @property
    def tracing_enabled(self) -> bool:
        """Spans are made only if tracing is on and someone reads them (an exporter)."""
        return self.config.tracing and (bool(self._exporters) or self._span_exporter is not None)

    def attach(self, client: ClientLike) -> None:
        """Subscribe to ``client.events``, register its shards, set ``client.handler_context``."""
        if self._client is not None:
            raise RuntimeError("telemetry is already attached to a client")
        cfg = client.config
        add_secrets(cfg.client_secret.get())
        self.health.liveness = cfg.liveness
        self.health.transport = cfg.transport
        self.health.request_timeout = cfg.request_timeout
        self.health.status_provider = client.shard_status
        roles = getattr(client, "shard_roles", None)
        if callable(roles):
            self.health.roles = roles
        # The adapter's per-shard counters, when the client keeps them (QQBotClient does): the
        # per-event facts are then read from them and no per-event object is ever built for us.
        stats: Mapping[int, ev.ShardStats] = getattr(client, "stats", None) or {}
        if not all(shard in stats for shard in cfg.shards):
            stats = {}  # all or nothing: no shard is counted both ways
        mode = self._mode = getattr(cfg, "mode", "websocket")
        if mode == "webhook":
            webhook_cfg = getattr(cfg, "webhook", None)
            self.health.webhook_status = lambda: (
                client.webhook.status() if client.webhook is not None else None
            )
            self.health.webhook_silence = getattr(webhook_cfg, "silence", None)
            self.health.webhook_require_validation = bool(
                getattr(webhook_cfg, "require_validation", False)
            )
        for shard in cfg.shards:
            self.metrics.register_shard(
                shard,
                ack_miss_limit=cfg.liveness.ack_miss_limit,
                queue_capacity=cfg.handler_queue_size,
                stats=stats.get(shard),
                transport=mode,
            )
            self.health.add_shard(shard, stats.get(shard))
            if getattr(client, "has_session_store", False):
                self.store_metrics.register_shard(shard)
                if mode == "webhook":
                    self.store_metrics.register_journal(shard)
        subscribers: list[Callable[[ev.LifecycleEvent], None]] = []
        if self.tracing_enabled:
            self.tracing = Tracing(
                service_name=self.config.service_name,
                service_instance_id=self.config.service_instance_id,
                shards=cfg.shards,
                exporters=self._exporters,
                test_exporter=self._span_exporter,
                clock=self.clock,
                sample_ratio=self.config.trace_sample_ratio,
                slow_handler=self.config.trace_slow_handler,
            )
            subscribers.append(self.tracing.observe)  # first: metrics read its exemplars
            client.handler_context = self.tracing.handler_context
        subscribers += [
            self.metrics.observe,
            self.store_metrics.observe,
            self.health.observe,
            self.lifecycle_log.observe,
        ]
        if self.config.status_page:
            self.history.add_shards(cfg.shards, self._now())
            for shard, shard_stats in stats.items():
                self.history.bind_stats(shard, shard_stats, cfg.handler_queue_size)
            subscribers.append(self.history.observe)
        self._subscribers = tuple(subscribers)
        self._client = client
        if not stats:
            # A source without counters: every event, the per-event kinds counted from events.
            self._unsubscribe.append(client.events.subscribe(self._on_event))
            return
        events = client.events
        self._unsubscribe.append(events.subscribe(self._on_event, exclude=ev.PER_EVENT))
        # The per-event kinds only for those who need each event, never for metrics or health.
        tracing = self.tracing
        kinds: tuple[type[ev.LifecycleEvent], ...]
        if tracing is not None:  # the sampling decision per event
            kinds = (ev.EventDispatched,)
            self._unsubscribe.append(events.subscribe(tracing.observe, kinds=kinds))
        if self.lifecycle_log.log.isEnabledFor(logging.DEBUG):  # "frame received" lines
            kinds = (ev.FrameReceived, ev.EventDispatched)
            self._unsubscribe.append(events.subscribe(self.lifecycle_log.observe, kinds=kinds))

    def _on_event(self, event: ev.LifecycleEvent) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception:  # noqa: BLE001 - one broken subscriber must not starve the others
                _log.exception("telemetry subscriber failed on %s", type(event).__name__)

    def _exemplar(self, event: ev.LifecycleEvent) -> dict[str, str] | None:
        return self.tracing.exemplar(event) if self.tracing is not None else None

    def _dispatch_exemplar(self, shard: int, event_type: str) -> dict[str, str] | None:
        if self.tracing is None:
            return None
        return self.tracing.dispatch_exemplar(shard, event_type)

    def _now(self) -> float:
        return self.clock.monotonic()

    # --- health --------------------------------------------------------------------------
    def evaluate(self) -> HealthReport:
        """The health report now; also logs a change of verdict."""
        report = self.health.evaluate(self._now())
        self._log_changes(report)
        return report

    def _verdict(self) -> Verdict:
        report = self.evaluate()
        return Verdict(report.healthy, report.shard_ready)

    def _log_changes(self, report: HealthReport) -> None:
        failing = frozenset(c.name for c in report.checks if not c.ok)
        if failing != self._last_failing:
            if failing:
                _log.warning(
                    "health check failing: %s",
                    "; ".join(f"{c.name}: {c.reason}" for c in report.checks if not c.ok),
                    extra={"failing": sorted(failing)},
                )
            else:
                _log.info("health checks pass again")
            self._last_failing = failing
        if report.ready != self._last_ready:
            if self._last_ready is not None or not report.ready:
                reasons = "; ".join(f"{c.name}: {c.reason}" for c in report.readiness if not c.ok)
                _log.info(
                    "readiness: %s%s",
                    "ready" if report.ready else "not ready",
                    "" if report.ready else f" ({reasons})",
                )
            self._last_ready = report.ready

    def _on_lag(self, lag: float) -> None:
        self.metrics.set_loop_lag(lag)
        if self.config.status_page:
            self.history.sample(self._now())
        self._since_eval += self.loop_lag.period + lag
        if self._since_eval >= _EVALUATE_EVERY:
            self._since_eval = 0.0
            try:
                self.evaluate()
            except Exception:  # noqa: BLE001 - the monitor must keep running
                _log.exception("health evaluation failed")

    # --- lifecycle -----------------------------------------------------------------------
    @property
    def http_url(self) -> str | None:
        return self.server.url if self.server is not None else None

    async def start(self) -> None:
        """Start the loop-lag monitor and the side server on the running loop."""
        if self._started:
            raise RuntimeError("telemetry already started")
        loop = asyncio.get_running_loop()
        self.clock.monotonic = loop.time
        self.health.mark_started(loop.time())
        self._started = True
        self.loop_lag.start()
        port = self.config.http_port
        if port is not None:
            server = SideServer(
                registry=self.registry,
                evaluate=self.evaluate,
                sanitize=redactor().text,
                status_page=self._status_page(),
                on_malformed=self.metrics.side_server_malformed.inc,
            )
            try:
                await server.start(self.config.http_host, port)
            except BaseException:
                await self.loop_lag.stop()
                raise
            self.server = server
            _log.info("telemetry side server listening on %s", server.url)

    def _status_page(self) -> StatusPage | None:
        if not self.config.status_page:
            return None
        client = self._client
        return StatusPage(
            history=self.history,
            evaluate=self.evaluate,
            clock=self.clock,
            liveness=self.health.liveness,
            transport=self.health.transport,
            loop_lag=self.loop_lag.current,
            loop_lag_threshold=self.config.loop_lag_threshold,
            shard_status=client.shard_status if client is not None else None,
            sanitize=redactor().text,
            service_name=self.config.service_name,
            transport_mode=self._mode,
        )

    def begin_shutdown(self) -> None:
        """``/readyz`` answers 503 from now on (call before closing the gateway)."""
        self.health.begin_shutdown()

    async def stop(self) -> None:
        """Stop the monitor and the server, end open spans and flush them; bounded."""
        self.health.begin_shutdown()
        timeout = self.config.stop_timeout
        await self.loop_lag.stop()
        server, self.server = self.server, None
        if server is not None:
            await server.stop(timeout)
        while self._unsubscribe:
            self._unsubscribe.pop()()
        client = self._client
        if client is not None and self.tracing is not None:
            if client.handler_context == self.tracing.handler_context:
                client.handler_context = None
        if self.tracing is not None:
            await self.tracing.shutdown(timeout)
