"""The fault matrix: one row per fault, against the simulator over real sockets.

A table (``FAULTS``) of :class:`Fault` rows and one scaffold (``test_fault``) that runs each:
launch the simulator and the client (the row's options), warm up (by default events flowing and
a burst in flight), then the row's ``act`` injects its fault into the running session (or before
the first one) and asserts how it was detected and how the client recovered; the scaffold then
balances the books by event id and by (session id, seq): every dispatch the simulator emitted
(and did not itself discard with a session it invalidated) reached the handler exactly once, in
seq order. Each row is recorded (``report.py``); ``--update-report`` writes the table to
``docs/reliability.md``.

The heartbeat interval is short (``IV``, 0.4 s, scaled by ``QQBOT_TEST_TIME_SCALE``); every
liveness deadline of the client scales with it, so the detection column reads the same at
QQ's 41.25 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from qqbot_gateway.adapter import api as api_module
from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter import protocol as p
from qqbot_gateway.adapter.client import QQBotClient, Secret
from qqbot_gateway.adapter.connection import TransportConfig
from qqbot_gateway.adapter.errors import QQBotError
from qqbot_gateway.adapter.events import ConnectionState
from qqbot_gateway.adapter.protocol import GatewayEvent
from qqbot_gateway.adapter.session import LivenessConfig
from qqbot_gateway.adapter.supervisor import ReconnectPolicy
from qqbot_gateway.simulator import MISSING, Simulator
from qqbot_gateway.telemetry import Telemetry, TelemetryConfig

from ..gateway_harness import (
    SCALE,
    SECRET,
    Harness,
    Recorder,
    client_config,
    record_into,
    sim_config,
    stop_harness,
)
from . import report

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

#: The heartbeat interval of these tests: 0.4 s keeps the file well under two minutes while
#: every deadline (idle 2.5 intervals = 1 s) stays far above scheduling noise on a loaded box.
IV_MS = int(400 * SCALE)
IV = IV_MS / 1000
#: Events per second while a fault is injected: enough that every fault window holds some.
EVENT_RATE = 20.0
#: A name that never resolves (RFC 6761); the resolver is stubbed so no query leaves the box.
INVALID_HOST = "qqbot-nonexistent.invalid"

report.set_interval(IV)

E = TypeVar("E", bound=ev.LifecycleEvent)
R = TypeVar("R", ev.SessionReady, ev.SessionResumed)


# --- setup -------------------------------------------------------------------------------------
def policy(**overrides: Any) -> ReconnectPolicy:
    base: dict[str, Any] = {
        "backoff_base": 0.05 * SCALE,
        "backoff_cap": 0.5 * SCALE,
        "healthy_after": 2 * IV,
        "rate_limit_wait": 2 * IV,
        "quick_lifetime": 0.2 * IV,
    }
    base.update(overrides)
    return ReconnectPolicy(**base)


def liveness(**overrides: Any) -> LivenessConfig:
    base: dict[str, Any] = {"hello_timeout": 3 * IV, "handshake_timeout_min": 3 * IV}
    base.update(overrides)
    return LivenessConfig(**base)


async def launch(
    sim_overrides: dict[str, Any] | None = None,
    handler: Callable[[GatewayEvent], Any] | None = None,
    *,
    before_start: Callable[[Simulator], None] | None = None,
    sim_dependent: Callable[[Simulator], dict[str, Any]] | None = None,
    setup: Callable[[QQBotClient], None] | None = None,
    **client_overrides: Any,
) -> Harness:
    """Like ``gateway_harness.start_harness``, with hooks before the client starts."""
    sim_base: dict[str, Any] = {
        "heartbeat_interval_ms": IV_MS,
        # QQ closes a connection ~1.45 intervals after its last heartbeat; 3 keeps the server
        # from closing a live client whose heartbeat a loaded test box delayed.
        "heartbeat_grace_factor": 3.0,
        "event_rate": EVENT_RATE,
    }
    sim_base.update(sim_overrides or {})
    sim = Simulator(sim_config(**sim_base))
    await sim.start("127.0.0.1", 0)
    created: QQBotClient | None = None
    try:
        if before_start is not None:
            before_start(sim)
        overrides: dict[str, Any] = {"liveness": liveness(), "reconnect": policy()}
        overrides.update(client_overrides)
        if sim_dependent is not None:
            overrides.update(sim_dependent(sim))
        rec = Recorder()
        client = QQBotClient(client_config(sim, **overrides))
        created = client
        record_into(client, rec, handler)
        if setup is not None:
            setup(client)
        await client.start()
    except BaseException:
        if created is not None:
            await created.close(drain_timeout=0.1)
        await sim.stop()
        raise
    return Harness(sim, client, rec)


@contextlib.asynccontextmanager
async def running(*args: Any, **kwargs: Any) -> AsyncIterator[Harness]:
    h = await launch(*args, **kwargs)
    try:
        yield h
    finally:
        await stop_harness(h)


#: Events emitted right before a fault is injected, so that some are in flight across it.
IN_FLIGHT = 10


async def in_flight(h: Harness) -> None:
    await h.sim.emit_events(IN_FLIGHT)


async def flowing(h: Harness, n: int = 5) -> None:
    await h.ready()
    await h.wait_for(lambda: len(h.rec.payload_events()) >= n, 10, f"{n} events delivered")


# --- measuring ---------------------------------------------------------------------------------
class Probe:
    """Injection / lift times and the lifecycle events that followed them."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.mark = h.mark()
        self.t_inject = h.loop.time()
        self.t_lift: float | None = None

    def inject(self) -> None:
        self.mark = self.h.mark()
        self.t_inject = self.h.loop.time()
        self.t_lift = None

    def lift(self) -> None:
        self.t_lift = self.h.loop.time()

    def lift_when(
        self, kind: type[E], action: Callable[[], None], where: Callable[[E], bool] = lambda e: True
    ) -> None:
        """Lift the fault (``action``) inside the event bus, the instant ``kind`` is emitted:
        polling would let a quick recovery slip in before the lift."""

        def on_event(event: ev.LifecycleEvent) -> None:
            if self.t_lift is None and isinstance(event, kind) and where(event):
                action()
                self.lift()

        self.h.client.events.subscribe(on_event)

    def since(self, kind: type[E]) -> list[E]:
        return [e for e in self.h.rec.lifecycle[self.mark :] if isinstance(e, kind)]

    async def first(
        self, kind: type[E], timeout: float, where: Callable[[E], bool] = lambda e: True
    ) -> E:
        return await self.h.wait_event(kind, timeout, after=self.mark, where=where)

    async def recovered_as(self, kind: type[R], timeout: float) -> R:
        """``recovered``, asserting how: resumed, or identified (a new session)."""
        back = await self.recovered(timeout)
        assert isinstance(back, kind), back
        return back

    async def recovered(self, timeout: float) -> ev.SessionReady | ev.SessionResumed:
        start = self.t_lift if self.t_lift is not None else self.t_inject

        def live(e: ev.LifecycleEvent) -> bool:
            return isinstance(e, ev.SessionReady | ev.SessionResumed) and e.monotonic >= start

        found = await self.first(ev.LifecycleEvent, timeout, live)
        assert isinstance(found, ev.SessionReady | ev.SessionResumed)
        return found

    def intervals(self, event: ev.LifecycleEvent) -> float:
        return (event.monotonic - self.t_inject) / IV

    def recovery(self, event: ev.LifecycleEvent) -> float:
        start = self.t_lift if self.t_lift is not None else self.t_inject
        return event.monotonic - start

    def attempts(self) -> int:
        return len(self.since(ev.ConnectAttempt))


