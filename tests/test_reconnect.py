"""The reconnect planner and the shared backoff, with explicit times: no sockets, no sleeping."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter import protocol as p
from qqbot_gateway.adapter.backoff import Backoff, backoff_delays
from qqbot_gateway.adapter.protocol import CloseAction
from qqbot_gateway.adapter.reconnect import (
    BACKPRESSURE_PAUSE,
    LogLine,
    Plan,
    PlanKind,
    PlannerState,
    ReconnectPlanner,
    ReconnectPolicy,
    attempt_failed,
    session_start_wait,
)
from qqbot_gateway.adapter.session import GatewaySession, Outcome
from qqbot_gateway.adapter.waiting import sleep_or_wake


def top(low: float, high: float) -> float:
    """The rng that always takes the ceiling: every delay exact."""
    return high


def bottom(low: float, high: float) -> float:
    return low


POLICY = ReconnectPolicy(
    backoff_base=1.0,
    backoff_cap=16.0,
    healthy_after=30.0,
    rate_limit_wait=60.0,
    quick_lifetime=5.0,
    quick_loop_threshold=3,
)


def planner(policy: ReconnectPolicy = POLICY) -> ReconnectPlanner:
    return ReconnectPlanner(policy, shard=2, rng=top)


def outcome(
    reason: str = p.NETWORK_ERROR,
    action: CloseAction = CloseAction.RESUME,
    *,
    code: int | None = None,
    resumable: bool = True,
    was_ready: bool = True,
    fatal_message: str | None = None,
) -> Outcome:
    return Outcome(
        reason=reason,
        close_code=code,
        detail="test",
        action=action,
        resumable=resumable,
        was_ready=was_ready,
        fatal_message=fatal_message,
    )


def run(
    plans: ReconnectPlanner, outcomes: list[tuple[Outcome, float | None]], now: float = 100.0
) -> list[Plan]:
    state, out = PlannerState(), []
    for item, lifetime in outcomes:
        plan = plans.plan(item, lifetime=lifetime, state=state, now=now)
        state = plan.state
        out.append(plan)
        now += (lifetime or 0.0) + plan.delay
    return out


# --- backoff ---------------------------------------------------------------------------------
def test_backoff_doubles_to_the_cap_with_full_jitter() -> None:
    schedule = Backoff(0.5, 10.0)
    assert [schedule.ceiling(n) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert schedule.delay(3, top) == 4.0
    assert schedule.delay(3, bottom) == 0.0
    assert schedule.ceiling(10_000) == 10.0  # a year-long outage stays finite
    delays = backoff_delays(1.0, 4.0, top)
    assert [next(delays) for _ in range(5)] == [1.0, 2.0, 4.0, 4.0, 4.0]


def test_backoff_equal_jitter_floor_and_bad_values() -> None:
    assert Backoff(1.0, 60.0, floor=0.5).delay(2, bottom) == 2.0
    for bad in ((0.0, 1.0, 0.0), (2.0, 1.0, 0.0), (1.0, 2.0, 1.5)):
        with pytest.raises(ValueError):
            Backoff(*bad)


async def test_sleep_or_wake_uses_the_injected_sleep_and_wakes_early() -> None:
    slept: list[float] = []
    wake = asyncio.Event()

    async def instant(seconds: float) -> None:
        slept.append(seconds)

    await sleep_or_wake(instant, wake, 3600.0, name="test")
    assert slept == [3600.0]

    async def forever(seconds: float) -> None:
        await asyncio.Event().wait()

    asyncio.get_running_loop().call_soon(wake.set)
    async with asyncio.timeout(5):
        await sleep_or_wake(forever, wake, 3600.0, name="test")


# --- the planner -----------------------------------------------------------------------------
def test_transient_failures_back_off_and_a_healthy_connection_resets() -> None:
    flaky = outcome(was_ready=True)
    plans = run(planner(), [(flaky, 10.0), (flaky, 10.0), (flaky, 10.0), (flaky, 40.0)])
    assert [x.delay for x in plans] == [1.0, 2.0, 4.0, 1.0]
    assert all(x.kind is PlanKind.RECONNECT and x.mode == "resume" for x in plans)
    assert plans[-1].state == PlannerState(failures=1, quick_failures=0)
    first = plans[0]
    assert level(first) == logging.WARNING
    assert first.logs[-1].message == (
        "shard 2 disconnected (network_error: test) after 10.0s; resume in 1.00s"
    )
    assert first.logs[-1].extra == {"reason": p.NETWORK_ERROR, "close_code": None, "shard": 2}
    (disconnected,) = first.events
    assert isinstance(disconnected, ev.Disconnected)
    assert (disconnected.shard, disconnected.monotonic, disconnected.connection_age) == (
        2,
        100.0,
        10.0,
    )


def test_quick_loop_is_announced_once_and_floors_the_delay() -> None:
    quick = outcome(was_ready=False, resumable=False, action=CloseAction.IDENTIFY)
    plans = run(ReconnectPlanner(POLICY, shard=2, rng=bottom), [(quick, 1.0)] * 5)
    assert [x.delay for x in plans] == [0.0, 0.0, 8.0, 8.0, 8.0]
    loops = [e for x in plans for e in x.events if isinstance(e, ev.ReconnectLoopDetected)]
    assert len(loops) == 1
    assert (loops[0].quick_failures, loops[0].min_delay) == (3, 8.0)
    assert plans[2].logs[0] == LogLine(
        logging.WARNING, "shard 2: 3 quick disconnects in a row; slowing reconnects to >= 8.0s"
    )
    assert all(x.mode == "identify" for x in plans)
    # a connection that never opened is quick too; a long one in between breaks the streak
    never = outcome(was_ready=False)
    long = outcome(was_ready=True)
    streak = run(planner(), [(never, None), (never, None), (long, 20.0), (never, None)])
    assert [x.state.quick_failures for x in streak] == [1, 2, 0, 1]
    assert streak[0].logs[-1].message.endswith("after never opened; resume in 1.00s")


def test_rate_limit_waits_and_payload_rejection_is_our_bug() -> None:
    rate = outcome("server_close:4008", CloseAction.WAIT_THEN_RESUME, code=4008)
    (plan,) = run(planner(), [(rate, 20.0)])
    assert plan.delay == 60.0
    slow = outcome("server_close:4001", CloseAction.SLOW_IDENTIFY, code=4001, resumable=False)
    (plan,) = run(planner(), [(slow, 20.0)])
    assert (plan.delay, plan.mode) == (16.0, "identify")
    assert [line.level for line in plan.logs] == [logging.ERROR, logging.WARNING]
    assert "bug in the adapter" in plan.logs[0].message


def level(plan: Plan) -> int:
    """The level of a plan's disconnect line (its last log line)."""
    assert plan.logs, "a reconnect plan has its disconnect line"
    return plan.logs[-1].level


