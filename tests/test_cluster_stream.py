"""The event stream and its workers, in one process against a real ``redis-server``.

The publisher (``run``'s side) and :class:`StreamWorker` (``worker``'s) talk to Redis over a
real socket; what crosses processes (SIGKILLed workers and gateways, the simulator) is in
``test_cluster_stream_e2e.py``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter.checkpoint import DEFAULT_DEDUPE_IDS
from qqbot_gateway.adapter.dispatch import Dispatcher, Progress
from qqbot_gateway.adapter.protocol import GatewayEvent
from qqbot_gateway.adapter.session import GatewaySession
from qqbot_gateway.cluster.connect import open_redis
from qqbot_gateway.cluster.stream import (
    StreamError,
    StreamKeys,
    StreamPublisher,
    check_owner,
    decode_entry,
    encode_event,
    stream_state,
)
from qqbot_gateway.cluster.worker import StreamWorker, WorkerConfig
from qqbot_gateway.telemetry.stream import StreamMetrics
from tests.redis_harness import needs_redis

pytestmark = [needs_redis, pytest.mark.timeout(60)]

APP = "102030405"


def event(n: int, *, event_id: str | None = None, kind: str = "C2C_MESSAGE_CREATE") -> GatewayEvent:
    return GatewayEvent(
        type=kind,
        data={"content": f"hello {n}", "id": f"m{n}"},
        seq=n,
        event_id=event_id if event_id is not None else f"ev-{n}",
        shard=0,
        session_id="s1",
    )


@pytest.fixture
async def redis(redis_server: Any) -> AsyncIterator[Any]:
    client = await open_redis(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


class Running:
    """Workers run as tasks until the test ends."""

    def __init__(self) -> None:
        self.stops: list[asyncio.Event] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self, worker: StreamWorker) -> StreamWorker:
        await worker.start()
        stop = asyncio.Event()
        self.stops.append(stop)
        self.tasks.append(asyncio.create_task(worker.run(stop)))
        return worker

    async def close(self) -> None:
        for stop in self.stops:
            stop.set()
        for task in self.tasks:
            # A stop is bounded (loops 5 s each, handlers 10 s): a hang here is a defect.
            async with asyncio.timeout(30):
                with contextlib.suppress(Exception):
                    await task


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    r = Running()
    try:
        yield r
    finally:
        await r.close()


def config(group: str = "handlers", consumer: str = "w1", **kw: Any) -> WorkerConfig:
    return WorkerConfig(app_id=APP, group=group, consumer=consumer, **kw)


async def until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def test_an_entry_round_trips() -> None:
    e = event(7)
    back, app, ts = decode_entry(encode_event(e, APP, 123.5))
    assert back == e and app == APP and ts == 123.5
    with pytest.raises(ValueError, match="malformed"):
        decode_entry(b"{not json")


async def test_two_workers_share_a_group_and_two_groups_each_see_every_event_once(
    redis: Any, running: Running
) -> None:
    pub = StreamPublisher(redis, APP, max_len=10_000, group="handlers")
    await pub.start()
    seen: dict[str, list[str]] = collections.defaultdict(list)

    def recorder(group: str) -> Callable[[GatewayEvent], None]:
        def handle(e: GatewayEvent) -> None:
            assert e.event_id is not None
            seen[group].append(e.event_id)

        return handle

    async def slow(e: GatewayEvent) -> None:  # an async handler, overlapping its waits
        await asyncio.sleep(0.001)
        seen["audit"].append(str(e.event_id))

    w1 = await running.start(StreamWorker(redis, config(consumer="a"), [recorder("handlers")]))
    w2 = await running.start(StreamWorker(redis, config(consumer="b"), [recorder("handlers")]))
    await running.start(StreamWorker(redis, config("audit", "c", concurrency=8), [slow]))
    n = 1000
    for start in range(0, n, 100):
        await pub.append([event(i) for i in range(start, start + 100)])
    want = {f"ev-{i}" for i in range(n)}
    await until(lambda: len(seen["handlers"]) >= n and len(seen["audit"]) >= n, 30, "handling")
    await asyncio.sleep(0.3)
    for group in ("handlers", "audit"):
        counts = collections.Counter(seen[group])
        assert set(counts) == want, group
        assert max(counts.values()) == 1, group
    assert w1.stats.handled > 0 and w2.stats.handled > 0, "both consumers took a share"
    state = await pub.refresh()
    assert {g.name: g.pending for g in state.groups} == {"handlers": 0, "audit": 0}
    # Read the length from Redis: the publisher's background trimmer may have trimmed between
    # this refresh's read and its XTRIM (which then trims nothing and reports the old length).
    deadline = asyncio.get_running_loop().time() + 10
    while (length := await redis.xlen(pub.keys.stream)) and (
        asyncio.get_running_loop().time() < deadline
    ):
        await asyncio.sleep(0.05)
        await pub.refresh()
    assert length == 0, "everything acknowledged by both groups is trimmed"
    await pub.append([event(i) for i in range(n, n + 10)])
    state = await stream_state(redis, pub.keys)
    # Redis still knows each group's lag after the trim (XINFO GROUPS gives nil otherwise).
    assert all(g.lag is not None for g in state.groups), state
    await pub.close()


async def test_a_copy_of_a_handled_event_never_reaches_a_handler_again(
    redis: Any, running: Running
) -> None:
    """A platform replay appends an event twice: the group hands it to a handler once."""
    pub = StreamPublisher(redis, APP, max_len=10_000, group="handlers")
    await pub.start()
    seen: list[str] = []
    # claim_idle 1 s: a copy read while the first is still being acknowledged is left pending
    # (it finds the in-flight mark) and settled when claimed.
    worker = await running.start(
        StreamWorker(redis, config(claim_idle=1.0), [lambda e: seen.append(str(e.event_id))])
    )
    await pub.append([event(i) for i in range(50)])
    await until(lambda: len(seen) >= 50, 20, "the first copies")
    # The replay: the same events (same ids) again, and a batch holding two copies at once.
    await pub.append([event(i) for i in range(40, 50)] + [event(60), event(60)])
    await until(lambda: worker.stats.duplicates >= 11 and "ev-60" in seen, 20, "the copies")
    await asyncio.sleep(0.3)
    assert collections.Counter(seen)["ev-45"] == 1
    assert collections.Counter(seen)["ev-60"] == 1
    state = await stream_state(redis, StreamKeys(APP))
    assert state.groups[0].pending == 0, "every copy acknowledged"
    await pub.close()


async def test_a_poison_event_goes_to_the_dead_letter_stream_after_n_attempts(
    redis: Any, running: Running
) -> None:
    pub = StreamPublisher(redis, APP, max_len=10_000, group="handlers")
    await pub.start()
    calls: collections.Counter[str] = collections.Counter()

    def handler(e: GatewayEvent) -> None:
        calls[str(e.event_id)] += 1
        if e.event_id == "ev-poison":
            raise ValueError("cannot parse this one")

    cfg = config(claim_idle=0.3, max_attempts=3)
    w1 = await running.start(StreamWorker(redis, cfg, [handler]))
    w2 = await running.start(
        StreamWorker(redis, config(consumer="w2", claim_idle=0.3, max_attempts=3), [handler])
    )
    await pub.append([event(1), event(2, event_id="ev-poison"), event(3)])
    for i in range(4, 40):  # the others keep flowing meanwhile
        await pub.append([event(i)])
        await asyncio.sleep(0.02)
    keys = StreamKeys(APP)

    async def dead() -> list[Any]:
        result: Any = await redis.xrange(keys.dead)
        return list(result)

    await until(lambda: w1.stats.dead_letters + w2.stats.dead_letters >= 1, 20, "a dead letter")
    await asyncio.sleep(0.5)  # a second (wrong) move would show by now
    letters = await dead()
    assert len(letters) == 1
    fields = letters[0][1]
    assert fields[b"deliveries"] == b"3"
    assert b"ValueError: cannot parse this one" in fields[b"reason"]
    assert decode_entry(fields[b"e"])[0].event_id == "ev-poison"
    assert calls["ev-poison"] == 3, "one handler run per delivery, then no more"
    assert all(calls[f"ev-{i}"] == 1 for i in (1, 3, *range(4, 40)))
    assert w1.stats.dead_letters + w2.stats.dead_letters == 1
    assert w1.stats.failed + w2.stats.failed == 3
    state = await stream_state(redis, keys)
    assert state.groups[0].pending == 0 and state.dead_letters == 1
    # The metrics say so too.
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    w1.stats.state = state
    StreamMetrics(registry, worker=w1)
    assert registry.get_sample_value("qqbot_gateway_stream_dead_letters") == 1
    assert (
        registry.get_sample_value("qqbot_gateway_stream_group_pending", {"group": "handlers"}) == 0
    )
    await pub.close()


async def test_a_dead_workers_pending_entries_are_claimed_and_handled(
    redis: Any, running: Running
) -> None:
    pub = StreamPublisher(redis, APP, max_len=10_000, group="handlers")
    await pub.start()
    keys = StreamKeys(APP)
    # A consumer that read 20 entries and died without acknowledging them.
    await pub.append([event(i) for i in range(20)])
    await redis.xreadgroup("handlers", "dead-one", {keys.stream: ">"}, count=20)
    seen: list[str] = []
    worker = await running.start(
        StreamWorker(redis, config(claim_idle=0.3), [lambda e: seen.append(str(e.event_id))])
    )
    await until(lambda: len(seen) >= 20, 20, "the claimed entries")
    assert sorted(seen) == sorted(f"ev-{i}" for i in range(20))
    assert worker.stats.claimed == 20
    await pub.close()


async def test_a_full_stream_holds_appends_and_never_trims_unacknowledged_entries(
    redis: Any, running: Running
) -> None:
    pub = StreamPublisher(redis, APP, max_len=100, group="handlers", poll=0.05)
    await pub.start()
    # A batch larger than the bound goes into a stream below it (it may pass the bound by one
    # batch); the next append waits.
    await asyncio.wait_for(pub.append([event(i) for i in range(150)]), 5)
    blocked = asyncio.create_task(pub.append([event(150)]))
    await asyncio.sleep(0.4)
    assert not blocked.done(), "no room: the append waits"
    assert pub.blocked == 1
    assert (await stream_state(redis, pub.keys)).length == 150, "nothing unread was trimmed"
    seen: list[str] = []
    await running.start(StreamWorker(redis, config(), [lambda e: seen.append(str(e.event_id))]))
    await asyncio.wait_for(blocked, 20)
    await until(lambda: len(seen) == 151, 20, "every event")
    assert sorted(seen) == sorted(f"ev-{i}" for i in range(151))
    await pub.close()


async def test_a_stream_of_another_app_is_refused(redis: Any) -> None:
    other = StreamPublisher(redis, "999", max_len=1000, group="handlers")
    keys = StreamKeys(APP)
    # Someone wrote the app's keys with another app's identity (a copied Redis, a bad script).
    await redis.hset(keys.meta, mapping={"app": "999", "format": "1"})
    with pytest.raises(StreamError, match="written by app '999'"):
        await check_owner(redis, keys, claim=True)
    await redis.delete(keys.meta)
    await redis.xadd(keys.stream, {"x": "1"})
    with pytest.raises(StreamError, match="not written by qqbot-gateway"):
        await StreamPublisher(redis, APP, max_len=1000, group="handlers").start()
    with pytest.raises(StreamError):
        await StreamWorker(redis, config(), [print]).start()
    await other.start()  # another app id has its own keys: untouched by all of this
    await other.close()


async def test_the_dispatcher_marks_events_handled_only_once_the_sink_returned() -> None:
    bus = ev.EventBus()
    session = GatewaySession(shard_id=0, shard_count=1, intents=1)
    progress = Progress(DEFAULT_DEDUPE_IDS)
    release = asyncio.Event()
    batches: list[list[int | None]] = []
    calls = 0

    async def sink(events: list[GatewayEvent]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("Redis went away")  # retried with the same events
        batches.append([e.seq for e in events])
        await release.wait()

    dispatcher = Dispatcher(
        session, bus=bus, handlers=lambda t: [], capacity=100, progress=progress, sink=sink
    )
    dispatcher.start()
    for i in range(1, 6):
        dispatcher.put(event(i))
    await until(lambda: batches, 5, "the sink called")
    assert batches[0] == [1, 2, 3, 4, 5]
    assert progress.handled == 0, "not durable yet: the watermark stays"
    assert dispatcher.outstanding == 5
    release.set()
    await until(lambda: progress.handled == 5, 5, "marked handled")
    assert getattr(progress.last, "seq", None) == 5
    assert list(progress.ids) == [f"ev-{i}" for i in range(1, 6)]
    assert await dispatcher.close(1.0) == 0


async def test_dead_consumers_holding_nothing_are_forgotten(redis: Any) -> None:
    pub = StreamPublisher(redis, APP, max_len=1000, group="handlers")
    await pub.start()
    keys = StreamKeys(APP)
    await pub.append([event(1)])
    await redis.xreadgroup("handlers", "holder", {keys.stream: ">"}, count=1)  # keeps it pending
    # A dead pod that had acknowledged all it read.
    await redis.xgroup_createconsumer(keys.stream, "handlers", "old-pod")
    worker = StreamWorker(redis, config(claim_idle=0.01, forget_idle=0.2), [print])
    await worker.start()
    assert await worker.forget_consumers() == [], "not idle long enough yet"
    await asyncio.sleep(0.4)
    assert await worker.forget_consumers() == ["old-pod"]
    consumers: Any = await redis.xinfo_consumers(keys.stream, "handlers")
    assert [c["name"] for c in consumers] == [b"holder"], "a consumer with pending entries stays"
    await pub.close()


async def test_unreadable_or_foreign_entries_go_to_the_dead_letter_stream(
    redis: Any, running: Running
) -> None:
    pub = StreamPublisher(redis, APP, max_len=1000, group="handlers")
    await pub.start()
    keys = pub.keys
    await redis.xadd(keys.stream, {"e": b"{not json"})
    await redis.xadd(keys.stream, {"e": encode_event(event(2), "999", 1.0)})
    await pub.append([event(3)])
    seen: list[str] = []
    worker = await running.start(
        StreamWorker(redis, config(), [lambda e: seen.append(str(e.event_id))])
    )
    await until(lambda: seen == ["ev-3"] and worker.stats.dead_letters == 2, 20, "the moves")
    letters: Any = await redis.xrange(keys.dead)
    reasons = [fields[b"reason"].decode() for _, fields in letters]
    assert reasons[0].startswith("malformed entry")
    assert reasons[1] == f"written by app '999', not '{APP}'"
    assert (await stream_state(redis, keys)).groups[0].pending == 0, "moved, not left pending"
    await pub.close()


async def test_a_worker_of_concurrency_1_claims_more_entries_than_it_has_slots(
    redis: Any, running: Running
) -> None:
    pub = StreamPublisher(redis, APP, max_len=1000, group="handlers")
    await pub.start()
    await pub.append([event(i) for i in range(4)])
    await redis.xreadgroup("handlers", "dead-one", {pub.keys.stream: ">"}, count=4)
    seen: list[str] = []
    # (Each claim waits for the one slot, which the reader holds through its 1 s blocking read.)
    await running.start(
        StreamWorker(
            redis,
            config(claim_idle=0.2, concurrency=1),
            [lambda e: seen.append(str(e.event_id))],
        )
    )
    await until(lambda: len(seen) == 4, 20, "all 4 claimed, one slot at a time")
    assert sorted(seen) == sorted(f"ev-{i}" for i in range(4))
    await pub.close()


class RefusedAcks:
    """Fault injection: the worker's acknowledgement script fails (as when Redis does not
    answer) while ``refusing`` is set; Redis itself stays up for everyone else."""

    def __init__(self, worker: StreamWorker) -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError

        self.refusing = True
        self.refused = 0
        self._error = RedisConnectionError
        self._script = worker._finish_script
        worker._finish_script = self

    async def __call__(self, **kwargs: Any) -> Any:
        if self.refusing:
            self.refused += 1
            raise self._error("refused by the test")
        return await self._script(**kwargs)


async def handled_with_acks_refused(
    redis: Any, running: Running
) -> tuple[StreamPublisher, collections.Counter[str], StreamWorker, RefusedAcks]:
    """10 events handled by worker "w1" (claim_idle 0.2 s) whose acknowledgements fail."""
    pub = StreamPublisher(redis, APP, max_len=1000, group="handlers")
    await pub.start()
    calls: collections.Counter[str] = collections.Counter()
    worker = await running.start(
        StreamWorker(redis, config(claim_idle=0.2), [lambda e: calls.update([str(e.event_id)])])
    )
    acks = RefusedAcks(worker)  # (the worker's loops have not run yet)
    await pub.append([event(i) for i in range(10)])
    await until(lambda: len(calls) == 10 and acks.refused >= 2, 20, "handled, acks refused")
    return pub, calls, worker, acks


async def test_a_worker_never_claims_the_entries_it_holds_while_its_acks_fail(
    redis: Any, running: Running
) -> None:
    """Handled, not yet acknowledged (Redis failing for this worker longer than claim_idle):
    idle in Redis's eyes, but this worker's own claim scans leave them to its acknowledgement."""
    pub, calls, worker, acks = await handled_with_acks_refused(redis, running)
    # Idle far past claim_idle plus the confirmation: every scan finds them idle, its own.
    await asyncio.sleep(0.2 + 2.0 + 1.0)
    acks.refusing = False
    await until(lambda: not worker._held, 20, "the acknowledgements applied")
    state = await stream_state(redis, StreamKeys(APP))
    assert state.groups[0].pending == 0
    assert set(calls.values()) == {1}, f"handed again: {calls}"
    assert worker.stats.claimed == 0
    await pub.close()


async def test_a_live_workers_late_acknowledgement_wins_over_another_workers_claim(
    redis: Any, running: Running
) -> None:
    """Worker a's acknowledgements fail past claim_idle (as when Redis stopped for everyone);
    b finds a's entries idle, and a's acknowledgement lands before b's second look: no claim,
    no second handling. (Without the second look b claims them within a scan and a blocking
    read, about a second.)"""
    pub, calls, a, acks = await handled_with_acks_refused(redis, running)
    b = await running.start(
        StreamWorker(
            redis,
            config(consumer="w2", claim_idle=0.2, claim_confirm=6.0),
            [lambda e: calls.update([str(e.event_id)])],
        )
    )
    await until(lambda: len(b._suspects) == 10, 20, "b finds a's entries idle")
    first_look = asyncio.get_running_loop().time()
    await asyncio.sleep(2.5)
    assert b.stats.claimed == 0, "claimed at the first look"
    acks.refusing = False
    await until(lambda: not a._held, 20, "a's acknowledgements applied")
    assert asyncio.get_running_loop().time() - first_look < 6.0, "(too slow to show it)"
    await asyncio.sleep(max(0.0, first_look + 6.5 - asyncio.get_running_loop().time()))
    assert set(calls.values()) == {1}, f"handed again: {calls}"
    assert b.stats.claimed == 0 and not b._suspects
    await pub.close()


async def test_a_retried_append_that_redis_had_applied_is_not_appended_twice(
    redis_server: Any,
) -> None:
    """An append whose call timed out (Redis stopped) is applied when Redis answers again;
    the dispatcher's retry of that batch (the same list) finds its token: no second copy."""
    client = await open_redis(redis_server.url, timeout=0.5)
    try:
        pub = StreamPublisher(client, APP, max_len=1000, group="handlers")
        await pub.start()
        await pub.append([event(100)])  # the script is loaded (EVALSHA finds it)
        batch = [event(i) for i in range(5)]
        redis_server.pause()
        try:
            with pytest.raises(Exception, match="Timeout"):
                await pub.append(batch)
        finally:
            redis_server.resume()
        keys = StreamKeys(APP)

        async def length() -> int:
            return int(await client.xlen(keys.stream))

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while await length() < 6:  # the stopped server applies the call it had received
            assert loop.time() < deadline, "the timed-out append was not applied"
            await asyncio.sleep(0.05)
        await pub.append(batch)  # the dispatcher's retry
        assert pub.reapplied == 1
        assert await length() == 6
        await pub.append([event(i) for i in range(5)])  # another batch, the same events
        assert await length() == 11, "only a retry of the same batch is recognised"
        await pub.close()
    finally:
        await client.aclose()
