"""The pure health evaluator: synthetic events and explicit times in, verdicts and reasons out."""

from __future__ import annotations

from typing import Any

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter.session import LivenessConfig
from qqbot_gateway.telemetry import HealthConfig, HealthEvaluator, HealthReport

from .test_telemetry_support import CS, FakeClient, Feeder

INTERVAL = 1.0
GRACE = 30.0


class World:
    def __init__(self, lag: float = 0.0) -> None:
        self.client = FakeClient()
        self.lag = lag
        self.health = HealthEvaluator(
            shards=(0,),
            liveness=LivenessConfig(),  # ACK deadline <= 0.9 x interval, idle 2.5 x interval
            config=HealthConfig(liveness_grace=GRACE, loop_lag_threshold=1.0, stall_margin=5.0),
            status_provider=self.client.shard_status,
            loop_lag=lambda now: self.lag,
            started_at=0.0,
        )
        self.client.events.subscribe(self.health.observe)
        self.f = Feeder(self.client.events)

    def state(self, t: float, new: ev.ConnectionState, **status: Any) -> None:
        old = self.client.statuses[0].state if 0 in self.client.statuses else CS.IDLE
        self.client.set_status(state=new, state_since=t, **status)
        self.f.state(t, old, new)

    def live(self, t: float) -> None:
        self.state(t, CS.CONNECTING)
        self.state(t, CS.HANDSHAKING)
        self.f.connect(t, interval=INTERVAL)
        self.f.ready(t)
        self.state(t, CS.READY, last_ready_at=t)

    def at(self, now: float) -> HealthReport:
        return self.health.evaluate(now)


def check(report: HealthReport, name: str) -> tuple[bool, str]:
    for c in [*report.checks, *report.readiness]:
        if c.name == name:
            return c.ok, c.reason
    raise AssertionError(f"no check {name}: {report}")


def test_startup_within_grace_is_healthy_not_ready() -> None:
    w = World()
    r = w.at(1.0)
    assert r.healthy and not r.ready
    assert check(r, "shard/0/supervisor") == (True, "idle (no supervisor status yet)")
    w.client.set_status(state=CS.IDLE, task_alive=False)
    assert check(w.at(1.0), "shard/0/supervisor") == (True, "not started yet")
    assert "reconnecting" in check(r, "shard/0/session")[1]


def test_live_session_is_healthy_and_ready_with_acks() -> None:
    w = World()
    w.live(10.0)
    r = w.at(10.5)
    assert r.healthy and r.ready and r.shard_ready == {0: True}
    for t in (11.0, 12.0, 13.0):
        w.f.heartbeat(t)
        w.f.ack(t + 0.02)
    r = w.at(14.5)
    assert r.healthy and r.ready
    assert "last ACK" in check(r, "shard/0/ready")[1]


def test_readiness_needs_a_recent_ack() -> None:
    w = World()
    w.live(10.0)
    w.f.heartbeat(11.0)
    w.f.ack(11.02)
    w.f.emit(ev.FrameReceived, 12.5, op=0, event_type="X", size=1)  # not an ACK
    # (1 + ack_timeout_max + 0.5) x interval = 2.4 s after the last ACK.
    assert w.at(13.4).ready
    r = w.at(13.5)
    assert not r.ready
    assert check(r, "shard/0/ready") == (False, "no heartbeat ACK for 2.5s (limit 2.4s)")


def test_ack_zombie_fails_until_torn_down_and_reconnect_recovers() -> None:
    w = World()
    w.live(10.0)
    w.f.heartbeat(11.0, unacked=1)
    w.f.emit(ev.FrameReceived, 11.5, op=0, event_type="X", size=1)  # keeps idle away
    w.f.heartbeat(11.5, unacked=2)  # a probe
    w.f.emit(ev.FrameReceived, 11.9, op=0, event_type="X", size=1)
    # The session should have acted at its deadline (at most 0.9 s); the evidence alone says
    # so once the heartbeat has waited a whole interval.
    assert w.at(11.99).healthy
    r = w.at(12.0)
    assert not r.healthy and not r.ready
    ok, reason = check(r, "shard/0/connection")
    assert not ok and reason.startswith("ack_timeout: heartbeat unanswered for 1.0s")
    assert check(r, "shard/0/liveness/ack")[0] is False
    assert check(r, "shard/0/liveness/ping")[0] is True
    # The session declares it: still failing until the connection is gone.
    w.f.emit(
        ev.ZombieDetected,
        13.0,
        reason="ack_timeout",
        unacked=2,
        idle_for=0.5,
        heartbeat_interval=1.0,
    )
    reason = check(w.at(13.01), "shard/0/connection")[1]
    assert reason.startswith("ack_timeout: zombie connection declared")
    assert check(w.at(13.01), "shard/0/liveness/ack")[1] == reason
    w.f.disconnect(13.02, "ack_timeout")
    w.state(13.02, CS.BACKOFF, next_attempt_at=13.5)
    r = w.at(13.1)
    assert r.healthy and not r.ready  # visibly reconnecting
    assert "last disconnect: ack_timeout" in check(r, "shard/0/session")[1]
    w.live(13.5)
    assert w.at(13.6).ready