def attempt_ceiling(window: float, pol: ReconnectPolicy) -> int:
    """Most connection attempts the backoff policy allows in ``window`` seconds of failures:
    the first ``quick_loop_threshold`` may come quickly (full jitter can draw ~0), every later
    one waits at least ``backoff_cap / 2``; one more for the attempt in flight."""
    return pol.quick_loop_threshold + 2 + math.floor(window / (pol.backoff_cap / 2))


@dataclass(frozen=True, slots=True)
class Books:
    emitted: int
    server_dropped: int
    lost: int
    duplicated: int
    #: Deliveries whose (session id, seq) disagrees with what the simulator sent under that id,
    #: or whose id the simulator never emitted.
    mismatched: int
    out_of_order: int


def books(h: Harness) -> Books:
    emitted = h.sim.emitted_events()
    by_id = {r.event_id: r for r in emitted}
    dropped = {r.event_id for r in h.sim.dropped_events()}
    expected = {r.event_id for r in emitted if r.event_id not in dropped}
    delivered = h.rec.payload_events()
    ids = Counter(e.event_id for e in delivered)
    seqs = Counter((e.session_id, e.seq) for e in delivered)
    duplicated = max(
        sum(n - 1 for n in ids.values() if n > 1), sum(n - 1 for n in seqs.values() if n > 1)
    )
    mismatched = 0
    for e in delivered:
        sent = by_id.get(e.event_id)
        if sent is None or (sent.session_id, sent.seq) != (e.session_id, e.seq):
            mismatched += 1
    per_session: dict[str | None, list[int]] = {}
    for e in delivered:
        if e.seq is not None:
            per_session.setdefault(e.session_id, []).append(e.seq)
    out_of_order = sum(1 for s in per_session.values() for a, b in itertools.pairwise(s) if b <= a)
    return Books(
        emitted=len(emitted),
        server_dropped=len((dropped & set(by_id)) - set(ids)),
        lost=len(expected - set(ids)),
        duplicated=duplicated,
        mismatched=mismatched,
        out_of_order=out_of_order,
    )


async def settle(h: Harness, timeout: float = 10.0) -> None:
    """Stop the generator and wait (without failing) until every expected event arrived."""
    h.sim.pause_events()
    with contextlib.suppress(AssertionError):
        await h.wait_for(lambda: h.expected_ids() <= h.delivered_ids(), timeout, "delivery")


async def finish(
    h: Harness,
    *,
    key: str,
    fault: str,
    injection: str,
    detected_as: str,
    detection: float | None,
    recovery: float | None,
    notes: str = "",
    min_emitted: int = 5,
) -> Books:
    """Settle, record the row, then assert the books balance."""
    await settle(h)
    b = books(h)
    report.record(
        report.Row(
            key=key,
            fault=fault,
            injection=injection,
            detected_as=detected_as,
            detection_intervals=detection,
            recovery_seconds=recovery,
            emitted=b.emitted,
            server_dropped=b.server_dropped,
            lost=b.lost,
            duplicated=b.duplicated,
            notes=notes,
        )
    )
    assert b.lost == 0, f"{key}: {b}"
    assert b.duplicated == 0, f"{key}: {b}"
    assert b.mismatched == 0 and b.out_of_order == 0, f"{key}: {b}"
    assert b.emitted >= min_emitted, f"{key}: too few events to judge: {b}"
    h.assert_exactly_once()
    return b


#: Seconds of scheduling slack a loaded 2-core machine may add to a liveness verdict.
SLACK = 0.4


def within(intervals: float) -> float:
    """A detection bound in intervals: the design's worst case plus ``SLACK``."""
    return intervals + SLACK / IV


def reason_is(*reasons: str) -> Callable[[ev.Disconnected], bool]:
    return lambda e: e.reason in reasons


# --- the scaffold --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Seen:
    """What a row saw of its fault: the report's columns after the injection."""

    detected_as: str
    #: In heartbeat intervals (``Probe.intervals``); None for faults not meant to disconnect.
    detection: float | None
    #: In seconds (``Probe.recovery``); None when no recovery is expected.
    recovery: float | None
    notes: str = ""
    #: The injection column when it depends on the run ("held 2.1s"), else the row's own.
    injection: str | None = None


@dataclass(slots=True)
class Ctx:
    """What one row's hooks share: pytest's monkeypatch, an exit stack for resources the row
    owns (unwound before the harness stops), and free-form state (``handler`` <-> ``act``)."""

    monkeypatch: pytest.MonkeyPatch
    stack: contextlib.AsyncExitStack
    state: dict[str, Any] = field(default_factory=dict)


async def warm_in_flight(h: Harness, ctx: Ctx) -> None:
    """The usual start: events flowing, and a burst in flight across the injection."""
    await flowing(h)
    await in_flight(h)


async def warm_settled(h: Harness, ctx: Ctx) -> None:
    """Events flowed, then the generator paused with every event delivered."""
    await flowing(h)
    await settle(h)


async def warm_ready(h: Harness, ctx: Ctx) -> None:
    await h.ready()


async def warm_flowing(h: Harness, ctx: Ctx) -> None:
    await flowing(h)


async def warm_nothing(h: Harness, ctx: Ctx) -> None:
    """The fault is there from the start (the client never connected)."""


def seen(
    pr: Probe,
    detected: ev.Disconnected | ev.ZombieDetected | ev.ShardFatal,
    back: ev.LifecycleEvent | None,
    notes: str = "",
    *,
    injection: str | None = None,
) -> Seen:
    """The usual row: detected as ``detected`` (its kind and reason), recovered at ``back``."""
    return Seen(
        f"{type(detected).__name__}({detected.reason})",
        pr.intervals(detected),
        None if back is None else pr.recovery(back),
        notes,
        injection=injection,
    )


def no_options(ctx: Ctx) -> dict[str, Any]:
    return {}


@dataclass(frozen=True, slots=True)
class Fault:
    """One row of the matrix: how to launch, how to warm up, and ``act``: inject the fault,
    assert how it was detected and recovered from (the row's own checks), and say what it saw.
    The scaffold (``test_fault``) balances the books and records the row."""

    key: str
    title: str
    injection: str
    act: Callable[[Harness, Probe, Ctx], Awaitable[Seen]]
    #: Keyword arguments of ``running()`` (simulator overrides, handler, client overrides).
    launch: Callable[[Ctx], dict[str, Any]] = no_options
    warmup: Callable[[Harness, Ctx], Awaitable[None]] = warm_in_flight


def shorten_api_retries(ctx: Ctx) -> None:
    """The OpenAPI client retries a failed GET 3 times with uniform(0, 0.5 * 2**n) s before the
    supervisor sees the error; scaled down here so a row fits its time budget."""
    ctx.monkeypatch.setattr(api_module, "_backoff", lambda attempt: 0.05 * attempt)


async def hold(pr: Probe, seconds: float) -> tuple[float, int, str]:
    """Keep the fault on ``seconds`` longer, then count the connection attempts since the
    injection, asserted under the backoff ceiling: (window, attempts, a note saying so)."""
    await asyncio.sleep(seconds)
    window = pr.h.loop.time() - pr.t_inject
    attempts = pr.attempts()
    ceiling = attempt_ceiling(window, pr.h.client.config.reconnect)
    assert attempts <= ceiling, (attempts, ceiling)
    return window, attempts, f"{attempts} attempts in {window:.1f}s (ceiling {ceiling})"


