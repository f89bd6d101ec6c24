"""Owning shards through leases: standby, takeover, renewal, loss.

:class:`ShardOwnership` runs one loop per shard this process offers (``QQBOT_SHARD_ID``: one,
several, or all). Shards are owned independently: a process may own shard 1 and stand by for
shard 0 at the same time, and no shard waits for another's lease.

Per shard::

    standby --(lease free: try_acquire)--> owner --(run the term)--> standby ...
       ^  polls every min(ttl/10, 1 s), or sooner when the holder's lease runs out

While a shard is owned, :class:`ShardTerm` is what the adapter sees: the fencing ``token`` for
the store, ``valid()`` (the lease's validity by this process's own clock, checked before every
frame the connection sends), and ``ended``, set when the term must stop:

* a renewal was refused (another process owns the shard now): the connection is aborted at once,
  without a close frame;
* validity ran out with no successful renewal (Redis unreachable or too slow): the same, by this
  process's own clock, before the lease can have expired in Redis;
* shutdown: the adapter closes with 4000, drains, writes the final checkpoint, then the lease is
  released on purpose so that a standby takes over at once (cause ``released``).

The side server keeps running throughout: a process that owns nothing is a healthy standby.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from .connect import RedisUnavailable, stop_task
from .lease import Acquired, ShardLease, holder_id

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["ClusterObserver", "ShardOwnership", "ShardRole", "ShardTerm"]

_log = logging.getLogger("qqbot_gateway.cluster")

#: Renew this many times per lease: a renewal can fail twice and the lease still holds.
RENEWALS_PER_TTL: Final = 3
#: After a failed renewal, retry after this share of the TTL, while validity lasts.
RETRY_SHARE: Final = 0.1
#: A standby checks a held lease at least this often (and as soon as its PTTL says it is due).
MAX_POLL: Final = 1.0
#: A lease released at shutdown must not wait on a dead Redis for long.
_RELEASE_TIMEOUT: Final = 2.0


class ClusterObserver:
    """Hooks for metrics (``telemetry/cluster.py``); the default does nothing. An observer that
    raises is logged and ignored: the control path never rides on it."""

    def role(self, shard: int, owner: bool, token: int | None) -> None: ...
    def renewed(self, shard: int, seconds: float) -> None: ...
    def renew_failed(self, shard: int, reason: str) -> None: ...
    def takeover(self, shard: int, cause: str) -> None: ...
    def lost(self, shard: int, kind: str) -> None: ...
    def redis_error(self, operation: str) -> None: ...
    def fenced(self, shard: int) -> None: ...


@dataclass(slots=True)
class ShardRole:
    """What the status page and ``/readyz`` show per shard."""

    shard: int
    role: str = "standby"  # "owner" | "standby"
    token: int | None = None
    since: float = field(default_factory=time.monotonic)
    holder: str | None = None  # the other process's holder id, while standing by
    last_error: str | None = None


class ShardTerm:
    """One ownership term of one shard (see the module docstring)."""

    def __init__(self, lease: ShardLease, acquired: Acquired) -> None:
        self.shard_id = lease.shard_id
        self.token = acquired.token
        self.cause = acquired.cause
        self._lease = lease
        self.ended = asyncio.Event()
        self.reason: str | None = None
        #: How it ended: "shutdown", "expired" (validity ran out), "lost" (another owner),
        #: "fatal" (the shard stopped for good in this process).
        self.kind: str | None = None

    def valid(self) -> bool:
        """The lease is provably ours now (by this process's clock) and the term goes on."""
        return self._lease.token == self.token and self._lease.valid()

    def fencing_token(self) -> int:
        """The token the store writes under. Always the term's own, even after validity ran
        out: whether a write is stale is for Redis to decide atomically (the fence), not for
        this process's judgement of itself."""
        return self.token

    def end(self, reason: str, kind: str = "shutdown") -> None:
        if not self.ended.is_set():
            self.reason, self.kind = reason, kind
            self.ended.set()


RunTerm = Callable[[ShardTerm], Awaitable[None]]


class ShardOwnership:
    """Leases for the shards this process offers; see the module docstring."""

    def __init__(
        self,
        redis: Redis,
        app_id: str,
        *,
        ttl: float,
        holder: str | None = None,
        observer: ClusterObserver | None = None,
    ) -> None:
        self._redis = redis
        self.app_id = app_id
        self.ttl = ttl
        self.holder = holder or holder_id()
        self.observer = observer or ClusterObserver()
        self.roles: dict[int, ShardRole] = {}
        self.terms: dict[int, ShardTerm] = {}
        self._stop = asyncio.Event()

    @property
    def poll(self) -> float:
        return min(self.ttl * RETRY_SHARE, MAX_POLL)

    def stop(self) -> None:
        """End every term (gracefully) and every standby loop."""
        self._stop.set()
        for term in self.terms.values():
            term.end("shutdown")

    def describe(self) -> dict[int, tuple[str, str]]:
        out: dict[int, tuple[str, str]] = {}
        for shard, r in sorted(self.roles.items()):
            if r.role == "owner":
                out[shard] = ("owner", f"this process holds the lease (fencing token {r.token})")
            elif r.role == "fatal":
                out[shard] = ("fatal", f"stopped for good here, no longer offered: {r.last_error}")
            else:
                who = f"owned by {r.holder}" if r.holder else "no owner seen yet"
                err = f"; last Redis error: {r.last_error}" if r.last_error else ""
                out[shard] = ("standby", f"{who}; taking over when its lease ends{err}")
        return out

    async def hold(self, shard_id: int, run_term: RunTerm) -> None:
        """Stand by for ``shard_id``, own it when its lease is free, run ``run_term`` for each
        term; until :meth:`stop`."""
        lease = ShardLease(self._redis, self.app_id, shard_id, ttl=self.ttl, holder=self.holder)
        role = self.roles[shard_id] = ShardRole(shard_id)
        self._notify(self.observer.role, shard_id, False, None)
        waiting_logged = False
        while not self._stop.is_set():
            try:
                # Bounded: an acquisition that times out after Redis ran it leaves a lease
                # under our holder id that we do not use; it expires within the TTL.
                async with asyncio.timeout(max(self.poll, self.ttl / 2)):
                    acquired = await lease.try_acquire()
            except (RedisUnavailable, TimeoutError) as exc:
                role.last_error = str(exc) or "timed out"
                self._notify(self.observer.redis_error, "acquire")
                if not waiting_logged:
                    _log.warning(
                        "shard %d: standby: Redis unavailable (%s); retrying", shard_id, exc
                    )
                    waiting_logged = True
                await self._wait(self.poll)
                continue
            role.last_error = None  # Redis answered
            if acquired is None:
                held = lease.held_by
                role.holder = held[0].rsplit(" ", 1)[0] if held else None
                if not waiting_logged:
                    _log.info(
                        "shard %d: standby: owned by %s; taking over when its lease ends",
                        shard_id,
                        role.holder,
                    )
                    waiting_logged = True
                due = held[1] / 1000 if held is not None and held[1] > 0 else self.poll
                await self._wait(min(self.poll, max(0.01, due)))
                continue
            waiting_logged = False
            if not await self._own(lease, acquired, role, run_term):
                return  # the shard stopped for good here: stop offering it

    async def _own(
        self, lease: ShardLease, acquired: Acquired, role: ShardRole, run_term: RunTerm
    ) -> bool:
        """Run one term; False if the shard stopped for good (fatal) in it."""
        shard_id = lease.shard_id
        term = ShardTerm(lease, acquired)
        self.terms[shard_id] = term
        role.role, role.token, role.since, role.holder = "owner", term.token, time.monotonic(), None
        role.last_error = None
        self._notify(self.observer.role, shard_id, True, term.token)
        if acquired.cause != "first":
            self._notify(self.observer.takeover, shard_id, acquired.cause)
        _log.warning(
            "shard %d: lease acquired (fencing token %d, %s); owning the shard",
            shard_id,
            term.token,
            {
                "first": "no owner before",
                "released": "the previous owner let go",
                "expired": "the previous owner's lease ran out",
            }.get(acquired.cause, acquired.cause),
        )
        if self._stop.is_set():
            term.end("shutdown")
        renewer = asyncio.create_task(
            self._renew(lease, term), name=f"qqbot lease renewal shard {shard_id}"
        )
        # Whatever ends the renewer (a bug, a cancellation) ends the term: validity is only
        # proven while renewals run.
        renewer.add_done_callback(lambda task: self._renewer_ended(task, term))
        try:
            await run_term(term)
        finally:
            # Repeated until it ends: a renewal in progress may drop one cancellation (see
            # stop_task) and renew on for ever, with this term's stop waiting for it.
            cancelled = False
            try:
                await stop_task(renewer)
            except asyncio.CancelledError:
                cancelled = True  # this task: end the term first (below), then be cancelled
                renewer.cancel()
            self.terms.pop(shard_id, None)
            if lease.token == term.token and lease.valid():
                try:
                    async with asyncio.timeout(_RELEASE_TIMEOUT):
                        await lease.release()
                except (RedisUnavailable, TimeoutError):
                    self._notify(self.observer.redis_error, "release")
                    lease.forget()  # it expires on its own
            else:
                lease.forget()
            role.role, role.token, role.since = "standby", None, time.monotonic()
            if term.kind == "fatal":
                role.role, role.last_error = "fatal", term.reason
            self._notify(self.observer.role, shard_id, False, None)
            if term.kind not in ("shutdown", "fatal"):
                self._notify(self.observer.lost, shard_id, term.kind or "expired")
                _log.warning("shard %d: standing by again: %s", shard_id, term.reason)
            if cancelled:
                raise asyncio.CancelledError
        if term.kind == "fatal":
            _log.error(
                "shard %d: stopped for good in this process; lease released, no longer offered",
                shard_id,
            )
            return False
        return True

    @staticmethod
    def _renewer_ended(task: asyncio.Task[None], term: ShardTerm) -> None:
        if term.ended.is_set():
            return
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            _log.error(
                "shard %d: lease renewal failed: %s: %s", term.shard_id, type(exc).__name__, exc
            )
        term.end("lease renewal stopped; the lease can no longer be proven", "expired")

    async def _renew(self, lease: ShardLease, term: ShardTerm) -> None:
        shard_id = lease.shard_id
        every = self.ttl / RENEWALS_PER_TTL
        retry = self.ttl * RETRY_SHARE
        loop = asyncio.get_running_loop()
        next_at = loop.time() + every
        failing = False
        # Renewals go on after the term was told to end and until its shard has stopped (the
        # caller cancels this task then): a graceful stop drains handlers and writes the final
        # checkpoint under a lease that is still provably ours, however long the drain.
        while True:
            until = lease.valid_until
            if until is None:
                term.end("lease lost", "lost")
                return
            await asyncio.sleep(max(0.0, min(next_at, until) - loop.time()))
            if not lease.valid():
                term.end(
                    "lease validity ran out before a renewal succeeded (Redis unreachable or "
                    "slow, or this process was paused); connection stopped without another frame",
                    "expired",
                )
                lease.forget()
                return
            t0 = loop.time()
            try:
                async with asyncio.timeout(lease.remaining()):
                    ok = await lease.renew()
            except (RedisUnavailable, TimeoutError) as exc:
                reason = str(exc) or "timed out"
                self._notify(self.observer.renew_failed, shard_id, "error")
                self._notify(self.observer.redis_error, "renew")
                if not failing:
                    _log.warning(
                        "shard %d: lease renewal failed (%s); %.1fs of validity left",
                        shard_id,
                        reason,
                        lease.remaining(),
                    )
                    failing = True
                if self.roles.get(shard_id) is not None:
                    self.roles[shard_id].last_error = reason
                next_at = loop.time() + retry
                continue
            if not ok:
                self._notify(self.observer.renew_failed, shard_id, "lost")
                term.end("lease lost: another process owns the shard now", "lost")
                return
            seconds = loop.time() - t0
            self._notify(self.observer.renewed, shard_id, seconds)
            if failing:
                _log.warning("shard %d: lease renewed again", shard_id)
                failing = False
            next_at = t0 + every

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    @staticmethod
    def _notify(call: Callable[..., None], *args: object) -> None:
        try:
            call(*args)
        except Exception:  # noqa: BLE001 - observers only watch
            _log.exception("cluster observer failed")
