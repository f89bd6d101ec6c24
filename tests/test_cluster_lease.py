"""Shard leases and the fenced Redis session store, against a real redis-server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from qqbot_gateway.adapter.store import StoredSession, StoreError
from qqbot_gateway.cluster.connect import RedisUnavailable, open_redis
from qqbot_gateway.cluster.lease import DRIFT, MARGIN, ShardLease
from qqbot_gateway.cluster.store import FencedOut, RedisSessionStore, open_sync_redis
from tests.redis_harness import needs_redis

pytestmark = [pytest.mark.slow, needs_redis]

APP = "1024"


def _state(seq: int, sid: str = "s-1", shard: int = 0) -> StoredSession:
    return StoredSession(
        app_id=APP,
        shard_id=shard,
        shard_count=2,
        session_id=sid,
        seq=seq,
        event_ids=tuple(f"e{i}" for i in range(max(0, seq - 3), seq)),
        written_at=time.time(),
    )


async def test_one_holder_at_a_time_and_tokens_only_grow(redis_server: Any) -> None:
    r = await open_redis(redis_server.url)
    try:
        a = ShardLease(r, APP, 0, ttl=1.0, holder="a")
        b = ShardLease(r, APP, 0, ttl=1.0, holder="b")
        first = await a.try_acquire()
        assert first is not None and first.cause == "first" and a.valid()
        assert await b.try_acquire() is None
        assert b.held_by is not None and b.held_by[0] == f"a {first.token}"
        assert await a.renew()
        # Released on purpose: the next holder learns it, and gets a larger token.
        assert await a.release()
        assert not a.owned and not a.valid()
        second = await b.try_acquire()
        assert second is not None and second.cause == "released"
        assert second.token > first.token
        # b stops renewing: its lease expires in Redis, a takes over with cause "expired", and
        # b's renewal is refused: it is not the owner any more.
        await asyncio.sleep(1.3)
        third = await a.try_acquire()
        assert third is not None and third.cause == "expired" and third.token > second.token
        assert not await b.renew()
        assert not b.owned
        # Another shard and another app are separate leases.
        assert await ShardLease(r, APP, 1, ttl=1.0, holder="b").try_acquire() is not None
        assert await ShardLease(r, "2048", 0, ttl=1.0, holder="b").try_acquire() is not None
    finally:
        await r.aclose()


async def test_validity_ends_before_redis_expiry_by_the_local_clock(redis_server: Any) -> None:
    r = await open_redis(redis_server.url)
    now = [100.0]
    try:
        lease = ShardLease(r, APP, 0, ttl=2.0, holder="a", clock=lambda: now[0])
        assert await lease.try_acquire() is not None
        # Measured from before the command was sent, minus the drift and the margin.
        assert lease.valid_until == pytest.approx(100.0 + 2.0 * (1 - DRIFT) - MARGIN)
        until = lease.valid_until
        assert until is not None
        pttl = await r.pttl(lease.keys.lease)
        assert until - 100.0 < pttl / 1000
        now[0] = until - 0.001
        assert lease.valid()
        now[0] = until
        assert not lease.valid()
        # A renewal sent now moves validity on from the time it was sent.
        now[0] = 101.0
        assert await lease.renew()
        assert lease.valid_until == pytest.approx(101.0 + 2.0 * (1 - DRIFT) - MARGIN)
    finally:
        await r.aclose()


async def test_redis_down_is_redis_unavailable_and_validity_runs_down(redis_server: Any) -> None:
    r = await open_redis(redis_server.url, timeout=0.5)
    try:
        lease = ShardLease(r, APP, 0, ttl=1.0, holder="a")
        assert await lease.try_acquire() is not None
        redis_server.kill()
        with pytest.raises(RedisUnavailable):
            await lease.renew()
        assert lease.owned  # unknown, not lost: the caller retries while validity lasts
        await asyncio.sleep(max(0.0, lease.remaining()) + 0.05)
        assert not lease.valid()
    finally:
        await r.aclose()


async def test_store_round_trip_through_the_protocol(redis_server: Any) -> None:
    r = await open_redis(redis_server.url)
    sync = open_sync_redis(redis_server.url)
    try:
        lease = ShardLease(r, APP, 0, ttl=5.0, holder="a")
        store = RedisSessionStore(sync, APP, 0, token=lambda: lease.token)
        with pytest.raises(StoreError, match="does not hold"):
            store.acquire()
        assert await lease.try_acquire() is not None
        store.acquire()
        assert store.load() is None
        state = _state(42)
        await asyncio.to_thread(store.save, state)
        loaded = store.load()
        assert loaded is not None
        assert (loaded.session_id, loaded.seq, loaded.event_ids) == ("s-1", 42, state.event_ids)
        # Other shards and apps do not see it.
        assert RedisSessionStore(sync, APP, 1, token=lambda: None).load() is None
        assert RedisSessionStore(sync, "2048", 0, token=lambda: None).load() is None
        store.clear()
        assert store.load() is None
        assert "qqbot:{1024}:shard:0:session" in store.location
        # Garbage under the key is a StoreError naming it, not a crash.
        sync.set(store.key, b"{not json")
        with pytest.raises(StoreError, match=r"shard:0:session: not valid JSON"):
            store.load()
    finally:
        sync.close()
        await r.aclose()


async def test_a_stale_owner_write_is_refused_atomically(redis_server: Any) -> None:
    """The SIGSTOP case without processes: a pauses past its lease, b takes over and writes,
    a wakes and writes with its old token: refused by the script; b's state stands."""
    r = await open_redis(redis_server.url)
    sync = open_sync_redis(redis_server.url)
    try:
        a = ShardLease(r, APP, 0, ttl=1.0, holder="a")
        b = ShardLease(r, APP, 0, ttl=1.0, holder="b")
        assert await a.try_acquire() is not None
        stale_token = a.token
        store_a = RedisSessionStore(sync, APP, 0, token=lambda: stale_token)
        store_a.save(_state(10, "old"))
        await asyncio.sleep(1.2)  # a is "paused": no renewals
        assert await b.try_acquire() is not None
        store_b = RedisSessionStore(sync, APP, 0, token=lambda: b.token)
        store_b.save(_state(20, "new"))
        with pytest.raises(FencedOut, match="stale") as refused:
            store_a.save(_state(99, "old"))
        assert refused.value.token == stale_token and store_a.refused == 1
        with pytest.raises(FencedOut):
            store_a.clear()
        loaded = store_b.load()
        assert loaded is not None and (loaded.session_id, loaded.seq) == ("new", 20)
        # A store whose process owns nothing refuses without asking Redis.
        with pytest.raises(FencedOut, match="no longer owns"):
            RedisSessionStore(sync, APP, 0, token=lambda: None).save(_state(1))
    finally:
        sync.close()
        await r.aclose()


