"""Webhook replicas: a shared dedupe window and a durable intake in Redis.

With ``QQBOT_REDIS_URL`` and ``QQBOT_TRANSPORT=webhook`` any number of receivers can run behind
a load balancer. Per app::

    qqbot:{<app>}:webhook:intake           a stream of accepted callbacks (id, body)
         consumer group "gateway"          one consumer per process (its holder id)
    qqbot:{<app>}:webhook:seen:<event id>  the shared dedupe window (SET NX EX)

**Before the ACK** (op 12), one Lua script per callback, atomic on the server (the scripts of
concurrent callbacks go in one pipeline: one round trip, like the file journal's group commit):
``SET seen NX EX`` (a callback another replica accepted is a duplicate here too: ACKed, not
delivered), ``XADD`` the callback, and ``XREADGROUP ... >`` for this consumer, which moves
exactly that entry into this process's pending list (nothing else can be undelivered between
two scripts). Only after the script succeeded is the callback queued for the handlers and
answered 200; if Redis fails the answer is 503 and the platform retries (the id leaves the local
window again).

**After the handler**, the entry is acknowledged and deleted (``XACK`` + ``XDEL``, batched
every ``_ACK_EVERY``).

**A dead replica's entries.** Every ``claim_idle / 3`` s each process first resets the idle
time of its own pending entries (``XCLAIM`` to itself, ``JUSTID``: an entry waiting in a long
handler queue of a live replica never looks abandoned), then asks ``XPENDING ... IDLE`` for
entries pending longer than ``claim_idle`` (``QQBOT_STREAM_CLAIM_IDLE``; one round trip when
there are none), claims those a scan at least ``CLAIM_CONFIRM`` (2 s, this process's clock)
earlier found idle too (``XCLAIM``; the stream workers' second look) and hands them to its own
handlers: one WARNING per claim round (how many, from which consumers, how idle), each
callback at DEBUG. So an ACKed callback whose replica died before handling it is handled by
another replica within about 1.33 x ``claim_idle`` + 2 s: 0 lost. The second look is for a
Redis outage: Redis's idle times run on meanwhile, so every live replica's entries look
abandoned when it answers again, until their holder refreshes them; a replica refreshes at
once after a round that failed or waited on Redis.

**The documented window for a second handling**: an entry whose handler completed on a replica
that died before the ``XACK`` reached Redis (the handler in progress at the death, plus at most
``_ACK_EVERY`` of completed ones), and an entry of a replica that stops refreshing its entries
for ``claim_idle`` + 2 s while alive (its process paused, or its event loop blocked, that
long; or cut off from Redis while the others are not). Ids
in the shared window drop every re-delivery by the platform for ``DEDUPE_TTL`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from qqbot_gateway.adapter.protocol import GatewayEvent

from .connect import as_text, keyspace, stop_task
from .stream import ensure_group
from .worker import CLAIM_CONFIRM, SecondLook

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["DEDUPE_TTL", "GROUP", "RedisIntake", "intake_keys"]

_log = logging.getLogger("qqbot_gateway.cluster")

GROUP: Final = "gateway"
#: How long an accepted id stays in the shared window. The platform's redelivery schedule is not
#: documented; an hour is far past any retry we have seen, at ~100 bytes per id.
DEDUPE_TTL: Final = 3600
#: Appends sent in one pipeline at most (one round trip for every callback that arrived while
#: the previous batch was on its way).
_BATCH: Final = 256
#: Handled entries are acknowledged in batches this often (one round trip for many events).
_ACK_EVERY: Final = 0.05
#: Idle entries listed per XPENDING call and claimed per XCLAIM call, and pages per round at
#: most (100,000 pending entries scanned per round: far past a replica's handler queue).
_CLAIM_COUNT: Final = 100
_CLAIM_ROUNDS: Final = 1000
#: After a failed or held-up claim round, the next one comes this soon (it refreshes first).
_RETRY: Final = 0.5
#: Own pending entries refreshed per XCLAIM call.
_REFRESH_CHUNK: Final = 500
#: A consumer (a stopped replica's holder id: a new one per process start) holding nothing
#: and idle this long, and at least 20 claim bounds, is deleted from the group; checked this
#: often. The same rule as the stream workers' (``worker.forget_idle_consumers``).
FORGET_IDLE: Final = 3600.0
FORGET_EVERY: Final = 60.0

# KEYS: stream, seen key. ARGV: event id, body, consumer, ttl.
# Returns the entry id, or 0 when the id is in the shared window already.
_APPEND: Final = """
if not redis.call('SET', KEYS[2], ARGV[3], 'NX', 'EX', ARGV[4]) then return 0 end
local id = redis.call('XADD', KEYS[1], '*', 'id', ARGV[1], 'body', ARGV[2])
redis.call('XREADGROUP', 'GROUP', 'gateway', ARGV[3], 'COUNT', 1, 'STREAMS', KEYS[1], '>')
return id
"""


def intake_keys(app_id: str) -> tuple[str, str]:
    """The stream key and the prefix of the shared window's keys."""
    base = f"{keyspace(app_id)}webhook:"
    return base + "intake", base + "seen:"