def test_idle_zombie() -> None:
    w = World()
    w.live(10.0)
    assert w.at(12.49).healthy
    r = w.at(12.5)  # idle deadline 2.5 x 1 s after the last frame
    assert check(r, "shard/0/connection") == (False, "idle_timeout: no frame for 2.5s (limit 2.5s)")
    assert not r.healthy


def test_grace_boundary() -> None:
    w = World()
    w.live(10.0)
    w.f.disconnect(20.0, "network_error")
    w.state(20.0, CS.BACKOFF, next_attempt_at=20.5)
    w.state(20.5, CS.CONNECTING)
    assert w.at(20.0 + GRACE).healthy
    r = w.at(20.0 + GRACE + 0.1)
    assert not r.healthy
    assert check(r, "shard/0/session") == (
        False,
        "no live session for 30.1s (grace 30s); last disconnect: network_error",
    )


def test_grace_from_start_when_never_ready() -> None:
    w = World()
    w.state(0.5, CS.CONNECTING)
    assert w.at(GRACE).healthy
    r = w.at(GRACE + 1)
    ok, reason = check(r, "shard/0/session")
    assert not ok and reason.startswith("no live session for 31.0s")


def test_fatal_shard_fails() -> None:
    w = World()
    w.live(1.0)
    w.f.disconnect(2.0, "server_close:4914", 4914)
    w.f.emit(ev.ShardFatal, 2.0, reason="server_close:4914", close_code=4914, message="delisted")
    w.state(2.0, CS.FATAL, task_alive=False, fatal_message="delisted")
    w.f.emit(ev.SupervisorStopped, 2.0, reason="fatal", error="delisted")
    r = w.at(2.1)
    assert not r.healthy and not r.ready
    assert check(r, "shard/0/supervisor") == (False, "shard stopped for good (fatal): delisted")


def test_crashed_and_dead_supervisor() -> None:
    w = World()
    w.live(1.0)
    w.f.disconnect(2.0, "network_error")
    w.state(2.0, CS.STOPPED, task_alive=False)
    r = w.at(2.1)
    assert check(r, "shard/0/supervisor") == (
        False,
        "supervisor task is not running (state stopped)",
    )
    w.f.emit(ev.SupervisorStopped, 2.0, reason="crashed", error="RuntimeError: bug")
    assert check(w.at(2.2), "shard/0/supervisor") == (
        False,
        "supervisor crashed: RuntimeError: bug",
    )


def test_stopped_by_shutdown_is_healthy_and_not_ready() -> None:
    w = World()
    w.live(1.0)
    w.health.begin_shutdown()
    r = w.at(1.5)
    assert r.healthy and not r.ready
    assert check(r, "shutdown") == (False, "shutting down")
    assert r.shard_ready == {0: False}
    w.f.disconnect(2.0, "network_error")
    w.state(2.0, CS.STOPPED, task_alive=False)
    w.f.emit(ev.SupervisorStopped, 2.0, reason="shutdown")
    r = w.at(200.0)
    assert r.healthy
    assert check(r, "shard/0/supervisor") == (True, "stopped by shutdown")


def test_stalled_backoff() -> None:
    w = World()
    w.live(1.0)
    w.f.disconnect(2.0, "network_error")
    w.state(2.0, CS.BACKOFF, next_attempt_at=3.0, attempts=4)
    assert w.at(8.0).healthy  # 5 s late: within the margin
    r = w.at(8.5)
    assert check(r, "shard/0/supervisor") == (
        False,
        "stalled: next connection attempt overdue by 5.5s (attempt 4)",
    )


