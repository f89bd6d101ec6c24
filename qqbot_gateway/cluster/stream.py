"""The event stream (``QQBOT_DELIVERY=stream``): ``run`` appends, ``worker`` consumes.

Keys, all under the app's :func:`~.connect.keyspace` (one Cluster slot)::

    qqbot:{<app>}:events              the stream; one entry per accepted event, field ``e``
    qqbot:{<app>}:events:meta         hash: ``app`` (the app id that writes), ``format``
    qqbot:{<app>}:events:dead         the dead-letter stream (see ``worker``)
    qqbot:{<app>}:done:<group>:<key>  an event handled by ``group`` (dedupe, with expiry)

An entry's ``e`` is one JSON object: ``t`` type, ``d`` data (as the platform sent it), ``s``
seq, ``i`` event id, ``h`` shard, ``sid`` session id, ``r`` replayed, ``a`` app id, ``ts``
wall-clock time of the append (for end-to-end latency).

**Durable before handled.** :meth:`StreamPublisher.append` is the dispatcher's batch sink: one
script call per batch doing an ``XADD`` per event, and the dispatcher marks the batch handled
(so the session's checkpoint watermark passes it) only after Redis answered the call. An event
Redis did not acknowledge is replayed from the platform after a crash, exactly like an event
that had not reached a handler with ``local`` delivery. What "answered" means on disk is Redis's
own persistence setting: with ``appendfsync always`` the reply follows the fsync; with the
default ``everysec`` up to a second of appends can be lost with the Redis host (not with the
gateway).

**Bounded, never trimmed unread.** The stream holds about ``max_len`` entries at most. Every
``poll`` seconds the publisher trims what every consumer group has acknowledged (``XTRIM MINID``
to the slowest group's oldest pending entry, or past its last delivered one), so the stream's
length is the backlog some group still owes. While the stream holds ``max_len`` or more, an
append waits (a batch appended below the bound may pass it by up to its own size, 512 at most;
logged once, counted in ``blocked``): the handler queue then fills and the session pauses its
intake and resumes later, the same backpressure as a full handler queue with ``local`` delivery.
An entry some group has not acknowledged is never trimmed, and a stream nobody reads (no group
yet) is never trimmed at all.

**Health.** :meth:`StreamPublisher.append_health` tells the health evaluator (the
``stream/append`` check of ``/healthz`` and ``/readyz``) whether appends are failing (the last
append, or the last poll, raised: Redis down, stopped, read-only, out of memory), how long an
unanswered append has waited, and whether appends are held by a full stream. An append failure
streak ends only with an append Redis accepted; a poll failure streak with a poll that answered.

Errors::

    ClusterError
     +-- StreamError        the stream belongs to another app or format (exit 2 at start)
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import orjson

from qqbot_gateway.adapter.protocol import GatewayEvent, new_event

from .connect import ClusterError, as_text, keyspace, stop_task

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "FORMAT",
    "AppendHealth",
    "GroupState",
    "StreamError",
    "StreamKeys",
    "StreamPublisher",
    "StreamState",
    "check_owner",
    "decode_entry",
    "dedupe_key",
    "encode_event",
    "ensure_group",
    "stream_state",
]

_log = logging.getLogger("qqbot_gateway.cluster.stream")

#: The entry format; a reader refuses a stream whose meta names another one.
FORMAT: Final = "1"
#: How often the publisher trims and re-reads the groups' state (and how often a blocked append
#: looks again). Half a second: a blocked gateway resumes appending within it, and the two
#: commands it costs are nothing to Redis.
DEFAULT_POLL: Final = 0.5


# KEYS[1]: the stream, KEYS[2]: this writer's last-batch key. ARGV[1]: the batch's token,
# ARGV[2..]: the entries. A retry of a batch Redis applied after the writer had given up on
# the call (a timeout during an outage) finds its token and appends nothing: -1.
_APPEND: Final = """
if redis.call('GET', KEYS[2]) == ARGV[1] then return -1 end
redis.call('SET', KEYS[2], ARGV[1], 'EX', 86400)
local stream = KEYS[1]
for i = 2, #ARGV do
  redis.call('XADD', stream, '*', 'e', ARGV[i])
end
return #ARGV - 1
"""


class StreamError(ClusterError):
    """The stream is not this app's (another app id or entry format wrote it)."""


