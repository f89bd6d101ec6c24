"""Cluster mode's pieces for one process, opened from the settings (the service's composition
root calls :func:`open_cluster` before it builds the client)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from qqbot_gateway.adapter.protocol import GatewayEvent
from qqbot_gateway.adapter.store import SessionStore
from qqbot_gateway.adapter.webhook_mode import SharedIntake, SharedIntakeFactory

from .connect import (
    DEFAULT_CONNECT_TIMEOUT,
    RedisTarget,
    close_redis,
    open_redis,
    parse_redis_url,
)
from .intake import RedisIntake
from .shards import ClusterObserver, ShardOwnership
from .store import RedisSessionStore, close_sync_redis, open_sync_redis

if TYPE_CHECKING:
    import redis
    from redis.asyncio import Redis

__all__ = ["Cluster", "open_cluster"]


class Cluster:
    """The Redis clients, the shard ownership and the fenced store factory of one process."""

    def __init__(
        self,
        target: RedisTarget,
        aio: Redis,
        sync: redis.Redis,
        app_id: str,
        *,
        ttl: float,
        observer: ClusterObserver | None = None,
    ) -> None:
        self.target = target
        self.redis = aio
        self._sync = sync
        self.app_id = app_id
        self.ownership = ShardOwnership(aio, app_id, ttl=ttl, observer=observer)

    def store_factory(self, shard_id: int) -> SessionStore:
        """The fenced store of ``shard_id`` for the term that starts now: it writes under that
        term's token, for ever (a late write of an old term is refused by Redis even when this
        same process owns the shard again under a newer token)."""
        ownership = self.ownership
        term = ownership.terms.get(shard_id)

        def token() -> int | None:
            return term.fencing_token() if term is not None else None

        observer = ownership.observer
        store = RedisSessionStore(
            self._sync,
            self.app_id,
            shard_id,
            token=token,
            shown=self.target.shown,
            on_refused=lambda: observer.fenced(shard_id),
        )
        return store

    def intake_factory(self, claim_idle: float) -> SharedIntakeFactory:
        """The webhook transport's shared intake (:mod:`.intake`), for ``QQBotClient``."""

        def make(
            deliver: Callable[[GatewayEvent], None],
            forget: Callable[[str], None],
            redeliver: Callable[[Mapping[str, Any]], GatewayEvent | None],
        ) -> SharedIntake:
            observer = self.ownership.observer
            return RedisIntake(
                self.redis,
                self.app_id,
                consumer=self.ownership.holder,
                claim_idle=claim_idle,
                deliver=deliver,
                forget=forget,
                redeliver=redeliver,
                on_error=observer.redis_error,
            )

        return make

    async def close(self) -> None:
        try:
            close_sync_redis(self._sync)
        finally:
            await close_redis(self.redis)


async def open_cluster(
    url: str,
    app_id: str,
    *,
    ttl: float,
    observer: ClusterObserver | None = None,
    timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> Cluster:
    """Connect (one PING within ``timeout``; :class:`~.connect.RedisUnavailable` otherwise)."""
    target = parse_redis_url(url)
    aio = await open_redis(target, timeout=timeout)
    sync = open_sync_redis(target, timeout=timeout)
    return Cluster(target, aio, sync, app_id, ttl=ttl, observer=observer)