Redeliver = Callable[[Mapping[str, Any]], GatewayEvent | None]
#: A callback waiting for its append: the event, its id, the raw body, its answer.
_Submitted = tuple[GatewayEvent, str, bytes, "asyncio.Future[bool]"]


class RedisIntake:
    """The webhook intake's :class:`~qqbot_gateway.adapter.webhook.DispatchJournal` in Redis.

    ``deliver`` queues an event for the handlers; ``forget`` takes an id out of the local dedupe
    window (the append failed: the platform's retry must not be dropped); ``redeliver`` turns a
    claimed entry's payload into an event for this process (None: a local duplicate).
    """

    def __init__(
        self,
        redis: Redis,
        app_id: str,
        *,
        consumer: str,
        claim_idle: float,
        deliver: Callable[[GatewayEvent], None],
        forget: Callable[[str], None],
        redeliver: Redeliver,
        on_error: Callable[[str], None] | None = None,
        forget_idle: float = FORGET_IDLE,
        forget_every: float = FORGET_EVERY,
    ) -> None:
        self._redis = redis
        self.forget_idle = forget_idle
        self.forget_every = forget_every
        self.stream, self._seen = intake_keys(app_id)
        self.consumer = consumer
        self.claim_idle = claim_idle
        self._deliver = deliver
        self._forget = forget
        self._redeliver = redeliver
        self._on_error = on_error
        self._append = redis.register_script(_APPEND)
        self._in_flight: dict[str, asyncio.Future[bool]] = {}
        self._batch: list[_Submitted] = []
        self._writer: asyncio.Task[None] | None = None
        #: Event id -> stream entry id, for the entries this process holds.
        self._entries: dict[str, str] = {}
        self._to_ack: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._failing = False
        #: The idle entries claim rounds found: claimed at a second look.
        self._suspects = SecondLook(CLAIM_CONFIRM, time.monotonic)
        #: Counters for logs and tests.
        self.appended = self.shared_duplicates = self.claimed = self.acked = 0
        #: Stopped replicas' consumer names deleted from the group by this process.
        self.forgotten: list[str] = []

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        await self._ensure_group()
        self._tasks = [
            asyncio.create_task(self._ack_loop(), name="qqbot webhook intake ack"),
            asyncio.create_task(self._claim_loop(), name="qqbot webhook intake claim"),
        ]

    async def flush(self) -> None:
        """Let the appends in flight finish (their callbacks get their answer)."""
        if self._in_flight:
            await asyncio.gather(
                *(asyncio.shield(f) for f in self._in_flight.values()), return_exceptions=True
            )

    async def close(self) -> None:
        # stop_task, not cancel + await: a cancellation redis-py drops mid-command left a loop
        # running and this close waiting for it for ever (and a cancelled close went on
        # quietly, its own CancelledError taken for the loop's).
        for task in self._tasks:
            await stop_task(task)
        self._tasks = []
        with contextlib.suppress(Exception):
            await self._ack_now()

    async def _ensure_group(self) -> None:
        await ensure_group(self._redis, self.stream, GROUP)

    # --- DispatchJournal -----------------------------------------------------------------
    def submit(self, event: GatewayEvent, body: bytes) -> asyncio.Future[bool]:
        """Queue ``event`` for the next batch of appends (one round trip for every callback
        that arrived meanwhile, as the file journal's group commit); the future says whether it
        is durable in Redis (and then in the handler queue). Each caller gets its own shield:
        a request whose client went away never cancels the append."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()
        event_id = event.event_id or ""
        self._batch.append((event, event_id, body, done))
        self._in_flight[event_id] = done
        done.add_done_callback(lambda _f: self._in_flight.pop(event_id, None))
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_batches(), name="qqbot webhook intake")
        return asyncio.shield(done)

    def pending(self, event_id: str) -> asyncio.Future[bool] | None:
        done = self._in_flight.get(event_id)
        return asyncio.shield(done) if done is not None else None

    async def _write_batches(self) -> None:
        while self._batch:
            batch, self._batch = self._batch[:_BATCH], self._batch[_BATCH:]
            try:
                await self._append_batch(batch)
            except BaseException as exc:  # cancelled (close) or a bug: nobody is left hanging
                for _event, event_id, _body, done in batch:
                    if not done.done():
                        self._forget(event_id)
                        done.set_result(False)
                if not isinstance(exc, Exception):
                    raise
                self._error("append", exc)

    async def _append_batch(self, batch: list[_Submitted]) -> None:
        from redis.exceptions import RedisError, ResponseError

        results = await self._run_appends(batch)
        if any(isinstance(r, ResponseError) and "NOGROUP" in str(r) for r in results):
            # Redis lost the group (a restart without persistence): make it again, retry once.
            try:
                await self._redis.delete(*(self._seen + event_id for _, event_id, _, _ in batch))
                await self._ensure_group()
                results = await self._run_appends(batch)
            except (RedisError, OSError) as exc:
                results = [exc] * len(batch)
        for (event, event_id, _body, done), entry in zip(batch, results, strict=True):
            if isinstance(entry, BaseException):
                self._forget(event_id)
                self._error("append", entry)
                done.set_result(False)
                continue
            if self._failing:
                _log.warning("webhook: the Redis intake works again")
                self._failing = False
            if entry == 0 or entry == b"0":
                # Another replica accepted it: ACK, do not hand it to a handler twice. Out of
                # the local window again: if that replica dies, this one may claim its entry.
                self.shared_duplicates += 1
                self._forget(event_id)
                done.set_result(True)
                continue
            self.appended += 1
            self._entries[event_id] = as_text(entry)
            self._deliver(event)
            done.set_result(True)

    async def _run_appends(self, batch: list[_Submitted]) -> list[Any]:
        """One pipeline of append scripts (EVALSHA; loaded first if Redis lacks it): a result
        or an exception per callback, in order."""
        from redis.exceptions import RedisError

        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for _event, event_id, body, _done in batch:
                    await self._append(
                        keys=[self.stream, self._seen + event_id],
                        args=[event_id, body, self.consumer, DEDUPE_TTL],
                        client=pipe,
                    )
                return list(await pipe.execute(raise_on_error=False))
        except (RedisError, OSError) as exc:
            return [exc] * len(batch)

    # --- after the handler ---------------------------------------------------------------
    def handled(self, event_id: str) -> None:
        """The dispatcher's per-event hook (``Progress.remember``): ack the entry soon."""
        entry = self._entries.pop(event_id, None)
        if entry is not None:
            self._to_ack.append(entry)

    async def _ack_loop(self) -> None:
        while True:
            await asyncio.sleep(_ACK_EVERY)
            try:
                await self._ack_now()
            except Exception as exc:  # noqa: BLE001 - retried on the next round
                self._error("ack", exc)

    async def _ack_now(self) -> None:
        if not self._to_ack:
            return
        batch, self._to_ack = self._to_ack, []
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xack(self.stream, GROUP, *batch)
                pipe.xdel(self.stream, *batch)
                await pipe.execute()
        except BaseException:
            self._to_ack[:0] = batch  # keep them for the next round
            raise
        self.acked += len(batch)

    # --- a dead replica's entries ----------------------------------------------------------
    async def _claim_loop(self) -> None:
        idle_ms = max(1, int(self.claim_idle * 1000))
        loop = asyncio.get_running_loop()
        forget_at = loop.time() + self.forget_every
        period = max(0.05, self.claim_idle / 3)
        pause = period
        while True:
            await asyncio.sleep(pause)
            started = loop.time()
            try:
                await self._refresh()
                await self._claim(idle_ms)
                if loop.time() >= forget_at:
                    forget_at = loop.time() + self.forget_every
                    await self._forget_stopped()
                held_up = loop.time() - started > period
            except Exception as exc:  # noqa: BLE001 - retried on the next round
                self._error("claim", exc)
                held_up = True
            # A round that failed or waited on Redis (stopped, unreachable): this replica's
            # entries went unrefreshed meanwhile; refresh them as soon as Redis answers, before
            # the others' second look (CLAIM_CONFIRM) takes them for abandoned.
            pause = min(period, _RETRY) if held_up else period

    async def _forget_stopped(self) -> None:
        """Delete stopped replicas' consumers from the group once they hold nothing (their
        entries were claimed) and were idle far past the claim bound."""
        from .worker import forget_idle_consumers

        self.forgotten += await forget_idle_consumers(
            self._redis,
            self.stream,
            GROUP,
            keep=self.consumer,
            idle=max(self.forget_idle, 20 * self.claim_idle),
        )

    async def _refresh(self) -> None:
        """Reset the idle time of this process's own pending entries (XCLAIM to itself, JUSTID):
        an entry waiting in a live replica's handler queue never looks abandoned, however long
        the queue, so only a dead (or paused) replica's entries are claimed by others."""
        mine: list[int | bytes | str | memoryview[int]] = list(self._entries.values())
        for i in range(0, len(mine), _REFRESH_CHUNK):
            await self._redis.xclaim(
                self.stream, GROUP, self.consumer, 0, mine[i : i + _REFRESH_CHUNK], justid=True
            )

    async def _idle(self, idle_ms: int) -> list[Any]:
        """The pending entries idle past the bound (XPENDING IDLE, page by page, bounded)."""
        found: list[Any] = []
        start = "-"
        for _ in range(_CLAIM_ROUNDS):
            page: Any = await self._redis.xpending_range(
                self.stream, GROUP, min=start, max="+", count=_CLAIM_COUNT, idle=idle_ms
            )
            found += page
            if len(page) < _CLAIM_COUNT:
                break
            start = "(" + as_text(page[-1]["message_id"])
        return found

    async def _claim(self, idle_ms: int) -> None:
        # One round trip when nothing is abandoned (the usual case): which entries are idle
        # past the bound, and whose they were (for the one log line of a takeover). They are
        # claimed at a second look: Redis's idle times run on while it is stopped or cut off,
        # so right after an outage a live replica's entries look abandoned until it refreshes
        # them (the first thing it does when Redis answers again).
        idle = await self._idle(idle_ms)
        rows = self._suspects.confirmed(idle, skip=set(self._entries.values()))
        if not rows:
            return
        confirmed = [as_text(p["message_id"]) for p in rows]
        owners = {
            as_text(p["message_id"]): (as_text(p["consumer"]), int(p["time_since_delivered"]))
            for p in idle
        }
        taken: list[str] = []
        try:
            for i in range(0, len(confirmed), _CLAIM_COUNT):
                # XCLAIM's own bound skips an entry its holder refreshed since (or another
                # replica claimed); an entry deleted meanwhile is not returned.
                ids: list[Any] = confirmed[i : i + _CLAIM_COUNT]
                reply: Any = await self._redis.xclaim(
                    self.stream, GROUP, self.consumer, idle_ms, ids
                )
                for entry_id, fields in reply:
                    entry = as_text(entry_id)
                    if self._adopt(entry, fields):
                        taken.append(entry)
        finally:
            if taken:
                self._log_takeover(taken, owners)

    def _log_takeover(self, taken: list[str], owners: Mapping[str, tuple[str, int]]) -> None:
        """One WARNING per claim round (the per-callback detail is at DEBUG): how many, from
        which consumers, how long they had been idle."""
        by_owner: dict[str, list[int]] = {}
        for entry in taken:
            owner, idle_ms = owners.get(entry, ("another consumer", 0))
            by_owner.setdefault(owner, []).append(idle_ms)
        sources = ", ".join(
            f"{len(idles)} from {owner} (idle up to {max(idles) / 1000:.1f}s)"
            for owner, idles in sorted(by_owner.items())
        )
        _log.warning(
            "webhook: took over %d callback%s that a stopped replica accepted and did not "
            "handle: %s",
            len(taken),
            "" if len(taken) == 1 else "s",
            sources,
        )

    def _adopt(self, entry: str, fields: Mapping[Any, Any] | None) -> bool:
        """Hand a claimed entry to this process's handlers; True if it was another's."""
        fields = fields or {}
        body = fields.get(b"body", fields.get("body"))
        payload: Any = None
        with contextlib.suppress(ValueError, TypeError):
            payload = json.loads(body) if body is not None else None
        event_id = payload.get("id") if isinstance(payload, dict) else None
        if isinstance(event_id, str) and event_id in self._entries:
            return False  # this process's own entry, waiting for its handler: keep it pending
        if isinstance(event_id, str) and event_id in self._in_flight:
            # The platform's retry of this callback is being appended right now, and this
            # entry is an earlier append of it that Redis applied after its caller had given
            # up (a timeout: the callback got a 503). That append will find the id taken and
            # deliver nothing, so this entry must not be acknowledged as a local duplicate:
            # leave it pending; the next round hands it on.
            return False
        event = self._redeliver(payload) if isinstance(payload, dict) else None
        if event is None or event.event_id is None:
            self._to_ack.append(entry)  # unusable, or handled here already: done with it
            return False
        self.claimed += 1
        self._entries[event.event_id] = entry
        _log.debug("webhook: took over callback %s (stream entry %s)", event.event_id, entry)
        self._deliver(event)
        return True

    def _error(self, operation: str, exc: BaseException) -> None:
        if self._on_error is not None:
            with contextlib.suppress(Exception):
                self._on_error(operation)
        if not self._failing:
            _log.warning(
                "webhook: Redis intake %s failed (%s: %s); callbacks get a 503 and are retried",
                operation,
                type(exc).__name__,
                " ".join(str(exc).split()),
            )
            self._failing = True