# --- liveness: the link dies silently -----------------------------------------------------------
async def half_open(h: Harness, pr: Probe, ctx: Ctx) -> Seen:
    assert h.sim.blackhole() == 1
    zombie = await pr.first(ev.ZombieDetected, 8 * IV)
    # The simulator answers pings: the ping layer is armed and fires first. Worst case by
    # design 0.05 H of quiet, then the pong deadline at its floor (0.3 H).
    assert zombie.reason == p.PING_TIMEOUT
    assert pr.intervals(zombie) <= within(0.35)
    back = await pr.recovered_as(ev.SessionResumed, 15 * IV)
    assert len(h.sim.sessions_created) == 1
    h.sim.unblackhole()
    return seen(pr, zombie, back, "resumed, no new session")


async def acks_stopped(h: Harness, pr: Probe, ctx: Ctx) -> Seen:
    pr.lift_when(ev.ZombieDetected, h.sim.resume_acks)
    h.sim.stop_acks()
    zombie = await pr.first(ev.ZombieDetected, 8 * IV)
    assert zombie.reason == p.ACK_TIMEOUT  # events and pongs kept arriving
    assert zombie.unacked == 3  # the heartbeat and its two probes
    # the next heartbeat within 1 H, its ACK deadline (floor) 0.4 H later
    assert pr.intervals(zombie) <= within(1.4)
    back = await pr.recovered_as(ev.SessionResumed, 15 * IV)
    return Seen(
        f"ZombieDetected({zombie.reason}, {zombie.unacked} unacked)",
        pr.intervals(zombie),
        pr.recovery(back),
    )


async def server_silent(h: Harness, pr: Probe, ctx: Ctx) -> Seen:
    pr.lift_when(ev.ZombieDetected, lambda: h.sim.set_outgoing_delay(0.0))
    # Every frame the server writes is held back (ACKs and events alike) while it keeps
    # reading heartbeats and generating events: a write-side blackhole.
    h.sim.set_outgoing_delay(120.0)
    zombie = await pr.first(ev.ZombieDetected, 8 * IV)
    # Pongs still flow (the WebSocket layer answers them, not the gateway's writer), so
    # the link is alive for the ping and idle layers: the ACK deadline decides.
    assert zombie.reason == p.ACK_TIMEOUT
    assert pr.intervals(zombie) <= within(1.4)
    back = await pr.recovered_as(ev.SessionResumed, 15 * IV)
    return seen(
        pr,
        zombie,
        back,
        f"events held server-side were replayed on resume ({back.replayed} replayed)",
    )


LIVENESS = [
    Fault(
        "half_open",
        "Half-open link (nothing in or out, socket kept open)",
        "`blackhole()` both ways on the live connection",
        half_open,
    ),
    Fault(
        "acks_stopped",
        "Server stops ACKing, keeps sending events",
        "`stop_acks()`; `resume_acks()` once detected",
        acks_stopped,
    ),
    Fault(
        "server_silent",
        "Server stops sending anything (still reads, still generates events)",
        "`set_outgoing_delay(120)` on every write; 0 once detected",
        server_silent,
    ),
]


# --- close codes and gateway opcodes -----------------------------------------------------------
def close_code(code: int, mode: str) -> Callable[[Harness, Probe, Ctx], Awaitable[Seen]]:
    async def act(h: Harness, pr: Probe, ctx: Ctx) -> Seen:
        await h.sim.close_connections(code)
        disc = await pr.first(ev.Disconnected, 5 * IV)
        assert disc.close_code == code and disc.reason == f"server_close:{code}"
        back = await pr.recovered(15 * IV)
        if mode == "resume":
            assert disc.resumable and isinstance(back, ev.SessionResumed)
            assert len(h.sim.sessions_created) == 1
        else:
            assert not disc.resumable and isinstance(back, ev.SessionReady)
            assert len(h.sim.sessions_created) == 2 and not pr.since(ev.ResumeSent)
        return seen(pr, disc, back, "resumed" if mode == "resume" else "identified (new session)")

    return act


#: rate_limit_wait of the close-4008 row.
WAIT_4008 = 2 * IV


async def close_4008(h: Harness, pr: Probe, ctx: Ctx) -> Seen:
    await h.sim.close_connections(4008, "sending too fast")
    disc = await pr.first(ev.Disconnected, 5 * IV)
    assert disc.close_code == 4008 and disc.resumable
    back = await pr.recovered_as(ev.SessionResumed, 15 * IV)
    (scheduled, *_) = pr.since(ev.ReconnectScheduled)
    assert scheduled.delay >= WAIT_4008 and scheduled.mode == "resume"
    (attempt, *_) = pr.since(ev.ConnectAttempt)
    gap = attempt.monotonic - disc.monotonic
    assert gap >= WAIT_4008 - 0.01, f"reconnected after {gap:.3f}s, rate_limit_wait {WAIT_4008}s"
    return seen(pr, disc, back, f"waited {gap:.2f}s (rate_limit_wait {WAIT_4008:g}s), then resumed")


async def close_4004(h: Harness, pr: Probe, ctx: Ctx) -> Seen:
    await h.sim.close_connections(4004, "authentication fail")
    disc = await pr.first(ev.Disconnected, 5 * IV)
    assert disc.close_code == 4004
    refreshed = await pr.first(ev.TokenRefreshed, 5 * IV, lambda e: e.forced)
    back = await pr.recovered_as(ev.SessionReady, 15 * IV)
    (identify, *_) = pr.since(ev.IdentifySent)
    assert refreshed.monotonic <= identify.monotonic
    return seen(pr, disc, back, "forced token refresh, then identify")


def fatal_close(code: int) -> Callable[[Harness, Probe, Ctx], Awaitable[Seen]]:
    async def act(h: Harness, pr: Probe, ctx: Ctx) -> Seen:
        await h.sim.close_connections(code)
        fatal = await pr.first(ev.ShardFatal, 5 * IV)
        assert fatal.close_code == code and str(code) in fatal.message
        await pr.first(ev.SupervisorStopped, 2 * IV)
        connections = len(h.sim.connections)
        await asyncio.sleep(4 * IV)
        assert pr.attempts() == 0 and len(h.sim.connections) == connections  # no loop
        (status,) = h.client.shard_status()
        assert status.state is ConnectionState.FATAL and not status.task_alive
        await asyncio.wait_for(h.client.wait_closed(), 2)
        return seen(pr, fatal, None, "FATAL state, 0 reconnect attempts in the next 4 intervals")

    return act


async def op7(h: Harness, pr: Probe, ctx: Ctx) -> Seen:
    await h.sim.send_reconnect()
    disc = await pr.first(ev.Disconnected, 5 * IV)
    assert disc.reason == p.RECONNECT_REQUESTED
    back = await pr.recovered_as(ev.SessionResumed, 15 * IV)
    return seen(pr, disc, back, "resumed")


def op9(resumable: bool) -> Callable[[Harness, Probe, Ctx], Awaitable[Seen]]:
    async def act(h: Harness, pr: Probe, ctx: Ctx) -> Seen:
        # true: the server leaves the socket open (the client must close); false: then 4006.
        await h.sim.send_invalid_session(resumable, close_code=None if resumable else "config")
        disc = await pr.first(ev.Disconnected, 5 * IV)
        assert disc.reason == p.INVALID_SESSION and disc.resumable is resumable
        back = await pr.recovered(15 * IV)
        expected = ev.SessionResumed if resumable else ev.SessionReady
        assert isinstance(back, expected)
        assert len(h.sim.sessions_created) == (1 if resumable else 2)
        return seen(pr, disc, back, "resumed" if resumable else "identified (new session)")

    return act


