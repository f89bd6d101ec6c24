"""The adapter against the simulator over real sockets, at ~1 s heartbeat intervals.

Every test checks delivery by event id: nothing lost, nothing twice, in seq order.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator

import pytest

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter import protocol as p
from qqbot_gateway.adapter.events import ConnectionState
from qqbot_gateway.adapter.protocol import GatewayEvent

from .gateway_harness import INTERVAL, Harness, start_harness, stop_harness

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]  # real sockets, real time


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    harness = await start_harness({"event_rate": 20.0})
    try:
        await harness.ready()
        yield harness
    finally:
        await stop_harness(harness)


async def test_blackholed_link_is_detected_and_resumed_without_loss(h: Harness) -> None:
    await h.wait_for(lambda: len(h.rec.payload_events()) >= 10, 10, "events flowing")
    mark = h.mark()
    t0 = h.loop.time()
    assert h.sim.blackhole() == 1
    zombie = await h.wait_event(ev.ZombieDetected, 6 * INTERVAL, after=mark)
    detected_after = zombie.monotonic - t0
    # The simulator answers pings, so the ping layer is armed: worst case by design 0.05 H of
    # quiet, then the pong deadline at its floor, 0.3 H (loopback RTT is tiny). 0.4 s of
    # margin for a loaded machine's late timers.
    assert zombie.reason == p.PING_TIMEOUT
    assert detected_after <= 0.35 * INTERVAL + 0.4, f"detected after {detected_after:.2f}s"
    disc = await h.wait_event(ev.Disconnected, 2 * INTERVAL, after=mark)
    assert disc.reason == zombie.reason and disc.resumable
    resumed = await h.wait_event(ev.SessionResumed, 10 * INTERVAL, after=mark)
    assert resumed.session_id == h.rec.of(ev.SessionReady)[0].session_id
    await h.settle()
    h.assert_exactly_once()
    assert len(h.sim.sessions_created) == 1  # resumed, never re-identified


async def test_server_that_stops_acking_is_a_zombie_even_with_events_flowing(h: Harness) -> None:
    mark = h.mark()
    t0 = h.loop.time()
    h.sim.stop_acks()
    zombie = await h.wait_event(ev.ZombieDetected, 5 * INTERVAL, after=mark)
    h.sim.resume_acks()
    # events (and pongs) kept arriving, so neither idle nor ping fired
    assert zombie.reason == p.ACK_TIMEOUT
    assert zombie.unacked == 3  # the heartbeat and its two probes
    # the next heartbeat <= 1 H after the stop, its ACK deadline 0.4 H later; margin for load
    assert zombie.monotonic - t0 <= 1.4 * INTERVAL + 0.4
    await h.wait_event(ev.SessionResumed, 10 * INTERVAL, after=mark)
    await h.settle()
    h.assert_exactly_once()


async def test_op7_reconnect_resumes_quietly(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="qqbot_gateway")
    mark = h.mark()
    await h.sim.send_reconnect()
    disc = await h.wait_event(ev.Disconnected, 5 * INTERVAL, after=mark)
    assert disc.reason == p.RECONNECT_REQUESTED
    await h.wait_event(ev.SessionResumed, 10 * INTERVAL, after=mark)
    await h.settle()
    h.assert_exactly_once()
    routine = [r for r in caplog.records if p.RECONNECT_REQUESTED in r.getMessage()]
    assert routine and all(r.levelno == logging.INFO for r in routine)


@pytest.mark.parametrize(
    ("resumable", "expect"), [(True, ev.SessionResumed), (False, ev.SessionReady)]
)
async def test_op9_invalid_session_both_ways(h: Harness, resumable: bool, expect: type) -> None:
    mark = h.mark()
    await h.sim.send_invalid_session(resumable, close_code=None)
    disc = await h.wait_event(ev.Disconnected, 5 * INTERVAL, after=mark)
    assert disc.reason == p.INVALID_SESSION
    await h.wait_event(expect, 10 * INTERVAL, after=mark)
    assert len(h.sim.sessions_created) == (1 if resumable else 2)
    await h.settle()
    h.assert_exactly_once()


async def test_4009_resumes(h: Harness) -> None:
    mark = h.mark()
    await h.sim.close_connections(4009, "session timed out")
    disc = await h.wait_event(ev.Disconnected, 5 * INTERVAL, after=mark)
    assert disc.reason == "server_close:4009" and disc.close_code == 4009 and disc.resumable
    await h.wait_event(ev.SessionResumed, 10 * INTERVAL, after=mark)
    assert len(h.sim.sessions_created) == 1
    await h.settle()
    h.assert_exactly_once()


@pytest.mark.parametrize("code", [4006, 4007, 4900, 4913])
async def test_session_killing_codes_identify(h: Harness, code: int) -> None:
    mark = h.mark()
    await h.sim.close_connections(code)
    disc = await h.wait_event(ev.Disconnected, 5 * INTERVAL, after=mark)
    assert disc.close_code == code and not disc.resumable
    ready = await h.wait_event(ev.SessionReady, 10 * INTERVAL, after=mark)
    assert ready.session_id == h.sim.sessions_created[-1]
    assert len(h.sim.sessions_created) == 2
    assert not h.rec.of(ev.ResumeSent)
    await h.settle()
    h.assert_exactly_once()


@pytest.mark.parametrize("code", [4914, 4915])
async def test_fatal_codes_stop_the_shard_with_a_clear_error(
    h: Harness, code: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qqbot_gateway")
    mark = h.mark()
    await h.sim.close_connections(code)
    fatal = await h.wait_event(ev.ShardFatal, 5 * INTERVAL, after=mark)
    assert fatal.close_code == code and str(code) in fatal.message
    await h.wait_event(ev.SupervisorStopped, 2 * INTERVAL, after=mark)
    connections = len(h.sim.connections)
    await asyncio.sleep(2 * INTERVAL)
    assert len(h.sim.connections) == connections  # no retry loop
    (status,) = h.client.shard_status()
    assert status.state is ConnectionState.FATAL and not status.task_alive
    assert status.fatal_message and str(code) in status.fatal_message
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(str(code) in r.getMessage() for r in errors)
    await asyncio.wait_for(h.client.wait_closed(), 2)  # run() would return: nothing left


@pytest.mark.parametrize("code", [4924, 4915])
async def test_a_fatal_close_right_after_op9_still_stops_the_shard(h: Harness, code: int) -> None:
    """QQ sends op 9 and then closes, e.g. with 4924 (session IP forbidden): we close first on
    op 9, but the server's code must still be heard, not retried as a plain invalid session."""
    mark = h.mark()
    identifies = len(h.sim.identifies)
    await h.sim.send_invalid_session(False, close_code=code)
    fatal = await h.wait_event(ev.ShardFatal, 5 * INTERVAL, after=mark)
    assert fatal.close_code == code and fatal.reason == f"server_close:{code}"
    await asyncio.sleep(2 * INTERVAL)
    assert len(h.sim.identifies) == identifies  # no identify against a ban
    (status,) = h.client.shard_status()
    assert status.state is ConnectionState.FATAL and not status.task_alive


