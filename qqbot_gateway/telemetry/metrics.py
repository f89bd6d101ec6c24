"""Prometheus collectors for the metric contract in ``docs/metrics.md``.

Everything lives on the :class:`~prometheus_client.CollectorRegistry` passed in (the application
owns it; tests build their own). Per shard, every known label child (each disconnect reason,
each zombie reason, each connection state, each resume outcome, each known opcode) is created at
zero when the shard is registered, so ``rate()`` and ``increase()`` see the first change.

Nothing here runs per frame or per dispatched event. The per-event metrics
(``frames_received_total``, ``events_dispatched_total``, ``handler_queue_depth``,
``handler_duration_seconds``) are read at scrape time by :class:`_PerEventCollector` from the
plain counters the adapter keeps anyway (:class:`~qqbot_gateway.adapter.events.ShardStats`);
the rarer lifecycle events (heartbeats, state changes, disconnects, ...) update cached label
children, never a ``.labels()`` lookup. Ages and wall-clock timestamps of the last frame / ACK,
and the health verdict gauges, are computed at scrape time by :class:`_ScrapeTimeCollector`.
A source without its own stats (tests feeding events) can still feed the per-event kinds to
:meth:`GatewayMetrics.observe`: they are counted into stats the metrics keep for that shard.

Label values stay bounded: a disconnect reason outside ``DISCONNECT_REASONS`` is counted under
an existing reason (``server_close:other`` for unknown ``server_close:*``, else
``network_error``), an unknown opcode under ``op="other"``, and event types beyond
:data:`MAX_EVENT_TYPES` distinct values under ``type="other"``.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from qqbot_gateway._version import __version__
from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter.protocol import (
    DISCONNECT_REASONS,
    MESSAGE_EVENT_TYPES,
    SERVER_CLOSE_OTHER,
    ZOMBIE_REASONS,
    Op,
)
from qqbot_gateway.adapter.webhook import OUTCOMES as WEBHOOK_OUTCOMES

from ._clock import Clock
from .metric_spec import (
    HEARTBEAT_RTT_BUCKETS,
    PREFIX,
    counter,
    counter_family,
    gauge,
    gauge_family,
    histogram,
    histogram_family,
)

__all__ = [
    "HEARTBEAT_RTT_BUCKETS",
    "MAX_EVENT_TYPES",
    "PREFIX",
    "GatewayMetrics",
    "Verdict",
    "op_label",
]

#: Distinct ``type`` label values per process before new ones fold into ``"other"``. QQ has a
#: few dozen event types; the cap only matters for a misbehaving gateway inventing names.
MAX_EVENT_TYPES: Final = 128

_OTHER: Final = "other"
_KNOWN_OPS: Final = tuple(str(int(op)) for op in Op)
_OP_LABELS: Final[dict[int, str]] = {int(op): str(int(op)) for op in Op}
_FRAME_LABELS: Final = (*_KNOWN_OPS, "invalid", _OTHER)
_DURATION_BOUNDS: Final = (
    *(floatToGoString(b) for b in ev.HANDLER_SECONDS_BUCKETS),  # type: ignore[no-untyped-call]
    "+Inf",
)
_REASONS: Final = frozenset(DISCONNECT_REASONS)
_RESUME_OUTCOMES: Final = ("success", "failed")
_TOKEN_OUTCOMES: Final = ("success", "failure")


def op_label(op: int | None) -> str:
    """The ``op`` label: the opcode as a string, ``"invalid"`` for an unparsable frame."""
    if op is None:
        return "invalid"
    return _OP_LABELS.get(op, _OTHER)


def reason_label(reason: str) -> str:
    """Map a reason onto the fixed list (never a new label value)."""
    if reason in _REASONS:
        return reason
    if reason.startswith("server_close:"):
        return SERVER_CLOSE_OTHER
    return "network_error"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the scrape-time gauges ``healthy`` and ``ready{shard}`` show."""

    healthy: bool
    ready: Mapping[int, bool]


