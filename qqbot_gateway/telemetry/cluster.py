"""Prometheus collectors for cluster mode (``QQBOT_REDIS_URL``): shard leases, takeovers,
fencing refusals and Redis errors.

A :class:`~qqbot_gateway.cluster.shards.ClusterObserver`: the ownership loops call it directly
(ownership changes a few times a day, renewals a few times per lease), and an exception here is
logged and ignored there: metrics never steer. Children for every shard and every known label
value exist at zero from the start, so a rate() over them is defined before the first event.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from prometheus_client import CollectorRegistry

from .metric_spec import counter, gauge, histogram

__all__ = ["LEASE_LOSS_REASONS", "REDIS_OPERATIONS", "TAKEOVER_CAUSES", "ClusterMetrics"]

TAKEOVER_CAUSES: Final = ("expired", "released")
LEASE_LOSS_REASONS: Final = ("expired", "lost")
RENEW_FAILURE_REASONS: Final = ("error", "lost")
#: Lease commands, and the webhook replicas' intake commands.
REDIS_OPERATIONS: Final = ("acquire", "renew", "release", "append", "ack", "claim")


class ClusterMetrics:
    """The cluster observer: pass it as ``observer=`` to the shard ownership."""

    def __init__(self, registry: CollectorRegistry, shards: Iterable[int]) -> None:
        r = registry
        self.owner = gauge("shard_owner", r)
        self.token = gauge("shard_fencing_token", r)
        self.renew_seconds = histogram("lease_renew_seconds", r)
        self.renew_failures = counter("lease_renew_failures_total", r)
        self.takeovers = counter("lease_takeovers_total", r)
        self.losses = counter("lease_losses_total", r)
        self.refusals = counter("fencing_refusals_total", r)
        self.redis_errors = counter("redis_errors_total", r)
        for op in REDIS_OPERATIONS:
            self.redis_errors.labels(op)
        for shard in shards:
            label = str(shard)
            self.owner.labels(label).set(0)
            self.token.labels(label).set(0)
            self.renew_seconds.labels(label)
            self.refusals.labels(label)
            for reason in RENEW_FAILURE_REASONS:
                self.renew_failures.labels(label, reason)
            for cause in TAKEOVER_CAUSES:
                self.takeovers.labels(label, cause)
            for reason in LEASE_LOSS_REASONS:
                self.losses.labels(label, reason)

    def role(self, shard: int, owner: bool, token: int | None) -> None:
        self.owner.labels(str(shard)).set(1 if owner else 0)
        self.token.labels(str(shard)).set(token or 0)

    def renewed(self, shard: int, seconds: float) -> None:
        self.renew_seconds.labels(str(shard)).observe(seconds)

    def renew_failed(self, shard: int, reason: str) -> None:
        self.renew_failures.labels(str(shard), reason).inc()

    def takeover(self, shard: int, cause: str) -> None:
        if cause in TAKEOVER_CAUSES:
            self.takeovers.labels(str(shard), cause).inc()

    def lost(self, shard: int, kind: str) -> None:
        if kind in LEASE_LOSS_REASONS:
            self.losses.labels(str(shard), kind).inc()

    def redis_error(self, operation: str) -> None:
        self.redis_errors.labels(operation).inc()

    def fenced(self, shard: int) -> None:
        self.refusals.labels(str(shard)).inc()