@dataclass(frozen=True, slots=True)
class StreamKeys:
    app_id: str
    stream: str = field(init=False)
    meta: str = field(init=False)
    dead: str = field(init=False)
    #: Hash: ``<group>:<entry id>`` -> the last handler error (for the dead letter).
    errors: str = field(init=False)
    #: Prefix of the writers' last-batch keys (one per gateway process and shard, 1 day).
    batches: str = field(init=False)
    prefix: str = field(init=False)

    def __post_init__(self) -> None:
        prefix = keyspace(self.app_id)
        object.__setattr__(self, "prefix", prefix)
        object.__setattr__(self, "stream", prefix + "events")
        object.__setattr__(self, "meta", prefix + "events:meta")
        object.__setattr__(self, "dead", prefix + "events:dead")
        object.__setattr__(self, "errors", prefix + "events:errors")
        object.__setattr__(self, "batches", prefix + "events:batch:")

    def done(self, group: str, key: str) -> str:
        return f"{self.prefix}done:{group}:{key}"


def dedupe_key(event: GatewayEvent, entry_id: str) -> str:
    """What identifies an event across copies: the platform's id; else session and seq (a
    replay after a resume keeps both); else the stream entry (no dedupe beyond redelivery)."""
    if event.event_id:
        return "i:" + event.event_id
    if event.session_id and event.seq is not None:
        return f"s:{event.session_id}:{event.seq}"
    return "x:" + entry_id


def encode_event(event: GatewayEvent, app_id: str, now: float) -> bytes:
    return orjson.dumps(
        {
            "t": event.type,
            "d": event.data,
            "s": event.seq,
            "i": event.event_id,
            "h": event.shard,
            "sid": event.session_id,
            "r": event.replayed,
            "a": app_id,
            "ts": now,
        }
    )


def decode_entry(raw: bytes) -> tuple[GatewayEvent, str, float]:
    """``(event, app id that wrote it, append time)``; ValueError for a malformed entry."""
    try:
        obj = orjson.loads(raw)
        event = new_event(
            str(obj["t"]),
            obj.get("d"),
            obj.get("s"),
            obj.get("i"),
            int(obj.get("h", 0)),
            obj.get("sid"),
            bool(obj.get("r", False)),
        )
        return event, str(obj.get("a", "")), float(obj.get("ts", 0.0))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed entry: {type(exc).__name__}: {exc}") from None


async def check_owner(redis: Redis, keys: StreamKeys, *, claim: bool) -> None:
    """StreamError unless the stream is this app's (format included). ``claim`` (the writer):
    record this app as the stream's owner when nothing owns it yet."""
    meta: Any = await redis.hgetall(keys.meta)
    owner = _text(meta.get(b"app"))
    fmt = _text(meta.get(b"format"))
    if owner is None:
        if await redis.exists(keys.stream):
            raise StreamError(
                f"{keys.stream} exists but was not written by qqbot-gateway (no {keys.meta}); "
                "refusing to read or append to it"
            )
        if claim:
            await redis.hset(keys.meta, mapping={"app": keys.app_id, "format": FORMAT})
        return
    if owner != keys.app_id:
        raise StreamError(
            f"{keys.stream} is written by app {owner!r}, not {keys.app_id!r}; check QQBOT_APP_ID"
        )
    if fmt != FORMAT:
        raise StreamError(
            f"{keys.stream} holds entry format {fmt!r}; this version reads {FORMAT!r}"
        )


async def ensure_group(redis: Redis, stream: str, group: str) -> bool:
    """Create ``group`` of ``stream`` reading from its start (and the stream); True if
    created. (The event stream's groups, and the webhook intake's.)"""
    from redis.exceptions import ResponseError

    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" in str(exc):
            return False
        raise
    return True


def _text(value: Any) -> str | None:
    return None if value is None else as_text(value)


@dataclass(frozen=True, slots=True)
class GroupState:
    name: str
    consumers: int
    pending: int
    #: Entries not yet delivered to the group (None: Redis could not tell, see XINFO GROUPS).
    lag: int | None
    last_delivered: str
    #: The oldest pending entry's id (None: nothing pending).
    oldest_pending: str | None


@dataclass(frozen=True, slots=True)
class StreamState:
    length: int
    groups: tuple[GroupState, ...]
    dead_letters: int

    def trim_point(self) -> str | None:
        """The smallest id some group still needs (None: no group, trim nothing)."""
        if not self.groups:
            return None
        needed = []
        for g in self.groups:
            if g.oldest_pending is not None:
                needed.append(_parse_id(g.oldest_pending))
            else:
                ms, seq = _parse_id(g.last_delivered)
                needed.append((ms, seq + 1))
        ms, seq = min(needed)
        return f"{ms}-{seq}"