def test_stalled_connecting_and_handshaking() -> None:
    w = World()
    w.state(1.0, CS.CONNECTING)
    limit = w.health.connecting_limit()  # 2 x (2 x 10 + 10) + 5
    assert limit == 65.0
    assert check(w.at(1.0 + limit), "shard/0/supervisor")[0]
    ok, reason = check(w.at(1.0 + limit + 1), "shard/0/supervisor")
    assert not ok and reason.startswith("stalled: connecting for")
    w.state(100.0, CS.HANDSHAKING)
    limit = w.health.handshaking_limit(None)  # 2 x (10 + 10 + 60 + 2 x 1) + 5
    assert limit == 169.0
    ok, reason = check(w.at(100.0 + limit + 1), "shard/0/supervisor")
    assert not ok and reason.startswith("stalled: handshaking for")


def test_loop_lag() -> None:
    w = World(lag=0.5)
    assert check(w.at(1.0), "event_loop") == (True, "lag 0.500s")
    w.lag = 1.5
    r = w.at(1.0)
    assert not r.healthy
    assert check(r, "event_loop") == (False, "event loop lag 1.500s exceeds 1s")


def test_status_provider_failure_is_a_failing_check() -> None:
    w = World()

    def broken() -> list[object]:
        raise RuntimeError("boom")

    w.health.status_provider = broken  # type: ignore[assignment]
    r = w.at(1.0)
    assert not r.healthy
    assert check(r, "supervisors") == (False, "shard status unavailable: RuntimeError")


def test_no_shards_is_not_ready() -> None:
    h = HealthEvaluator(started_at=0.0)
    r = h.evaluate(1.0)
    assert r.healthy and not r.ready
    assert check(r, "shards") == (False, "no shards registered")


def test_idle_layer_reads_the_adapters_frame_counter() -> None:
    # With the adapter's counters bound, frames reach health as counts, not as events: the idle
    # line must count from the last counted frame, not from when the connection opened.
    w = World()
    stats = ev.ShardStats(0)
    w.health.add_shard(0, stats)
    w.live(10.0)
    stats.last_frame_at = 14.5
    assert check(w.at(15.0), "shard/0/liveness/idle")[1].startswith("last frame 0.5s ago,")


def test_reasons_are_sanitized() -> None:
    w = World()
    w.health.sanitize = lambda text: text.replace("hunter2", "[REDACTED]")
    w.f.emit(
        ev.ShardFatal,
        1.0,
        reason="token_error",
        close_code=None,
        message="access token refused: secret hunter2",
    )
    w.state(1.0, CS.FATAL, task_alive=False, fatal_message="access token refused: hunter2")
    reason = check(w.at(1.1), "shard/0/supervisor")[1]
    assert "hunter2" not in reason and "[REDACTED]" in reason


def test_liveness_layers_are_reported_one_line_each() -> None:
    w = World()
    w.live(10.0)
    w.f.emit(ev.PingLayerChanged, 10.1, state="armed", detail="the server answers pings")
    w.f.emit(ev.PongReceived, 10.1, rtt=0.004, deadline=0.3)
    r = w.at(10.5)
    assert r.healthy
    assert check(r, "shard/0/liveness/ping") == (
        True,
        "armed: RTT 4 ms, probe after 0.05s = 0.05 H quiet, pong deadline 0.3s = 0.30 H",
    )
    ack = check(r, "shard/0/liveness/ack")[1]
    assert ack.startswith("ACK deadline 0.4s = 0.40 H to 0.9s = 0.90 H per heartbeat, 2 probe(s)")
    assert check(r, "shard/0/liveness/idle")[1].endswith("limit 2.5s = 2.50 H")
    assert check(r, "shard/0/liveness/tcp") == (True, "TCP_USER_TIMEOUT 1s = 1.00 H")
    w.f.emit(ev.PingLayerChanged, 11.0, state="disabled", detail="pings go unanswered")
    assert check(w.at(11.1), "shard/0/liveness/ping") == (True, "disabled: pings go unanswered")
    w.f.emit(
        ev.ZombieDetected,
        11.2,
        reason="ping_timeout",
        unacked=0,
        idle_for=0.4,
        heartbeat_interval=1,
    )
    r = w.at(11.3)
    assert not r.healthy
    assert check(r, "shard/0/liveness/ping")[0] is False
    assert check(r, "shard/0/liveness/ack")[0] is True


