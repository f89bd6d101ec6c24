"""The metric contract as data: every metric's name, type, labels, HELP and documentation.

:class:`~.metrics.GatewayMetrics` and :class:`~.store_metrics.StoreMetrics` declare their
collectors from :data:`METRICS` (:func:`counter`, :func:`gauge`, :func:`histogram` for the live
ones, the ``*_family`` functions for those computed at scrape time), and the table in
``docs/metrics.md`` is generated from it (``python scripts/gen_docs.py``; a test fails when the
file is stale). A new metric is one row here; names and labels are a public contract (the
dashboards, the alert rules and operators' queries use them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

__all__ = [
    "HEARTBEAT_RTT_BUCKETS",
    "METRICS",
    "PREFIX",
    "WEBHOOK_ACK_BUCKETS",
    "MetricSpec",
    "counter",
    "counter_family",
    "gauge",
    "gauge_family",
    "histogram",
    "histogram_family",
    "metrics_markdown",
]

PREFIX: Final = "qqbot_gateway"

#: 5 ms .. 60 s. A healthy RTT is tens of ms on QQ; the session measures an ACK against the most
#: recent heartbeat, so an RTT never exceeds one interval: 41.25 s on QQ (bucket 45), about 1 s in
#: tests and the demo (buckets 0.5/1/2.5 resolve it). 60 covers the largest accepted interval
#: short of the 120 s clamp, which lands in +Inf.
HEARTBEAT_RTT_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0,
)  # fmt: skip
#: Time to answer a callback: 0.1 ms (verify + enqueue on an idle core) .. 5 s (the platform's
#: patience is not documented; an answer this slow is worth seeing anyway).
WEBHOOK_ACK_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0,
)  # fmt: skip

#: 0.5 ms (a local Redis) .. 10 s (the default lease: a renewal slower than that has failed).
LEASE_RENEW_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric: ``name`` without the prefix (counters with ``_total``), its kind, label
    names, the HELP line Prometheus shows, the documentation (Markdown, ``docs/metrics.md``),
    histogram buckets for the live histograms, and the type as documented when it says more
    than the kind (``gauge (enum)``)."""

    name: str
    kind: Kind
    labels: tuple[str, ...]
    help: str
    doc: str
    shown_type: str | None = None
    buckets: tuple[float, ...] = ()

    @property
    def full_name(self) -> str:
        return f"{PREFIX}_{self.name}"


