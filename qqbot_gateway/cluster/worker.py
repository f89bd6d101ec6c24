"""``qqbot-gateway worker``: runs handlers on the events ``run`` appended to the app's stream.

One worker process is one consumer (``QQBOT_WORKER_NAME``, default ``<hostname>-<pid>``) of a
consumer group (``QQBOT_STREAM_GROUP``). Every group sees every event; the workers of one group
share them. Handlers are called as with ``run --handler``: ``f(event)`` or ``f(event, client)``,
sync or async, with the same :class:`~qqbot_gateway.adapter.protocol.GatewayEvent`; ``client``
has the same ``api`` (an :class:`~qqbot_gateway.adapter.api.OpenAPIClient` on this process's own
access token).

The life of an entry::

    XREADGROUP >            delivered (delivery 1), pending in the group under this consumer
    begin (Lua, per batch)  the event's dedupe key: unset -> "<consumer>" (the in-flight
                            mark, kept as long as a "done" one: a copy read meanwhile waits
                            for a claim, however long the first copy's acknowledgement
                            takes) -> run it; "done" -> duplicate (ack, no handler);
                            another live consumer's -> leave it pending (a copy in flight)
    handlers                every handler returned -> done; one raised -> not acknowledged
    finish (Lua): SET key done EX window; XACK    (after the handlers, one call a batch, atomic)

    pending >= claim_idle   a worker's scan (XPENDING IDLE) finds it and, if a second scan
                            at least CLAIM_CONFIRM s later (this worker's clock) still finds it
                            pending, undelivered since: deliveries below
                            QQBOT_STREAM_MAX_ATTEMPTS -> XCLAIM (delivery n+1) and handled;
                            at the bound -> the dead-letter stream (XADD + XACK in one MULTI),
                            counted; never dropped. A worker never claims an entry it holds
                            itself (running, or handled and waiting for its acknowledgement).

Idle times are Redis's clock, which runs on while Redis is stopped or unreachable: after an
outage longer than ``claim_idle`` every pending entry looks abandoned at once, although the
live workers holding them are about to acknowledge them. The second scan gives them that
moment (their acknowledgements were retried all along), so an outage of Redis alone makes no
second handling.

**Effectively once per group.** An event reaches a handler of a group a second time only if

1. a worker died, or lost Redis while the others kept it (a network partition), for longer
   than ``claim_idle``, after its handlers returned and before its ``SET done`` + ``XACK``
   script was applied: the entry is claimed and handled again (at most the events in flight
   in that worker: ``QQBOT_WORKER_CONCURRENCY``);
2. a handler ran longer than ``claim_idle``: another worker claims the entry and runs it too;
3. a handler raised: the entry is retried (every handler of the worker runs again) until it
   succeeds or goes to the dead-letter stream;
4. the copies are more than ``QQBOT_STREAM_DEDUPE_WINDOW`` apart (the "done" mark expired).

Two copies of one event in the stream (a platform replay after a gateway crash) never both
reach a handler otherwise: the second finds "done", or the first's in-flight mark.

Errors::

    ClusterError
     +-- RedisUnavailable     Redis does not answer at start (exit 2)
     +-- StreamError          the stream is another app's (exit 2)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Container, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from qqbot_gateway.adapter.protocol import GatewayEvent

from .connect import as_text
from .stream import StreamKeys, StreamState, check_owner, decode_entry, dedupe_key, ensure_group
from .stream import stream_state as read_state

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "CLAIM_CONFIRM",
    "HANDLER_SECONDS_BUCKETS",
    "SecondLook",
    "StreamWorker",
    "WorkerConfig",
    "WorkerStats",
    "forget_idle_consumers",
]

_log = logging.getLogger("qqbot_gateway.cluster.worker")

Handler = Callable[[GatewayEvent], Awaitable[Any] | Any]

#: One XREADGROUP takes at most this many entries (fewer when fewer slots are free): large
#: enough that a flood costs a few round trips per thousand events, small enough that one reply
#: stays well under a megabyte.
_MAX_READ: Final = 500
#: XREADGROUP blocks this long for new entries (ms); the loop then checks for a stop request.
_BLOCK_MS: Final = 1000
#: XPENDING looks at this many idle entries per scan.
_SCAN: Final = 100
#: An idle entry is claimed only if a scan at least this long after the first (this process's
#: monotonic clock) still finds it pending with the same delivery count: a live holder whose
#: acknowledgement waited out a Redis outage gets it applied first (it retries every _RETRY).
CLAIM_CONFIRM: Final = 2.0
#: After a Redis error the loops pause this long (a failover takes seconds; no tight loop).
_RETRY: Final = 0.5
#: At a stop, each loop gets this long to end (a blocking read returns within _BLOCK_MS).
_LOOP_EXIT: Final = 5.0
#: The state (length, lag, pending) for metrics is read this often.
_STATE_POLL: Final = 2.0
#: Every this many state polls (60 s) the worker forgets consumers idle for
#: ``WorkerConfig.forget_idle`` (an hour: far past any restart) with nothing pending.
_FORGET_EVERY: Final = 30
#: Handler durations and end-to-end latencies (seconds).
HANDLER_SECONDS_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

# KEYS: the batch's dedupe keys. ARGV: consumer, in-flight mark expiry (ms), force (1: claimed
# entries, whose previous holder is dead or past claim_idle). Per key: 1 run, 0 duplicate
# (handled before), 2 a copy is in flight (this batch's or another consumer's): left pending,
# claimed after claim_idle, by when the copy is done.
_BEGIN: Final = """
local out = {}
for i, k in ipairs(KEYS) do
  local cur = redis.call('GET', k)
  if cur == 'done' then
    out[i] = 0
  elseif cur == false or ARGV[3] == '1' then
    redis.call('SET', k, ARGV[1], 'PX', ARGV[2])
    out[i] = 1
  else
    out[i] = 2
  end