@dataclass(slots=True, eq=False)
class _Shard:
    """Cached label children and the per-shard bookkeeping the hot path needs."""

    shard: int
    label: str
    started_at: float
    hb_sent: Counter
    hb_acks: Counter
    unacked: Gauge
    threshold: Gauge
    interval: Gauge
    rtt: Histogram
    reconnects: dict[str, Counter]
    zombies: dict[str, Counter]
    states: dict[ev.ConnectionState, Gauge]
    handler_errors: dict[str, Counter]
    duplicates: Counter
    resumes: dict[str, Counter]
    identifies: Counter
    queue_capacity: Gauge
    probes: Counter
    pings: Counter
    ping_rtt: Histogram
    ping_armed: Gauge
    ping_disabled: Counter
    #: The adapter's counters for this shard (or the metrics' own, fed by ``observe``).
    stats: ev.ShardStats
    last_ack_at: float | None = None
    resume_pending: bool = False
    disconnected_since_attempt: bool = False
    state: ev.ConnectionState = ev.ConnectionState.IDLE
    transport: str = "websocket"
    webhook_outcomes: dict[str, Counter] = field(default_factory=dict)
    webhook_ack: Histogram | None = None
    webhook_listening: Gauge | None = None
    last_callback_at: float | None = None


class GatewayMetrics:
    """The collectors, and a lifecycle-event subscriber that feeds them.

    ``observe(event)`` is the subscriber. ``exemplar`` (optional) is asked for trace ids to attach
    to ``events_dispatched_total`` and ``heartbeat_rtt_seconds`` samples (OpenMetrics only).
    ``verdict`` (optional) is called at scrape time for the ``healthy`` / ``ready`` gauges.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        clock: Clock | None = None,
        process_collectors: bool = True,
        exemplar: Callable[[ev.LifecycleEvent], dict[str, str] | None] | None = None,
        verdict: Callable[[], Verdict] | None = None,
        dispatch_exemplar: Callable[[int, str], dict[str, str] | None] | None = None,
    ) -> None:
        self.registry = registry
        self.clock = clock or Clock()
        self.exemplar = exemplar
        self.dispatch_exemplar = dispatch_exemplar
        self.verdict = verdict
        self._shards: dict[int, _Shard] = {}
        self._types: set[str] = set()
        r = registry
        self.heartbeats_sent = counter("heartbeats_sent_total", r)
        self.heartbeat_acks = counter("heartbeat_acks_total", r)
        self.heartbeat_unacked = gauge("heartbeat_unacked", r)
        self.heartbeat_unacked_threshold = gauge("heartbeat_unacked_threshold", r)
        self.heartbeat_interval = gauge("heartbeat_interval_seconds", r)
        self.heartbeat_rtt = histogram("heartbeat_rtt_seconds", r)
        self.heartbeat_probes = counter("heartbeat_probes_total", r)
        self.ws_pings_sent = counter("ws_pings_sent_total", r)
        self.ws_ping_rtt = histogram("ws_ping_rtt_seconds", r)
        self.ws_ping_armed = gauge("ws_ping_armed", r)
        self.ws_ping_disabled = counter("ws_ping_disabled_total", r)
        self.reconnects = counter("reconnects_total", r)
        self.zombies = counter("zombies_detected_total", r)
        self.connection_state = gauge("connection_state", r)
        self.events_duplicate = counter("events_duplicate_total", r)
        self.resumes = counter("resumes_total", r)
        self.identifies = counter("identifies_total", r)
        self.event_loop_lag = gauge("event_loop_lag_seconds", r)
        self.side_server_malformed = counter("side_server_malformed_requests_total", r)
        self.handler_queue_capacity = gauge("handler_queue_capacity", r)
        self.handler_errors = counter("handler_errors_total", r)
        self.token_refreshes = counter("token_refreshes_total", r)
        for outcome in _TOKEN_OUTCOMES:
            self.token_refreshes.labels(outcome)
        self.webhook_requests = counter("webhook_requests_total", r)
        self.webhook_ack = histogram("webhook_ack_seconds", r)
        self.webhook_listening = gauge("webhook_listening", r)
        self.transport_info = gauge("transport_info", r)
        self.build_info = gauge("build_info", r)
        self.build_info.labels(__version__, platform.python_version()).set(1)
        registry.register(_PerEventCollector(self))
        registry.register(_ScrapeTimeCollector(self))
        registry.register(_WebhookScrapeCollector(self))
        if process_collectors:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self._token_ok = self.token_refreshes.labels("success")
        self._token_failed = self.token_refreshes.labels("failure")
        self._routes: dict[type[ev.LifecycleEvent], Callable[[_Shard, ev.LifecycleEvent], None]]
        self._routes = {
            ev.FrameReceived: self._on_per_event,
            ev.EventDispatched: self._on_per_event,
            ev.HandlerCompleted: self._on_per_event,
            ev.HeartbeatSent: self._on_heartbeat_sent,  # type: ignore[dict-item]
            ev.HeartbeatAcked: self._on_heartbeat_acked,  # type: ignore[dict-item]
            ev.HandlerQueueDepth: self._on_queue_depth,  # type: ignore[dict-item]
            ev.HandlerFailed: self._on_handler_failed,  # type: ignore[dict-item]
            ev.DuplicateDropped: self._on_duplicate,  # type: ignore[dict-item]
            ev.StateChanged: self._on_state,  # type: ignore[dict-item]
            ev.ConnectAttempt: self._on_attempt,  # type: ignore[dict-item]
            ev.Connected: self._on_connected,  # type: ignore[dict-item]
            ev.HelloReceived: self._on_hello,  # type: ignore[dict-item]
            ev.IdentifySent: self._on_identify,  # type: ignore[dict-item]
            ev.ResumeSent: self._on_resume_sent,  # type: ignore[dict-item]
            ev.SessionResumed: self._on_resumed,  # type: ignore[dict-item]
            ev.SessionReady: self._on_ready,  # type: ignore[dict-item]
            ev.ZombieDetected: self._on_zombie,  # type: ignore[dict-item]
            ev.PingSent: self._on_ping_sent,  # type: ignore[dict-item]
            ev.PongReceived: self._on_pong,  # type: ignore[dict-item]
            ev.PingLayerChanged: self._on_ping_layer,  # type: ignore[dict-item]
            ev.Disconnected: self._on_disconnected,  # type: ignore[dict-item]
            ev.ShardFatal: self._on_fatal,  # type: ignore[dict-item]
            ev.WebhookRequest: self._on_webhook_request,  # type: ignore[dict-item]
            ev.WebhookListening: self._on_webhook_listening,  # type: ignore[dict-item]
            ev.WebhookStopped: self._on_webhook_stopped,  # type: ignore[dict-item]
        }

    # --- registration --------------------------------------------------------------------
    @property
    def shards(self) -> Mapping[int, _Shard]:
        return self._shards

    def register_shard(
        self,
        shard: int,
        *,
        ack_miss_limit: int,
        queue_capacity: int,
        state: ev.ConnectionState = ev.ConnectionState.IDLE,
        now: float | None = None,
        stats: ev.ShardStats | None = None,
        transport: str = "websocket",
    ) -> None:
        """Create every label child of ``shard`` at zero. Idempotent. ``transport="webhook"``
        adds the webhook children (every outcome at zero).

        ``stats``: the adapter's counters for the shard (read at scrape time); None keeps the
        metrics' own, fed by the per-event kinds given to :meth:`observe`."""
        if shard in self._shards:
            return
        s = str(shard)
        started = self.clock.monotonic() if now is None else now
        entry = _Shard(
            shard=shard,
            label=s,
            started_at=started,
            hb_sent=self.heartbeats_sent.labels(s),
            hb_acks=self.heartbeat_acks.labels(s),
            unacked=self.heartbeat_unacked.labels(s),
            threshold=self.heartbeat_unacked_threshold.labels(s),
            interval=self.heartbeat_interval.labels(s),
            rtt=self.heartbeat_rtt.labels(s),
            reconnects={r: self.reconnects.labels(s, r) for r in DISCONNECT_REASONS},
            zombies={r: self.zombies.labels(s, r) for r in sorted(ZOMBIE_REASONS)},
            states={st: self.connection_state.labels(s, st.value) for st in ev.ConnectionState},
            # Fixed extras beside the MAX_EVENT_TYPES cap: a healthy bot's panel shows 0.
            handler_errors={t: self.handler_errors.labels(s, t) for t in MESSAGE_EVENT_TYPES},
            duplicates=self.events_duplicate.labels(s),
            resumes={o: self.resumes.labels(s, o) for o in _RESUME_OUTCOMES},
            identifies=self.identifies.labels(s),
            queue_capacity=self.handler_queue_capacity.labels(s),
            probes=self.heartbeat_probes.labels(s),
            pings=self.ws_pings_sent.labels(s),
            ping_rtt=self.ws_ping_rtt.labels(s),
            ping_armed=self.ws_ping_armed.labels(s),
            ping_disabled=self.ws_ping_disabled.labels(s),
            stats=stats if stats is not None else ev.ShardStats(shard),
            state=state,
        )
        self.transport_info.labels(s, transport).set(1)
        if transport == "webhook":
            entry.transport = transport
            entry.webhook_outcomes = {
                o: self.webhook_requests.labels(s, o) for o in WEBHOOK_OUTCOMES
            }
            entry.webhook_ack = self.webhook_ack.labels(s)
            entry.webhook_listening = self.webhook_listening.labels(s)
        entry.threshold.set(ack_miss_limit)
        entry.queue_capacity.set(queue_capacity)
        for st, child in entry.states.items():
            child.set(1 if st is state else 0)
        self._shards[shard] = entry

    def set_loop_lag(self, seconds: float) -> None:
        self.event_loop_lag.set(seconds)

    # --- the subscriber ------------------------------------------------------------------
    def observe(self, event: ev.LifecycleEvent) -> None:
        route = self._routes.get(type(event))
        if route is not None:
            if event.shard is None:
                return
            entry = self._shards.get(event.shard)
            if entry is not None:
                route(entry, event)
        elif isinstance(event, ev.TokenRefreshed):
            self._token_ok.inc()
        elif isinstance(event, ev.TokenRefreshFailed):
            self._token_failed.inc()

    def _type_label(self, event_type: str) -> str:
        if event_type in self._types:
            return event_type
        if len(self._types) >= MAX_EVENT_TYPES:
            return _OTHER
        self._types.add(event_type)
        return event_type

    def _on_per_event(self, s: _Shard, e: ev.LifecycleEvent) -> None:
        s.stats.apply(e)

    def _on_heartbeat_sent(self, s: _Shard, e: ev.HeartbeatSent) -> None:
        s.hb_sent.inc()
        s.unacked.set(e.unacked)
        if e.unacked > 1:
            s.probes.inc()

    def _on_ping_sent(self, s: _Shard, e: ev.PingSent) -> None:
        s.pings.inc()

    def _on_pong(self, s: _Shard, e: ev.PongReceived) -> None:
        s.ping_rtt.observe(e.rtt)

    def _on_ping_layer(self, s: _Shard, e: ev.PingLayerChanged) -> None:
        s.ping_armed.set(1 if e.state == "armed" else 0)
        if e.state == "disabled":
            s.ping_disabled.inc()

    def _on_heartbeat_acked(self, s: _Shard, e: ev.HeartbeatAcked) -> None:
        s.hb_acks.inc()
        s.unacked.set(0)
        s.last_ack_at = e.monotonic
        exemplar = self.exemplar(e) if self.exemplar is not None else None
        s.rtt.observe(e.rtt, exemplar=exemplar)

    def _on_queue_depth(self, s: _Shard, e: ev.HandlerQueueDepth) -> None:
        s.stats.apply(e)
        s.queue_capacity.set(e.capacity)

    def _on_handler_failed(self, s: _Shard, e: ev.HandlerFailed) -> None:
        child = s.handler_errors.get(e.event_type)
        if child is None:
            label = self._type_label(e.event_type)
            child = s.handler_errors.get(label)
            if child is None:
                child = self.handler_errors.labels(s.label, label)
                s.handler_errors[label] = child
        child.inc()

    def _on_duplicate(self, s: _Shard, e: ev.DuplicateDropped) -> None:
        s.duplicates.inc()

    def _on_state(self, s: _Shard, e: ev.StateChanged) -> None:
        s.states[s.state].set(0)
        s.states[e.old].set(0)
        s.states[e.new].set(1)
        s.state = e.new

    def _on_attempt(self, s: _Shard, e: ev.ConnectAttempt) -> None:
        s.disconnected_since_attempt = False

    def _on_connected(self, s: _Shard, e: ev.Connected) -> None:
        s.unacked.set(0)

    def _on_hello(self, s: _Shard, e: ev.HelloReceived) -> None:
        s.interval.set(e.heartbeat_interval)

    def _on_identify(self, s: _Shard, e: ev.IdentifySent) -> None:
        s.identifies.inc()

    def _on_resume_sent(self, s: _Shard, e: ev.ResumeSent) -> None:
        s.resume_pending = True

    def _on_resumed(self, s: _Shard, e: ev.SessionResumed) -> None:
        s.resume_pending = False
        s.resumes["success"].inc()

    def _on_ready(self, s: _Shard, e: ev.SessionReady) -> None:
        s.resume_pending = False

    def _on_zombie(self, s: _Shard, e: ev.ZombieDetected) -> None:
        reason = e.reason if e.reason in s.zombies else "ack_timeout"
        s.zombies[reason].inc()

    def _on_disconnected(self, s: _Shard, e: ev.Disconnected) -> None:
        s.reconnects[reason_label(e.reason)].inc()
        s.disconnected_since_attempt = True
        s.unacked.set(0)
        s.ping_armed.set(0)
        if s.resume_pending:
            s.resume_pending = False
            s.resumes["failed"].inc()

    def _on_fatal(self, s: _Shard, e: ev.ShardFatal) -> None:
        # A fatal close was already counted by its Disconnected; a shard given up before any
        # connection opened (credentials refused) is counted here, once.
        if not s.disconnected_since_attempt:
            s.reconnects[reason_label(e.reason)].inc()
            s.disconnected_since_attempt = True

    def _on_webhook_request(self, s: _Shard, e: ev.WebhookRequest) -> None:
        child = s.webhook_outcomes.get(e.outcome)
        if child is not None:
            child.inc()
        if e.signed:
            s.last_callback_at = e.monotonic
            if s.webhook_ack is not None and e.status == 200:
                s.webhook_ack.observe(e.duration)

    def _on_webhook_listening(self, s: _Shard, e: ev.WebhookListening) -> None:
        if s.webhook_listening is not None:
            s.webhook_listening.set(1)

    def _on_webhook_stopped(self, s: _Shard, e: ev.WebhookStopped) -> None:
        if s.webhook_listening is not None:
            s.webhook_listening.set(0)


