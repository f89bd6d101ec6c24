"""One supervisor per shard keeps a session alive, or says loudly why not.

The loop::

    token -> gateway URL -> connection.run() -> outcome -> planner -> (stop | wait) -> again

The decision after each connection is :class:`~.reconnect.ReconnectPlanner`'s (pure, tested
with explicit times); this shell executes its plan: log, emit, drain, refresh, sleep (the
injected ``sleep``, woken early by ``stop()``), reconnect. The rules, from the operator's side:

* Backoff is exponential with full jitter and a cap (delay = uniform(0, min(cap, base * 2**n)));
  a connection that stayed READY for ``healthy_after`` resets it.
* After a forced close the session is resumed (the close code we send is 4000, never 1000, so
  it stays resumable); the session decides when to identify instead (op 9 false, 4006/4007,
  49xx, too many failed resumes).
* 4008 waits ``rate_limit_wait`` then resumes; 4004 refreshes the token; 4001/4002 identify but
  never quickly; fatal codes (4010-4014, 4914, 4915, 4924, intents refused again and again)
  stop this shard with an ERROR log, a :class:`~.events.ShardFatal` event and the FATAL state.
* A quick disconnect loop (connections that never get READY, or die within
  ``quick_lifetime``) is detected and slowed to at least half the cap.
* There is no retry cap: a transient failure is retried forever, visibly (state BACKOFF, events,
  WARNING logs), never ending in a silently dead bot.

**The control path.** READY, RESUMED, a zombie verdict and a dropped duplicate reach the
supervisor by a direct call from the connection (:data:`~.connection.CONTROL_KINDS`), not
through the observers' bus; what the shard's other parts need of them goes on to ``control``.
An exception on that path is a bug that would otherwise stop checkpoints or state silently, so
it stops the shard instead: :meth:`ShardSupervisor.fail` closes the connection (resumable), and
the supervisor ends as *crashed*, with the reason in an ERROR line, a
:class:`~.events.SupervisorStopped` and the health report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Protocol

import aiohttp

from . import events as ev
from . import protocol as p
from .auth import TokenSource
from .backoff import Rng, Sleep, backoff_delays
from .connection import ConnectError, Control, GatewayConnection
from .context import ShardContext, current_shard
from .errors import InvalidCredentialsError
from .protocol import GatewayEvent
from .reconnect import (
    PlanKind,
    PlannerState,
    ReconnectPlanner,
    ReconnectPolicy,
    attempt_failed,
)
from .session import GatewaySession, Outcome
from .types import ShardStatus, TransportConfig
from .waiting import sleep_or_wake

__all__ = [
    "GatewayUrlSource",
    "ReconnectPolicy",
    "ShardStatus",
    "ShardSupervisor",
    "TokenSource",
    "backoff_delays",
]

_log = logging.getLogger("qqbot_gateway.supervisor")


class GatewayUrlSource(Protocol):
    async def __call__(self) -> str: ...


class ShardSupervisor:
    """Keeps one shard connected. ``start()``, then ``stop()``; ``status()`` at any time."""

    def __init__(
        self,
        session: GatewaySession,
        *,
        tokens: TokenSource,
        gateway_url: GatewayUrlSource,
        ws_http: aiohttp.ClientSession,
        bus: ev.EventBus,
        deliver: Callable[[GatewayEvent], None],
        transport: TransportConfig | None = None,
        policy: ReconnectPolicy | None = None,
        wait_for_drain: Callable[[], Awaitable[None]] | None = None,
        control: Control | None = None,
        guard: Callable[[], Awaitable[None]] | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: Rng = random.uniform,
        clock: Callable[[], float] | None = None,
        may_send: Callable[[], bool] | None = None,
    ) -> None:
        self.session = session
        self._may_send = may_send
        self.shard = session.shard_id
        self._tokens = tokens
        self._last_token: str | None = None
        self._gateway_url = gateway_url
        self._http = ws_http
        self._bus = bus
        self._deliver = deliver
        self._transport = transport or TransportConfig()
        self.policy = policy or ReconnectPolicy()
        self._wait_for_drain = wait_for_drain
        self._sleep = sleep
        self._loop = asyncio.get_running_loop()
        self._clock = clock or self._loop.time
        self._planner = ReconnectPlanner(self.policy, shard=self.shard, rng=rng)
        self._state = ev.ConnectionState.IDLE
        self._state_since = self._clock()
        self._task: asyncio.Task[None] | None = None
        self._conn: GatewayConnection | None = None
        self._stopping = False
        self._wake = asyncio.Event()
        self._attempts = 0
        self._next_attempt_at: float | None = None
        self._last_ready_at: float | None = None
        self._fatal_message: str | None = None
        self._last_reason: str | None = None
        self._url: str | None = None
        self._restored: tuple[str, int, float] | None = None
        #: The rest of the shard's control path (see the module docstring).
        self._control = control
        #: Awaited before each connection attempt; raising stops the shard (see ``Shard``).
        self._guard = guard
        #: Told of a control-path failure instead of ``fail`` (the shard's owner stops it all).
        self._on_failure = on_failure or self.fail
        #: Why the control path stopped the shard (``fail``), raised at the end of the loop.
        self._failure: BaseException | None = None
        #: Shared with every task of this shard for log lines (see ``context``).
        self.log_context = ShardContext(self.shard)
        session.interest = bus.interest(self.shard)

    # --- public --------------------------------------------------------------------------
    @property
    def state(self) -> ev.ConnectionState:
        return self._state

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def status(self) -> ShardStatus:
        task = self._task
        return ShardStatus(
            shard=self.shard,
            state=self._state,
            state_since=self._state_since,
            task_alive=task is not None and not task.done(),
            attempts=self._attempts,
            next_attempt_at=self._next_attempt_at,
            last_ready_at=self._last_ready_at,
            ready=self._state is ev.ConnectionState.READY,
            fatal_message=self._fatal_message,
            last_reason=self._last_reason,
        )

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("supervisor already started")
        self._task = asyncio.create_task(self._run(), name=f"qqbot supervisor shard {self.shard}")

    def expect_restored(self, session_id: str, seq: int, age: float) -> None:
        """The session was restored from the store: report whether the platform took it back
        (a :class:`~.events.RestartResume` and a log line once READY or RESUMED arrives)."""
        self._restored = (session_id, seq, age)

    async def stop(
        self, timeout: float = 5.0, *, end_session: bool = True, abort: bool = False
    ) -> None:
        """Close the connection and stop. Bounded.

        ``end_session``: close with 1000, which ends the session on the platform. Otherwise
        close with our resumable code (4000) so that the next process can resume it.
        ``abort``: drop the socket without a close frame (a shard whose lease ran out must not
        send another frame; the session stays resumable).
        """
        self._stopping = True
        self._wake.set()
        conn = self._conn
        if conn is not None:
            if abort:
                conn.request_close("shutdown", "shard lease lost", abort=True)
            elif end_session:
                conn.request_close("shutdown", "client shutting down", code=1000)
            else:
                conn.request_close("shutdown", "client restarting; session kept for resume")
        task = self._task
        if task is not None and task.done() and not task.cancelled():
            task.exception()  # a crash _run reported already: retrieved, not logged twice
        elif task is not None and not task.done():
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            except Exception:  # noqa: BLE001, S110 - the crash was already reported by _run
                pass

    def fail(self, exc: BaseException) -> None:
        """Stop this shard because the control path failed with ``exc`` (a bug, never a
        network condition): the connection closes resumably, the loop ends as *crashed* with
        the reason. Safe to call from inside the connection's tasks."""
        if self._failure is None:
            self._failure = exc
        self._stopping = True
        self._wake.set()
        conn = self._conn
        if conn is not None:
            conn.request_close("shutdown", f"control path failed: {_safe(exc)}")

    # --- the loop ------------------------------------------------------------------------
    async def _run(self) -> None:
        current_shard.set(self.log_context)
        try:
            await self._loop_forever()
            if self._failure is not None:
                raise self._failure
            if self._state is not ev.ConnectionState.FATAL:
                self._emit_stopped("shutdown")
        except asyncio.CancelledError:
            self._set_state(ev.ConnectionState.STOPPED)
            self._emit_stopped("shutdown")
            raise
        except Exception as exc:
            # A bug in our own loop or control path: say so loudly; the health report turns red.
            _log.error("shard %d stopped: %s", self.shard, _safe(exc), exc_info=exc)
            self._fatal_message = f"crashed: {_safe(exc)}"  # the status says why
            self._emit_stopped("crashed", f"{type(exc).__name__}: {exc}")
            raise

    async def _loop_forever(self) -> None:
        """Connect, and after each connection execute the planner's verdict."""
        state = PlannerState()
        while not self._stopping:
            self._attempts += 1
            self._next_attempt_at = None
            self._set_state(ev.ConnectionState.CONNECTING)
            self._emit(
                ev.ConnectAttempt(
                    shard=self.shard,
                    monotonic=self._now(),
                    attempt=self._attempts,
                    resume=self.session.can_resume,
                )
            )
            outcome, opened_at = await self._attempt()
            if self._stopping:
                break
            if outcome is None:
                return  # credentials refused: _fatal() reported it, the shard stops here
            now = self._now()
            lifetime = None if opened_at is None else now - opened_at
            self._last_reason = outcome.reason
            plan = self._planner.plan(outcome, lifetime=lifetime, state=state, now=now)
            state = plan.state
            for event in plan.events:
                self._emit(event)
            if plan.kind is PlanKind.STOP:
                self._fatal(outcome.reason, outcome.close_code, plan.fatal_message or "")
                return
            for line in plan.logs:
                _log.log(line.level, "%s", line.message, extra=dict(line.extra))
            if plan.drain_first and self._wait_for_drain is not None:
                self._set_state(ev.ConnectionState.BACKOFF)
                await self._wait_for_drain()
            if plan.refresh_token:
                try:
                    await self._tokens.force_refresh("gateway close 4004", self._last_token)
                except InvalidCredentialsError as exc:
                    self._fatal(p.TOKEN_ERROR, None, f"access token refused: {exc}")
                    return
                except Exception:  # noqa: BLE001, S110 - the next attempt's get() retries it
                    pass
            await self._backoff(outcome.reason, plan.delay, plan.mode)

    async def _attempt(self) -> tuple[Outcome | None, float | None]:
        """One connection attempt. Failures before the WebSocket opens become outcomes too."""
        if self._guard is not None:
            try:
                await self._guard()
            except Exception as exc:  # noqa: BLE001 - not ours to retry: the shard stops
                self._on_failure(exc)
                return None, None
        try:
            token = await self._tokens.get()
            self._last_token = token
        except InvalidCredentialsError as exc:
            self._fatal(p.TOKEN_ERROR, None, f"access token refused: {exc}")
            return None, None
        except Exception as exc:  # noqa: BLE001 - any failure to get a token is retried
            return self._failed(p.TOKEN_ERROR, f"access token: {_safe(exc)}"), None
        try:
            url = self._url or await self._gateway_url()
        except Exception as exc:  # noqa: BLE001 - retried with backoff
            return self._failed(p.GATEWAY_URL_ERROR, f"gateway URL: {_safe(exc)}"), None
        self._url = url
        conn = GatewayConnection(
            self.session,
            ws_http=self._http,
            url=url,
            token=token,
            transport=self._transport,
            bus=self._bus,
            deliver=self._deliver,
            control=self._on_control,
            may_send=self._may_send,
        )
        self._conn = conn
        self.log_context.connection_id = conn.connection_id
        try:
            if self._stopping:
                return None, None
            self._set_state(ev.ConnectionState.HANDSHAKING)
            outcome = await conn.run()
        except ConnectError as exc:
            self._url = None  # the URL may have moved: ask /gateway/bot again next time
            return self._failed(p.CONNECT_ERROR, exc.detail), None
        finally:
            self._conn = None
        return outcome, conn.opened_at

    def _failed(self, reason: str, detail: str) -> Outcome:
        return attempt_failed(reason, detail, resumable=self.session.can_resume)

    async def _backoff(self, reason: str, delay: float, mode: str) -> None:
        now = self._now()
        self._next_attempt_at = now + delay
        self._set_state(ev.ConnectionState.BACKOFF)
        self._emit(
            ev.ReconnectScheduled(
                shard=self.shard,
                monotonic=now,
                reason=reason,
                delay=delay,
                attempt=self._attempts + 1,
                mode=mode,
            )
        )
        if delay > 0 and not self._stopping:
            self._wake.clear()
            await sleep_or_wake(
                self._sleep, self._wake, delay, name=f"qqbot backoff shard {self.shard}"
            )

    def _fatal(self, reason: str, code: int | None, message: str) -> None:
        self._fatal_message = message
        self._last_reason = reason
        _log.error("shard %d stopped for good: %s", self.shard, message)
        self._set_state(ev.ConnectionState.FATAL)
        self._emit(
            ev.ShardFatal(
                shard=self.shard,
                monotonic=self._now(),
                reason=reason,
                close_code=code,
                message=message,
            )
        )
        self._emit_stopped("fatal", message)

    # --- the control path and state -------------------------------------------------------
    def _on_control(self, event: ev.LifecycleEvent) -> None:
        """The connection's direct call (see the module docstring): never raises."""
        try:
            self._on_session_event(event)
            if self._control is not None:
                self._control(event)
        except Exception as exc:  # noqa: BLE001 - not swallowed: the shard stops with it
            self._on_failure(exc)

    def _on_session_event(self, event: ev.LifecycleEvent) -> None:
        if isinstance(event, ev.SessionReady | ev.SessionResumed):
            self._report_restored(event)
            self._last_ready_at = event.monotonic
            self.log_context.session_id = event.session_id
            self._set_state(ev.ConnectionState.READY)
            if isinstance(event, ev.SessionResumed):
                _log.info(
                    "shard %d resumed session after %.2fs (%d events replayed)",
                    self.shard,
                    event.monotonic - event.resume_started,
                    event.replayed,
                )
            else:
                _log.info("shard %d ready (new session)", self.shard)
        elif isinstance(event, ev.ZombieDetected):
            _log.warning(
                "shard %d: zombie connection detected (%s): %d heartbeats unacked, "
                "no frame for %.2fs, interval %.2fs; aborting it",
                self.shard,
                event.reason,
                event.unacked,
                event.idle_for,
                event.heartbeat_interval,
            )

    def _report_restored(self, event: ev.SessionReady | ev.SessionResumed) -> None:
        restored, self._restored = self._restored, None
        if restored is None:
            return
        session_id, seq, age = restored
        if isinstance(event, ev.SessionResumed):
            outcome = "resumed"
            detail = f"session {session_id} resumed from seq {seq}"
            _log.info(
                "shard %d: resumed the session a previous process left (seq %d, saved %.1fs "
                "before this start); %d events replayed",
                self.shard,
                seq,
                age,
                event.replayed,
            )
        else:
            outcome = "refused"
            detail = f"session {session_id} could not be resumed; new session {event.session_id}"
            _log.warning(
                "shard %d: the stored session %s (seq %d, saved %.1fs before this start) could "
                "not be resumed; identified as a new session: events sent after seq %d while no "
                "process was connected may be missed (the gap is unknown)",
                self.shard,
                session_id,
                seq,
                age,
                seq,
            )
        self._emit(
            ev.RestartResume(
                shard=self.shard, monotonic=event.monotonic, outcome=outcome, detail=detail
            )
        )

    def _set_state(self, new: ev.ConnectionState) -> None:
        old = self._state
        if old is new:
            return
        if old in (ev.ConnectionState.FATAL, ev.ConnectionState.STOPPED):
            return  # terminal
        self._state = new
        self._state_since = self._now()
        self._emit(ev.StateChanged(shard=self.shard, monotonic=self._state_since, old=old, new=new))

    def _emit_stopped(self, reason: str, error: str | None = None) -> None:
        if self._state is not ev.ConnectionState.FATAL:
            self._set_state(ev.ConnectionState.STOPPED)
        self._emit(
            ev.SupervisorStopped(
                shard=self.shard, monotonic=self._now(), reason=reason, error=error
            )
        )

    def _emit(self, event: ev.LifecycleEvent) -> None:
        self._bus.emit(event)

    def _now(self) -> float:
        return self._clock()


def _safe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]