#: Every metric, in the order of the documentation.
METRICS: Final[tuple[MetricSpec, ...]] = (
    MetricSpec(
        "heartbeats_sent_total",
        "counter",
        ("shard",),
        "Op 1 heartbeats sent.",
        "op 1 heartbeats sent",
    ),
    MetricSpec(
        "heartbeat_acks_total",
        "counter",
        ("shard",),
        "Op 11 heartbeat ACKs received.",
        "op 11 ACKs received",
    ),
    MetricSpec(
        "heartbeat_unacked",
        "gauge",
        ("shard",),
        "Heartbeats sent since the last ACK (consecutive).",
        (
            "heartbeats sent since the last ACK (consecutive, ACK probes included); the zombie "
            "threshold is `qqbot_gateway_heartbeat_unacked_threshold`"
        ),
    ),
    MetricSpec(
        "heartbeat_unacked_threshold",
        "gauge",
        ("shard",),
        "Consecutive unacknowledged heartbeats that make a zombie connection.",
        (
            "heartbeats outstanding when the ACK layer fires: the heartbeat and its probes (`1 + "
            "QQBOT_ACK_PROBES`, 3 by default); the verdict itself is the per-heartbeat ACK "
            "deadline "
            "(0.4-0.9 intervals)"
        ),
    ),
    MetricSpec(
        "heartbeat_probes_total",
        "counter",
        ("shard",),
        "Extra heartbeats sent while one waited for its ACK (a late or lost ACK).",
        (
            "extra heartbeats sent while one waited for its ACK past a third of its deadline "
            "(a late "
            "or lost ACK; a steady rate means a slow gateway)"
        ),
    ),
    MetricSpec(
        "heartbeat_interval_seconds",
        "gauge",
        ("shard",),
        "Heartbeat interval in use (from Hello, validated).",
        "heartbeat interval in use (from Hello, validated)",
    ),
    MetricSpec(
        "heartbeat_rtt_seconds",
        "histogram",
        ("shard",),
        buckets=HEARTBEAT_RTT_BUCKETS,
        help="Time from a heartbeat to its ACK.",
        doc=(
            "time from heartbeat to its ACK; buckets 5 ms .. 60 s, fit for a 41.25 s and a 1 s "
            "interval"
        ),
    ),
    MetricSpec(
        "last_frame_timestamp_seconds",
        "gauge",
        ("shard",),
        "Unix time of the last frame of any kind (0 before the first).",
        "Unix time of the last frame of any kind (0 before the first)",
    ),
    MetricSpec(
        "last_frame_age_seconds",
        "gauge",
        ("shard",),
        "Seconds since the last frame of any kind (since shard start before the first).",
        (
            "seconds since the last frame, computed at scrape; before the first frame, seconds "
            "since "
            "the shard started"
        ),
    ),
    MetricSpec(
        "last_heartbeat_ack_timestamp_seconds",
        "gauge",
        ("shard",),
        "Unix time of the last op 11 ACK (0 before the first).",
        "Unix time of the last op 11 (0 before the first)",
    ),
    MetricSpec(
        "last_heartbeat_ack_age_seconds",
        "gauge",
        ("shard",),
        "Seconds since the last op 11 ACK (since shard start before the first).",
        (
            "seconds since the last op 11, computed at scrape; before the first, seconds since the "
            "shard started"
        ),
    ),
    MetricSpec(
        "reconnects_total",
        "counter",
        ("shard", "reason"),
        "Connections lost or given up, by reason.",
        "connections lost or given up, by reason (see below)",
    ),
    MetricSpec(
        "zombies_detected_total",
        "counter",
        ("shard", "reason"),
        "Connections our liveness layers declared dead, by reason.",
        (
            "connections our liveness layers declared dead, by the layer that fired "
            "(`ping_timeout`, "
            "`ack_timeout`, `idle_timeout`)"
        ),
    ),
    MetricSpec(
        "ws_pings_sent_total",
        "counter",
        ("shard",),
        "WebSocket pings sent (only when the link was quiet).",
        (
            "WebSocket pings sent (a calibration ping after Hello, then only after 0.05 intervals "
            "without a frame)"
        ),
    ),
    MetricSpec(
        "ws_ping_rtt_seconds",
        "histogram",
        ("shard",),
        buckets=HEARTBEAT_RTT_BUCKETS,
        help="Time from a WebSocket ping to its pong.",
        doc=(
            "time from a WebSocket ping to its pong (same buckets as `heartbeat_rtt_seconds`); "
            "the pong deadline derives from it"
        ),
    ),
    MetricSpec(
        "ws_ping_armed",
        "gauge",
        ("shard",),
        (
            "1 while the WebSocket ping layer judges the current connection (the server answers "
            "pings), 0 otherwise (off, calibrating, suspended, disabled, no connection)."
        ),
        (
            "1 while the ping layer judges the current connection (the server answered a ping and "
            "the RTT fits the interval), else 0 (off, calibrating, suspended, disabled, no "
            "connection)"
        ),
    ),
    MetricSpec(
        "ws_ping_disabled_total",
        "counter",
        ("shard",),
        (
            "Connections on which the ping layer turned itself off: pings went unanswered "
            "while the "
            "link was alive."
        ),
        (
            "connections on which the ping layer turned itself off: pings went unanswered while "
            "other frames proved the link alive (logged once as a WARNING)"
        ),
    ),
    MetricSpec(
        "connection_state",
        "gauge",
        ("shard", "state"),
        "1 for the shard's current connection state, 0 for the others.",
        (
            "1 for the current state, 0 for the others; states: `idle`, `connecting`, "
            "`handshaking`, "
            "`ready`, `backoff`, `fatal`, `stopped`"
        ),
        shown_type="gauge (enum)",
    ),
    MetricSpec(
        "frames_received_total",
        "counter",
        ("shard", "op"),
        "Gateway frames received, by opcode.",
        'frames received by opcode (`"0"`, `"7"`, `"9"`, `"10"`, `"11"`, ..., `"invalid"`)',
    ),
    MetricSpec(
        "events_dispatched_total",
        "counter",
        ("shard", "type"),
        "Dispatch events accepted for the handlers, by event type.",
        "dispatch events accepted for the handlers, by event type (`READY`/`RESUMED` included)",
    ),
    MetricSpec(
        "events_duplicate_total",
        "counter",
        ("shard",),
        "Replayed events dropped because they had been delivered already.",
        "replayed events dropped because they had been delivered already",
    ),
    MetricSpec(
        "resumes_total",
        "counter",
        ("shard", "outcome"),
        "Resume attempts by outcome.",
        "resume attempts by outcome: `success`, `failed`",
    ),
    MetricSpec(
        "identifies_total",
        "counter",
        ("shard",),
        "Identify frames sent (new sessions).",
        "Identify frames sent (new sessions)",
    ),
    MetricSpec(
        "healthy",
        "gauge",
        (),
        "1 if the last health evaluation passed (the /healthz verdict), else 0.",
        "1 if the last health evaluation passed, else 0 (the `/healthz` verdict)",
    ),
    MetricSpec(
        "ready",
        "gauge",
        ("shard",),
        "1 while the shard has a live session (READY/RESUMED with a recent ACK).",
        "1 while the shard has a live session (READY/RESUMED with a recent ACK)",
    ),
    MetricSpec(
        "event_loop_lag_seconds",
        "gauge",
        (),
        "The latest event loop lag measurement.",
        "the latest event loop lag measurement",
    ),
    MetricSpec(
        "side_server_malformed_requests_total",
        "counter",
        (),
        "Requests to the side port that could not be parsed (answered 400/431).",
        (
            "requests to the side port that could not be parsed (a bad request line, oversized "
            "or malformed headers), answered 400/431 and logged as one WARNING line each; a "
            "steady rate means something on the network probes the port (bytes that are not "
            "HTTP at all, such as TLS, aiohttp drops quietly and are not counted)"
        ),
    ),
    MetricSpec(
        "handler_queue_depth",
        "gauge",
        ("shard",),
        "Dispatched events waiting for handlers.",
        "dispatched events waiting for handlers",
    ),
    MetricSpec(
        "handler_queue_capacity",
        "gauge",
        ("shard",),
        "Size of the bounded handler queue.",
        "the bounded queue's size",
    ),
    MetricSpec(
        "handler_errors_total",
        "counter",
        ("shard", "type"),
        "Handler exceptions by event type.",
        (
            "handler exceptions by event type; the message events (`C2C_MESSAGE_CREATE`, "
            "`GROUP_AT_MESSAGE_CREATE`, `AT_MESSAGE_CREATE`, `DIRECT_MESSAGE_CREATE`) exist at "
            'zero from the start, so a healthy bot\'s panel shows 0, not "No data"'
        ),
    ),
    MetricSpec(
        "handler_duration_seconds",
        "histogram",
        ("shard",),
        "Time spent in handlers per event.",
        (
            "time spent in handlers per event; with `QQBOT_DELIVERY=stream` the append of the "
            "event's batch to Redis, retries included (docs/workers.md)"
        ),
    ),
    MetricSpec(
        "token_refreshes_total",
        "counter",
        ("outcome",),
        "Access token fetches by outcome.",
        "access token fetches: `success`, `failure`",
    ),
    MetricSpec(
        "build_info", "gauge", ("version", "python"), "Build information; always 1.", "always 1"
    ),
    MetricSpec(
        "checkpoint_age_seconds",
        "gauge",
        ("shard",),
        (
            "Seconds since the last durable checkpoint, computed at scrape (since the shard "
            "started "
            "before the first)."
        ),
        (
            "seconds since the last durable session checkpoint, computed at scrape (since the "
            "shard "
            "started before the first); a live quiet session is re-written every 30 s, so a "
            "steadily "
            "growing age means writes fail or the shard has no session. Exported only when the "
            "session store is on"
        ),
    ),
    MetricSpec(
        "checkpoint_seq",
        "gauge",
        ("shard",),
        "The durable handled-sequence watermark: every event up to it is handled and saved.",
        "the durable handled-sequence watermark (every event up to it handled and saved)",
    ),
    MetricSpec(
        "checkpoint_lag_events",
        "gauge",
        ("shard",),
        "Events handled while the last checkpoint was being written (not yet durable).",
        (
            "events handled while the last checkpoint was being written, i.e. not yet durable: "
            "what "
            "a SIGKILL at that moment could hand to a handler again"
        ),
    ),
    MetricSpec(
        "checkpoint_writes_total",
        "counter",
        ("shard",),
        "Session checkpoints written durably to the store.",
        (
            "session checkpoints written durably (batched: at most one per "
            "`QQBOT_CHECKPOINT_INTERVAL`)"
        ),
    ),
    MetricSpec(
        "checkpoint_failures_total",
        "counter",
        ("shard",),
        "Session checkpoint writes that failed (retried with the next batch).",
        "checkpoint writes that failed (retried with the next batch)",
    ),
    MetricSpec(
        "restart_resumes_total",
        "counter",
        ("shard", "outcome"),
        "What became of the session a previous process stored, by outcome.",
        (
            "what became of the session a previous process stored: `resumed`, `refused` (op 9 or "
            "expired on the platform: a new session, events may be missed), `too_old` (past "
            "`QQBOT_SESSION_MAX_AGE`, not tried), `unusable` (corrupt, another app id or shard "
            "count; with the webhook transport, a journal or checkpoint that could not be used)"
        ),
    ),
    MetricSpec(
        "transport_info",
        "gauge",
        ("shard", "transport"),
        "The shard's transport (websocket or webhook); always 1.",
        (
            "always 1; `transport` is `websocket` or `webhook` (`QQBOT_TRANSPORT`): the "
            "dashboard's "
            "transport variable"
        ),
    ),
    MetricSpec(
        "webhook_requests_total",
        "counter",
        ("shard", "outcome"),
        "Requests to the webhook receiver by outcome (accepted, duplicate, bad_signature...).",
        (
            "requests to the webhook receiver by outcome (see below); only with "
            "`QQBOT_TRANSPORT=webhook`, like every `webhook_*` metric"
        ),
    ),
    MetricSpec(
        "webhook_ack_seconds",
        "histogram",
        ("shard",),
        buckets=WEBHOOK_ACK_BUCKETS,
        help="Time from a callback's arrival to its answer (ACKed dispatches and validations).",
        doc=(
            "time from a callback's arrival to its 200 answer (the op 12 ACK, or the op 13 "
            "answer): body read, signature verified, event journaled (with the session store "
            "on) and queued; buckets 0.1 ms .. 5 s"
        ),
    ),
    MetricSpec(
        "webhook_journal_write_seconds",
        "histogram",
        ("shard",),
        buckets=WEBHOOK_ACK_BUCKETS,
        help="Duration of one intake journal append (write + fdatasync, shared by a batch).",
        doc=(
            "duration of one append to the webhook intake journal (write + `fdatasync` in a "
            "worker thread); concurrent callbacks share one append (group commit), so the count "
            "is appends, not callbacks; the ACK waits for it. Only with the session store on "
            "(`QQBOT_STATE_DIR`); buckets 0.1 ms .. 5 s"
        ),
    ),
    MetricSpec(
        "webhook_journal_replayed_total",
        "counter",
        ("shard",),
        "Callbacks re-delivered from the intake journal at start (ACKed, not handled before).",
        (
            "callbacks a previous process ACKed and did not handle, re-delivered to the handlers "
            "from the intake journal at start (those it had handled are skipped, not counted)"
        ),
    ),
    MetricSpec(
        "webhook_last_callback_timestamp_seconds",
        "gauge",
        ("shard",),
        "Unix time of the last validly signed callback (0 before the first).",
        "Unix time of the last request with a valid signature (0 before the first)",
    ),
    MetricSpec(
        "webhook_last_callback_age_seconds",
        "gauge",
        ("shard",),
        "Seconds since the last validly signed callback (since start before the first).",
        (
            "seconds since the last request with a valid signature, computed at scrape; before the "
            "first, seconds since the shard started"
        ),
    ),
    MetricSpec(
        "webhook_listening",
        "gauge",
        ("shard",),
        "1 while the webhook receiver listens.",
        "1 while the webhook receiver listens",
    ),
    # --- the event stream (QQBOT_DELIVERY=stream) and `qqbot-gateway worker` ---
    MetricSpec(
        "stream_appended_total",
        "counter",
        (),
        "Events this gateway appended to the app's Redis stream.",
        (
            "`run` with `QQBOT_DELIVERY=stream`: events appended to the app's stream (each "
            "counted once Redis answered its `XADD`; only then does the checkpoint pass it)"
        ),
    ),
    MetricSpec(
        "stream_append_failures_total",
        "counter",
        (),
        "Appends to the app's Redis stream that failed (each retry counted).",
        (
            "appends that failed (Redis down, timed out, read-only, out of memory), each retry "
            "counted: the batch is retried every 0.5 s and `/readyz` fails (`stream/append`) "
            "meanwhile; nothing is lost"
        ),
    ),
    MetricSpec(
        "stream_append_blocked_total",
        "counter",
        (),
        "Appends that waited because the stream was at QQBOT_STREAM_MAX_LEN.",
        (
            "appends that had to wait because the stream held `QQBOT_STREAM_MAX_LEN` entries "
            "some group had not acknowledged (the workers are behind: the session pauses)"
        ),
    ),
    MetricSpec(
        "stream_max_length",
        "gauge",
        (),
        "The stream's bound (QQBOT_STREAM_MAX_LEN).",
        "the stream's bound, `QQBOT_STREAM_MAX_LEN` (exported by `run`)",
    ),
    MetricSpec(
        "stream_length",
        "gauge",
        (),
        "Entries in the app's stream (what some consumer group has not acknowledged).",
        (
            "entries in the app's stream as last read (every 0.5 s by `run`, 2 s by `worker`): "
            "acknowledged entries are trimmed, so this is what some group still owes"
        ),
    ),
    MetricSpec(
        "stream_group_lag",
        "gauge",
        ("group",),
        "Entries not yet delivered to the consumer group.",
        "entries not yet delivered to the group (Redis's `XINFO GROUPS` lag)",
    ),
    MetricSpec(
        "stream_group_pending",
        "gauge",
        ("group",),
        "Entries delivered to the group and not yet acknowledged.",
        (
            "entries delivered to the group's workers and not yet acknowledged (running, failed "
            "and waiting for a retry, or held by a dead worker until claimed)"
        ),
    ),
    MetricSpec(
        "stream_group_consumers",
        "gauge",
        ("group",),
        "Consumers Redis knows in the group (dead ones included until deleted).",
        "consumers Redis knows in the group (a dead worker's name stays until deleted)",
    ),
    MetricSpec(
        "stream_dead_letters",
        "gauge",
        (),
        "Entries in the app's dead-letter stream.",
        (
            "entries in the app's dead-letter stream (`qqbot:{<app>}:events:dead`): events "
            "no handler completed in `QQBOT_STREAM_MAX_ATTEMPTS` deliveries; see the runbook"
        ),
    ),
    MetricSpec(
        "worker_events_total",
        "counter",
        ("group", "consumer", "outcome"),
        "Stream entries this worker took, by outcome.",
        (
            "entries this worker took: `handled` (every handler returned; acknowledged), "
            "`failed` (a handler raised; left pending for a retry), `duplicate` (handled "
            "before by the group; acknowledged without a handler)"
        ),
    ),
    MetricSpec(
        "worker_claims_total",
        "counter",
        ("group", "consumer"),
        "Entries this worker claimed from a dead, stuck or failing consumer.",
        (
            "entries this worker claimed after `QQBOT_STREAM_CLAIM_IDLE` (a dead or stuck "
            "worker's, or a failed entry's retry)"
        ),
    ),
    MetricSpec(
        "worker_dead_letters_total",
        "counter",
        ("group", "consumer"),
        "Entries this worker moved to the dead-letter stream.",
        (
            "entries this worker moved to the dead-letter stream (after "
            "`QQBOT_STREAM_MAX_ATTEMPTS` deliveries, or unreadable)"
        ),
    ),
    MetricSpec(
        "worker_in_flight",
        "gauge",
        ("group", "consumer"),
        "Events in this worker's handlers now.",
        "events in this worker's handlers now (at most `QQBOT_WORKER_CONCURRENCY`)",
    ),
    MetricSpec(
        "worker_redis_up",
        "gauge",
        ("group", "consumer"),
        "1 while this worker's last Redis command succeeded.",
        "1 while the worker's last Redis command succeeded",
    ),
    MetricSpec(
        "worker_handler_duration_seconds",
        "histogram",
        ("group", "consumer"),
        "Time from an event's first handler call to its last handler's return.",
        "time from an event's first handler call to its last handler's return, per worker",
    ),
    MetricSpec(
        "worker_event_latency_seconds",
        "histogram",
        ("group", "consumer"),
        "Time from the gateway's append to the handlers' return (wall clocks of two hosts).",
        (
            "time from the gateway's append to the handlers' return (two hosts' wall clocks: "
            "as good as their NTP)"
        ),
    ),
    MetricSpec(
        "shard_owner",
        "gauge",
        ("shard",),
        "Cluster mode: 1 while this process holds the shard's lease, 0 while it stands by.",
        (
            "cluster mode (`QQBOT_REDIS_URL`): 1 while this process holds the shard's lease, 0 "
            "while it stands by; summed over processes, exactly 1 per shard (0: nobody owns it)"
        ),
    ),
    MetricSpec(
        "shard_fencing_token",
        "gauge",
        ("shard",),
        "Cluster mode: the fencing token of this process's lease on the shard (0: not owned).",
        "cluster mode: the fencing token of the current term (0 while standing by)",
    ),
    MetricSpec(
        "lease_renew_seconds",
        "histogram",
        ("shard",),
        buckets=LEASE_RENEW_BUCKETS,
        help="Cluster mode: time for a successful lease renewal round trip to Redis.",
        doc="cluster mode: round trip of a successful lease renewal; buckets 0.5 ms .. 10 s",
    ),
    MetricSpec(
        "lease_renew_failures_total",
        "counter",
        ("shard", "reason"),
        "Cluster mode: lease renewals that failed (error: Redis; lost: another owner).",
        (
            "cluster mode: failed lease renewals; `reason` is `error` (Redis unreachable, slow "
            "or failing: retried while validity lasts) or `lost` (the lease is another "
            "process's now)"
        ),
    ),
    MetricSpec(
        "lease_takeovers_total",
        "counter",
        ("shard", "cause"),
        "Cluster mode: shards this process took from a previous owner, by cause.",
        (
            "cluster mode: terms this process started on a shard another process owned before; "
            "`cause` is `expired` (the owner died, hung or lost Redis) or `released` (it let go "
            "at shutdown)"
        ),
    ),
    MetricSpec(
        "lease_losses_total",
        "counter",
        ("shard", "reason"),
        "Cluster mode: terms that ended without a shutdown, by reason.",
        (
            "cluster mode: terms that ended other than by shutdown; `reason` is `expired` "
            "(validity ran out before a renewal) or `lost` (another process owns the shard)"
        ),
    ),
    MetricSpec(
        "fencing_refusals_total",
        "counter",
        ("shard",),
        "Cluster mode: session-store writes refused because the fencing token was stale.",
        (
            "cluster mode: checkpoint writes refused by Redis (a stale fencing token: a paused "
            "or cut-off former owner); each one is a write that would have overwritten the new "
            "owner's state"
        ),
    ),
    MetricSpec(
        "redis_errors_total",
        "counter",
        ("operation",),
        "Cluster mode: Redis commands that failed or timed out, by operation.",
        (
            "cluster mode: Redis commands that failed or timed out; `operation` is `acquire`, "
            "`renew` or `release` (shard leases), `append`, `ack` or `claim` (webhook replicas' "
            "intake; an `append` failure is a callback answered 503)"
        ),
    ),
)
_BY_NAME: Final[dict[str, MetricSpec]] = {m.name: m for m in METRICS}