end
return out
"""

# KEYS[1]: the stream, KEYS[2..]: the dedupe keys of the handled entries (not the duplicates').
# ARGV: group, dedupe window (s), the entry ids to acknowledge. Mark done, then XACK: atomic.
_FINISH: Final = """
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], 'done', 'EX', ARGV[2])
end
return redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 3))
"""


class SecondLook:
    """Which idle pending entries (``XPENDING ... IDLE`` rows) to claim: those a scan at least
    ``confirm`` s earlier (``clock``: this process's monotonic clock) found idle too, with the
    same delivery count. Redis measures idle time on its own clock, which runs on while Redis
    is stopped or cut off: right after an outage every entry looks abandoned, and this gives
    the live holders the moment to acknowledge or refresh theirs. Used by the stream workers
    and the webhook replicas' intake."""

    def __init__(self, confirm: float, clock: Callable[[], float]) -> None:
        self.confirm = confirm
        self.clock = clock
        #: Entry id -> (deliveries, first seen idle), as of the last scan.
        self._seen: dict[str, tuple[int, float]] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def confirmed(self, found: list[Any], *, skip: Container[str] = ()) -> list[Any]:
        """The rows of ``found`` (this scan) to claim now; ids in ``skip`` (this process's own
        entries) are never claimed. Remembers this scan's idle entries for the next one."""
        now = self.clock()
        seen_before = self._seen
        seen: dict[str, tuple[int, float]] = {}
        confirmed = []
        for row in found:
            entry_id = as_text(row["message_id"])
            if entry_id in skip:
                continue
            deliveries = int(row["times_delivered"])
            first = seen_before.get(entry_id)
            if first is None or first[0] != deliveries:
                first = (deliveries, now)
            seen[entry_id] = first
            if now - first[1] >= self.confirm:
                confirmed.append(row)
        self._seen = seen
        return confirmed


def default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    app_id: str
    group: str
    consumer: str
    concurrency: int = 64
    claim_idle: float = 30.0
    max_attempts: int = 5
    dedupe_window: float = 3600.0
    #: At a stop, running handlers get this long to finish (QQBOT_DRAIN_TIMEOUT).
    drain_timeout: float = 10.0
    #: Consumers idle this long (and at least 20 claim_idle) with nothing pending are deleted.
    forget_idle: float = 3600.0
    #: An idle entry is claimed at a second look this much later (see CLAIM_CONFIRM).
    claim_confirm: float = CLAIM_CONFIRM


@dataclass(slots=True)
class WorkerStats:
    """Counters the worker keeps (read by ``telemetry.stream``)."""

    handled: int = 0
    failed: int = 0
    duplicates: int = 0
    claimed: int = 0
    dead_letters: int = 0
    busy_skipped: int = 0
    in_flight: int = 0
    #: Bucket counts (one more than the bounds: +Inf) and sums.
    handler_buckets: list[int] = field(
        default_factory=lambda: [0] * (len(HANDLER_SECONDS_BUCKETS) + 1)
    )
    handler_seconds: float = 0.0
    latency_buckets: list[int] = field(
        default_factory=lambda: [0] * (len(HANDLER_SECONDS_BUCKETS) + 1)
    )
    latency_seconds: float = 0.0
    latency_count: int = 0
    #: The last state read from Redis (None before the first read) and when (monotonic).
    state: StreamState | None = None
    redis_ok: bool = False


@dataclass(slots=True)
class _Entry:
    entry_id: str
    raw: bytes
    event: GatewayEvent
    key: str
    published: float


class StreamWorker:
    """One consumer; ``start()``, then ``run(stop)`` until ``stop`` is set; see the docstring."""

    def __init__(self, redis: Redis, config: WorkerConfig, handlers: Sequence[Handler]) -> None:
        if not handlers:
            raise ValueError("a worker needs at least one handler")
        self.redis = redis
        self.config = config
        self.keys = StreamKeys(config.app_id)
        self.handlers = list(handlers)
        self.stats = WorkerStats()
        self._slots = asyncio.Semaphore(config.concurrency)
        self._done: list[_Entry] = []
        #: Entry ids this worker holds: handlers running, or done and not yet acknowledged.
        #: Its own claim scans skip them (they are idle in Redis's eyes, not abandoned).
        self._held: set[str] = set()
        #: The idle entries claim scans found: claimed at a second look.
        self._suspects = SecondLook(config.claim_confirm, time.monotonic)
        self._done_ready = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._begin: Any = None
        self._finish_script: Any = None
        self._loop = asyncio.get_running_loop()

    # --- start ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Check the stream is this app's and create the group; errors are ClusterErrors."""
        await check_owner(self.redis, self.keys, claim=True)
        created = await ensure_group(self.redis, self.keys.stream, self.config.group)
        if created:
            _log.info("created consumer group %s on %s", self.config.group, self.keys.stream)
        self._begin = self.redis.register_script(_BEGIN)
        self._finish_script = self.redis.register_script(_FINISH)
        await self.refresh_state()

    async def refresh_state(self) -> StreamState:
        state = await read_state(self.redis, self.keys)
        self.stats.state = state
        return state

    # --- run -----------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        loops = [
            asyncio.create_task(self._reader(stop), name="qqbot worker reader"),
            asyncio.create_task(self._claimer(stop), name="qqbot worker claimer"),
            asyncio.create_task(self._acker(stop), name="qqbot worker acker"),
            asyncio.create_task(self._poller(stop), name="qqbot worker state"),
        ]
        stopper = asyncio.create_task(stop.wait(), name="qqbot worker stop")
        try:
            await asyncio.wait([stopper, *loops], return_when=asyncio.FIRST_COMPLETED)
            for task in loops:
                if task.done() and not stop.is_set():
                    # A loop never ends by itself: a bug. Stop (exit 1) rather than run on
                    # without reading, claiming or acknowledging.
                    exc = task.exception()
                    raise RuntimeError(f"worker loop {task.get_name()!r} stopped: {exc!r}") from exc
        finally:
            stopper.cancel()
            reader, claimer, acker, poller = loops
            # Every loop also ends by itself once ``stop`` is set: a cancellation that the
            # Redis client absorbs (it may, mid-command) delays a loop, never hangs the stop.
            for task in (reader, claimer, poller):
                task.cancel()
            await asyncio.wait({reader, claimer, poller}, timeout=_LOOP_EXIT)
            await self.drain(self.config.drain_timeout)
            self._done_ready.set()  # the acker flushes what is left and returns
            await asyncio.wait({acker}, timeout=_LOOP_EXIT)
            for task in loops:
                if not task.done():
                    task.cancel()

    async def drain(self, timeout: float = 10.0) -> None:
        """Let running handlers finish (bounded), then acknowledge what they completed."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        if self._done:
            with contextlib.suppress(Exception):
                await self._flush()

    async def _reader(self, stop: asyncio.Event) -> None:
        cfg = self.config
        while not stop.is_set():
            await self._slots.acquire()
            free = 1
            while free < _MAX_READ and not self._slots.locked():
                await self._slots.acquire()
                free += 1
            try:
                reply: Any = await self.redis.xreadgroup(
                    cfg.group,
                    cfg.consumer,
                    {self.keys.stream: ">"},
                    count=free,
                    block=_BLOCK_MS,
                )
                self.stats.redis_ok = True
            except Exception as exc:  # noqa: BLE001 - reported, retried
                for _ in range(free):
                    self._slots.release()
                self._redis_failed("XREADGROUP", exc)
                await asyncio.sleep(_RETRY)
                continue
            entries = reply[0][1] if reply else []
            for _ in range(free - len(entries)):
                self._slots.release()
            if entries:
                await self._process(entries, claimed=False)

    async def _claimer(self, stop: asyncio.Event) -> None:
        cfg = self.config
        period = max(0.05, min(cfg.claim_idle / 4, 5.0))
        idle_ms = max(1, int(cfg.claim_idle * 1000))
        while not stop.is_set():
            await asyncio.sleep(period)
            try:
                await self._claim_once(idle_ms)
            except Exception as exc:  # noqa: BLE001 - reported, retried
                self._redis_failed("claim", exc)

    async def _claim_once(self, idle_ms: int) -> None:
        cfg = self.config
        # (Plus the entries this worker holds: they are skipped, and must not hide others.)
        found: Any = await self.redis.xpending_range(
            self.keys.stream, cfg.group, "-", "+", _SCAN + len(self._held), idle=idle_ms
        )
        stale = self._suspects.confirmed(found, skip=self._held)
        if not stale:
            return
        dead = [
            (as_text(p["message_id"]), int(p["times_delivered"]))
            for p in stale
            if int(p["times_delivered"]) >= cfg.max_attempts
        ]
        retry = [
            as_text(p["message_id"]) for p in stale if int(p["times_delivered"]) < cfg.max_attempts
        ]
        if dead:
            # Only the consumer whose XCLAIM wins (it resets the idle time) moves an entry.
            ids: list[Any] = [entry_id for entry_id, _ in dead]
            won: Any = await self.redis.xclaim(
                self.keys.stream, cfg.group, cfg.consumer, idle_ms, ids, justid=True
            )
            mine = {as_text(i) for i in won}
            for entry_id, deliveries in dead:
                if entry_id in mine:
                    await self._dead_letter(entry_id, deliveries)
        if not retry:
            return
        # Slots first (at most the concurrency: more would wait for slots only the claimed
        # entries could free), then the claim: a claimed entry always has a slot.
        ids = list(retry[: cfg.concurrency])
        for _ in ids:
            await self._slots.acquire()
        try:
            reply: Any = await self.redis.xclaim(
                self.keys.stream, cfg.group, cfg.consumer, idle_ms, ids
            )
        except BaseException:
            for _ in ids:
                self._slots.release()
            raise
        claimed = [c for c in reply if c and c[1]]
        for _ in range(len(ids) - len(claimed)):
            self._slots.release()
        if not claimed:
            return
        self.stats.claimed += len(claimed)
        _log.info("claimed %d entries idle for %gs or more", len(claimed), cfg.claim_idle)
        await self._process(claimed, claimed=True)

    async def _dead_letter(
        self, entry_id: str, deliveries: int, reason: str | None = None, raw: bytes | None = None
    ) -> None:
        cfg, keys = self.config, self.keys
        if raw is None:
            found: Any = await self.redis.xrange(keys.stream, entry_id, entry_id)
            raw = found[0][1].get(b"e", b"") if found else b""
        errors = keys.errors
        if reason is None:
            last: Any = await self.redis.hget(errors, f"{cfg.group}:{entry_id}")
            reason = as_text(last) if last else "no handler completed"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(
                keys.dead,
                {
                    "e": raw or b"",
                    "entry": entry_id,
                    "group": cfg.group,
                    "consumer": cfg.consumer,
                    "deliveries": str(deliveries),
                    "reason": reason[:500],
                    "at": f"{time.time():.3f}",
                },
            )
            pipe.xack(keys.stream, cfg.group, entry_id)
            pipe.hdel(errors, f"{cfg.group}:{entry_id}")
            await pipe.execute()
        self.stats.dead_letters += 1
        _log.error(
            "entry %s moved to the dead-letter stream %s after %d deliveries: %s",
            entry_id,
            keys.dead,
            deliveries,
            reason,
        )

    # --- handling ------------------------------------------------------------------------
    async def _process(self, entries: list[Any], *, claimed: bool) -> None:
        """Decode, run the batch's begin script, start the handlers. Each entry holds a slot."""
        cfg = self.config
        batch: list[_Entry] = []
        for entry_id_raw, fields in entries:
            entry_id = as_text(entry_id_raw)
            raw = fields.get(b"e", b"")
            try:
                event, app, published = decode_entry(raw)
                if app != cfg.app_id:
                    raise ValueError(f"written by app {app!r}, not {cfg.app_id!r}")
            except ValueError as exc:
                self._slots.release()
                try:
                    await self._dead_letter(entry_id, 1, reason=str(exc), raw=raw)
                except Exception as redis_exc:  # noqa: BLE001 - stays pending: retried by a claim
                    self._redis_failed("dead letter", redis_exc)
                continue
            batch.append(_Entry(entry_id, raw, event, dedupe_key(event, entry_id), published))
        if not batch:
            return
        # The in-flight mark outlives any wait for an acknowledgement (a Redis outage included):
        # a claim (force) takes it over from a dead holder; a fresh copy never does.
        ttl_ms = max(1000, int(max(cfg.claim_idle, cfg.dedupe_window) * 1000))
        try:
            verdicts = await self._begin(
                keys=[self.keys.done(cfg.group, e.key) for e in batch],
                args=[cfg.consumer, ttl_ms, 1 if claimed else 0],
            )
        except Exception as exc:  # noqa: BLE001 - left pending: claimed again after claim_idle
            for _ in batch:
                self._slots.release()
            self._redis_failed("begin", exc)
            return
        for entry, verdict in zip(batch, verdicts, strict=True):
            if verdict == 1:
                self._held.add(entry.entry_id)
                self._run(entry)
            elif verdict == 0:
                self.stats.duplicates += 1
                # DEBUG: a replay after a gateway crash brings hundreds at once; the metric
                # (worker_events_total{outcome="duplicate"}) counts them.
                _log.debug(
                    "entry %s: %s (%s) was handled before; acknowledged without a handler",
                    entry.entry_id,
                    entry.event.type,
                    entry.key,
                )
                self._held.add(entry.entry_id)
                self._finish(entry, ok=None)
            else:
                self.stats.busy_skipped += 1
                self._slots.release()

    def _run(self, entry: _Entry) -> None:
        """Call the handlers; sync ones inline, the first awaitable finishes in a task."""
        self.stats.in_flight += 1
        started = self._loop.time()
        handlers = self.handlers
        for index, handler in enumerate(handlers):
            try:
                result = handler(entry.event)
            except Exception as exc:  # noqa: BLE001 - a handler's bug: retried, then dead-lettered
                self._failed(entry, handler, exc)
                return
            if result is not None and inspect.isawaitable(result):
                task = asyncio.create_task(
                    self._finish_async(entry, result, index + 1, started),
                    name=f"qqbot worker handler {entry.entry_id}",
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return
        self._succeeded(entry, started)

    async def _finish_async(
        self, entry: _Entry, awaitable: Awaitable[Any], after: int, started: float
    ) -> None:
        handler = self.handlers[after - 1]
        try:
            await awaitable
            for handler in self.handlers[after:]:
                result = handler(entry.event)
                if result is not None and inspect.isawaitable(result):
                    await result
        except asyncio.CancelledError:
            self._held.discard(entry.entry_id)
            self.stats.in_flight -= 1
            self._slots.release()
            raise
        except Exception as exc:  # noqa: BLE001 - a handler's bug: retried, then dead-lettered
            self._failed(entry, handler, exc)
            return
        self._succeeded(entry, started)

    def _succeeded(self, entry: _Entry, started: float) -> None:
        stats = self.stats
        stats.in_flight -= 1
        duration = self._loop.time() - started
        stats.handled += 1
        stats.handler_seconds += duration
        stats.handler_buckets[bisect_left(HANDLER_SECONDS_BUCKETS, duration)] += 1
        if entry.published:
            latency = max(0.0, time.time() - entry.published)
            stats.latency_count += 1
            stats.latency_seconds += latency
            stats.latency_buckets[bisect_left(HANDLER_SECONDS_BUCKETS, latency)] += 1
        self._finish(entry, ok=True)

    def _failed(self, entry: _Entry, handler: Handler, exc: Exception) -> None:
        self._held.discard(entry.entry_id)  # pending for a retry: claimable, by this worker too
        self.stats.in_flight -= 1
        self.stats.failed += 1
        name = getattr(handler, "__qualname__", repr(handler))
        _log.error(
            "handler %s failed on %s (entry %s): %s: %s; left pending for a retry",
            name,
            entry.event.type,
            entry.entry_id,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        error = f"{name}: {type(exc).__name__}: {exc}"[:500]
        task = asyncio.create_task(self._record_error(entry.entry_id, error))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._slots.release()

    async def _record_error(self, entry_id: str, error: str) -> None:
        errors = self.keys.errors
        with contextlib.suppress(Exception):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hset(errors, f"{self.config.group}:{entry_id}", error)
                # The hash outlives no entry for long: a day past the last failure.
                pipe.expire(errors, 86400)
                await pipe.execute()

    def _finish(self, entry: _Entry, *, ok: bool | None) -> None:
        """Queue the entry's ``SET done`` + ``XACK`` (``ok`` None: a duplicate, XACK only)."""
        if ok is None:
            entry.key = ""
        self._done.append(entry)
        self._done_ready.set()

    async def _acker(self, stop: asyncio.Event) -> None:
        while True:
            await self._done_ready.wait()
            self._done_ready.clear()
            while self._done:
                try:
                    await self._flush()
                except Exception as exc:  # noqa: BLE001 - kept; flushed again after a pause
                    self._redis_failed("ack", exc)
                    if stop.is_set():
                        return  # unacknowledged: claimed by another worker after claim_idle
                    await asyncio.sleep(_RETRY)
            if stop.is_set():
                return

    async def _flush(self) -> None:
        done, self._done = self._done, []
        cfg, keys = self.config, self.keys
        window = max(1, int(cfg.dedupe_window))
        try:
            await self._finish_script(
                keys=[keys.stream, *(keys.done(cfg.group, e.key) for e in done if e.key)],
                args=[cfg.group, window, *(e.entry_id for e in done)],
            )
        except BaseException:
            self._done[:0] = done
            raise
        held = self._held
        for entry in done:
            held.discard(entry.entry_id)
            self._slots.release()

    # --- state ---------------------------------------------------------------------------
    async def _poller(self, stop: asyncio.Event) -> None:
        polls = 0
        while not stop.is_set():
            await asyncio.sleep(_STATE_POLL)
            polls += 1
            try:
                await self.refresh_state()
                self.stats.redis_ok = True
                if polls % _FORGET_EVERY == 0:
                    await self.forget_consumers()
            except Exception as exc:  # noqa: BLE001 - reported, retried
                self._redis_failed("state", exc)

    async def forget_consumers(self) -> list[str]:
        """Delete the group's consumers that hold nothing and were idle for ``forget_idle``
        (dead workers' names: a pod name per restart would pile up in ``XINFO CONSUMERS`` and
        ``stream_group_consumers``). A consumer with pending entries is never deleted (they
        would be lost to the group); a live one deleted by mistake is re-created by its next
        read."""
        cfg = self.config
        return await forget_idle_consumers(
            self.redis,
            self.keys.stream,
            cfg.group,
            keep=cfg.consumer,
            idle=max(cfg.forget_idle, 20 * cfg.claim_idle),
        )

    def _redis_failed(self, what: str, exc: Exception) -> None:
        if self.stats.redis_ok:
            _log.warning("worker: %s failed: %s: %s; retrying", what, type(exc).__name__, exc)
        else:
            _log.debug("worker: %s failed again: %s: %s", what, type(exc).__name__, exc)
        self.stats.redis_ok = False


# KEYS: stream. ARGV: group, consumer, idle ms. Deletes the consumer only if, at that moment,
# it holds no pending entry and has been idle that long (1), else 0: checked and deleted in one
# step, so an entry it reads meanwhile is never dropped from the group with it.
_FORGET: Final = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['name'] == ARGV[2] then
    if f['pending'] ~= 0 or f['idle'] <= tonumber(ARGV[3]) then return 0 end
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
    return 1
  end
end
return 0
"""


async def forget_idle_consumers(
    redis: Redis, stream: str, group: str, *, keep: str, idle: float
) -> list[str]:
    """Delete ``group``'s consumers (other than ``keep``) that hold nothing and were idle for
    ``idle`` seconds: dead processes' names would pile up in ``XINFO CONSUMERS`` (a pod name
    per restart). Used by the stream workers and by the webhook replicas' intake. A consumer
    with pending entries is never deleted (they would be lost to the group); a live one
    deleted by mistake is re-created by its next read."""
    idle_ms = int(idle * 1000)
    consumers: Any = await redis.xinfo_consumers(stream, group)
    candidates = [
        as_text(c.get("name"))
        for c in consumers
        if as_text(c.get("name")) != keep
        and not int(c.get("pending") or 0)
        and int(c.get("idle") or 0) > idle_ms
    ]
    gone = []
    for name in candidates:
        if int(await redis.eval(_FORGET, 1, stream, group, name, idle_ms)) == 1:
            gone.append(name)
    if gone:
        _log.info("forgot %d idle consumers of group %s: %s", len(gone), group, gone)
    return gone
