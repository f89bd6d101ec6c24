"""What the in-process benchmarks share: a session taken to READY without a socket, and the
driver's per-frame path (``GatewayConnection._read_loop``: ``receive_frame``, then the event
to the dispatcher or the actions run) minus the sends, so a benchmark measures the adapter's
own per-event path."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from qqbot_gateway.adapter.dispatch import Dispatcher
from qqbot_gateway.adapter.events import EventBus
from qqbot_gateway.adapter.protocol import GatewayEvent
from qqbot_gateway.adapter.session import Deliver, Emit, GatewaySession, Send

__all__ = ["executor", "feeder", "open_session"]


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


def feeder(
    session: GatewaySession, dispatcher: Dispatcher, bus: EventBus
) -> Callable[[bytes, float], None]:
    """One received text frame, as the connection's read loop handles it."""
    execute = executor(dispatcher, bus)
    receive_frame, put = session.receive_frame, dispatcher.put

    def feed(data: bytes, now: float) -> None:
        result = receive_frame(data, now)
        if isinstance(result, GatewayEvent):
            put(result)
        else:
            execute(result)

    return feed
