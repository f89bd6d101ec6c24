"""The shard's control path: READY, duplicates and written checkpoints by direct calls.

An exception there stops the shard loudly with that exception as its reason (an ERROR line, the
supervisor *crashed*, the session left resumable), where the observers' bus would have turned
it into a log line while checkpoints stopped. The bus still isolates its own subscribers.
Real sockets: the simulator on 127.0.0.1, the client with a file session store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter.checkpoint import Checkpointer
from qqbot_gateway.adapter.client import ClientConfig, QQBotClient, Secret
from qqbot_gateway.adapter.protocol import GatewayEvent
from qqbot_gateway.adapter.shard import Shard
from qqbot_gateway.simulator import Simulator, SimulatorConfig

#: Generous: a loaded 2-core machine.
WAIT = 30.0


class Rig:
    def __init__(self, sim: Simulator, client: QQBotClient) -> None:
        self.sim = sim
        self.client = client
        self.handled: list[GatewayEvent] = []
        self.stopped: list[ev.SupervisorStopped] = []
        self.ready = asyncio.Event()
        client.add_handler(self._handle)
        client.events.subscribe_to(ev.SupervisorStopped, self.stopped.append)
        client.events.subscribe_to(ev.SessionReady, lambda _: self.ready.set())

    def _handle(self, event: GatewayEvent) -> None:
        if event.type not in ("READY", "RESUMED"):
            self.handled.append(event)

    @property
    def shard(self) -> Shard:
        return self.client._shards[0]

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(WAIT):
                while not predicate():  # noqa: ASYNC110 - polling state the test reads
                    await asyncio.sleep(0.02)
        except TimeoutError:
            pytest.fail(f"{what}: not within {WAIT}s")


def sim_client_config(sim: Simulator, state_dir: Path, **overrides: Any) -> ClientConfig:
    """The client of the simulator's app, its state in ``state_dir``."""
    base: dict[str, Any] = {
        "app_id": sim.config.app_id,
        "client_secret": Secret(sim.config.client_secret),
        "api_base": sim.base_url,
        "token_url": sim.token_url,
        "gateway_url": sim.ws_url,
        "state_dir": str(state_dir),
    }
    return ClientConfig(**{**base, **overrides})


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    config = SimulatorConfig(app_id="1024", heartbeat_interval_ms=1000, event_rate=0.0)
    async with Simulator(config) as sim:
        client = QQBotClient(sim_client_config(sim, tmp_path, checkpoint_interval=0.01))
        r = Rig(sim, client)
        await client.start()
        try:
            async with asyncio.timeout(WAIT):
                await r.ready.wait()
            yield r
        finally:
            await client.close(drain_timeout=1.0)


async def assert_stopped_with(
    rig: Rig, reason: str, caplog: pytest.LogCaptureFixture, *, where: str
) -> None:
    """The shard stopped on its own, with ``reason``, loudly; the session stays resumable."""
    async with asyncio.timeout(WAIT):
        await rig.client.wait_closed()  # every supervisor ended: the service would exit
    shard = rig.shard
    assert shard.stopped_reason is not None and reason in shard.stopped_reason
    assert shard.stopped_reason.startswith(where), shard.stopped_reason
    assert [(s.reason, reason in (s.error or "")) for s in rig.stopped] == [("crashed", True)]
    status = shard.supervisor.status()
    assert status.task_alive is False
    assert status.fatal_message is not None and reason in status.fatal_message  # the exit line
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(reason in line for line in errors), errors
    await rig.until(lambda: all(c.close_code is not None for c in rig.sim.connections), "closed")
    assert [c.close_code for c in rig.sim.connections] == [4000]  # resumable, never 1000