def _parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def stream_state(redis: Redis, keys: StreamKeys) -> StreamState:
    """The stream's length, every group's pending/lag and the dead-letter count."""
    from redis.exceptions import ResponseError

    async with redis.pipeline(transaction=False) as pipe:
        pipe.xlen(keys.stream)
        pipe.xlen(keys.dead)
        length, dead = await pipe.execute()
    try:
        infos = await redis.xinfo_groups(keys.stream)
    except ResponseError:  # no such key yet
        infos = []
    groups = []
    for info in infos:
        name = _text(info.get("name")) or "?"
        pending = int(info.get("pending") or 0)
        oldest: str | None = None
        if pending:
            summary = await redis.xpending(keys.stream, name)
            oldest = _text(summary.get("min"))
        lag = info.get("lag")
        groups.append(
            GroupState(
                name=name,
                consumers=int(info.get("consumers") or 0),
                pending=pending,
                lag=None if lag is None else int(lag),
                last_delivered=_text(info.get("last-delivered-id")) or "0-0",
                oldest_pending=oldest,
            )
        )
    return StreamState(int(length), tuple(groups), int(dead))


@dataclass(frozen=True, slots=True)
class AppendHealth:
    """The publisher's state for the health evaluator; durations in seconds on its own clock
    (so the evaluator needs no shared clock)."""

    #: How long appends (or polls) have been failing: since the first failure of the current
    #: streak; None while the last attempt succeeded.
    failing_for: float | None
    #: The last failure, ``"append: TimeoutError: ..."`` / ``"poll: ..."`` (None: none).
    error: str | None
    #: Failed attempts in the current streak (appends and polls together).
    failures: int
    #: How long the append in flight has waited for Redis's answer (None: none in flight).
    in_flight_for: float | None
    #: How long appends have been held by a full stream (None: not held).
    blocked_for: float | None
    length: int
    max_len: int
    #: Seconds since Redis last accepted an append by this process (None: none yet).
    last_append_ago: float | None


