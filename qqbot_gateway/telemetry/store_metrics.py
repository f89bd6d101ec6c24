"""Prometheus collectors for the session store (checkpoints, resumes after a restart).

Kept apart from :mod:`.metrics` (the per-frame hot path) because these change at most a few
times a second per shard. Fed by the adapter's lifecycle events ``CheckpointWritten``,
``CheckpointFailed`` and ``RestartResume`` (and, with the webhook transport, the intake
journal's ``JournalWritten`` and ``JournalReplayed``); shards are registered only when the
client runs with a session store, so a process without one exports no misleading checkpoint
age.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from qqbot_gateway.adapter import events as ev

from ._clock import Clock
from .metric_spec import counter, gauge, gauge_family, histogram

__all__ = ["RESTART_RESUME_OUTCOMES", "StoreMetrics"]

#: Every outcome of :class:`~qqbot_gateway.adapter.events.RestartResume`.
RESTART_RESUME_OUTCOMES: Final = ("resumed", "refused", "too_old", "unusable")


@dataclass(slots=True)
class _Shard:
    label: str
    started_at: float
    last_write_at: float | None = None


class StoreMetrics:
    """``observe(event)`` is the lifecycle subscriber; ``register_shard`` creates children."""

    def __init__(self, registry: CollectorRegistry, *, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self._shards: dict[int, _Shard] = {}
        r = registry
        self.writes = counter("checkpoint_writes_total", r)
        self.failures = counter("checkpoint_failures_total", r)
        self.seq = gauge("checkpoint_seq", r)
        self.lag = gauge("checkpoint_lag_events", r)
        self.restart_resumes = counter("restart_resumes_total", r)
        self.journal_write = histogram("webhook_journal_write_seconds", r)
        self.journal_replayed = counter("webhook_journal_replayed_total", r)
        self._journals: set[int] = set()
        registry.register(_AgeCollector(self))

    def register_journal(self, shard: int) -> None:
        """The webhook transport with the store on: its intake journal's children."""
        self._journals.add(shard)
        self.journal_write.labels(str(shard))
        self.journal_replayed.labels(str(shard))

    def register_shard(self, shard: int, *, now: float | None = None) -> None:
        if shard in self._shards:
            return
        label = str(shard)
        started = self.clock.monotonic() if now is None else now
        self._shards[shard] = _Shard(label=label, started_at=started)
        self.writes.labels(label)
        self.failures.labels(label)
        self.seq.labels(label)
        self.lag.labels(label)
        for outcome in RESTART_RESUME_OUTCOMES:
            self.restart_resumes.labels(label, outcome)

    def observe(self, event: ev.LifecycleEvent) -> None:
        kind = type(event)
        if kind is not ev.CheckpointWritten and kind is not ev.CheckpointFailed:
            if kind is ev.JournalWritten or kind is ev.JournalReplayed:
                self._observe_journal(event)
                return
            if kind is not ev.RestartResume:
                return
        if event.shard is None:
            return
        s = self._shards.get(event.shard)
        if s is None:
            return
        if isinstance(event, ev.CheckpointWritten):
            s.last_write_at = event.monotonic
            self.writes.labels(s.label).inc()
            self.seq.labels(s.label).set(event.seq)
            self.lag.labels(s.label).set(event.lag)
        elif isinstance(event, ev.CheckpointFailed):
            self.failures.labels(s.label).inc()
        elif isinstance(event, ev.RestartResume):
            outcome = event.outcome if event.outcome in RESTART_RESUME_OUTCOMES else "unusable"
            self.restart_resumes.labels(s.label, outcome).inc()

    def _observe_journal(self, event: ev.LifecycleEvent) -> None:
        if event.shard not in self._journals:
            return
        label = str(event.shard)
        if isinstance(event, ev.JournalWritten):
            self.journal_write.labels(label).observe(event.duration)
        elif isinstance(event, ev.JournalReplayed):
            self.journal_replayed.labels(label).inc(event.replayed)

    def ages(self) -> Iterable[tuple[str, float]]:
        now = self.clock.monotonic()
        for s in self._shards.values():
            since = s.started_at if s.last_write_at is None else s.last_write_at
            yield s.label, max(0.0, now - since)


class _AgeCollector(Collector):
    def __init__(self, metrics: StoreMetrics) -> None:
        self._m = metrics

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        for label, age in self._m.ages():
            family.add_metric([label], age)
        return [family]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return gauge_family("checkpoint_age_seconds")
