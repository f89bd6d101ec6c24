"""Metrics fed by synthetic lifecycle events with explicit times, on isolated registries."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

import qqbot_gateway.telemetry as telemetry
from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter.protocol import (
    DISCONNECT_REASONS,
    MESSAGE_EVENT_TYPES,
    ZOMBIE_REASONS,
    Op,
)
from qqbot_gateway.adapter.webhook import OUTCOMES as WEBHOOK_OUTCOMES
from qqbot_gateway.telemetry import Telemetry, TelemetryConfig
from qqbot_gateway.telemetry.cluster import ClusterMetrics
from qqbot_gateway.telemetry.metric_spec import METRICS, metrics_markdown
from qqbot_gateway.telemetry.metrics import MAX_EVENT_TYPES, GatewayMetrics, op_label
from qqbot_gateway.telemetry.store_metrics import RESTART_RESUME_OUTCOMES, StoreMetrics

from .test_telemetry_support import CS, FakeClient, FakeClock, FakeConfig, Feeder

P = "qqbot_gateway_"


def make(
    shards: tuple[int, ...] = (0,), clock: FakeClock | None = None
) -> tuple[GatewayMetrics, CollectorRegistry, Feeder, FakeClock]:
    registry = CollectorRegistry()
    clock = clock or FakeClock()
    metrics = GatewayMetrics(registry, clock=clock, process_collectors=False)
    for shard in shards:
        metrics.register_shard(shard, ack_miss_limit=2, queue_capacity=50)
    bus = ev.EventBus()
    bus.subscribe(metrics.observe)
    return metrics, registry, Feeder(bus), clock


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(P + name, labels)


def test_exports_what_it_says() -> None:
    for name in telemetry.__all__:
        assert hasattr(telemetry, name), name


def test_every_known_child_exists_at_zero_on_registration() -> None:
    _, r, _, _ = make(shards=(0, 3))
    for shard in ("0", "3"):
        for reason in DISCONNECT_REASONS:
            assert value(r, "reconnects_total", shard=shard, reason=reason) == 0.0
        for reason in ZOMBIE_REASONS:
            assert value(r, "zombies_detected_total", shard=shard, reason=reason) == 0.0
        for state in CS:
            expected = 1.0 if state is CS.IDLE else 0.0
            assert value(r, "connection_state", shard=shard, state=state.value) == expected
        for outcome in ("success", "failed"):
            assert value(r, "resumes_total", shard=shard, outcome=outcome) == 0.0
        for op in [*(str(int(o)) for o in Op), "invalid"]:
            assert value(r, "frames_received_total", shard=shard, op=op) == 0.0
        for name in (
            "heartbeats_sent_total",
            "heartbeat_acks_total",
            "identifies_total",
            "events_duplicate_total",
            "heartbeat_unacked",
            "handler_queue_depth",
            "heartbeat_rtt_seconds_count",
            "handler_duration_seconds_count",
        ):
            assert value(r, name, shard=shard) == 0.0, name
        assert value(r, "heartbeat_unacked_threshold", shard=shard) == 2.0
        assert value(r, "handler_queue_capacity", shard=shard) == 50.0
    for outcome in ("success", "failure"):
        assert value(r, "token_refreshes_total", outcome=outcome) == 0.0
    assert value(r, "healthy") == 0.0
    assert value(r, "ready", shard="0") == 0.0
    assert value(r, "event_loop_lag_seconds") == 0.0


def test_build_info_and_process_collectors_on_the_same_registry() -> None:
    registry = CollectorRegistry()
    GatewayMetrics(registry)
    names = {m.name for m in registry.collect()}
    assert P + "build_info" in names
    assert "python_info" in names
    assert any(n.startswith("python_gc") for n in names)
    info = next(m for m in registry.collect() if m.name == P + "build_info")
    assert info.samples[0].value == 1.0
    assert set(info.samples[0].labels) == {"version", "python"}


def test_frames_by_op_and_ages_computed_at_scrape() -> None:
    _, r, f, clock = make()
    # Before the first frame: ages count from the shard's start, timestamps are 0.
    clock.now += 5
    assert value(r, "last_frame_age_seconds", shard="0") == pytest.approx(5.0)
    assert value(r, "last_heartbeat_ack_age_seconds", shard="0") == pytest.approx(5.0)
    assert value(r, "last_frame_timestamp_seconds", shard="0") == 0.0
    f.ack(clock.now - 1.0)
    f.emit(ev.FrameReceived, clock.now, op=0, event_type="X", size=1)
    f.emit(ev.FrameReceived, clock.now, op=None, event_type=None, size=1)
    f.emit(ev.FrameReceived, clock.now, op=99, event_type=None, size=1)
    assert value(r, "frames_received_total", shard="0", op="0") == 1.0
    assert value(r, "frames_received_total", shard="0", op="invalid") == 1.0
    assert value(r, "frames_received_total", shard="0", op="other") == 1.0
    assert value(r, "frames_received_total", shard="0", op="11") == 1.0
    assert op_label(None) == "invalid" and op_label(7) == "7"
    clock.now += 2.5
    assert value(r, "last_frame_age_seconds", shard="0") == pytest.approx(2.5)
    assert value(r, "last_heartbeat_ack_age_seconds", shard="0") == pytest.approx(3.5)
    wall_ack = clock.wall() - 3.5
    assert value(r, "last_heartbeat_ack_timestamp_seconds", shard="0") == pytest.approx(wall_ack)


def test_heartbeats_rtt_and_unacked() -> None:
    _, r, f, _ = make()
    f.connect(10.0)
    assert value(r, "heartbeat_interval_seconds", shard="0") == 1.0
    f.heartbeat(11.0, unacked=1)
    f.heartbeat(12.0, unacked=2)
    assert value(r, "heartbeat_unacked", shard="0") == 2.0
    assert value(r, "heartbeats_sent_total", shard="0") == 2.0
    f.ack(12.04, rtt=0.04)
    assert value(r, "heartbeat_unacked", shard="0") == 0.0
    assert value(r, "heartbeat_acks_total", shard="0") == 1.0
    assert value(r, "heartbeat_rtt_seconds_bucket", shard="0", le="0.025") == 0.0
    assert value(r, "heartbeat_rtt_seconds_bucket", shard="0", le="0.05") == 1.0
    assert value(r, "heartbeat_rtt_seconds_sum", shard="0") == pytest.approx(0.04)


def test_rtt_buckets_fit_both_intervals() -> None:
    from qqbot_gateway.telemetry.metrics import HEARTBEAT_RTT_BUCKETS as B

    assert B[0] == 0.005 and B[-1] == 60.0
    assert any(0.5 <= b <= 1.0 for b in B)  # a 1 s interval is resolved
    assert any(41.25 <= b <= 60 for b in B)  # QQ's 41.25 s interval has a bucket of its own


def test_reconnects_zombies_and_unknown_reasons_stay_bounded() -> None:
    m, r, f, _ = make()
    f.emit(
        ev.ZombieDetected,
        1.0,
        reason="ack_timeout",
        unacked=2,
        idle_for=2.0,
        heartbeat_interval=1.0,
    )
    f.disconnect(1.0, "ack_timeout")
    f.disconnect(2.0, "server_close:4009", 4009)
    f.disconnect(3.0, "server_close:4999", 4999)
    f.disconnect(4.0, "something-new")
    assert value(r, "zombies_detected_total", shard="0", reason="ack_timeout") == 1.0
    assert value(r, "reconnects_total", shard="0", reason="ack_timeout") == 1.0
    assert value(r, "reconnects_total", shard="0", reason="server_close:4009") == 1.0
    assert value(r, "reconnects_total", shard="0", reason="server_close:other") == 1.0
    assert value(r, "reconnects_total", shard="0", reason="network_error") == 1.0
    (family,) = m.reconnects.collect()
    reasons = {s.labels["reason"] for s in family.samples}
    assert reasons <= set(DISCONNECT_REASONS)


def test_fatal_counted_once() -> None:
    _, r, f, _ = make()
    f.emit(ev.ConnectAttempt, 1.0, attempt=1, resume=False)
    f.disconnect(1.5, "server_close:4914", 4914)
    f.emit(ev.ShardFatal, 1.5, reason="server_close:4914", close_code=4914, message="banned")
    assert value(r, "reconnects_total", shard="0", reason="server_close:4914") == 1.0
    # Given up before any connection (credentials refused): counted by ShardFatal.
    f.emit(ev.ConnectAttempt, 2.0, attempt=1, resume=False)
    f.emit(ev.ShardFatal, 2.0, reason="token_error", close_code=None, message="refused")
    assert value(r, "reconnects_total", shard="0", reason="token_error") == 1.0


def test_connection_state_is_an_enum() -> None:
    _, r, f, _ = make()
    path = [
        CS.IDLE,
        CS.CONNECTING,
        CS.HANDSHAKING,
        CS.READY,
        CS.BACKOFF,
        CS.CONNECTING,
        CS.HANDSHAKING,
        CS.READY,
        CS.FATAL,
    ]
    for t, (old, new) in enumerate(itertools.pairwise(path)):
        f.state(float(t), old, new)
        values = {s.value: value(r, "connection_state", shard="0", state=s.value) for s in CS}
        assert values[new.value] == 1.0
        assert sum(v or 0.0 for v in values.values()) == 1.0


def test_resumes_identifies_duplicates() -> None:
    _, r, f, _ = make()
    f.connect(1.0)
    f.ready(1.0)
    assert value(r, "identifies_total", shard="0") == 1.0
    f.disconnect(2.0, "network_error")
    f.connect(3.0, resume=True)
    f.emit(ev.ResumeSent, 3.0, session_id="sess-1", seq=5)
    f.disconnect(3.5, "invalid_session")  # the resume failed
    f.connect(4.0, resume=True)
    f.emit(ev.ResumeSent, 4.0, session_id="sess-1", seq=5)
    f.emit(ev.SessionResumed, 4.1, session_id="sess-1", replayed=3, resume_started=4.0)
    f.emit(ev.DuplicateDropped, 4.1, event_type="C2C_MESSAGE_CREATE", seq=4, event_id="e4")
    f.disconnect(5.0, "reconnect_requested")  # after success: no extra failure
    assert value(r, "resumes_total", shard="0", outcome="success") == 1.0
    assert value(r, "resumes_total", shard="0", outcome="failed") == 1.0
    assert value(r, "events_duplicate_total", shard="0") == 1.0


def test_dispatch_handlers_and_queue() -> None:
    _, r, f, _ = make()
    for seq in range(3):
        f.emit(
            ev.EventDispatched,
            1.0,
            event_type="GROUP_AT_MESSAGE_CREATE",
            seq=seq,
            event_id=f"e{seq}",
            replayed=False,
        )
    f.emit(ev.HandlerQueueDepth, 1.0, depth=3, capacity=50)
    f.emit(ev.HandlerCompleted, 1.1, event_type="GROUP_AT_MESSAGE_CREATE", duration=0.003)
    f.emit(
        ev.HandlerFailed,
        1.2,
        event_type="GROUP_AT_MESSAGE_CREATE",
        handler="h",
        error_type="ValueError",
        error="boom",
    )
    assert value(r, "events_dispatched_total", shard="0", type="GROUP_AT_MESSAGE_CREATE") == 3.0
    assert value(r, "handler_queue_depth", shard="0") == 3.0
    assert value(r, "handler_duration_seconds_count", shard="0") == 1.0
    assert value(r, "handler_errors_total", shard="0", type="GROUP_AT_MESSAGE_CREATE") == 1.0


def test_event_type_labels_are_capped() -> None:
    _, r, f, _ = make()
    for i in range(MAX_EVENT_TYPES + 10):
        f.emit(ev.EventDispatched, 1.0, event_type=f"T{i}", seq=i, event_id=None, replayed=False)
    assert value(r, "events_dispatched_total", shard="0", type="other") == 10.0


def test_token_refreshes_and_unknown_shards_ignored() -> None:
    _, r, f, _ = make()
    f.emit(ev.TokenRefreshed, 1.0, shard=None, expires_in=7200.0, forced=False)
    f.emit(ev.TokenRefreshFailed, 1.0, shard=None, error="HTTP 500", code=None, retry_in=1.0)
    f.emit(ev.HeartbeatSent, 1.0, shard=9, seq=None, unacked=1)  # not registered: ignored
    assert value(r, "token_refreshes_total", outcome="success") == 1.0
    assert value(r, "token_refreshes_total", outcome="failure") == 1.0
    assert value(r, "heartbeats_sent_total", shard="9") is None


def test_exemplars_carry_trace_ids_in_openmetrics() -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tel = Telemetry(
        TelemetryConfig(http_port=None, trace_sample_ratio=1.0),
        span_exporter=exporter,
        process_collectors=False,
    )
    client = FakeClient(FakeConfig())
    tel.attach(client)
    f = Feeder(client.events)
    f.connect(1.0)
    f.emit(
        ev.EventDispatched,
        1.0,
        event_type="C2C_MESSAGE_CREATE",
        seq=2,
        event_id="e2",
        replayed=False,
    )
    f.heartbeat(2.0)
    f.ack(2.02)
    text = openmetrics_latest(tel.registry).decode()  # type: ignore[no-untyped-call]
    dispatched = next(
        ln
        for ln in text.splitlines()
        if ln.startswith(P + "events_dispatched_total{") and "C2C" in ln
    )
    assert "# {span_id=" in dispatched and "trace_id=" in dispatched
    rtt = [ln for ln in text.splitlines() if "heartbeat_rtt_seconds_bucket" in ln and "# {" in ln]
    assert rtt, "no exemplar on heartbeat_rtt_seconds"
    ack_span = next(s for s in exporter.get_finished_spans() if s.name == "qqbot.heartbeat")
    assert format(ack_span.context.trace_id, "032x") in rtt[0]


def test_liveness_layer_metrics() -> None:
    _, r, f, _ = make()
    for name in ("heartbeat_probes_total", "ws_pings_sent_total", "ws_ping_disabled_total"):
        assert value(r, name, shard="0") == 0.0
    assert value(r, "ws_ping_armed", shard="0") == 0.0
    f.connect(1.0)
    f.emit(ev.PingLayerChanged, 1.0, state="calibrating", detail="waiting for a first pong")
    f.emit(ev.PingSent, 1.05, outstanding=1)
    f.emit(ev.PongReceived, 1.06, rtt=0.01, deadline=0.3)
    f.emit(ev.PingLayerChanged, 1.06, state="armed", detail="the server answers pings")
    assert value(r, "ws_ping_armed", shard="0") == 1.0
    assert value(r, "ws_pings_sent_total", shard="0") == 1.0
    assert value(r, "ws_ping_rtt_seconds_count", shard="0") == 1.0
    assert value(r, "ws_ping_rtt_seconds_sum", shard="0") == pytest.approx(0.01)
    f.heartbeat(2.0, unacked=1)
    f.heartbeat(2.14, unacked=2)  # a probe
    assert value(r, "heartbeat_probes_total", shard="0") == 1.0
    assert value(r, "heartbeats_sent_total", shard="0") == 2.0
    f.emit(ev.PingLayerChanged, 5.0, state="disabled", detail="pings unanswered")
    assert value(r, "ws_ping_armed", shard="0") == 0.0
    assert value(r, "ws_ping_disabled_total", shard="0") == 1.0
    f.emit(ev.PingLayerChanged, 6.0, state="armed", detail="a new connection")
    f.disconnect(7.0, "ping_timeout")
    assert value(r, "ws_ping_armed", shard="0") == 0.0  # no connection, nothing armed


def test_handler_errors_children_exist_at_zero_from_the_start() -> None:
    _, r, f, _ = make()
    for event_type in MESSAGE_EVENT_TYPES:
        assert value(r, "handler_errors_total", shard="0", type=event_type) == 0.0
    f.emit(
        ev.HandlerFailed,
        1.0,
        event_type="C2C_MESSAGE_CREATE",
        handler="h",
        error_type="ValueError",
        error="boom",
    )
    assert value(r, "handler_errors_total", shard="0", type="C2C_MESSAGE_CREATE") == 1.0


class _Publisher:
    """What StreamMetrics reads of a StreamPublisher, with a state of one group."""

    appended = 3
    append_failures = 0
    blocked = 0
    max_len = 100

    def __init__(self) -> None:
        from qqbot_gateway.cluster.stream import GroupState, StreamState

        group = GroupState("handlers", 1, 2, 1, "1-1", "1-0")
        self.state = StreamState(3, (group,), 0)


class _Worker:
    def __init__(self) -> None:
        from qqbot_gateway.cluster.worker import WorkerConfig, WorkerStats

        self.stats = WorkerStats()
        self.config = WorkerConfig(app_id="1", group="handlers", consumer="w")


def test_the_registry_exports_exactly_the_metric_spec() -> None:
    """Every declared metric comes from metric_spec.METRICS with its kind, labels and HELP."""
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, process_collectors=False)
    store = StoreMetrics(registry)
    metrics.register_shard(0, ack_miss_limit=2, queue_capacity=5, transport="webhook")
    store.register_shard(0)
    from qqbot_gateway.telemetry.stream import StreamMetrics

    StreamMetrics(registry, publisher=_Publisher(), worker=_Worker())  # type: ignore[arg-type]
    ClusterMetrics(registry, [0])  # cluster mode's collectors (telemetry/cluster.py)
    exported = {}
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = {k for s in family.samples for k in s.labels if k not in ("le", "quantile")}
        exported[name] = (family.type, family.documentation, labels)
    spec = {m.full_name: (m.kind, m.help, set(m.labels)) for m in METRICS}
    assert set(exported) == set(spec)
    for name, (kind, help_text, labels) in exported.items():
        want_kind, want_help, want_labels = spec[name]
        assert (kind, help_text) == (want_kind, want_help), name
        # A family with no child yet (events_dispatched_total before an event) shows no labels.
        assert labels in (want_labels, set()), name


def test_docs_metrics_table_is_generated_from_the_spec() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "metrics.md").read_text("utf-8")
    begin = doc.index("<!-- BEGIN metrics")
    block = doc[doc.index("\n", begin) + 1 : doc.index("<!-- END metrics -->")]
    assert block == metrics_markdown(), "docs/metrics.md is stale: run scripts/gen_docs.py"


def test_docs_metrics_names_every_known_label_value() -> None:
    """The label values the code pre-creates are the ones the documentation lists."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "metrics.md").read_text("utf-8")
    known = [
        *(r for r in DISCONNECT_REASONS if not r.startswith("server_close:")),
        "server_close:other",
        *WEBHOOK_OUTCOMES,
        *(state.value for state in CS),
        *RESTART_RESUME_OUTCOMES,
    ]
    missing = [value for value in known if f"`{value}`" not in doc]
    assert not missing, f"docs/metrics.md does not name {missing}"