@pytest.mark.slow
async def test_an_exception_in_the_checkpoint_writer_stops_the_shard(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    await rig.sim.emit_events(3)
    await rig.until(lambda: len(rig.handled) == 3, "3 events handled")

    def broken(self: Checkpointer) -> tuple[str | None, int]:
        raise RuntimeError("injected into the checkpoint path")

    monkeypatch.setattr(Checkpointer, "position", broken)
    await assert_stopped_with(
        rig, "injected into the checkpoint path", caplog, where="checkpoint writer failed"
    )


@pytest.mark.slow
async def test_an_exception_on_the_duplicate_path_stops_the_shard(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    first = await rig.sim.emit_event()
    await rig.until(lambda: len(rig.handled) == 1, "an event handled")
    checkpointer = rig.shard.checkpointer
    assert checkpointer is not None

    def broken(seq: int | None) -> None:
        raise ValueError(f"injected at duplicate seq {seq}")

    checkpointer.duplicate = broken  # type: ignore[method-assign]
    # The platform redelivers the event under a new sequence number: a duplicate by id.
    (again,) = await rig.sim.emit_event(event_id=first[0].event_id)
    await assert_stopped_with(
        rig, f"injected at duplicate seq {again.seq}", caplog, where="control path failed"
    )
    assert len(rig.handled) == 1, "the duplicate reached no handler"


@pytest.mark.slow
async def test_a_failing_bus_subscriber_is_isolated(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: ev.LifecycleEvent) -> None:
        raise RuntimeError("a telemetry subscriber's bug")

    rig.client.events.subscribe(broken)
    first = await rig.sim.emit_events(3)
    await rig.sim.emit_event(event_id=first[0].event_id)  # a duplicate: control path too
    await rig.sim.emit_events(2)
    await rig.until(lambda: len(rig.handled) == 5, "5 events handled")
    checkpointer = rig.shard.checkpointer
    assert checkpointer is not None
    await rig.until(lambda: checkpointer.lag == 0, "a checkpoint covering them")
    assert rig.shard.store is not None
    stored = rig.shard.store.load()
    assert stored is not None and stored.seq == rig.handled[-1].seq
    assert rig.shard.stopped_reason is None and not rig.stopped
    assert rig.shard.supervisor.state is ev.ConnectionState.READY
    failed = [r for r in caplog.records if "lifecycle subscriber" in r.getMessage()]
    assert failed, "the subscriber's errors are logged"


class GuardedClient(QQBotClient):
    """The client with an ownership guard on its shards (as a lease would be wired)."""

    guard_calls = 0

    async def guard(self) -> None:
        self.guard_calls += 1
        raise PermissionError("the lease on shard 0 belongs to another process")

    def _make_shard(
        self,
        shard_id: int,
        *,
        guard: Callable[[], Awaitable[None]] | None = None,
        may_send: Callable[[], bool] | None = None,
    ) -> Shard:
        # The client's own wiring, with this guard in place of the lease's.
        return super()._make_shard(shard_id, guard=self.guard, may_send=may_send)


@pytest.mark.slow
async def test_an_ownership_guard_that_refuses_stops_the_shard_before_it_connects(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = SimulatorConfig(app_id="1024", heartbeat_interval_ms=1000)
    async with Simulator(config) as sim:
        client = GuardedClient(sim_client_config(sim, tmp_path))
        stopped: list[ev.SupervisorStopped] = []
        client.events.subscribe_to(ev.SupervisorStopped, stopped.append)
        await client.start()
        try:
            async with asyncio.timeout(WAIT):
                await client.wait_closed()
        finally:
            await client.close(drain_timeout=1.0)
        assert client.guard_calls == 1
        assert not sim.connections, "nothing was sent without the guard passing"
        reason = client._shards[0].stopped_reason or ""
        assert "PermissionError: the lease on shard 0 belongs to another process" in reason
        assert [s.reason for s in stopped] == ["crashed"]
        assert any("the lease on shard 0" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
async def test_webhook_mode_a_broken_checkpoint_writer_turns_the_handlers_red(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = SimulatorConfig(app_id="1024", heartbeat_interval_ms=1000)
    async with Simulator(config) as sim:
        client = QQBotClient(
            sim_client_config(
                sim, tmp_path, gateway_url=None, mode="webhook", checkpoint_interval=0.01
            )
        )
        await client.start()
        try:
            intake = client.webhook
            assert intake is not None and intake.status().handlers_alive

            def broken(self: Checkpointer) -> tuple[str | None, int]:
                raise RuntimeError("injected into the webhook checkpoint path")

            monkeypatch.setattr(Checkpointer, "position", broken)
            async with asyncio.timeout(WAIT):
                while intake.status().handlers_alive:  # noqa: ASYNC110 - a status to poll
                    await asyncio.sleep(0.02)
        finally:
            await client.close(drain_timeout=1.0)
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert any("injected into the webhook checkpoint path" in e for e in errors), errors
