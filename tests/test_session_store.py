"""The session store, the handled-seq watermark and the checkpointer, in process."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter.checkpoint import DEFAULT_DEDUPE_IDS, Checkpointer
from qqbot_gateway.adapter.client import ClientConfig, QQBotClient, Secret
from qqbot_gateway.adapter.dispatch import Dispatcher, Progress
from qqbot_gateway.adapter.protocol import GatewayEvent
from qqbot_gateway.adapter.session import GatewaySession
from qqbot_gateway.adapter.store import (
    FileSessionStore,
    StoredSession,
    StoreError,
    StoreLockedError,
)
from qqbot_gateway.simulator import Simulator, SimulatorConfig

STATE = StoredSession(
    app_id="1024",
    shard_id=0,
    shard_count=1,
    session_id="s-1",
    seq=42,
    event_ids=("a", "b"),
    written_at=1.0e9,
)


# --- the file store -------------------------------------------------------------------------


def test_round_trip_is_atomic_and_private(tmp_path: Path) -> None:
    store = FileSessionStore(tmp_path, "1024", 0)
    assert store.load() is None  # nothing yet: not an error
    store.acquire()
    store.save(STATE)
    assert store.load() == STATE
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert sorted(p.name for p in store.directory.iterdir()) == ["shard-0.json", "shard-0.lock"]
    store.save(replace(STATE, seq=43))
    assert store.load() == replace(STATE, seq=43)
    store.clear()
    assert store.load() is None
    store.close()
    store.close()  # idempotent


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b'{"format": "qqbot-gateway-session/1", "app_id": "1', "not valid JSON"),
        (b"\x00\xff garbage", "not valid JSON"),
        (b'{"format": "other/2"}', "not a qqbot-gateway-session/1 file"),
        (b'["a list"]', "not a qqbot-gateway-session/1 file"),
        (
            json.dumps({**json.loads(STATE.to_json()), "seq": "42"}).encode(),
            "wrong type",
        ),
        (
            json.dumps({**json.loads(STATE.to_json()), "shard": [0]}).encode(),
            "wrong type",
        ),
        (
            json.dumps({**json.loads(STATE.to_json()), "session_id": ""}).encode(),
            "wrong type",
        ),
    ],
)
def test_unreadable_state_is_a_store_error_naming_the_file(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    store = FileSessionStore(tmp_path, "1024", 0)
    store.directory.mkdir(parents=True)
    store.path.write_bytes(content)
    with pytest.raises(StoreError) as info:
        store.load()
    assert str(store.path) in str(info.value) and reason in str(info.value)


def test_a_stray_temporary_file_is_ignored_and_replaced(tmp_path: Path) -> None:
    store = FileSessionStore(tmp_path, "1024", 0)
    store.acquire()
    store.save(STATE)
    temp = store.directory / ".shard-0.json.tmp"
    temp.write_bytes(b'{"half a wri')  # a crash in the middle of a write
    assert store.load() == STATE
    store.save(replace(STATE, seq=50))
    assert not temp.exists() and store.load() == replace(STATE, seq=50)
    store.close()


def test_one_owner_per_shard(tmp_path: Path) -> None:
    first = FileSessionStore(tmp_path, "1024", 0)
    first.acquire()
    second = FileSessionStore(tmp_path, "1024", 0)
    with pytest.raises(StoreLockedError) as info:
        second.acquire()
    assert info.value.holder_pid == os.getpid()
    assert f"pid {os.getpid()}" in str(info.value)
    # Another shard or another app is independent.
    FileSessionStore(tmp_path, "1024", 1).acquire()
    FileSessionStore(tmp_path, "2048", 0).acquire()
    first.close()  # the kernel lock goes with the descriptor
    second.acquire()
    second.close()


def test_an_unusable_directory_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create"):
        FileSessionStore(blocker, "1024", 0).acquire()


def test_app_id_cannot_escape_the_directory(tmp_path: Path) -> None:
    store = FileSessionStore(tmp_path, "../../etc", 0)
    assert store.directory.parent == tmp_path


# --- the checkpointer -----------------------------------------------------------------------


class MemoryStore:
    """A SessionStore in memory that can be told to fail."""

    location = "memory"

    def __init__(self) -> None:
        self.saved: list[StoredSession] = []
        self.cleared = False
        self.closed = False
        self.fail = False

    def acquire(self) -> None:
        pass

    def load(self) -> StoredSession | None:
        return self.saved[-1] if self.saved else None

    def save(self, state: StoredSession) -> None:
        if self.fail:
            raise StoreError("memory: disk full")
        time.sleep(0.002)
        self.saved.append(state)

    def clear(self) -> None:
        self.cleared = True

    def close(self) -> None:
        self.closed = True


def event(seq: int | None, session: str = "s-1") -> GatewayEvent:
    return GatewayEvent(
        type="C2C_MESSAGE_CREATE",
        data={},
        seq=seq,
        event_id=f"id-{seq}",
        shard=0,
        session_id=session,
        replayed=False,
    )


class Shard:
    """A real dispatcher wired to a checkpointer as the client does it; the handler can be
    held at one sequence number (``hold``) until ``release()``."""

    def __init__(self, store: MemoryStore, **kw: float) -> None:
        self.store, self.bus = store, ev.EventBus()
        self.session = GatewaySession(intents=1)
        self.session.session_id, self.session.seq = "s-1", 0
        self.hold: int | None = None
        self.gate = asyncio.Event()
        self.dispatcher = Dispatcher(
            self.session,
            bus=self.bus,
            handlers=lambda t: [self.handler],
            capacity=100_000,
            progress=Progress(DEFAULT_DEDUPE_IDS),
        )
        progress = self.dispatcher.progress
        assert progress is not None
        self.ckpt = Checkpointer(
            store,
            app_id="1024",
            shard_id=0,
            shard_count=1,
            bus=self.bus,
            current_session=lambda: (self.session.session_id, self.session.seq),
            accepted_count=lambda: progress.handled + self.dispatcher.outstanding,
            progress=progress,
            **kw,  # type: ignore[arg-type]
        )
        self.dispatcher.start()

    async def handler(self, e: GatewayEvent) -> None:
        if e.seq is not None and e.seq == self.hold:
            await self.gate.wait()

    def put(self, *seqs: int | None) -> None:
        for seq in seqs:
            if seq is not None:
                self.session.seq = seq
            self.dispatcher.put(event(seq))

    def duplicate(self, seq: int) -> None:
        self.ckpt.duplicate(seq)  # the shard's control path: a direct call

    async def settle(self) -> None:
        for _ in range(50):
            await asyncio.sleep(0)

    def seq(self) -> int:
        snapshot = self.ckpt.snapshot()
        assert snapshot is not None
        return snapshot.seq

    async def close(self, **kw: bool) -> None:
        self.gate.set()
        await self.dispatcher.close(2.0)
        await self.ckpt.close(**kw)


async def test_the_watermark_moves_only_past_handled_events() -> None:
    shard = Shard(MemoryStore())
    shard.hold = 3
    shard.put(1, 2, 3, 4, 5)
    await shard.settle()
    assert shard.seq() == 2  # 3 is inside its handler, 4 and 5 wait behind it
    assert shard.ckpt.progress.ids[-1] == "id-2"
    shard.gate.set()
    await shard.settle()
    assert shard.seq() == 5
    shard.put(None)  # RESUMED: holds its place, moves nothing
    await shard.settle()
    assert shard.seq() == 5 and shard.ckpt.handled_count == 6
    await shard.close()


async def test_a_duplicate_counts_as_done_in_its_place_in_the_stream() -> None:
    shard = Shard(MemoryStore())
    shard.ckpt.restore(replace(STATE, session_id="s-1", seq=10))
    shard.session.seq = 10
    shard.hold = 11
    shard.put(11)
    await shard.settle()
    # The platform replays 12, whose id the previous process handled: dropped, in the stream
    # behind 11, which is still in its handler.
    shard.duplicate(12)
    assert shard.seq() == 10
    shard.duplicate(11)  # a copy of an event already accepted: no place of its own
    shard.gate.set()
    await shard.settle()
    assert shard.seq() == 12
    shard.put(13)
    await shard.settle()
    assert shard.seq() == 13
    await shard.close()


async def test_writes_are_batched_and_follow_the_handlers() -> None:
    store = MemoryStore()
    written: list[ev.CheckpointWritten] = []
    shard = Shard(store, interval=0.05)
    shard.bus.subscribe_to(ev.CheckpointWritten, written.append)
    shard.ckpt.start()
    shard.hold = 101
    for seq in range(1, 201):
        shard.put(seq)
        if seq % 10 == 0:
            await asyncio.sleep(0.005)
    await asyncio.sleep(0.2)
    assert store.saved and store.saved[-1].seq == 100  # never past the handled prefix
    assert len(store.saved) < 20, "batched, not one write per event"
    assert store.saved[-1].event_ids[-1] == "id-100"
    assert written[-1].seq == 100 and shard.ckpt.lag == 0
    await shard.close()
    assert store.saved[-1].seq == 200 and store.closed and not store.cleared


async def test_a_failed_write_is_reported_and_retried() -> None:
    store = MemoryStore()
    shard = Shard(store, interval=0.01)
    failures: list[ev.CheckpointFailed] = []
    shard.bus.subscribe_to(ev.CheckpointFailed, failures.append)
    written = asyncio.Event()
    shard.bus.subscribe_to(ev.CheckpointWritten, lambda _: written.set())
    store.fail = True
    shard.ckpt.start()
    shard.put(1)
    await asyncio.sleep(0.1)
    assert failures and "disk full" in failures[0].error
    assert len(failures) == 1, "retried after a pause, not in a loop"
    store.fail = False
    async with asyncio.timeout(5):
        await written.wait()
    assert store.saved[-1].seq == 1
    await shard.close(end_session=True)
    assert store.cleared and store.closed


async def test_a_saturated_loop_holds_writes_back_until_it_has_time() -> None:
    """A loop thread busy for (nearly) a whole poll window would leave a write waiting for the
    GIL until the burst ends, at the loop's expense: the writer holds it back and writes in the
    first window with time to spare."""
    store = MemoryStore()
    busy = True

    def cpu_clock() -> float:  # the loop thread's CPU time: all of the wall time while busy
        return time.monotonic() * 2 if busy else 0.0

    shard = Shard(store, interval=0.01, cpu_clock=cpu_clock)  # type: ignore[arg-type]
    written = asyncio.Event()
    shard.bus.subscribe_to(ev.CheckpointWritten, lambda _: written.set())
    shard.ckpt.start()
    shard.put(1, 2, 3)
    await asyncio.sleep(0.2)
    assert store.saved == [] and shard.ckpt.lag == 3
    busy = False
    async with asyncio.timeout(5):
        await written.wait()
    assert store.saved[-1].seq == 3 and shard.ckpt.lag == 0
    await shard.close()


async def test_a_loop_saturated_for_good_still_checkpoints_after_max_hold() -> None:
    """Held back at most ``max_hold``: a loop that never has time to spare (CPU-heavy handlers,
    a long flood) still gets its checkpoints, else the stored session would age past resuming."""
    store = MemoryStore()

    def cpu_clock() -> float:  # busy for all of every window, for good
        return time.monotonic() * 2

    shard = Shard(store, interval=0.01, cpu_clock=cpu_clock, max_hold=0.3)  # type: ignore[arg-type]
    written = asyncio.Event()
    shard.bus.subscribe_to(ev.CheckpointWritten, lambda _: written.set())
    loop = asyncio.get_running_loop()
    shard.ckpt.start()
    t0 = loop.time()
    shard.put(1, 2, 3)
    async with asyncio.timeout(5):
        await written.wait()
    assert loop.time() - t0 >= 0.25  # held back first (the first window starts the hold)
    assert store.saved[-1].seq == 3
    await shard.close()


async def test_the_writer_waits_with_the_injected_sleep() -> None:
    """Polls and the pause after a failed write run on the injected sleep: no real waiting."""
    store = MemoryStore()
    slept: list[float] = []
    pauses = asyncio.Event()

    async def sleep(seconds: float) -> None:
        if slept.count(0.5) == 2:
            pauses.set()
            await asyncio.Event().wait()  # until close() cancels the writer
        slept.append(seconds)
        await asyncio.sleep(0)

    shard = Shard(store, interval=0.01, sleep=sleep)  # type: ignore[arg-type]
    failures: list[ev.CheckpointFailed] = []
    shard.bus.subscribe_to(ev.CheckpointFailed, failures.append)
    store.fail = True
    shard.put(1)
    shard.ckpt.start()
    async with asyncio.timeout(5):
        await pauses.wait()
    # each failed write is followed by one pause of max(interval, 0.5 s); polls every interval
    assert set(slept) == {0.01, 0.5} and len(failures) == 2
    await shard.close(end_session=True)


async def test_ending_the_session_waits_for_a_save_still_on_its_thread() -> None:
    """close(end_session=True) while a save is on its worker thread: the state is deleted
    after that save, never before it (which would leave a file the next start resumes)."""
    started, release = threading.Event(), threading.Event()
    order: list[str] = []

    class SlowStore(MemoryStore):
        def save(self, state: StoredSession) -> None:
            started.set()
            release.wait(5)
            order.append("save")

        def clear(self) -> None:
            order.append("clear")

    shard = Shard(SlowStore(), interval=0.01)
    shard.put(1)
    shard.ckpt.start()
    async with asyncio.timeout(5):
        await asyncio.to_thread(started.wait, 5)
        closing = asyncio.create_task(shard.close(end_session=True))
        await asyncio.sleep(0.05)  # the writer is cancelled; the save still runs
        release.set()
        await closing
    assert order == ["save", "clear"]


# --- the client: what it does with a stored session -----------------------------------------


async def run_client(
    tmp_path: Path, sim: Simulator, *, max_age: float = 300.0
) -> tuple[list[ev.RestartResume], bool]:
    config = ClientConfig(
        app_id=sim.config.app_id,
        client_secret=Secret(sim.config.client_secret),
        api_base=sim.base_url,
        token_url=sim.token_url,
        gateway_url=sim.ws_url,
        state_dir=str(tmp_path),
        session_max_age=max_age,
    )
    client = QQBotClient(config)
    outcomes: list[ev.RestartResume] = []
    client.events.subscribe_to(ev.RestartResume, outcomes.append)
    ready = asyncio.Event()
    client.events.subscribe_to(ev.SessionReady, lambda _: ready.set())
    await client.start()
    try:
        async with asyncio.timeout(20):
            await ready.wait()
    finally:
        await client.close()
    return outcomes, client.has_session_store


@pytest.mark.parametrize(
    ("state", "outcome", "why"),
    [
        (replace(STATE, shard_count=2), "unusable", "shard 0 of 2"),
        (replace(STATE, app_id="999"), "unusable", "app id '999'"),
        (replace(STATE, written_at=time.time() - 600), "too_old", "max age 300s"),
    ],
)
async def test_a_stored_session_that_does_not_fit_is_not_resumed(
    tmp_path: Path,
    state: StoredSession,
    outcome: str,
    why: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FileSessionStore(tmp_path, "1024", 0)
    store.acquire()
    store.save(state)
    store.close()
    config = SimulatorConfig(app_id="1024", heartbeat_interval_ms=1000)
    async with Simulator(config) as sim:
        outcomes, has_store = await run_client(tmp_path, sim)
        assert not sim.resumes and len(sim.identifies) == 1
    assert has_store
    assert [o.outcome for o in outcomes] == [outcome]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(why in w and "identifying afresh" in w for w in warnings), warnings
    # The new session replaced the unusable state.
    assert FileSessionStore(tmp_path, "1024", 0).load() is not None


def test_session_restore_seeds_the_dedupe_window() -> None:
    session = GatewaySession(intents=1, dedupe_window=3)
    session.restore("s-1", 7, ["a", "b", "c", "d"])
    assert session.can_resume and session.seq == 7
    assert list(session._recent_ids) == ["b", "c", "d"]
