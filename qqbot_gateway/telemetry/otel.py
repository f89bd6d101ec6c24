"""OpenTelemetry traces from lifecycle events. Traces only: every metric lives in ``metrics``.

Spans are short and bounded; there is never one span per connection lifetime:

* ``qqbot.gateway.connect``: one connection attempt, ``ConnectAttempt`` -> ``SessionReady`` /
  ``SessionResumed`` (ok) or ``Disconnected`` / ``ShardFatal`` (error, with the reason);
  events on it mark the WebSocket opening and Hello.
* ``qqbot.gateway.identify`` / ``qqbot.gateway.resume``: children of the attempt, from
  ``IdentifySent`` / ``ResumeSent`` to READY / RESUMED (or the disconnect that ended them).
* ``qqbot.heartbeat``: one heartbeat, ``HeartbeatSent`` -> ``HeartbeatAcked``; an unanswered one
  ends with an error status when the next heartbeat or the disconnect comes. Its trace id is the
  exemplar of ``heartbeat_rtt_seconds``.
* ``qqbot.event <TYPE>``: one dispatched event, started when the session accepts it (so it shows
  the queue wait) and made current while the handlers run through ``client.handler_context``;
  log lines and outgoing calls made by handlers carry its trace id. Its trace id is the
  exemplar of ``events_dispatched_total``.

Sampling (what it costs to watch every event). Spans exist only when an exporter is configured
(:class:`~.core.Telemetry` builds no :class:`Tracing` otherwise: nobody would read them). With
one, the provider samples with ``ParentBased(root=_Sampler)``:

* connection attempts, Identify/Resume handshakes and heartbeats: always (a few per minute);
* dispatched events: a ratio (``sample_ratio``, ``QQBOT_TRACE_SAMPLE_RATIO``), decided when the
  event is accepted, before any span object exists, so an event sampled out costs one
  ``random()``; replayed events (received between Resume and RESUMED) are always sampled;
* an event sampled out whose handler fails, or whose handlers run for ``slow_handler`` seconds
  or more (``QQBOT_TRACE_SLOW_HANDLER``), still gets its span, made after the fact (start =
  handlers start, so without the queue wait), with ``qqbot.sampled_by`` telling why it was
  kept: a failure from ``HandlerFailed``, a slow run timed by ``handler_context`` itself (a
  small object per event, cheaper than a ``HandlerCompleted`` event per handler).

The :class:`~opentelemetry.sdk.trace.TracerProvider` belongs to :class:`Tracing` (never the
global one), so tests stay isolated and an application's own provider is left alone. Export:
an injected :class:`SpanExporter` (tests: ``InMemorySpanExporter``), else what the standard
``OTEL_*`` variables ask for (``OTEL_TRACES_EXPORTER=otlp|console|none``, or an
``OTEL_EXPORTER_OTLP[_TRACES]_ENDPOINT`` alone), else nothing: then there is no tracing at all
(no spans, no trace ids on log lines or exemplars), and no cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import random
import socket
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import Attributes

from qqbot_gateway._version import __version__
from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter.protocol import GatewayEvent

from ._clock import Clock

__all__ = ["TelemetryConfigError", "Tracing", "exporters_from_env"]

#: Event spans started but not yet handled, at most. Beyond it the oldest is ended (marked
#: unhandled): memory stays bounded even if handlers never run (no dispatcher, shutdown).
DEFAULT_MAX_PENDING: Final = 4096

#: Default share of dispatched events traced when an exporter is configured.
DEFAULT_SAMPLE_RATIO: Final = 0.01
#: Handlers running this long (seconds) are traced even when their event was sampled out.
DEFAULT_SLOW_HANDLER: Final = 1.0
#: Span attribute naming why a span was kept: always / ratio / replay / error / slow.
SAMPLED_BY: Final = "qqbot.sampled_by"

_EventKey = tuple[int, int | None, str | None, str]
_NULL_CONTEXT: Final = contextlib.nullcontext()


class _SlowWatch:
    """Times the handlers of an event that was sampled out; a slow run gets a span."""

    __slots__ = ("_event", "_started", "_tracing")

    def __init__(self, tracing: Tracing, event: GatewayEvent) -> None:
        self._tracing = tracing
        self._event = event
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = self._tracing.clock.monotonic()

    def __exit__(self, *exc_info: object) -> None:
        tracing = self._tracing
        ended = tracing.clock.monotonic()
        if ended - self._started >= tracing.slow_handler and not tracing.closed:
            event = self._event
            tracing._after_the_fact(event.shard, event.type, "slow", self._started, ended)


class _Sampler(Sampler):
    """Root sampler: spans that carry ``qqbot.sampled_by`` were chosen by :class:`Tracing`
    (always-sampled kinds, or an event that won its ratio draw, failed, was slow or replayed);
    anything else (a span an application starts on this provider) gets the trace-id ratio."""

    def __init__(self, ratio: float) -> None:
        self._ratio = TraceIdRatioBased(ratio)

    def should_sample(
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        if attributes and SAMPLED_BY in attributes:
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, None)
        return self._ratio.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"QQBotSampler{{{self._ratio.get_description()}}}"


class TelemetryConfigError(RuntimeError):
    """Telemetry was asked for something it cannot do (e.g. OTLP without the extra)."""


def exporters_from_env(env: Mapping[str, str] | None = None) -> list[SpanExporter]:
    """The span exporters the standard ``OTEL_*`` variables ask for (none by default)."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        names = ["otlp"] if endpoint else []
    if "none" in names:
        return []
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "otlp":
            exporters.append(_otlp_exporter(env))
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        else:
            raise TelemetryConfigError(
                f"OTEL_TRACES_EXPORTER={name!r} is not supported (use otlp, console or none)"
            )
    return exporters