class StreamPublisher:
    """Appends accepted events to the app's stream; see the module docstring.

    ``start()`` checks the owner, creates ``group`` (so events appended before any worker are
    kept for it) and starts the trimmer; ``append`` is the dispatcher's sink; ``close()``.
    """

    def __init__(
        self,
        redis: Redis,
        app_id: str,
        *,
        max_len: int,
        group: str | None,
        poll: float = DEFAULT_POLL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.clock = clock
        self.keys = StreamKeys(app_id)
        self.max_len = max_len
        self.group = group
        self.poll = poll
        #: Entries appended by this process; appends that had to wait for room.
        self.appended = 0
        self.blocked = 0
        #: The stream's length as last seen (after a trim, or counted by appends since).
        self.length = 0
        #: The last state read (None before the first poll).
        self.state: StreamState | None = None
        #: Failed appends and polls (each retry counts).
        self.append_failures = 0
        self.poll_failures = 0
        self._task: asyncio.Task[None] | None = None
        self._append = redis.register_script(_APPEND)
        #: This process's writer id: the last batch's token is kept per writer and shard.
        self._writer = uuid.uuid4().hex[:16]
        #: Ghost appends recognised (a retried batch Redis had applied already).
        self.reapplied = 0
        #: Per shard: the last batch handed to ``append`` and its token.
        self._last_batch: dict[int, tuple[list[GatewayEvent], str]] = {}
        self._batches = 0
        # Health (see AppendHealth), on self.clock.
        self._append_failing: tuple[float, int, str] | None = None  # (since, count, error)
        self._poll_failing: tuple[float, int, str] | None = None
        self._in_flight_since: float | None = None
        self._blocked_since: float | None = None
        self._last_append_at: float | None = None

    def append_health(self) -> AppendHealth:
        now = self.clock()
        streaks = [f for f in (self._append_failing, self._poll_failing) if f is not None]
        failing_for = max(0.0, now - min(f[0] for f in streaks)) if streaks else None
        error: str | None = None
        if self._append_failing is not None:  # the append's own error says most
            error = "append: " + self._append_failing[2]
        elif self._poll_failing is not None:
            error = "poll: " + self._poll_failing[2]
        return AppendHealth(
            failing_for=failing_for,
            error=error,
            failures=sum(f[1] for f in streaks),
            in_flight_for=(
                None if self._in_flight_since is None else max(0.0, now - self._in_flight_since)
            ),
            blocked_for=(
                None if self._blocked_since is None else max(0.0, now - self._blocked_since)
            ),
            length=self.length,
            max_len=self.max_len,
            last_append_ago=(
                None if self._last_append_at is None else max(0.0, now - self._last_append_at)
            ),
        )

    def _failure(
        self, streak: tuple[float, int, str] | None, exc: BaseException
    ) -> tuple[float, int, str]:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if streak is None:
            return (self.clock(), 1, text)
        return (streak[0], streak[1] + 1, text)

    async def start(self) -> None:
        await check_owner(self.redis, self.keys, claim=True)
        if self.group is not None:
            await ensure_group(self.redis, self.keys.stream, self.group)
        await self.refresh()
        self._task = asyncio.create_task(self._trimmer(), name="qqbot stream trimmer")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            # Not one cancel(): redis-py on Python 3.11 can drop it mid-command (see stop_task).
            await stop_task(task)

    async def refresh(self) -> StreamState:
        """Trim what every group acknowledged; read the state (length, groups, dead letters)."""
        try:
            state = await stream_state(self.redis, self.keys)
            point = state.trim_point()
            if point is not None and state.length:
                trimmed = await self.redis.xtrim(self.keys.stream, minid=point, approximate=False)
                if trimmed:
                    state = StreamState(
                        state.length - int(trimmed), state.groups, state.dead_letters
                    )
        except Exception as exc:
            self.poll_failures += 1
            self._poll_failing = self._failure(self._poll_failing, exc)
            raise
        self._poll_failing = None
        self.state = state
        self.length = state.length
        return state

    async def _trimmer(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 - the next poll tries again; appends report
                _log.debug("stream poll failed: %s: %s", type(exc).__name__, exc)

    async def append(self, events: list[GatewayEvent]) -> None:
        """The dispatcher's sink: returns once Redis has answered every ``XADD``."""
        count = len(events)
        if self.length >= self.max_len:
            await self._wait_for_room()
        app, now = self.keys.app_id, time.time()
        clock = self.clock
        self._in_flight_since = clock()
        # The batch's token, kept per shard: the dispatcher retries a failed batch with the same
        # list, so a retry of a call that timed out but was applied later finds its token in
        # Redis (no second copy); every other batch gets a new one.
        shard = events[0].shard
        last = self._last_batch.get(shard)
        if last is not None and last[0] is events:
            token = last[1]
        else:
            self._batches += 1
            token = str(self._batches)
            self._last_batch[shard] = (events, token)
        try:
            # One script call per batch: one command to pack and parse instead of one per event
            # (a third of the gateway's cost per event at a flood), applied atomically.
            appended = await self._append(
                keys=[self.keys.stream, f"{self.keys.batches}{self._writer}:{shard}"],
                args=[token, *(encode_event(e, app, now) for e in events)],
            )
        except Exception as exc:
            self.append_failures += 1
            self._append_failing = self._failure(self._append_failing, exc)
            raise
        finally:
            self._in_flight_since = None
        self._append_failing = None
        self._last_append_at = clock()
        if appended == -1:
            self.reapplied += 1
            _log.info(
                "a retried append of %d events had reached the stream already (its reply was "
                "lost); not appended again",
                count,
            )
        self.appended += count
        self.length += count

    async def _wait_for_room(self) -> None:
        self.blocked += 1
        if self._blocked_since is None:
            self._blocked_since = self.clock()
        try:
            await self._wait_loop()
        finally:
            self._blocked_since = None

    async def _wait_loop(self) -> None:
        warned = False
        while True:
            state = await self.refresh()
            if state.length < self.max_len:
                if warned:
                    _log.warning(
                        "stream %s has room again (%d of %d); appending",
                        self.keys.stream,
                        state.length,
                        self.max_len,
                    )
                return
            if not warned:
                warned = True
                _log.warning(
                    "stream %s is full: %d entries not acknowledged by every group (bound %d, "
                    "QQBOT_STREAM_MAX_LEN); holding appends, the session pauses its intake",
                    self.keys.stream,
                    state.length,
                    self.max_len,
                )
            await asyncio.sleep(self.poll)
