"""Property tests for the sans-I/O gateway session: arbitrary frames, time and calls.

A small driver plays the part of ``connection.py`` with a fake clock: it feeds the session
received frames (valid ones, malformed ones, junk), moves time forward while calling ``tick()``
at every deadline the session asks for (as the timer task does), sometimes stalls (time jumps,
then one late ``tick()``, as after a blocked event loop), and opens and loses connections. After
every call it checks the session's answers against rules written down independently of the
implementation:

* nothing raises out of the state machine;
* one handshake per connection: never both Identify (op 2) and Resume (op 6), never twice;
* heartbeats (op 1) only after Hello, the first one interval after Hello, then never closer
  together than the interval clamped into ``[min_heartbeat_interval, max_heartbeat_interval]``,
  except ACK probes: at most ``ack_probes`` per unanswered heartbeat, inside its ACK deadline;
* WebSocket pings only after Hello, never more often than every ``ping_quiet`` x interval (the
  driver never answers them here, so the ping layer never arms: it must never judge);
* a zombie is always ended within the documented bound: no frame for the idle deadline, or
  a heartbeat unanswered past its ACK deadline (at most ``ack_timeout_max`` x interval),
  produces a ``Close`` with a reason in ``ZOMBIE_REASONS`` (and a ``ZombieDetected``), and
  never earlier than the rule allows (no false positive on a healthy link);
* every ``Close`` and every ``Outcome`` carries a reason from ``DISCONNECT_REASONS``;
* after a ``Close`` nothing more is sent or delivered on that connection;
* a dispatch is delivered at most once (by sequence number within a session, and by event id);
* every delivered event is counted once in the shard's stats, and announced by an
  ``EventDispatched`` exactly when someone listens.

Text frames go through ``receive_frame`` as UTF-8 bytes, as the WebSocket driver feeds them,
with listeners (``interest`` all on: the generic path) and without (``interest`` all off: the
inlined per-event path, which answers the bare event instead of a ``Deliver``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter import protocol as p
from qqbot_gateway.adapter.protocol import GatewayEvent
from qqbot_gateway.adapter.session import (
    Close,
    Deliver,
    Emit,
    GatewaySession,
    LivenessConfig,
    Outcome,
    Phase,
    Send,
    SendPing,
    TuneSocket,
)

#: Float slack for comparing times computed along different paths.
EPS = 1e-6
#: The clamp the design documents for Hello's interval (``LivenessConfig`` defaults).
MIN_INTERVAL = 0.2
MAX_INTERVAL = 120.0
#: Reasons a timer (``tick``) may close with.
TIMER_REASONS = p.ZOMBIE_REASONS | {p.HELLO_TIMEOUT, p.HANDSHAKE_TIMEOUT}
LIFECYCLE_TYPES = frozenset({"READY", "RESUMED"})


PROPERTY_SETTINGS = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- steps ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    data: str | bytes


@dataclass(frozen=True)
class Advance:
    """Time passes with a punctual timer: ``tick()`` at every deadline on the way."""

    dt: float


@dataclass(frozen=True)
class Stall:
    """The event loop was blocked for ``dt``: time jumps, then one late ``tick()``."""

    dt: float


@dataclass(frozen=True)
class EarlyTick:
    """A spurious wake-up: ``tick()`` at the current time, deadline due or not."""


@dataclass(frozen=True)
class Connect:
    pass


@dataclass(frozen=True)
class Lost:
    code: int | None


@dataclass(frozen=True)
class CloseRequested:
    reason: str
    abort: bool


@dataclass(frozen=True)
class Backpressure:
    on: bool


@dataclass(frozen=True)
class Replay:
    """The server sends the last ``n`` dispatches again (as on a resume); ``bare`` drops
    their ``id`` so that only the sequence number can tell them apart."""

    n: int
    bare: bool = False


Step = Frame | Advance | Stall | EarlyTick | Connect | Lost | CloseRequested | Backpressure | Replay


# --- frame strategies -------------------------------------------------------------------
def _dumps(payload: Any) -> str:
    return json.dumps(payload, allow_nan=True)


junk_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=6,
)

heartbeat_intervals = st.one_of(
    st.integers(min_value=150, max_value=3000),  # the test range: 0.15 s .. 3 s
    st.sampled_from([41_250, 45_000, 1, 199, 200, 201, 120_000, 120_001, 10**9]),
    st.integers(min_value=-(10**6), max_value=0),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["41250", "", None, True, False, [1000], {"ms": 1000}]),
)


@st.composite
def hello_frames(draw: st.DrawFn) -> str:
    shape = draw(st.sampled_from(["ok", "ok", "ok", "no_d", "d_not_dict", "no_key"]))
    if shape == "no_d":
        return _dumps({"op": 10})
    if shape == "d_not_dict":
        return _dumps({"op": 10, "d": draw(junk_json)})
    if shape == "no_key":
        return _dumps({"op": 10, "d": {"interval": 1000}})
    return _dumps({"op": 10, "d": {"heartbeat_interval": draw(heartbeat_intervals)}})


seqs = st.one_of(
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=-3, max_value=0),
    st.none(),
    st.sampled_from(["5", 2.0, True, 10**30]),
)
event_ids = st.one_of(st.none(), st.sampled_from(["E1", "E2", "E3", ""]), st.integers(0, 3))
event_types = st.sampled_from(
    ["C2C_MESSAGE_CREATE", "GROUP_AT_MESSAGE_CREATE", "AT_MESSAGE_CREATE", "SOMETHING_NEW"]
)


@st.composite
def ready_frames(draw: st.DrawFn) -> str:
    d: Any = {
        "version": 1,
        "session_id": draw(st.sampled_from(["sess-1", "sess-2"]) | junk_json),
        "user": draw(st.sampled_from([{"id": "1", "username": "bot"}, None, "x"])),
    }
    if draw(st.booleans()):
        d = draw(junk_json)
    payload: dict[str, Any] = {"op": 0, "t": "READY", "d": d}
    if draw(st.booleans()):
        payload["s"] = draw(seqs)
    return _dumps(payload)


@st.composite
def resumed_frames(draw: st.DrawFn) -> str:
    payload: dict[str, Any] = {"op": 0, "t": "RESUMED", "d": draw(st.sampled_from(["", None]))}
    if draw(st.booleans()):
        payload["s"] = draw(seqs)
    return _dumps(payload)


@st.composite
def dispatch_frames(draw: st.DrawFn) -> str:
    payload: dict[str, Any] = {"op": 0, "d": draw(junk_json)}
    t = draw(st.one_of(event_types, event_types, st.none(), st.integers(), st.just("")))
    if t is not None:
        payload["t"] = t
    if draw(st.integers(0, 5)):
        payload["s"] = draw(seqs)
    eid = draw(event_ids)
    if eid is not None:
        payload["id"] = eid
    return _dumps(payload)


ack_frames = st.sampled_from([_dumps({"op": 11}), _dumps({"op": 11, "d": None})])
other_frames = st.one_of(
    st.builds(lambda d: _dumps({"op": 7, "d": d}), junk_json),
    st.builds(lambda d: _dumps({"op": 9, "d": d}), st.booleans() | junk_json),
    st.builds(lambda d: _dumps({"op": 1, "d": d}), junk_json),  # op 1 from the server
    st.builds(
        lambda op, d: _dumps({"op": op, "d": d}),
        st.integers(min_value=-5, max_value=300).filter(lambda o: o not in (0, 7, 9, 10, 11)),
        junk_json,
    ),
)
garbage_frames = st.one_of(
    st.text(max_size=20),  # mostly invalid JSON
    st.binary(max_size=20),
    st.builds(_dumps, junk_json),  # valid JSON, mostly not an object with an int op
    st.builds(lambda op: _dumps({"op": op}), st.sampled_from(["0", 1.5, True, None, [11]])),
    st.just(_dumps({"d": {"heartbeat_interval": 1000}})),
    st.just("{" * 50),
)

# What a real gateway sends, so that sequences get deep into the protocol (READY, resumes,
# heartbeats, zombies) before the junk below breaks them.
valid_frames = st.one_of(
    st.builds(
        lambda ms: _dumps({"op": 10, "d": {"heartbeat_interval": ms}}),
        st.integers(min_value=150, max_value=3000),
    ),
    st.builds(
        lambda sid, s: _dumps(
            {"op": 0, "s": s, "t": "READY", "d": {"session_id": sid, "user": {"id": "1"}}}
        ),
        st.sampled_from(["sess-1", "sess-2"]),
        st.integers(min_value=1, max_value=3),
    ),
    st.builds(
        lambda s: _dumps({"op": 0, "s": s, "t": "RESUMED", "d": ""}),
        st.integers(min_value=1, max_value=40),
    ),
    st.builds(
        lambda t, s, eid: _dumps(
            {"op": 0, "s": s, "t": t, "d": {"content": "hi"}, **({"id": eid} if eid else {})}
        ),
        event_types,
        st.integers(min_value=1, max_value=40),
        st.sampled_from(["E1", "E2", "E3", "E4", "E5", "E6", None]),
    ),
    ack_frames,
    ack_frames,
)

frames = st.one_of(
    valid_frames,
    valid_frames,
    valid_frames,
    valid_frames,
    hello_frames(),
    ready_frames(),
    resumed_frames(),
    dispatch_frames(),
    other_frames,
    garbage_frames,
).map(Frame)

close_codes = st.one_of(
    st.none(),
    st.sampled_from([1000, 1001, 1006, 4000, 4004, 4006, 4007, 4008, 4009, 4013, 4902, 4915]),
    st.integers(min_value=1000, max_value=4999),
)

durations = st.one_of(
    st.floats(min_value=0.0, max_value=3.0, allow_nan=False),
    st.sampled_from([0.0, 0.2, 0.5, 1.0, 2.5]),
    st.sampled_from([0.3, 0.7, 1.5, 3.0]),
)

rare_steps = st.one_of(
    st.builds(Stall, st.floats(min_value=0.0, max_value=10.0, allow_nan=False)),
    st.just(EarlyTick()),
    st.just(Connect()),
    st.builds(Lost, close_codes),
    st.builds(CloseRequested, st.sampled_from(p.DISCONNECT_REASONS), st.booleans()),
    st.builds(Backpressure, st.booleans()),
)

steps = st.one_of(
    st.builds(Replay, st.integers(min_value=1, max_value=3), st.booleans()),
    frames,
    frames,
    frames,
    frames,
    st.builds(Advance, durations),
    st.builds(Advance, durations),
    st.builds(Advance, durations),
    rare_steps,
)


@st.composite
def connections(draw: st.DrawFn) -> list[Step]:
    """One connection's life: usually a proper handshake first, then anything at all."""
    script: list[Step] = [Connect()]
    if draw(st.integers(0, 9)):
        ms = draw(st.integers(min_value=150, max_value=3000))
        script.append(Frame(_dumps({"op": 10, "d": {"heartbeat_interval": ms}})))
        if draw(st.integers(0, 4)):
            script.append(Advance(draw(st.floats(min_value=0.0, max_value=0.2))))
            t = draw(st.sampled_from(["READY", "READY", "RESUMED"]))
            d: Any = {"session_id": draw(st.sampled_from(["sess-1", "sess-2"]))}
            s = draw(st.integers(min_value=1, max_value=3))
            script.append(Frame(_dumps({"op": 0, "s": s, "t": t, "d": d if t == "READY" else ""})))
    script.extend(draw(st.lists(steps, max_size=30)))
    if draw(st.booleans()):
        script.append(Lost(draw(close_codes)))
    return script


