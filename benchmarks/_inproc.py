"""What the in-process benchmarks share: a session taken to READY without a socket, and the
driver's own per-frame path (``GatewayConnection._read_loop``: ``receive_frame``, then the
event to the dispatcher or the actions run) reading frames a benchmark pushes, so a benchmark
measures the adapter's own per-event code, not a copy of it."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, cast

import aiohttp

from qqbot_gateway.adapter.connection import GatewayConnection
from qqbot_gateway.adapter.dispatch import Dispatcher
from qqbot_gateway.adapter.events import EventBus
from qqbot_gateway.adapter.session import Deliver, Emit, GatewaySession, Send
from qqbot_gateway.adapter.types import TransportConfig

__all__ = ["FrameSource", "Reader", "executor", "open_session"]

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
