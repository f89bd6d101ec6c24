"""Telemetry overhead per lifecycle event: the bus with and without telemetry subscribed.

Feeds N synthetic events (the mix of a busy connection: per dispatched event one frame, one
EventDispatched, one queue-depth change, one handler completion) through an EventBus, first
with no subscriber, then with Telemetry attached (metrics + health + logs + tracing), then
with tracing off, and prints ns/event and the ratio. A script, not a test::

    .venv/bin/python -m benchmarks.bench_telemetry [N]
"""

from __future__ import annotations

import sys
import time

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.telemetry import Telemetry, TelemetryConfig
from tests.test_telemetry_support import FakeClient


def make_events(n: int) -> list[ev.LifecycleEvent]:
    out: list[ev.LifecycleEvent] = []
    for i in range(n // 4):
        t = float(i)
        out += [
            ev.FrameReceived(shard=0, monotonic=t, op=0, event_type="C2C_MESSAGE_CREATE", size=300),
            ev.EventDispatched(
                shard=0,
                monotonic=t,
                event_type="C2C_MESSAGE_CREATE",
                seq=i,
                event_id=f"e{i}",
                replayed=False,
            ),
            ev.HandlerQueueDepth(shard=0, monotonic=t, depth=1, capacity=1000),
            ev.HandlerCompleted(
                shard=0, monotonic=t, event_type="C2C_MESSAGE_CREATE", duration=0.001
            ),
        ]
    return out


def run(bus: ev.EventBus, events: list[ev.LifecycleEvent]) -> float:
    emit = bus.emit
    start = time.perf_counter_ns()
    for event in events:
        emit(event)
    return (time.perf_counter_ns() - start) / len(events)


def measure(tracing: bool | None, events: list[ev.LifecycleEvent]) -> float:
    client = FakeClient()
    if tracing is not None:
        tel = Telemetry(TelemetryConfig(http_port=None, tracing=tracing), process_collectors=False)
        tel.attach(client)
    run(client.events, events[: len(events) // 10])  # warm up
    return min(run(client.events, events) for _ in range(3))


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    events = make_events(n)
    off = measure(None, events)
    metrics_only = measure(False, events)
    full = measure(True, events)
    print(f"events: {len(events)}")
    print(f"telemetry off:              {off:8.0f} ns/event")
    print(f"telemetry on, tracing off:  {metrics_only:8.0f} ns/event  ({metrics_only / off:5.1f}x)")
    print(f"telemetry on, tracing on:   {full:8.0f} ns/event  ({full / off:5.1f}x)")
    print(
        f"added cost per event:       {full - off:8.0f} ns (tracing on), "
        f"{metrics_only - off:.0f} ns (tracing off)"
    )


if __name__ == "__main__":
    main()
