"""Every liveness timer of the session, with explicit times (H = the heartbeat interval).

A tiny driver plays the network: it ticks the session at every deadline it asks for, answers
each ping with a pong after ``pong_rtt(t)`` (None: never) and each heartbeat with an ACK after
``ack_rtt(t)`` (None: never), as a server would.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable
from typing import Any

import pytest

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter import protocol as p
from qqbot_gateway.adapter.session import (
    Close,
    Emit,
    GatewaySession,
    LivenessConfig,
    PingState,
    RttEstimator,
    Send,
    SendPing,
    TuneSocket,
)

H = 1.0
ACK = json.dumps({"op": 11})
Rtt = Callable[[float], float | None]


def hello(ms: float = H * 1000) -> str:
    return json.dumps({"op": 10, "d": {"heartbeat_interval": ms}})


def ready() -> str:
    return json.dumps({"op": 0, "s": 1, "t": "READY", "d": {"session_id": "s1", "user": {}}})


def dispatch(seq: int) -> str:
    return json.dumps({"op": 0, "s": seq, "t": "C2C_MESSAGE_CREATE", "id": f"e{seq}", "d": {}})


def live(**liveness: Any) -> GatewaySession:
    s = GatewaySession(intents=1 << 25, liveness=LivenessConfig(**liveness))
    s.connect(0.0, "tok")
    s.receive(hello(), 0.0)
    s.receive(ready(), 0.01)
    return s


def events(actions: list[Any], kind: type[Any]) -> list[Any]:
    return [a.event for a in actions if isinstance(a, Emit) and isinstance(a.event, kind)]


def closes(actions: list[Any]) -> list[Close]:
    return [a for a in actions if isinstance(a, Close)]


def drive(
    s: GatewaySession,
    start: float,
    until: float,
    *,
    pong_rtt: Rtt | None = None,
    ack_rtt: Rtt | None = lambda t: 0.01,
) -> tuple[float, list[Any]]:
    """Run the session from ``start`` to ``until`` (or its first Close); returns (t, actions)."""
    pending: list[tuple[float, int, str, bytes]] = []
    everything: list[Any] = []
    t, n = start, 0
    while True:
        candidates = [x for x in (s.next_deadline(), pending[0][0] if pending else None) if x]
        if not candidates or min(candidates) > until:
            return until, everything
        t = max(t, min(candidates))
        if pending and pending[0][0] <= t:
            _, _, kind, payload = heapq.heappop(pending)
            out = s.receive_pong(payload, t) if kind == "pong" else s.receive(ACK, t)
        else:
            out = s.tick(t)
        everything.extend(out)
        if closes(out):
            return t, everything
        for action in out:
            rtt: float | None = None
            if isinstance(action, SendPing) and pong_rtt is not None:
                rtt, kind, payload = pong_rtt(t), "pong", action.payload
            elif isinstance(action, Send) and action.payload["op"] == 1 and ack_rtt is not None:
                rtt, kind, payload = ack_rtt(t), "ack", b""
            if rtt is not None:
                n += 1
                heapq.heappush(pending, (t + rtt, n, kind, payload))


# --- the ping layer ---------------------------------------------------------------------------


def test_calibration_ping_then_armed_pings_only_when_quiet() -> None:
    s = live()  # Hello at 0.0, READY at 0.01
    assert s.ping_state is PingState.CALIBRATING
    # The calibration ping goes out 0.05 H after Hello even on a busy link
    s.receive(dispatch(2), 0.04)
    assert s.next_deadline() == pytest.approx(0.05)
    (ping,) = [a for a in s.tick(0.05) if isinstance(a, SendPing)]
    # calibrating: one ping at a time, no verdict: only the heartbeat is left
    assert s.next_deadline() == pytest.approx(H)
    out = s.receive_pong(ping.payload, 0.052)
    (pong,) = events(out, ev.PongReceived)
    assert pong.rtt == pytest.approx(0.002)
    assert pong.deadline == pytest.approx(0.3 * H)  # RTO 0.01 s is below the floor
    (changed,) = events(out, ev.PingLayerChanged)
    assert changed.state == "armed"
    assert s.ping_state.name == "ARMED"  # (by name: mypy keeps the CALIBRATING narrowing above)
    # armed: probe only after 0.05 H without a frame; every frame pushes the probe back
    assert s.next_deadline() == pytest.approx(0.102)
    s.receive(dispatch(3), 0.09)
    assert s.next_deadline() == pytest.approx(0.14)
    assert [a for a in s.tick(0.14) if isinstance(a, SendPing)]
    assert s.next_deadline() == pytest.approx(0.19)  # the next probe, 0.05 H later


def test_armed_layer_declares_a_silent_link_dead_within_half_an_interval() -> None:
    s = live()
    cut = 2.5 * H
    t, out = drive(s, 0.01, cut, pong_rtt=lambda t: 0.002)
    assert s.ping_state is PingState.ARMED and not closes(out)
    t, out = drive(s, cut, 10 * H, pong_rtt=None, ack_rtt=None)
    (close,) = closes(out)
    assert close.reason == p.PING_TIMEOUT and close.abort
    (zombie,) = events(out, ev.ZombieDetected)
    assert zombie.reason == p.PING_TIMEOUT
    # quiet for 0.05 H, then the pong deadline at its floor 0.3 H
    assert t - cut <= 0.35 * H + 1e-9
    assert len([a for a in out if isinstance(a, SendPing)]) >= 5  # probes kept going


def test_any_frame_after_the_ping_clears_the_verdict() -> None:
    s = live()
    drive(s, 0.01, 0.2, pong_rtt=lambda t: 0.001)
    assert s.ping_state is PingState.ARMED
    t = s.next_deadline()
    assert t is not None
    out = s.tick(t)
    assert [a for a in out if isinstance(a, SendPing)]
    # no pong, but an event arrives 0.25 H later: the link is alive
    s.receive(dispatch(2), t + 0.25)
    _t2, out = drive(s, t + 0.25, t + 0.25 + 0.05 * H + 0.29 * H, ack_rtt=None)
    assert not closes(out)


def test_pong_deadline_follows_the_rtt_within_floor_and_cap() -> None:
    s = live(ping_timeout_min=0.1, ping_timeout_max=0.45, ping_suspend_rtt=0.4)
    deadlines: list[float] = []
    for _ in range(40):
        t = s.next_deadline()
        assert t is not None
        out = s.tick(t)
        pings = [a for a in out if isinstance(a, SendPing)]
        if pings:
            out = s.receive_pong(pings[0].payload, t + 0.15)
            deadlines += [e.deadline for e in events(out, ev.PongReceived)]
        for a in out:
            if isinstance(a, Send):
                s.receive(ACK, t + 0.001)
    # first sample: srtt 0.15, rttvar 0.075 -> RTO 0.45 (the cap); then the variance decays
    assert deadlines[0] == pytest.approx(0.45)
    assert deadlines[-1] < 0.2 and deadlines[-1] >= 0.15
    assert all(0.1 <= d <= 0.45 for d in deadlines)
    assert deadlines == sorted(deadlines, reverse=True)


def test_a_server_that_never_answers_pings_causes_no_reconnect() -> None:
    s = live()
    t, out = drive(s, 0.01, 60 * H, pong_rtt=None, ack_rtt=lambda t: 0.05)
    assert t == 60 * H and not closes(out)
    changes = events(out, ev.PingLayerChanged)
    assert [c.state for c in changes] == ["disabled"]  # one message, once
    assert "does not answer pings" in changes[0].detail
    assert s.ping_state is PingState.DISABLED
    # calibrating pings one at a time, given up after H each: three pings, then none
    assert len([a for a in out if isinstance(a, SendPing)]) == 3


def test_a_server_that_stops_answering_pings_on_a_busy_link_turns_the_layer_off() -> None:
    s = live()
    t, _ = drive(s, 0.01, 2 * H, pong_rtt=lambda t: 0.01)
    assert s.ping_state is PingState.ARMED
    # pings are dropped from now on, but events keep the link busy (and alive)
    out_all: list[Any] = []
    seq = 2
    while t < 12 * H:
        seq += 1
        out_all += s.receive(dispatch(seq), t)
        t, out = drive(s, t, t + 0.1 * H, pong_rtt=None)
        out_all += out
    assert not closes(out_all)
    assert [c.state for c in events(out_all, ev.PingLayerChanged)] == ["disabled"]


def test_ping_rtt_drifting_up_slowly_never_fakes_a_verdict() -> None:
    """RTT climbs from 2 ms to 0.6 H over 200 intervals, then falls back: the deadline follows
    it, the layer stands by once the smoothed RTT passes 0.2 H, arms again when it is back."""
    s = live()

    def rtt(t: float) -> float:
        return 0.002 + min(t, 200 * H - t if t > 200 * H else t) / (200 * H) * 0.6 * H

    _t, out = drive(s, 0.01, 380 * H, pong_rtt=rtt, ack_rtt=lambda t: 0.01)
    assert not closes(out)
    states = [c.state for c in events(out, ev.PingLayerChanged)]
    assert states == ["armed", "suspended", "armed"]
    pongs = events(out, ev.PongReceived)
    assert max(pong.deadline for pong in pongs) == pytest.approx(0.45 * H)
    assert min(pong.deadline for pong in pongs) == pytest.approx(0.3 * H)


def test_ping_layer_off_by_configuration() -> None:
    s = live(ws_ping=False)
    assert s.ping_state is PingState.OFF
    _, out = drive(s, 0.01, 5 * H)
    assert not [a for a in out if isinstance(a, SendPing)]


def test_unsolicited_pongs_and_server_pings_count_as_frames() -> None:
    s = live(ws_ping=False, idle_timeout_factor=1.5)
    assert s.next_deadline() == pytest.approx(H)
    s.tick(H)
    s.receive(ACK, H + 0.01)
    assert s.receive_pong(b"not ours", 2.0) == []
    assert s.receive_ping(2.4) == []
    t = s.next_deadline()
    assert t is not None and t == pytest.approx(2 * H)  # the heartbeat; idle now at 3.9


# --- the ACK layer ------------------------------------------------------------------------------


def test_ack_rtt_drifting_up_slowly_stretches_the_deadline_without_a_false_verdict() -> None:
    s = live(ws_ping=False)

    def ack(t: float) -> float:
        return 0.01 + min(t / (300 * H), 1.0) * 0.7 * H  # up to 0.71 H: beyond the floor

    _t, out = drive(s, 0.01, 320 * H, ack_rtt=ack)
    assert not closes(out)
    rtt = s.ack_rtt
    assert rtt is not None and rtt.srtt is not None and rtt.srtt > 0.6 * H
    # the deadline now derives from the RTT (above the 0.4 H floor, below the 0.9 H cap)
    deadline = s.liveness.ack_deadline(H, rtt.rto())
    assert 0.7 * H < deadline <= 0.9 * H


def test_server_stops_acking_while_events_flow_is_dead_within_one_and_a_half_intervals() -> None:
    s = live(ws_ping=False)
    t, _ = drive(s, 0.01, 5.0 * H)
    stop = 5.0 * H  # just after the ACK of the heartbeat at ~5 H: the worst phase
    out_all: list[Any] = []
    seq = 1
    while not closes(out_all) and t < stop + 3 * H:
        seq += 1
        out_all += s.receive(dispatch(seq), t)
        t, out = drive(s, t, t + 0.05 * H, ack_rtt=None)
        out_all += out
    (close,) = closes(out_all)
    assert close.reason == p.ACK_TIMEOUT
    assert t - stop <= 1.4 * H + 0.05 * H


# --- derived values and validation -----------------------------------------------------------


def test_tcp_user_timeout_derives_from_the_interval() -> None:
    s = GatewaySession(intents=1)
    s.connect(0.0, "t")
    (tune,) = [a for a in s.receive(hello(41250), 0.0) if isinstance(a, TuneSocket)]
    assert tune.tcp_user_timeout == pytest.approx(41.25)
    s2 = GatewaySession(intents=1)
    s2.connect(0.0, "t")
    (tune,) = [a for a in s2.receive(hello(500), 0.0) if isinstance(a, TuneSocket)]
    assert tune.tcp_user_timeout == 1.0  # the floor
    s3 = GatewaySession(intents=1, liveness=LivenessConfig(tcp_user_timeout_factor=None))
    s3.connect(0.0, "t")
    assert not [a for a in s3.receive(hello(500), 0.0) if isinstance(a, TuneSocket)]


def test_worst_cases_in_intervals() -> None:
    """The detection bounds LivenessConfig's docstring promises, at the floors."""
    lv = LivenessConfig()
    assert lv.ping_quiet + lv.ping_timeout_min == pytest.approx(0.35)
    assert 1.0 + lv.ack_timeout_min == pytest.approx(1.4)
    assert lv.idle_deadline(41.25) == pytest.approx(2.5 * 41.25)
    assert lv.ack_miss_limit == 3


def test_rtt_estimator_follows_rfc_6298() -> None:
    r = RttEstimator()
    assert r.rto() is None
    r.sample(0.1)
    assert (r.srtt, r.rttvar) == (0.1, 0.05)
    assert r.rto() == pytest.approx(0.3)
    r.sample(0.3)
    assert r.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 0.2)
    assert r.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ack_timeout_min": 0.5, "ack_timeout_max": 0.4}, "ack_timeout_min"),
        ({"ack_timeout_max": 1.0}, "ack_timeout_min"),
        ({"ack_probes": -1}, "ack_probes"),
        ({"ping_quiet": 0}, "ping_quiet"),
        ({"ping_timeout_min": 0.5, "ping_timeout_max": 0.45}, "ping_timeout_min"),
        ({"ping_suspend_rtt": 0.5}, "ping_suspend_rtt"),
        ({"ping_unanswered_limit": 0}, "ping_unanswered_limit"),
        ({"ping_lost_after": 0.4}, "ping_lost_after"),
        ({"tcp_user_timeout_factor": 0}, "tcp_user_timeout_factor"),
    ],
)
def test_liveness_config_validation(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LivenessConfig(**kwargs)