def test_refresh_token_and_routine_reasons() -> None:
    (plan,) = run(planner(), [(outcome("server_close:4004", CloseAction.REFRESH_TOKEN), 20.0)])
    assert plan.refresh_token
    for reason in (p.RECONNECT_REQUESTED, "server_close:4009", "server_close:1000"):
        (plan,) = run(planner(), [(outcome(reason), 20.0)])
        assert level(plan) == logging.INFO, reason
    (resumable_op9,) = run(planner(), [(outcome(p.INVALID_SESSION), 20.0)])
    (identify_op9,) = run(planner(), [(outcome(p.INVALID_SESSION, resumable=False), 20.0)])
    assert (level(resumable_op9), level(identify_op9)) == (logging.INFO, logging.WARNING)


def test_backpressure_is_no_failure() -> None:
    state = PlannerState(failures=3, quick_failures=2)
    plan = planner().plan(
        outcome(p.HANDLER_BACKPRESSURE, was_ready=True), lifetime=0.5, state=state, now=7.0
    )
    assert plan.drain_first and plan.delay == BACKPRESSURE_PAUSE
    assert plan.state == state  # no backoff growth, no quick-loop count
    assert level(plan) == logging.WARNING  # our own throttle, but worth seeing
    assert not plan.refresh_token


