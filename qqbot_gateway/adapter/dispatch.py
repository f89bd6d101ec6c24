"""Delivery to user handlers, off the read loop, through a bounded queue.

The reader only ever calls :meth:`Dispatcher.put`, which never blocks: op 11 ACKs are processed
in the read loop itself, so a slow handler can never fake a zombie. When the queue reaches its
capacity the session is put under backpressure: the next dispatch is refused without advancing
the sequence number and the connection is closed for a resume once the queue has drained below
half. The server then replays what we refused: nothing is lost, and memory stays bounded.

Handlers run one event at a time per shard, in sequence order. An exception in a handler is
logged and counted (:class:`~.events.HandlerFailed`) and never reaches the session.

With a session store, ``progress`` (a :class:`Progress`, the dispatcher's record of what it
handled) is updated inline for every event whose handlers have all returned or raised; the
checkpointer only reads it, and its watermark relies on this one-at-a-time, in-order handling.
An event cut short by a shutdown is not handled.

**A batch sink instead of handlers** (``sink``, the ``stream`` delivery of
:mod:`qqbot_gateway.cluster.stream`): the task takes up to ``batch`` queued events at once,
awaits ``sink(events)`` (one append of the batch) and only then marks all of them handled, in
order, so the watermark passes an event only once the sink has made it durable. A sink that
raises is logged and called again with the same events after a pause; meanwhile the queue fills
and the backpressure above applies. Handlers are not called on this path. What the telemetry
means here: an event's "handler duration" (``ShardStats``, ``HandlerCompleted``) is the time its
batch's sink call took, retries included; ``around_event`` (the event's tracing span) is entered
and left for each event once the sink returned, so the span ends when the event is durable.

The queue depth and each handler's duration are kept in the shard's
:class:`~.events.ShardStats`; ``HandlerQueueDepth`` and ``HandlerCompleted`` events are built
only when someone subscribed to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

from . import events as ev
from .context import ShardContext, current_shard
from .protocol import GatewayEvent
from .types import HandlerContext
from .waiting import loop_clock

__all__ = ["BatchSink", "Dispatcher", "Handler", "HandlerContext", "Progress"]

_log = logging.getLogger("qqbot_gateway.dispatch")

Handler = Callable[[GatewayEvent], Awaitable[Any] | Any]
#: A handler that returned an awaitable: (the awaitable, the handler, when it started, the
#: index of the next handler).
_Pending = tuple[Awaitable[Any], Handler, float, int]
#: Takes a batch of accepted events and returns once they are durable elsewhere. A call that
#: raised is retried with the same list object (a sink may recognise the retry by it: the
#: failed call may have been applied after all, e.g. a timeout during a Redis outage).
BatchSink = Callable[[list[GatewayEvent]], Awaitable[None]]
#: A failed sink call is retried after this pause (a Redis failover takes seconds; a tight loop
#: would flood the log and the server).
_SINK_RETRY: Final = 0.5


class _Position:
    """A place in the stream that is not a handled event: a restored state, a duplicate."""

    __slots__ = ("seq", "session_id")

    def __init__(self, session_id: str | None, seq: int | None) -> None:
        self.session_id = session_id
        self.seq = seq


class Progress:
    """What the dispatcher has handled, updated inline per event; the checkpointer reads it.

    ``handled``: events handled so far; ``last``: the last handled event with a sequence
    number (anything with ``session_id`` and ``seq``: the event itself, so one event is held
    alive); ``remember``: appends an event id to the bounded dedupe window ``ids``
    (``dedupe_ids`` long: the ids a checkpoint persists, see ``checkpoint.DEFAULT_DEDUPE_IDS``).
    """

    __slots__ = ("handled", "ids", "last", "remember")

    def __init__(self, dedupe_ids: int) -> None:
        self.handled = 0
        self.last: _Position | object = _Position(None, 0)
        self.ids: deque[str] = deque(maxlen=dedupe_ids)
        self.remember: Callable[[str], None] = self.ids.append


class _EventQueue:
    """The handler queue: one producer (the reader), one consumer (the handler task).

    ``asyncio.Queue`` does more per item than this needs (task accounting, putter wake-ups for
    a bound we enforce ourselves): a deque and one waiter future cost a third as much.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[GatewayEvent] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> GatewayEvent:
        while not self._items:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._items.popleft()


class Intake(Protocol):
    """Where the dispatcher's events come from: the shard's ``GatewaySession`` (WebSocket), or
    the webhook transport's :class:`~.callbacks.CallbackAcceptor`. Backpressure pauses it."""

    shard_id: int
    stats: ev.ShardStats

    def set_backpressure(self, on: bool) -> None: ...


