"""The library entry point: a client you create with settings, register handlers on, and run.

::

    from qqbot_gateway import ClientConfig, QQBotClient, Secret

    client = QQBotClient(ClientConfig(app_id="102000000", client_secret=Secret("...")))

    @client.on("C2C_MESSAGE_CREATE")
    async def echo(event):
        await client.api.reply(event, f"you said: {event.data['content']}")

    async with client:          # connects every configured shard
        await client.wait_closed()

Lifecycle events (``qqbot_gateway.adapter.events``) are published on ``client.events``.

**Across processes.** With ``ClientConfig(state_dir=...)`` (the service's default, see
``QQBOT_STATE_DIR``) each shard keeps its session in a store (:mod:`.store`, :mod:`.checkpoint`):
``start()`` takes the shard's lock, and resumes a stored session younger than
``session_max_age``; ``close()`` keeps the session resumable (close code 4000, handlers drained,
final checkpoint) unless ``close(end_session=True)`` ends it (close 1000, state deleted). Another
backend plugs in through ``QQBotClient(config, store_factory=...)``.

With ``mode="webhook"`` the client opens no WebSocket: QQ posts signed callbacks instead, and
``client.webhook`` (a :class:`~.webhook.WebhookIntake`) turns each request into the same events
for the same handlers. Serve it with :class:`qqbot_gateway.telemetry.webhook.WebhookReceiver`
(``qqbot-gateway run`` does, with ``QQBOT_TRANSPORT=webhook``) or from any web framework.
With a ``state_dir`` the webhook path keeps an intake journal (:mod:`.journal`): a callback is
durable before its ACK, ``start()`` re-delivers what a previous process ACKed and did not
handle, and the handled watermark and dedupe window are checkpointed in ``webhook.json``
under the same lock discipline as the shards' state (``webhook.lock``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Protocol, TypeVar

import aiohttp

from . import events as ev
from .api import OpenAPIClient
from .auth import TokenManager
from .backoff import Sleep
from .checkpoint import Checkpointer
from .connection import make_socket_factory
from .context import ShardContext
from .dispatch import Dispatcher, Handler
from .journal import IntakeJournal, JournalFile, JournalRecord
from .protocol import GatewayEvent
from .reconnect import session_start_wait
from .session import Deliver, Emit, GatewaySession
from .store import (
    FileSessionStore,
    SessionStore,
    StoredSession,
    StoreError,
    StoreLockedError,
    age_of,
)
from .supervisor import ShardSupervisor
from .types import (
    ClientConfig,
    HandlerContext,
    Secret,
    ShardStatus,
)
from .webhook import WebhookIntake, WebhookKey

__all__ = ["ClientConfig", "QQBotClient", "Secret"]

_log = logging.getLogger("qqbot_gateway.client")

H = TypeVar("H", bound=Handler)

#: QQ's session start window: at most ``max_concurrency`` identifies per this many seconds.
_SESSION_START_WINDOW = 5.0
#: While waiting for another process's lock on a shard's state, try again this often.
_LOCK_POLL = 0.5
StoreFactory = Callable[[int], SessionStore]
#: Event types whose handler lists are cached (a gateway inventing types cannot grow it).
_MAX_CACHED_TYPES = 256
#: Handled event ids the webhook checkpoint keeps (the WebSocket store keeps 256). The platform
#: redelivers a callback on its own, undocumented schedule rather than within a resume, so the
#: window must span minutes of traffic, not seconds: 1,024 ids is ~40 kB per checkpoint write.
#: The handled records still in the journal add theirs at start too.
_WEBHOOK_DEDUPE_IDS = 1024
#: Cluster mode: close() waits for the owned shards' terms this long beyond the drain time (the
#: supervisor's bounded stop, the final checkpoint, the lease's release).
_TERM_CLOSE_MARGIN = 8.0
#: A term that lost its lease waits this long for its final checkpoint (refused or failed when
#: another process owns the shard or Redis is gone; then the next owner replays from its own).
_LOST_TERM_CHECKPOINT = 1.0
#: ``_restore``'s "the caller did not read the store" marker.
_UNREAD = object()


class OwnershipTerm(Protocol):
    """One term of owning a shard in cluster mode (``qqbot_gateway.cluster.shards``)."""

    shard_id: int
    ended: asyncio.Event
    reason: str | None

    def valid(self) -> bool:
        """The shard's lease is provably this process's now (by its own clock)."""


class Ownership(Protocol):
    """Cluster mode: who owns which shard (``qqbot_gateway.cluster.shards.ShardOwnership``).

    ``hold(shard, run_term)`` stands by for the shard and calls ``run_term`` for each term this
    process owns it, until ``stop()``. The client runs the shard inside the term and stops it
    when ``term.ended`` is set (aborting without a frame if the term is no longer valid)."""

    def stop(self) -> None: ...

    def describe(self) -> dict[int, tuple[str, str]]:
        """Per offered shard: ("owner" | "standby", a short detail for health and status)."""

    async def hold(
        self, shard_id: int, run_term: Callable[[OwnershipTerm], Awaitable[None]]
    ) -> None: ...


class _Shard:
    __slots__ = ("checkpointer", "dispatcher", "session", "supervisor")

    def __init__(
        self,
        session: GatewaySession,
        supervisor: ShardSupervisor,
        dispatcher: Dispatcher,
        checkpointer: Checkpointer | None,
    ) -> None:
        self.session = session
        self.supervisor = supervisor
        self.dispatcher = dispatcher
        self.checkpointer = checkpointer


class QQBotClient:
    """Runs the configured shards; see the module docstring."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        bus: ev.EventBus | None = None,
        store_factory: StoreFactory | None = None,
        sleep: Sleep = asyncio.sleep,
        ownership: Ownership | None = None,
    ) -> None:
        self.config = config
        #: Cluster mode: shards are run only while this process holds their lease.
        self._ownership = ownership if config.mode == "websocket" else None
        if self._ownership is not None and store_factory is None:
            raise ValueError("ownership needs a store_factory (the fenced session store)")
        #: The starter's waits (session-start window and budget, another process's lock).
        self._sleep = sleep
        self.events = bus or ev.EventBus()
        state_dir = config.state_dir
        if config.mode != "websocket":
            # No gateway session: the state is the intake journal and its checkpoint, files in
            # the state directory (a custom backend has no directory for the journal).
            store_factory = None
            if state_dir is not None:

                def webhook_store(shard: int) -> SessionStore:
                    return FileSessionStore(state_dir, config.app_id, shard, stem="webhook")

                store_factory = webhook_store
        elif store_factory is None and state_dir is not None:

            def file_store(shard: int) -> SessionStore:
                return FileSessionStore(state_dir, config.app_id, shard)

            store_factory = file_store
        self._store_factory = store_factory
        self._stores: dict[int, SessionStore] = {}
        self._handlers: dict[str, list[Handler]] = {}
        self._handler_cache: dict[str, list[Handler]] = {}
        self._shards: dict[int, _Shard] = {}
        #: Per-shard counters the hot path keeps (frames, dispatches, queue depth, handler
        #: durations); made now so that telemetry attached before start() can read them.
        self.stats: dict[int, ev.ShardStats] = {s: ev.ShardStats(s) for s in config.shards}
        self._http: aiohttp.ClientSession | None = None
        self._ws_http: aiohttp.ClientSession | None = None
        self._tokens: TokenManager | None = None
        self._api: OpenAPIClient | None = None
        self._closed = asyncio.Event()
        self._starter: asyncio.Task[None] | None = None
        self._started = False
        self._closing = False
        #: Handlers' drain time when a shard stops (close() sets the caller's).
        self._drain_timeout = 5.0
        #: Optional hook wrapping the handling of each event (telemetry sets a tracing span).
        self.handler_context: HandlerContext | None = None
        #: The callback intake in webhook mode (after ``start()``), else None.
        self.webhook: WebhookIntake | None = None
        self._journal: IntakeJournal | None = None
        self._webhook_checkpointer: Checkpointer | None = None
        self._webhook_key: WebhookKey | None = None
        self._webhook_dispatcher: Dispatcher | None = None

    # --- handlers ------------------------------------------------------------------------
    def on(self, event_type: str = "*") -> Callable[[H], H]:
        """Decorator: ``@client.on("GROUP_AT_MESSAGE_CREATE")``; ``"*"`` receives everything."""

        def register(handler: H) -> H:
            self.add_handler(handler, event_type)
            return handler

        return register

    def add_handler(self, handler: Handler, event_type: str = "*") -> None:
        if not callable(handler):
            raise TypeError("handler must be callable")
        self._handlers.setdefault(event_type, []).append(handler)
        self._handler_cache.clear()

    def _handlers_for(self, event_type: str) -> list[Handler]:
        # Asked once per event: cached per type, dropped whenever a handler is added.
        found = self._handler_cache.get(event_type)
        if found is None:
            found = [*self._handlers.get(event_type, ()), *self._handlers.get("*", ())]
            if len(self._handler_cache) < _MAX_CACHED_TYPES:
                self._handler_cache[event_type] = found
        return found

    # --- access --------------------------------------------------------------------------
    @property
    def api(self) -> OpenAPIClient:
        if self._api is None:
            raise RuntimeError("the client is not started")
        return self._api

    @property
    def tokens(self) -> TokenManager:
        if self._tokens is None:
            raise RuntimeError("the client is not started")
        return self._tokens

    def shard_status(self) -> list[ShardStatus]:
        return [shard.supervisor.status() for shard in self._shards.values()]

    def handler_queue_depth(self, shard: int) -> int:
        if self._webhook_dispatcher is not None and shard == 0:
            return self._webhook_dispatcher.depth
        return self._shards[shard].dispatcher.depth

    def shard_roles(self) -> dict[int, tuple[str, str]]:
        """Cluster mode: per offered shard, ("owner" | "standby", detail); else empty."""
        return self._ownership.describe() if self._ownership is not None else {}

    @property
    def has_session_store(self) -> bool:
        """True if the shards keep their sessions in a store (see the module docstring)."""
        return self._store_factory is not None

    @property
    def supervisors(self) -> dict[int, ShardSupervisor]:
        return {sid: shard.supervisor for sid, shard in self._shards.items()}

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            raise RuntimeError("client already started")
        self._started = True
        cfg = self.config
        if cfg.mode == "webhook":
            # First: a missing ``cryptography`` fails here, before any connection is opened.
            self._webhook_key = WebhookKey(cfg.client_secret.get())
        # Owning the shards' state fails fast too, before any network traffic (in cluster mode
        # each term of ownership opens its shard's store instead).
        try:
            if self._ownership is None:
                await self._acquire_stores()
        except BaseException:
            self._release_stores()
            self._closed.set()
            raise
        timeout = aiohttp.ClientTimeout(total=cfg.request_timeout)
        self._http = aiohttp.ClientSession(timeout=timeout)
        # The gateway gets its own connector: sockets with keepalive and TCP_USER_TIMEOUT.
        connector = aiohttp.TCPConnector(socket_factory=make_socket_factory(cfg.transport))
        self._ws_http = aiohttp.ClientSession(connector=connector)
        self._tokens = TokenManager(
            cfg.app_id,
            cfg.client_secret.get(),
            token_url=cfg.token_url,
            http=self._http,
            bus=self.events,
            timeout=cfg.request_timeout,
        )
        self._api = OpenAPIClient(
            base_url=cfg.api_base,
            tokens=self._tokens,
            http=self._http,
            app_id=cfg.app_id,
            timeout=cfg.request_timeout,
        )
        try:
            await self._tokens.start()
        except BaseException:
            # A failed start releases what it opened: `async with` never reaches __aexit__.
            await self.close()
            raise
        if self._webhook_key is not None:
            try:
                await self._start_webhook(self._webhook_key)
            except BaseException:
                await self.close()
                raise
            return
        if self._ownership is not None:
            self._starter = asyncio.create_task(self._run_cluster(), name="qqbot shard owner")
            return
        for shard_id in cfg.shards:
            self._shards[shard_id] = self._make_shard(shard_id)
            self._restore(self._shards[shard_id])
        self._starter = asyncio.create_task(self._start_shards(), name="qqbot shard starter")

    async def _start_shards(self) -> None:
        concurrency = 1
        if len(self._shards) > 1 and self.config.gateway_url is None:
            limit = None
            with contextlib.suppress(Exception):
                limit = (await self.api.get_gateway_bot()).session_start_limit
            if limit is not None:
                concurrency = max(1, limit.max_concurrency)
                wait = session_start_wait(
                    remaining=limit.remaining,
                    shards=len(self._shards),
                    reset_after_ms=limit.reset_after_ms,
                )
                if wait is not None:
                    # Starting now would have some shards refused mid-start: wait for the
                    # platform's window to reset, then start them all.
                    _log.warning("%s", wait.message)
                    await self._sleep(wait.seconds)
        for index, shard in enumerate(self._shards.values()):
            if index and index % concurrency == 0:
                await self._sleep(_SESSION_START_WINDOW)
            shard.dispatcher.start()
            if shard.checkpointer is not None:
                shard.checkpointer.start()
            shard.supervisor.start()

    # --- cluster mode --------------------------------------------------------------------
    async def _run_cluster(self) -> None:
        ownership = self._ownership
        assert ownership is not None
        # Each shard is owned independently: none waits for another's lease.
        await asyncio.gather(*(ownership.hold(sid, self._run_term) for sid in self.config.shards))

    async def _run_term(self, term: OwnershipTerm) -> None:
        """Run one shard for one term of ownership: resume the stored session, connect, and
        stop when the term ends. See ``qqbot_gateway.cluster.shards``."""
        sid = term.shard_id
        assert self._store_factory is not None
        store = self._store_factory(sid)
        self._stores[sid] = store
        shard = self._make_shard(sid, may_send=term.valid)
        try:
            loaded: StoredSession | StoreError | None = await asyncio.to_thread(store.load)
        except StoreError as exc:
            loaded = exc
        self._restore(shard, loaded)
        self._shards[sid] = shard
        shard.dispatcher.start()
        if shard.checkpointer is not None:
            shard.checkpointer.start()
        shard.supervisor.start()
        task = shard.supervisor.task
        assert task is not None
        ended = asyncio.create_task(term.ended.wait(), name=f"qqbot term shard {sid}")
        try:
            await asyncio.wait({ended, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
        valid = term.valid()
        # A term that is no longer provably ours stops without another frame, and hands no
        # queued event to a handler: the next owner replays them from the stored watermark.
        await shard.supervisor.stop(end_session=False, abort=not valid)
        await shard.dispatcher.close(self._drain_timeout if valid else 0.0)
        if shard.checkpointer is not None:
            # The final checkpoint; refused by the fence if another process owns the shard now.
            # A lost term does not wait long for it (Redis may be the reason the term ended).
            with contextlib.suppress(Exception):
                async with asyncio.timeout(None if valid else _LOST_TERM_CHECKPOINT):
                    await shard.checkpointer.close(release=False)
        if task.done() and not self._closing and term.reason is None:
            return  # the shard stopped for good (fatal): its status stays for the health check
        self._shards.pop(sid, None)
        self._stores.pop(sid, None)

    # --- the session store ---------------------------------------------------------------
    async def _acquire_stores(self) -> None:
        if self._store_factory is None:
            return
        for shard_id in self.config.shards:
            store = self._store_factory(shard_id)
            waiting_logged = False
            while True:
                try:
                    await asyncio.to_thread(store.acquire)
                    break
                except StoreLockedError as exc:
                    if self.config.state_lock != "wait":
                        raise
                    if not waiting_logged:
                        _log.warning("shard %d: %s; waiting for it to exit", shard_id, exc)
                        waiting_logged = True
                await self._sleep(_LOCK_POLL)
            self._stores[shard_id] = store

    def _release_stores(self) -> None:
        for store in self._stores.values():
            with contextlib.suppress(Exception):
                store.close()
        self._stores.clear()

    def _restore(
        self, shard: _Shard, loaded: StoredSession | StoreError | object | None = _UNREAD
    ) -> None:
        """Adopt the session a previous process stored for this shard, if it is usable.
        ``loaded``: what the store returned, if the caller read it already (else False)."""
        store, ckpt = self._stores.get(shard.session.shard_id), shard.checkpointer
        if store is None or ckpt is None:
            return
        sid, cfg = shard.session.shard_id, self.config

        def unusable(why: str, outcome: str = "unusable") -> None:
            _log.warning(
                "shard %d: not resuming the stored session: %s; identifying afresh", sid, why
            )
            self.events.emit(
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
        shard.session.restore(state.session_id, state.seq, state.event_ids)
        ckpt.restore(state)
        shard.supervisor.expect_restored(state.session_id, state.seq, age)
        _log.info(
            "shard %d: resuming session %s at seq %d (saved %.1fs ago)",
            sid,
            state.session_id,
            state.seq,
            age,
        )

    async def _start_webhook(self, key: WebhookKey) -> None:
        cfg = self.config
        # The session object holds the event-id dedupe window; no connection ever opens on it.
        session = GatewaySession(
            shard_id=0, shard_count=1, intents=cfg.intents, stats=self.stats[0]
        )
        session.interest = self.events.interest(0)
        store = self._stores.get(0)
        journal: IntakeJournal | None = None
        checkpointer: Checkpointer | None = None
        if isinstance(store, FileSessionStore):
            checkpointer = Checkpointer(
                store,
                app_id=cfg.app_id,
                shard_id=0,
                shard_count=1,
                bus=self.events,
                interval=cfg.checkpoint_interval,
                dedupe_ids=_WEBHOOK_DEDUPE_IDS,
                position=lambda: journal.position() if journal is not None else (None, 0),
            )
        dispatcher = Dispatcher(
            session,
            bus=self.events,
            handlers=self._handlers_for,
            capacity=cfg.handler_queue_size,
            log_context=ShardContext(0),
            around_event=lambda: self.handler_context,
            progress=checkpointer.progress if checkpointer is not None else None,
        )
        self._webhook_dispatcher = dispatcher
        if checkpointer is not None and isinstance(store, FileSessionStore):
            ckpt = checkpointer
            journal = IntakeJournal(
                JournalFile(store.directory, cfg.app_id),
                bus=self.events,
                deliver=dispatcher.put,
                handled=lambda: ckpt.handled_count,
                forget=session.forget_id,
            )
            self._journal, self._webhook_checkpointer = journal, checkpointer
            await self._recover_journal(store, session, checkpointer, journal)
        dispatcher.start()
        if checkpointer is not None and journal is not None:
            checkpointer.start()
            journal.start()

        def queue_full() -> bool:
            waiting = journal.in_flight if journal is not None else 0
            return dispatcher.depth + waiting >= dispatcher.capacity

        self.webhook = WebhookIntake(
            key,
            session=session,
            bus=self.events,
            deliver=dispatcher.put,
            queue_full=queue_full,
            handlers_alive=lambda: dispatcher.running,
            config=cfg.webhook,
            clock=asyncio.get_running_loop().time,
            journal=journal,
        )

    async def _recover_journal(
        self,
        store: FileSessionStore,
        session: GatewaySession,
        checkpointer: Checkpointer,
        journal: IntakeJournal,
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
            self.events.emit(
                ev.RestartResume(shard=0, monotonic=loop.time(), outcome="unusable", detail=why)
            )
        recovery = await asyncio.to_thread(journal.file.recover)
        for warning in recovery.warnings:
            _log.warning("%s", warning)
        if recovery.unusable is not None:  # counted like an unusable state file
            self.events.emit(
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
        session.remember_ids(_event_ids(handled))
        if state is not None:
            session.remember_ids(state.event_ids)
            checkpointer.restore(state)
        replayed = skipped = 0
        now = loop.time()
        for record in todo:
            try:
                payload = record.payload()
            except ValueError:
                payload = None
            actions = session.accept_callback(payload, now) if isinstance(payload, dict) else []
            event = None
            for action in actions:
                if isinstance(action, Deliver):
                    event = action.event
                elif isinstance(action, Emit):
                    self.events.emit(action.event)
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
        self.events.emit(
            ev.JournalReplayed(shard=0, monotonic=now, replayed=replayed, skipped=skipped)
        )

    def _make_shard(self, shard_id: int, may_send: Callable[[], bool] | None = None) -> _Shard:
        cfg = self.config
        session = GatewaySession(
            shard_id=shard_id,
            shard_count=cfg.shard_count,
            intents=cfg.intents,
            liveness=cfg.liveness,
            stats=self.stats[shard_id],
        )
        assert self._ws_http is not None and self._tokens is not None
        checkpointer: Checkpointer | None = None
        store = self._stores.get(shard_id)
        if store is not None:
            checkpointer = ckpt = Checkpointer(
                store,
                app_id=cfg.app_id,
                shard_id=shard_id,
                shard_count=cfg.shard_count,
                bus=self.events,
                interval=cfg.checkpoint_interval,
                live=lambda: supervisor.state is ev.ConnectionState.READY,
                current_session=lambda: (session.session_id, session.seq),
                accepted_count=lambda: ckpt.handled_count + dispatcher.outstanding,
            )

        dispatcher = Dispatcher(
            session,
            bus=self.events,
            handlers=self._handlers_for,
            capacity=cfg.handler_queue_size,
            around_event=lambda: self.handler_context,
            progress=checkpointer.progress if checkpointer is not None else None,
        )
        deliver: Callable[[GatewayEvent], None] = dispatcher.put  # bound, no wrapper
        if may_send is not None:
            put = dispatcher.put

            def deliver(event: GatewayEvent) -> None:
                # Cluster mode: an event read after the lease ran out (a process woken from a
                # pause) goes to no handler; the next owner replays it from the watermark.
                if may_send():
                    put(event)

        supervisor = ShardSupervisor(
            session,
            tokens=self._tokens,
            gateway_url=self._gateway_url,
            ws_http=self._ws_http,
            bus=self.events,
            deliver=deliver,
            transport=cfg.transport,
            policy=cfg.reconnect,
            wait_for_drain=dispatcher.wait_for_drain,
            may_send=may_send,
        )
        dispatcher.log_context = supervisor.log_context
        return _Shard(session, supervisor, dispatcher, checkpointer)

    async def _gateway_url(self) -> str:
        if self.config.gateway_url is not None:
            return self.config.gateway_url
        # No inner retries: the supervisor's backoff paces attempts and reports each failure.
        info = await self.api.get_gateway_bot(retries=0)
        return info.url

    async def close(self, drain_timeout: float = 5.0, *, end_session: bool = False) -> None:
        """Stop every shard, let handlers drain, write the final checkpoints, release sockets.

        With a session store the WebSocket closes with 4000 and the session stays resumable
        for the next process; ``end_session=True`` (or no store) closes with 1000, which ends
        the session, and deletes the stored state.
        """
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self._drain_timeout = drain_timeout
        try:
            if self._starter is not None and self._ownership is not None:
                # Cluster mode: every owned shard closes with 4000, drains and writes its final
                # checkpoint inside its term, then its lease is released for a standby.
                self._ownership.stop()
                with contextlib.suppress(TimeoutError, Exception):
                    async with asyncio.timeout(drain_timeout + _TERM_CLOSE_MARGIN):
                        await asyncio.shield(self._starter)
            if self._starter is not None:
                self._starter.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._starter
            keep = not end_session and bool(self._stores)
            await asyncio.gather(
                *(s.supervisor.stop(end_session=not keep) for s in self._shards.values()),
                return_exceptions=True,
            )
            if self.webhook is not None:
                self.webhook.close()  # new callbacks get a 503: the platform retries them
            if self._journal is not None:
                await self._journal.flush()  # the callbacks being written get their answer
            dispatchers = [shard.dispatcher for shard in self._shards.values()]
            if self._webhook_dispatcher is not None:
                dispatchers.append(self._webhook_dispatcher)
            await asyncio.gather(
                *(dispatcher.close(drain_timeout) for dispatcher in dispatchers),
                return_exceptions=True,
            )
            await asyncio.gather(
                *(
                    s.checkpointer.close(end_session=end_session)
                    for s in self._shards.values()
                    if s.checkpointer is not None
                ),
                return_exceptions=True,
            )
            if self._webhook_checkpointer is not None and self._journal is not None:
                # No session to end: the final checkpoint, then the journal it covers is cut
                # back, both before the lock is released.
                with contextlib.suppress(Exception):
                    await self._webhook_checkpointer.close(release=False)
                with contextlib.suppress(Exception):
                    await self._journal.close()
            self._release_stores()
            if self._tokens is not None:
                await self._tokens.close()
            for http in (self._ws_http, self._http):
                if http is not None:
                    await http.close()
        finally:
            self._closed.set()

    async def wait_closed(self) -> None:
        """Wait until ``close()`` finished, or until every shard stopped for good (fatal)."""
        while not self._closed.is_set():
            if self._ownership is not None:
                # Cluster mode: shards come and go with their terms; the client runs until the
                # ownership loops end (close(), or a bug: they never end on their own).
                if self._starter is not None and self._starter.done():
                    return
            else:
                tasks = [s.supervisor.task for s in self._shards.values() if s.supervisor.task]
                if tasks and all(t.done() for t in tasks):
                    return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await self._closed.wait()

    async def run(self) -> None:
        """Start, run until every shard stopped or the task is cancelled, then close."""
        await self.start()
        try:
            await self.wait_closed()
        finally:
            await self.close()

    async def __aenter__(self) -> QQBotClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


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
