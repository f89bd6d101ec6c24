"""What the in-process benchmarks share: a session taken to READY without a socket, and the
driver's own per-frame path (``GatewayConnection._read_loop``: ``receive_frame``, then the
event to the dispatcher or the actions run) reading frames a benchmark pushes, so a benchmark
measures the adapter's own per-event code, not a copy of it. With a dispatcher and, given a
session store, a checkpointer (:class:`Pipeline`), that is the store benchmarks' flood
(:func:`flood`, :func:`store_rounds`: bench_store and bench_failover)."""

from __future__ import annotations

import asyncio
import gc
import json
import random
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import aiohttp

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter.checkpoint import DEFAULT_DEDUPE_IDS, Checkpointer
from qqbot_gateway.adapter.connection import GatewayConnection
from qqbot_gateway.adapter.dispatch import Dispatcher, Progress
from qqbot_gateway.adapter.events import EventBus
from qqbot_gateway.adapter.protocol import GatewayEvent
from qqbot_gateway.adapter.session import Deliver, Emit, GatewaySession, Send
from qqbot_gateway.adapter.store import FileSessionStore, SessionStore
from qqbot_gateway.adapter.types import TransportConfig

__all__ = [
    "APP_ID",
    "Flood",
    "FrameSource",
    "Pipeline",
    "Reader",
    "executor",
    "file_store",
    "flood",
    "open_session",
    "store_rounds",
]

#: The app id the in-process pipelines checkpoint under.
APP_ID = "1024"

_TEXT = aiohttp.WSMsgType.TEXT


def open_session(session: GatewaySession) -> list[Any]:
    """Connect, Hello at QQ's 41.25 s interval, READY: the actions READY produced."""
    session.connect(0.0, "token")
    session.receive_text(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}}), 0.0)
    ready = {"session_id": "bench", "user": {"id": "1"}}
    return session.receive_text(json.dumps({"op": 0, "s": 1, "t": "READY", "d": ready}), 0.0)


def executor(dispatcher: Dispatcher, bus: EventBus) -> Callable[[list[Any]], None]:
    """The driver's loop over the session's actions, minus sends (none are expected)."""

    def execute(actions: list[Any]) -> None:
        for action in actions:
            if isinstance(action, Deliver):
                dispatcher.put(action.event)
            elif isinstance(action, Emit):
                bus.emit(action.event)
            elif isinstance(action, Send):
                raise AssertionError("no sends expected")

    return execute


class FrameSource:
    """Stands in for the WebSocket under the driver's own read loop: ``receive()`` hands out the
    pushed frames at once (as aiohttp does with frames already buffered: no yield), and waits
    when there are none, as on a quiet socket."""

    close_code = None

    def __init__(self) -> None:
        self._frames: deque[aiohttp.WSMessage] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def push(self, frames: Iterable[bytes]) -> None:
        self._frames.extend(aiohttp.WSMessage(_TEXT, data, None) for data in frames)
        self._wake()

    def end(self) -> None:
        self._frames.append(aiohttp.WSMessage(aiohttp.WSMsgType.CLOSED, None, None))
        self._wake()

    @property
    def empty(self) -> bool:
        return not self._frames

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self) -> aiohttp.WSMessage:
        while not self._frames:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._frames.popleft()


class Reader:
    """The WebSocket driver's per-frame path itself: ``GatewayConnection._read_loop`` (parse,
    ``receive_frame``, the event to the dispatcher or the actions run) over a
    :class:`FrameSource`. A benchmark pushes frames; no copy of the driver's code is measured."""

    def __init__(self, session: GatewaySession, dispatcher: Dispatcher, bus: EventBus) -> None:
        self.source = FrameSource()
        self.connection = GatewayConnection(
            session,
            ws_http=cast(aiohttp.ClientSession, None),  # never used: no socket is opened
            url="ws://bench.invalid",
            token="token",
            transport=TransportConfig(),
            bus=bus,
            deliver=dispatcher.put,
        )
        self.task = asyncio.get_running_loop().create_task(
            self.connection._read_loop(cast(Any, self.source)), name="bench reader"
        )

    def push(self, frames: Iterable[bytes]) -> None:
        self.source.push(frames)

    @property
    def idle(self) -> bool:
        """Every pushed frame was read (the reader waits for more)."""
        return self.source.empty

    async def close(self) -> None:
        self.source.end()
        await self.task


