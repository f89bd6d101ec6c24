"""The pure liveness layers (``adapter/liveness.py``) alone: a :class:`Link`, explicit times.

No session, no frames: what each layer decides for one connection's state, and when it wants
to be asked again. ``tests/test_session_liveness.py`` runs the same rules through the session.
"""

from __future__ import annotations

from typing import Any

import pytest

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter import protocol as p
from qqbot_gateway.adapter.actions import Emit, Send, SendPing, TuneSocket
from qqbot_gateway.adapter.liveness import Link, Liveness, PingState
from qqbot_gateway.adapter.types import LivenessConfig

H = 2.0  # any interval: every rule is a fraction of it


def started(**config: Any) -> tuple[Liveness, Link, list[Any]]:
    layers = Liveness(LivenessConfig(**config), shard_id=3)
    link = Link(last_frame_at=0.0)
    return layers, link, layers.start(link, H, 0.0)


def kinds(actions: list[Any]) -> list[str]:
    return [type(a.event).__name__ if isinstance(a, Emit) else type(a).__name__ for a in actions]


def test_start_schedules_the_first_heartbeat_tunes_the_socket_and_calibrates_pings() -> None:
    layers, link, out = started()
    assert link.interval == H and link.hello_at == 0.0
    assert link.next_heartbeat_at == H
    tune = [a for a in out if isinstance(a, TuneSocket)]
    assert tune == [TuneSocket(max(H, 1.0))]
    assert link.ping_state is PingState.CALIBRATING
    assert kinds(out) == ["TuneSocket", "PingLayerChanged"]
    assert min(layers.deadlines(link)) == pytest.approx(0.05 * H)  # the calibration ping


def test_a_missing_ack_is_probed_then_judged_at_1_4_h() -> None:
    layers, link, _ = started(ws_ping=False)
    out = layers.timers(link, H, seq=7)
    sends = [a for a in out if isinstance(a, Send)]
    assert [s.payload for s in sends] == [{"op": 1, "d": 7}]
    assert link.unacked == 1 and link.ack_deadline_at == pytest.approx(1.4 * H)
    # Two probes, evenly inside the deadline, then the verdict at the deadline.
    probes = []
    for _ in range(2):
        at = min(t for t in layers.deadlines(link) if t > H)
        probes.append(at)
        assert layers.verdict(link, at) is None
        assert "HeartbeatSent" in kinds(layers.timers(link, at, seq=7))
    assert probes == pytest.approx([H + 0.4 * H / 3, H + 0.8 * H / 3])
    assert link.unacked == 3
    assert layers.verdict(link, 1.4 * H - 1e-6) is None
    reason, detail = layers.verdict(link, 1.4 * H) or ("", "")
    assert reason == p.ACK_TIMEOUT and "2 probe(s)" in detail


def test_an_ack_answers_the_round_and_samples_the_rtt() -> None:
    layers, link, _ = started(ws_ping=False)
    layers.timers(link, H, seq=0)
    out = layers.on_ack(link, H + 0.1)
    (acked,) = [a.event for a in out if isinstance(a, Emit)]
    assert isinstance(acked, ev.HeartbeatAcked) and acked.rtt == pytest.approx(0.1)
    assert link.unacked == 0 and link.ack_deadline_at is None
    assert link.ack_rtt.samples == 1
    assert layers.verdict(link, 1.4 * H) is None


def test_the_ping_layer_arms_on_a_pong_and_judges_a_silence_at_0_35_h() -> None:
    layers, link, _ = started(idle_timeout_factor=None)
    (ping,) = [a for a in layers.timers(link, 0.05 * H, seq=0) if isinstance(a, SendPing)]
    out = layers.on_pong(link, ping.payload, 0.05 * H + 0.01)
    assert link.ping_state is PingState.ARMED and "PongReceived" in kinds(out)
    link.last_frame_at = 0.1 * H  # the last frame; then silence
    silent_ping = layers.next_ping_at(link)
    assert silent_ping is not None and silent_ping == pytest.approx(
        0.15 * H
    )  # ping_quiet after the last frame
    assert [type(a) for a in layers.timers(link, silent_ping, seq=0)] == [SendPing, Emit]
    verdict_at = silent_ping + 0.3 * H  # the pong deadline's floor
    assert layers.verdict(link, verdict_at - 1e-6) is None
    reason, _ = layers.verdict(link, verdict_at) or ("", "")
    assert reason == p.PING_TIMEOUT
    assert verdict_at - link.last_frame_at == pytest.approx(0.35 * H)
    assert verdict_at in layers.deadlines(link)


def test_pings_ignored_on_a_live_link_turn_the_layer_off() -> None:
    layers, link, _ = started(idle_timeout_factor=None, ping_unanswered_limit=2)
    changes: list[str] = []
    now = 0.0
    while link.ping_state is PingState.CALIBRATING and now < 20 * H:
        now = min(layers.deadlines(link))
        link.last_frame_at = now  # other frames keep coming: the link is alive
        for action in layers.timers(link, now, seq=0):
            if isinstance(action, Emit) and isinstance(action.event, ev.PingLayerChanged):
                changes.append(action.event.state)
        layers.on_ack(link, now)
    assert changes == ["disabled"]
    assert link.ping_state is PingState.DISABLED and not link.pings


def test_idle_is_judged_first() -> None:
    layers, link, _ = started(ws_ping=False)
    layers.timers(link, H, seq=0)  # an ACK round is open and will be overdue too
    reason, detail = layers.verdict(link, 2.5 * H) or ("", "")
    assert reason == p.IDLE_TIMEOUT and f"{2.5 * H:g}s" in detail
    assert 2.5 * H in layers.deadlines(link)
