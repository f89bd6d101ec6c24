"""Which session a process resumes when it takes a shard's lease again
(``client._newer_session``), and the writer's fencing token the Redis store records for it.

The end-to-end case (Redis stopped past the lease before the first checkpoint) is in
tests/test_cluster_retake.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from qqbot_gateway.adapter.client import _newer_session
from qqbot_gateway.adapter.store import StoredSession, StoreError

APP = "1024"


def _state(seq: int, sid: str = "s-1") -> StoredSession:
    return StoredSession(
        app_id=APP,
        shard_id=0,
        shard_count=1,
        session_id=sid,
        seq=seq,
        event_ids=(f"e{seq}",),
        written_at=time.time(),
    )


MINE = _state(40, "mine")


@pytest.mark.parametrize(
    ("stored", "writer", "last", "token", "want"),
    [
        # Nothing stored (the first checkpoint never made it): ours.
        (None, None, 3, 4, MINE),
        (None, None, 3, 9, MINE),
        # Our own last term's state (a checkpoint behind ours) or an older term's: ours.
        (_state(10, "mine"), 3, 3, 4, MINE),
        (_state(90, "other"), 2, 3, 6, MINE),
        # Another process's later term wrote it: the store's.
        (_state(5, "other"), 5, 3, 6, "stored"),
        # The writer is unknown: ours only if no term can have been in between.
        (_state(5, "other"), None, 3, 4, MINE),
        (_state(5, "other"), None, 3, 5, "stored"),
        # The fence counter restarted (Redis lost its data): tokens do not compare.
        (_state(5, "other"), 1, 3, 2, "stored"),
        # Unreadable: ours only if nobody else can have owned the shard meanwhile.
        (StoreError("boom"), None, 3, 4, MINE),
        (StoreError("boom"), None, 3, 5, "stored"),
        # Same session, the store ahead of us: cannot happen, but the store's then.
        (_state(50, "mine"), 3, 3, 4, "stored"),
    ],
)
def test_the_newer_of_the_store_and_our_last_term(
    stored: StoredSession | StoreError | None, writer: int | None, last: int, token: int, want: Any
) -> None:
    got = _newer_session(0, stored, writer, MINE, last, token)
    assert got is (stored if want == "stored" else want)


def test_without_a_last_term_the_store_decides() -> None:
    stored = _state(7)
    assert _newer_session(0, stored, 1, None, None, 2) is stored
    assert _newer_session(0, None, None, None, 3, 4) is None
    assert _newer_session(0, stored, 1, MINE, None, 2) is stored  # a term without a token


@pytest.mark.slow
async def test_the_store_records_the_writers_token(redis_server: Any) -> None:
    from qqbot_gateway.cluster.connect import open_redis
    from qqbot_gateway.cluster.lease import ShardLease
    from qqbot_gateway.cluster.store import (
        RedisSessionStore,
        close_sync_redis,
        open_sync_redis,
        writer_key,
    )

    r = await open_redis(redis_server.url)
    sync = open_sync_redis(redis_server.url)
    try:
        lease = ShardLease(r, APP, 0, ttl=5.0, holder="a")
        store = RedisSessionStore(sync, APP, 0, token=lambda: lease.token)
        assert store.load_fenced() == (None, None)
        assert await lease.try_acquire() is not None
        await asyncio.to_thread(store.save, _state(42))
        loaded, writer = store.load_fenced()
        assert loaded is not None and loaded.seq == 42
        assert writer == lease.token
        store.clear()
        assert store.load_fenced() == (None, None)
        assert sync.get(writer_key(APP, 0)) is None
        # A state from before the token was recorded: the writer is unknown.
        sync.set(store.key, _state(7).to_json())
        loaded, writer = store.load_fenced()
        assert loaded is not None and loaded.seq == 7 and writer is None
    finally:
        close_sync_redis(sync)
        await r.aclose()