async def test_revoked_credentials_stop_the_shard_without_a_fetch_loop(h: Harness) -> None:
    """The secret is rotated on the platform while running: the next token fetch is refused
    (100016). The shard stops for good, loudly, after one refused fetch, not thousands."""
    mark = h.mark()
    h.sim.rotate_secret("rotated-elsewhere")
    h.sim.expire_tokens()
    fetches = h.sim.token_fetches
    await h.sim.close_connections(4004)
    fatal = await h.wait_event(ev.ShardFatal, 5 * INTERVAL, after=mark)
    assert fatal.reason == p.TOKEN_ERROR and "refused" in fatal.message
    await asyncio.sleep(2 * INTERVAL)
    assert h.sim.token_fetches - fetches <= 2
    (status,) = h.client.shard_status()
    assert status.state is ConnectionState.FATAL and not status.task_alive
    await asyncio.wait_for(h.client.wait_closed(), 2)


async def test_hung_close_of_the_old_socket_cannot_block_recovery(h: Harness) -> None:
    """op 7 asks for a graceful close; the peer goes silent right then and never answers the
    close frame. The bounded close (0.5 s here) gives up and recovery goes on."""
    mark = h.mark()
    fired = False

    def go_silent(event: ev.LifecycleEvent) -> None:
        nonlocal fired
        if isinstance(event, ev.FrameReceived) and event.op == 7 and not fired:
            fired = True
            h.sim.blackhole()

    h.client.events.subscribe(go_silent)
    await h.sim.send_reconnect()
    disc = await h.wait_event(ev.Disconnected, 5 * INTERVAL, after=mark)
    frame7 = next(
        e for e in h.rec.lifecycle[mark:] if isinstance(e, ev.FrameReceived) and e.op == 7
    )
    assert fired
    # close_timeout is 0.5 s; the teardown must not wait on the silent peer beyond it
    assert disc.monotonic - frame7.monotonic < 1.5
    await h.wait_event(ev.SessionResumed, 10 * INTERVAL, after=mark)
    h.sim.unblackhole()
    await h.settle()
    h.assert_exactly_once()