class _ReadAtScrape(Collector):
    """A collector computing its families from ``GatewayMetrics`` when Prometheus scrapes;
    subclasses give ``_families()`` (empty, for ``describe``) and ``collect()``."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._m = metrics

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    @staticmethod
    def _families() -> Sequence[Metric]:
        raise NotImplementedError


class _WebhookScrapeCollector(_ReadAtScrape):
    """The last validly signed callback's age and timestamp, per webhook shard, at scrape."""

    def collect(self) -> Iterable[Metric]:
        age, stamp = families = self._families()
        clock = self._m.clock
        now, wall = clock.monotonic(), clock.wall()
        for entry in self._m.shards.values():
            if entry.transport != "webhook":
                continue
            at = entry.last_callback_at
            age.add_metric([entry.label], max(0.0, now - (entry.started_at if at is None else at)))
            stamp.add_metric([entry.label], 0.0 if at is None else wall - (now - at))
        return families

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        return [
            gauge_family("webhook_last_callback_age_seconds"),
            gauge_family("webhook_last_callback_timestamp_seconds"),
        ]


class _PerEventCollector(_ReadAtScrape):
    """The per-event metrics, read from the shards' ``ShardStats`` when Prometheus scrapes."""

    def collect(self) -> Iterable[Metric]:
        m = self._m
        frames, dispatched, depth, duration = families = self._families()
        for entry in m.shards.values():
            stats, shard = entry.stats, entry.label
            by_op = dict.fromkeys(_FRAME_LABELS, 0)
            for op, count in list(stats.frames.items()):
                by_op[op_label(op)] += count
            for label, count in by_op.items():
                frames.add_metric([shard, label], count)
            by_type: dict[str, int] = {}
            for event_type, count in list(stats.dispatched.items()):
                label = _OTHER if event_type == ev.OTHER_TYPE else m._type_label(event_type)
                by_type[label] = by_type.get(label, 0) + count
            for label, count in by_type.items():
                exemplar = None
                if m.dispatch_exemplar is not None:
                    ids = m.dispatch_exemplar(entry.shard, label)
                    exemplar = Exemplar(ids, 1.0) if ids else None
                dispatched.add_metric([shard, label], count, exemplar=exemplar)
            depth.add_metric([shard], stats.queue_depth)
            cumulative, buckets = 0, []
            for bound, count in zip(_DURATION_BOUNDS, stats.handler_buckets, strict=True):
                cumulative += count
                buckets.append((bound, float(cumulative)))
            duration.add_metric([shard], buckets, stats.handler_seconds)
        return families

    @staticmethod
    def _families() -> tuple[
        CounterMetricFamily, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    ]:
        return (
            counter_family("frames_received_total"),
            counter_family("events_dispatched_total"),
            gauge_family("handler_queue_depth"),
            histogram_family("handler_duration_seconds"),
        )


