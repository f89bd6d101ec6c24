"""A client wired to the simulator over real sockets, with recorders. Shared by the tests.

Intervals are short (``INTERVAL_MS``, scaled by ``QQBOT_TEST_TIME_SCALE`` on slow machines)
so that a test at 1 s behaves like production at 41.25 s.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter.client import ClientConfig, QQBotClient, Secret
from qqbot_gateway.adapter.connection import TransportConfig
from qqbot_gateway.adapter.protocol import GatewayEvent
from qqbot_gateway.adapter.session import LivenessConfig
from qqbot_gateway.adapter.supervisor import ReconnectPolicy
from qqbot_gateway.simulator import Simulator, SimulatorConfig

SCALE = float(os.environ.get("QQBOT_TEST_TIME_SCALE", "1"))
INTERVAL_MS = int(1000 * SCALE)
INTERVAL = INTERVAL_MS / 1000
APP_ID = "102030405"
SECRET = "sim-secret-Zx81"
LIFECYCLE = frozenset({"READY", "RESUMED"})

E = TypeVar("E", bound=ev.LifecycleEvent)


def sim_config(**overrides: Any) -> SimulatorConfig:
    base: dict[str, Any] = {
        "app_id": APP_ID,
        "client_secret": SECRET,
        "heartbeat_interval_ms": INTERVAL_MS,
        "seed": 7,
    }
    base.update(overrides)
    return SimulatorConfig(**base)


def client_config(sim: Simulator, **overrides: Any) -> ClientConfig:
    base: dict[str, Any] = {
        "app_id": APP_ID,
        "client_secret": Secret(SECRET),
        "api_base": sim.base_url,
        "token_url": sim.token_url,
        "liveness": LivenessConfig(hello_timeout=3 * INTERVAL, handshake_timeout_min=3 * INTERVAL),
        "transport": TransportConfig(connect_timeout=3.0, close_timeout=0.5, send_timeout=2.0),
        "reconnect": ReconnectPolicy(
            backoff_base=0.05 * SCALE,
            backoff_cap=0.5 * SCALE,
            healthy_after=2 * INTERVAL,
            rate_limit_wait=1.0 * SCALE,
            quick_lifetime=0.2 * INTERVAL,
        ),
    }
    base.update(overrides)
    return ClientConfig(**base)


async def poll_until(
    predicate: Callable[[], Any], timeout: float, what: str | Callable[[], str]
) -> Any:
    """``predicate()``'s first truthy value, polled every 20 ms; AssertionError after timeout.

    ``what`` may be a callable, called only on timeout, to describe what was seen instead."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {described}")
        await asyncio.sleep(0.02)


@dataclass
class Recorder:
    """Lifecycle events with their loop time, and the events the handlers received."""

    lifecycle: list[ev.LifecycleEvent] = field(default_factory=list)
    delivered: list[GatewayEvent] = field(default_factory=list)

    def on_lifecycle(self, event: ev.LifecycleEvent) -> None:
        self.lifecycle.append(event)

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.lifecycle if isinstance(e, kind)]

    def payload_events(self) -> list[GatewayEvent]:
        return [e for e in self.delivered if e.type not in LIFECYCLE]


class Harness:
    def __init__(self, sim: Simulator, client: QQBotClient, recorder: Recorder) -> None:
        self.sim = sim
        self.client = client
        self.rec = recorder
        self.loop = asyncio.get_running_loop()

    async def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        return await poll_until(predicate, timeout, what)

    async def wait_event(
        self,
        kind: type[E],
        timeout: float,
        *,
        after: int = 0,
        where: Callable[[E], bool] = lambda e: True,
    ) -> E:
        """First ``kind`` event at index >= ``after`` in the lifecycle log matching ``where``."""

        def find() -> E | None:
            for e in self.rec.lifecycle[after:]:
                if isinstance(e, kind) and where(e):
                    return e
            return None

        found: E = await self.wait_for(find, timeout, kind.__name__)
        return found

    def mark(self) -> int:
        return len(self.rec.lifecycle)

    async def ready(self, timeout: float = 10.0) -> None:
        await self.wait_event(ev.SessionReady, timeout)

    async def settle(self, timeout: float = 10.0) -> None:
        """Stop generating events and wait until everything the server wrote was handled."""
        self.sim.pause_events()
        await self.wait_for(
            lambda: self.expected_ids() <= self.delivered_ids(), timeout, "every event delivered"
        )

    def expected_ids(self) -> set[str]:
        """Events the server emitted and did not drop with an invalidated session."""
        dropped = {r.event_id for r in self.sim.dropped_events()}
        return {
            r.event_id
            for r in self.sim.emitted_events()
            if r.event_id is not None and r.event_id not in dropped
        }

    def delivered_ids(self) -> set[str]:
        return {e.event_id for e in self.rec.payload_events() if e.event_id is not None}

    def assert_exactly_once(self) -> None:
        counts = Counter(e.event_id for e in self.rec.payload_events())
        dupes = {k: n for k, n in counts.items() if n > 1}
        assert not dupes, f"delivered more than once: {dupes}"
        missing = self.expected_ids() - self.delivered_ids()
        assert not missing, f"lost {len(missing)} events: {sorted(missing)[:5]}"
        # in seq order within each session
        by_session: dict[str | None, list[int]] = {}
        for e in self.rec.payload_events():
            if e.seq is not None:
                by_session.setdefault(e.session_id, []).append(e.seq)
        for sid, seqs in by_session.items():
            assert seqs == sorted(seqs), f"out of order in session {sid}: {seqs}"


async def start_harness(
    sim_overrides: dict[str, Any] | None = None,
    handler: Callable[[GatewayEvent], Any] | None = None,
    **client_overrides: Any,
) -> Harness:
    sim = Simulator(sim_config(**(sim_overrides or {})))
    await sim.start("127.0.0.1", 0)
    rec = Recorder()
    client = QQBotClient(client_config(sim, **client_overrides))
    record_into(client, rec, handler)
    await client.start()
    return Harness(sim, client, rec)


def record_into(
    client: QQBotClient,
    rec: Recorder,
    handler: Callable[[GatewayEvent], Any] | None = None,
) -> None:
    """Record the client's lifecycle events and every delivered event (then run ``handler``)."""
    client.events.subscribe(rec.on_lifecycle)

    async def collect(event: GatewayEvent) -> None:
        rec.delivered.append(event)
        if handler is not None:
            result = handler(event)
            if asyncio.iscoroutine(result):
                await result

    client.add_handler(collect)


async def stop_harness(h: Harness) -> None:
    try:
        async with asyncio.timeout(15):
            await h.client.close(drain_timeout=1.0)
    finally:
        await h.sim.stop()