async def resume_rejected(h: Harness, pr: Probe, ctx: Ctx) -> Seen:
    h.sim.reject_next_resumes(3)
    await h.sim.close_connections(4009)
    rejected = await pr.first(ev.Disconnected, 10 * IV, reason_is(p.INVALID_SESSION))
    back = await pr.recovered_as(ev.SessionReady, 15 * IV)
    outcomes = [r.outcome for r in h.sim.resumes]
    # op 9 false says "cannot resume": one rejection is enough to identify, the client
    # must not retry the dead session (the other two rejections stay unused).
    assert outcomes.count("rejected_fault") == 1, outcomes
    h.sim.reset_faults()
    return seen(pr, rejected, back, "identified after the first rejection (op 9 false is final)")


async def resume_unanswered(h: Harness, pr: Probe, ctx: Ctx) -> Seen:
    lv = h.client.config.liveness
    # The resumes that go unanswered are abandoned with their session: the warm-up paused the
    # generator so the abandoned session holds no undelivered events (QQ would drop those too).
    pr.lift_when(
        ev.ReconnectScheduled,
        lambda: h.sim.withhold_ready(False),
        lambda e: e.mode == "identify",
    )
    h.sim.withhold_ready(True)
    await h.sim.close_connections(4009)
    first = await pr.first(ev.Disconnected, 10 * IV, reason_is(p.HANDSHAKE_TIMEOUT))
    back = await pr.recovered_as(ev.SessionReady, 30 * IV)
    failures = [e for e in pr.since(ev.Disconnected) if e.reason == p.HANDSHAKE_TIMEOUT]
    assert len(pr.since(ev.ResumeSent)) == lv.max_resume_failures
    assert len(failures) == lv.max_resume_failures
    assert len(h.sim.sessions_created) == 2
    await h.sim.emit_events(10, session_id=back.session_id)
    return seen(pr, first, back, f"identify after max_resume_failures={lv.max_resume_failures}")


#: The liveness settings of the unanswered-resume row: a short handshake timeout.
UNANSWERED = liveness(handshake_timeout=2 * IV)

#: Close codes after which the client resumes, or identifies a new session.
CLOSE_CODES = [(4009, "resume"), (4006, "identify"), (4007, "identify")]
CLOSE_CODES_5XX = [(4900, "identify"), (4913, "identify")]


def close_row(code: int, mode: str) -> Fault:
    return Fault(
        f"close_{code}",
        f"Close {code} ({p.classify_close(code).meaning})",
        f"`close_connections({code})`",
        close_code(code, mode),
    )


GATEWAY_CLOSES = [
    *[close_row(code, mode) for code, mode in CLOSE_CODES],
    Fault(
        "close_4008",
        "Close 4008 (sending too fast)",
        "`close_connections(4008)`",
        close_4008,
        launch=lambda ctx: {"reconnect": policy(rate_limit_wait=WAIT_4008)},
    ),
    *[close_row(code, mode) for code, mode in CLOSE_CODES_5XX],
    Fault(
        "close_4004",
        "Close 4004 (authentication failed)",
        "`close_connections(4004)`",
        close_4004,
    ),
    *[
        Fault(
            f"close_{code}",
            f"Close {code} ({p.classify_close(code).meaning})",
            f"`close_connections({code})`",
            fatal_close(code),
        )
        for code in (4914, 4915, 4013, 4014)
    ],
    Fault("op7", "op 7 Reconnect", "`send_reconnect()`", op7),
    *[
        Fault(
            f"op9_{str(resumable).lower()}",
            f"op 9 Invalid Session (d={str(resumable).lower()})",
            f"`send_invalid_session({resumable})`" + ("" if resumable else " (then close 4006)"),
            op9(resumable),
        )
        for resumable in (True, False)
    ],
    Fault(
        "resume_rejected",
        "Resume rejected (op 9 false on Resume)",
        "`reject_next_resumes(3)` + close 4009",
        resume_rejected,
    ),
    Fault(
        "resume_unanswered",
        f"Resume never answered ({UNANSWERED.max_resume_failures} times)",
        "`withhold_ready()` + close 4009, generator paused; "
        "lifted when the client schedules an identify",
        resume_unanswered,
        launch=lambda ctx: {"liveness": UNANSWERED},
        warmup=warm_settled,
    ),
]


# --- access token --------------------------------------------------------------------------------
#: Token endpoint faults: key, title, ``set_token_fault`` arguments.
TOKEN_FAULTS: list[tuple[str, str, dict[str, Any]]] = [
    ("token_500", "Token endpoint HTTP 500", {"mode": "500"}),
    ("token_slow", "Token endpoint slow (2.5 s, request timeout 1 s)", {"delay": 2.5}),
    ("token_error_200", "Token endpoint error body with HTTP 200", {"mode": "error_200"}),
    ("token_malformed", "Token endpoint answers malformed JSON", {"mode": "malformed"}),
]


def token_failing(params: dict[str, Any]) -> Callable[[Harness, Probe, Ctx], Awaitable[Seen]]:
    async def act(h: Harness, pr: Probe, ctx: Ctx) -> Seen:
        h.sim.set_token_fault(params.get("mode"), delay=params.get("delay", 0.0) * SCALE)
        h.sim.expire_tokens()  # the gateway now refuses the old token: a new one is needed
        identifies = len(h.sim.identifies)
        await h.sim.close_connections(4004)
        failed = await pr.first(ev.TokenRefreshFailed, 10 * IV)
        window, attempts, tried = await hold(pr, 5 * IV)
        assert attempts >= 1
        assert not pr.since(ev.SessionReady)
        assert SECRET not in failed.error
        if "delay" in params:  # the client's request_timeout, not a default of its own
            assert f"after {1.0 * SCALE:g}s" in failed.error, failed.error
        # The refused token is never sent again: no Identify until a new token exists.
        assert len(h.sim.identifies) == identifies
        h.sim.set_token_fault(None)
        pr.lift()
        lifted = h.loop.time()
        back = await pr.recovered_as(ev.SessionReady, 20 * IV)
        assert any(e.monotonic >= lifted for e in pr.since(ev.TokenRefreshed))
        return Seen(
            f"TokenRefreshFailed ({failed.error.split(':')[0]})",
            pr.intervals(failed),
            pr.recovery(back),
            f"{tried}, identify with the new token",
            injection=f"`set_token_fault({params})` + `expire_tokens()` + close 4004; "
            f"held {window:.1f}s",
        )

    return act


async def token_expires_60(h: Harness, pr: Probe, ctx: Ctx) -> Seen:
    h.sim.set_token_fault(None, expires_in="60")
    h.sim.expire_tokens()
    await h.sim.close_connections(4004)
    disc = await pr.first(ev.Disconnected, 5 * IV)
    refreshed = await pr.first(ev.TokenRefreshed, 10 * IV)
    assert refreshed.expires_in == 60.0
    back = await pr.recovered(15 * IV)
    left = h.client.tokens.expires_in
    assert left is not None and 50 < left <= 60
    return seen(pr, disc, back, f"accepted, {left:.0f}s left; the session continues")


async def token_expired_gateway(h: Harness, pr: Probe, ctx: Ctx) -> Seen:
    h.sim.expire_tokens()
    await h.sim.close_connections(4004)
    disc = await pr.first(ev.Disconnected, 5 * IV)
    await pr.first(ev.TokenRefreshed, 10 * IV, lambda e: e.forced)
    back = await pr.recovered_as(ev.SessionReady, 15 * IV)
    tokens = h.sim.issued_tokens()
    assert len(tokens) == 2  # the first, and the one fetched after the 4004
    return seen(pr, disc, back, "forced refresh, identify with the new token")