def _otlp_exporter(env: Mapping[str, str]) -> SpanExporter:
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol == "grpc":
        module_name, extra = (
            "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
            "opentelemetry-exporter-otlp-proto-grpc",
        )
    elif protocol in ("http/protobuf", "http/json"):
        module_name, extra = (
            "opentelemetry.exporter.otlp.proto.http.trace_exporter",
            "qqbot-gateway[otlp]",
        )
    else:
        raise TelemetryConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TelemetryConfigError(
            f"OTLP trace export was requested ({protocol}) but its exporter is not installed: "
            f"pip install '{extra}' (or unset OTEL_TRACES_EXPORTER / OTEL_EXPORTER_OTLP_ENDPOINT)"
        ) from exc
    exporter: SpanExporter = module.OTLPSpanExporter()
    return exporter


@dataclass(slots=True)
class _ShardSpans:
    attempt: Span | None = None
    handshake: Span | None = None
    heartbeat: Span | None = None
    last_ack: trace.SpanContext | None = None


def _ids(ctx: trace.SpanContext) -> dict[str, str]:
    return {
        "trace_id": trace.format_trace_id(ctx.trace_id),
        "span_id": trace.format_span_id(ctx.span_id),
    }


class Tracing:
    """A lifecycle subscriber making the spans above, on a provider it owns."""

    def __init__(
        self,
        *,
        service_name: str = "qqbot-gateway",
        service_instance_id: str | None = None,
        shards: Sequence[int] = (),
        exporters: Iterable[SpanExporter] = (),
        test_exporter: SpanExporter | None = None,
        clock: Clock | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        sample_ratio: float = DEFAULT_SAMPLE_RATIO,
        slow_handler: float = DEFAULT_SLOW_HANDLER,
    ) -> None:
        if not 0.0 <= sample_ratio <= 1.0:
            raise ValueError("sample_ratio must be within 0..1")
        if slow_handler <= 0:
            raise ValueError("slow_handler must be positive")
        self.clock = clock or Clock()
        self.sample_ratio = sample_ratio
        self.slow_handler = slow_handler
        self._random = random.random
        attributes: dict[str, Any] = {
            "service.name": service_name,
            "service.instance.id": service_instance_id or socket.gethostname(),
            "service.version": __version__,
            "qqbot.shards": list(shards),
        }
        if len(shards) == 1:
            attributes["qqbot.shard"] = shards[0]
        self.provider = TracerProvider(
            resource=Resource.create(attributes),
            sampler=ParentBased(root=_Sampler(sample_ratio)),
        )
        if test_exporter is not None:
            # Synchronous: a test sees a span as soon as it ended.
            self.provider.add_span_processor(SimpleSpanProcessor(test_exporter))
        for exporter in exporters:
            self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("qqbot_gateway.telemetry", __version__)
        self._shards: dict[int, _ShardSpans] = {}
        self._pending: OrderedDict[_EventKey, Span] = OrderedDict()
        self._max_pending = max_pending
        #: The last sampled event span per (shard, type): exemplars of events_dispatched_total.
        self._last_by_type: dict[tuple[int, str], trace.SpanContext] = {}
        self._closed = False

    # --- subscriber ----------------------------------------------------------------------
    def observe(self, event: ev.LifecycleEvent) -> None:
        if self._closed:
            return
        if isinstance(event, ev.EventDispatched):
            self._on_dispatched(event)
            return
        if isinstance(event, ev.HandlerFailed):
            span = trace.get_current_span()
            after = not span.is_recording()
            if after:
                span = self._after_the_fact(
                    event.shard, event.event_type, "error", event.monotonic, event.monotonic
                )
            span.set_status(Status(StatusCode.ERROR, event.error_type))
            span.add_event(
                "handler.failed",
                {"qqbot.handler": event.handler, "error.type": event.error_type},
            )
            if after:
                span.end(end_time=self.clock.wall_ns_of(event.monotonic))
            return
        shard = event.shard
        if shard is None:
            return
        s = self._shards.get(shard)
        if s is None:
            s = self._shards[shard] = _ShardSpans()
        t = self.clock.wall_ns_of(event.monotonic)
        if isinstance(event, ev.HeartbeatSent):
            self._end(s.heartbeat, t, error="heartbeat not acknowledged before the next one")
            s.heartbeat = self.tracer.start_span(
                "qqbot.heartbeat",
                context=trace.set_span_in_context(trace.INVALID_SPAN),
                kind=SpanKind.CLIENT,
                start_time=t,
                attributes={
                    "qqbot.shard": shard,
                    "qqbot.heartbeat.unacked": event.unacked,
                    SAMPLED_BY: "always",
                },
            )
        elif isinstance(event, ev.HeartbeatAcked):
            acked, s.heartbeat = s.heartbeat, None
            if acked is not None:
                acked.set_attribute("qqbot.heartbeat.rtt_s", event.rtt)
                s.last_ack = acked.get_span_context()
                acked.end(end_time=t)
        elif isinstance(event, ev.ConnectAttempt):
            self._end(s.handshake, t, error="superseded by a new attempt")
            self._end(s.attempt, t, error="superseded by a new attempt")
            s.handshake = None
            s.attempt = self.tracer.start_span(
                "qqbot.gateway.connect",
                context=trace.set_span_in_context(trace.INVALID_SPAN),
                kind=SpanKind.CLIENT,
                start_time=t,
                attributes={
                    "qqbot.shard": shard,
                    "qqbot.attempt": event.attempt,
                    "qqbot.resume": event.resume,
                    SAMPLED_BY: "always",
                },
            )
        elif isinstance(event, ev.Connected):
            if s.attempt is not None:
                s.attempt.set_attribute("qqbot.connection_id", event.connection_id)
                s.attempt.add_event("websocket.open", timestamp=t)
        elif isinstance(event, ev.HelloReceived):
            if s.attempt is not None:
                s.attempt.add_event(
                    "hello", {"qqbot.heartbeat_interval_s": event.heartbeat_interval}, timestamp=t
                )
        elif isinstance(event, ev.IdentifySent | ev.ResumeSent):
            self._end(s.handshake, t, error="superseded")
            parent = trace.set_span_in_context(s.attempt) if s.attempt is not None else None
            resume = isinstance(event, ev.ResumeSent)
            attributes: dict[str, Any] = {"qqbot.shard": shard, SAMPLED_BY: "always"}
            if isinstance(event, ev.ResumeSent):
                attributes["qqbot.resume.seq"] = event.seq
            else:
                attributes["qqbot.intents"] = event.intents
            s.handshake = self.tracer.start_span(
                "qqbot.gateway.resume" if resume else "qqbot.gateway.identify",
                context=parent,
                kind=SpanKind.CLIENT,
                start_time=t,
                attributes=attributes,
            )
        elif isinstance(event, ev.SessionReady | ev.SessionResumed):
            for done in (s.handshake, s.attempt):
                if done is not None:
                    done.set_attribute("qqbot.session_id", event.session_id)
                    if isinstance(event, ev.SessionResumed):
                        done.set_attribute("qqbot.resume.replayed", event.replayed)
                    done.set_status(Status(StatusCode.OK))
                    done.end(end_time=t)
            s.handshake = s.attempt = None
        elif isinstance(event, ev.ZombieDetected):
            self._end(s.heartbeat, t, error=f"zombie connection: {event.reason}")
            s.heartbeat = None
        elif isinstance(event, ev.Disconnected):
            error = f"disconnected: {event.reason}"
            for failed in (s.handshake, s.attempt):
                if failed is not None:
                    failed.set_attribute("qqbot.disconnect.reason", event.reason)
                    if event.close_code is not None:
                        failed.set_attribute("qqbot.close_code", event.close_code)
            self._end(s.heartbeat, t, error=error)
            self._end(s.handshake, t, error=error)
            self._end(s.attempt, t, error=error)
            s.heartbeat = s.handshake = s.attempt = None
        elif isinstance(event, ev.ShardFatal | ev.SupervisorStopped):
            error = f"shard stopped: {event.reason}"
            for stopped in (s.heartbeat, s.handshake, s.attempt):
                self._end(stopped, t, error=error)
            s.heartbeat = s.handshake = s.attempt = None

    def _after_the_fact(
        self, shard: int | None, event_type: str, why: str, started: float, ended: float
    ) -> Span:
        """A span for an event that was sampled out but turned out worth keeping."""
        span = self.tracer.start_span(
            f"qqbot.event {event_type}",
            context=trace.set_span_in_context(trace.INVALID_SPAN),
            kind=SpanKind.CONSUMER,
            start_time=self.clock.wall_ns_of(started),
            attributes={
                "qqbot.shard": shard if shard is not None else -1,
                "qqbot.event.type": event_type,
                SAMPLED_BY: why,
            },
        )
        if why == "slow":
            span.set_attribute("qqbot.handler.duration_s", ended - started)
            span.end(end_time=self.clock.wall_ns_of(ended))
        return span

    def _on_dispatched(self, event: ev.EventDispatched) -> None:
        if event.replayed:
            why = "replay"
        elif self.sample_ratio >= 1.0 or self._random() < self.sample_ratio:
            why = "ratio"
        else:
            return  # sampled out: no span, no bookkeeping (failures and slow ones come later)
        shard = event.shard if event.shard is not None else -1
        span = self.tracer.start_span(
            f"qqbot.event {event.event_type}",
            context=trace.set_span_in_context(trace.INVALID_SPAN),
            kind=SpanKind.CONSUMER,
            start_time=self.clock.wall_ns_of(event.monotonic),
            attributes={
                "qqbot.shard": shard,
                "qqbot.event.type": event.event_type,
                "qqbot.event.seq": event.seq if event.seq is not None else -1,
                "qqbot.event.id": event.event_id or "",
                "qqbot.event.replayed": event.replayed,
                SAMPLED_BY: why,
            },
        )
        by_type = self._last_by_type
        if len(by_type) < 4 * DEFAULT_MAX_PENDING or (shard, event.event_type) in by_type:
            by_type[(shard, event.event_type)] = span.get_span_context()
        key = (shard, event.seq, event.event_id, event.event_type)
        self._pending[key] = span
        if len(self._pending) > self._max_pending:
            _, oldest = self._pending.popitem(last=False)
            oldest.set_attribute("qqbot.event.unhandled", True)
            oldest.end()

    @staticmethod
    def _end(span: Span | None, t: int, *, error: str) -> None:
        if span is None or not span.is_recording():
            return
        span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=t)

    # --- exemplars and the handler hook --------------------------------------------------
    def exemplar(self, event: ev.LifecycleEvent) -> dict[str, str] | None:
        """Trace ids for the sample this event produces (called right after ``observe``): the
        heartbeat span of a ``HeartbeatAcked`` (``events_dispatched_total`` takes its exemplars
        at scrape time, :meth:`dispatch_exemplar`)."""
        ctx: trace.SpanContext | None = None
        if isinstance(event, ev.HeartbeatAcked) and event.shard is not None:
            s = self._shards.get(event.shard)
            ctx = s.last_ack if s is not None else None
        if ctx is None or not ctx.is_valid:
            return None
        return _ids(ctx)

    def dispatch_exemplar(self, shard: int, event_type: str) -> dict[str, str] | None:
        """Trace ids of the last sampled span of this shard and event type, for the
        ``events_dispatched_total`` exemplar read at scrape time."""
        ctx = self._last_by_type.get((shard, event_type))
        return _ids(ctx) if ctx is not None and ctx.is_valid else None

    def handler_context(self, event: GatewayEvent) -> AbstractContextManager[Any]:
        """``client.handler_context``: the event's span is current while its handlers run.

        An event that was sampled out has no span: nothing is made current, and its handlers are
        timed, so that a slow run still gets one after the fact (see the module docstring)."""
        if self._pending:
            span = self._pending.pop((event.shard, event.seq, event.event_id, event.type), None)
            if span is not None:
                return self._run_in(span)
        return _SlowWatch(self, event)

    @contextlib.contextmanager
    def _run_in(self, span: Span) -> Iterator[Span]:
        span.add_event("handlers.start")
        with trace.use_span(span, end_on_exit=True):
            yield span

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending_events(self) -> int:
        return len(self._pending)

    # --- lifecycle -----------------------------------------------------------------------
    def end_all(self) -> None:
        """End every open span (shutdown): nothing is left dangling in the exporter."""
        t = self.clock.wall_ns_of(self.clock.monotonic())
        for s in self._shards.values():
            for open_span in (s.heartbeat, s.handshake, s.attempt):
                self._end(open_span, t, error="telemetry stopped")
            s.heartbeat = s.handshake = s.attempt = None
        while self._pending:
            _, span = self._pending.popitem(last=False)
            span.set_attribute("qqbot.event.unhandled", True)
            span.end(end_time=t)

    async def shutdown(self, within: float = 5.0) -> None:
        """End open spans, flush and shut the provider down, bounded by ``within``."""
        if self._closed:
            return
        self.end_all()
        self._closed = True
        # The SDK's shutdown blocks (a batch exporter may be posting to a collector): run it
        # off the loop and stop waiting after ``within``.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await asyncio.to_thread(self.provider.shutdown)
