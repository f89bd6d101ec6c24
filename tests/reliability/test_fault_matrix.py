"""The fault matrix: one test per fault, against the simulator over real sockets.

Every test injects one fault into a running session (or before the first one), checks how it
was detected and how the client recovered, and then balances the books by event id and by
(session id, seq): every dispatch the simulator emitted (and did not itself discard with a
session it invalidated) reached the handler exactly once, in seq order. Each test records a row
(``report.py``); ``--update-report`` writes the table to ``docs/reliability.md``.

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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
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

pytestmark = pytest.mark.timeout(60)

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


# --- liveness: the link dies silently -----------------------------------------------------------
async def test_half_open_link() -> None:
    async with running() as h:
        await flowing(h)
        pr = Probe(h)
        await in_flight(h)
        pr.inject()
        assert h.sim.blackhole() == 1
        zombie = await pr.first(ev.ZombieDetected, 8 * IV)
        # The simulator answers pings: the ping layer is armed and fires first. Worst case by
        # design 0.05 H of quiet, then the pong deadline at its floor (0.3 H).
        assert zombie.reason == p.PING_TIMEOUT
        assert pr.intervals(zombie) <= within(0.35)
        back = await pr.recovered(15 * IV)
        assert isinstance(back, ev.SessionResumed)
        assert len(h.sim.sessions_created) == 1
        h.sim.unblackhole()
        await finish(
            h,
            key="half_open",
            fault="Half-open link (nothing in or out, socket kept open)",
            injection="`blackhole()` both ways on the live connection",
            detected_as=f"ZombieDetected({zombie.reason})",
            detection=pr.intervals(zombie),
            recovery=pr.recovery(back),
            notes="resumed, no new session",
        )


async def test_server_stops_acking_but_keeps_sending() -> None:
    async with running() as h:
        await flowing(h)
        pr = Probe(h)
        pr.lift_when(ev.ZombieDetected, h.sim.resume_acks)
        await in_flight(h)
        pr.inject()
        h.sim.stop_acks()
        zombie = await pr.first(ev.ZombieDetected, 8 * IV)
        assert zombie.reason == p.ACK_TIMEOUT  # events and pongs kept arriving
        assert zombie.unacked == 3  # the heartbeat and its two probes
        # the next heartbeat within 1 H, its ACK deadline (floor) 0.4 H later
        assert pr.intervals(zombie) <= within(1.4)
        back = await pr.recovered(15 * IV)
        assert isinstance(back, ev.SessionResumed)
        await finish(
            h,
            key="acks_stopped",
            fault="Server stops ACKing, keeps sending events",
            injection="`stop_acks()`; `resume_acks()` once detected",
            detected_as=f"ZombieDetected({zombie.reason}, {zombie.unacked} unacked)",
            detection=pr.intervals(zombie),
            recovery=pr.recovery(back),
        )


async def test_server_stops_sending_anything() -> None:
    async with running() as h:
        await flowing(h)
        pr = Probe(h)
        pr.lift_when(ev.ZombieDetected, lambda: h.sim.set_outgoing_delay(0.0))
        await in_flight(h)
        pr.inject()
        # Every frame the server writes is held back (ACKs and events alike) while it keeps
        # reading heartbeats and generating events: a write-side blackhole.
        h.sim.set_outgoing_delay(120.0)
        zombie = await pr.first(ev.ZombieDetected, 8 * IV)
        # Pongs still flow (the WebSocket layer answers them, not the gateway's writer), so
        # the link is alive for the ping and idle layers: the ACK deadline decides.
        assert zombie.reason == p.ACK_TIMEOUT
        assert pr.intervals(zombie) <= within(1.4)
        back = await pr.recovered(15 * IV)
        assert isinstance(back, ev.SessionResumed)
        await finish(
            h,
            key="server_silent",
            fault="Server stops sending anything (still reads, still generates events)",
            injection="`set_outgoing_delay(120)` on every write; 0 once detected",
            detected_as=f"ZombieDetected({zombie.reason})",
            detection=pr.intervals(zombie),
            recovery=pr.recovery(back),
            notes=f"events held server-side were replayed on resume ({back.replayed} replayed)",
        )


# --- close codes and gateway opcodes -----------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "mode"),
    [
        (4009, "resume"),
        (4006, "identify"),
        (4007, "identify"),
        (4900, "identify"),
        (4913, "identify"),
    ],
)
async def test_close_code(code: int, mode: str) -> None:
    async with running() as h:
        await flowing(h)
        pr = Probe(h)
        await in_flight(h)
        pr.inject()
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
        await finish(
            h,
            key=f"close_{code}",
            fault=f"Close {code} ({p.classify_close(code).meaning})",
            injection=f"`close_connections({code})`",
            detected_as=f"Disconnected({disc.reason})",
            detection=pr.intervals(disc),
            recovery=pr.recovery(back),
            notes="resumed" if mode == "resume" else "identified (new session)",
        )


async def test_close_4008_waits_then_resumes() -> None:
    wait = 2 * IV
    async with running(reconnect=policy(rate_limit_wait=wait)) as h:
        await flowing(h)
        pr = Probe(h)
        await in_flight(h)
        pr.inject()
        await h.sim.close_connections(4008, "sending too fast")
        disc = await pr.first(ev.Disconnected, 5 * IV)
        assert disc.close_code == 4008 and disc.resumable
        back = await pr.recovered(15 * IV)
        assert isinstance(back, ev.SessionResumed)
        (scheduled, *_) = pr.since(ev.ReconnectScheduled)
        assert scheduled.delay >= wait and scheduled.mode == "resume"
        (attempt, *_) = pr.since(ev.ConnectAttempt)
        gap = attempt.monotonic - disc.monotonic
        assert gap >= wait - 0.01, f"reconnected after {gap:.3f}s, rate_limit_wait {wait}s"
        await finish(
            h,
            key="close_4008",
            fault="Close 4008 (sending too fast)",
            injection="`close_connections(4008)`",
            detected_as=f"Disconnected({disc.reason})",
            detection=pr.intervals(disc),
            recovery=pr.recovery(back),
            notes=f"waited {gap:.2f}s (rate_limit_wait {wait:g}s), then resumed",
        )


async def test_close_4004_refreshes_token_then_identifies() -> None:
    async with running() as h:
        await flowing(h)
        pr = Probe(h)
        await in_flight(h)
        pr.inject()
        await h.sim.close_connections(4004, "authentication fail")
        disc = await pr.first(ev.Disconnected, 5 * IV)
        assert disc.close_code == 4004
        refreshed = await pr.first(ev.TokenRefreshed, 5 * IV, lambda e: e.forced)
        back = await pr.recovered(15 * IV)
        assert isinstance(back, ev.SessionReady)
        (identify, *_) = pr.since(ev.IdentifySent)
        assert refreshed.monotonic <= identify.monotonic
        await finish(
            h,
            key="close_4004",
            fault="Close 4004 (authentication failed)",
            injection="`close_connections(4004)`",
            detected_as=f"Disconnected({disc.reason})",
            detection=pr.intervals(disc),
            recovery=pr.recovery(back),
            notes="forced token refresh, then identify",
        )


@pytest.mark.parametrize("code", [4914, 4915, 4013, 4014])
async def test_fatal_close_code_stops_the_shard(code: int) -> None:
    async with running() as h:
        await flowing(h)
        pr = Probe(h)
        await in_flight(h)
        pr.inject()
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
        await finish(
            h,
            key=f"close_{code}",
            fault=f"Close {code} ({p.classify_close(code).meaning})",
            injection=f"`close_connections({code})`",
            detected_as=f"ShardFatal({fatal.reason})",
            detection=pr.intervals(fatal),
            recovery=None,
            notes="FATAL state, 0 reconnect attempts in the next 4 intervals",
        )


async def test_op7_reconnect() -> None:
    async with running() as h:
        await flowing(h)
        pr = Probe(h)
        await in_flight(h)
        pr.inject()
        await h.sim.send_reconnect()
        disc = await pr.first(ev.Disconnected, 5 * IV)
        assert disc.reason == p.RECONNECT_REQUESTED
        back = await pr.recovered(15 * IV)
        assert isinstance(back, ev.SessionResumed)
        await finish(
            h,
            key="op7",
            fault="op 7 Reconnect",
            injection="`send_reconnect()`",
            detected_as=f"Disconnected({disc.reason})",
            detection=pr.intervals(disc),
            recovery=pr.recovery(back),
            notes="resumed",
        )


@pytest.mark.parametrize("resumable", [True, False])
async def test_op9_invalid_session(resumable: bool) -> None:
    async with running() as h:
        await flowing(h)
        pr = Probe(h)
        await in_flight(h)
        pr.inject()
        # true: the server leaves the socket open (the client must close); false: then 4006.
        await h.sim.send_invalid_session(resumable, close_code=None if resumable else "config")
        disc = await pr.first(ev.Disconnected, 5 * IV)
        assert disc.reason == p.INVALID_SESSION and disc.resumable is resumable
        back = await pr.recovered(15 * IV)
        expected = ev.SessionResumed if resumable else ev.SessionReady
        assert isinstance(back, expected)
        assert len(h.sim.sessions_created) == (1 if resumable else 2)
        await finish(
            h,
            key=f"op9_{str(resumable).lower()}",
            fault=f"op 9 Invalid Session (d={str(resumable).lower()})",
            injection=f"`send_invalid_session({resumable})`"
            + ("" if resumable else " (then close 4006)"),
            detected_as=f"Disconnected({disc.reason})",
            detection=pr.intervals(disc),
            recovery=pr.recovery(back),
            notes="resumed" if resumable else "identified (new session)",
        )


async def test_resume_rejected() -> None:
    async with running() as h:
        await flowing(h)
        pr = Probe(h)
        await in_flight(h)
        pr.inject()
        h.sim.reject_next_resumes(3)
        await h.sim.close_connections(4009)
        rejected = await pr.first(ev.Disconnected, 10 * IV, reason_is(p.INVALID_SESSION))
        back = await pr.recovered(15 * IV)
        assert isinstance(back, ev.SessionReady)
        outcomes = [r.outcome for r in h.sim.resumes]
        # op 9 false says "cannot resume": one rejection is enough to identify, the client
        # must not retry the dead session (the other two rejections stay unused).
        assert outcomes.count("rejected_fault") == 1, outcomes
        h.sim.reset_faults()
        await finish(
            h,
            key="resume_rejected",
            fault="Resume rejected (op 9 false on Resume)",
            injection="`reject_next_resumes(3)` + close 4009",
            detected_as=f"Disconnected({rejected.reason})",
            detection=pr.intervals(rejected),
            recovery=pr.recovery(back),
            notes="identified after the first rejection (op 9 false is final)",
        )


async def test_resume_unanswered_falls_back_to_identify() -> None:
    lv = liveness(handshake_timeout=2 * IV)
    async with running(liveness=lv) as h:
        await flowing(h)
        # The resumes that go unanswered are abandoned with their session: pause the generator
        # so the abandoned session holds no undelivered events (QQ would drop those too).
        await settle(h)
        pr = Probe(h)
        pr.lift_when(
            ev.ReconnectScheduled,
            lambda: h.sim.withhold_ready(False),
            lambda e: e.mode == "identify",
        )
        pr.inject()
        h.sim.withhold_ready(True)
        await h.sim.close_connections(4009)
        first = await pr.first(ev.Disconnected, 10 * IV, reason_is(p.HANDSHAKE_TIMEOUT))
        back = await pr.recovered(30 * IV)
        assert isinstance(back, ev.SessionReady)
        failures = [e for e in pr.since(ev.Disconnected) if e.reason == p.HANDSHAKE_TIMEOUT]
        assert len(pr.since(ev.ResumeSent)) == lv.max_resume_failures
        assert len(failures) == lv.max_resume_failures
        assert len(h.sim.sessions_created) == 2
        await h.sim.emit_events(10, session_id=back.session_id)
        await finish(
            h,
            key="resume_unanswered",
            fault=f"Resume never answered ({lv.max_resume_failures} times)",
            injection="`withhold_ready()` + close 4009, generator paused; "
            "lifted when the client schedules an identify",
            detected_as=f"Disconnected({first.reason})",
            detection=pr.intervals(first),
            recovery=pr.recovery(back),
            notes=f"identify after max_resume_failures={lv.max_resume_failures}",
        )


# --- access token --------------------------------------------------------------------------------
TOKEN_FAULTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "500": ("token_500", "Token endpoint HTTP 500", {"mode": "500"}),
    "slow": ("token_slow", "Token endpoint slow (2.5 s, request timeout 1 s)", {"delay": 2.5}),
    "error_200": (
        "token_error_200",
        "Token endpoint error body with HTTP 200",
        {"mode": "error_200"},
    ),
    "malformed": (
        "token_malformed",
        "Token endpoint answers malformed JSON",
        {"mode": "malformed"},
    ),
}


@pytest.mark.parametrize("kind", list(TOKEN_FAULTS))
async def test_token_endpoint_failing(kind: str) -> None:
    key, fault, params = TOKEN_FAULTS[kind]
    pol = policy()
    async with running(request_timeout=1.0 * SCALE, reconnect=pol) as h:
        await flowing(h)
        pr = Probe(h)
        await in_flight(h)
        pr.inject()
        h.sim.set_token_fault(params.get("mode"), delay=params.get("delay", 0.0) * SCALE)
        h.sim.expire_tokens()  # the gateway now refuses the old token: a new one is needed
        identifies = len(h.sim.identifies)
        await h.sim.close_connections(4004)
        failed = await pr.first(ev.TokenRefreshFailed, 10 * IV)
        await asyncio.sleep(5 * IV)
        window = h.loop.time() - pr.t_inject
        attempts = pr.attempts()
        assert 1 <= attempts <= attempt_ceiling(window, pol), attempts
        assert not pr.since(ev.SessionReady)
        assert SECRET not in failed.error
        if kind == "slow":  # the client's request_timeout, not a default of its own
            assert f"after {1.0 * SCALE:g}s" in failed.error, failed.error
        # The refused token is never sent again: no Identify until a new token exists.
        assert len(h.sim.identifies) == identifies
        h.sim.set_token_fault(None)
        pr.lift()
        lifted = h.loop.time()
        back = await pr.recovered(20 * IV)
        assert isinstance(back, ev.SessionReady)
        assert any(e.monotonic >= lifted for e in pr.since(ev.TokenRefreshed))
        await finish(
            h,
            key=key,
            fault=fault,
            injection=f"`set_token_fault({params})` + `expire_tokens()` + close 4004; "
            f"held {window:.1f}s",
            detected_as=f"TokenRefreshFailed ({failed.error.split(':')[0]})",
            detection=pr.intervals(failed),
            recovery=pr.recovery(back),
            notes=f"{attempts} attempts in {window:.1f}s (ceiling "
            f"{attempt_ceiling(window, pol)}), identify with the new token",
        )


async def test_token_expires_in_60() -> None:
    async with running() as h:
        await flowing(h)
        pr = Probe(h)
        await in_flight(h)
        pr.inject()
        h.sim.set_token_fault(None, expires_in="60")
        h.sim.expire_tokens()
        await h.sim.close_connections(4004)
        disc = await pr.first(ev.Disconnected, 5 * IV)
        refreshed = await pr.first(ev.TokenRefreshed, 10 * IV)
        assert refreshed.expires_in == 60.0
        back = await pr.recovered(15 * IV)
        left = h.client.tokens.expires_in
        assert left is not None and 50 < left <= 60
        await finish(
            h,
            key="token_expires_60",
            fault='Token with `expires_in` "60" (last minute of the old one)',
            injection='`set_token_fault(expires_in="60")` + `expire_tokens()` + close 4004',
            detected_as=f"Disconnected({disc.reason})",
            detection=pr.intervals(disc),
            recovery=pr.recovery(back),
            notes=f"accepted, {left:.0f}s left; the session continues",
        )


async def test_token_expired_mid_session_gateway() -> None:
    async with running() as h:
        await flowing(h)
        pr = Probe(h)
        await in_flight(h)
        pr.inject()
        h.sim.expire_tokens()
        await h.sim.close_connections(4004)
        disc = await pr.first(ev.Disconnected, 5 * IV)
        await pr.first(ev.TokenRefreshed, 10 * IV, lambda e: e.forced)
        back = await pr.recovered(15 * IV)
        assert isinstance(back, ev.SessionReady)
        tokens = h.sim.issued_tokens()
        assert len(tokens) == 2  # the first, and the one fetched after the 4004
        await finish(
            h,
            key="token_expired_4004",
            fault="Token expires mid-session (gateway)",
            injection="`expire_tokens()` + close 4004",
            detected_as=f"Disconnected({disc.reason})",
            detection=pr.intervals(disc),
            recovery=pr.recovery(back),
            notes="forced refresh, identify with the new token",
        )


async def test_token_expired_mid_session_rest() -> None:
    async with running() as h:
        await flowing(h)
        pr = Probe(h)
        pr.inject()
        h.sim.expire_tokens()
        me = await h.client.api.get_me()
        took = h.loop.time() - pr.t_inject
        assert me["id"]
        refreshed = await pr.first(ev.TokenRefreshed, 5 * IV, lambda e: e.forced)
        await asyncio.sleep(2 * IV)
        assert not pr.since(ev.Disconnected)  # the gateway session was never touched
        await finish(
            h,
            key="token_expired_rest_401",
            fault="Token expires mid-session (REST 401 / 11244)",
            injection="`expire_tokens()`, then `api.get_me()`",
            detected_as="HTTP 401 → forced refresh",
            detection=None,
            recovery=None,
            notes=f"request retried once with the new token, {took * 1000:.0f} ms in all; "
            f"refresh at +{(refreshed.monotonic - pr.t_inject) * 1000:.0f} ms; no disconnect",
        )


# --- discovery, connecting -----------------------------------------------------------------------
GATEWAY_FAULTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "500": ("gateway_bot_500", "`/gateway/bot` HTTP 500", {"mode": "500"}),
    "503": ("gateway_bot_503", "`/gateway/bot` HTTP 503", {"mode": "503"}),
    "timeout": (
        "gateway_bot_timeout",
        "`/gateway/bot` times out (2 s, timeout 0.75 s)",
        {"delay": 2.0},
    ),
    "malformed": ("gateway_bot_malformed", "`/gateway/bot` malformed JSON", {"mode": "malformed"}),
}


@pytest.mark.parametrize("kind", list(GATEWAY_FAULTS))
async def test_gateway_bot_failing(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    key, fault, params = GATEWAY_FAULTS[kind]
    # The OpenAPI client retries a failed GET 3 times with uniform(0, 0.5 * 2**n) s before the
    # supervisor sees the error; scaled down here so the test fits its time budget.
    monkeypatch.setattr(api_module, "_backoff", lambda attempt: 0.05 * attempt)
    pol = policy()
    # No gateway_url: the client discovers the URL with GET /gateway/bot. The supervisor keeps
    # it until a WebSocket connect fails, so the fault comes with refused connections (503) to
    # force a fresh discovery; connections are accepted again once it failed.
    async with running(request_timeout=0.75 * SCALE, reconnect=pol) as h:
        assert h.client.config.gateway_url is None
        await flowing(h)
        pr = Probe(h)
        await in_flight(h)
        pr.inject()
        h.sim.set_gateway_fault(params.get("mode"), delay=params.get("delay", 0.0) * SCALE)
        h.sim.refuse_connections("503")
        await h.sim.close_connections(4009)
        failed = await pr.first(ev.Disconnected, 40 * IV, reason_is(p.GATEWAY_URL_ERROR))
        h.sim.accept_connections()
        await asyncio.sleep(3 * IV)
        window = h.loop.time() - pr.t_inject
        attempts = pr.attempts()
        assert 2 <= attempts <= attempt_ceiling(window, pol), attempts
        assert not pr.since(ev.SessionResumed)
        h.sim.set_gateway_fault(None)
        pr.lift()
        back = await pr.recovered(30 * IV)
        assert isinstance(back, ev.SessionResumed)
        await finish(
            h,
            key=key,
            fault=fault,
            injection=f"`set_gateway_fault({params})` + refuse 503 + close 4009 "
            "(forces re-discovery)",
            detected_as=f"Disconnected({failed.reason})",
            detection=pr.intervals(failed),
            recovery=pr.recovery(back),
            notes=f"{attempts} attempts in {window:.1f}s (ceiling "
            f"{attempt_ceiling(window, pol)}); resumed; OpenAPI's own GET retry waits "
            "shortened in the test",
        )


@pytest.mark.parametrize("mode", ["503", "reset"])
async def test_connection_refused(mode: str) -> None:
    pol = policy()
    async with running(reconnect=pol) as h:
        await flowing(h)
        pr = Probe(h)
        await in_flight(h)
        pr.inject()
        h.sim.refuse_connections(mode)
        await h.sim.close_connections(4009)
        failed = await pr.first(ev.Disconnected, 10 * IV, reason_is(p.CONNECT_ERROR))
        await asyncio.sleep(6 * IV)
        window = h.loop.time() - pr.t_inject
        attempts = pr.attempts()
        assert 3 <= attempts <= attempt_ceiling(window, pol), attempts
        assert h.sim.refused_connections >= attempts - 1
        h.sim.accept_connections()
        pr.lift()
        back = await pr.recovered(20 * IV)
        assert isinstance(back, ev.SessionResumed)
        how = "upgrade answered 503" if mode == "503" else "TCP reset"
        await finish(
            h,
            key=f"refused_{mode}",
            fault=f"Connection refused ({how})",
            injection=f'`refuse_connections("{mode}")` + close 4009; held {window:.1f}s',
            detected_as=f"Disconnected({failed.reason})",
            detection=pr.intervals(failed),
            recovery=pr.recovery(back),
            notes=f"{attempts} attempts in {window:.1f}s (ceiling "
            f"{attempt_ceiling(window, pol)}); resumed",
        )


@pytest.mark.parametrize("target", ["gateway_url", "api_base"])
async def test_dns_failure(target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # As in test_gateway_bot_failing: the OpenAPI client's own GET retry waits, shortened.
    monkeypatch.setattr(api_module, "_backoff", lambda attempt: 0.05 * attempt)
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo
    dns = {"down": True, "lookups": 0}

    async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        # A local stand-in for the resolver: .invalid never resolves (RFC 6761), answered at
        # once with NXDOMAIN, no query leaves the machine; "healed", the name maps to loopback.
        if host == INVALID_HOST:
            dns["lookups"] += 1
            if dns["down"]:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            host = "127.0.0.1"
        return await real(host, port, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)

    def endpoints(sim: Simulator) -> dict[str, Any]:
        if target == "gateway_url":
            return {"gateway_url": f"ws://{INVALID_HOST}:{sim.port}/websocket"}
        return {"api_base": f"http://{INVALID_HOST}:{sim.port}"}

    pol = policy()
    t0 = loop.time()
    async with running(sim_dependent=endpoints, reconnect=pol, request_timeout=1.0 * SCALE) as h:
        pr = Probe(h)
        pr.mark, pr.t_inject = 0, t0
        reason = p.CONNECT_ERROR if target == "gateway_url" else p.GATEWAY_URL_ERROR
        failed = await pr.first(ev.Disconnected, 10 * IV, reason_is(reason))
        await asyncio.sleep(6 * IV)
        window = h.loop.time() - t0
        attempts = pr.attempts()
        assert 2 <= attempts <= attempt_ceiling(window, pol), attempts
        assert dns["lookups"] >= attempts - 1
        assert not h.rec.of(ev.SessionReady)
        dns["down"] = False
        pr.lift()
        back = await pr.recovered(20 * IV)
        assert isinstance(back, ev.SessionReady)
        await flowing(h)
        await finish(
            h,
            key=f"dns_{target}",
            fault=f"DNS failure ({target} host `{INVALID_HOST}`)",
            injection=f"{target} on a `.invalid` host from the start; resolver stubbed "
            f"in-process (NXDOMAIN, then loopback); held {window:.1f}s",
            detected_as=f"Disconnected({failed.reason})",
            detection=pr.intervals(failed),
            recovery=pr.recovery(back),
            notes=f"{attempts} attempts in {window:.1f}s (ceiling "
            f"{attempt_ceiling(window, pol)}); no query left the machine",
        )


# --- handshake ---------------------------------------------------------------------------------
async def test_hello_never_arrives() -> None:
    async with running() as h:
        await flowing(h)
        pr = Probe(h)
        pr.lift_when(
            ev.Disconnected, lambda: h.sim.withhold_hello(False), reason_is(p.HELLO_TIMEOUT)
        )
        await in_flight(h)
        pr.inject()
        h.sim.withhold_hello(True)
        await h.sim.close_connections(4009)
        failed = await pr.first(ev.Disconnected, 15 * IV, reason_is(p.HELLO_TIMEOUT))
        opened = next(e for e in pr.since(ev.Connected))
        waited = failed.monotonic - opened.monotonic
        assert 3 * IV - 0.05 <= waited <= 3 * IV + 1.0
        back = await pr.recovered(15 * IV)
        assert isinstance(back, ev.SessionResumed)
        await finish(
            h,
            key="hello_withheld",
            fault="Hello never arrives",
            injection="`withhold_hello()` + close 4009; lifted once detected",
            detected_as=f"Disconnected({failed.reason})",
            detection=pr.intervals(failed),
            recovery=pr.recovery(back),
            notes=f"hello_timeout {3 * IV:g}s after the socket opened ({waited:.2f}s); resumed",
        )


async def test_ready_never_arrives() -> None:
    async with running() as h:
        await flowing(h)
        pr = Probe(h)
        pr.lift_when(
            ev.Disconnected, lambda: h.sim.withhold_ready(False), reason_is(p.HANDSHAKE_TIMEOUT)
        )
        await in_flight(h)
        pr.inject()
        h.sim.withhold_ready(True)
        await h.sim.close_connections(4009)
        failed = await pr.first(ev.Disconnected, 15 * IV, reason_is(p.HANDSHAKE_TIMEOUT))
        back = await pr.recovered(15 * IV)
        assert isinstance(back, ev.SessionResumed)
        await finish(
            h,
            key="ready_withheld",
            fault="READY / RESUMED never arrives",
            injection="`withhold_ready()` + close 4009; lifted once detected",
            detected_as=f"Disconnected({failed.reason})",
            detection=pr.intervals(failed),
            recovery=pr.recovery(back),
            notes="handshake_timeout, then resumed",
        )


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


@pytest.mark.parametrize("kind", list(RAW_FAULTS))
async def test_bad_frame(kind: str) -> None:
    transport = TransportConfig(
        connect_timeout=3.0, close_timeout=0.5, send_timeout=2.0, max_frame_size=MAX_FRAME
    )
    async with running(transport=transport) as h:
        await flowing(h)
        pr = Probe(h)
        await in_flight(h)
        pr.inject()
        assert await h.sim.send_raw(kind, size=4 * MAX_FRAME) == 1
        recovery: float | None = None
        detection: float | None = None
        if kind == "huge":
            disc = await pr.first(ev.Disconnected, 5 * IV)
            assert disc.reason == p.PROTOCOL_ERROR, disc  # was network_error before bad0851
            back = await pr.recovered(15 * IV)
            assert isinstance(back, ev.SessionResumed)
            detected_as = f"Disconnected({disc.reason})"
            detection, recovery = pr.intervals(disc), pr.recovery(back)
            notes = "connection dropped, resumed"
        elif kind == "unknown_op":
            seen = await pr.first(ev.FrameReceived, 5 * IV, lambda e: e.op == 42)
            detected_as = f"FrameReceived(op={seen.op}), ignored"
            notes = "passes through, session untouched"
        else:
            violation = await pr.first(ev.ProtocolViolation, 5 * IV)
            detected_as = f"ProtocolViolation: {violation.detail}"
            notes = "counted, session untouched"
        if kind != "huge":
            await asyncio.sleep(2 * IV)
            assert not pr.since(ev.Disconnected)
            assert not pr.since(ev.ZombieDetected)
        await finish(
            h,
            key=f"raw_{kind}",
            fault=RAW_FAULTS[kind],
            injection=f'`send_raw("{kind}")`',
            detected_as=detected_as,
            detection=detection,
            recovery=recovery,
            notes=notes,
        )


# --- Hello's heartbeat_interval ------------------------------------------------------------------
HELLO_INTERVALS: dict[str, tuple[Any, str]] = {
    "tiny": (1, "Hello `heartbeat_interval` 1 ms"),
    "zero": (0, "Hello `heartbeat_interval` 0"),
    "malformed": ("abc", 'Hello `heartbeat_interval` "abc"'),
    "missing": (MISSING, "Hello without `heartbeat_interval`"),
}


@pytest.mark.parametrize("kind", list(HELLO_INTERVALS))
async def test_hello_interval(kind: str) -> None:
    value, fault = HELLO_INTERVALS[kind]
    lv = liveness()
    pol = policy()
    async with running(liveness=lv, reconnect=pol) as h:
        await flowing(h)
        pr = Probe(h)
        await in_flight(h)
        pr.inject()
        h.sim.set_hello_interval(value)
        await h.sim.close_connections(4009)
        if kind == "tiny":
            hello = await pr.first(ev.HelloReceived, 5 * IV)
            assert hello.heartbeat_interval == pytest.approx(lv.min_heartbeat_interval)
            back = await pr.recovered(15 * IV)
            assert isinstance(back, ev.SessionResumed)
            h.sim.clear_hello_interval()  # new connections only; this one keeps 0.2 s
            t1 = h.loop.time()
            await asyncio.sleep(8 * lv.min_heartbeat_interval)
            beats = [e for e in h.rec.of(ev.HeartbeatSent) if e.monotonic >= t1]
            rate = len(beats) / (h.loop.time() - t1)
            # Clamped to 0.2 s: about 5 a second. A 1 ms interval would be about 1000.
            assert rate <= 1.5 / lv.min_heartbeat_interval, rate
            assert not pr.since(ev.ZombieDetected)
            await finish(
                h,
                key="hello_interval_tiny",
                fault=fault,
                injection="`set_hello_interval(1)` + close 4009",
                detected_as=f"clamped to {hello.heartbeat_interval:g}s",
                detection=None,
                recovery=pr.recovery(back),
                notes=f"{rate:.1f} heartbeats/s (ceiling {1.5 / lv.min_heartbeat_interval:g}); "
                "resumed",
            )
            return
        failed = await pr.first(ev.Disconnected, 5 * IV, reason_is(p.PROTOCOL_ERROR))
        await asyncio.sleep(4 * IV)
        window = h.loop.time() - pr.t_inject
        attempts = pr.attempts()
        assert 1 <= attempts <= attempt_ceiling(window, pol), attempts
        # No heartbeat without a usable interval, let alone a storm.
        assert not pr.since(ev.HeartbeatSent)
        assert not pr.since(ev.SessionResumed)
        h.sim.clear_hello_interval()
        pr.lift()
        back = await pr.recovered(15 * IV)
        assert isinstance(back, ev.SessionResumed)
        await finish(
            h,
            key=f"hello_interval_{kind}",
            fault=fault,
            injection=f"`set_hello_interval({'MISSING' if value is MISSING else repr(value)})` "
            f"+ close 4009; held {window:.1f}s",
            detected_as=f"Disconnected({failed.reason})",
            detection=pr.intervals(failed),
            recovery=pr.recovery(back),
            notes=f"refused as unusable; {attempts} attempts in {window:.1f}s (ceiling "
            f"{attempt_ceiling(window, pol)}), 0 heartbeats; resumed",
        )


# --- handlers ------------------------------------------------------------------------------------
async def test_handler_raises() -> None:
    def broken(event: GatewayEvent) -> None:
        if event.seq is not None and event.seq % 3 == 0:
            raise RuntimeError("handler bug")

    async with running({"event_rate": 0.0}, handler=broken) as h:
        await h.ready()
        pr = Probe(h)
        pr.inject()
        await h.sim.emit_events(30)
        await settle(h)
        failures = pr.since(ev.HandlerFailed)
        raising = [e for e in h.rec.payload_events() if e.seq is not None and e.seq % 3 == 0]
        assert len(failures) == len(raising) >= 9
        assert all(f.error_type == "RuntimeError" for f in failures)
        assert not pr.since(ev.Disconnected)
        await finish(
            h,
            key="handler_raises",
            fault="Handler raises",
            injection="handler raises on every 3rd event; 30 events",
            detected_as=f"HandlerFailed x{len(failures)}",
            detection=None,
            recovery=None,
            notes="counted and logged, session untouched",
        )


async def test_handler_blocks_the_event_loop() -> None:
    stall = 4 * IV
    tel = Telemetry(
        TelemetryConfig(http_port=None, tracing=False, loop_lag_threshold=stall / 2),
        process_collectors=False,
    )
    state: dict[str, Any] = {"armed": False}

    def blocker(event: GatewayEvent) -> None:
        if state["armed"] and "report" not in state:
            loop = asyncio.get_running_loop()
            state["t0"] = loop.time()
            time.sleep(stall)  # the bug under test: blocking the loop for several intervals
            state["t1"] = loop.time()
            state["report"] = tel.evaluate()

    async with running(handler=blocker, setup=tel.attach) as h:
        await tel.start()
        try:
            await flowing(h)
            await asyncio.sleep(2 * tel.loop_lag.period)
            assert tel.evaluate().healthy
            pr = Probe(h)
            pr.inject()
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
            await h.wait_for(
                lambda: tel.evaluate().healthy, 10 * IV, "the health report to recover"
            )
            assert tel.loop_lag.max_lag >= stall / 2
            disconnects = [e for e in pr.since(ev.Disconnected) if e.monotonic >= t1]
            recovery = None
            if disconnects:
                back = await pr.recovered(15 * IV)
                recovery = back.monotonic - t1
            what = f"event_loop check failed ({loop_check.reason})"
            if disconnects:
                what += f"; then Disconnected({disconnects[0].reason})"
            await finish(
                h,
                key="handler_blocks_loop",
                fault=f"Handler blocks the event loop ({stall:g}s `time.sleep`)",
                injection="sync handler calls `time.sleep` once; Telemetry attached",
                detected_as=what,
                detection=(t1 - state["t0"]) / IV,
                recovery=recovery,
                notes=(
                    "the simulator shares the blocked loop, so the link looked idle too; "
                    if disconnects
                    else ""
                )
                + f"loop lag {tel.loop_lag.max_lag:.2f}s measured; health green again",
            )
        finally:
            await tel.stop()


async def test_slow_handler_backpressure() -> None:
    # The handler takes 50 ms an event (20/s) while 40/s arrive: the queue grows by ~20/s and
    # reaches its capacity after ~2 s, several heartbeat intervals of a slow, live session.
    capacity = 40
    per_event = 0.05

    async def slowish(event: GatewayEvent) -> None:
        await asyncio.sleep(per_event)

    async with running({"event_rate": 0.0}, handler=slowish, handler_queue_size=capacity) as h:
        await h.ready()
        pr = Probe(h)
        pr.inject()
        h.sim.set_event_rate(2 / per_event)
        disc = await pr.first(ev.Disconnected, 15 * IV, reason_is(p.HANDLER_BACKPRESSURE))
        h.sim.pause_events()
        assert disc.resumable
        back = await pr.recovered(15 * IV)
        assert isinstance(back, ev.SessionResumed)
        filling = [e for e in pr.since(ev.HeartbeatAcked) if e.monotonic <= disc.monotonic]
        sent = [e for e in pr.since(ev.HeartbeatSent) if e.monotonic <= disc.monotonic]
        # Heartbeats went on, each ACKed before the next, while the handler fell behind.
        assert len(filling) >= 2 and all(e.unacked == 1 for e in sent), (filling, sent)
        await settle(h, timeout=20)
        depths = [e.depth for e in pr.since(ev.HandlerQueueDepth)]
        assert max(depths) == capacity  # visible, and bounded
        assert not pr.since(ev.ZombieDetected)
        pauses = [e for e in pr.since(ev.Disconnected) if e.reason == p.HANDLER_BACKPRESSURE]
        await finish(
            h,
            key="handler_slow",
            fault=f"Slow handler ({per_event * 1000:.0f} ms an event, {2 / per_event:.0f} "
            f"events/s, queue of {capacity})",
            injection=f"`set_event_rate({2 / per_event:.0f})` against the slow handler",
            detected_as=f"Disconnected({disc.reason})",
            detection=pr.intervals(disc),
            recovery=back.monotonic - disc.monotonic,
            notes=f"max queue depth {max(depths)}/{capacity}; {len(filling)} heartbeats ACKed "
            f"while it filled; {len(pauses)} backpressure pause(s); no zombie; recovery "
            "counted from the pause",
        )


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


@pytest.mark.parametrize("phase", ["backoff", "handshake"])
async def test_shutdown_during_reconnect(phase: str) -> None:
    # A 1 s backoff floor is long enough to be caught in it.
    pol = policy(backoff_base=1.0 * SCALE, backoff_cap=2.0 * SCALE)
    async with running(reconnect=pol) as h:
        await flowing(h)
        await settle(h)  # the generator stays paused: a stopped client cannot receive more
        caught = asyncio.Event()
        pr = Probe(h)

        def watch(e: ev.LifecycleEvent) -> None:
            if phase == "backoff" and isinstance(e, ev.ReconnectScheduled):
                if e.reason == p.CONNECT_ERROR and e.delay >= 0.5:
                    caught.set()
            elif phase == "handshake" and isinstance(e, ev.ResumeSent):
                caught.set()

        h.client.events.subscribe(watch)
        pr.inject()
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
        assert took < 2.0, f"close() took {took:.2f}s"
        (status,) = h.client.shard_status()
        assert status.state is ConnectionState.STOPPED and not status.task_alive
        assert any(e.reason == "shutdown" for e in pr.since(ev.SupervisorStopped))
        leaked = _our_tasks()
        assert not leaked, leaked
        await finish(
            h,
            key=f"shutdown_in_{phase}",
            fault=f"Shutdown (SIGTERM path) during a reconnect, in {state_at_close.value}",
            injection=("refuse 503" if phase == "backoff" else "`withhold_ready()`")
            + " + close 4009, then `client.close()`",
            detected_as=f"Disconnected({first.reason})",
            detection=pr.intervals(first),
            recovery=None,
            notes=f"close() returned in {took:.2f}s; STOPPED; 0 tasks leaked",
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
