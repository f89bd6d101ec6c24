r"""The webhook transport as one object: callbacks in, the same handlers, nothing lost.

With ``ClientConfig(mode="webhook")`` the client opens no WebSocket; it makes one
:class:`WebhookMode` (shard 0) instead of its :class:`~.shard.Shard`\ s. It owns, each made from
the ones before it:

* a :class:`~.callbacks.CallbackAcceptor` with its own :class:`~.types.DedupeWindow` (the same
  kind of window a gateway session keeps; no session is built for it);
* the :class:`~.dispatch.Dispatcher` (the bounded handler queue; its ``Progress``);
* with a file session store: the intake journal (:mod:`.journal`: a callback is durable before
  its ACK) and the :class:`~.checkpoint.Checkpointer`, whose watermark is the journal's position
  and which tells the journal of each durable write by a direct call (``on_written``);
* the :class:`~.webhook.WebhookIntake` that a receiver hands requests to (``client.webhook``).

``start()`` loads the checkpoint and re-delivers, in order, what a previous process ACKed and
did not handle, before the receiver listens. A checkpoint writer that ends by an exception (a
bug, not a failed write: those are retried) is logged as an ERROR and marks the handlers dead in
the intake's status, so the health report turns red instead of checkpoints stopping silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from . import events as ev
from .actions import Deliver, Emit
from .callbacks import CallbackAcceptor
from .checkpoint import Checkpointer
from .context import ShardContext
from .dispatch import BatchSink, Dispatcher, Handler, Progress
from .journal import IntakeJournal, JournalFile, JournalRecord
from .protocol import GatewayEvent, WebhookKey
from .store import FileSessionStore, SessionStore, StoredSession, StoreError
from .types import ClientConfig, HandlerContext
from .webhook import WebhookIntake

__all__ = ["SharedIntake", "SharedIntakeFactory", "WebhookMode"]

_log = logging.getLogger("qqbot_gateway.client")

#: Handled event ids the webhook checkpoint keeps (the WebSocket store keeps 256). The platform
#: redelivers a callback on its own, undocumented schedule rather than within a resume, so the
#: window must span minutes of traffic, not seconds: 1,024 ids is ~40 kB per checkpoint write.
#: The handled records still in the journal add theirs at start too.
_WEBHOOK_DEDUPE_IDS: Final = 1024


class SharedIntake(Protocol):
    """Cluster mode's intake (``qqbot_gateway.cluster.intake.RedisIntake``): a
    :class:`~.webhook.DispatchJournal` shared by every replica, with a dedupe window shared too.
    ``handled(event_id)`` is called after the handlers of each event (``Progress.remember``)."""

    @property
    def in_flight(self) -> int: ...

    def submit(self, event: GatewayEvent, body: bytes) -> asyncio.Future[bool]: ...
    def pending(self, event_id: str) -> asyncio.Future[bool] | None: ...
    def handled(self, event_id: str) -> None: ...
    async def start(self) -> None: ...
    async def flush(self) -> None: ...
    async def close(self) -> None: ...


#: ``(deliver, forget, redeliver) -> SharedIntake``: deliver queues an event, forget drops an id
#: from the local window, redeliver turns a claimed payload into an event (None: a duplicate).
SharedIntakeFactory = Callable[
    [
        Callable[[GatewayEvent], None],
        Callable[[str], None],
        Callable[[Mapping[str, Any]], GatewayEvent | None],
    ],
    SharedIntake,
]


class WebhookMode:
    """The webhook transport's parts and their wiring; see the module docstring.

    ``shared`` (cluster mode): the intake lives in Redis, shared by every replica, instead of
    the file journal and checkpoint."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        key: WebhookKey,
        bus: ev.EventBus,
        stats: ev.ShardStats,
        handlers: Callable[[str], list[Handler]],
        around_event: Callable[[], HandlerContext | None],
        store: SessionStore | None = None,
        sink: BatchSink | None = None,
        shared: SharedIntakeFactory | None = None,
    ) -> None:
        self.config = config
        self._bus = bus
        self.acceptor = CallbackAcceptor(0, stats=stats, interest=bus.interest(0))
        # The journal lives beside the state file: a custom backend has no directory for it.
        file_store = store if isinstance(store, FileSessionStore) and shared is None else None
        self.store = file_store
        self.dispatcher = Dispatcher(
            self.acceptor,
            bus=bus,
            handlers=handlers,
            capacity=config.handler_queue_size,
            log_context=ShardContext(0),
            around_event=around_event,
            progress=(
                Progress(_WEBHOOK_DEDUPE_IDS)
                if file_store is not None or shared is not None
                else None
            ),
            sink=sink,
        )
        self.shared: SharedIntake | None = None
        if shared is not None:
            self.shared = shared(self.dispatcher.put, self.acceptor.forget_id, self._redeliver)
            assert self.dispatcher.progress is not None
            self.dispatcher.progress.remember = self.shared.handled
        self.journal: IntakeJournal | None = None
        self.checkpointer: Checkpointer | None = None
        if file_store is not None:
            journal = self.journal = IntakeJournal(
                JournalFile(file_store.directory, config.app_id),
                bus=bus,
                deliver=self.dispatcher.put,
                handled=self._handled,
                forget=self.acceptor.forget_id,
            )
            self.checkpointer = Checkpointer(
                file_store,
                app_id=config.app_id,
                shard_id=0,
                shard_count=1,
                bus=bus,
                interval=config.checkpoint_interval,
                dedupe_ids=_WEBHOOK_DEDUPE_IDS,
                position=journal.position,
                progress=self.dispatcher.progress,
                on_written=journal.checkpoint_written,
            )
        #: Why checkpoints stopped (a bug in the writer), or None.
        self.failure: str | None = None
        self.intake = WebhookIntake(
            key,
            session=self.acceptor,
            bus=bus,
            deliver=self.dispatcher.put,
            queue_full=self._queue_full,
            handlers_alive=self._handlers_alive,
            config=config.webhook,
            clock=asyncio.get_running_loop().time,
            journal=self.journal if self.shared is None else self.shared,
        )

    # --- the wiring ----------------------------------------------------------------------
    def _handled(self) -> int:
        progress = self.dispatcher.progress
        return progress.handled if progress is not None else 0

    def _redeliver(
        self, payload: Mapping[str, Any], now: float | None = None
    ) -> GatewayEvent | None:
        """A callback accepted before and not handled (another replica's, claimed by this one;
        or the previous process's, from its journal): the event to hand on, or None (a
        duplicate, or not an event)."""
        if now is None:
            now = asyncio.get_running_loop().time()
        event = None
        for action in self.acceptor.accept_callback(payload, now):
            if isinstance(action, Deliver):
                event = action.event
            elif isinstance(action, Emit):
                self._bus.emit(action.event)
        return event

    def _queue_full(self) -> bool:
        waiting = self.journal.in_flight if self.journal is not None else 0
        if self.shared is not None:
            waiting = self.shared.in_flight
        return self.dispatcher.depth + waiting >= self.dispatcher.capacity

    def _handlers_alive(self) -> bool:
        return self.dispatcher.running and self.failure is None

    def _writer_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        self.failure = f"checkpoint writer failed: {type(exc).__name__}: {exc}"
        _log.error("webhook: %s; handled events are no longer checkpointed", self.failure)

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Recover the journal (re-delivering what a previous process did not handle), then
        start the handler task, the checkpoint writer and the journal writer."""
        store, checkpointer, journal = self.store, self.checkpointer, self.journal
        if store is not None and checkpointer is not None and journal is not None:
            await self._recover(store, checkpointer, journal)
        if self.shared is not None:
            await self.shared.start()
        self.dispatcher.start()
        if checkpointer is not None and journal is not None:
            checkpointer.start()
            task = checkpointer.task
            if task is not None:
                task.add_done_callback(self._writer_ended)
            journal.start()

    async def close(self, drain_timeout: float) -> None:
        """New callbacks get a 503 (the platform retries them), the ones being written get their
        answer, handlers drain, the final checkpoint, then the journal it covers is cut back;
        the store's lock stays with the client, which releases it after."""
        self.intake.close()
        if self.journal is not None:
            await self.journal.flush()
        if self.shared is not None:
            await self.shared.flush()
        with contextlib.suppress(Exception):
            await self.dispatcher.close(drain_timeout)
        if self.shared is not None:
            # Handled entries are acknowledged; the rest stay pending for another replica.
            with contextlib.suppress(Exception):
                await self.shared.close()
        if self.checkpointer is not None and self.journal is not None:
            with contextlib.suppress(Exception):
                await self.checkpointer.close(release=False)
            with contextlib.suppress(Exception):
                await self.journal.close()

    async def _recover(
        self, store: FileSessionStore, checkpointer: Checkpointer, journal: IntakeJournal
    ) -> None:
        """Before the receiver listens: load the checkpoint and re-deliver, in order, what the
        previous process ACKed and did not handle (see :mod:`.journal`)."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        state: StoredSession | None = None
        why: str | None = None
        try:
            state = await asyncio.to_thread(store.load)
        except StoreError as exc:
            why = str(exc)
        else:
            if state is not None and (state.app_id, state.shard_id) != (cfg.app_id, 0):
                why = f"{store.location} belongs to app id {state.app_id!r}, not this bot"
                state = None
        if why is not None:
            _log.warning(
                "webhook: not using the stored checkpoint: %s; the whole journal is "
                "re-delivered (handlers may see events they handled before)",
                why,
            )
            self._bus.emit(
                ev.RestartResume(shard=0, monotonic=loop.time(), outcome="unusable", detail=why)
            )
        recovery = await asyncio.to_thread(journal.file.recover)
        for warning in recovery.warnings:
            _log.warning("%s", warning)
        if recovery.unusable is not None:  # counted like an unusable state file
            self._bus.emit(
                ev.RestartResume(
                    shard=0, monotonic=loop.time(), outcome="unusable", detail=recovery.unusable
                )
            )
        try:
            await asyncio.to_thread(journal.file.open, recovery)
        except OSError as exc:
            raise StoreError(
                f"cannot open {journal.file.location}: {exc.strerror or exc}"
            ) from None
        watermark = (state.session_id, state.seq) if state is not None else (None, 0)
        todo = journal.restore(recovery, watermark)
        first = todo[0].n if todo else None
        # Ids of the records handled already (at or below the watermark), then the stored
        # window: a redelivery of any of them is dropped.
        handled = [r for r in recovery.records if first is None or r.n < first]
        self.acceptor.remember_ids(_event_ids(handled))
        if state is not None:
            self.acceptor.remember_ids(state.event_ids)
            checkpointer.restore(state)
        replayed = skipped = 0
        now = loop.time()
        for record in todo:
            try:
                payload = record.payload()
            except ValueError:
                payload = None
            event = self._redeliver(payload, now) if isinstance(payload, dict) else None
            if event is not None:
                journal.replayed(record, event)
                replayed += 1
            else:
                journal.skipped(record)
                skipped += 1
        if todo:
            _log.info(
                "webhook: re-delivering %d event(s) the previous process ACKed and did not "
                "handle, from %s (%d handled already, skipped)",
                replayed,
                journal.file.location,
                skipped,
            )
        self._bus.emit(
            ev.JournalReplayed(shard=0, monotonic=now, replayed=replayed, skipped=skipped)
        )


def _event_ids(records: list[JournalRecord]) -> list[str]:
    ids = []
    for record in records:
        try:
            payload = record.payload()
        except ValueError:
            continue
        event_id = payload.get("id") if isinstance(payload, dict) else None
        if isinstance(event_id, str) and event_id:
            ids.append(event_id)
    return ids
