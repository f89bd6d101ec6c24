"""Telemetry overhead per dispatched event, against the adapter's real per-event cost.

The baseline is the adapter's own work for one event, in process, without sockets: a ~390-byte
``C2C_MESSAGE_CREATE`` frame (bytes, as the connection reads it) through a real
``GatewaySession`` (parse, dedupe, counters), the connection's action loop, and a real
``Dispatcher`` (bounded queue, handler task, a no-op handler). The same pipeline then runs with
``Telemetry`` attached as ``qqbot-gateway run`` wires it (metrics, health, logs; no trace
exporter, so no spans), and with a trace exporter (a no-op one, spans exported synchronously)
at the default sample ratio, at 0.1 and at 1.0. The ratio is telemetry's cost over what the
adapter itself spends per event; the old version of this script divided by an empty bus
(68 ns), which hid the real overhead in both directions. End to end over sockets, see
``bench_throughput``. A script, not a test::

    .venv/bin/python -m benchmarks.bench_telemetry [N]
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from benchmarks._inproc import Reader, open_session
from qqbot_gateway.adapter.dispatch import Dispatcher
from qqbot_gateway.adapter.protocol import GatewayEvent
from qqbot_gateway.adapter.session import GatewaySession
from qqbot_gateway.telemetry import Telemetry, TelemetryConfig
from qqbot_gateway.telemetry.otel import DEFAULT_SAMPLE_RATIO
from tests.test_telemetry_support import FakeClient, FakeConfig


class NullExporter(SpanExporter):
    """Accepts spans and drops them: the SDK's work without a collector's."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def frames(n: int) -> list[bytes]:
    from benchmarks.bench_throughput import _c2c_frame

    return [_c2c_frame(seq) for seq in range(2, n + 2)]


async def run(mode: str, payloads: list[bytes]) -> float:
    """ns per event through session + actions + dispatcher, with telemetry per ``mode``."""
    client = FakeClient(FakeConfig(handler_queue_size=len(payloads) + 10))
    bus = client.events
    session = GatewaySession(intents=1 << 25)
    session.interest = bus.interest(0)
    client.stats = {0: session.stats}  # type: ignore[attr-defined]
    if mode != "off":
        exporter = NullExporter() if mode.startswith("traced") else None
        ratio = {"traced-all": 1.0, "traced10": 0.1}.get(mode, DEFAULT_SAMPLE_RATIO)
        tel = Telemetry(
            TelemetryConfig(http_port=None, trace_sample_ratio=ratio),
            span_exporter=exporter,
            process_collectors=False,
            env={},
        )
        tel.attach(client)
    handled = 0

    def handler(event: GatewayEvent) -> None:
        nonlocal handled
        handled += 1

    dispatcher = Dispatcher(
        session,
        bus=bus,
        handlers=lambda t: [handler],
        capacity=len(payloads) + 10,
        around_event=lambda: client.handler_context,
    )
    dispatcher.start()
    open_session(session)
    reader = Reader(session, dispatcher, bus)

    gc.collect()
    start = time.perf_counter_ns()
    batch = 200
    for i in range(0, len(payloads), batch):
        reader.push(payloads[i : i + batch])
        while not (reader.idle and dispatcher.idle):  # noqa: ASYNC110 - no drained event
            await asyncio.sleep(0)
    elapsed = time.perf_counter_ns() - start
    await reader.close()
    await dispatcher.close(1.0)
    assert handled == len(payloads)
    return elapsed / len(payloads)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    payloads = frames(n)
    modes = ("off", "telemetry", "traced", "traced10", "traced-all")
    results: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(3):  # interleaved, best of 3 per mode
        for mode in modes:
            results[mode].append(asyncio.run(run(mode, payloads)))
    best = {m: min(v) for m, v in results.items()}
    base = best["off"]
    labels = {
        "off": "adapter alone (no telemetry)",
        "telemetry": "telemetry as shipped (no trace exporter)",
        "traced": f"with a trace exporter, ratio {DEFAULT_SAMPLE_RATIO} (default)",
        "traced10": "with a trace exporter, ratio 0.1",
        "traced-all": "with a trace exporter, ratio 1.0",
    }
    print(f"events: {n}, per event (best of 3):")
    for mode in modes:
        cost = best[mode]
        print(f"  {labels[mode]:44s} {cost:7.0f} ns  ({cost / base - 1:+6.1%} over the adapter)")


if __name__ == "__main__":
    main()