async def test_fence_and_state_survive_a_redis_restart_with_aof(redis_server: Any) -> None:
    r = await open_redis(redis_server.url)
    sync = open_sync_redis(redis_server.url)
    try:
        a = ShardLease(r, APP, 0, ttl=30.0, holder="a")
        got = await a.try_acquire()
        assert got is not None
        RedisSessionStore(sync, APP, 0, token=lambda: a.token).save(_state(7))
        await redis_server.restart()
        # The lease (with its remaining TTL), the counter and the state are all back.
        assert await a.renew()
        store = RedisSessionStore(sync, APP, 0, token=lambda: a.token)
        loaded = store.load()
        assert loaded is not None and loaded.seq == 7
        store.save(_state(8))
        b = ShardLease(r, APP, 0, ttl=30.0, holder="b")
        assert await b.try_acquire() is None
    finally:
        sync.close()
        await r.aclose()


async def test_a_lost_redis_dataset_refuses_every_old_token(redis_server: Any) -> None:
    """Redis came back empty (no persistence): the counter restarts; tokens issued before the
    loss never equal the new counter's, so an old owner cannot overwrite a new owner's state."""
    r = await open_redis(redis_server.url)
    sync = open_sync_redis(redis_server.url)
    try:
        for _ in range(3):
            lease = ShardLease(r, APP, 0, ttl=30.0)
            assert await lease.try_acquire() is not None
            await lease.release()
        old = ShardLease(r, APP, 0, ttl=30.0, holder="old")
        assert await old.try_acquire() is not None and old.token == 4
        await r.flushall()
        new = ShardLease(r, APP, 0, ttl=30.0, holder="new")
        got = await new.try_acquire()
        assert got is not None and got.cause == "first" and new.token == 1
        with pytest.raises(FencedOut):
            RedisSessionStore(sync, APP, 0, token=lambda: old.token).save(_state(5))
    finally:
        sync.close()
        await r.aclose()