async def test_a_handler_sleeping_for_several_intervals_does_not_miss_a_heartbeat() -> None:
    slept = asyncio.Event()

    async def slow(event: GatewayEvent) -> None:
        if event.type not in ("READY", "RESUMED") and not slept.is_set():
            slept.set()
            await asyncio.sleep(4 * INTERVAL)

    h = await start_harness({"event_rate": 20.0}, handler=slow)
    try:
        await h.ready()
        await h.wait_for(slept.is_set, 5, "the slow handler to start")
        t0 = h.loop.time()
        await asyncio.sleep(4.5 * INTERVAL)
        assert not h.rec.of(ev.ZombieDetected)
        assert not h.rec.of(ev.Disconnected)
        sent = [e for e in h.rec.of(ev.HeartbeatSent) if e.monotonic >= t0]
        acked = [e for e in h.rec.of(ev.HeartbeatAcked) if e.monotonic >= t0]
        regular = [e for e in sent if e.unacked == 1]  # not ACK probes
        assert len(regular) >= 3 and len(acked) >= len(regular) - 1
        # meanwhile events queued up instead of stalling the reader
        assert max(e.depth for e in h.rec.of(ev.HandlerQueueDepth)) > 10
        await h.settle(timeout=15)
        h.assert_exactly_once()
    finally:
        await stop_harness(h)


async def test_full_handler_queue_applies_backpressure_without_loss() -> None:
    async def slowish(event: GatewayEvent) -> None:
        await asyncio.sleep(0.02)

    h = await start_harness({"event_rate": 0.0}, handler=slowish, handler_queue_size=20)
    try:
        await h.ready()
        mark = h.mark()
        await h.sim.emit_events(120)
        disc = await h.wait_event(ev.Disconnected, 5 * INTERVAL, after=mark)
        assert disc.reason == p.HANDLER_BACKPRESSURE and disc.resumable
        await h.wait_event(ev.SessionResumed, 10 * INTERVAL, after=mark)
        await h.settle(timeout=20)
        h.assert_exactly_once()
        assert max(e.depth for e in h.rec.of(ev.HandlerQueueDepth)) <= 20
        assert not h.rec.of(ev.ZombieDetected)
    finally:
        await stop_harness(h)


async def test_handler_exceptions_are_counted_and_never_kill_the_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(event: GatewayEvent) -> None:
        if event.seq is not None and event.seq % 3 == 0:
            raise RuntimeError("handler bug")

    h = await start_harness({"event_rate": 0.0}, handler=broken)
    try:
        await h.ready()
        await h.sim.emit_events(12)
        await h.settle()
        failures = h.rec.of(ev.HandlerFailed)
        assert len(failures) >= 3 and all(f.error_type == "RuntimeError" for f in failures)
        assert not h.rec.of(ev.Disconnected)
        assert any(
            "handler" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records
        )
        h.assert_exactly_once()
    finally:
        await stop_harness(h)


async def test_tcp_user_timeout_is_derived_from_the_interval_after_hello(h: Harness) -> None:
    """The kernel layer: after Hello the socket's TCP_USER_TIMEOUT is 1 interval (at least
    1 s), the session's value, not the 60 s the socket was opened with."""
    if not hasattr(socket, "TCP_USER_TIMEOUT"):
        pytest.skip("TCP_USER_TIMEOUT is Linux only")
    conn = h.client.supervisors[0]._conn
    assert conn is not None and conn._transport is not None
    sock = conn._transport.get_extra_info("socket")
    expected = h.client.config.liveness.tcp_user_timeout(INTERVAL)
    assert expected is not None
    value = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
    assert value == int(expected * 1000)


async def test_a_server_that_never_answers_pings_costs_no_reconnect(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """The ping layer calibrates on each connection: against a server that ignores pings it
    never judges, and turns itself off after 3 unanswered pings with one WARNING."""
    caplog.set_level(logging.INFO, logger="qqbot_gateway")
    h.sim.ignore_pings()
    mark = h.mark()
    await h.sim.send_reconnect()  # a fresh connection, calibrating against the deaf server
    await h.wait_event(ev.SessionResumed, 10 * INTERVAL, after=mark)
    # 3 calibration pings, each given up after 1 interval; then one more interval of watching
    await h.wait_for(
        lambda: any(
            isinstance(e, ev.PingLayerChanged) and e.state == "disabled"
            for e in h.rec.lifecycle[mark:]
        ),
        10 * INTERVAL,
        "the ping layer disabled",
    )
    await asyncio.sleep(INTERVAL)
    since = h.rec.lifecycle[mark:]
    changes = [e.state for e in since if isinstance(e, ev.PingLayerChanged)]
    assert changes == ["calibrating", "disabled"], changes
    gone = [e.reason for e in since if isinstance(e, ev.Disconnected)]
    assert gone == [p.RECONNECT_REQUESTED], gone  # the op 7 only: no reconnect of our own
    warnings = [r for r in caplog.records if "ping layer disabled" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    session = h.client.supervisors[0].session
    assert session.ping_state.value == "disabled"
    await h.settle()
    h.assert_exactly_once()
