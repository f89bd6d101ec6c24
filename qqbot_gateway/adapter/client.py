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
from .connection import make_socket_factory, tcp_connector
from .dispatch import BatchSink, Handler
from .reconnect import session_start_wait
from .shard import Shard
from .store import (
    FileSessionStore,
    SessionStore,
    StoredSession,
    StoreError,
    StoreLockedError,
)
from .supervisor import ShardSupervisor
from .types import (
    ClientConfig,
    HandlerContext,
    Secret,
    ShardStatus,
)
from .webhook import WebhookIntake, WebhookKey
from .webhook_mode import SharedIntakeFactory, WebhookMode

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
#: Cluster mode: close() waits for the owned shards' terms this long beyond the drain time (the
#: supervisor's bounded stop, the final checkpoint, the lease's release).
_TERM_CLOSE_MARGIN = 8.0


class OwnershipTerm(Protocol):
    """One term of owning a shard in cluster mode (``qqbot_gateway.cluster.shards``)."""

    shard_id: int
    ended: asyncio.Event
    reason: str | None

    def valid(self) -> bool:
        """The shard's lease is provably this process's now (by its own clock)."""

    def end(self, reason: str, kind: str = "shutdown") -> None:
        """End the term (``kind`` "fatal": the shard stopped for good; stop offering it)."""


class Ownership(Protocol):
    """Cluster mode: who owns which shard (``qqbot_gateway.cluster.shards.ShardOwnership``).

    ``hold(shard, run_term)`` stands by for the shard and calls ``run_term`` for each term this
    process owns it, until ``stop()``. The client runs a :class:`~.shard.Shard` inside the term
    and stops it when ``term.ended`` is set (aborting without a frame if the term is no longer
    valid)."""

    def stop(self) -> None: ...

    def describe(self) -> dict[int, tuple[str, str]]:
        """Per offered shard: ("owner" | "standby", a short detail for health and status)."""

    async def hold(
        self, shard_id: int, run_term: Callable[[OwnershipTerm], Awaitable[None]]
    ) -> None: ...