def _stream(**overrides: Any) -> Any:
    from qqbot_gateway.cluster.stream import AppendHealth

    fields: dict[str, Any] = {
        "failing_for": None,
        "error": None,
        "failures": 0,
        "in_flight_for": None,
        "blocked_for": None,
        "length": 12,
        "max_len": 100,
        "last_append_ago": 0.5,
    }
    fields.update(overrides)
    return AppendHealth(**fields)


def _stream_checks(w: World, now: float) -> tuple[tuple[bool, str], tuple[bool, str]]:
    r = w.at(now)
    live = [c for c in r.checks if c.name == "stream/append"]
    ready = [c for c in r.readiness if c.name == "stream/append"]
    assert len(live) == len(ready) == 1, r
    assert r.healthy == all(c.ok for c in r.checks)
    assert r.ready == all(c.ok for c in r.readiness)
    return (live[0].ok, live[0].reason), (ready[0].ok, ready[0].reason)


def test_stream_append_fails_readiness_at_once_and_liveness_only_past_the_grace() -> None:
    w = World()
    w.live(0.0)
    state = {"now": _stream()}
    w.health.stream_status = lambda: state["now"]
    live, ready = _stream_checks(w, 0.5)
    assert live == ready == (True, "last append 0.5s ago (12 of 100 entries)")
    assert w.at(0.5).ready
    error = "append: ConnectionError: Error 111 connecting to 127.0.0.1:6379. Connection refused."
    state["now"] = _stream(failing_for=GRACE - 1, error=error, failures=4)
    live, ready = _stream_checks(w, 0.5)
    assert not ready[0] and "appends failing for 29.0s (4 attempt(s)" in ready[1]
    assert "Connection refused" in ready[1]
    assert live[0] and "a restart cannot fix Redis" in live[1]
    r = w.at(0.5)
    assert r.healthy and not r.ready
    assert r.shard_ready == {0: True}, "the ready{shard} gauge stays the session's"
    state["now"] = _stream(failing_for=GRACE + 1, error=error, failures=60)
    live, ready = _stream_checks(w, 0.5)
    assert not live[0] and f"(grace {GRACE:g}s)" in live[1] and "restart" not in live[1]
    assert not w.at(0.5).healthy


def test_stream_append_unanswered_and_full() -> None:
    w = World()
    w.live(0.0)
    state = {"now": _stream(in_flight_for=4.0)}
    w.health.stream_status = lambda: state["now"]
    live, ready = _stream_checks(w, 0.5)  # within the stall margin (5 s here): a busy Redis
    assert live[0] and ready[0]
    state["now"] = _stream(in_flight_for=6.0)
    live, ready = _stream_checks(w, 0.5)
    assert not ready[0] and "an append unanswered by Redis for 6.0s" in ready[1]
    assert live[0]
    state["now"] = _stream(in_flight_for=GRACE + 0.5)
    assert not _stream_checks(w, 0.5)[0][0]
    # Full: readiness fails, liveness never (the workers are behind, not this process).
    state["now"] = _stream(blocked_for=GRACE * 10, length=100)
    live, ready = _stream_checks(w, 0.5)
    assert not ready[0] and "stream full: 100 of 100 entries" in ready[1]
    assert "QQBOT_STREAM_MAX_LEN" in ready[1]
    assert live[0] and live[1] == ready[1]
    state["now"] = _stream(length=100)  # full, no append waiting yet: the next one will
    live, ready = _stream_checks(w, 0.5)
    assert not ready[0] and ready[1].endswith("the next append waits for room"), ready
    assert live[0]
    # Failing while full: the failure is what the check says.
    state["now"] = _stream(blocked_for=3.0, failing_for=2.0, error="poll: TimeoutError")
    assert "appends failing" in _stream_checks(w, 0.5)[1][1]


def test_stream_append_with_the_webhook_transport_and_a_broken_provider() -> None:
    from qqbot_gateway.adapter.types import WebhookStatus

    w = World()
    w.health.webhook_status = lambda: WebhookStatus(
        listening=True,
        listening_since=0.0,
        closing=False,
        stopped=None,
        handlers_alive=True,
        validated_at=None,
        last_valid_at=None,
    )
    w.health.stream_status = lambda: _stream(failing_for=1.0, error="append: TimeoutError")
    live, ready = _stream_checks(w, 0.5)
    assert live[0] and not ready[0]

    def broken() -> Any:
        raise RuntimeError("boom")

    w.health.stream_status = broken
    live, ready = _stream_checks(w, 0.5)
    assert live == ready == (False, "stream status unavailable: RuntimeError")
