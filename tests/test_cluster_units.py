"""Cluster pieces in process against a real redis-server: the shared webhook intake (dedupe across
replicas, claim of a dead replica's entries, a lost consumer group) and the ownership loops
(independent shards, one owner each, a lost lease ends the term)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

import pytest

from qqbot_gateway.adapter.protocol import GatewayEvent
from qqbot_gateway.cluster import worker as worker_module
from qqbot_gateway.cluster.connect import open_redis, stop_task
from qqbot_gateway.cluster.intake import DEDUPE_TTL, GROUP, RedisIntake, intake_keys
from qqbot_gateway.cluster.lease import lease_keys
from qqbot_gateway.cluster.shards import ShardOwnership, ShardTerm
from qqbot_gateway.cluster.worker import forget_idle_consumers
from tests.redis_harness import RedisServer, needs_redis

pytestmark = [pytest.mark.slow, needs_redis]

APP = "1024"


def _event(event_id: str) -> GatewayEvent:
    return GatewayEvent("C2C_MESSAGE_CREATE", {"content": "hi"}, 1, event_id, 0, None, False)


def _body(event_id: str) -> bytes:
    payload = {"op": 0, "id": event_id, "t": "C2C_MESSAGE_CREATE", "d": {"content": "hi"}}
    return json.dumps(payload).encode()


class Replica:
    """One process's intake with a local dedupe window, as WebhookMode wires it."""

    def __init__(self, redis: Any, name: str, claim_idle: float = 0.3) -> None:
        self.delivered: list[str] = []
        self.window: set[str] = set()
        self.intake = RedisIntake(
            redis,
            APP,
            consumer=name,
            claim_idle=claim_idle,
            deliver=lambda e: self.delivered.append(e.event_id or ""),
            forget=self.window.discard,
            redeliver=self.redeliver,
        )

    def redeliver(self, payload: Mapping[str, Any]) -> GatewayEvent | None:
        event_id = payload["id"]
        if event_id in self.window:
            return None
        self.window.add(event_id)
        return _event(event_id)

    async def accept(self, event_id: str) -> bool:
        if event_id in self.window:
            return True  # a local duplicate: the acceptor drops it before the intake
        self.window.add(event_id)
        return await self.intake.submit(_event(event_id), _body(event_id))


async def bounded(what: str, awaitable: Any, seconds: float = 10.0) -> Any:
    """Await with a bound; on a hang, fail naming the step and every task's stack."""
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except TimeoutError:
        stacks = []
        for task in asyncio.all_tasks():
            frames = task.get_stack(limit=8)
            where = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in reversed(frames))
            stacks.append(f"{task.get_name()}: {where}")
        pytest.fail(f"{what} did not finish in {seconds}s; tasks:\n" + "\n".join(stacks))


async def eventually(what: str, check: Any, seconds: float = 10.0) -> None:
    """Poll ``check`` (an async callable returning a bool) until it holds; fail after a
    generous bound (the machine may be loaded: a condition, never a fixed sleep)."""
    try:
        async with asyncio.timeout(seconds):
            while not await check():  # noqa: ASYNC110 - polls Redis, no event to wait on
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"{what}: not within {seconds}s")


async def test_an_id_accepted_by_one_replica_is_a_duplicate_on_the_other(
    redis_server: RedisServer,
) -> None:
    redis = await open_redis(redis_server.url)
    a, b = Replica(redis, "a"), Replica(redis, "b")
    try:
        await bounded("a.start", a.intake.start())
        await bounded("b.start", b.intake.start())
        assert await bounded("a.accept", a.accept("e1"))
        assert await bounded(
            "b.accept", b.accept("e1")
        )  # ACKed (durable on a), not delivered again
        assert (a.delivered, b.delivered) == (["e1"], [])
        assert b.intake.shared_duplicates == 1 and "e1" not in b.window
        # Handled on a: acknowledged and deleted from the stream.
        a.intake.handled("e1")
        stream, _ = intake_keys(APP)

        async def acked() -> bool:
            return bool(a.intake.acked == 1 and await redis.xlen(stream) == 0)

        await eventually("the ack", acked)
        assert (await bounded("xpending", redis.xpending(stream, GROUP)))["pending"] == 0
        # Another app's intake shares nothing with this one.
        other = RedisIntake(
            redis,
            "2048",
            consumer="c",
            claim_idle=1,
            deliver=lambda e: None,
            forget=lambda i: None,
            redeliver=lambda p: None,
        )
        await bounded("other.start", other.start())
        assert await bounded("submit", other.submit(_event("e1"), _body("e1")))
        assert other.appended == 1
        await bounded("other.close", other.close())
    finally:
        await bounded("a.close", a.intake.close())
        await bounded("b.close", b.intake.close())
        await bounded("aclose", redis.aclose())


