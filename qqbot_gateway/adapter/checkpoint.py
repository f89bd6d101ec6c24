"""Checkpoints: the handled-sequence watermark of a shard, written to a session store.

**After the handler, not before.** The session's own ``seq`` is the last event *accepted*
into the handler queue; it is what an in-process resume sends, since the queue still holds
everything accepted. Across processes the queue is gone, so the store keeps a *watermark*: it
moves past sequence S only when S and every event before it on the shard has been handled (its
handlers returned or raised) or dropped as a duplicate. A new process resumes from the
watermark, so every event still in the queue (or inside a handler) at a crash is replayed.

**Deduplication across processes.** The ids of the most recently handled events are persisted
with the watermark and loaded into the session's dedupe window: an event the platform
re-delivers under a new sequence number, or one handled past a gap in the watermark, is dropped
instead of reaching a handler twice.

**Writes.** Never on the read loop: a writer task hands a snapshot to a worker thread
(``asyncio.to_thread``) that writes it atomically. Batched: at most one write per ``interval``
seconds, sooner once ``max_events`` events are pending; while a session is live and nothing
happens the state is re-written every ``refresh`` seconds so its age stays meaningful. A
failed write is logged (WARNING, once per failure streak), counted, and retried with the next
batch; it never stops the shard.

**The guarantee** (docs/reliability.md, "Across processes"): at least once. An event reaches a
handler a second time only if the process dies (SIGKILL, OOM kill, power loss) after its
handlers completed and before the next checkpoint write finished: at most the events handled in
the last ``interval`` seconds (or ``max_events``), plus an event whose handler was running at
the moment of death (it runs again from the start). A SIGTERM/SIGINT shutdown drains the queue
and writes a final checkpoint, so a restart after it hands no event to a handler twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from . import events as ev
from .protocol import GatewayEvent
from .store import SessionStore, StoredSession, StoreError

__all__ = ["Checkpointer", "Watermark"]

_log = logging.getLogger("qqbot_gateway.checkpoint")

#: Default batch window: at 20 events/s about two events per write, at 1,000/s about 100; the
#: window bounds the duplicates a SIGKILL can cause (see the module docstring).
DEFAULT_INTERVAL: Final = 0.1
#: A backlog this large is written at once, whatever the window.
DEFAULT_MAX_EVENTS: Final = 500
#: Re-write an unchanged state this often while a session is live (keeps ``written_at`` fresh,
#: so the next process can tell a recent session from a stale one even on a quiet bot).
DEFAULT_REFRESH: Final = 30.0
#: After a failed write, the next attempt waits at least this long (a full or read-only disk
#: must not be hammered in a loop).
_RETRY_DELAY: Final = 0.5
#: Event ids persisted for deduplication: the replay after a restart covers what was not
#: durable, at most ``max_events`` and normally far fewer; 1,024 leaves a wide margin.
DEFAULT_DEDUPE_IDS: Final = 1024


class Watermark:
    """The highest sequence S such that every accepted event up to S is done.

    Events are registered in stream order (:meth:`accepted`, :meth:`skipped` for duplicates)
    and completed in any order (:meth:`done`). Keyed by session: a new session (after an
    Identify) starts its own numbering, and the watermark moves to it once every event of the
    old session is done.
    """

    __slots__ = ("_done", "_pending", "seq", "session_id")

    def __init__(self, session_id: str | None = None, seq: int = 0) -> None:
        self.session_id = session_id
        self.seq = seq
        self._pending: deque[tuple[str, int]] = deque()
        self._done: set[tuple[str, int]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def accepted(self, session_id: str, seq: int) -> None:
        self._pending.append((session_id, seq))

    def skipped(self, session_id: str, seq: int) -> None:
        """A duplicate dropped before the queue: done at once (in its stream position)."""
        key = (session_id, seq)
        self._pending.append(key)
        self._done.add(key)
        self._advance()

    def done(self, session_id: str, seq: int) -> None:
        self._done.add((session_id, seq))
        self._advance()

    def _advance(self) -> None:
        pending, done = self._pending, self._done
        while pending and pending[0] in done:
            key = pending.popleft()
            done.discard(key)
            self.session_id, self.seq = key


class Checkpointer:
    """Tracks one shard's watermark and writes it to ``store``. See the module docstring."""

    def __init__(
        self,
        store: SessionStore,
        *,
        app_id: str,
        shard_id: int,
        shard_count: int,
        bus: ev.EventBus,
        interval: float = DEFAULT_INTERVAL,
        max_events: int = DEFAULT_MAX_EVENTS,
        refresh: float = DEFAULT_REFRESH,
        dedupe_ids: int = DEFAULT_DEDUPE_IDS,
        live: Callable[[], bool] = lambda: True,
        current_session: Callable[[], str | None] = lambda: None,
    ) -> None:
        if interval < 0 or refresh <= 0 or max_events < 1 or dedupe_ids < 0:
            raise ValueError("need interval >= 0, refresh > 0, max_events >= 1, dedupe_ids >= 0")
        self.store = store
        self.app_id = app_id
        self.shard_id = shard_id
        self.shard_count = shard_count
        self.interval = interval
        self.max_events = max_events
        self.refresh = refresh
        self._bus = bus
        self._live = live
        self._current_session = current_session
        #: The last (session id, seq) registered with the watermark, in stream order.
        self._registered: tuple[str | None, int] = (None, 0)
        self.watermark = Watermark()
        self._ids: deque[str] = deque(maxlen=dedupe_ids)
        #: Events handled so far, and how many of them the last durable write covered.
        self.handled_count = 0
        self.durable = 0
        self._written: tuple[str | None, int] = (None, -1)
        self._last_write = 0.0  # loop time of the last successful write
        self._wake = asyncio.Event()
        self._writer_idle = False
        self._task: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._failing = False
        self._ended = False
        self._loop = asyncio.get_running_loop()
        self._unsubscribe = bus.subscribe(
            self._on_event, kinds=(ev.DuplicateDropped,), shard=shard_id
        )

    # --- the watermark -------------------------------------------------------------------
    def restore(self, state: StoredSession) -> None:
        """Start from a state a previous process left (the session resumes it)."""
        self.watermark = Watermark(state.session_id, state.seq)
        self._ids.extend(state.event_ids)
        self._written = (state.session_id, state.seq)
        self._registered = (state.session_id, state.seq)

    def accepted(self, event: GatewayEvent) -> None:
        """Called by the reader for every event put on the handler queue (stream order)."""
        if event.seq is not None and event.session_id is not None:
            self.watermark.accepted(event.session_id, event.seq)
            self._registered = (event.session_id, event.seq)

    def handled(self, event: GatewayEvent) -> None:
        """Called by the dispatcher once the event's handlers returned or raised."""
        self.handled_count += 1
        if event.event_id is not None:
            self._ids.append(event.event_id)
        if event.seq is not None and event.session_id is not None:
            self.watermark.done(event.session_id, event.seq)
        # Wake the writer only when it sleeps for want of work, or when the backlog is large
        # enough to cut the batch window short: not one task wake-up per event.
        if self._writer_idle or self.handled_count - self.durable >= self.max_events:
            self._wake.set()

    def _on_event(self, event: ev.LifecycleEvent) -> None:
        if not isinstance(event, ev.DuplicateDropped):
            return
        session_id, seq = self._current_session(), event.seq
        if seq is None or session_id is None:
            return
        last_session, last_seq = self._registered
        # Only a duplicate past everything registered takes a place of its own in the stream
        # (e.g. a replayed event whose id the previous process handled); one at or below it
        # is a copy of an event already tracked, which completes on its own.
        if session_id != last_session or seq > last_seq:
            self.watermark.skipped(session_id, seq)
            self._registered = (session_id, seq)

    @property
    def lag(self) -> int:
        """Events handled but not yet covered by a durable write."""
        return self.handled_count - self.durable

    def snapshot(self) -> StoredSession | None:
        wm = self.watermark
        if wm.session_id is None:
            return None
        return StoredSession(
            app_id=self.app_id,
            shard_id=self.shard_id,
            shard_count=self.shard_count,
            session_id=wm.session_id,
            seq=wm.seq,
            event_ids=tuple(self._ids),
            written_at=time.time(),
        )

    # --- the writer ----------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(
            self._writer(), name=f"qqbot checkpoint shard {self.shard_id}"
        )

    async def _writer(self) -> None:
        loop = self._loop
        while True:
            if self.lag == 0:
                self._writer_idle = True
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.refresh):
                        await self._wake.wait()
                self._writer_idle = False
            self._wake.clear()
            # Batch: wait out the rest of the window unless the backlog grows large meanwhile.
            wait = self._last_write + self.interval - loop.time()
            if wait > 0 and self.lag < self.max_events:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                self._wake.clear()
            state = self.snapshot()
            if state is None:
                continue
            changed = (state.session_id, state.seq) != self._written or self.lag > 0
            stale = loop.time() - self._last_write >= self.refresh
            if (changed or (stale and self._live())) and not await self._write(state):
                await asyncio.sleep(max(self.interval, _RETRY_DELAY))

    async def _write(self, state: StoredSession) -> bool:
        async with self._write_lock:
            if self._ended:
                return False
            covered = self.handled_count
            started = self._loop.time()
            try:
                await asyncio.to_thread(self.store.save, state)
            except Exception as exc:  # noqa: BLE001 - a failed write is retried, never fatal
                self._on_failure(exc)
                return False
            now = self._loop.time()
            self._last_write = now
            self._written = (state.session_id, state.seq)
            self.durable = max(self.durable, covered)
            if self._failing:
                _log.info("shard %d: session checkpoints are written again", self.shard_id)
                self._failing = False
            self._bus.emit(
                ev.CheckpointWritten(
                    shard=self.shard_id,
                    monotonic=now,
                    seq=state.seq,
                    duration=now - started,
                    lag=self.handled_count - covered,
                )
            )
            return True

    def _on_failure(self, exc: Exception) -> None:
        detail = str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"
        if not self._failing:
            _log.warning(
                "shard %d: cannot write the session checkpoint (%s); a restart now may replay "
                "or, if the state is lost, miss events; retrying",
                self.shard_id,
                detail,
            )
            self._failing = True
        self._bus.emit(
            ev.CheckpointFailed(shard=self.shard_id, monotonic=self._loop.time(), error=detail)
        )

    async def close(self, *, end_session: bool = False) -> None:
        """Stop the writer; write the final checkpoint, or delete the state if the session was
        ended on purpose. Then release the store."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._unsubscribe()
        try:
            if end_session:
                async with self._write_lock:
                    self._ended = True
                    try:
                        await asyncio.to_thread(self.store.clear)
                    except Exception as exc:  # noqa: BLE001 - reported; the close goes on
                        _log.warning(
                            "shard %d: cannot delete the session state: %s", self.shard_id, exc
                        )
            else:
                state = self.snapshot()
                if state is not None:
                    if await self._write(state):
                        _log.info(
                            "shard %d: session %s saved at seq %d for the next start",
                            self.shard_id,
                            state.session_id,
                            state.seq,
                        )
                self._ended = True
        finally:
            await asyncio.to_thread(self.store.close)
