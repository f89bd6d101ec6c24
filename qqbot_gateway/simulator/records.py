"""What the simulator saw and did, kept for tests (times are ``loop.time()``, monotonic)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ConnectionRecord",
    "DispatchRecord",
    "HeartbeatRecord",
    "IdentifyRecord",
    "ResumeRecord",
    "SentMessage",
    "WriteRecord",
]

#: Dispatch types that belong to the session lifecycle, not to the bot's event stream.
LIFECYCLE_TYPES = frozenset({"READY", "RESUMED"})


@dataclass(frozen=True, slots=True)
class DispatchRecord:
    """One dispatch created for a session (emitted), or dropped when the session died."""

    shard: int
    session_id: str
    seq: int
    event_id: str | None
    type: str
    at: float


@dataclass(frozen=True, slots=True)
class WriteRecord:
    """One frame the server wrote to a live connection (after any delay)."""

    conn_id: int
    shard: int | None
    session_id: str | None
    op: int | None
    seq: int | None
    type: str | None
    event_id: str | None
    replayed: bool
    at: float


@dataclass(frozen=True, slots=True)
class HeartbeatRecord:
    conn_id: int
    d: Any
    at: float
    acked: bool


@dataclass(frozen=True, slots=True)
class IdentifyRecord:
    """``outcome``: ready, bad_token, invalid_shard, disallowed_intents, withheld."""

    conn_id: int
    shard: tuple[int, int] | None
    intents: int | None
    outcome: str
    session_id: str | None
    at: float


@dataclass(frozen=True, slots=True)
class ResumeRecord:
    """``outcome``: resumed, bad_token, unknown_session, expired, invalidated, seq_ahead,
    buffer_overflow, rejected_fault, withheld."""

    conn_id: int
    session_id: str
    seq: int | None
    outcome: str
    replayed: int
    at: float


@dataclass(slots=True)
class ConnectionRecord:
    """A WebSocket connection. ``closed_by``: server, client, abort (RST/forgotten), or None."""

    conn_id: int
    remote: str | None
    opened_at: float
    closed_at: float | None = None
    close_code: int | None = None
    close_reason: str | None = None
    closed_by: str | None = None
    session_id: str | None = None
    shard: int | None = None
    blackholed: bool = False
    heartbeats: list[HeartbeatRecord] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SentMessage:
    """A message (or media upload) received on a send endpoint and accepted."""

    kind: str  # c2c, group, channel, dms, c2c_file, group_file
    target: str
    body: Any
    msg_id: str | None
    msg_seq: int | None
    event_id: str | None
    id: str
    at: float
