"""A process that takes a shard's lease again resumes from the newer of the store and what it
still holds in memory (``QQBotClient._run_term``), with stream delivery and a real Redis.

The scenario a test engineer found losing events: ``redis-server`` SIGSTOPped right after READY,
before the session's first checkpoint was written, for longer than the lease. The events the
simulator sends meanwhile wait in the dispatcher for their XADD; the lease runs out, the shard
stops and drops them unhandled; when Redis answers again this same process re-takes the lease
and finds the store empty. It must resume the session it still holds (the watermark it reached,
never past an unappended event) and replay them, not identify afresh.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.redis_harness import needs_redis

from .stream_harness import START_TIMEOUT, Fleet, Proc
from .test_cluster_stream_e2e import fleet

__all__ = ["fleet"]  # the fixture, imported for pytest

pytestmark = [pytest.mark.slow, needs_redis, pytest.mark.timeout(240)]

#: The default lease (15 s): the outage outlasts it.
OUTAGE = 18.0


async def stored_session(fleet: Fleet) -> bytes | None:
    from qqbot_gateway.cluster.connect import open_redis
    from qqbot_gateway.cluster.store import session_key

    from .test_cli import APP_ID

    client = await open_redis(fleet.redis.url)
    try:
        raw = await client.get(session_key(APP_ID, 0))
        return raw.encode() if isinstance(raw, str) else raw
    finally:
        await client.aclose()


async def test_outage_past_the_lease_before_the_first_checkpoint_loses_nothing(
    fleet: Fleet,
) -> None:
    # Redis stops answering right after the lease is taken, so that READY and everything after
    # it wait for their append: no checkpoint can be written before the outage (the window,
    # made certain; a new session's first checkpoint otherwise follows READY within ~50 ms).
    gateway = Proc(fleet.env(), "run")
    await gateway.start()
    fleet.procs.append(gateway)
    await gateway.wait(lambda: gateway.logged("lease acquired"), "the lease", START_TIMEOUT)
    fleet.redis.pause()
    try:
        await fleet.live_session(gateway, "READY, with Redis stopped")
        await fleet.sim.emit_events(30, "C2C_MESSAGE_CREATE", shard=0)
        await gateway.wait(
            lambda: gateway.logged("standing by again"), "the lease ran out", OUTAGE + 30
        )
        await asyncio.sleep(max(0.0, OUTAGE - 15.0))
    finally:
        fleet.redis.resume()
    await gateway.wait(
        lambda: gateway.logged("resuming session"), "the same process resumes", START_TIMEOUT
    )
    fresh = [line for line in gateway.stderr if "ready (new session)" in line]
    assert len(fresh) == 1, "only the first READY: the retake resumed"
    await fleet.worker("a")
    lost, dups = await fleet.drain_and_count("Redis stopped past the lease before a checkpoint")
    assert lost == 0, "\n".join(gateway.stderr[-40:])
    assert dups == []
    assert await gateway.stop() == 0