class LeaseLost(Exception):
    """A cluster-mode shard's lease is no longer provably this process's (the Shard guard)."""


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
        webhook_intake: SharedIntakeFactory | None = None,
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
        #: Cluster mode, webhook transport: the intake and dedupe window shared in Redis.
        self._webhook_intake = webhook_intake if config.mode == "webhook" else None
        if self._webhook_intake is not None:
            state_dir = None  # no file journal: the shared intake replaces it
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
        self._shards: dict[int, Shard] = {}
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
        #: Handlers' drain time when a shard's term ends, and whether a shutdown ends the
        #: sessions (close() sets the caller's).
        self._drain_timeout = 5.0
        self._end_session = False
        #: Cluster mode: the ids a shard's last term here handled, for its next term's window.
        self._handled_ids: dict[int, list[str]] = {}
        #: Cluster mode: per shard, the fencing token of its last term here and the session it
        #: held at the end (its watermark: only ever what was handled), for the next term.
        self._last_terms: dict[int, tuple[int | None, StoredSession | None]] = {}
        #: Optional hook wrapping the handling of each event (telemetry sets a tracing span).
        self.handler_context: HandlerContext | None = None
        #: Set before ``start()``: accepted events go to this sink in batches instead of the
        #: handlers (``QQBOT_DELIVERY=stream``; see ``dispatch.py``).
        self.event_sink: BatchSink | None = None
        #: The callback intake in webhook mode (after ``start()``), else None.
        self.webhook: WebhookIntake | None = None
        self._webhook_key: WebhookKey | None = None
        self._webhook_mode: WebhookMode | None = None

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
        if self._webhook_mode is not None and shard == 0:
            return self._webhook_mode.dispatcher.depth
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
        self._http = aiohttp.ClientSession(timeout=timeout, connector=tcp_connector())
        # The gateway gets its own connector: sockets with keepalive and TCP_USER_TIMEOUT.
        connector = tcp_connector(socket_factory=make_socket_factory(cfg.transport))
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
            mode = self._webhook_mode = WebhookMode(
                cfg,
                key=self._webhook_key,
                bus=self.events,
                stats=self.stats[0],
                handlers=self._handlers_for,
                around_event=self._around_event,
                store=self._stores.get(0),
                sink=self.event_sink,
                shared=self._webhook_intake,
            )
            try:
                await mode.start()
            except BaseException:
                await self.close()
                raise
            self.webhook = mode.intake
            return
        if self._ownership is not None:
            self._starter = asyncio.create_task(self._run_cluster(), name="qqbot shard owner")
            return
        for shard_id in cfg.shards:
            shard = self._shards[shard_id] = self._make_shard(shard_id)
            shard.restore()
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
            await shard.start()

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
        store = self._stores[sid] = self._store_factory(sid)

        async def guard() -> None:
            # Before every connection attempt: never identify or resume without the lease. The
            # renewer ends the term when validity runs out; wait for that, so the term's own
            # stop (no frame, no drain) is what stops the shard, not a control-path failure.
            if not term.valid():
                await term.ended.wait()
                raise LeaseLost(f"shard {sid}: the lease is no longer this process's")

        shard = self._make_shard(sid, guard=guard, may_send=term.valid)
        # The store is Redis: read it off the loop thread, then adopt the newer of what it held
        # and what this process still holds from its own last term of this shard.
        loaded, writer = await asyncio.to_thread(_load_fenced_quietly, store)
        last_token, mine = self._last_terms.pop(sid, (None, None))
        chosen = _newer_session(sid, loaded, writer, mine, last_token, getattr(term, "token", None))
        shard.restore(chosen)
        # This process owned the shard before (Redis was gone, the lease ran out): what it
        # handled then but could not checkpoint is dropped from the replay, not handled twice.
        handled_here = self._handled_ids.pop(sid, None)
        if handled_here:
            shard.session.remember_ids(handled_here)
        self._shards[sid] = shard
        await shard.start()
        task = shard.supervisor.task
        assert task is not None
        ended = asyncio.create_task(term.ended.wait(), name=f"qqbot term shard {sid}")
        try:
            await asyncio.wait({ended, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
        if task.done() and not term.ended.is_set():
            if term.valid():
                # The supervisor ended by itself: a fatal close (credentials, a delisted bot).
                term.end(f"shard {sid} stopped for good", "fatal")
            else:
                term.end("the lease's validity ran out", "expired")
        valid = term.valid()
        # A term that is no longer provably ours stops without another frame and hands no
        # queued event to a handler: the next owner replays them from the stored watermark.
        await shard.stop(
            term.reason or "shard stopped",
            drain_timeout=self._drain_timeout if valid else 0.0,
            # close(end_session=True): 1000 and the stored state deleted (fenced), as without
            # Redis; only by a valid owner at shutdown.
            end_session=self._end_session and valid and self._closing,
            lost=not valid,
        )
        self._stores.pop(sid, None)
        progress = shard.dispatcher.progress
        if progress is not None:
            self._handled_ids[sid] = list(progress.ids)
        self._last_terms[sid] = (getattr(term, "token", None), _held_session(shard))
        if getattr(term, "kind", None) != "fatal":
            self._shards.pop(sid, None)  # a fatal shard stays: its state is the health verdict

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

    def _make_shard(
        self,
        shard_id: int,
        *,
        guard: Callable[[], Awaitable[None]] | None = None,
        may_send: Callable[[], bool] | None = None,
    ) -> Shard:
        assert self._ws_http is not None and self._tokens is not None
        return Shard(
            shard_id,
            config=self.config,
            bus=self.events,
            stats=self.stats[shard_id],
            tokens=self._tokens,
            gateway_url=self._gateway_url,
            ws_http=self._ws_http,
            handlers=self._handlers_for,
            around_event=self._around_event,
            store=self._stores.get(shard_id),
            sink=self.event_sink,
            guard=guard,
            may_send=may_send,
        )

    def _around_event(self) -> HandlerContext | None:
        return self.handler_context

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
        self._end_session = end_session
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
            await asyncio.gather(
                *(
                    s.stop(drain_timeout=drain_timeout, end_session=end_session)
                    for s in self._shards.values()
                ),
                return_exceptions=True,
            )
            if self._webhook_mode is not None:
                # No session to end: the final checkpoint, then the journal it covers is cut
                # back, both before the lock is released.
                await self._webhook_mode.close(drain_timeout)
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


def _load_fenced_quietly(
    store: SessionStore,
) -> tuple[StoredSession | StoreError | None, int | None]:
    """The stored state and the fencing token of the term that wrote it, when the store records
    it (the Redis store's ``load_fenced``); else the token is unknown (None)."""
    load_fenced: Callable[[], tuple[StoredSession | None, int | None]] | None = getattr(
        store, "load_fenced", None
    )
    try:
        if load_fenced is None:
            return store.load(), None
        return load_fenced()
    except StoreError as exc:
        return exc, None


def _held_session(shard: Shard) -> StoredSession | None:
    """What ``shard`` holds in memory at the end of its term: its session and handled
    watermark (as a checkpoint would write it), or the session at seq 0 when nothing with a
    sequence number was handled yet (resuming from 0 replays everything: nothing is skipped)."""
    ckpt = shard.checkpointer
    if ckpt is None:
        return None
    state = ckpt.snapshot()
    if state is not None:
        return state
    session_id = shard.session.session_id
    return None if session_id is None else ckpt.snapshot((session_id, 0))


def _newer_session(
    shard_id: int,
    stored: StoredSession | StoreError | None,
    writer: int | None,
    mine: StoredSession | None,
    last_token: int | None,
    token: int | None,
) -> StoredSession | StoreError | None:
    """Cluster mode, a new term of a shard this process ran before: resume from the newer of
    the store (``stored``, written under fencing token ``writer``) and the session this
    process held at the end of its last term (``mine``, under ``last_token``); ``token`` is the
    new term's. Its own state wins when nobody else can have written a later one: the store is
    empty, or was written by our last term or an older one (its watermark only ever reaches
    what was handled, so ours is at least as far). A state written by another process's later
    term wins. When that cannot be told (the store unreadable, the writer unknown, the fence
    counter restarted: Redis lost its data), ours wins only if no other term can have been in
    between (the new token follows ours directly)."""
    if mine is None or last_token is None or token is None:
        return stored
    restarted = token <= last_token
    nobody_between = token == last_token + 1
    if isinstance(stored, StoreError):
        keep_mine = nobody_between
    elif stored is None:
        keep_mine = True
    elif writer is None or restarted:
        keep_mine = nobody_between
    else:
        keep_mine = writer <= last_token
    if not keep_mine:
        return stored
    if isinstance(stored, StoredSession) and stored.session_id == mine.session_id:
        if stored.seq > mine.seq:  # cannot happen (ours is what was handled): be safe anyway
            return stored
    _log.warning(
        "shard %d: resuming this process's own session from its last term (fencing token %d): "
        "the store holds %s",
        shard_id,
        last_token,
        "nothing"
        if stored is None
        else "a state that cannot be read"
        if isinstance(stored, StoreError)
        else "no later owner's state",
    )
    return mine