def test_fatal_stops_with_the_sessions_message() -> None:
    fatal = outcome(
        "server_close:4914", CloseAction.FATAL, code=4914, resumable=False, fatal_message="banned"
    )
    plan = planner().plan(fatal, lifetime=3.0, state=PlannerState(), now=5.0)
    assert (plan.kind, plan.fatal_message, plan.delay) == (PlanKind.STOP, "banned", 0.0)
    assert [type(e) for e in plan.events] == [ev.Disconnected]


def test_session_outcomes_feed_the_planner() -> None:
    """End to end without I/O: the session's verdict on a 4008 close, then the plan."""
    lost = ready_session().connection_lost(50.0, 4008, "too fast")
    plan = planner().plan(lost, lifetime=50.0, state=PlannerState(), now=50.0)
    assert (plan.delay, plan.mode, plan.kind) == (60.0, "resume", PlanKind.RECONNECT)


def ready_session() -> GatewaySession:
    session = GatewaySession(intents=1)
    session.connect(0.0, "token")
    session.receive(json.dumps({"op": 10, "d": {"heartbeat_interval": 1000}}), 0.1)
    ready = {"op": 0, "s": 1, "t": "READY", "d": {"session_id": "s-1", "user": {"id": "1"}}}
    session.receive(json.dumps(ready), 0.2)
    return session


def test_the_servers_close_is_its_verdict_unless_we_closed_first() -> None:
    """The close-code reconciliation the driver used to do: now session policy."""
    session = ready_session()
    session.server_closed(4009, "session timed out")
    lost = session.connection_lost(5.0, socket_code=4009)
    assert (lost.reason, lost.close_code, lost.detail) == (
        "server_close:4009",
        4009,
        "session timed out",
    )
    # we closed first (a zombie): the server's answer does not rewrite our reason ...
    session = ready_session()
    session.close_requested(p.PING_TIMEOUT, "no pong", abort=True)
    session.server_closed(4009, "late")
    lost = session.connection_lost(5.0)
    assert (lost.reason, lost.close_code, lost.action) == (p.PING_TIMEOUT, None, CloseAction.RESUME)
    # ... unless it is fatal: retrying against a ban is worse than a wrong reason
    session = ready_session()
    session.close_requested(p.PING_TIMEOUT, "no pong", abort=True)
    session.server_closed(4914, "")
    lost = session.connection_lost(5.0)
    assert (lost.action, lost.close_code) == (CloseAction.FATAL, 4914)


def test_the_sockets_final_code_counts_as_the_peers_but_1006_does_not() -> None:
    session = ready_session()
    session.close_requested(p.NETWORK_ERROR, "send failed", abort=True)
    assert session.connection_lost(5.0, socket_code=1006).action is CloseAction.RESUME
    session = ready_session()
    session.close_requested(p.NETWORK_ERROR, "send failed", abort=True)
    assert session.connection_lost(5.0, socket_code=4915).action is CloseAction.FATAL
    # no code at all: a broken link, resumed
    session = ready_session()
    session.server_closed(0, "connection closed")
    lost = session.connection_lost(5.0, socket_code=None)
    assert (lost.close_code, lost.action, lost.detail) == (
        None,
        CloseAction.RESUME,
        "connection closed",
    )
    session.server_closed(4009)  # after the connection is gone: ignored, no error


def test_a_failure_before_the_socket_opened_keeps_the_session_and_counts_as_quick() -> None:
    failed = attempt_failed(p.CONNECT_ERROR, "refused", resumable=True)
    assert (failed.action, failed.close_code, failed.was_ready) == (CloseAction.RESUME, None, False)
    plan = planner().plan(failed, lifetime=None, state=PlannerState(), now=1.0)
    assert (plan.mode, plan.state.quick_failures, plan.delay) == ("resume", 1, 1.0)
    fresh = attempt_failed(p.TOKEN_ERROR, "token endpoint down", resumable=False)
    assert fresh.action is CloseAction.IDENTIFY
    assert planner().plan(fresh, lifetime=None, state=PlannerState(), now=1.0).mode == "identify"


