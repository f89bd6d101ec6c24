"""Shard leases with fencing tokens, in Redis.

A shard is owned by at most one live process at a time. Ownership is a key with an expiry::

    qqbot:{<app>}:shard:<id>:lease     "<holder> <token>"   PX <ttl>
    qqbot:{<app>}:shard:<id>:fence     the last token issued (INCR; never expires)
    qqbot:{<app>}:shard:<id>:released  the token of the last owner that let go on purpose

**Fencing.** Every acquisition takes a new token from the per-shard counter (``INCR`` inside
the same Lua script that sets the lease, so it is atomic). The token only grows, and the session
store (:mod:`.store`) accepts a write only while its token is the *last one issued*: an owner
that was paused past its lease (GC, SIGSTOP, a hung VM) and wakes up still believing it owns
the shard is refused by Redis itself, not by its own judgement (Kleppmann, "How to do
distributed locking", 2016).

**Validity by our own clock.** The owner also stops its connection before the lease could have
expired in Redis, by its *own monotonic clock*: a renewal sent at local time ``t0`` and answered
OK proves the key lives until at least ``t0 + ttl`` in Redis's time, so the owner may act until::

    valid_until = t0 + ttl * (1 - DRIFT) - MARGIN

``DRIFT`` bounds the rate difference of the two clocks (1 %, as Redis's own Redlock page uses)
and ``MARGIN`` the time the owner needs to stop sending once it notices (an abort of one socket
plus an event-loop turn). The time the command spent in flight only shortens the validity (the
clock was read before sending). An owner whose process is paused past ``valid_until`` does not
send after waking either: the connection checks :meth:`ShardLease.valid` before every frame
(see ``adapter/connection.py``), and its late checkpoint is refused by the fence.

Renewal runs every ``ttl / 3`` (a renewal can fail twice and the lease still holds); after a
failure it is retried every ``ttl / 10`` while validity lasts.

Errors: Redis failures surface as :class:`~.connect.RedisUnavailable`.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from .connect import RedisUnavailable, as_text, error_text, keyspace

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "DRIFT",
    "MARGIN",
    "Acquired",
    "ShardLease",
    "holder_id",
    "lease_keys",
]

#: Clock rate difference allowed between this host and Redis (Redlock's 1 %).
DRIFT: Final = 0.01
#: Seconds cut off a lease's validity on top of the drift: the time to stop sending once
#: validity ends (abort a socket, turn the loop once: 50 ms is generous on a loaded host, 0.5 %
#: of a 10 s lease) plus Redlock's 2 ms for the server's own expiry resolution.
MARGIN: Final = 0.052


def holder_id() -> str:
    """This process as a lease holder: host, pid and a random part (a pid is reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class LeaseKeys:
    lease: str
    fence: str
    released: str


def lease_keys(app_id: str, shard_id: int) -> LeaseKeys:
    base = f"{keyspace(app_id)}shard:{shard_id}:"
    return LeaseKeys(base + "lease", base + "fence", base + "released")


# KEYS: lease, fence, released. ARGV: holder, ttl in ms.
# Returns {token, cause} on success ("first", "released", "expired"), {0, pttl, value} if held.
_ACQUIRE: Final = """
local cur = redis.call('GET', KEYS[1])
if cur then
  return {0, redis.call('PTTL', KEYS[1]), cur}
end
local last = redis.call('GET', KEYS[2])
local cause = 'first'
if last then
  if redis.call('GET', KEYS[3]) == last then cause = 'released' else cause = 'expired' end
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. token, 'PX', ARGV[2])
return {token, cause}
"""

# KEYS: lease. ARGV: "<holder> <token>", ttl in ms. 1 renewed, 0 not ours any more.
_RENEW: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: lease, released. ARGV: "<holder> <token>", token. 1 released, 0 not ours.
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class Acquired:
    """A successful acquisition: the fencing token and why the shard was free."""

    token: int
    #: ``first`` (never owned before), ``released`` (the last owner let go on purpose),
    #: ``expired`` (the last owner's lease ran out: it died, hung or lost Redis).
    cause: str


class ShardLease:
    """One shard's lease, for one holder. Not thread-safe; use from one event loop.

    ``clock`` is monotonic (``time.monotonic`` by default; the event loop's clock is the same).
    """

    def __init__(
        self,
        redis: Redis,
        app_id: str,
        shard_id: int,
        *,
        ttl: float,
        holder: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.app_id = app_id
        self.shard_id = shard_id
        self.ttl = ttl
        self.holder = holder or holder_id()
        self.keys = lease_keys(app_id, shard_id)
        self._clock = clock
        self._ttl_ms = max(1, int(ttl * 1000))
        self._usable = ttl * (1 - DRIFT) - MARGIN
        self.token: int | None = None
        self.valid_until: float | None = None
        #: The holder and remaining ms of the lease the last failed acquisition met.
        self.held_by: tuple[str, int] | None = None
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    # --- state ---------------------------------------------------------------------------
    @property
    def owned(self) -> bool:
        return self.token is not None

    def valid(self, now: float | None = None) -> bool:
        """True while this holder may act as the owner (by its own clock)."""
        until = self.valid_until
        return until is not None and (self._clock() if now is None else now) < until

    def remaining(self, now: float | None = None) -> float:
        until = self.valid_until
        if until is None:
            return 0.0
        return max(0.0, until - (self._clock() if now is None else now))

    @property
    def value(self) -> str:
        return f"{self.holder} {self.token}"

    # --- commands ------------------------------------------------------------------------
    async def try_acquire(self) -> Acquired | None:
        """Take the lease if it is free; None if another holder has it. RedisUnavailable."""
        t0 = self._clock()
        reply = await self._call(
            self._acquire,
            [self.keys.lease, self.keys.fence, self.keys.released],
            [self.holder, self._ttl_ms],
        )
        token = int(reply[0])
        if token == 0:
            self.held_by = (as_text(reply[2]), int(reply[1]))
            return None
        self.held_by = None
        self.token = token
        self.valid_until = t0 + self._usable
        return Acquired(token, as_text(reply[1]))

    async def renew(self) -> bool:
        """Extend the lease. True: renewed (validity moved on). False: it is not ours any more
        (expired and maybe taken): ownership ends here. RedisUnavailable: unknown; validity
        keeps running down and the caller retries while it lasts."""
        if self.token is None:
            return False
        t0 = self._clock()
        ok = await self._call(self._renew, [self.keys.lease], [self.value, self._ttl_ms])
        if int(ok) == 1:
            self.valid_until = t0 + self._usable
            return True
        self._lost()
        return False

    async def release(self) -> bool:
        """Let go on purpose (the next holder's cause is ``released``). Ownership ends here
        whatever Redis answers; True if the key was still ours and is deleted."""
        if self.token is None:
            return False
        value, token = self.value, self.token
        self._lost()
        ok = await self._call(self._release, [self.keys.lease, self.keys.released], [value, token])
        return int(ok) == 1

    def forget(self) -> None:
        """Stop considering this lease ours (validity ran out) without talking to Redis."""
        self._lost()

    def _lost(self) -> None:
        self.token = None
        self.valid_until = None

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        from redis.exceptions import RedisError

        try:
            return await script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"{type(exc).__name__}: {error_text(exc)}") from None
