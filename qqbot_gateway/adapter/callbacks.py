"""Webhook callbacks in, actions out: the webhook transport's sans-I/O acceptor.

A callback is a dispatch that arrived as a signed HTTP request instead of a WebSocket frame.
There is no connection, no heartbeat and no order: the platform retries a delivery it considers
failed, possibly after later ones. So a duplicate is told by its event id alone, in a
:class:`~.types.DedupeWindow` (the same kind of window the WebSocket session keeps; ``seq`` is
passed through, never used to drop one). Pure: no I/O, no clock of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from . import events as ev
from .actions import Action, Deliver, Emit
from .protocol import new_event
from .types import DedupeWindow

__all__ = ["CallbackAcceptor"]


class CallbackAcceptor:
    """Accepts callback dispatches for one shard (the webhook transport has one, shard 0).

    ``window`` is the dedupe window (restored ids go in with :meth:`remember_ids`);
    ``stats`` the shard's counters; ``interest`` whether anyone listens to ``EventDispatched``.
    """

    def __init__(
        self,
        shard_id: int = 0,
        *,
        window: DedupeWindow | None = None,
        stats: ev.ShardStats | None = None,
        interest: ev.Interest | None = None,
    ) -> None:
        self.shard_id = shard_id
        self.window = window if window is not None else DedupeWindow()
        self.stats = stats if stats is not None else ev.ShardStats(shard_id)
        self.interest = interest if interest is not None else ev.Interest()

    def remember_ids(self, event_ids: Iterable[str]) -> None:
        """Add handled event ids (oldest first) to the dedupe window."""
        self.window.remember(event_ids)

    def forget_id(self, event_id: str) -> None:
        """Take an accepted id out of the dedupe window again: its callback was answered with a
        retry (the webhook journal could not record it), so the redelivery must be accepted."""
        self.window.forget(event_id)

    def set_backpressure(self, on: bool) -> None:
        """Nothing to pause: the intake answers 503 itself while the queue is full."""

    def accept_callback(self, payload: Mapping[str, Any], now: float) -> list[Action]:
        """Answers ``Deliver`` (+ ``EventDispatched`` if anyone listens), or
        ``DuplicateDropped``, or a ``ProtocolViolation`` for a dispatch without a string ``t``.
        """
        t = payload.get("t")
        if not isinstance(t, str) or not t:
            detail = "callback dispatch without a string 't'"
            return [Emit(ev.ProtocolViolation(shard=self.shard_id, monotonic=now, detail=detail))]
        s = payload.get("s")
        seq = s if isinstance(s, int) and not isinstance(s, bool) else None
        raw_id = payload.get("id")
        event_id = raw_id if isinstance(raw_id, str) and raw_id else None
        if event_id is not None and event_id in self.window:
            dropped = ev.DuplicateDropped(
                shard=self.shard_id, monotonic=now, event_type=t, seq=seq, event_id=event_id
            )
            return [Emit(dropped)]
        if event_id is not None:
            self.window.add(event_id)
        # No connection: no session id, never a replay.
        event = new_event(t, payload.get("d"), seq, event_id, self.shard_id, None, False)
        self.stats.count_dispatch(t)
        if not self.interest.dispatched:
            return [Deliver(event)]
        dispatched = ev.EventDispatched(
            shard=self.shard_id,
            monotonic=now,
            event_type=t,
            seq=seq,
            event_id=event_id,
            replayed=False,
        )
        return [Deliver(event), Emit(dispatched)]