def _spec(name: str, kind: Kind) -> MetricSpec:
    spec = _BY_NAME[name]
    if spec.kind != kind:
        raise TypeError(f"{spec.full_name} is a {spec.kind}, not a {kind}")
    return spec


def counter(name: str, registry: CollectorRegistry) -> Counter:
    s = _spec(name, "counter")
    return Counter(s.full_name, s.help, s.labels, registry=registry)


def gauge(name: str, registry: CollectorRegistry) -> Gauge:
    s = _spec(name, "gauge")
    return Gauge(s.full_name, s.help, s.labels, registry=registry)


def histogram(name: str, registry: CollectorRegistry) -> Histogram:
    s = _spec(name, "histogram")
    return Histogram(s.full_name, s.help, s.labels, buckets=s.buckets, registry=registry)


def counter_family(name: str) -> CounterMetricFamily:
    """An empty family for a collector that computes ``name`` at scrape time."""
    s = _spec(name, "counter")
    return CounterMetricFamily(s.full_name.removesuffix("_total"), s.help, labels=list(s.labels))


def gauge_family(name: str) -> GaugeMetricFamily:
    s = _spec(name, "gauge")
    return GaugeMetricFamily(s.full_name, s.help, labels=list(s.labels))


def histogram_family(name: str) -> HistogramMetricFamily:
    s = _spec(name, "histogram")
    return HistogramMetricFamily(s.full_name, s.help, labels=list(s.labels))


def metrics_markdown() -> str:
    """The table of ``docs/metrics.md``."""
    rows = ["| name | type | labels | meaning |", "|---|---|---|---|"]
    for m in METRICS:
        labels = ", ".join(m.labels) or "(none)"
        rows.append(f"| `{m.full_name}` | {m.shown_type or m.kind} | {labels} | {m.doc} |")
    rows.append(
        "| `process_*`, `python_*` | | | prometheus-client's process and platform collectors |"
    )
    return "\n".join(rows) + "\n"
