"""Prometheus collectors for the event stream (``QQBOT_DELIVERY=stream``) and its workers.

Everything is computed at scrape time from counters the publisher and the worker keep anyway
and from the stream state they last read from Redis (every poll, a few commands): nothing here
is on an event's path, and a scrape never waits on Redis.

* ``run`` with stream delivery: :class:`StreamMetrics` with ``publisher=`` (appends, failed
  and blocked appends, the stream's length and bound, every group's lag and pending entries,
  dead letters).
* ``worker``: ``worker=`` (the same stream gauges, plus this consumer's handled / failed /
  duplicate events, claims, dead letters, handler duration, end-to-end latency, in flight, and
  ``build_info`` like the gateway's, so that a worker's job shows in the dashboard's ``$job``).
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from qqbot_gateway._version import __version__

from .metric_spec import counter_family, gauge_family, histogram_family

if TYPE_CHECKING:
    from qqbot_gateway.cluster.stream import StreamPublisher, StreamState
    from qqbot_gateway.cluster.worker import StreamWorker

__all__ = ["WORKER_OUTCOMES", "StreamMetrics"]

#: Every ``outcome`` of ``worker_events_total``.
WORKER_OUTCOMES: Final = ("handled", "failed", "duplicate")


class StreamMetrics(Collector):
    """Registers itself on ``registry``; give it the publisher (``run``) or the worker."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        publisher: StreamPublisher | None = None,
        worker: StreamWorker | None = None,
    ) -> None:
        self.publisher = publisher
        self.worker = worker
        registry.register(self)

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        state: StreamState | None = None
        publisher, worker = self.publisher, self.worker
        if publisher is not None:
            state = publisher.state
            appended = counter_family("stream_appended_total")
            appended.add_metric([], publisher.appended)
            failures = counter_family("stream_append_failures_total")
            failures.add_metric([], publisher.append_failures)
            blocked = counter_family("stream_append_blocked_total")
            blocked.add_metric([], publisher.blocked)
            bound = gauge_family("stream_max_length")
            bound.add_metric([], publisher.max_len)
            yield from (appended, failures, blocked, bound)
        if worker is not None and state is None:
            state = worker.stats.state
        length = gauge_family("stream_length")
        lag = gauge_family("stream_group_lag")
        pending = gauge_family("stream_group_pending")
        consumers = gauge_family("stream_group_consumers")
        dead = gauge_family("stream_dead_letters")
        if state is not None:
            length.add_metric([], state.length)
            dead.add_metric([], state.dead_letters)
            for g in state.groups:
                if g.lag is not None:
                    lag.add_metric([g.name], g.lag)
                pending.add_metric([g.name], g.pending)
                consumers.add_metric([g.name], g.consumers)
        yield from (length, lag, pending, consumers, dead)
        if worker is None:
            return
        yield from _worker_families(worker)


def _worker_families(worker: StreamWorker) -> Iterable[Metric]:
    from qqbot_gateway.cluster.worker import HANDLER_SECONDS_BUCKETS

    s, cfg = worker.stats, worker.config
    labels = [cfg.group, cfg.consumer]
    events = counter_family("worker_events_total")
    for outcome, value in zip(WORKER_OUTCOMES, (s.handled, s.failed, s.duplicates), strict=True):
        events.add_metric([*labels, outcome], value)
    claims = counter_family("worker_claims_total")
    claims.add_metric(labels, s.claimed)
    dead = counter_family("worker_dead_letters_total")
    dead.add_metric(labels, s.dead_letters)
    in_flight = gauge_family("worker_in_flight")
    in_flight.add_metric(labels, s.in_flight)
    up = gauge_family("worker_redis_up")
    up.add_metric(labels, 1 if s.redis_ok else 0)
    duration = histogram_family("worker_handler_duration_seconds")
    duration.add_metric(
        labels, _buckets(s.handler_buckets, HANDLER_SECONDS_BUCKETS), s.handler_seconds
    )
    latency = histogram_family("worker_event_latency_seconds")
    latency.add_metric(
        labels, _buckets(s.latency_buckets, HANDLER_SECONDS_BUCKETS), s.latency_seconds
    )
    build = gauge_family("build_info")
    build.add_metric([__version__, platform.python_version()], 1)
    yield from (events, claims, dead, in_flight, up, duration, latency, build)


def _buckets(counts: list[int], bounds: tuple[float, ...]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip(bounds, counts, strict=False):
        total += count
        out.append((repr(float(bound)), float(total)))
    total += counts[-1]
    out.append(("+Inf", float(total)))
    return out