async def token_expired_rest(h: Harness, pr: Probe, ctx: Ctx) -> Seen:
    h.sim.expire_tokens()
    me = await h.client.api.get_me()
    took = h.loop.time() - pr.t_inject
    assert me["id"]
    refreshed = await pr.first(ev.TokenRefreshed, 5 * IV, lambda e: e.forced)
    await asyncio.sleep(2 * IV)
    assert not pr.since(ev.Disconnected)  # the gateway session was never touched
    return Seen(
        "HTTP 401 → forced refresh",
        None,
        None,
        f"request retried once with the new token, {took * 1000:.0f} ms in all; "
        f"refresh at +{(refreshed.monotonic - pr.t_inject) * 1000:.0f} ms; no disconnect",
    )


TOKENS = [
    *[
        Fault(
            key,
            title,
            "",  # from the run: how long the fault was held
            token_failing(params),
            launch=lambda ctx: {"request_timeout": 1.0 * SCALE},
        )
        for key, title, params in TOKEN_FAULTS
    ],
    Fault(
        "token_expires_60",
        'Token with `expires_in` "60" (last minute of the old one)',
        '`set_token_fault(expires_in="60")` + `expire_tokens()` + close 4004',
        token_expires_60,
    ),
    Fault(
        "token_expired_4004",
        "Token expires mid-session (gateway)",
        "`expire_tokens()` + close 4004",
        token_expired_gateway,
    ),
    Fault(
        "token_expired_rest_401",
        "Token expires mid-session (REST 401 / 11244)",
        "`expire_tokens()`, then `api.get_me()`",
        token_expired_rest,
        warmup=warm_flowing,
    ),
]


# --- discovery, connecting -----------------------------------------------------------------------
#: ``/gateway/bot`` faults: key, title, ``set_gateway_fault`` arguments.
GATEWAY_FAULTS: list[tuple[str, str, dict[str, Any]]] = [
    ("gateway_bot_500", "`/gateway/bot` HTTP 500", {"mode": "500"}),
    ("gateway_bot_503", "`/gateway/bot` HTTP 503", {"mode": "503"}),
    ("gateway_bot_timeout", "`/gateway/bot` times out (2 s, timeout 0.75 s)", {"delay": 2.0}),
    ("gateway_bot_malformed", "`/gateway/bot` malformed JSON", {"mode": "malformed"}),
]


def discovery_launch(ctx: Ctx) -> dict[str, Any]:
    shorten_api_retries(ctx)
    return {"request_timeout": 0.75 * SCALE}


def gateway_bot_failing(params: dict[str, Any]) -> Callable[[Harness, Probe, Ctx], Awaitable[Seen]]:
    async def act(h: Harness, pr: Probe, ctx: Ctx) -> Seen:
        # No gateway_url: the client discovers the URL with GET /gateway/bot. The supervisor
        # keeps it until a WebSocket connect fails, so the fault comes with refused connections
        # (503) to force a fresh discovery; connections are accepted again once it failed.
        assert h.client.config.gateway_url is None
        h.sim.set_gateway_fault(params.get("mode"), delay=params.get("delay", 0.0) * SCALE)
        h.sim.refuse_connections("503")
        await h.sim.close_connections(4009)
        failed = await pr.first(ev.Disconnected, 40 * IV, reason_is(p.GATEWAY_URL_ERROR))
        h.sim.accept_connections()
        _, attempts, tried = await hold(pr, 3 * IV)
        assert attempts >= 2
        assert not pr.since(ev.SessionResumed)
        h.sim.set_gateway_fault(None)
        pr.lift()
        back = await pr.recovered_as(ev.SessionResumed, 30 * IV)
        return seen(
            pr,
            failed,
            back,
            f"{tried}; resumed; OpenAPI's own GET retry waits shortened in the test",
            injection=f"`set_gateway_fault({params})` + refuse 503 + close 4009 "
            "(forces re-discovery)",
        )

    return act


def refused(mode: str) -> Callable[[Harness, Probe, Ctx], Awaitable[Seen]]:
    async def act(h: Harness, pr: Probe, ctx: Ctx) -> Seen:
        h.sim.refuse_connections(mode)
        await h.sim.close_connections(4009)
        failed = await pr.first(ev.Disconnected, 10 * IV, reason_is(p.CONNECT_ERROR))
        window, attempts, tried = await hold(pr, 6 * IV)
        assert attempts >= 3
        assert h.sim.refused_connections >= attempts - 1
        h.sim.accept_connections()
        pr.lift()
        back = await pr.recovered_as(ev.SessionResumed, 20 * IV)
        return seen(
            pr,
            failed,
            back,
            f"{tried}; resumed",
            injection=f'`refuse_connections("{mode}")` + close 4009; held {window:.1f}s',
        )

    return act


def dns_launch(target: str) -> Callable[[Ctx], dict[str, Any]]:
    """A local stand-in for the resolver: ``.invalid`` never resolves (RFC 6761), answered at
    once with NXDOMAIN, no query leaves the machine; "healed", the name maps to loopback."""

    def launch(ctx: Ctx) -> dict[str, Any]:
        shorten_api_retries(ctx)
        loop = asyncio.get_running_loop()
        real = loop.getaddrinfo
        dns = ctx.state["dns"] = {"down": True, "lookups": 0}

        async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            if host == INVALID_HOST:
                dns["lookups"] += 1
                if dns["down"]:
                    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
                host = "127.0.0.1"
            return await real(host, port, *args, **kwargs)

        ctx.monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)

        def endpoints(sim: Simulator) -> dict[str, Any]:
            if target == "gateway_url":
                return {"gateway_url": f"ws://{INVALID_HOST}:{sim.port}/websocket"}
            return {"api_base": f"http://{INVALID_HOST}:{sim.port}"}

        ctx.state["t0"] = loop.time()
        return {"sim_dependent": endpoints, "request_timeout": 1.0 * SCALE}

    return launch


def dns_failure(target: str) -> Callable[[Harness, Probe, Ctx], Awaitable[Seen]]:
    async def act(h: Harness, pr: Probe, ctx: Ctx) -> Seen:
        dns = ctx.state["dns"]
        pr.mark, pr.t_inject = 0, ctx.state["t0"]  # injected before the client started
        reason = p.CONNECT_ERROR if target == "gateway_url" else p.GATEWAY_URL_ERROR
        failed = await pr.first(ev.Disconnected, 10 * IV, reason_is(reason))
        window, attempts, tried = await hold(pr, 6 * IV)
        assert attempts >= 2
        assert dns["lookups"] >= attempts - 1
        assert not h.rec.of(ev.SessionReady)
        dns["down"] = False
        pr.lift()
        back = await pr.recovered_as(ev.SessionReady, 20 * IV)
        await flowing(h)
        return seen(
            pr,
            failed,
            back,
            f"{tried}; no query left the machine",
            injection=f"{target} on a `.invalid` host from the start; resolver stubbed "
            f"in-process (NXDOMAIN, then loopback); held {window:.1f}s",
        )

    return act


DISCOVERY = [
    *[
        Fault(key, title, "", gateway_bot_failing(params), launch=discovery_launch)
        for key, title, params in GATEWAY_FAULTS
    ],
    *[
        Fault(
            f"refused_{mode}",
            f"Connection refused ({how})",
            "",  # from the run: how long the fault was held
            refused(mode),
        )
        for mode, how in (("503", "upgrade answered 503"), ("reset", "TCP reset"))
    ],
    *[
        Fault(
            f"dns_{target}",
            f"DNS failure ({target} host `{INVALID_HOST}`)",
            "",  # from the run: how long the fault was held
            dns_failure(target),
            launch=dns_launch(target),
            warmup=warm_nothing,
        )
        for target in ("gateway_url", "api_base")
    ],
]


