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
    liveness     HeartbeatSent, HeartbeatAcked, ZombieDetected, PingSent, PongReceived,
                 PingLayerChanged
    frames       FrameReceived, ProtocolViolation
    delivery     EventDispatched, DuplicateDropped, HandlerQueueDepth, HandlerFailed,
                 HandlerCompleted
    auth         TokenRefreshed, TokenRefreshFailed
    store        CheckpointWritten, CheckpointFailed, RestartResume, JournalWritten,
                 JournalReplayed
    webhook      WebhookRequest, WebhookListening, WebhookStopped

Per-event facts cost nothing unless someone listens. Four kinds happen for every frame or
every dispatched event (:data:`PER_EVENT`: ``FrameReceived``, ``EventDispatched``,
``HandlerQueueDepth``, ``HandlerCompleted``). The adapter keeps what they say as plain counters
in a :class:`ShardStats` per shard (frames by op, dispatches by type, the last frame's time, the
queue depth, handler durations in fixed buckets), which readers such as the metrics collector
read when they need them; the event objects themselves are built only when a subscriber asked
for their kind (:meth:`EventBus.wants`; on the hot path the per-shard :class:`Interest` flags).
A plain ``subscribe(callback)`` asks for everything, as before.

The bus routes by kind and by shard: ``subscribe(callback, kinds=(...), shard=N)`` is called
only for those, so a process with many shards does not run every shard's callbacks for every
event.
"""

from __future__ import annotations

import bisect
import enum
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

__all__ = [
    "HANDLER_SECONDS_BUCKETS",
    "PER_EVENT",
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
    "Interest",
    "JournalReplayed",
    "JournalWritten",
    "LifecycleEvent",
    "PingLayerChanged",
    "PingSent",
    "PongReceived",
    "ProtocolViolation",
    "ReconnectLoopDetected",
    "ReconnectScheduled",
    "RestartResume",
    "ResumeSent",
    "SessionReady",
    "SessionResumed",
    "ShardFatal",
    "ShardStats",
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
class PingSent(LifecycleEvent):
    outstanding: int  # pings awaiting a pong, this one included


@dataclass(frozen=True, slots=True, kw_only=True)
class PongReceived(LifecycleEvent):
    rtt: float  # seconds since the ping this pong answers
    deadline: float  # the pong deadline now in force (seconds), derived from the RTT


@dataclass(frozen=True, slots=True, kw_only=True)
class PingLayerChanged(LifecycleEvent):
    state: str  # a session.PingState value: off, calibrating, armed, suspended, disabled
    detail: str


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
class JournalWritten(LifecycleEvent):
    """The webhook intake journal made ``records`` callbacks durable with one write + fsync
    (a group commit); their ACKs go out now."""

    records: int
    duration: float  # seconds the write took (in a worker thread)


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalReplayed(LifecycleEvent):
    """At start: callbacks a previous process ACKed and did not handle, re-delivered from the
    webhook journal (``replayed``), and those it had handled already (``skipped``)."""

    replayed: int
    skipped: int


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

#: The kinds that happen once per frame or per dispatched event; built only when wanted.
PER_EVENT: Final[tuple[type[LifecycleEvent], ...]] = (
    FrameReceived,
    EventDispatched,
    HandlerQueueDepth,
    HandlerCompleted,
)

#: Handler durations (seconds) are counted in these buckets by :class:`ShardStats`:
#: 1 ms (an in-memory reply) .. 60 s (a handler this slow is a bug worth seeing).
HANDLER_SECONDS_BUCKETS: Final = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
#: Distinct event types a shard counts separately; further new types count as ``"other"``.
MAX_COUNTED_TYPES: Final = 256
OTHER_TYPE: Final = "other"


class ShardStats:
    """Per-shard counters the adapter keeps on the hot path instead of per-event objects.

    Written by the session (frames, dispatches, last frame) and the dispatcher (queue depth,
    handler durations), read by whoever needs them (the metrics collector at scrape time).
    Plain ints and floats: no locks, no clock reads, no label lookups. Everything counts from
    the start of the process and never goes down (except ``queue_depth``).
    """

    __slots__ = (
        "dispatched",
        "frames",
        "handled",
        "handler_buckets",
        "handler_seconds",
        "last_frame_at",
        "queue_depth",
        "shard",
    )

    def __init__(self, shard: int) -> None:
        self.shard = shard
        #: Frames received by opcode; ``None``: a frame that was not a JSON object with an
        #: integer ``op`` (binary, invalid JSON, no op).
        self.frames: dict[int | None, int] = {}
        #: Dispatches accepted for the handlers, by event type (READY and RESUMED included;
        #: duplicates dropped on replay are not dispatches). At most ``MAX_COUNTED_TYPES``
        #: types; later new ones count under ``"other"``.
        self.dispatched: dict[str, int] = {}
        #: Loop time of the last frame of any kind, None before the first.
        self.last_frame_at: float | None = None
        #: Dispatched events waiting for the handlers.
        self.queue_depth = 0
        #: Handler runs that completed (a failure is counted by ``HandlerFailed`` instead),
        #: their total seconds, and how many fell in each of ``HANDLER_SECONDS_BUCKETS`` (not
        #: cumulative; the last slot is +Inf).
        self.handled = 0
        self.handler_seconds = 0.0
        self.handler_buckets = [0] * (len(HANDLER_SECONDS_BUCKETS) + 1)

    def count_dispatch(self, event_type: str) -> None:
        dispatched = self.dispatched
        count = dispatched.get(event_type)
        if count is not None:
            dispatched[event_type] = count + 1
        elif len(dispatched) < MAX_COUNTED_TYPES:
            dispatched[event_type] = 1
        else:
            dispatched[OTHER_TYPE] = dispatched.get(OTHER_TYPE, 0) + 1

    def count_handled(self, seconds: float) -> None:
        self.handled += 1
        self.handler_seconds += seconds
        self.handler_buckets[bisect.bisect_left(HANDLER_SECONDS_BUCKETS, seconds)] += 1

    def apply(self, event: LifecycleEvent) -> None:
        """Count a per-event fact that arrived as an event (a source without its own stats)."""
        if isinstance(event, FrameReceived):
            self.frames[event.op] = self.frames.get(event.op, 0) + 1
            self.last_frame_at = event.monotonic
        elif isinstance(event, EventDispatched):
            self.count_dispatch(event.event_type)
        elif isinstance(event, HandlerQueueDepth):
            self.queue_depth = event.depth
        elif isinstance(event, HandlerCompleted):
            self.count_handled(event.duration)


class Interest:
    """Whether anyone listens to each per-event kind, for one shard: plain attributes, read on
    the hot path instead of asking the bus; the bus keeps them current as subscriptions change
    (:meth:`EventBus.interest`). A fresh one (no bus) says yes to everything."""

    __slots__ = ("dispatched", "frames", "handled", "queue_depth")

    def __init__(self, value: bool = True) -> None:
        self.frames = value  # FrameReceived
        self.dispatched = value  # EventDispatched
        self.queue_depth = value  # HandlerQueueDepth
        self.handled = value  # HandlerCompleted


class _Subscription:
    __slots__ = ("callback", "exclude", "kinds", "shard")

    def __init__(
        self,
        callback: Subscriber,
        kinds: tuple[type[LifecycleEvent], ...] | None,
        exclude: tuple[type[LifecycleEvent], ...],
        shard: int | None,
    ) -> None:
        self.callback = callback
        self.kinds = kinds
        self.exclude = exclude
        self.shard = shard

    def matches(self, kind: type[LifecycleEvent], shard: int | None) -> bool:
        if self.shard is not None and self.shard != shard:
            return False
        if self.exclude and issubclass(kind, self.exclude):
            return False
        return self.kinds is None or issubclass(kind, self.kinds)


class EventBus:
    """Synchronous fan-out of lifecycle events, routed by kind and shard.

    Subscribers run inside ``emit`` and must be quick; one that raises is logged and kept, and
    never affects the adapter. Routes are computed once per (kind, shard) and cached until the
    subscriptions change, so ``emit`` is one dict lookup plus the calls.
    """

    __slots__ = ("_interests", "_routes", "_subscriptions")

    def __init__(self) -> None:
        self._subscriptions: list[_Subscription] = []
        self._routes: dict[tuple[type[LifecycleEvent], int | None], tuple[Subscriber, ...]] = {}
        self._interests: dict[int | None, Interest] = {}

    def interest(self, shard: int | None) -> Interest:
        """The live :class:`Interest` of ``shard``: one object per shard, kept up to date."""
        interest = self._interests.get(shard)
        if interest is None:
            interest = self._interests[shard] = Interest()
            self._refresh(shard, interest)
        return interest

    def _refresh(self, shard: int | None, interest: Interest) -> None:
        interest.frames = self.wants(FrameReceived, shard)
        interest.dispatched = self.wants(EventDispatched, shard)
        interest.queue_depth = self.wants(HandlerQueueDepth, shard)
        interest.handled = self.wants(HandlerCompleted, shard)

    def _changed(self) -> None:
        self._routes.clear()
        for shard, interest in self._interests.items():
            self._refresh(shard, interest)

    def subscribe(
        self,
        callback: Subscriber,
        *,
        kinds: Iterable[type[LifecycleEvent]] | None = None,
        exclude: Iterable[type[LifecycleEvent]] = (),
        shard: int | None = None,
    ) -> Callable[[], None]:
        """Add a subscriber; returns a function that removes it.

        ``kinds``: only events of these classes (and subclasses); None: every event, including
        the per-event kinds (which are then built for every frame: a subscriber that does not
        need them says ``exclude=PER_EVENT``). ``exclude``: never these classes.
        ``shard``: only events of this shard (process-wide events, shard None, are not sent).
        """
        kind_tuple = None if kinds is None else tuple(kinds)
        sub = _Subscription(callback, kind_tuple, tuple(exclude), shard)
        self._subscriptions.append(sub)
        self._changed()

        def unsubscribe() -> None:
            if sub in self._subscriptions:
                self._subscriptions.remove(sub)
                self._changed()

        return unsubscribe

    def subscribe_to(
        self, kind: type[E], callback: Callable[[E], None], *, shard: int | None = None
    ) -> Callable[[], None]:
        """Subscribe to one event class (and its subclasses) only."""
        return self.subscribe(callback, kinds=(kind,), shard=shard)  # type: ignore[arg-type]

    def _route(self, kind: type[LifecycleEvent], shard: int | None) -> tuple[Subscriber, ...]:
        route = self._routes.get((kind, shard))
        if route is None:
            route = tuple(s.callback for s in self._subscriptions if s.matches(kind, shard))
            self._routes[(kind, shard)] = route
        return route

    def wants(self, kind: type[LifecycleEvent], shard: int | None = None) -> bool:
        """True if an event of ``kind`` for ``shard`` would reach any subscriber."""
        return bool(self._route(kind, shard))

    def emit(self, event: LifecycleEvent) -> None:
        for callback in self._route(type(event), event.shard):
            try:
                callback(event)
            except Exception:  # noqa: BLE001 - a broken subscriber must not break the adapter
                _log.exception(
                    "lifecycle subscriber %r failed on %s", callback, type(event).__name__
                )
