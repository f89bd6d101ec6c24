"""The reconnect decision as a pure function: what ended a connection in, what to do out.

Like the session, the planner owns no clock, no task and no socket: the supervisor passes the
:class:`~.session.Outcome`, how long the connection lived, the planner's last
:class:`PlannerState` and ``now``, and executes the :class:`Plan` it gets back (log the lines,
emit the events, wait for the handlers to drain, refresh the token, sleep ``delay``, connect in
``mode``, or stop the shard). Randomness comes in as an ``rng``, so a test pins every delay::

    planner = ReconnectPlanner(ReconnectPolicy(), rng=lambda low, high: high)
    plan = planner.plan(outcome, lifetime=3.0, state=PlannerState(), now=100.0)

The rules (the supervisor's module docstring tells them from the operator's side):

* Backoff is :class:`~.backoff.Backoff` with full jitter and a cap; a connection that stayed
  READY for ``healthy_after`` resets it (and the quick-loop count).
* A connection that never got READY, or died within ``quick_lifetime``, is a quick failure;
  ``quick_loop_threshold`` of them in a row are a disconnect loop: delays are floored at half
  the cap, announced once (WARNING + :class:`~.events.ReconnectLoopDetected`).
* 4008 waits at least ``rate_limit_wait``; a rejected payload (4001/4002, SLOW_IDENTIFY) waits
  the cap and is logged as our bug; 4004 asks for a token refresh first.
* A backpressure close of our own is no failure: no backoff growth, no quick-loop count; the
  handlers drain first, then a short pause.
* FATAL stops the shard.
* Routine reasons (op 7, 4009 expiry, 1000/1001, a resumable op 9) log at INFO, the rest at
  WARNING, so that operators are not trained to ignore reconnect warnings.
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from . import events as ev
from . import protocol as p
from .actions import Outcome
from .backoff import Rng
from .protocol import CloseAction
from .types import ReconnectPolicy

__all__ = [
    "LogLine",
    "Plan",
    "PlanKind",
    "PlannerState",
    "ReconnectPlanner",
    "ReconnectPolicy",
    "StartLimitWait",
    "attempt_failed",
    "session_start_wait",
]

#: Reasons that are routine on QQ (op 7 about every 30 min, 4009 session expiry): INFO, not
#: WARNING, so that operators are not trained to ignore reconnect warnings.
ROUTINE_REASONS: Final = frozenset(
    {p.RECONNECT_REQUESTED, "server_close:4009", "server_close:1000", "server_close:1001"}
)

#: Pause before resuming after a backpressure close (once the handlers drained): long enough
#: not to spin if the drain signal flaps, short enough to be invisible next to a resume.
BACKPRESSURE_PAUSE: Final = 0.05


@dataclass(frozen=True, slots=True)
class PlannerState:
    """What the planner remembers between connections of one shard."""

    #: Failures since the last healthy connection: the backoff attempt number.
    failures: int = 0
    #: Quick failures in a row.
    quick_failures: int = 0


class PlanKind(enum.Enum):
    #: Sleep ``delay``, then connect again in ``mode``.
    RECONNECT = "reconnect"
    #: The shard stops for good (``fatal_message`` says why).
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class LogLine:
    """One log record for the supervisor to write (already formatted: the planner decides the
    words and the level, the shell only writes them)."""

    level: int
    message: str
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Plan:
    kind: PlanKind
    #: Seconds to wait before the next attempt (0 for STOP).
    delay: float
    #: How the next connection starts.
    mode: Literal["resume", "identify"]
    #: Lifecycle events to emit now, in order.
    events: tuple[ev.LifecycleEvent, ...]
    #: Log lines to write now, in order.
    logs: tuple[LogLine, ...]
    #: The state to pass to the next :meth:`ReconnectPlanner.plan`.
    state: PlannerState
    #: Force a token refresh before waiting (close 4004).
    refresh_token: bool = False
    #: Wait for the handlers to drain before the delay (a backpressure close).
    drain_first: bool = False
    fatal_message: str | None = None


class ReconnectPlanner:
    """``plan(outcome, lifetime, state, now) -> Plan``. Pure: same inputs, same plan."""

    def __init__(
        self, policy: ReconnectPolicy, *, shard: int = 0, rng: Rng = random.uniform
    ) -> None:
        self.policy = policy
        self.shard = shard
        self._rng = rng
        self._backoff = policy.backoff

    def plan(
        self, outcome: Outcome, *, lifetime: float | None, state: PlannerState, now: float
    ) -> Plan:
        """``lifetime``: seconds the WebSocket was open, None if it never opened."""
        policy, shard = self.policy, self.shard
        mode: Literal["resume", "identify"] = "resume" if outcome.resumable else "identify"
        disconnected = ev.Disconnected(
            shard=shard,
            monotonic=now,
            reason=outcome.reason,
            close_code=outcome.close_code,
            detail=outcome.detail,
            resumable=outcome.resumable,
            connection_age=lifetime,
        )
        if outcome.action is CloseAction.FATAL:
            return Plan(
                kind=PlanKind.STOP,
                delay=0.0,
                mode=mode,
                events=(disconnected,),
                logs=(),
                state=state,
                fatal_message=outcome.fatal_message or "",
            )
        if outcome.reason == p.HANDLER_BACKPRESSURE:
            # Our own choice, not a failure: no backoff growth, no quick-loop count. Waiting
            # for the handlers to drain is the throttle; resuming replays what we refused.
            line = self._disconnect_line(outcome, lifetime, mode, BACKPRESSURE_PAUSE)
            return Plan(
                kind=PlanKind.RECONNECT,
                delay=BACKPRESSURE_PAUSE,
                mode=mode,
                events=(disconnected,),
                logs=(line,),
                state=state,
                drain_first=True,
            )
        lived = lifetime or 0.0
        failures, quick = state.failures, state.quick_failures
        if outcome.was_ready and lived >= policy.healthy_after:
            failures, quick = 0, 0
        elif not outcome.was_ready or lived < policy.quick_lifetime:
            quick += 1
        else:
            quick = 0
        delay = self._backoff.delay(failures, self._rng)
        events: list[ev.LifecycleEvent] = [disconnected]
        logs: list[LogLine] = []
        if quick >= policy.quick_loop_threshold:
            floor = policy.backoff_cap / 2
            if quick == policy.quick_loop_threshold:
                logs.append(
                    LogLine(
                        logging.WARNING,
                        f"shard {shard}: {quick} quick disconnects in a row; slowing reconnects "
                        f"to >= {floor:.1f}s",
                    )
                )
                events.append(
                    ev.ReconnectLoopDetected(
                        shard=shard, monotonic=now, quick_failures=quick, min_delay=floor
                    )
                )
            delay = max(delay, floor)
        if outcome.action is CloseAction.WAIT_THEN_RESUME:
            delay = max(delay, policy.rate_limit_wait)
        elif outcome.action is CloseAction.SLOW_IDENTIFY:
            delay = max(delay, policy.backoff_cap)
            logs.append(
                LogLine(
                    logging.ERROR,
                    f"shard {shard}: gateway rejected our payload ({outcome.detail}); this is a "
                    "bug in the adapter",
                )
            )
        line = self._disconnect_line(outcome, lifetime, mode, delay)
        logs.append(line)
        return Plan(
            kind=PlanKind.RECONNECT,
            delay=delay,
            mode=mode,
            events=tuple(events),
            logs=tuple(logs),
            state=PlannerState(failures=failures + 1, quick_failures=quick),
            refresh_token=outcome.action is CloseAction.REFRESH_TOKEN,
        )

    def _disconnect_line(
        self, outcome: Outcome, lifetime: float | None, mode: str, delay: float
    ) -> LogLine:
        routine = outcome.reason in ROUTINE_REASONS or (
            outcome.reason == p.INVALID_SESSION and outcome.resumable
        )
        age = "never opened" if lifetime is None else f"{lifetime:.1f}s"
        return LogLine(
            logging.INFO if routine else logging.WARNING,
            f"shard {self.shard} disconnected ({outcome.reason}: {outcome.detail}) after {age}; "
            f"{mode} in {delay:.2f}s",
            {"reason": outcome.reason, "close_code": outcome.close_code, "shard": self.shard},
        )


def attempt_failed(reason: str, detail: str, *, resumable: bool) -> Outcome:
    """The outcome of an attempt that failed before a WebSocket opened (token, gateway URL,
    connect): nothing was said about the session, so the next attempt resumes if it can; never
    READY, so it counts as a quick failure."""
    return Outcome(
        reason=reason,
        close_code=None,
        detail=detail,
        action=CloseAction.RESUME if resumable else CloseAction.IDENTIFY,
        resumable=resumable,
        was_ready=False,
    )


@dataclass(frozen=True, slots=True)
class StartLimitWait:
    """Too few session starts remain for the shards: wait ``seconds`` (until the platform's
    ``reset_after``) before starting any, and say so in ``message``."""

    seconds: float
    message: str


def session_start_wait(
    *, remaining: int, shards: int, reset_after_ms: int
) -> StartLimitWait | None:
    """The session-start budget check before shards start.

    ``GET /gateway/bot`` says how many Identify calls remain in the current window
    (``remaining``) and when the window resets (``reset_after``, in ms). With fewer left than
    shards to start, some shards would be refused mid-start (the official SDKs refuse to start
    at all). Waiting for the reset and then starting every shard is better: one clear line now,
    a full bot later, instead of a half-started one.
    """
    if remaining >= shards:
        return None
    seconds = max(0.0, reset_after_ms / 1000.0)
    return StartLimitWait(
        seconds=seconds,
        message=(
            f"only {remaining} session starts remain for {shards} shard(s); waiting "
            f"{seconds:.1f}s for the platform's limit to reset (reset_after) before starting "
            "any shard"
        ),
    )