async def test_a_dead_replicas_entries_are_claimed_and_a_live_ones_are_not(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="qqbot_gateway.cluster")
    redis = await open_redis(redis_server.url)
    dead, live = Replica(redis, "dead"), Replica(redis, "live")
    try:
        await dead.intake.start()
        for i in range(5):
            assert await dead.accept(f"d{i}")
        # "dead" stops refreshing and acking (SIGKILL); once all its entries are past the claim
        # bound, "live" starts (so it finds them in one claim round: one log line).
        for task in dead.intake._tasks:
            await bounded("stop dead's loop", stop_task(task))
        stream, _ = intake_keys(APP)

        async def abandoned() -> bool:
            idle = await redis.xpending_range(stream, GROUP, "-", "+", 10, idle=300)
            return len(idle) == 5

        await eventually("dead's entries idle past the bound", abandoned)
        await live.intake.start()
        assert await live.accept("l0")  # in live's queue, not handled yet
        async with asyncio.timeout(10):
            while len(live.delivered) < 6:  # noqa: ASYNC110 - polls the claim loop's effect
                await asyncio.sleep(0.05)
        assert sorted(live.delivered) == ["d0", "d1", "d2", "d3", "d4", "l0"]
        assert live.intake.claimed == 5
        # One WARNING for the round (how many, from whom, how idle); each callback at DEBUG.
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings
        assert re.fullmatch(
            r"webhook: took over 5 callbacks that a stopped replica accepted and did not "
            r"handle: 5 from dead \(idle up to \d+\.\ds\)",
            warnings[0],
        ), warnings[0]
        debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
        assert sum("took over callback d" in m for m in debug) == 5, debug
        # Its own entry, waiting for its handler longer than the claim idle time, stayed its
        # own and was not handed to a handler twice.
        await asyncio.sleep(1.0)
        assert live.delivered.count("l0") == 1
        for event_id in live.delivered:
            live.intake.handled(event_id)

        async def drained() -> bool:
            return bool(await redis.xlen(stream) == 0)

        await eventually("the acks", drained)
        assert live.intake.acked == 6
    finally:
        with contextlib.suppress(Exception):
            await bounded("dead.close", dead.intake.close())
        await bounded("live.close", live.intake.close())
        await redis.aclose()


async def test_stopped_replicas_consumers_are_forgotten_once_they_hold_nothing(
    redis_server: RedisServer,
) -> None:
    redis = await open_redis(redis_server.url)
    stream, _ = intake_keys(APP)
    dead = Replica(redis, "dead", claim_idle=60)
    live = Replica(redis, "live", claim_idle=0.01)
    live.intake.forget_idle, live.intake.forget_every = 0.5, 0.1

    async def consumers() -> dict[str, int]:
        rows: Any = await redis.xinfo_consumers(stream, GROUP)
        return {r["name"].decode(): int(r["pending"]) for r in rows}

    try:
        await dead.intake.start()
        assert await dead.accept("d0")  # pending on "dead", which then stops (SIGKILL)
        for task in dead.intake._tasks:
            await bounded("stop dead's loop", stop_task(task))
        await redis.xgroup_createconsumer(stream, GROUP, "gone")  # held nothing
        await asyncio.sleep(0.1)
        # The rule, shared with the stream workers: never a consumer holding entries (checked
        # again atomically when deleting), never the caller's own.
        assert await forget_idle_consumers(redis, stream, GROUP, keep="x", idle=0.05) == ["gone"]
        assert await consumers() == {"dead": 1}
        assert await redis.eval(worker_module._FORGET, 1, stream, GROUP, "dead", 0) == 0
        await redis.xgroup_createconsumer(stream, GROUP, "gone")

        await live.intake.start()

        async def forgotten() -> bool:
            return set(live.intake.forgotten) == {"dead", "gone"}

        await eventually("the stopped consumers forgotten", forgotten)
        # "dead" went only after its entry was claimed (nothing lost with it), "live" stays.
        assert live.delivered == ["d0"] and live.intake.claimed == 1
        assert await consumers() == {"live": 1}
        live.intake.handled("d0")

        async def drained() -> bool:
            return bool(await redis.xlen(stream) == 0)

        await eventually("the ack", drained)
    finally:
        with contextlib.suppress(Exception):
            await bounded("dead.close", dead.intake.close())
        await bounded("live.close", live.intake.close())
        await redis.aclose()