# --- handshake ---------------------------------------------------------------------------------
async def hello_withheld(h: Harness, pr: Probe, ctx: Ctx) -> Seen:
    pr.lift_when(ev.Disconnected, lambda: h.sim.withhold_hello(False), reason_is(p.HELLO_TIMEOUT))
    h.sim.withhold_hello(True)
    await h.sim.close_connections(4009)
    failed = await pr.first(ev.Disconnected, 15 * IV, reason_is(p.HELLO_TIMEOUT))
    opened = next(e for e in pr.since(ev.Connected))
    waited = failed.monotonic - opened.monotonic
    assert 3 * IV - 0.05 <= waited <= 3 * IV + 1.0
    back = await pr.recovered_as(ev.SessionResumed, 15 * IV)
    return seen(
        pr,
        failed,
        back,
        f"hello_timeout {3 * IV:g}s after the socket opened ({waited:.2f}s); resumed",
    )


async def ready_withheld(h: Harness, pr: Probe, ctx: Ctx) -> Seen:
    pr.lift_when(
        ev.Disconnected, lambda: h.sim.withhold_ready(False), reason_is(p.HANDSHAKE_TIMEOUT)
    )
    h.sim.withhold_ready(True)
    await h.sim.close_connections(4009)
    failed = await pr.first(ev.Disconnected, 15 * IV, reason_is(p.HANDSHAKE_TIMEOUT))
    back = await pr.recovered_as(ev.SessionResumed, 15 * IV)
    return seen(pr, failed, back, "handshake_timeout, then resumed")


HANDSHAKE = [
    Fault(
        "hello_withheld",
        "Hello never arrives",
        "`withhold_hello()` + close 4009; lifted once detected",
        hello_withheld,
    ),
    Fault(
        "ready_withheld",
        "READY / RESUMED never arrives",
        "`withhold_ready()` + close 4009; lifted once detected",
        ready_withheld,
    ),
]


# --- bad frames ----------------------------------------------------------------------------------
MAX_FRAME = 64 * 1024
RAW_FAULTS = {
    "invalid_json": "Frame that is not JSON",
    "binary": "Binary frame",
    "unknown_op": "Unknown opcode (op 42)",
    "missing_fields": "Frame without `op`",
    "wrong_types": "Frame with wrong types (`op` a string)",
    "huge": f"Frame over max_frame_size ({MAX_FRAME // 1024} KiB)",
}


def small_frames(ctx: Ctx) -> dict[str, Any]:
    transport = TransportConfig(
        connect_timeout=3.0, close_timeout=0.5, send_timeout=2.0, max_frame_size=MAX_FRAME
    )
    return {"transport": transport}


def bad_frame(kind: str) -> Callable[[Harness, Probe, Ctx], Awaitable[Seen]]:
    async def act(h: Harness, pr: Probe, ctx: Ctx) -> Seen:
        assert await h.sim.send_raw(kind, size=4 * MAX_FRAME) == 1
        if kind == "huge":
            disc = await pr.first(ev.Disconnected, 5 * IV)
            assert disc.reason == p.PROTOCOL_ERROR, disc  # was network_error before bad0851
            back = await pr.recovered_as(ev.SessionResumed, 15 * IV)
            return seen(pr, disc, back, "connection dropped, resumed")
        if kind == "unknown_op":
            frame = await pr.first(ev.FrameReceived, 5 * IV, lambda e: e.op == 42)
            detected_as = f"FrameReceived(op={frame.op}), ignored"
            notes = "passes through, session untouched"
        else:
            violation = await pr.first(ev.ProtocolViolation, 5 * IV)
            detected_as = f"ProtocolViolation: {violation.detail}"
            notes = "counted, session untouched"
        await asyncio.sleep(2 * IV)
        assert not pr.since(ev.Disconnected)
        assert not pr.since(ev.ZombieDetected)
        return Seen(detected_as, None, None, notes)

    return act


BAD_FRAMES = [
    Fault(f"raw_{kind}", title, f'`send_raw("{kind}")`', bad_frame(kind), launch=small_frames)
    for kind, title in RAW_FAULTS.items()
]


# --- Hello's heartbeat_interval ------------------------------------------------------------------
HELLO_INTERVALS: dict[str, tuple[Any, str]] = {
    "tiny": (1, "Hello `heartbeat_interval` 1 ms"),
    "zero": (0, "Hello `heartbeat_interval` 0"),
    "malformed": ("abc", 'Hello `heartbeat_interval` "abc"'),
    "missing": (MISSING, "Hello without `heartbeat_interval`"),
}


async def hello_interval_tiny(h: Harness, pr: Probe, ctx: Ctx) -> Seen:
    lv = h.client.config.liveness
    h.sim.set_hello_interval(1)
    await h.sim.close_connections(4009)
    hello = await pr.first(ev.HelloReceived, 5 * IV)
    assert hello.heartbeat_interval == pytest.approx(lv.min_heartbeat_interval)
    back = await pr.recovered_as(ev.SessionResumed, 15 * IV)
    h.sim.clear_hello_interval()  # new connections only; this one keeps 0.2 s
    t1 = h.loop.time()
    await asyncio.sleep(8 * lv.min_heartbeat_interval)
    beats = [e for e in h.rec.of(ev.HeartbeatSent) if e.monotonic >= t1]
    rate = len(beats) / (h.loop.time() - t1)
    # Clamped to 0.2 s: about 5 a second (up to 3 per interval with ACK probes when ACKs are
    # late on a loaded machine). A 1 ms interval would be about 1000.
    assert rate <= 3.5 / lv.min_heartbeat_interval, rate
    assert not pr.since(ev.ZombieDetected)
    return Seen(
        f"clamped to {hello.heartbeat_interval:g}s",
        None,
        pr.recovery(back),
        f"{rate:.1f} heartbeats/s (ceiling {1.5 / lv.min_heartbeat_interval:g}); resumed",
    )


def hello_interval_unusable(value: Any) -> Callable[[Harness, Probe, Ctx], Awaitable[Seen]]:
    async def act(h: Harness, pr: Probe, ctx: Ctx) -> Seen:
        h.sim.set_hello_interval(value)
        await h.sim.close_connections(4009)
        failed = await pr.first(ev.Disconnected, 5 * IV, reason_is(p.PROTOCOL_ERROR))
        window, attempts, tried = await hold(pr, 4 * IV)
        assert attempts >= 1
        # No heartbeat without a usable interval, let alone a storm.
        assert not pr.since(ev.HeartbeatSent)
        assert not pr.since(ev.SessionResumed)
        h.sim.clear_hello_interval()
        pr.lift()
        back = await pr.recovered_as(ev.SessionResumed, 15 * IV)
        shown = "MISSING" if value is MISSING else repr(value)
        return seen(
            pr,
            failed,
            back,
            f"refused as unusable; {tried}, 0 heartbeats; resumed",
            injection=f"`set_hello_interval({shown})` + close 4009; held {window:.1f}s",
        )

    return act


HELLO = [
    Fault(
        f"hello_interval_{kind}",
        title,
        "`set_hello_interval(1)` + close 4009",
        hello_interval_tiny if kind == "tiny" else hello_interval_unusable(value),
    )
    for kind, (value, title) in HELLO_INTERVALS.items()
]


