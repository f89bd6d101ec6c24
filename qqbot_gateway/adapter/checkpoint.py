"""Checkpoints: the handled-sequence watermark of a shard, written to a session store.

**After the handler, not before.** The session's own ``seq`` is the last event *accepted*
into the handler queue; it is what an in-process resume sends, since the queue still holds
everything accepted. Across processes the queue is gone, so the store keeps a *watermark*: it
moves past sequence S only when S and every event before it on the shard has been handled (its
handlers returned or raised) or dropped as a duplicate. A new process resumes from the
watermark, so every event still in the queue (or inside a handler) at a crash is replayed.

The dispatcher hands events to the handlers one at a time, in stream order (``dispatch.py``),
so the events handled so far are always a prefix of the events accepted: the watermark is the
sequence number of the last handled event, or of a duplicate dropped after it (a duplicate sits
in the stream behind the events accepted before it, and is "done" once they are handled). A
dispatcher that ran handlers concurrently would need a per-event completion set instead.

**Deduplication across processes.** The ids of the most recently handled events are persisted
with the watermark and loaded into the session's dedupe window: an event the platform
re-delivers under a new sequence number, or one handled past a gap in the watermark, is dropped
instead of reaching a handler twice.

**Per event, almost nothing.** The dispatcher keeps its :class:`~.dispatch.Progress` (a
count, the last handled event, a bounded ``deque`` of ids) with a few attribute stores per
event, no call; it holds one event alive, the last handled one. The reader does nothing at all.
The checkpointer only reads that progress: the writer task every ``interval`` seconds, to write.

**The control path.** A duplicate the session dropped reaches :meth:`Checkpointer.duplicate`
by a direct call (the shard's, :mod:`.shard`), and a written checkpoint is reported to
``on_written`` by one; neither rides the observers' bus. An exception in the writer that is not
a failed write (a bug) ends its task with that exception, which the shard watches: it stops
instead of running on without checkpoints.

**Writes.** Never on the event loop: the writer task hands a snapshot to a worker thread
(``asyncio.to_thread``) that writes it atomically. All of it, not only the ``fsync`` calls: on
ext4 a rename over the old file also starts the new file's writeback in the kernel, time the
loop thread must not spend (measured: benchmarks/bench_store.md). Batched: at most one write
per ``interval`` seconds; while a session is live and nothing happens the state is re-written
every ``refresh`` seconds so its age stays meaningful. While the loop is saturated (see
``SATURATED``) a write waits for a window with time to spare, at most ``MAX_HOLD``. A failed
write is logged (WARNING, once per failure streak), counted, and retried after a pause; it never
stops the shard.

**The guarantee** (docs/session-store.md): at least once. An event reaches a
handler a second time only if the process dies (SIGKILL, OOM kill, power loss) after its
handlers completed and before the next checkpoint write finished: at most the events handled in
the last ``interval`` seconds (plus the duration of a write; while the loop is saturated, up to
``MAX_HOLD`` more), plus an event whose handler was running at the moment of death
(it runs again from the start). A SIGTERM/SIGINT shutdown
drains the queue and writes a final checkpoint, so a restart after it hands no event to a
handler twice.
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
from .backoff import Sleep
from .dispatch import Progress, _Position
from .store import SessionStore, StoredSession, StoreError
from .types import DEFAULT_CHECKPOINT_INTERVAL

__all__ = ["Checkpointer", "Progress"]

_log = logging.getLogger("qqbot_gateway.checkpoint")

#: Default batch window (see ``adapter.types.DEFAULT_CHECKPOINT_INTERVAL``).
DEFAULT_INTERVAL: Final = DEFAULT_CHECKPOINT_INTERVAL
#: The writer never polls faster than this, whatever the window (``interval`` 0 in tests).
_MIN_POLL: Final = 0.005
#: How soon a new session's first checkpoint is written, whatever the interval (see _writer).
_FIRST_POLL: Final = 0.05
#: Re-write an unchanged state this often while a session is live (keeps ``written_at`` fresh,
#: so the next process can tell a recent session from a stale one even on a quiet bot).
DEFAULT_REFRESH: Final = 30.0
#: After a failed write, the next attempt waits at least this long (a full or read-only disk
#: must not be hammered in a loop).
_RETRY_DELAY: Final = 0.5
#: The event loop is saturated when its thread ran for this share of a writer poll window. A
#: write started then cannot finish before the burst is over: the worker thread needs the GIL
#: back after each system call, and a saturated loop, which releases the GIL around every
#: ``epoll`` and socket read, takes it back before the waiting thread has woken up (CPython's
#: hand-off). Meanwhile each of those releases wakes the waiting thread for nothing, a cost the
#: loop pays per release: 4 to 10 % of a saturated shard's events/s, measured
#: (benchmarks/bench_store.md, benchmarks/throughput.md). So the writer holds the write back
#: until a window in which the loop has time to spare: the state then written is the same, and
#: the durable watermark trails the burst exactly as it did while the write was stuck.
SATURATED: Final = 0.95
#: But never longer than this: a loop saturated for good (CPU-heavy handlers, a long flood) still
#: gets a checkpoint this often, paying the stuck write's cost for one write's duration. Without
#: the bound the durable watermark and ``written_at`` would stop moving: the checkpoint-age alert
#: fires, and after a crash the stored session could be too old to resume.
MAX_HOLD: Final = 1.0
#: A write made on a saturated loop (after ``MAX_HOLD``) could not finish before the burst ends
#: either, so the loop thread hands the worker thread the GIL: it sleeps this long once per loop
#: iteration while the write is pending (a write needs about six hand-offs, one per system
#: call), for at most ``_NUDGE_FOR`` seconds (a hung disk must not slow the loop for longer).
_NUDGE: Final = 0.0002
_NUDGE_FOR: Final = 0.25
#: Event ids persisted for deduplication. The replay after a restart starts past the
#: watermark, and every id in the file is at or below it, so the window serves re-deliveries of
#: recent events under new sequence numbers (and a duplicate replayed once more): the last 256
#: handled ids cover seconds of traffic at the rates a shard sees, in about 10 kB and 30 us of
#: JSON per write (1,024 cost four times that for no case we know of).
DEFAULT_DEDUPE_IDS: Final = 256


class Checkpointer:
    """Tracks one shard's watermark and writes it to ``store``. See the module docstring.

    ``accepted_count()`` is how many events the dispatcher has accepted so far (handled, queued
    or in a handler); ``current_session()`` the session's id and its accepted ``seq``.
    ``position()``, if given, is the watermark itself (the webhook journal's generation and
    record number, :mod:`.journal`), computed by its owner instead of from the stream here.
    ``progress`` is the dispatcher's record of handled events (read only here; a fresh one if
    not given); ``on_written(seq)`` is called after each durable write.
    """

    def __init__(
        self,
        store: SessionStore,
        *,
        app_id: str,
        shard_id: int,
        shard_count: int,
        bus: ev.EventBus,
        interval: float = DEFAULT_INTERVAL,
        refresh: float = DEFAULT_REFRESH,
        dedupe_ids: int = DEFAULT_DEDUPE_IDS,
        live: Callable[[], bool] = lambda: True,
        current_session: Callable[[], tuple[str | None, int]] = lambda: (None, 0),
        accepted_count: Callable[[], int] = lambda: 0,
        position: Callable[[], tuple[str | None, int]] | None = None,
        progress: Progress | None = None,
        on_written: Callable[[int], None] | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] | None = None,
        cpu_clock: Callable[[], float] = time.thread_time,
        max_hold: float = MAX_HOLD,
    ) -> None:
        if interval < 0 or refresh <= 0 or dedupe_ids < 0 or max_hold < 0:
            raise ValueError("need interval >= 0, refresh > 0, dedupe_ids >= 0, max_hold >= 0")
        self.max_hold = max_hold
        self.store = store
        self.app_id = app_id
        self.shard_id = shard_id
        self.shard_count = shard_count
        self.interval = interval
        self.refresh = refresh
        self._bus = bus
        self._live = live
        self._current_session = current_session
        self._accepted_count = accepted_count
        #: Updated by the dispatcher; read here.
        self.progress = progress if progress is not None else Progress(dedupe_ids)
        self._on_written = on_written
        #: Duplicates placed in the stream: (events accepted before it, its position).
        self._duplicates: deque[tuple[int, _Position]] = deque()
        self._after: tuple[int, _Position] | None = None  # the latest duplicate that is done
        self._last_duplicate: tuple[str | None, int] = (None, 0)
        #: How many handled events the last durable write covered.
        self.durable = 0
        self._written: tuple[str | None, int] = (None, -1)
        self._last_write = 0.0  # loop time of the last successful write
        self._task: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._saving: asyncio.Task[None] | None = None
        self._failing = False
        self._ended = False
        self._loop = asyncio.get_running_loop()
        self._sleep = sleep
        self._clock = clock or self._loop.time
        #: The loop thread's CPU time (the writer task runs on it), against ``time.monotonic``:
        #: how busy the loop was during each poll window (see ``SATURATED``).
        self._cpu_clock = cpu_clock
        #: A watermark kept elsewhere (the webhook journal's, :mod:`.journal`): then the
        #: stream positions below (duplicates placed among sequence numbers) do not apply.
        self._position = position

    # --- the watermark -------------------------------------------------------------------
    def restore(self, state: StoredSession) -> None:
        """Start from a state a previous process left (the session resumes it)."""
        self.progress.last = _Position(state.session_id, state.seq)
        self.progress.ids.extend(state.event_ids)
        self._written = (state.session_id, state.seq)
        self._last_duplicate = (state.session_id, state.seq)

    def duplicate(self, seq: int | None) -> None:
        """The session dropped a duplicate with sequence number ``seq`` (a direct call from the
        shard's control path): it may take a place of its own in the stream."""
        if seq is None or self._position is not None:
            return
        session_id, accepted_seq = self._current_session()
        if session_id is None:
            return
        last_session, last_seq = self._last_duplicate
        newest = max(accepted_seq, last_seq if last_session == session_id else 0)
        # Only a duplicate past everything accepted takes a place of its own in the stream
        # (e.g. a replayed event whose id the previous process handled); one at or below it
        # is a copy of an event already accepted, which completes on its own.
        if seq > newest:
            self._duplicates.append((self._accepted_count(), _Position(session_id, seq)))
            self._last_duplicate = (session_id, seq)

    def position(self) -> tuple[str | None, int]:
        """The watermark: (session id, seq) up to which everything is handled."""
        if self._position is not None:
            return self._position()
        progress, duplicates = self.progress, self._duplicates
        handled = progress.handled
        while duplicates and duplicates[0][0] <= handled:
            self._after = duplicates.popleft()
        last: object = progress.last
        after = self._after
        # A duplicate placed after every handled event is the newest position. One placed
        # before some handled event is behind it, unless that event had no seq (RESUMED): then
        # the position stays at the event before the duplicate, which only means the duplicate
        # is replayed (and dropped by id) once more after a restart.
        if after is not None and after[0] == handled:
            last = after[1]
        return getattr(last, "session_id", None), getattr(last, "seq", None) or 0

    @property
    def handled_count(self) -> int:
        return self.progress.handled

    @property
    def lag(self) -> int:
        """Events handled but not yet covered by a durable write."""
        return self.progress.handled - self.durable

    def snapshot(self, position: tuple[str | None, int] | None = None) -> StoredSession | None:
        """The state to store: at ``position`` (the watermark, computed here when not given)."""
        session_id, seq = self.position() if position is None else position
        if session_id is None:
            return None
        return StoredSession(
            app_id=self.app_id,
            shard_id=self.shard_id,
            shard_count=self.shard_count,
            session_id=session_id,
            seq=seq,
            event_ids=tuple(self.progress.ids),
            written_at=time.time(),
        )

    # --- the writer ----------------------------------------------------------------------
    @property
    def task(self) -> asyncio.Task[None] | None:
        """The writer task once started (its owner watches it: it ends only by a bug)."""
        return self._task

    def start(self) -> None:
        self._task = asyncio.create_task(
            self._writer(), name=f"qqbot checkpoint shard {self.shard_id}"
        )

    async def _writer(self) -> None:
        poll = max(self.interval, _MIN_POLL)
        # Start the worker thread now: creating it under load can take a GIL round of its own.
        await asyncio.to_thread(int)
        cpu, wall = self._cpu_clock(), time.monotonic()
        held_since: float | None = None  # when the loop first held a write back (MAX_HOLD)
        while True:
            # A session with no checkpoint yet (just identified) is written at the first poll
            # after _FIRST_POLL, not after a whole interval: until then another process taking
            # the shard over would find nothing to resume and identify afresh.
            first = self._current_session()[0] not in (None, self._written[0])
            await self._sleep(min(poll, _FIRST_POLL) if first else poll)
            cpu_now, wall_now = self._cpu_clock(), time.monotonic()
            window = wall_now - wall  # judged on windows of a real poll's length only
            saturated = window >= _MIN_POLL and (cpu_now - cpu) >= SATURATED * window
            cpu, wall = cpu_now, wall_now
            if saturated:
                if held_since is None:
                    held_since = wall_now
                if wall_now - held_since < self.max_hold:
                    continue  # a write now would wait for the burst to end, at its expense
            held_since = None
            position = self.position()
            if position[0] is None:
                continue
            changed = position != self._written or self.lag > 0
            stale = self._clock() - self._last_write >= self.refresh
            if not changed and not (stale and self._live()):
                continue
            state = self.snapshot(position)
            # A write made on a saturated loop (after MAX_HOLD) hands the worker thread the GIL.
            if state is not None and not await self._write(state, hand_off=saturated):
                await self._sleep(max(self.interval, _RETRY_DELAY))

    async def _write(self, state: StoredSession, *, hand_off: bool = False) -> bool:
        async with self._write_lock:
            if self._ended:
                return False
            covered = self.progress.handled  # what the snapshot was taken from
            started = self._clock()
            # A save runs on a worker thread that a cancelled writer cannot stop: keep it, so that
            # close() waits for it instead of deleting the state under a save still writing it.
            save = asyncio.create_task(
                asyncio.to_thread(self.store.save, state),
                name=f"qqbot checkpoint save shard {self.shard_id}",
            )
            self._saving = save
            try:
                if hand_off:
                    await self._hand_off(save)
                await asyncio.shield(save)
            except Exception as exc:  # noqa: BLE001 - a failed write is retried, never fatal
                self._on_failure(exc)
                return False
            now = self._clock()
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
            if self._on_written is not None:
                self._on_written(state.seq)  # the control path: an exception propagates
            return True

    async def _hand_off(self, save: asyncio.Task[None]) -> None:
        """Let the worker thread have the GIL while a saturated loop waits for ``save``.

        A saturated loop releases the GIL only around ``epoll`` calls and takes it back at once,
        which CPython counts as a switch: the worker thread, waiting to return from a system
        call, never asks for a forced one and waits until the burst ends (see ``SATURATED``).
        A short real sleep on the loop thread is a release it can win."""
        until = time.monotonic() + _NUDGE_FOR
        while not save.done() and time.monotonic() < until:
            time.sleep(_NUDGE)  # noqa: ASYNC251 - deliberately blocks: the GIL hand-off
            await asyncio.sleep(0)

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
            ev.CheckpointFailed(shard=self.shard_id, monotonic=self._clock(), error=detail)
        )

    async def close(self, *, end_session: bool = False, release: bool = True) -> None:
        """Stop the writer; write the final checkpoint, or delete the state if the session was
        ended on purpose. Then release the store (unless ``release`` is False: the owner
        releases it later)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # A writer that ended by an exception was reported by its owner (the shard).
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        saving = self._saving
        if saving is not None and not saving.done():
            with contextlib.suppress(Exception):
                await saving  # the writer was cancelled mid-save: let the thread finish first
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
            if release:
                await asyncio.to_thread(self.store.close)
