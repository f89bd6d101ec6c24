"""One shard of the gateway, as one object: its session, connection, dispatcher and checkpoint.

The client (:mod:`.client`) makes one :class:`Shard` per configured shard and drives it:
``restore()`` (a stored session, if usable), ``await start()``, ``await stop(reason)``. The
shard owns its parts and is the only place they are wired together, each part made from the
ones made before it::

    session -> dispatcher (the handler queue; its Progress: what was handled)
            -> supervisor (connections: deliver = dispatcher.put, control = the shard)
            -> checkpointer (reads the dispatcher's Progress, the session's position and
               whether the supervisor is READY; writes to the shard's store)

**The control path.** What the shard needs in order to work travels by direct calls, never
through the observers' bus (whose subscriber errors are isolated, and would hide a failure):
READY/RESUMED and zombie verdicts go from the connection to the supervisor, a dropped duplicate
from there to :meth:`Shard._control` and on to :meth:`.Checkpointer.duplicate`, a written
checkpoint to the checkpointer's ``on_written``. An exception on that path, or a checkpoint
writer task that ends by one, stops the shard loudly with the exception as its reason
(:meth:`Shard.fail`): an ERROR line, the supervisor ends as *crashed* (a
:class:`~.events.SupervisorStopped` with the error, the health report red), and the shard stops
(the session stays resumable). A failed *write* is not such an error: it is retried
(:mod:`.checkpoint`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import aiohttp

from . import events as ev
from .auth import TokenSource
from .checkpoint import DEFAULT_DEDUPE_IDS, Checkpointer
from .dispatch import BatchSink, Dispatcher, Handler, Progress
from .protocol import GatewayEvent
from .session import GatewaySession
from .store import SessionStore, StoredSession, StoreError, age_of
from .supervisor import GatewayUrlSource, ShardSupervisor
from .types import ClientConfig, HandlerContext

__all__ = ["Guard", "Shard"]

_log = logging.getLogger("qqbot_gateway.shard")

#: An ownership check: awaited before each connection attempt; raising stops the shard.
Guard = Callable[[], Awaitable[None]]
#: When the shard stops itself (a control-path failure), handlers get this long to drain: the
#: default of ``QQBotClient.close``, as a shutdown would give them.
_FAILURE_DRAIN: Final = 5.0
#: A shard that lost its lease waits this long for its final checkpoint (refused when another
#: process owns the shard, failing when Redis is gone: the next owner replays from its own).
_LOST_CHECKPOINT: Final = 1.0
#: ``restore()`` without a state read by the caller.
_UNREAD: Final = object()


class Shard:
    """One shard: see the module docstring for the wiring and the control path.

    ``store`` (None: no session store) holds the shard's session across processes; the owner
    has acquired it. ``guard``, if given, is the **ownership hook**: it is awaited before every
    connection attempt, and an exception from it stops the shard with that reason (the
    supervisor never identifies or resumes, so never sends, without it passing). A lease (with
    Redis: prove the lease, or stop before anyone else can start) plugs in there; writes to a
    store that checks a fencing token fail in the store's ``save``, which the checkpointer
    reports and retries. :meth:`fail` is the path for an ownership loss found elsewhere (a lease
    renewal task): it stops the shard with the reason, like any control-path failure.
    """

    def __init__(
        self,
        shard_id: int,
        *,
        config: ClientConfig,
        bus: ev.EventBus,
        stats: ev.ShardStats,
        tokens: TokenSource,
        gateway_url: GatewayUrlSource,
        ws_http: aiohttp.ClientSession,
        handlers: Callable[[str], list[Handler]],
        around_event: Callable[[], HandlerContext | None],
        store: SessionStore | None = None,
        sink: BatchSink | None = None,
        guard: Guard | None = None,
        may_send: Callable[[], bool] | None = None,
    ) -> None:
        self.shard_id = shard_id
        self.config = config
        self.store = store
        self._bus = bus
        self.session = GatewaySession(
            shard_id=shard_id,
            shard_count=config.shard_count,
            intents=config.intents,
            liveness=config.liveness,
            stats=stats,
        )
        self.dispatcher = Dispatcher(
            self.session,
            bus=bus,
            handlers=handlers,
            capacity=config.handler_queue_size,
            around_event=around_event,
            progress=Progress(DEFAULT_DEDUPE_IDS) if store is not None else None,
            sink=sink,
        )
        deliver: Callable[[GatewayEvent], None] = self.dispatcher.put  # bound, no wrapper
        if may_send is not None:
            put = self.dispatcher.put

            def deliver(event: GatewayEvent) -> None:
                # Cluster mode: an event read after the lease ran out (a process woken from a
                # pause) goes to no handler; the next owner replays it from the watermark.
                if may_send():
                    put(event)

        self.supervisor = ShardSupervisor(
            self.session,
            tokens=tokens,
            gateway_url=gateway_url,
            ws_http=ws_http,
            bus=bus,
            deliver=deliver,
            transport=config.transport,
            policy=config.reconnect,
            wait_for_drain=self.dispatcher.wait_for_drain,
            control=self._control,
            guard=guard,
            on_failure=self.fail,
            may_send=may_send,
        )
        self.dispatcher.log_context = self.supervisor.log_context
        self.checkpointer: Checkpointer | None = None
        if store is not None:
            self.checkpointer = Checkpointer(
                store,
                app_id=config.app_id,
                shard_id=shard_id,
                shard_count=config.shard_count,
                bus=bus,
                interval=config.checkpoint_interval,
                live=self._live,
                current_session=self._current_session,
                accepted_count=self._accepted_count,
                progress=self.dispatcher.progress,
            )
        #: Why the shard stopped (None while it runs): "shutdown", or the failure.
        self.stopped_reason: str | None = None
        self._stopping: asyncio.Task[None] | None = None

    # --- the wiring ----------------------------------------------------------------------
    def _live(self) -> bool:
        return self.supervisor.state is ev.ConnectionState.READY

    def _current_session(self) -> tuple[str | None, int]:
        return self.session.session_id, self.session.seq

    def _accepted_count(self) -> int:
        progress = self.dispatcher.progress
        handled = progress.handled if progress is not None else 0
        return handled + self.dispatcher.outstanding

    def _control(self, event: ev.LifecycleEvent) -> None:
        """The supervisor's direct call for the session's control events, after its own part
        (READY, RESUMED, zombies). An exception raised here reaches :meth:`fail`."""
        if isinstance(event, ev.DuplicateDropped) and self.checkpointer is not None:
            self.checkpointer.duplicate(event.seq)

    def _writer_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.fail(exc, where="checkpoint writer")

    # --- lifecycle -----------------------------------------------------------------------
    def restore(self, loaded: StoredSession | StoreError | object | None = _UNREAD) -> None:
        """Adopt the session a previous process stored for this shard, if it is usable.
        ``loaded``: what the store returned (or raised), if the caller read it already."""
        store, ckpt = self.store, self.checkpointer
        if store is None or ckpt is None:
            return
        sid, cfg = self.shard_id, self.config

        def unusable(why: str, outcome: str = "unusable") -> None:
            _log.warning(
                "shard %d: not resuming the stored session: %s; identifying afresh", sid, why
            )
            self._bus.emit(
                ev.RestartResume(
                    shard=sid,
                    monotonic=asyncio.get_running_loop().time(),
                    outcome=outcome,
                    detail=why,
                )
            )

        try:
            if isinstance(loaded, StoreError):
                raise loaded
            state = loaded if isinstance(loaded, StoredSession | None) else store.load()
        except StoreError as exc:
            unusable(str(exc))
            return
        if state is None:
            return
        if state.app_id != cfg.app_id:
            unusable(f"{store.location} belongs to app id {state.app_id!r}, not this bot")
            return
        if (state.shard_id, state.shard_count) != (sid, cfg.shard_count):
            unusable(
                f"{store.location} is for shard {state.shard_id} of {state.shard_count}, "
                f"this process runs shard {sid} of {cfg.shard_count}"
            )
            return
        age = age_of(state)
        if age > cfg.session_max_age:
            unusable(
                f"it was saved {age:.0f}s ago (max age {cfg.session_max_age:g}s, "
                "QQBOT_SESSION_MAX_AGE); events sent since may be missed",
                "too_old",
            )
            return
        self.session.restore(state.session_id, state.seq, state.event_ids)
        ckpt.restore(state)
        self.supervisor.expect_restored(state.session_id, state.seq, age)
        _log.info(
            "shard %d: resuming session %s at seq %d (saved %.1fs ago)",
            sid,
            state.session_id,
            state.seq,
            age,
        )

    async def start(self) -> None:
        """Start the handler task, the checkpoint writer and the supervisor (it connects)."""
        self.dispatcher.start()
        if self.checkpointer is not None:
            self.checkpointer.start()
            task = self.checkpointer.task
            if task is not None:
                task.add_done_callback(self._writer_ended)
        self.supervisor.start()

    def fail(self, exc: BaseException, *, where: str = "control path") -> None:
        """Stop the shard because ``exc`` broke what it needs to work (see the module
        docstring). Synchronous, safe from any task of the shard; :meth:`stop` finishes it."""
        if self.stopped_reason is not None:
            return
        self.stopped_reason = f"{where} failed: {type(exc).__name__}: {exc}"
        _log.error("shard %d: %s; stopping the shard", self.shard_id, self.stopped_reason)
        self.supervisor.fail(exc)
        self._stopping = asyncio.get_running_loop().create_task(
            self._stop(_FAILURE_DRAIN, end_session=False),
            name=f"qqbot stop shard {self.shard_id}",
        )

    async def stop(
        self,
        reason: str = "shutdown",
        *,
        drain_timeout: float = 5.0,
        end_session: bool = False,
        lost: bool = False,
    ) -> None:
        """Stop the supervisor (close 4000, the session kept, when there is a store; else
        1000), let the handlers drain for at most ``drain_timeout`` s, write the final
        checkpoint (or delete the state: ``end_session``). Idempotent: a second call waits for
        the first. ``lost`` (cluster mode: the lease is no longer provably ours): drop the
        socket without a close frame, and wait at most ``_LOST_CHECKPOINT`` for the final
        checkpoint."""
        if self._stopping is None:
            if self.stopped_reason is None:
                self.stopped_reason = reason
            self._stopping = asyncio.get_running_loop().create_task(
                self._stop(drain_timeout, end_session=end_session, lost=lost),
                name=f"qqbot stop shard {self.shard_id}",
            )
        await asyncio.shield(self._stopping)

    async def _stop(self, drain_timeout: float, *, end_session: bool, lost: bool = False) -> None:
        keep = not end_session and self.checkpointer is not None
        with contextlib.suppress(Exception):
            await self.supervisor.stop(end_session=not keep, abort=lost)
        with contextlib.suppress(Exception):
            await self.dispatcher.close(drain_timeout)
        if self.checkpointer is not None:
            try:
                async with asyncio.timeout(_LOST_CHECKPOINT if lost else None):
                    await self.checkpointer.close(end_session=end_session)
            except TimeoutError:
                _log.warning(
                    "shard %d: no final checkpoint within %gs after the lease was lost",
                    self.shard_id,
                    _LOST_CHECKPOINT,
                )
            except Exception as exc:  # noqa: BLE001 - reported; the stop goes on
                _log.error(
                    "shard %d: the final checkpoint failed: %s: %s",
                    self.shard_id,
                    type(exc).__name__,
                    exc,
                )