# --- handlers ------------------------------------------------------------------------------------
def raising_handler(ctx: Ctx) -> dict[str, Any]:
    def broken(event: GatewayEvent) -> None:
        if event.seq is not None and event.seq % 3 == 0:
            raise RuntimeError("handler bug")

    return {"sim_overrides": {"event_rate": 0.0}, "handler": broken}


async def handler_raises(h: Harness, pr: Probe, ctx: Ctx) -> Seen:
    await h.sim.emit_events(30)
    await settle(h)
    failures = pr.since(ev.HandlerFailed)
    raising = [e for e in h.rec.payload_events() if e.seq is not None and e.seq % 3 == 0]
    assert len(failures) == len(raising) >= 9
    assert all(f.error_type == "RuntimeError" for f in failures)
    assert not pr.since(ev.Disconnected)
    return Seen(
        f"HandlerFailed x{len(failures)}", None, None, "counted and logged, session untouched"
    )


#: How long the blocking handler holds the event loop.
STALL = 4 * IV


def blocking_handler(ctx: Ctx) -> dict[str, Any]:
    tel = ctx.state["tel"] = Telemetry(
        TelemetryConfig(http_port=None, tracing=False, loop_lag_threshold=STALL / 2),
        process_collectors=False,
    )
    state = ctx.state

    def blocker(event: GatewayEvent) -> None:
        if state.get("armed") and "report" not in state:
            loop = asyncio.get_running_loop()
            state["t0"] = loop.time()
            time.sleep(STALL)  # the bug under test: blocking the loop for several intervals
            state["t1"] = loop.time()
            state["report"] = tel.evaluate()

    return {"handler": blocker, "setup": tel.attach}


async def warm_telemetry(h: Harness, ctx: Ctx) -> None:
    tel: Telemetry = ctx.state["tel"]
    await tel.start()
    ctx.stack.push_async_callback(tel.stop)
    await flowing(h)
    await asyncio.sleep(2 * tel.loop_lag.period)
    assert tel.evaluate().healthy


async def handler_blocks_loop(h: Harness, pr: Probe, ctx: Ctx) -> Seen:
    state = ctx.state
    tel: Telemetry = state["tel"]
    state["armed"] = True
    await h.wait_for(lambda: "report" in state, 10, "the blocking handler")
    stalled = state["report"]
    loop_check = next(c for c in stalled.checks if c.name == "event_loop")
    assert not loop_check.ok and "lag" in loop_check.reason, loop_check
    assert not stalled.healthy
    t1 = state["t1"]
    # Afterwards: a live session with a fresh ACK (resumed if the stall cost the link).
    await h.wait_for(
        lambda: (
            any(e.monotonic > t1 for e in h.rec.of(ev.HeartbeatAcked))
            and h.client.shard_status()[0].state is ConnectionState.READY
        ),
        15 * IV,
        "a live session acked after the stall",
    )
    await h.wait_for(lambda: tel.evaluate().healthy, 10 * IV, "the health report to recover")
    assert tel.loop_lag.max_lag >= STALL / 2
    disconnects = [e for e in pr.since(ev.Disconnected) if e.monotonic >= t1]
    recovery = None
    what = f"event_loop check failed ({loop_check.reason})"
    if disconnects:
        back = await pr.recovered(15 * IV)
        recovery = back.monotonic - t1
        what += f"; then Disconnected({disconnects[0].reason})"
    shared = "the simulator shares the blocked loop, so the link looked idle too; "
    return Seen(
        what,
        (t1 - state["t0"]) / IV,
        recovery,
        (shared if disconnects else "")
        + f"loop lag {tel.loop_lag.max_lag:.2f}s measured; health green again",
    )


#: The slow handler: 50 ms an event (20/s) while 40/s arrive, so the queue grows by ~20/s and
#: reaches its capacity after ~2 s, several heartbeat intervals of a slow, live session.
SLOW_CAPACITY = 40
SLOW_PER_EVENT = 0.05


def slow_handler(ctx: Ctx) -> dict[str, Any]:
    async def slowish(event: GatewayEvent) -> None:
        await asyncio.sleep(SLOW_PER_EVENT)

    return {
        "sim_overrides": {"event_rate": 0.0},
        "handler": slowish,
        "handler_queue_size": SLOW_CAPACITY,
    }


async def handler_slow(h: Harness, pr: Probe, ctx: Ctx) -> Seen:
    h.sim.set_event_rate(2 / SLOW_PER_EVENT)
    disc = await pr.first(ev.Disconnected, 15 * IV, reason_is(p.HANDLER_BACKPRESSURE))
    h.sim.pause_events()
    assert disc.resumable
    back = await pr.recovered_as(ev.SessionResumed, 15 * IV)
    filling = [e for e in pr.since(ev.HeartbeatAcked) if e.monotonic <= disc.monotonic]
    sent = [e for e in pr.since(ev.HeartbeatSent) if e.monotonic <= disc.monotonic]
    # Heartbeats went on, each ACKed before the next, while the handler fell behind.
    assert len(filling) >= 2 and all(e.unacked == 1 for e in sent), (filling, sent)
    await settle(h, timeout=20)
    depths = [e.depth for e in pr.since(ev.HandlerQueueDepth)]
    assert max(depths) == SLOW_CAPACITY  # visible, and bounded
    assert not pr.since(ev.ZombieDetected)
    pauses = [e for e in pr.since(ev.Disconnected) if e.reason == p.HANDLER_BACKPRESSURE]
    return Seen(
        f"Disconnected({disc.reason})",
        pr.intervals(disc),
        back.monotonic - disc.monotonic,
        f"max queue depth {max(depths)}/{SLOW_CAPACITY}; {len(filling)} heartbeats ACKed "
        f"while it filled; {len(pauses)} backpressure pause(s); no zombie; recovery "
        "counted from the pause",
    )


HANDLERS = [
    Fault(
        "handler_raises",
        "Handler raises",
        "handler raises on every 3rd event; 30 events",
        handler_raises,
        launch=raising_handler,
        warmup=warm_ready,
    ),
    Fault(
        "handler_blocks_loop",
        f"Handler blocks the event loop ({STALL:g}s `time.sleep`)",
        "sync handler calls `time.sleep` once; Telemetry attached",
        handler_blocks_loop,
        launch=blocking_handler,
        warmup=warm_telemetry,
    ),
    Fault(
        "handler_slow",
        f"Slow handler ({SLOW_PER_EVENT * 1000:.0f} ms an event, {2 / SLOW_PER_EVENT:.0f} "
        f"events/s, queue of {SLOW_CAPACITY})",
        f"`set_event_rate({2 / SLOW_PER_EVENT:.0f})` against the slow handler",
        handler_slow,
        launch=slow_handler,
        warmup=warm_ready,
    ),
]


# --- shutdown during a reconnect -----------------------------------------------------------------
def _our_tasks() -> list[asyncio.Task[Any]]:
    out = []
    for task in asyncio.all_tasks():
        if task.done() or task is asyncio.current_task():
            continue
        coro: Any = task.get_coro()
        code = getattr(coro, "cr_code", None)
        filename = code.co_filename if code is not None else ""
        if task.get_name().startswith("qqbot") or "qqbot_gateway/adapter" in filename:
            out.append(task)
    return out