class Dispatcher:
    def __init__(
        self,
        session: Intake,
        *,
        bus: ev.EventBus,
        handlers: Callable[[str], list[Handler]],
        capacity: int = 1000,
        log_context: ShardContext | None = None,
        around_event: Callable[[], HandlerContext | None] = lambda: None,
        progress: Progress | None = None,
        sink: BatchSink | None = None,
        batch: int = 512,
    ) -> None:
        if capacity < 1:
            raise ValueError("handler queue capacity must be >= 1")
        self._session = session
        self._bus = bus
        self._handlers = handlers
        self.capacity = capacity
        self._queue = _EventQueue()
        self._items = self._queue._items  # read directly on the per-event path
        self._drained = asyncio.Event()
        self._drained.set()
        self._loop = asyncio.get_running_loop()
        self._clock = loop_clock(self._loop)
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        self._paused = False  # intake paused by backpressure (``_drained`` clear)
        #: Set as the handler task's log context when it starts (see ``context``).
        self.log_context = log_context
        self._around_event = around_event
        #: What was handled (None: not tracked, no session store); the checkpointer reads it.
        self.progress = progress
        self._stats = session.stats
        self._interest = bus.interest(session.shard_id)
        self._sink = sink
        self._batch = max(1, batch)
        #: Events taken off the queue and not yet handled while ``_busy`` (a sink's batch).
        self._in_hand = 1

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    @property
    def running(self) -> bool:
        """True while the handler task runs (started and neither finished nor crashed)."""
        return self._task is not None and not self._task.done()

    @property
    def outstanding(self) -> int:
        """Events accepted and not yet handled: queued, or in a handler now."""
        return self._queue.qsize() + (self._in_hand if self._busy else 0)

    @property
    def idle(self) -> bool:
        return self._queue.empty() and not self._busy

    def start(self) -> None:
        shard = self._session.shard_id
        self._task = asyncio.create_task(self._work(), name=f"qqbot handlers shard {shard}")

    def put(self, event: GatewayEvent) -> None:
        """Called by the reader for every accepted dispatch. Never blocks."""
        items = self._items
        items.append(event)  # the queue's put, inline: once per event
        waiter = self._queue._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        depth = len(items)
        self._stats.queue_depth = depth
        if self._interest.queue_depth:
            self._publish_depth(depth)
        if depth >= self.capacity:
            if not self._paused:
                _log.warning(
                    "shard %d: handler queue full (%d); pausing intake until it drains",
                    self._session.shard_id,
                    depth,
                )
            self._paused = True
            self._drained.clear()
            self._session.set_backpressure(True)

    async def wait_for_drain(self) -> None:
        await self._drained.wait()

    async def close(self, drain_timeout: float) -> int:
        """Let queued events finish for at most ``drain_timeout`` s; returns how many were left."""
        if self._task is None:
            return self._queue.qsize()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_timeout):
                while not self.idle:  # noqa: ASYNC110 - idle is a derived property, no event
                    await asyncio.sleep(0.01)
        left = self._queue.qsize()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if left:
            _log.warning(
                "shard %d: %d events not handled at shutdown (drain timeout %.1fs)",
                self._session.shard_id,
                left,
                drain_timeout,
            )
        return left

    async def _work(self) -> None:
        if self.log_context is not None:
            current_shard.set(self.log_context)
        if self._sink is not None:
            await self._work_batches(self._sink)
            return
        items, queue = self._items, self._queue
        progress = self.progress
        remember = progress.remember if progress is not None else None
        while True:
            # An event already queued is taken without a coroutine for ``get`` (as ``get``
            # would: it returns without yielding when the queue is not empty).
            event = items.popleft() if items else await queue.get()
            self._busy = True
            try:
                around = self._around_event()
                if around is None:
                    # Synchronous handlers (the common case) run without a coroutine per event.
                    handlers = self._handlers(event.type)
                    pending = self._run_handlers(event, handlers, 0)
                    if pending is not None:
                        await self._finish(event, handlers, pending)
                else:
                    with around(event):
                        await self._handle(event)
                if progress is not None:  # inline: this runs for every event
                    progress.handled += 1
                    if event.seq is not None:
                        progress.last = event
                    event_id = event.event_id
                    if event_id is not None and remember is not None:
                        remember(event_id)
            finally:
                self._busy = False
                depth = len(items)
                self._stats.queue_depth = depth
                if self._interest.queue_depth:
                    self._publish_depth(depth)
                if self._paused and depth <= self.capacity // 2:
                    self._paused = False
                    self._session.set_backpressure(False)
                    self._drained.set()

    async def _work_batches(self, sink: BatchSink) -> None:
        """The sink path (see the module docstring): batch, await the sink, then mark handled."""
        items, queue = self._items, self._queue
        progress = self.progress
        while True:
            if not items:
                items.appendleft(await queue.get())
            take = min(len(items), self._batch)
            batch = [items.popleft() for _ in range(take)]
            self._in_hand = take
            self._busy = True
            started = self._clock()
            failures = 0
            try:
                while True:
                    try:
                        await sink(batch)
                        break
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - retried; the queue holds the rest
                        failures += 1
                        # One WARNING per failure streak (a Redis outage retries twice a second).
                        _log.log(
                            logging.WARNING if failures == 1 else logging.DEBUG,
                            "shard %d: could not hand %d events on (%s: %s); retrying every %gs",
                            self._session.shard_id,
                            take,
                            type(exc).__name__,
                            exc,
                            _SINK_RETRY,
                        )
                        await asyncio.sleep(_SINK_RETRY)
                if failures:
                    _log.warning(
                        "shard %d: handed %d events on after %d failed attempts",
                        self._session.shard_id,
                        take,
                        failures,
                    )
                # Each event's "handler duration" is its batch's append (retries included).
                now = self._clock()
                elapsed = now - started
                stats = self._stats
                for event in batch:
                    stats.count_handled(elapsed)
                    if progress is not None:
                        progress.handled += 1
                        if event.seq is not None:
                            progress.last = event
                        if event.event_id is not None:
                            progress.remember(event.event_id)
                around = self._around_event()
                if around is not None:
                    # Tracing: each event's span (from its acceptance) ends here, once its
                    # append is durable; no handler runs in this process.
                    for event in batch:
                        with around(event):
                            pass
                if self._interest.handled:  # counted above: only the events here
                    for event in batch:
                        self._bus.emit(
                            ev.HandlerCompleted(
                                shard=event.shard,
                                monotonic=now,
                                event_type=event.type,
                                duration=elapsed,
                            )
                        )
            finally:
                self._busy = False
                self._in_hand = 1
                depth = len(items)
                self._stats.queue_depth = depth
                if self._interest.queue_depth:
                    self._publish_depth(depth)
                if self._paused and depth <= self.capacity // 2:
                    self._paused = False
                    self._session.set_backpressure(False)
                    self._drained.set()

    async def _handle(self, event: GatewayEvent) -> None:
        handlers = self._handlers(event.type)
        pending = self._run_handlers(event, handlers, 0)
        if pending is not None:
            await self._finish(event, handlers, pending)

    async def _finish(
        self, event: GatewayEvent, handlers: list[Handler], pending: _Pending | None
    ) -> None:
        """Await the handler that returned an awaitable, then run the handlers after it."""
        while pending is not None:
            awaitable, handler, started, after = pending
            try:
                await awaitable
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a handler's bug never kills the session
                self._failed(event, handler, exc)
            else:
                self._completed(event, started)
            pending = self._run_handlers(event, handlers, after)

    def _run_handlers(
        self, event: GatewayEvent, handlers: list[Handler], first: int
    ) -> _Pending | None:
        """Call ``handlers`` from index ``first`` on; stop at the first one that returns an
        awaitable and hand it back (with the handler, its start time and the index of the next
        handler) for :meth:`_finish` to await."""
        clock, stats = self._clock, self._stats
        for index in range(first, len(handlers)):
            handler = handlers[index]
            started = clock()
            try:
                result = handler(event)
            except Exception as exc:  # noqa: BLE001 - a handler's bug never kills the session
                self._failed(event, handler, exc)
                continue
            if result is not None and inspect.isawaitable(result):
                return result, handler, started, index + 1
            if self._interest.handled:
                self._completed(event, started)
            else:  # _completed without the event nobody listens to
                stats.count_handled(clock() - started)
        return None

    def _completed(self, event: GatewayEvent, started: float) -> None:
        now = self._clock()
        self._stats.count_handled(now - started)
        if self._interest.handled:
            self._bus.emit(
                ev.HandlerCompleted(
                    shard=event.shard,
                    monotonic=now,
                    event_type=event.type,
                    duration=now - started,
                )
            )

    def _failed(self, event: GatewayEvent, handler: Handler, exc: Exception) -> None:
        name = getattr(handler, "__qualname__", repr(handler))
        _log.error(
            "handler %s failed on %s (seq %s): %s",
            name,
            event.type,
            event.seq,
            type(exc).__name__,
            exc_info=exc,
            extra={"shard": event.shard, "event_type": event.type},
        )
        self._bus.emit(
            ev.HandlerFailed(
                shard=event.shard,
                monotonic=self._loop.time(),
                event_type=event.type,
                handler=name,
                error_type=type(exc).__name__,
                error=str(exc)[:300],
            )
        )

    def _publish_depth(self, depth: int) -> None:
        if not self._interest.queue_depth:
            return
        self._bus.emit(
            ev.HandlerQueueDepth(
                shard=self._session.shard_id,
                monotonic=self._loop.time(),
                depth=depth,
                capacity=self.capacity,
            )
        )