scripts = st.lists(connections(), min_size=1, max_size=4).map(
    lambda parts: [step for part in parts for step in part]
)


liveness_configs = st.builds(
    LivenessConfig,
    ack_probes=st.integers(min_value=0, max_value=3),
    ack_timeout_min=st.sampled_from([0.2, 0.4, 0.6]),
    ws_ping=st.booleans(),
    idle_timeout_factor=st.none() | st.floats(min_value=1.05, max_value=6.0),
    idle_timeout_max=st.sampled_from([180.0, 5.0, 1.0]),
    hello_timeout=st.sampled_from([10.0, 0.5, 3.0]),
    handshake_timeout=st.none() | st.sampled_from([0.3, 2.0, 30.0]),
    max_resume_failures=st.integers(min_value=1, max_value=3),
    max_identify_rejections=st.integers(min_value=1, max_value=3),
)


# --- the reference model ----------------------------------------------------------------
def expected_interval(raw: Any) -> float | None:
    """Hello's interval as the rules say it must be used; None: Hello must be refused."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    try:
        seconds = float(raw) / 1000.0
    except OverflowError:
        return MAX_INTERVAL  # an absurdly large interval is a large interval
    if not math.isfinite(seconds) or raw <= 0:
        return None
    return min(max(seconds, MIN_INTERVAL), MAX_INTERVAL)


@dataclass
class ConnModel:
    opened_at: float
    hello_at: float | None = None
    interval: float | None = None
    last_frame_at: float = 0.0
    #: Time of the last op 11, or of Hello: the ACK layer counts from there.
    ack_ref: float | None = None
    heartbeats: list[float] = field(default_factory=list)
    since_ack: int = 0
    #: The regular heartbeat that opened the ACK round now waiting (None: all answered).
    round_at: float | None = None
    probes: int = 0
    #: Send times of op 1 frames not matched to an op 11 yet (the server answers in order).
    owed: list[float] = field(default_factory=list)
    last_ping_at: float | None = None
    handshakes: list[int] = field(default_factory=list)
    closed: Close | None = None
    closed_at: float | None = None
    ready: bool = False
    #: A stall happened: the ACK layer counts heartbeats, not wall time, so its time bound
    #: no longer applies to this connection (by design).
    stalled: bool = False


class Driver:
    def __init__(self, liveness: LivenessConfig, listeners: bool = True) -> None:
        self.lv = liveness
        self.session = GatewaySession(intents=1 << 25, liveness=liveness)
        #: Nobody listens to the per-event kinds: the session takes its inlined fast paths.
        self.listeners = listeners
        self.session.interest = ev.Interest(listeners)
        self.delivered = 0
        self.announced = 0
        self.now = 0.0
        self.conn: ConnModel | None = None
        self.max_seq_seen = 0
        self.delivered_seqs: dict[str | None, int] = {}
        self.delivered_ids: set[str] = set()
        self.closes: list[Close] = []
        self.outcomes: list[Outcome] = []
        self.dispatches: list[str] = []
        self.token_n = 0

    # -- inputs --
    def run(self, step: Step) -> None:
        if isinstance(step, Frame):
            if self.conn is None:
                self.connect()
            self.receive(step.data)
        elif isinstance(step, Advance):
            self.advance(step.dt)
        elif isinstance(step, Stall):
            self.now += step.dt
            if self.conn is not None:
                self.conn.stalled = True
            self.tick()
        elif isinstance(step, EarlyTick):
            self.tick()
        elif isinstance(step, Connect):
            if self.conn is None:
                self.connect()
        elif isinstance(step, Lost):
            if self.conn is not None:
                self.lost(step.code)
        elif isinstance(step, CloseRequested):
            if self.conn is not None:
                out = self.session.close_requested(step.reason, "test", abort=step.abort)
                self.check(out, source="close_requested")
                if self.conn.closed is None:
                    assert out, "close_requested on an open connection produced no Close"
        elif isinstance(step, Backpressure):
            self.session.set_backpressure(step.on)
        elif isinstance(step, Replay):
            for data in self.dispatches[-step.n :]:
                if step.bare:
                    data = _dumps({k: v for k, v in json.loads(data).items() if k != "id"})
                if self.conn is None:
                    self.connect()
                self.receive(data)
        self.invariants()

    def connect(self) -> None:
        assert self.session.phase is Phase.DISCONNECTED
        self.token_n += 1
        out = self.session.connect(self.now, f"tok{self.token_n}")
        self.conn = ConnModel(opened_at=self.now, last_frame_at=self.now)
        self.check(out, source="connect")

    def receive(self, data: str | bytes) -> None:
        conn = self.conn
        assert conn is not None
        phase_before = self.session.phase
        if isinstance(data, bytes):  # a binary frame
            out = self.session.receive(data, self.now)
        else:  # a text frame, as the WebSocket driver hands it over: UTF-8 bytes
            result = self.session.receive_frame(data.encode(), self.now)
            out = [Deliver(result)] if isinstance(result, GatewayEvent) else result
        conn.last_frame_at = self.now
        payload = _loads(data)
        op = payload.get("op") if isinstance(payload, dict) else None
        if conn.closed is None and op == 11 and isinstance(op, int) and not isinstance(op, bool):
            if phase_before in (Phase.AWAIT_READY, Phase.READY) and conn.interval is not None:
                interval = conn.interval
                conn.owed = [t for t in conn.owed if t >= self.now - interval]
                sent_at = conn.owed.pop(0) if conn.owed else None
                # An op 11 owed by an earlier round does not answer the one open now.
                if conn.round_at is not None and (sent_at is None or sent_at >= conn.round_at):
                    conn.ack_ref = self.now
                    conn.since_ack = 0
                    conn.round_at = None
        if isinstance(payload, dict) and op == 0 and isinstance(data, str):
            self.dispatches.append(data)
        if isinstance(payload, dict):
            s = payload.get("s")
            if isinstance(s, int) and not isinstance(s, bool):
                self.max_seq_seen = max(self.max_seq_seen, s)
        hello_raw = None
        if op == 10 and isinstance(payload.get("d"), dict):
            hello_raw = payload["d"].get("heartbeat_interval")
        self.check(out, source="receive", hello_raw=hello_raw)

    def advance(self, dt: float) -> None:
        target = self.now + dt
        for _ in range(100_000):
            deadline = self.session.next_deadline()
            if deadline is None or deadline > target:
                break
            self.now = max(self.now, deadline)
            self.tick()
            after = self.session.next_deadline()
            assert after is None or after > self.now, (
                f"tick({self.now}) left a deadline at {after}: the timer would spin"
            )
        else:
            pytest.fail("the timer never settled")
        self.now = target

    def tick(self) -> None:
        out = self.session.tick(self.now)
        self.check(out, source="tick")

    def lost(self, code: int | None) -> None:
        conn = self.conn
        assert conn is not None
        outcome = self.session.connection_lost(self.now, code, "")
        self.outcomes.append(outcome)
        assert outcome.reason in p.DISCONNECT_REASONS, outcome
        if conn.closed is not None:
            assert outcome.reason == conn.closed.reason, "our own close reason must win"
        assert outcome.resumable is self.session.can_resume
        assert outcome.was_ready is conn.ready
        if outcome.action is p.CloseAction.FATAL:
            assert outcome.fatal_message
            assert not outcome.resumable
        self.conn = None

    # -- the rules --
    def check(self, out: list[Any], *, source: str, hello_raw: Any = None) -> None:
        assert isinstance(out, list)
        conn = self.conn
        if conn is None:
            assert out == [], f"{source} without a connection answered {out}"
            return
        closes = [a for a in out if isinstance(a, Close)]
        zombies = [
            a.event for a in out if isinstance(a, Emit) and isinstance(a.event, ev.ZombieDetected)
        ]
        hellos = [
            a.event for a in out if isinstance(a, Emit) and isinstance(a.event, ev.HelloReceived)
        ]
        for action in out:
            assert isinstance(action, Send | SendPing | TuneSocket | Deliver | Close | Emit), action
            if isinstance(action, Deliver):
                self.delivered += 1
            elif isinstance(action, Emit):
                kind = type(action.event)
                assert self.listeners or kind not in (ev.FrameReceived, ev.EventDispatched), kind
                self.announced += kind is ev.EventDispatched
            if isinstance(action, SendPing | TuneSocket):
                assert conn.hello_at is not None and conn.interval is not None, "before Hello"
            if isinstance(action, SendPing):
                # No pong ever comes here, so the layer stays calibrating: one ping at a
                # time, never more often than every ping_quiet x interval.
                quiet = self.lv.ping_quiet * conn.interval  # type: ignore[operator]
                ref = conn.last_ping_at if conn.last_ping_at is not None else conn.hello_at
                assert self.lv.ws_ping, "a ping with the ping layer off"
                assert ref is not None and self.now - ref >= quiet - EPS, "pings too often"
                conn.last_ping_at = self.now
            if conn.closed is not None:
                assert not isinstance(action, Send | SendPing | Deliver | Close), (
                    f"{action} after the connection was closed ({conn.closed.reason})"
                )
            if isinstance(action, Close):
                conn.closed = action
                conn.closed_at = self.now
                self.closes.append(action)
                assert action.reason in p.DISCONNECT_REASONS, action
                assert action.code not in (1000, 1001), "our own closes must stay resumable"
            elif isinstance(action, Emit) and isinstance(action.event, ev.HelloReceived):
                hello = action.event
                want = expected_interval(hello_raw)
                assert want is not None, f"Hello with {hello_raw!r} should have been refused"
                assert hello.heartbeat_interval == pytest.approx(want)
                assert MIN_INTERVAL <= hello.heartbeat_interval <= MAX_INTERVAL
                assert conn.hello_at is None, "a second Hello was accepted"
                conn.hello_at = self.now
                conn.ack_ref = self.now
                conn.interval = want
            elif isinstance(action, Send):
                self.check_send(conn, action.payload)
            elif isinstance(action, Deliver):
                self.check_deliver(conn, action.event)
            elif isinstance(action, Emit) and isinstance(
                action.event, ev.SessionReady | ev.SessionResumed
            ):
                conn.ready = True
        assert len(closes) <= 1, closes
        if source == "receive" and hello_raw is not None and not hellos:
            assert (
                expected_interval(hello_raw) is None
                or conn.hello_at is not None
                or conn.closed is not None
                or self.session.phase is not Phase.AWAIT_HELLO
            ), f"a valid Hello ({hello_raw!r}) was ignored"
        if source == "tick":
            for c in closes:
                assert c.reason in TIMER_REASONS, c
        if source != "tick":
            assert not zombies, "zombie verdicts come from timers only"
        for c in closes if source == "tick" else ():
            if c.reason in p.ZOMBIE_REASONS:
                assert c.abort, "a zombie is aborted, not closed politely"
                assert len(zombies) == 1 and zombies[0].reason == c.reason
                self.check_zombie_not_premature(conn, c)
            elif c.reason in (p.HELLO_TIMEOUT, p.HANDSHAKE_TIMEOUT):
                self.check_handshake_timer_not_premature(conn, c)

    def check_send(self, conn: ConnModel, payload: dict[str, Any]) -> None:
        op = payload.get("op")
        assert op in (1, 2, 6), payload
        assert conn.hello_at is not None, f"op {op} sent before Hello"
        if op in (2, 6):
            assert conn.handshakes == [], f"handshake op {op} after {conn.handshakes}"
            conn.handshakes.append(op)
            d = payload.get("d")
            assert isinstance(d, dict) and str(d.get("token")).startswith("QQBot tok"), payload
            if op == 6:
                assert isinstance(d.get("session_id"), str), payload
            else:
                # An Identify starts a new session, numbered from 1 again: what an earlier
                # session without a name (no READY ever came) delivered says nothing about it.
                self.delivered_seqs.pop(None, None)
            return
        # op 1: a regular heartbeat, or a probe while one waits for its ACK
        interval = conn.interval
        assert interval is not None and interval >= MIN_INTERVAL
        previous = conn.heartbeats[-1] if conn.heartbeats else conn.hello_at
        d = payload.get("d")
        assert d is None or (isinstance(d, int) and 0 < d <= self.max_seq_seen), payload
        conn.since_ack += 1
        conn.owed.append(self.now)
        if self.now - previous >= interval - EPS:
            conn.heartbeats.append(self.now)
            if conn.round_at is None:
                conn.round_at, conn.probes = self.now, 0
            return
        assert conn.round_at is not None, (
            f"heartbeat at {self.now} only {self.now - previous:.6f}s after "
            f"{'the previous one' if conn.heartbeats else 'Hello'} (interval {interval}) "
            "and no heartbeat waits for its ACK"
        )
        conn.probes += 1
        assert conn.probes <= self.lv.ack_probes, "more ACK probes than configured"
        assert self.now - conn.round_at < self.lv.ack_timeout_max * interval + EPS

    def check_deliver(self, conn: ConnModel, event: Any) -> None:
        if event.type in LIFECYCLE_TYPES:
            if event.type == "READY":
                self.delivered_seqs[event.session_id] = (
                    event.seq if isinstance(event.seq, int) else 0
                )
            return
        if event.seq is not None:
            last = self.delivered_seqs.get(event.session_id, 0)
            assert event.seq > last, f"seq {event.seq} delivered after {last}: duplicate"
            self.delivered_seqs[event.session_id] = event.seq
        if event.event_id is not None:
            assert event.event_id not in self.delivered_ids, f"event {event.event_id} twice"
            self.delivered_ids.add(event.event_id)

    def check_zombie_not_premature(self, conn: ConnModel, close: Close) -> None:
        assert conn.interval is not None
        if close.reason == p.ACK_TIMEOUT:
            assert conn.round_at is not None, "ack_timeout with every heartbeat answered"
            waited = self.now - conn.round_at
            assert waited >= self.lv.ack_timeout_min * conn.interval - EPS, (
                f"ack_timeout after {waited:.3f}s, below the floor"
            )
        elif close.reason == p.PING_TIMEOUT:
            pytest.fail("ping_timeout although no pong ever proved the server answers pings")
        elif close.reason == p.IDLE_TIMEOUT:
            idle = self.lv.idle_deadline(conn.interval)
            assert idle is not None
            assert self.now - conn.last_frame_at >= idle - EPS, "idle_timeout on a chatty link"

    def check_handshake_timer_not_premature(self, conn: ConnModel, close: Close) -> None:
        if close.reason == p.HELLO_TIMEOUT:
            assert self.lv.hello_timeout is not None
            assert self.now - conn.opened_at >= self.lv.hello_timeout - EPS
        else:
            assert conn.hello_at is not None and conn.interval is not None
            limit = self.lv.handshake_deadline(conn.interval)
            assert self.now - conn.hello_at >= limit - EPS

    def invariants(self) -> None:
        """Bounds that must hold whenever the connection is still open (and the counts)."""
        assert sum(self.session.stats.dispatched.values()) == self.delivered
        assert self.announced == (self.delivered if self.listeners else 0)
        conn = self.conn
        if conn is None or conn.closed is not None:
            return
        lv = self.lv
        if conn.hello_at is None:
            assert lv.hello_timeout is not None
            assert self.now < conn.opened_at + lv.hello_timeout + EPS, "hello_timeout missed"
            return
        assert conn.interval is not None and conn.ack_ref is not None
        idle = lv.idle_deadline(conn.interval)
        if idle is not None:
            assert self.now < conn.last_frame_at + idle + EPS, (
                f"no frame for {self.now - conn.last_frame_at:.3f}s (idle deadline {idle:.3f}s) "
                "and the connection is still open"
            )
        if not conn.stalled:
            # A heartbeat at most one interval after the last ACK, its deadline at most
            # ack_timeout_max intervals after it.
            bound = conn.ack_ref + (1 + lv.ack_timeout_max) * conn.interval
            if conn.round_at is not None:
                bound = min(bound, conn.round_at + lv.ack_timeout_max * conn.interval)
            assert self.now < bound + EPS, (
                f"{conn.since_ack} heartbeats unacked, last ACK at {conn.ack_ref}, "
                f"now {self.now}: past the ack bound {bound}"
            )
        if not conn.ready:
            limit = lv.handshake_deadline(conn.interval)
            assert self.now < conn.hello_at + limit + EPS, "handshake_timeout missed"

    def final_silence(self) -> None:
        """The link goes silent for good: the connection must end, and for a timer reason."""
        conn = self.conn
        if conn is None:
            return
        if conn.closed is None:
            self.advance(1000.0)
            self.invariants()
            assert conn.closed is not None, "a silent connection was never closed"
            assert conn.closed.reason in TIMER_REASONS, conn.closed
        self.lost(None)


def _loads(data: str | bytes) -> Any:
    if isinstance(data, bytes):
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


# --- the properties ---------------------------------------------------------------------
@PROPERTY_SETTINGS
@given(liveness=liveness_configs, script=scripts)
@example(
    liveness=LivenessConfig(),
    script=[Frame(_dumps({"op": 10, "d": {"heartbeat_interval": 1000}})), Advance(5.0)],
)
@example(  # a replay the session must recognise by sequence number alone
    liveness=LivenessConfig(),
    script=[
        Frame(_dumps({"op": 10, "d": {"heartbeat_interval": 1000}})),
        Frame(_dumps({"op": 0, "s": 1, "t": "READY", "d": {"session_id": "sess-1"}})),
        Frame(_dumps({"op": 0, "s": 5, "t": "C2C_MESSAGE_CREATE", "id": "E1", "d": {}})),
        Replay(1, bare=True),
        Lost(None),
        Frame(_dumps({"op": 10, "d": {"heartbeat_interval": 1000}})),
        Replay(2),
        Frame(_dumps({"op": 0, "s": 5, "t": "RESUMED", "d": ""})),
    ],
)
@example(  # a session never named by READY is forgotten; the Identify after it starts anew
    liveness=LivenessConfig(ack_probes=0, ws_ping=False),
    script=[
        Frame(_dumps({"op": 10, "d": {"heartbeat_interval": 150}})),
        Frame(_dumps({"op": 0, "s": 1, "t": "RESUMED", "d": ""})),
        Frame(_dumps({"op": 0, "s": 2, "t": "C2C_MESSAGE_CREATE", "id": "E1", "d": {}})),
        Lost(4000),
        Frame(_dumps({"op": 10, "d": {"heartbeat_interval": 150}})),
        Replay(1, bare=True),
    ],
)
@pytest.mark.parametrize("listeners", [True, False], ids=["listeners", "no-listeners"])
def test_session_survives_arbitrary_input_and_keeps_every_rule(
    listeners: bool, liveness: LivenessConfig, script: list[Step]
) -> None:
    driver = Driver(liveness, listeners)
    for step in script:
        driver.run(step)
    driver.final_silence()
    for close in driver.closes:
        assert close.reason in p.DISCONNECT_REASONS


@dataclass(frozen=True)
class DeadLinkCase:
    liveness: LivenessConfig
    ms: int
    healthy: list[Step]
    mode: str
    gap: float | None
    dead: list[Step]


@st.composite
def healthy_then_dead(draw: st.DrawFn) -> DeadLinkCase:
    """A READY session that lives a while with ACKs, then either goes silent or keeps
    receiving events without any ACK (the server stopped hearing us)."""
    liveness = draw(liveness_configs)
    ms = draw(st.integers(min_value=150, max_value=3000))
    interval = ms / 1000
    healthy: list[Step] = []
    seq = 1
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        healthy.append(Advance(draw(st.floats(min_value=0.0, max_value=interval * 0.99))))
        if draw(st.booleans()):
            seq += 1
            healthy.append(Frame(_dumps({"op": 0, "s": seq, "t": "C2C_MESSAGE_CREATE", "d": {}})))
        healthy.append(Frame(_dumps({"op": 11})))
    mode = draw(st.sampled_from(["silent", "events_without_acks"]))
    dead: list[Step] = []
    gap = None
    if mode == "events_without_acks":
        share = draw(st.floats(min_value=0.05, max_value=0.9))
        gap = share * interval
        # Enough events to outlast the ACK bound (1 + ack_timeout_max intervals) by one more.
        for _ in range(int((liveness.ack_timeout_max + 3) / share) + 1):
            seq += 1
            dead.append(Advance(gap))
            dead.append(Frame(_dumps({"op": 0, "s": seq, "t": "GROUP_AT_MESSAGE_CREATE", "d": {}})))
    return DeadLinkCase(liveness, ms, healthy, mode, gap, dead)


@PROPERTY_SETTINGS
@given(case=healthy_then_dead())
@pytest.mark.parametrize("listeners", [True, False], ids=["listeners", "no-listeners"])
def test_a_dead_link_is_always_ended_within_the_documented_bound(
    listeners: bool, case: DeadLinkCase
) -> None:
    liveness, ms, healthy, mode, gap, dead = (
        case.liveness,
        case.ms,
        case.healthy,
        case.mode,
        case.gap,
        case.dead,
    )
    interval = expected_interval(ms)
    assert interval is not None
    driver = Driver(liveness, listeners)
    driver.run(Frame(_dumps({"op": 10, "d": {"heartbeat_interval": ms}})))
    driver.run(Frame(_dumps({"op": 0, "s": 1, "t": "READY", "d": {"session_id": "S"}})))
    for step in healthy:
        driver.run(step)
    conn = driver.conn
    assert conn is not None
    if conn.closed is not None:
        # Only the handshake or a tight idle deadline can have ended a healthy prefix.
        assert conn.closed.reason in TIMER_REASONS
        return
    assert conn.ack_ref is not None
    died_at = driver.now
    last_ack = conn.ack_ref
    for step in dead:
        driver.run(step)
        if conn.closed is not None:
            break
    if conn.closed is None:
        driver.advance(1000.0)
    close, closed_at = conn.closed, conn.closed_at
    assert close is not None and closed_at is not None, "the zombie was never detected"
    assert close.reason in p.ZOMBIE_REASONS, close
    # The documented bound: the next heartbeat at most one interval after the last ACK, its
    # deadline at most ack_timeout_max intervals later (at ack_timeout_min while the measured
    # RTT is small); the idle layer by the idle deadline after the last frame; first wins.
    bound = last_ack + (1 + liveness.ack_timeout_max) * interval
    idle = liveness.idle_deadline(interval)
    if mode == "silent" and idle is not None:
        bound = min(bound, died_at + idle)
    assert closed_at <= bound + EPS, (
        f"{mode}: detected {closed_at - died_at:.3f}s after the link died, "
        f"bound {bound - died_at:.3f}s"
    )
    if mode == "events_without_acks" and gap is not None and (idle is None or gap < idle - EPS):
        assert close.reason == p.ACK_TIMEOUT, "events keep the idle layer quiet"


# --- regressions found by the properties above (plain tests, so a failure reads clearly) --
def _ready_session(ms: int, **liveness: Any) -> GatewaySession:
    s = GatewaySession(intents=1 << 25, liveness=LivenessConfig(**liveness))
    s.connect(0.0, "tok")
    s.receive(_dumps({"op": 10, "d": {"heartbeat_interval": ms}}), 0.0)
    s.receive(_dumps({"op": 0, "s": 1, "t": "READY", "d": {"session_id": "S"}}), 0.0)
    return s


def test_tick_at_the_idle_deadline_settles_it() -> None:
    """``next_deadline()`` says ``last_frame + idle``; ``tick()`` at exactly that time must act
    on it (close, or move the deadline), or a timer driven by those two spins."""
    s = _ready_session(150, idle_timeout_factor=1.25, ws_ping=False)
    last_frame = 0.05707498555027215  # (last_frame + 0.25) - last_frame < 0.25 in floats
    s.receive(_dumps({"op": 11}), last_frame)
    now = 0.0
    for _ in range(10):
        deadline = s.next_deadline()
        if deadline is None:
            break
        now = deadline
        out = s.tick(now)
        after = s.next_deadline()
        assert any(isinstance(a, Close) for a in out) or after is None or after > now, (
            f"tick({now!r}) acted on nothing and the deadline is still {after!r}"
        )
    assert s.phase is Phase.CLOSING


@pytest.mark.parametrize("t", ["READY", "RESUMED", "C2C_MESSAGE_CREATE"])
def test_a_dispatch_before_hello_never_disables_the_timers(t: str) -> None:
    """A dispatch before Hello must not leave the session in a phase without an interval:
    ``next_deadline()``/``tick()`` raised AssertionError, killing the driver's timer task
    (no heartbeats, no liveness layer at all on that connection)."""
    s = GatewaySession(intents=1 << 25, liveness=LivenessConfig(hello_timeout=2.0))
    s.connect(0.0, "tok")
    d: Any = {"session_id": "S"} if t == "READY" else ""
    s.receive(_dumps({"op": 0, "s": 1, "t": t, "d": d}), 0.1)
    closed = s.phase is Phase.CLOSING
    for now in (0.5, 1.0, 2.0, 3.0):
        deadline = s.next_deadline()
        assert deadline is None or math.isfinite(deadline)
        closed = closed or any(isinstance(a, Close) for a in s.tick(now))
    assert closed, "no Hello ever came: the connection must end (hello_timeout or protocol_error)"


HOSTILE_FRAMES = {
    "huge-int-interval": '{"op": 10, "d": {"heartbeat_interval": 1' + "0" * 400 + "}}",
    "deep-array": "[" * 100_000 + "]" * 100_000,  # nested past the recursion limit
    "deep-dispatch": '{"op": 0, "t": "X", "s": 2, "d": ' + "[" * 100_000 + "]" * 100_000 + "}",
}


@pytest.mark.parametrize("raw", list(HOSTILE_FRAMES.values()), ids=list(HOSTILE_FRAMES))
def test_hostile_frames_never_raise(raw: str) -> None:
    """Both are valid JSON text under the driver's 4 MiB frame limit; ``receive()`` raised
    OverflowError / RecursionError, which the driver reports as a network error instead of
    a protocol error."""
    s = GatewaySession(intents=1 << 25)
    s.connect(0.0, "tok")
    out = s.receive(raw, 0.0)
    assert isinstance(out, list)
    for close in (a for a in out if isinstance(a, Close)):
        assert close.reason == p.PROTOCOL_ERROR
    if s.heartbeat_interval is not None:
        assert MIN_INTERVAL <= s.heartbeat_interval <= MAX_INTERVAL
