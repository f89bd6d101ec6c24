"""Chaos soak: random faults from the matrix at random times, then the books must balance.

A short version runs in CI (about 40 s at a 0.3 s heartbeat interval). The long version runs on
demand and prints its counts::

    .venv/bin/pytest -n 0 tests/reliability/test_soak.py --soak-minutes 10 -s

Afterwards: every event the simulator emitted (and did not drop with a session it
invalidated) was delivered exactly once, in seq order per session; no task leaked; the
adapter's and telemetry's own allocations did not grow over the second half of the run; and
the health report was never healthy while a zombie existed (checked at the instant each
zombie was declared, and by a sampler that the unacked count never passed the threshold).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import random
import tracemalloc
from collections import Counter
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter.connection import TransportConfig
from qqbot_gateway.adapter.session import LivenessConfig
from qqbot_gateway.adapter.supervisor import ReconnectPolicy
from qqbot_gateway.telemetry import HealthReport, Telemetry, TelemetryConfig

from ..gateway_harness import Harness, start_harness, stop_harness

INTERVAL_MS = 300
INTERVAL = INTERVAL_MS / 1000
SHORT_SOAK_SECONDS = 40.0
ZOMBIE_REASONS = frozenset({"ack_timeout", "idle_timeout", "ping_timeout"})


def soak_seconds(config: pytest.Config) -> tuple[float, bool]:
    minutes = config.getoption("--soak-minutes")
    if minutes is None:
        return SHORT_SOAK_SECONDS, False
    if minutes <= 0:
        raise pytest.UsageError("--soak-minutes must be positive")
    return float(minutes) * 60.0, True


class Chaos:
    """The faults, each a coroutine that injects, waits a little and heals."""

    def __init__(self, h: Harness, rng: random.Random) -> None:
        self.h = h
        self.sim = h.sim
        self.rng = rng
        self.injected: Counter[str] = Counter()

    async def pause(self, intervals: float) -> None:
        await asyncio.sleep(intervals * INTERVAL)

    async def blackhole(self) -> None:
        self.sim.blackhole(current=True, new=False)
        await self.pause(4)
        self.sim.unblackhole()

    async def blackhole_with_reconnects(self) -> None:
        self.sim.blackhole(current=True, new=True)
        await self.pause(self.rng.uniform(3, 8))
        self.sim.unblackhole()

    async def stop_acks(self) -> None:
        self.sim.stop_acks()
        await self.pause(4)
        self.sim.resume_acks()

    async def op7(self) -> None:
        await self.sim.send_reconnect()

    async def op9_resumable(self) -> None:
        await self.sim.send_invalid_session(True)

    async def op9_not_resumable(self) -> None:
        await self.sim.send_invalid_session(False)

    async def close_code(self) -> None:
        code = self.rng.choice([4009, 4009, 4900, 4913, 4006, 4007, 4008, 1006])
        self.injected[f"close {code}"] += 1
        await self.sim.close_connections(code)

    async def slow_frames(self) -> None:
        self.sim.set_outgoing_delay(self.rng.uniform(0.2, 0.8) * INTERVAL)
        await self.pause(3)
        self.sim.set_outgoing_delay(0)

    async def token_outage(self) -> None:
        self.sim.set_token_fault("500")
        self.sim.expire_tokens()
        await self.sim.close_connections(4004)
        await self.pause(3)
        self.sim.set_token_fault(None)

    async def refused(self) -> None:
        self.sim.refuse_connections()
        await self.sim.close_connections(4009)
        await self.pause(3)
        self.sim.accept_connections()

    async def rejected_resume(self) -> None:
        self.sim.reject_next_resumes(1)
        await self.sim.close_connections(4009)

    async def burst(self) -> None:
        await self.sim.emit_events(self.rng.randint(20, 80))

    def menu(self) -> list[tuple[str, Callable[[], Awaitable[None]], int]]:
        return [
            ("blackhole", self.blackhole, 3),
            ("blackhole+reconnects", self.blackhole_with_reconnects, 2),
            ("stop acks", self.stop_acks, 3),
            ("op 7", self.op7, 2),
            ("op 9 true", self.op9_resumable, 1),
            ("op 9 false", self.op9_not_resumable, 1),
            ("close", self.close_code, 3),
            ("slow frames", self.slow_frames, 1),
            ("token outage", self.token_outage, 1),
            ("refused", self.refused, 1),
            ("rejected resume", self.rejected_resume, 1),
            ("burst", self.burst, 2),
        ]

    async def one(self) -> None:
        items = self.menu()
        name, fault, _ = self.rng.choices(items, weights=[w for _, _, w in items])[0]
        self.injected[name] += 1
        await fault()


#: Lifecycle events the soak reads afterwards; the per-frame and per-event ones are dropped as
#: it goes, so that the test's own records do not count as the adapter's memory.
_KEPT = (ev.Disconnected, ev.SessionReady, ev.SessionResumed, ev.ZombieDetected)


def compact(h: Harness) -> None:
    """Keep only what the checks need of the recorder's logs: slim copies of the delivered
    events (no payload) and the connection-level lifecycle events. tracemalloc counts memory
    where it was allocated, so objects the test itself holds on to would otherwise look like
    growth inside the adapter."""
    h.rec.lifecycle[:] = [e for e in h.rec.lifecycle if isinstance(e, _KEPT)]
    h.rec.delivered[:] = [
        e if e.data is None else dataclasses.replace(e, data=None) for e in h.rec.delivered
    ]


def _adapter_bytes(snapshot: tracemalloc.Snapshot) -> int:
    filters = [
        tracemalloc.Filter(True, "*qqbot_gateway/adapter/*"),
        tracemalloc.Filter(True, "*qqbot_gateway/telemetry/*"),
    ]
    return sum(stat.size for stat in snapshot.filter_traces(filters).statistics("filename"))


@pytest.mark.slow
@pytest.mark.timeout(0)  # bounded by its own deadline below (and by --soak-minutes)
async def test_chaos_soak(pytestconfig: pytest.Config) -> None:
    seconds, long_run = soak_seconds(pytestconfig)
    rng = random.Random(20261126)
    tasks_before = set(asyncio.all_tasks())
    tracemalloc.start(1)
    h = await start_harness(
        {"heartbeat_interval_ms": INTERVAL_MS, "event_rate": 15.0, "seed": 11},
        liveness=LivenessConfig(hello_timeout=4 * INTERVAL, handshake_timeout_min=4 * INTERVAL),
        transport=TransportConfig(connect_timeout=2.0, close_timeout=0.5, send_timeout=2.0),
        reconnect=ReconnectPolicy(
            backoff_base=0.05,
            backoff_cap=0.5,
            healthy_after=3 * INTERVAL,
            rate_limit_wait=0.5,
            quick_lifetime=0.2 * INTERVAL,
        ),
    )
    tel = Telemetry(
        TelemetryConfig(
            http_host="127.0.0.1", http_port=0, tracing=False, liveness_grace=seconds + 60
        ),
        registry=CollectorRegistry(),
        process_collectors=False,
    )
    tel.attach(h.client)
    await tel.start()
    at_zombie: list[tuple[str, HealthReport]] = []
    h.client.events.subscribe_to(
        ev.ZombieDetected, lambda e: at_zombie.append((e.reason, tel.evaluate()))
    )
    limit = h.client.config.liveness.ack_miss_limit
    over_threshold: list[int] = []
    probes: Counter[int] = Counter()
    chaos = Chaos(h, rng)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    async def sampler() -> None:
        session = h.client.supervisors[0].session
        ticks = 0
        while not stop.is_set():
            if session.unacked > limit:
                over_threshold.append(session.unacked)
            ticks += 1
            if ticks % 25 == 0:
                compact(h)
            await asyncio.sleep(0.02)

    async def prober(http: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            async with http.get(f"{tel.http_url}/healthz") as resp:
                await resp.read()
                probes[resp.status] += 1
            await asyncio.sleep(0.1)

    mem_mid: int | None = None
    try:
        await h.ready(timeout=10)
        async with aiohttp.ClientSession() as http:
            side = [asyncio.create_task(sampler()), asyncio.create_task(prober(http))]
            started = loop.time()
            deadline = started + seconds
            while loop.time() < deadline:
                await asyncio.sleep(rng.uniform(1, 5) * INTERVAL)  # a healthy stretch
                await chaos.one()
                # Recovered before the next fault: a live session again.
                await h.wait_for(
                    lambda: h.client.shard_status()[0].ready, 30 * INTERVAL, "recovery"
                )
                if mem_mid is None and loop.time() > started + seconds / 2:
                    compact(h)
                    gc.collect()
                    mem_mid = _adapter_bytes(tracemalloc.take_snapshot())
            stop.set()
            await asyncio.gather(*side)
        await h.settle(timeout=30)
        compact(h)
        gc.collect()
        mem_end = _adapter_bytes(tracemalloc.take_snapshot())
        h.assert_exactly_once()
    finally:
        stop.set()
        tel.begin_shutdown()
        await stop_harness(h)
        await tel.stop()
        tracemalloc.stop()

    disconnects = Counter(d.reason for d in h.rec.of(ev.Disconnected))
    emitted = len(h.expected_ids())
    delivered = len(h.delivered_ids())
    faults = sum(chaos.injected.values()) - sum(
        n for k, n in chaos.injected.items() if k.startswith("close ")
    )
    summary = {
        "seconds": round(seconds),
        "faults": faults,
        "faults_by_kind": dict(sorted(chaos.injected.items())),
        "events_emitted": emitted,
        "events_delivered": delivered,
        "lost": emitted - len(h.expected_ids() & h.delivered_ids()),
        "duplicated": len(h.rec.payload_events()) - delivered,
        "disconnects_by_reason": dict(sorted(disconnects.items())),
        "resumed": len(h.rec.of(ev.SessionResumed)),
        "new_sessions": len(h.rec.of(ev.SessionReady)),
        "zombies": len(at_zombie),
        "healthz_probes": dict(probes),
        "adapter_bytes_mid_end": (mem_mid, mem_end),
    }
    print(f"\nchaos soak: {summary}")
    if long_run:
        print("(long run)")

    assert summary["lost"] == 0 and summary["duplicated"] == 0
    assert emitted > 100 and faults >= 5
    # The health report is never healthy about a zombie.
    assert at_zombie, "the soak injected no silent death"
    for reason, report in at_zombie:
        assert reason in ZOMBIE_REASONS
        assert not report.healthy, report
    assert not over_threshold, f"unacked went past {limit}: {over_threshold[:5]}"
    assert probes[200] > 0
    # No task leaked: everything the client, telemetry and simulator started is gone.
    await asyncio.sleep(0)
    leaked = [t for t in asyncio.all_tasks() - tasks_before if t is not asyncio.current_task()]
    assert not leaked, leaked
    # Bounded memory: the adapter's own allocations did not keep growing after the first half.
    assert mem_mid is not None
    assert mem_end - mem_mid < 1_000_000, summary["adapter_bytes_mid_end"]