async def test_redis_without_the_group_is_repaired_and_redis_down_is_a_retry(
    redis_server: RedisServer,
) -> None:
    redis = await open_redis(redis_server.url, timeout=1)
    a = Replica(redis, "a")
    try:
        await a.intake.start()
        await redis.flushall()  # Redis lost its data (no AOF): the group is gone
        assert await a.accept("e1")
        assert a.delivered == ["e1"]
        redis_server.kill()
        assert not await a.accept("e2")  # 503: the platform retries; the id is forgotten
        assert "e2" not in a.window and a.delivered == ["e1"]
    finally:
        with contextlib.suppress(Exception):
            await bounded("a.close", a.intake.close())
        await redis.aclose()


async def test_shards_are_owned_independently_and_exactly_once(redis_server: RedisServer) -> None:
    redis = await open_redis(redis_server.url)
    # A 3 s lease, renewed every second: p1 keeps it on a loaded machine (a 1 s lease let a
    # stalled loop lose it to p2 during the standby check).
    p1 = ShardOwnership(redis, APP, ttl=3.0, holder="p1")
    p2 = ShardOwnership(redis, APP, ttl=3.0, holder="p2")
    owned: dict[str, set[int]] = {"p1": set(), "p2": set()}
    blocked = asyncio.Event()

    def runner(name: str) -> Any:
        async def run_term(term: ShardTerm) -> None:
            owned[name].add(term.shard_id)
            try:
                if name == "p1" and term.shard_id == 0:
                    await blocked.wait()  # p1 sits on shard 0 (its term never ends by itself)
                await term.ended.wait()
            finally:
                owned[name].discard(term.shard_id)

        return run_term

    tasks = [
        asyncio.create_task(p1.hold(0, runner("p1"))),
        asyncio.create_task(p1.hold(1, runner("p1"))),
    ]
    try:
        async with asyncio.timeout(10):
            while owned["p1"] != {0, 1}:  # noqa: ASYNC110 - polls the ownership loops
                await asyncio.sleep(0.02)
        # p2 offers both: stands by for both while p1 renews.
        tasks += [
            asyncio.create_task(p2.hold(0, runner("p2"))),
            asyncio.create_task(p2.hold(1, runner("p2"))),
        ]
        await asyncio.sleep(2.5)
        assert owned == {"p1": {0, 1}, "p2": set()}
        assert {s: r[0] for s, r in p2.describe().items()} == {0: "standby", 1: "standby"}
        # Shard 1's lease disappears under p1 (as if it expired during a pause): p2 takes it,
        # p1's next renewal is refused, its term ends and it stands by; shard 0 stays with p1.
        term = p1.terms[1]
        await redis.delete(lease_keys(APP, 1).lease)
        async with asyncio.timeout(10):
            while 1 not in owned["p2"] or 1 in owned["p1"]:  # noqa: ASYNC110 - polls the loops
                await asyncio.sleep(0.02)
        assert not term.valid() and term.kind == "lost"
        assert owned["p1"] == {0} and owned["p2"] == {1}
        assert {s: r[0] for s, r in p1.describe().items()} == {0: "owner", 1: "standby"}
    finally:
        p1.stop()
        p2.stop()
        blocked.set()
        # stop() ends every term and standby loop by itself (the releases included).
        _, hanging = await asyncio.wait(tasks, timeout=15)
        for task in hanging:
            await stop_task(task)
        await redis.aclose()
    assert not hanging, f"hold loops still running 15 s after stop(): {hanging}"