def shutdown_during_reconnect(phase: str) -> Callable[[Harness, Probe, Ctx], Awaitable[Seen]]:
    async def act(h: Harness, pr: Probe, ctx: Ctx) -> Seen:
        # The warm-up left the generator paused: a stopped client cannot receive more.
        caught = asyncio.Event()

        def watch(e: ev.LifecycleEvent) -> None:
            if phase == "backoff" and isinstance(e, ev.ReconnectScheduled):
                if e.reason == p.CONNECT_ERROR and e.delay >= 0.5:
                    caught.set()
            elif phase == "handshake" and isinstance(e, ev.ResumeSent):
                caught.set()

        h.client.events.subscribe(watch)
        if phase == "backoff":
            h.sim.refuse_connections("503")
        else:
            h.sim.withhold_ready(True)
        await h.sim.close_connections(4009)
        await asyncio.wait_for(caught.wait(), 30 * IV)
        state_at_close = h.client.shard_status()[0].state
        expected = ConnectionState.BACKOFF if phase == "backoff" else ConnectionState.HANDSHAKING
        assert state_at_close is expected
        first = pr.since(ev.Disconnected)[0]
        t0 = h.loop.time()
        async with asyncio.timeout(10):
            await h.client.close(drain_timeout=1.0)
        took = h.loop.time() - t0
        # drain_timeout 1 s + the 0.5 s close timeout at worst, plus a loaded machine's margin
        assert took < 3.5, f"close() took {took:.2f}s"
        (status,) = h.client.shard_status()
        assert status.state is ConnectionState.STOPPED and not status.task_alive
        assert any(e.reason == "shutdown" for e in pr.since(ev.SupervisorStopped))
        leaked = _our_tasks()
        assert not leaked, leaked
        return seen(pr, first, None, f"close() returned in {took:.2f}s; STOPPED; 0 tasks leaked")

    return act


SHUTDOWN = [
    Fault(
        f"shutdown_in_{phase}",
        f"Shutdown (SIGTERM path) during a reconnect, in {state.value}",
        ("refuse 503" if phase == "backoff" else "`withhold_ready()`")
        + " + close 4009, then `client.close()`",
        shutdown_during_reconnect(phase),
        # A 1 s backoff floor is long enough to be caught in it.
        launch=lambda ctx: {"reconnect": policy(backoff_base=1.0 * SCALE, backoff_cap=2.0 * SCALE)},
        warmup=warm_settled,
    )
    for phase, state in (
        ("backoff", ConnectionState.BACKOFF),
        ("handshake", ConnectionState.HANDSHAKING),
    )
]


# --- the matrix ----------------------------------------------------------------------------------
FAULTS: list[Fault] = [
    *LIVENESS,
    *GATEWAY_CLOSES,
    *TOKENS,
    *DISCOVERY,
    *HANDSHAKE,
    *BAD_FRAMES,
    *HELLO,
    *HANDLERS,
    *SHUTDOWN,
]


report.set_matrix([row.key for row in FAULTS])


def test_the_matrix_keeps_its_51_faults_each_once() -> None:
    keys = [row.key for row in FAULTS]
    assert len(keys) == 51 and len(set(keys)) == len(keys), keys


@pytest.mark.parametrize("row", FAULTS, ids=lambda row: row.key)
async def test_fault(row: Fault, monkeypatch: pytest.MonkeyPatch) -> None:
    async with contextlib.AsyncExitStack() as stack:
        ctx = Ctx(monkeypatch, stack)
        h = await stack.enter_async_context(running(**row.launch(ctx)))
        await row.warmup(h, ctx)
        pr = Probe(h)  # marks the injection: the lifecycle log and the clock from here
        seen = await row.act(h, pr, ctx)
        await finish(
            h,
            key=row.key,
            fault=row.title,
            injection=seen.injection or row.injection,
            detected_as=seen.detected_as,
            detection=seen.detection,
            recovery=seen.recovery,
            notes=seen.notes,
        )


# --- secrets -------------------------------------------------------------------------------------
async def test_no_secret_or_token_in_logs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    """A handful of the faults above, logging captured raw at DEBUG (before any redaction)."""
    caplog.set_level(logging.DEBUG)
    wrong_secret = "wrong-secret-Qm93"
    errors: list[BaseException] = []
    texts: list[str] = []
    monkey = pytest.MonkeyPatch()
    monkey.setattr(api_module, "_backoff", lambda attempt: 0.05 * attempt)
    try:
        async with running(request_timeout=1.0 * SCALE) as h:
            await flowing(h)
            # Token refresh after 4004 with an expired token, then failing token endpoint.
            pr = Probe(h)
            pr.inject()
            h.sim.expire_tokens()
            await h.sim.close_connections(4004)
            await pr.recovered(15 * IV)
            pr.inject()
            h.sim.set_token_fault("500")
            h.sim.expire_tokens()
            await h.sim.close_connections(4004)
            await pr.first(ev.TokenRefreshFailed, 10 * IV)
            h.sim.set_token_fault(None)
            pr.lift()
            await pr.recovered(20 * IV)
            # REST 401 and a REST error that survives the refresh.
            h.sim.expire_tokens()
            await h.client.api.get_me()
            h.sim.set_gateway_fault("500")
            try:
                await h.client.api.get_gateway_bot()
            except QQBotError as exc:
                errors.append(exc)
            h.sim.set_gateway_fault(None)
            # Protocol trouble: op 9, bad frames, a zombie.
            pr.inject()
            await h.sim.send_invalid_session(False)
            await pr.recovered(15 * IV)
            for kind in ("invalid_json", "wrong_types", "binary"):
                await h.sim.send_raw(kind)
            pr.inject()
            h.sim.stop_acks()
            await pr.first(ev.ZombieDetected, 8 * IV)
            h.sim.resume_acks()
            await pr.recovered(15 * IV)
            texts += [repr(e) for e in h.rec.lifecycle] + [str(e) for e in h.rec.lifecycle]
            tokens = h.sim.issued_tokens()
        # Startup failures: a failing token endpoint, then refused credentials.
        for before, secret in (
            (lambda sim: sim.set_token_fault("500"), SECRET),
            (lambda sim: None, wrong_secret),
        ):
            with pytest.raises(QQBotError) as info:
                await launch(before_start=before, client_secret=Secret(secret))
            errors.append(info.value)
    finally:
        monkey.undo()
    assert len(tokens) >= 3
    for err in errors:
        texts += [str(err), repr(err), *getattr(err, "__notes__", [])]
    texts.append(caplog.text)
    for record in caplog.records:
        texts.append(record.getMessage())
        if record.exc_info:
            texts.append(logging.Formatter().formatException(record.exc_info))
    blob = "\n".join(texts)
    # The scenarios did log, at DEBUG too, about tokens.
    assert any(r.levelno == logging.DEBUG for r in caplog.records)
    assert "access token" in blob
    for needle in (SECRET, wrong_secret, *tokens):
        assert needle not in blob, "a secret or an access token leaked into logs or errors"


# --- found by the matrix -----------------------------------------------------------------------
async def test_failed_start_releases_its_http_sessions() -> None:
    sim = Simulator(sim_config(heartbeat_interval_ms=IV_MS))
    await sim.start("127.0.0.1", 0)
    client = QQBotClient(client_config(sim))
    try:
        sim.set_token_fault("500")
        with contextlib.suppress(QQBotError):
            async with client:
                pass
        # White-box on purpose: the leak shows as a ResourceWarning only when the sessions are
        # garbage collected, at a moment a test cannot pin down.
        sessions = [client._http, client._ws_http]
        assert all(s is None or s.closed for s in sessions), "aiohttp sessions left open"
    finally:
        await client.close(drain_timeout=0.1)  # release them here, whatever the verdict
        await sim.stop()
