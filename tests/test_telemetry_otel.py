"""Spans from lifecycle events, on a provider Telemetry owns, with an in-memory exporter."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter.protocol import GatewayEvent
from qqbot_gateway.telemetry import Telemetry, TelemetryConfig, TelemetryConfigError
from qqbot_gateway.telemetry.otel import exporters_from_env

from .test_telemetry_support import FakeClient, Feeder


def attrs(span: ReadableSpan) -> Mapping[str, Any]:
    assert span.attributes is not None
    return span.attributes


def seconds(span: ReadableSpan) -> float:
    assert span.start_time is not None and span.end_time is not None
    return (span.end_time - span.start_time) / 1e9


def rig() -> tuple[Telemetry, FakeClient, Feeder, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tel = Telemetry(
        TelemetryConfig(http_port=None, service_instance_id="pod-0", trace_sample_ratio=1.0),
        span_exporter=exporter,
        process_collectors=False,
    )
    client = FakeClient()
    tel.attach(client)
    return tel, client, Feeder(client.events), exporter


def test_connect_identify_spans_are_short_and_ok() -> None:
    _, _, f, exporter = rig()
    f.connect(1.0)
    f.ready(1.5)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    connect, identify = spans["qqbot.gateway.connect"], spans["qqbot.gateway.identify"]
    assert identify.parent is not None and identify.parent.span_id == connect.context.span_id
    assert connect.status.status_code is StatusCode.OK
    assert seconds(connect) == pytest.approx(0.5, abs=1e-3)
    assert attrs(connect)["qqbot.shard"] == 0
    assert [e.name for e in connect.events] == ["websocket.open", "hello"]
    res = connect.resource.attributes
    assert res["service.name"] == "qqbot-gateway" and res["service.instance.id"] == "pod-0"
    assert res["qqbot.shard"] == 0
    # The connection lives on; no span is open for it.
    f.heartbeat(2.0)
    f.ack(2.03)
    names = [s.name for s in exporter.get_finished_spans()]
    assert names.count("qqbot.heartbeat") == 1


def test_resume_failure_ends_spans_with_the_reason() -> None:
    _, _, f, exporter = rig()
    f.connect(1.0, resume=True)
    f.emit(ev.ResumeSent, 1.0, session_id="s", seq=4)
    f.heartbeat(2.0)
    f.disconnect(3.0, "invalid_session")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    for name in ("qqbot.gateway.resume", "qqbot.gateway.connect", "qqbot.heartbeat"):
        assert spans[name].status.status_code is StatusCode.ERROR, name
    assert attrs(spans["qqbot.gateway.resume"])["qqbot.disconnect.reason"] == "invalid_session"
    f.connect(4.0, resume=True)
    f.emit(ev.ResumeSent, 4.0, session_id="s", seq=4)
    f.emit(ev.SessionResumed, 4.2, session_id="s", replayed=2, resume_started=4.0)
    resumed = [s for s in exporter.get_finished_spans() if s.name == "qqbot.gateway.resume"][-1]
    assert resumed.status.status_code is StatusCode.OK
    assert attrs(resumed)["qqbot.resume.replayed"] == 2


def test_event_span_is_current_in_handlers_and_records_failures() -> None:
    tel, client, f, exporter = rig()
    assert client.handler_context is not None
    f.emit(
        ev.EventDispatched,
        1.0,
        event_type="C2C_MESSAGE_CREATE",
        seq=7,
        event_id="e7",
        replayed=False,
    )
    event = GatewayEvent(
        type="C2C_MESSAGE_CREATE", data={}, seq=7, event_id="e7", shard=0, session_id="s"
    )
    with client.handler_context(event):
        current = trace.get_current_span()
        assert current.is_recording()
        f.emit(
            ev.HandlerFailed,
            1.1,
            event_type="C2C_MESSAGE_CREATE",
            handler="h",
            error_type="KeyError",
            error="x",
        )
    (span,) = [s for s in exporter.get_finished_spans() if s.name.startswith("qqbot.event")]
    assert span.name == "qqbot.event C2C_MESSAGE_CREATE"
    assert span.context.span_id == current.get_span_context().span_id
    assert span.status.status_code is StatusCode.ERROR
    assert attrs(span)["qqbot.event.seq"] == 7
    assert tel.tracing is not None and tel.tracing.pending_events == 0


def test_pending_event_spans_are_bounded() -> None:
    tel, _, f, exporter = rig()
    assert tel.tracing is not None
    tel.tracing._max_pending = 10
    for seq in range(25):
        f.emit(ev.EventDispatched, 1.0, event_type="X", seq=seq, event_id=None, replayed=False)
    assert tel.tracing.pending_events == 10
    assert len(exporter.get_finished_spans()) == 15


async def test_stop_ends_open_spans_and_unhooks() -> None:
    tel, client, f, exporter = rig()
    f.connect(1.0)
    f.emit(ev.EventDispatched, 1.0, event_type="X", seq=1, event_id=None, replayed=False)
    await tel.start()
    await tel.stop()
    names = sorted(s.name for s in exporter.get_finished_spans())
    assert names == ["qqbot.event X", "qqbot.gateway.connect"]
    assert client.handler_context is None
    assert trace.get_tracer_provider() is not tel.tracing.provider  # type: ignore[union-attr]


def test_exporters_from_env() -> None:
    assert exporters_from_env({}) == []
    assert (
        exporters_from_env(
            {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}
        )
        == []
    )
    assert exporters_from_env({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}) == []
    (otlp,) = exporters_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert type(otlp).__name__ == "OTLPSpanExporter"
    otlp.shutdown()
    with pytest.raises(TelemetryConfigError, match="not supported"):
        exporters_from_env({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_missing_exporter_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(TelemetryConfigError, match=r"pip install 'qqbot-gateway\[otlp\]'"):
        Telemetry(TelemetryConfig(http_port=None), env={"OTEL_TRACES_EXPORTER": "otlp"})


def sampled_rig(ratio: float) -> tuple[Telemetry, FakeClient, Feeder, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tel = Telemetry(
        TelemetryConfig(http_port=None, trace_sample_ratio=ratio, trace_slow_handler=0.5),
        span_exporter=exporter,
        process_collectors=False,
    )
    client = FakeClient()
    tel.attach(client)
    return tel, client, Feeder(client.events), exporter


def test_no_exporter_no_tracing() -> None:
    tel = Telemetry(TelemetryConfig(http_port=None), env={}, process_collectors=False)
    client = FakeClient()
    tel.attach(client)
    assert tel.tracing is None and client.handler_context is None
    f = Feeder(client.events)
    f.connect(1.0)
    f.ready(1.5)  # nothing to record into, nothing fails


def _dispatch(f: Feeder, seq: int, *, replayed: bool = False) -> GatewayEvent:
    f.emit(ev.EventDispatched, 1.0, event_type="C", seq=seq, event_id=None, replayed=replayed)
    return GatewayEvent(type="C", data={}, seq=seq, event_id=None, shard=0, session_id="s")


def test_sampled_out_events_still_trace_errors_slow_handlers_and_replays() -> None:
    tel, client, f, exporter = sampled_rig(0.0)
    assert client.handler_context is not None
    f.connect(1.0)
    f.ready(1.5)  # attempts and handshakes: always
    now = [2.0]
    tel.clock.monotonic = lambda: now[0]
    # Wall time fixed too: span times are wall_now - (mono_now - mono), and a real wall clock
    # moving between the span's start and end (a loaded machine) would stretch the durations.
    tel.clock.wall = lambda: 1.7e9
    for seq in range(2, 50):  # sampled out: no span, nothing current in handlers
        with client.handler_context(_dispatch(f, seq)):
            assert not trace.get_current_span().is_recording()
            now[0] += 0.01
    assert tel.tracing is not None and tel.tracing.pending_events == 0
    names = [s.name for s in exporter.get_finished_spans()]
    assert names == ["qqbot.gateway.identify", "qqbot.gateway.connect"]
    with client.handler_context(_dispatch(f, 50)):
        f.emit(ev.HandlerFailed, 3.0, event_type="C", handler="h", error_type="KeyError", error="x")
    with client.handler_context(_dispatch(f, 51)):
        now[0] += 0.75  # slow
    with client.handler_context(_dispatch(f, 52, replayed=True)):
        assert trace.get_current_span().is_recording()
    events = [s for s in exporter.get_finished_spans() if s.name == "qqbot.event C"]
    by = {attrs(s)["qqbot.sampled_by"]: s for s in events}
    assert sorted(by) == ["error", "replay", "slow"]
    assert by["error"].status.status_code is StatusCode.ERROR
    assert [e.name for e in by["error"].events] == ["handler.failed"]
    slow = by["slow"]
    assert seconds(slow) == pytest.approx(0.75, abs=1e-3)
    assert attrs(by["replay"])["qqbot.event.replayed"] is True


def test_sample_ratio_keeps_about_that_share() -> None:
    tel, client, f, exporter = sampled_rig(0.25)
    assert tel.tracing is not None
    tel.tracing._random = iter([0.1, 0.9, 0.3, 0.2] * 50).__next__
    assert client.handler_context is not None
    for seq in range(200):
        with client.handler_context(_dispatch(f, seq)):
            pass
    assert len(exporter.get_finished_spans()) == 100


def test_sampling_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="trace_sample_ratio"):
        TelemetryConfig(trace_sample_ratio=1.5)
    with pytest.raises(ValueError, match="trace_slow_handler"):
        TelemetryConfig(trace_slow_handler=0)


async def test_stream_delivery_ends_each_event_span_once_its_append_is_durable() -> None:
    """The batch sink path (``QQBOT_DELIVERY=stream``): no handler runs here, and each sampled
    event's span ends once the sink returned (not left pending until the bound drops it as
    unhandled); the "handler duration" is the batch's append, counted once per event."""
    import asyncio

    from qqbot_gateway.adapter.dispatch import Dispatcher
    from qqbot_gateway.adapter.session import GatewaySession

    tel, client, f, exporter = rig()
    assert tel.tracing is not None and client.handler_context is not None
    session = GatewaySession(shard_id=0, shard_count=1, intents=1)
    release = asyncio.Event()
    appended: list[int | None] = []
    ended_before_release: list[int] = []

    async def sink(events: list[GatewayEvent]) -> None:
        await release.wait()
        ended_before_release.append(len(exporter.get_finished_spans()))
        appended.extend(e.seq for e in events)

    completed: list[ev.HandlerCompleted] = []
    client.events.subscribe_to(ev.HandlerCompleted, completed.append)
    context = client.handler_context
    dispatcher = Dispatcher(
        session,
        bus=client.events,
        handlers=lambda t: [],
        capacity=100,
        sink=sink,
        around_event=lambda: context,
    )
    dispatcher.start()
    for seq in range(1, 6):
        dispatcher.put(_dispatch(f, seq))
    await asyncio.sleep(0.05)
    assert tel.tracing.pending_events == 5, "accepted, not durable yet: the spans are open"
    release.set()
    async with asyncio.timeout(10):
        while len(appended) < 5:  # noqa: ASYNC110 - the dispatcher's task appends
            await asyncio.sleep(0.01)
    assert await dispatcher.close(1.0) == 0
    assert ended_before_release == [0]
    spans = [s for s in exporter.get_finished_spans() if s.name == "qqbot.event C"]
    assert sorted(attrs(s)["qqbot.event.seq"] for s in spans) == [1, 2, 3, 4, 5]
    assert all("qqbot.event.unhandled" not in attrs(s) for s in spans)
    assert tel.tracing.pending_events == 0
    assert session.stats.handled == 5, "each event counted once"
    assert [c.event_type for c in completed] == ["C"] * 5
