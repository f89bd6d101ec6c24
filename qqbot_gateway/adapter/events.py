"""Lifecycle events: everything an operator would want to count or see.

The adapter emits these typed, immutable events on an :class:`EventBus`; metrics, traces, logs
and the health evaluator subscribe. The adapter imports no telemetry library, and turning
telemetry off (no subscribers) changes nothing else.

Every event carries ``shard`` (``None`` for process-wide events such as token refreshes) and
``monotonic``: the event loop's clock (``loop.time()``) when it happened, so subscribers can
compute ages without a wall clock. Subscribers that need wall time read it themselves on
receipt: delivery is synchronous, inside the emitting call.

Events (grouped)::

    connection   ConnectAttempt, Connected, HelloReceived, IdentifySent, ResumeSent,
                 SessionReady, SessionResumed, StateChanged, Disconnected, ReconnectScheduled,
                 ReconnectLoopDetected, ShardFatal, SupervisorStopped
    liveness     HeartbeatSent, HeartbeatAcked, ZombieDetected
    frames       FrameReceived, ProtocolViolation
    delivery     EventDispatched, DuplicateDropped, HandlerQueueDepth, HandlerFailed,
                 HandlerCompleted
    auth         TokenRefreshed, TokenRefreshFailed
    store        CheckpointWritten, CheckpointFailed, RestartResume
    webhook      WebhookRequest, WebhookListening, WebhookStopped
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = [
    "CheckpointFailed",
    "CheckpointWritten",
    "ConnectAttempt",
    "Connected",
    "ConnectionState",
    "Disconnected",
    "DuplicateDropped",
    "EventBus",
    "EventDispatched",
    "FrameReceived",
    "HandlerCompleted",
    "HandlerFailed",
    "HandlerQueueDepth",
    "HeartbeatAcked",
    "HeartbeatSent",
    "HelloReceived",
    "IdentifySent",
    "LifecycleEvent",
    "ProtocolViolation",
    "ReconnectLoopDetected",
    "ReconnectScheduled",
    "RestartResume",
    "ResumeSent",
    "SessionReady",
    "SessionResumed",
    "ShardFatal",
    "StateChanged",
    "SupervisorStopped",
    "TokenRefreshFailed",
    "TokenRefreshed",
    "WebhookListening",
    "WebhookRequest",
    "WebhookStopped",
    "ZombieDetected",
]

_log = logging.getLogger("qqbot_gateway.events")


class ConnectionState(enum.Enum):
    """The state of one shard, as exported by ``connection_state``."""

    IDLE = "idle"  # created, not started
    CONNECTING = "connecting"  # fetching token / gateway URL / opening the WebSocket
    HANDSHAKING = "handshaking"  # WebSocket open; Hello, Identify/Resume in flight
    READY = "ready"  # READY or RESUMED received: a live session
    BACKOFF = "backoff"  # disconnected, waiting before the next attempt
    FATAL = "fatal"  # stopped for good by a fatal close code; needs an operator
    STOPPED = "stopped"  # shut down on request


@dataclass(frozen=True, slots=True, kw_only=True)
class LifecycleEvent:
    shard: int | None
    monotonic: float


@dataclass(frozen=True, slots=True, kw_only=True)
class StateChanged(LifecycleEvent):
    old: ConnectionState
    new: ConnectionState


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectAttempt(LifecycleEvent):
    attempt: int  # 1 for the first attempt after a healthy period
    resume: bool  # True if this attempt will try to resume


@dataclass(frozen=True, slots=True, kw_only=True)
class Connected(LifecycleEvent):
    connection_id: str  # ours, for correlating logs; not a QQ identifier
    url: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HelloReceived(LifecycleEvent):
    heartbeat_interval: float  # seconds, after validation and clamping
    advertised_ms: Any  # what the server sent, for the record


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentifySent(LifecycleEvent):
    intents: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumeSent(LifecycleEvent):
    session_id: str
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionReady(LifecycleEvent):
    session_id: str
    user_id: str | None
    username: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionResumed(LifecycleEvent):
    session_id: str
    replayed: int  # dispatches received between Resume and RESUMED
    resume_started: float  # monotonic time the Resume was sent


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatSent(LifecycleEvent):
    seq: int | None
    unacked: int  # heartbeats sent since the last op 11, this one included


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatAcked(LifecycleEvent):
    rtt: float  # seconds since the heartbeat this ACK answers


@dataclass(frozen=True, slots=True, kw_only=True)
class ZombieDetected(LifecycleEvent):
    reason: str  # one of protocol.ZOMBIE_REASONS
    unacked: int
    idle_for: float  # seconds since the last frame of any kind
    heartbeat_interval: float


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameReceived(LifecycleEvent):
    op: int | None  # None when the frame could not be parsed
    event_type: str | None
    size: int  # bytes (characters for text frames)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtocolViolation(LifecycleEvent):
    detail: str  # what was wrong; never contains the frame itself


@dataclass(frozen=True, slots=True, kw_only=True)
class EventDispatched(LifecycleEvent):
    event_type: str
    seq: int | None
    event_id: str | None
    replayed: bool  # received between Resume and RESUMED


@dataclass(frozen=True, slots=True, kw_only=True)
class DuplicateDropped(LifecycleEvent):
    event_type: str
    seq: int | None
    event_id: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class HandlerQueueDepth(LifecycleEvent):
    depth: int
    capacity: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HandlerCompleted(LifecycleEvent):
    event_type: str
    duration: float


@dataclass(frozen=True, slots=True, kw_only=True)
class HandlerFailed(LifecycleEvent):
    event_type: str
    handler: str
    error_type: str
    error: str = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Disconnected(LifecycleEvent):
    reason: str  # one of protocol.DISCONNECT_REASONS
    close_code: int | None
    detail: str
    resumable: bool
    connection_age: float | None  # seconds the connection lived, None if it never opened


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconnectScheduled(LifecycleEvent):
    reason: str
    delay: float
    attempt: int
    mode: str  # "resume" or "identify"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconnectLoopDetected(LifecycleEvent):
    quick_failures: int
    min_delay: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ShardFatal(LifecycleEvent):
    reason: str
    close_code: int | None
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorStopped(LifecycleEvent):
    reason: str  # "shutdown", "fatal" or "crashed"
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenRefreshed(LifecycleEvent):
    expires_in: float
    forced: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenRefreshFailed(LifecycleEvent):
    error: str
    code: int | None
    retry_in: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointWritten(LifecycleEvent):
    """The session store holds the shard's state up to ``seq`` (durably)."""

    seq: int
    duration: float  # seconds the write took (in a worker thread)
    lag: int  # events handled since the snapshot was taken (not yet durable)


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointFailed(LifecycleEvent):
    error: str  # names the file or backend, never a secret


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartResume(LifecycleEvent):
    """What became of the session a previous process left in the store.

    ``outcome``: ``resumed`` (Resume accepted), ``refused`` (op 9 or a refused resume: a new
    session; events sent while no process was connected may be missed), ``too_old`` (older than
    the max age: not tried), ``unusable`` (missing fields, corrupt, another app id or shard
    count: not tried)."""

    outcome: str
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookRequest(LifecycleEvent):
    """One HTTP request to the webhook receiver, answered (see ``adapter.webhook``)."""

    outcome: str  # one of adapter.webhook.OUTCOMES
    status: int  # the HTTP status answered
    op: int | None  # the payload's op when it got that far
    duration: float  # seconds from the request's arrival to the answer (time to ACK)
    signed: bool  # True when the signature was verified: the platform reached us
    wall: float  # Unix time of the answer (the last-callback timestamp metric)


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookListening(LifecycleEvent):
    url: str  # where the receiver listens (host, port and callback path; no secret)


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookStopped(LifecycleEvent):
    reason: str  # "shutdown" or "crashed"
    error: str | None = None


E = TypeVar("E", bound=LifecycleEvent)
Subscriber = Callable[[LifecycleEvent], None]


class EventBus:
    """Synchronous fan-out of lifecycle events.

    Subscribers run inside ``emit`` and must be quick; one that raises is logged and kept, and
    never affects the adapter.
    """

    __slots__ = ("_subscribers",)

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Add a subscriber; returns a function that removes it."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def subscribe_to(self, kind: type[E], callback: Callable[[E], None]) -> Callable[[], None]:
        """Subscribe to one event class (and its subclasses) only."""

        def filtered(event: LifecycleEvent) -> None:
            if isinstance(event, kind):
                callback(event)

        return self.subscribe(filtered)

    def emit(self, event: LifecycleEvent) -> None:
        for callback in tuple(self._subscribers):
            try:
                callback(event)
            except Exception:  # noqa: BLE001 - a broken subscriber must not break the adapter
                _log.exception(
                    "lifecycle subscriber %r failed on %s", callback, type(event).__name__
                )