async def test_an_append_redis_applied_after_its_timeout_is_handed_on_once(
    redis_server: RedisServer,
) -> None:
    """A callback's append times out (Redis stopped: a 503, the id leaves the local window)
    and Redis applies it when it answers again. The platform's retry then finds the id taken
    and delivers nothing; the entry (pending to this replica, unknown to it) is handed on by a
    claim round, even one that runs while the retry is in flight, and is never acknowledged
    unhandled (it was, as a "local duplicate" of the retry: the callback was lost)."""
    redis = await open_redis(redis_server.url)
    r = Replica(redis, "a", claim_idle=0.2)  # not started: the test drives the claim rounds
    stream, seen = intake_keys(APP)
    try:
        await r.intake._ensure_group()
        # What the timed-out call leaves once Redis applied it: the id taken by this replica,
        # the entry pending to it; and nothing in this process (it answered 503).
        entry_id = await r.intake._append(
            keys=[stream, seen + "e1"], args=["e1", _body("e1"), "a", DEDUPE_TTL]
        )
        await asyncio.sleep(0.3)  # idle past claim_idle
        # The platform's retry is on its way (its append not yet answered) as a round claims.
        r.window.add("e1")
        retry = r.intake.submit(_event("e1"), _body("e1"))
        found: Any = await redis.xrange(stream, entry_id, entry_id)
        assert not r.intake._adopt(_text(entry_id), found[0][1])
        assert _text(entry_id) not in r.intake._to_ack, "acknowledged without a handler"
        assert await bounded("the retry", retry), "the retry is ACKed (the id is taken)"
        assert r.delivered == [], "the retry delivered nothing"
        assert r.intake.shared_duplicates == 1
        for _ in range(100):  # claim rounds (the second look takes 2 s), bounded
            await asyncio.sleep(0.1)
            await bounded("claim round", r.intake._claim(200))
            if r.delivered:
                break
        assert r.delivered == ["e1"], "handed on by a claim round, once"
        assert r.intake.claimed == 1
    finally:
        await bounded("close", r.intake.close())
        await bounded("aclose", redis.aclose())


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def test_a_redis_outage_past_the_claim_bound_hands_no_live_replicas_entry_to_another(
    redis_server: RedisServer,
) -> None:
    """Redis stops for longer than the claim bound: when it answers, every pending entry looks
    abandoned (its idle time ran on). The live holder refreshes its own at once and the other
    replica's second look finds them taken back: nothing is handled twice. A dead holder's
    entries are still taken over."""
    # A 1 s client timeout: the outage fails commands (they are retried), as a long one does.
    clients = [await open_redis(redis_server.url, timeout=1.0) for _ in range(2)]
    # claim_idle 3 s: a round every second, as at the default 30 s a round every 10 s: a
    # replica that waited a whole round before refreshing lost its entries to the other.
    a, b = Replica(clients[0], "a", claim_idle=3.0), Replica(clients[1], "b", claim_idle=3.0)
    try:
        await bounded("a.start", a.intake.start())
        await asyncio.sleep(0.5)  # b's rounds half a round after a's (started together, a
        # refreshed just before each of b's looks, which hid what this test is about)
        await bounded("b.start", b.intake.start())
        for i in range(5):
            assert await a.accept(f"a{i}")  # in a's handler queue, not handled yet
        redis_server.pause()
        try:
            await asyncio.sleep(4.5)  # past the claim bound and the clients' timeout
        finally:
            redis_server.resume()
        await asyncio.sleep(5.0)  # b's rounds, its second looks included
        assert b.delivered == [], "a live replica's entries were taken over after the outage"
        assert b.intake.claimed == 0
        assert sorted(a.delivered) == [f"a{i}" for i in range(5)]
        # a dies (its loops stop: no refresh, no ack): b takes its entries over.
        for task in a.intake._tasks:
            await bounded("stop a's loops", stop_task(task))
        async with asyncio.timeout(30):
            while len(b.delivered) < 5:  # noqa: ASYNC110 - polls the claim loop's effect
                await asyncio.sleep(0.05)
        assert sorted(b.delivered) == [f"a{i}" for i in range(5)]
    finally:
        with contextlib.suppress(Exception):
            await bounded("a.close", a.intake.close())
        await bounded("b.close", b.intake.close())
        for client in clients:
            await client.aclose()