class _ScrapeTimeCollector(_ReadAtScrape):
    """Values computed when Prometheus scrapes: ages, last-seen timestamps, the verdict."""

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        m = self._m
        clock = m.clock
        now = clock.monotonic()
        wall = clock.wall()
        frame_age, ack_age, frame_ts, ack_ts, _, ready = families
        for entry in m.shards.values():
            label = [entry.label]
            frame_at, ack_at = entry.stats.last_frame_at, entry.last_ack_at
            frame_age.add_metric(
                label, max(0.0, now - (entry.started_at if frame_at is None else frame_at))
            )
            ack_age.add_metric(
                label, max(0.0, now - (entry.started_at if ack_at is None else ack_at))
            )
            frame_ts.add_metric(label, 0.0 if frame_at is None else wall - (now - frame_at))
            ack_ts.add_metric(label, 0.0 if ack_at is None else wall - (now - ack_at))
        verdict = m.verdict() if m.verdict is not None else Verdict(False, {})
        families[4].add_metric([], 1.0 if verdict.healthy else 0.0)
        for shard in m.shards:
            ready.add_metric([str(shard)], 1.0 if verdict.ready.get(shard, False) else 0.0)
        return families

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        return [
            gauge_family("last_frame_age_seconds"),
            gauge_family("last_heartbeat_ack_age_seconds"),
            gauge_family("last_frame_timestamp_seconds"),
            gauge_family("last_heartbeat_ack_timestamp_seconds"),
            gauge_family("healthy"),
            gauge_family("ready"),
        ]