# --- the session-start budget ------------------------------------------------------------
def test_session_start_limit_below_the_shard_count_waits_for_reset() -> None:
    assert session_start_wait(remaining=4, shards=4, reset_after_ms=1000) is None
    wait = session_start_wait(remaining=1, shards=4, reset_after_ms=90_500)
    assert wait is not None
    assert wait.seconds == 90.5
    assert wait.message == (
        "only 1 session starts remain for 4 shard(s); waiting 90.5s for the platform's limit to "
        "reset (reset_after) before starting any shard"
    )
    zero = session_start_wait(remaining=0, shards=1, reset_after_ms=-5)
    assert zero is not None and zero.seconds == 0.0


@pytest.mark.timeout(60)
async def test_client_waits_for_the_session_start_reset_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Over real sockets: 2 shards, 1 session start left, the window resets in 0.6 s. One
    WARNING, no shard connects before the wait is over, then both get READY."""
    from qqbot_gateway.adapter.client import QQBotClient
    from qqbot_gateway.simulator import Simulator
    from qqbot_gateway.simulator.config import SessionStartLimit

    from .gateway_harness import Recorder, client_config, poll_until, record_into, sim_config

    caplog.set_level(logging.WARNING, logger="qqbot_gateway")
    limit = SessionStartLimit(remaining=1, reset_after=600, max_concurrency=2)
    sim = Simulator(sim_config(shards=2, session_start_limit=limit))
    await sim.start("127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    waits: list[tuple[float, float]] = []  # (seconds asked, loop time when the wait ended)

    async def sleep(seconds: float) -> None:
        await asyncio.sleep(seconds)
        waits.append((seconds, loop.time()))

    client = QQBotClient(client_config(sim, shard_count=2), sleep=sleep)
    rec = Recorder()
    record_into(client, rec)
    try:
        await client.start()
        await poll_until(lambda: len(rec.of(ev.SessionReady)) == 2, 20, "both shards READY")
    finally:
        async with asyncio.timeout(15):
            await client.close(drain_timeout=1.0)
        await sim.stop()
    assert waits[0][0] == 0.6
    attempts = rec.of(ev.ConnectAttempt)
    assert attempts and min(a.monotonic for a in attempts) >= waits[0][1]
    lines = [r.getMessage() for r in caplog.records if "session starts remain" in r.getMessage()]
    assert lines == [
        "only 1 session starts remain for 2 shard(s); waiting 0.6s for the platform's limit to "
        "reset (reset_after) before starting any shard"
    ]


async def test_the_supervisor_executes_the_plan_with_the_injected_sleep() -> None:
    """The shell: each failure's delay comes from the planner and is slept with the injected
    sleep (nothing waits on the real clock); ``stop()`` wakes a sleep that would never end."""
    import aiohttp

    from qqbot_gateway.adapter.supervisor import ShardSupervisor

    class Tokens:
        async def get(self) -> str:
            return "token"

        async def force_refresh(self, reason: str, rejected: str | None = None) -> str:
            return "token"

    async def no_gateway() -> str:
        raise OSError("gateway discovery down")

    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        if len(slept) == 5:
            await asyncio.Event().wait()  # the 6th wait lasts until stop() wakes it
        slept.append(seconds)

    bus = ev.EventBus()
    scheduled: list[ev.ReconnectScheduled] = []
    six = asyncio.Event()

    def on_event(event: ev.LifecycleEvent) -> None:
        if isinstance(event, ev.ReconnectScheduled):
            scheduled.append(event)
            if len(scheduled) == 6:
                six.set()

    bus.subscribe(on_event)
    async with aiohttp.ClientSession() as http:
        supervisor = ShardSupervisor(
            GatewaySession(intents=1),
            tokens=Tokens(),
            gateway_url=no_gateway,
            ws_http=http,
            bus=bus,
            deliver=lambda event: None,
            policy=POLICY,
            sleep=sleep,
            rng=top,
        )
        supervisor.start()
        async with asyncio.timeout(10):
            await six.wait()
            await supervisor.stop()
    # 1, 2, then the third quick failure in a row floors at cap / 2 = 8, then 8, 16 (the cap)
    assert slept == [1.0, 2.0, 8.0, 8.0, 16.0]
    assert [e.delay for e in scheduled] == [1.0, 2.0, 8.0, 8.0, 16.0, 16.0]
    assert {e.reason for e in scheduled} == {p.GATEWAY_URL_ERROR}
    assert supervisor.state is ev.ConnectionState.STOPPED
