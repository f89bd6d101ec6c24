"""The sans-I/O session with explicit timestamps: no sockets, no sleeping."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter import protocol as p
from qqbot_gateway.adapter.protocol import CloseAction
from qqbot_gateway.adapter.session import (
    Close,
    Deliver,
    Emit,
    GatewaySession,
    LivenessConfig,
    Phase,
    Send,
)

INTERVAL_MS = 1000
I = INTERVAL_MS / 1000  # noqa: E741 - the heartbeat interval, as in the docs


def hello(ms: Any = INTERVAL_MS) -> str:
    return json.dumps({"op": 10, "d": {"heartbeat_interval": ms}})


def ready(session_id: str = "sess-1", s: int = 1) -> str:
    return json.dumps(
        {
            "op": 0,
            "s": s,
            "t": "READY",
            "d": {"version": 1, "session_id": session_id, "user": {"id": "9", "username": "bot"}},
        }
    )


def dispatch(s: int, t: str = "C2C_MESSAGE_CREATE", event_id: str | None = None) -> str:
    return json.dumps(
        {
            "op": 0,
            "s": s,
            "t": t,
            "id": event_id or f"{t}:{s}",
            "d": {"id": f"m{s}", "content": "hi"},
        }
    )


ACK = json.dumps({"op": 11})


def sends(actions: list[Any]) -> list[dict[str, Any]]:
    return [a.payload for a in actions if isinstance(a, Send)]


def closes(actions: list[Any]) -> list[Close]:
    return [a for a in actions if isinstance(a, Close)]


def delivered(actions: list[Any]) -> list[Any]:
    return [a.event for a in actions if isinstance(a, Deliver)]


def emitted(actions: list[Any], kind: type[Any]) -> list[Any]:
    return [a.event for a in actions if isinstance(a, Emit) and isinstance(a.event, kind)]


def new_session(**liveness: Any) -> GatewaySession:
    return GatewaySession(intents=1 << 25, liveness=LivenessConfig(**liveness))


def identified(t0: float = 0.0, **liveness: Any) -> GatewaySession:
    s = new_session(**liveness)
    s.connect(t0, "tok")
    s.receive(hello(), t0)
    s.receive(ready(), t0 + 0.01)
    return s


def test_hello_sends_identify_with_token_intents_shard_and_properties() -> None:
    s = GatewaySession(shard_id=1, shard_count=4, intents=(1 << 25) | (1 << 30))
    assert s.connect(0.0, "abc") == []
    out = s.receive(hello(41250), 0.0)
    (identify,) = sends(out)
    assert identify["op"] == 2
    assert identify["d"]["token"] == "QQBot abc"
    assert identify["d"]["intents"] == (1 << 25) | (1 << 30)
    assert identify["d"]["shard"] == [1, 4]
    assert "$os" in identify["d"]["properties"]
    assert s.heartbeat_interval == pytest.approx(41.25)
    assert s.phase is Phase.AWAIT_READY


def test_ready_then_heartbeats_carry_last_seq_or_null() -> None:
    s = new_session(ws_ping=False)
    s.connect(0.0, "t")
    s.receive(hello(), 0.0)
    # before any dispatch, d is null
    s2 = new_session()
    s2.connect(0.0, "t")
    s2.receive(hello(), 0.0)
    assert sends(s2.tick(I))[0] == {"op": 1, "d": None}
    out = s.receive(ready(s=1), 0.1)
    assert [e.type for e in delivered(out)] == ["READY"]
    assert emitted(out, ev.SessionReady)[0].session_id == "sess-1"
    s.receive(dispatch(2), 0.2)
    assert s.next_deadline() == pytest.approx(I)
    assert sends(s.tick(I)) == [{"op": 1, "d": 2}]


def test_ack_resets_and_reports_rtt() -> None:
    s = identified()
    s.tick(I)
    out = s.receive(ACK, I + 0.05)
    (acked,) = emitted(out, ev.HeartbeatAcked)
    assert acked.rtt == pytest.approx(0.05)
    assert s.unacked == 0


def test_unanswered_heartbeat_is_probed_then_declared_dead_at_its_deadline() -> None:
    """The ACK deadline at its floor (0.4 H), two probes evenly inside it, then ack_timeout."""
    s = identified(idle_timeout_factor=None, ws_ping=False)
    assert sends(s.tick(I)) == [{"op": 1, "d": 1}]
    assert s.next_deadline() == pytest.approx(I + 0.4 / 3)
    assert closes(s.tick(I + 0.1)) == [] and sends(s.tick(I + 0.1)) == []
    assert sends(s.tick(I + 0.4 / 3)) == [{"op": 1, "d": 1}]  # probe 1
    assert s.next_deadline() == pytest.approx(I + 0.8 / 3)
    assert sends(s.tick(I + 0.8 / 3)) == [{"op": 1, "d": 1}]  # probe 2
    assert s.next_deadline() == pytest.approx(1.4 * I)
    assert closes(s.tick(1.4 * I - 1e-6)) == []
    out = s.tick(1.4 * I)
    (close,) = closes(out)
    assert close.reason == p.ACK_TIMEOUT and close.abort
    assert close.code != 1000
    (zombie,) = emitted(out, ev.ZombieDetected)
    assert zombie.unacked == 3
    outcome = s.connection_lost(1.4 * I + 0.01, None)
    assert outcome.reason == p.ACK_TIMEOUT
    assert outcome.action is CloseAction.RESUME and outcome.resumable


def test_any_ack_before_the_deadline_answers_the_round() -> None:
    s = identified(idle_timeout_factor=None, ws_ping=False)
    s.tick(I)
    s.tick(I + 0.4 / 3)  # probe
    out = s.receive(ACK, I + 0.35)  # the first heartbeat's ACK, late, or the probe's
    (acked,) = emitted(out, ev.HeartbeatAcked)
    assert acked.rtt == pytest.approx(0.35)  # from the heartbeat that opened the round
    assert s.unacked == 0
    assert s.next_deadline() == pytest.approx(2 * I)
    assert closes(s.tick(1.4 * I)) == []
    # the RTT sample is taken from the first heartbeat: an upper bound, the safe side
    rtt = s.ack_rtt
    assert rtt is not None and rtt.samples == 1 and rtt.srtt == pytest.approx(0.35)


def test_without_probes_the_deadline_is_a_single_wait() -> None:
    s = identified(idle_timeout_factor=None, ws_ping=False, ack_probes=0)
    s.tick(I)
    assert s.next_deadline() == pytest.approx(1.4 * I)
    assert closes(s.tick(1.4 * I))[0].reason == p.ACK_TIMEOUT


def test_events_without_acks_still_make_a_zombie() -> None:
    """The server keeps sending events but stopped ACKing: ACK tracking fires, idle does not."""
    s = identified()
    t, seq, fired = 0.0, 1, None
    while t < 10 * I and fired is None:
        t += I / 4
        seq += 1
        s.receive(dispatch(seq), t)
        out = s.tick(t)
        if closes(out):
            fired = closes(out)[0]
    assert fired is not None and fired.reason == p.ACK_TIMEOUT
    # the heartbeat at I, its ACK deadline 0.4 H later, seen at the next I/4 step
    assert t <= 1.4 * I + I / 4 + 1e-9


def test_silence_is_detected_by_the_idle_layer_within_bounds() -> None:
    s = identified()
    s.tick(I)
    s.receive(ACK, I + 0.01)
    t = I + 0.01
    fired = None
    while fired is None:
        nxt = s.next_deadline()
        assert nxt is not None
        t = nxt
        for c in closes(s.tick(t)):
            fired = c
    # No pong ever came, so the ping layer never armed: the ACK layer decides. Last frame at
    # I+0.01; the next heartbeat at 2 I, its ACK deadline at 2.4 I.
    assert fired.reason == p.ACK_TIMEOUT
    assert t - (I + 0.01) <= 1.4 * I


def test_hello_timeout_and_handshake_timeout() -> None:
    s = new_session(hello_timeout=2.0)
    s.connect(0.0, "t")
    assert s.next_deadline() == 2.0
    assert closes(s.tick(1.9)) == []
    (c,) = closes(s.tick(2.0))
    assert c.reason == p.HELLO_TIMEOUT
    s.connection_lost(2.0, None)

    s = new_session(handshake_timeout=3.0, idle_timeout_factor=None)
    s.connect(0.0, "t")
    s.receive(hello(), 0.0)
    t, fired = 0.0, None
    while fired is None:
        t += 0.5
        for c in closes(s.tick(t)):
            fired = c
        s.receive(ACK, t)
    assert fired.reason == p.HANDSHAKE_TIMEOUT and t == pytest.approx(3.0)


@pytest.mark.parametrize("bad", [0, -5, "41250", None, True, [1]])
def test_malformed_heartbeat_interval_is_a_protocol_error_not_a_storm(bad: Any) -> None:
    s = new_session()
    s.connect(0.0, "t")
    raw = json.dumps({"op": 10, "d": {"heartbeat_interval": bad}})
    out = s.receive(raw, 0.0)
    (c,) = closes(out)
    assert c.reason == p.PROTOCOL_ERROR
    assert not sends(out)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_json_numbers_are_not_a_hello(bad: float) -> None:
    # NaN and Infinity are not JSON (RFC 8259): the parser refuses the frame, a violation, and
    # without a Hello the hello deadline ends the link.
    s = new_session(hello_timeout=5.0)
    s.connect(0.0, "t")
    raw = json.dumps({"op": 10, "d": {"heartbeat_interval": bad}}, allow_nan=True)
    out = s.receive(raw, 0.0)
    assert not closes(out) and not sends(out)
    assert emitted(out, ev.ProtocolViolation)
    (c,) = closes(s.tick(5.0))
    assert c.reason == p.HELLO_TIMEOUT


def test_tiny_interval_is_clamped() -> None:
    s = new_session(min_heartbeat_interval=0.5)
    s.connect(0.0, "t")
    s.receive(hello(1), 0.0)
    assert s.heartbeat_interval == 0.5


def test_resume_after_disconnect_sends_session_and_seq_and_dedupes_replay() -> None:
    s = identified()
    for seq in range(2, 6):
        s.receive(dispatch(seq), 0.1)
    s.connection_lost(1.0, 4009)
    s.connect(2.0, "tok2")
    out = s.receive(hello(), 2.0)
    (resume,) = sends(out)
    assert resume == {"op": 6, "d": {"token": "QQBot tok2", "session_id": "sess-1", "seq": 5}}
    # the server replays 4 and 5 (already delivered) then 6, 7
    got = []
    for seq in (4, 5, 6, 7):
        got += delivered(s.receive(dispatch(seq), 2.1))
    assert [e.seq for e in got] == [6, 7]
    assert all(e.replayed for e in got)
    out = s.receive(json.dumps({"op": 0, "s": 7, "t": "RESUMED", "d": ""}), 2.2)
    (resumed,) = emitted(out, ev.SessionResumed)
    assert resumed.replayed == 2
    assert s.phase is Phase.READY


def test_event_id_dedupe_across_sessions() -> None:
    s = identified()
    assert delivered(s.receive(dispatch(2, event_id="E1"), 0.1))
    s.connection_lost(0.2, 4006)  # identify
    s.connect(0.3, "t")
    s.receive(hello(), 0.3)
    s.receive(ready("sess-2"), 0.3)
    out = s.receive(dispatch(2, event_id="E1"), 0.4)
    assert not delivered(out)
    assert emitted(out, ev.DuplicateDropped)


def test_op7_reconnect_is_resumable_with_non_1000_close() -> None:
    s = identified()
    (c,) = closes(s.receive(json.dumps({"op": 7}), 1.0))
    assert c.reason == p.RECONNECT_REQUESTED and c.code not in (1000, 1001) and not c.abort
    outcome = s.connection_lost(1.1, None)
    assert outcome.action is CloseAction.RESUME and outcome.resumable


@pytest.mark.parametrize(("d", "resumable"), [(True, True), (False, False)])
def test_op9_invalid_session(d: bool, resumable: bool) -> None:
    s = identified()
    (c,) = closes(s.receive(json.dumps({"op": 9, "d": d}), 1.0))
    assert c.reason == p.INVALID_SESSION
    outcome = s.connection_lost(1.1, None)
    assert outcome.resumable is resumable
    assert s.can_resume is resumable


@pytest.mark.parametrize(
    ("code", "action", "resumable"),
    [
        (4009, CloseAction.RESUME, True),
        (4006, CloseAction.IDENTIFY, False),
        (4007, CloseAction.IDENTIFY, False),
        (4900, CloseAction.IDENTIFY, False),
        (4913, CloseAction.IDENTIFY, False),
        (4004, CloseAction.REFRESH_TOKEN, False),
        (4008, CloseAction.WAIT_THEN_RESUME, True),
        (4001, CloseAction.SLOW_IDENTIFY, False),
        (4914, CloseAction.FATAL, False),
        (4915, CloseAction.FATAL, False),
        (4013, CloseAction.FATAL, False),
        (4014, CloseAction.FATAL, False),
        (4999, CloseAction.IDENTIFY, False),
        (None, CloseAction.RESUME, True),
    ],
)
def test_close_code_table(code: int | None, action: CloseAction, resumable: bool) -> None:
    s = identified()
    outcome = s.connection_lost(1.0, code)
    assert outcome.action is action
    assert outcome.resumable is resumable
    assert outcome.reason == p.close_reason(code)
    assert outcome.reason in p.DISCONNECT_REASONS
    if action is CloseAction.FATAL:
        assert outcome.fatal_message and str(code) in outcome.fatal_message


def test_failed_resumes_fall_back_to_identify() -> None:
    s = identified(max_resume_failures=3)
    s.connection_lost(0.5, None)
    for attempt in range(3):
        s.connect(1.0 + attempt, "t")
        (frame,) = sends(s.receive(hello(), 1.0 + attempt))
        assert frame["op"] == 6
        s.connection_lost(1.5 + attempt, None)  # dropped before RESUMED
    s.connect(10.0, "t")
    (frame,) = sends(s.receive(hello(), 10.0))
    assert frame["op"] == 2


def test_identify_refused_repeatedly_is_fatal_intents() -> None:
    s = new_session(max_identify_rejections=3)
    outcome = None
    for attempt in range(3):
        s.connect(float(attempt), "t")
        s.receive(hello(), float(attempt))
        s.receive(json.dumps({"op": 9, "d": False}), attempt + 0.1)
        outcome = s.connection_lost(attempt + 0.2, None)
    assert outcome is not None and outcome.action is CloseAction.FATAL
    assert "intents" in (outcome.fatal_message or "")


def test_backpressure_refuses_without_advancing_seq() -> None:
    s = identified()
    assert delivered(s.receive(dispatch(2), 0.1))
    s.set_backpressure(True)
    out = s.receive(dispatch(3), 0.2)
    assert not delivered(out)
    (c,) = closes(out)
    assert c.reason == p.HANDLER_BACKPRESSURE
    assert s.seq == 2
    outcome = s.connection_lost(0.3, None)
    assert outcome.resumable


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        b"\x00\x01binary",
        json.dumps([1, 2]),
        json.dumps({"op": "0"}),
        json.dumps({"d": {}}),
        json.dumps({"op": 99, "d": {}}),
        json.dumps({"op": 0, "s": 5, "d": {}}),
    ],
)
def test_bad_frames_never_raise_and_never_kill_a_ready_session(raw: Any) -> None:
    s = identified()
    out = s.receive(raw, 0.5)
    assert not closes(out)
    assert emitted(out, ev.FrameReceived)
    assert s.phase is Phase.READY


def test_unknown_event_types_pass_through() -> None:
    s = identified()
    (event,) = delivered(s.receive(dispatch(2, t="SOMETHING_NEW_2027"), 0.1))
    assert event.type == "SOMETHING_NEW_2027"


def test_heartbeats_never_faster_than_the_interval_after_a_stall() -> None:
    s = identified(idle_timeout_factor=None)
    sent_at = []
    for t in (I, 5 * I, 5 * I + 0.01, 5 * I + 0.5, 6 * I, 6.2 * I):
        if sends(s.tick(t)):
            sent_at.append(t)
        s.receive(ACK, t)
    gaps = [b - a for a, b in itertools.pairwise(sent_at)]
    assert all(g >= I - 1e-9 for g in gaps), gaps


def test_session_validation() -> None:
    with pytest.raises(ValueError, match="shard id"):
        GatewaySession(shard_id=2, shard_count=2, intents=1)
    with pytest.raises(ValueError, match="unknown intent"):
        GatewaySession(intents="GUILDS|NOPE")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ack_timeout_min"):
        LivenessConfig(ack_timeout_min=0)
    s = new_session()
    with pytest.raises(RuntimeError):
        s.receive(ACK, 0.0)


def test_parse_intents_forms() -> None:
    assert p.parse_intents("GUILDS|group_and_c2c_event") == 1 | (1 << 25)
    assert p.parse_intents("0x2000000") == 1 << 25
    assert p.parse_intents(["GUILDS", "DIRECT_MESSAGE"]) == 1 | (1 << 12)
    for bad in ("", "0", "-1", "1<<25", "GUILDS,,BAD", 1 << 3):
        with pytest.raises(ValueError):
            p.parse_intents(bad)


# --- new_event: the per-event constructor ---------------------------------------------------
def test_new_event_sets_every_field_of_gateway_event() -> None:
    """A field added to GatewayEvent must be added to new_event too: this fails until it is."""
    import dataclasses
    import inspect

    from qqbot_gateway.adapter.protocol import GatewayEvent, new_event

    names = [f.name for f in dataclasses.fields(GatewayEvent)]
    assert list(inspect.signature(new_event).parameters) == names
    values: dict[str, object] = {name: object() for name in names}  # distinct, by identity
    made = new_event(**values)  # type: ignore[arg-type]
    assert type(made) is GatewayEvent
    for name in names:
        assert getattr(made, name) is values[name], name
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.seq = 2  # type: ignore[misc]
    assert made == GatewayEvent(**values)  # type: ignore[arg-type]
    assert hash(new_event("T", None, 1, "i", 0, "s", False)) == hash(
        GatewayEvent("T", None, 1, "i", 0, "s", False)
    )


def test_new_event_falls_back_to_the_constructor_where_its_trick_fails() -> None:

    from qqbot_gateway.adapter.protocol import GatewayEvent, new_event, verified_builder

    assert verified_builder(new_event) is new_event  # CPython: the fast builder is kept

    def refused(*args: Any) -> GatewayEvent:
        raise TypeError("__class__ assignment only supported for ...")

    def forgets_a_field(*args: Any) -> GatewayEvent:
        return GatewayEvent(*args[:-1])  # replayed left at its default

    for broken in (refused, forgets_a_field):
        fallback = verified_builder(broken)
        assert fallback is GatewayEvent
        event = fallback("T", {}, 3, "id", 1, "s", True)  # the fallback run
        assert event.replayed is True and event.seq == 3