def file_store(parent: str) -> FileSessionStore:
    """A real file store in a new directory below ``parent``, acquired (as a shard's is)."""
    store = FileSessionStore(tempfile.mkdtemp(dir=parent), APP_ID, 0)
    store.acquire()
    return store


class Pipeline:
    """Session + the driver's read loop + dispatcher with a counting no-op handler, and a
    :class:`~qqbot_gateway.adapter.checkpoint.Checkpointer` over ``store`` when one is given,
    wired as a shard wires them (``adapter/shard.py``: the dispatcher keeps its progress per
    handled event, the checkpointer reads it)."""

    def __init__(self, capacity: int, store: SessionStore | None = None) -> None:
        self.capacity = capacity
        self.store = store
        self.handled = 0
        #: Each checkpoint write's duration, in seconds.
        self.writes: list[float] = []
        self.checkpointer: Checkpointer | None = None

    async def start(self) -> None:
        self.bus = bus = ev.EventBus()
        self.session = session = GatewaySession(intents=1 << 25)
        session.interest = bus.interest(0)

        def handler(event: GatewayEvent) -> None:
            self.handled += 1

        self.dispatcher = dispatcher = Dispatcher(
            session,
            bus=bus,
            handlers=lambda t: [handler],
            capacity=self.capacity,
            progress=Progress(DEFAULT_DEDUPE_IDS) if self.store is not None else None,
        )
        if self.store is not None:
            progress = dispatcher.progress
            assert progress is not None
            self.checkpointer = Checkpointer(
                self.store,
                app_id=APP_ID,
                shard_id=0,
                shard_count=1,
                bus=bus,
                current_session=lambda: (session.session_id, session.seq),
                accepted_count=lambda: progress.handled + dispatcher.outstanding,
                progress=progress,
            )
            bus.subscribe_to(ev.CheckpointWritten, lambda e: self.writes.append(e.duration))
        dispatcher.start()
        if self.checkpointer is not None:
            self.checkpointer.start()
        executor(dispatcher, bus)(open_session(session))
        #: The connection's own read loop, reading the frames pushed to it.
        self.reader = Reader(session, dispatcher, bus)

    async def close(self) -> None:
        await self.reader.close()
        await self.dispatcher.close(5.0)
        if self.checkpointer is not None:
            await self.checkpointer.close()


@dataclass
class Flood:
    rate: float  # handled events per second of wall time
    cpu_ns: float  # the event loop thread's CPU time per event (what bounds a shard's rate)
    all_ns: float  # the process's CPU time per event, every thread and the kernel's fsync work
    writes: int  # checkpoint writes completed during the flood


async def flood(payloads: list[bytes], store: SessionStore | None) -> Flood:
    """Handled events per second, flooding a :class:`Pipeline` as fast as the loop takes them
    (200 frames at a time, each batch read and handled before the next)."""
    pipe = Pipeline(len(payloads) + 10, store)
    await pipe.start()
    gc.collect()
    start, cpu, all_cpu = time.perf_counter(), time.thread_time(), time.process_time()
    batch = 200
    for i in range(0, len(payloads), batch):
        pipe.reader.push(payloads[i : i + batch])
        while not (pipe.reader.idle and pipe.dispatcher.idle):  # noqa: ASYNC110 - no event
            await asyncio.sleep(0)
    elapsed, cpu = time.perf_counter() - start, time.thread_time() - cpu
    all_cpu = time.process_time() - all_cpu
    writes = len(pipe.writes)
    await pipe.close()
    assert pipe.handled == len(payloads) + 1  # + READY
    n = len(payloads)
    return Flood(n / elapsed, cpu * 1e9 / n, all_cpu * 1e9 / n, writes)


async def store_rounds(
    payloads: list[bytes],
    stores: Mapping[str, Callable[[], SessionStore | None]],
    rounds: int,
    rng: random.Random | None = None,
) -> dict[str, list[Flood]]:
    """``rounds`` floods with each of ``stores`` (a name -> a new store, or None for none),
    interleaved: each round runs every one once, in an order shuffled by ``rng`` if given,
    else alternating (as given on even rounds, reversed on odd ones)."""
    runs: dict[str, list[Flood]] = {name: [] for name in stores}
    for r in range(rounds):
        order = list(stores)
        if rng is not None:
            rng.shuffle(order)
        elif r % 2:
            order.reverse()
        for name in order:
            runs[name].append(await flood(payloads, stores[name]()))
    return runs
