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
    SERVER_CLOSE_OTHER,
    ZOMBIE_REASONS,
    Op,
)
from qqbot_gateway.adapter.webhook import OUTCOMES as WEBHOOK_OUTCOMES

from ._clock import Clock

__all__ = [
    "HEARTBEAT_RTT_BUCKETS",
    "MAX_EVENT_TYPES",
    "PREFIX",
    "GatewayMetrics",
    "Verdict",
    "op_label",
]

PREFIX: Final = "qqbot_gateway"

#: 5 ms .. 60 s. A healthy RTT is tens of ms on QQ; the session measures an ACK against the most
#: recent heartbeat, so an RTT never exceeds one interval: 41.25 s on QQ (bucket 45), about 1 s in
#: tests and the demo (buckets 0.5/1/2.5 resolve it). 60 covers the largest accepted interval
#: short of the 120 s clamp, which lands in +Inf.
HEARTBEAT_RTT_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
    45.0,
    60.0,
)
#: Handlers: 1 ms (an in-memory reply) .. 60 s (a handler this slow is a bug worth seeing).
#: The adapter counts into these buckets itself (``ShardStats``).
HANDLER_DURATION_BUCKETS: Final = ev.HANDLER_SECONDS_BUCKETS
#: Time to answer a callback: 0.1 ms (verify + enqueue on an idle core) .. 5 s (the platform's
#: patience is not documented; an answer this slow is worth seeing anyway).
WEBHOOK_ACK_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
#: ``transport`` label values of ``transport_info``.
TRANSPORTS: Final = ("websocket", "webhook")
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
        n = PREFIX
        shard = ("shard",)
        r = registry
        self.heartbeats_sent = Counter(
            f"{n}_heartbeats_sent_total", "Op 1 heartbeats sent.", shard, registry=r
        )
        self.heartbeat_acks = Counter(
            f"{n}_heartbeat_acks_total", "Op 11 heartbeat ACKs received.", shard, registry=r
        )
        self.heartbeat_unacked = Gauge(
            f"{n}_heartbeat_unacked",
            "Heartbeats sent since the last ACK (consecutive).",
            shard,
            registry=r,
        )
        self.heartbeat_unacked_threshold = Gauge(
            f"{n}_heartbeat_unacked_threshold",
            "Consecutive unacknowledged heartbeats that make a zombie connection.",
            shard,
            registry=r,
        )
        self.heartbeat_interval = Gauge(
            f"{n}_heartbeat_interval_seconds",
            "Heartbeat interval in use (from Hello, validated).",
            shard,
            registry=r,
        )
        self.heartbeat_rtt = Histogram(
            f"{n}_heartbeat_rtt_seconds",
            "Time from a heartbeat to its ACK.",
            shard,
            buckets=HEARTBEAT_RTT_BUCKETS,
            registry=r,
        )
        self.heartbeat_probes = Counter(
            f"{n}_heartbeat_probes_total",
            "Extra heartbeats sent while one waited for its ACK (a late or lost ACK).",
            shard,
            registry=r,
        )
        self.ws_pings_sent = Counter(
            f"{n}_ws_pings_sent_total",
            "WebSocket pings sent (only when the link was quiet).",
            shard,
            registry=r,
        )
        self.ws_ping_rtt = Histogram(
            f"{n}_ws_ping_rtt_seconds",
            "Time from a WebSocket ping to its pong.",
            shard,
            buckets=HEARTBEAT_RTT_BUCKETS,
            registry=r,
        )
        self.ws_ping_armed = Gauge(
            f"{n}_ws_ping_armed",
            "1 while the WebSocket ping layer judges the current connection (the server "
            "answers pings), 0 otherwise (off, calibrating, suspended, disabled, no connection).",
            shard,
            registry=r,
        )
        self.ws_ping_disabled = Counter(
            f"{n}_ws_ping_disabled_total",
            "Connections on which the ping layer turned itself off: pings went unanswered "
            "while the link was alive.",
            shard,
            registry=r,
        )
        self.reconnects = Counter(
            f"{n}_reconnects_total",
            "Connections lost or given up, by reason.",
            ("shard", "reason"),
            registry=r,
        )
        self.zombies = Counter(
            f"{n}_zombies_detected_total",
            "Connections our liveness layers declared dead, by reason.",
            ("shard", "reason"),
            registry=r,
        )
        self.connection_state = Gauge(
            f"{n}_connection_state",
            "1 for the shard's current connection state, 0 for the others.",
            ("shard", "state"),
            registry=r,
        )
        self.events_duplicate = Counter(
            f"{n}_events_duplicate_total",
            "Replayed events dropped because they had been delivered already.",
            shard,
            registry=r,
        )
        self.resumes = Counter(
            f"{n}_resumes_total",
            "Resume attempts by outcome.",
            ("shard", "outcome"),
            registry=r,
        )
        self.identifies = Counter(
            f"{n}_identifies_total", "Identify frames sent (new sessions).", shard, registry=r
        )
        self.event_loop_lag = Gauge(
            f"{n}_event_loop_lag_seconds",
            "The latest event loop lag measurement.",
            registry=r,
        )
        self.handler_queue_capacity = Gauge(
            f"{n}_handler_queue_capacity",
            "Size of the bounded handler queue.",
            shard,
            registry=r,
        )
        self.handler_errors = Counter(
            f"{n}_handler_errors_total",
            "Handler exceptions by event type.",
            ("shard", "type"),
            registry=r,
        )
        self.token_refreshes = Counter(
            f"{n}_token_refreshes_total",
            "Access token fetches by outcome.",
            ("outcome",),
            registry=r,
        )
        for outcome in _TOKEN_OUTCOMES:
            self.token_refreshes.labels(outcome)
        self.webhook_requests = Counter(
            f"{n}_webhook_requests_total",
            "Requests to the webhook receiver by outcome (accepted, duplicate, bad_signature...).",
            ("shard", "outcome"),
            registry=r,
        )
        self.webhook_ack = Histogram(
            f"{n}_webhook_ack_seconds",
            "Time from a callback's arrival to its answer (ACKed dispatches and validations).",
            shard,
            buckets=WEBHOOK_ACK_BUCKETS,
            registry=r,
        )
        self.webhook_listening = Gauge(
            f"{n}_webhook_listening",
            "1 while the webhook receiver listens.",
            shard,
            registry=r,
        )
        self.transport_info = Gauge(
            f"{n}_transport_info",
            "The shard's transport (websocket or webhook); always 1.",
            ("shard", "transport"),
            registry=r,
        )
        self.build_info = Gauge(
            f"{n}_build_info",
            "Build information; always 1.",
            ("version", "python"),
            registry=r,
        )
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
            handler_errors={},
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
        n = PREFIX
        return [
            GaugeMetricFamily(
                f"{n}_webhook_last_callback_age_seconds",
                "Seconds since the last validly signed callback (since start before the first).",
                labels=["shard"],
            ),
            GaugeMetricFamily(
                f"{n}_webhook_last_callback_timestamp_seconds",
                "Unix time of the last validly signed callback (0 before the first).",
                labels=["shard"],
            ),
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
        n = PREFIX
        return (
            CounterMetricFamily(
                f"{n}_frames_received",
                "Gateway frames received, by opcode.",
                labels=["shard", "op"],
            ),
            CounterMetricFamily(
                f"{n}_events_dispatched",
                "Dispatch events accepted for the handlers, by event type.",
                labels=["shard", "type"],
            ),
            GaugeMetricFamily(
                f"{n}_handler_queue_depth",
                "Dispatched events waiting for handlers.",
                labels=["shard"],
            ),
            HistogramMetricFamily(
                f"{n}_handler_duration_seconds",
                "Time spent in handlers per event.",
                labels=["shard"],
            ),
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
        n = PREFIX
        shard = ["shard"]
        return [
            GaugeMetricFamily(
                f"{n}_last_frame_age_seconds",
                "Seconds since the last frame of any kind (since shard start before the first).",
                labels=shard,
            ),
            GaugeMetricFamily(
                f"{n}_last_heartbeat_ack_age_seconds",
                "Seconds since the last op 11 ACK (since shard start before the first).",
                labels=shard,
            ),
            GaugeMetricFamily(
                f"{n}_last_frame_timestamp_seconds",
                "Unix time of the last frame of any kind (0 before the first).",
                labels=shard,
            ),
            GaugeMetricFamily(
                f"{n}_last_heartbeat_ack_timestamp_seconds",
                "Unix time of the last op 11 ACK (0 before the first).",
                labels=shard,
            ),
            GaugeMetricFamily(
                f"{n}_healthy",
                "1 if the last health evaluation passed (the /healthz verdict), else 0.",
            ),
            GaugeMetricFamily(
                f"{n}_ready",
                "1 while the shard has a live session (READY/RESUMED with a recent ACK).",
                labels=shard,
            ),
        ]
