"""A bounded, in-memory history of the lifecycle events, for the status page.

:class:`StatusHistory` is one more lifecycle subscriber (pure: events in, no I/O, no task, no
clock of its own). It keeps, per shard, just enough to draw the last few minutes:

* heartbeat round trips ``(t, rtt)``: a ring of at most :data:`MAX_RTT_SAMPLES`;
* frame arrivals as *runs* ``[first, last]``: frames closer than :data:`FRAME_RESOLUTION` to the
  previous one extend the current run, so the last-frame-age curve is exact to within that
  resolution however many frames arrive, and the ring holds at most ``window / resolution``;
* one bucket per second with events dispatched (total and by type) and the peak handler queue
  depth: a ring of ``window`` seconds;
* the disconnect timeline: :class:`Incident` records (zombie declared, disconnected with reason,
  attempts, recovered by resume or identify after how long), a ring of :data:`MAX_INCIDENTS`;
* counters and "last seen" values (state and since when, unacked heartbeats, interval, queue
  depth, handler errors by type);
* with the webhook transport, the callback receiver (:class:`WebhookHistory`): listening or
  not, requests by outcome, signature failures, time to ACK, the last valid callback.

Everything is bounded by count, whatever the event rate or the uptime. Event types beyond
:data:`MAX_EVENT_TYPES` distinct names fold into ``"other"`` (a misbehaving gateway cannot grow
the history). Free text from events (disconnect details) passes through ``sanitize`` (the log
redactor) and is cut to :data:`MAX_DETAIL` characters; handler error *messages* are not kept at
all (only the exception type), since a handler may put anything into one.

Per-event facts (frames, dispatches, queue depth, completed handlers) come from the adapter's
counters (:class:`~qqbot_gateway.adapter.events.ShardStats`, bound with
:meth:`StatusHistory.bind_stats`), read by :meth:`StatusHistory.sample` a few times a second
(telemetry calls it from the loop-lag tick, and the status page before each document): no
per-event object is built for the status page. The frame-age curve and the per-second buckets
are then exact to within the sampling period (0.25 s); a shard without bound counters is fed
by the ``FrameReceived`` / ``EventDispatched`` / ``HandlerQueueDepth`` / ``HandlerCompleted``
events instead.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter.protocol import ZOMBIE_REASONS
from qqbot_gateway.adapter.webhook import SIGNATURE_FAILURES

__all__ = [
    "DEFAULT_WINDOW",
    "FRAME_RESOLUTION",
    "MAX_EVENT_TYPES",
    "MAX_INCIDENTS",
    "MAX_RTT_SAMPLES",
    "Incident",
    "Series",
    "ShardHistory",
    "StatusHistory",
    "WebhookHistory",
    "ZombieInfo",
]

#: Seconds of sparkline history. Five minutes: several heartbeats even at QQ's 41 s interval,
#: and the span in which "did it just drop?" is asked.
DEFAULT_WINDOW: Final = 300.0
#: Heartbeat RTT samples kept per shard: every ACK of the window at a 0.5 s interval.
MAX_RTT_SAMPLES: Final = 600
#: Frames closer together than this form one run: the age curve is exact to 0.25 s, far below
#: any heartbeat interval (0.2 s is the clamp's floor, where the curve is noise anyway).
FRAME_RESOLUTION: Final = 0.25
#: Disconnects remembered per shard. 20: a screenful; a flapping link shows its pattern.
MAX_INCIDENTS: Final = 20
#: Distinct event type names per shard before new ones count as "other". QQ has a few dozen.
MAX_EVENT_TYPES: Final = 64
#: Disconnect details are cut to this many characters.
MAX_DETAIL: Final = 200
#: Seconds over which "events per minute by type" is computed.
RATE_WINDOW: Final = 60
#: Webhook time-to-ACK samples kept: every signed request of the window at 2 per second.
MAX_ACK_SAMPLES: Final = 600
#: Distinct webhook outcomes before new ones count as "other" (the adapter knows 15).
MAX_OUTCOMES: Final = 32

_OTHER: Final = "other"

#: A series: ``(t, value)`` points, oldest first, ``t`` on the events' monotonic clock.
Series = list[tuple[float, float]]


@dataclass(frozen=True, slots=True)
class ZombieInfo:
    reason: str
    at: float
    unacked: int
    idle_for: float
    heartbeat_interval: float


@dataclass(slots=True)
class Incident:
    """One lost connection and what followed, oldest fields first."""

    seq: int  # per shard, 1-based, for stable identities on the page
    at: float  # the Disconnected event
    reason: str
    close_code: int | None
    detail: str
    resumable: bool
    connection_age: float | None
    zombie: ZombieInfo | None = None
    attempts: int = 0  # connection attempts after this disconnect
    recovered_at: float | None = None
    recovered_by: str | None = None  # "resume" or "identify"
    replayed: int = 0
    fatal: str | None = None  # ShardFatal message: no recovery will follow
    #: The reason the latest failed attempt of this recovery ended with.
    last_attempt_reason: str | None = None

    @property
    def open(self) -> bool:
        return self.recovered_at is None and self.fatal is None


@dataclass(slots=True)
class _Second:
    """One second of delivery: events dispatched (total, by type), the peak queue depth."""

    second: int
    events: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    peak_depth: int = 0
    depth_end: int = 0


class ShardHistory:
    """What the lifecycle events told us about one shard; see the module docstring."""

    def __init__(self, shard: int, *, window: float, started_at: float) -> None:
        self.shard = shard
        self.window = window
        self.started_at = started_at
        # Connection and session.
        self.state = ev.ConnectionState.IDLE
        self.state_since = started_at
        self.connected = False
        self.connected_at: float | None = None
        self.hello = False
        self.interval: float | None = None
        self.live = False
        self.live_since: float | None = None
        self.live_mode: str | None = None  # "identify" or "resume"
        self.sessions = 0  # READY received
        self.resumes = 0  # RESUMED received
        # Liveness.
        self.unacked = 0
        self.last_heartbeat_at: float | None = None
        self.last_ack_at: float | None = None
        self.last_frame_at: float | None = None
        self.last_rtt: float | None = None
        self.rtts: deque[tuple[float, float]] = deque(maxlen=MAX_RTT_SAMPLES)
        self.frame_runs: deque[list[float]] = deque(maxlen=math.ceil(window / FRAME_RESOLUTION) + 2)
        self.zombie: ZombieInfo | None = None  # declared on the open connection
        #: The WebSocket ping layer's state on this connection as the session reports it
        #: (``PingLayerChanged``: off, calibrating, armed, suspended, disabled), and the last
        #: pong's round trip and the pong deadline then in force.
        self.ping_state: str | None = None
        self.ping_detail: str | None = None
        self.last_pong_rtt: float | None = None
        self.pong_deadline: float | None = None
        # Delivery.
        self.seconds: deque[_Second] = deque(maxlen=math.ceil(window) + 1)
        self.events_total = 0
        self.events_by_type: dict[str, int] = {}
        self.duplicates = 0
        self.queue_depth = 0
        self.queue_capacity: int | None = None
        self.handled = 0
        self.handler_errors = 0
        self.errors_by_type: dict[str, int] = {}
        self.last_error: tuple[float, str, str, str] | None = None  # at, type, handler, error
        # Timeline.
        self.incidents: deque[Incident] = deque(maxlen=MAX_INCIDENTS)
        self.incident_count = 0
        self.fatal: str | None = None
        self.stopped: str | None = None
        # The adapter's counters, and what the last sample had seen of them.
        self.stats: ev.ShardStats | None = None
        self._sampled_at = started_at
        self._frames_seen = 0
        self._dispatched_seen: dict[str, int] = {}
        self._handled_seen = 0

    # --- hot path ------------------------------------------------------------------------
    def frame(self, t: float) -> None:
        self.last_frame_at = t
        runs = self.frame_runs
        if runs:
            last = runs[-1]
            if t - last[1] < FRAME_RESOLUTION:
                last[1] = t
                return
        runs.append([t, t])

    def dispatched(self, t: float, event_type: str, count: int = 1) -> None:
        bucket = self._bucket(t)
        bucket.events += count
        self.events_total += count
        by_type = self.events_by_type
        if event_type not in by_type and len(by_type) >= MAX_EVENT_TYPES:
            event_type = _OTHER
        by_type[event_type] = by_type.get(event_type, 0) + count
        bucket.by_type[event_type] = bucket.by_type.get(event_type, 0) + count

    def sample(self, now: float) -> None:
        """Take in what the adapter counted since the last sample (see the module docstring)."""
        st = self.stats
        if st is None:
            return
        frames = sum(st.frames.values())
        last = st.last_frame_at
        if last is not None and frames != self._frames_seen:
            runs = self.frame_runs
            # Several frames since the last sample, the latest within one sampling period of
            # the run: the frames kept coming (one run), as per-frame events would have shown.
            if (
                frames - self._frames_seen > 1
                and runs
                and last - runs[-1][1] <= (now - self._sampled_at) + FRAME_RESOLUTION
            ):
                runs[-1][1] = last
                self.last_frame_at = last
            else:
                self.frame(last)
        self._frames_seen = frames
        seen = self._dispatched_seen
        for event_type, count in list(st.dispatched.items()):
            new = count - seen.get(event_type, 0)
            if new > 0:
                self.dispatched(now, event_type, new)
                seen[event_type] = count
        self.queue(now, st.queue_depth, self.queue_capacity or 0)
        self.handled += st.handled - self._handled_seen
        self._handled_seen = st.handled
        self._sampled_at = now

    def _bucket(self, t: float) -> _Second:
        second = int(t)
        seconds = self.seconds
        if seconds and seconds[-1].second == second:
            return seconds[-1]
        # A new second starts with the depth the queue has now: a queue that stays full
        # shows as full in every second, not only in those with a depth event.
        depth = self.queue_depth
        bucket = _Second(second, peak_depth=depth, depth_end=depth)
        seconds.append(bucket)
        return bucket

    def queue(self, t: float, depth: int, capacity: int) -> None:
        self.queue_capacity = capacity
        bucket = self._bucket(t)
        self.queue_depth = bucket.depth_end = depth
        if depth > bucket.peak_depth:
            bucket.peak_depth = depth

    # --- connection lifecycle ------------------------------------------------------------
    def on_state(self, t: float, new: ev.ConnectionState) -> None:
        self.state, self.state_since = new, t

    def on_attempt(self) -> None:
        incident = self.open_incident()
        if incident is not None:
            incident.attempts += 1

    def on_connected(self, t: float) -> None:
        self.connected, self.connected_at = True, t
        self.hello = False
        self.unacked = 0
        self.zombie = None
        self.ping_state = self.ping_detail = None
        self.last_pong_rtt = self.pong_deadline = None

    def on_ping_layer(self, e: ev.PingLayerChanged) -> None:
        self.ping_state = e.state
        self.ping_detail = e.detail[:MAX_DETAIL] or None

    def on_pong(self, e: ev.PongReceived) -> None:
        self.last_pong_rtt, self.pong_deadline = e.rtt, e.deadline

    def on_hello(self, interval: float) -> None:
        self.hello = True
        self.interval = interval

    def on_heartbeat(self, t: float, unacked: int) -> None:
        self.unacked = unacked
        self.last_heartbeat_at = t

    def on_ack(self, t: float, rtt: float) -> None:
        self.unacked = 0
        self.last_ack_at = t
        self.last_rtt = rtt
        self.rtts.append((t, rtt))

    def on_live(self, t: float, mode: str, replayed: int = 0) -> None:
        self.live, self.live_since, self.live_mode = True, t, mode
        if mode == "resume":
            self.resumes += 1
        else:
            self.sessions += 1
        incident = self.open_incident()
        if incident is not None:
            incident.recovered_at = t
            incident.recovered_by = mode
            incident.replayed = replayed

    def on_zombie(self, event: ev.ZombieDetected) -> None:
        self.zombie = ZombieInfo(
            reason=event.reason,
            at=event.monotonic,
            unacked=event.unacked,
            idle_for=event.idle_for,
            heartbeat_interval=event.heartbeat_interval,
        )

    def on_disconnected(self, event: ev.Disconnected, detail: str) -> None:
        zombie = self.zombie
        if zombie is None and event.reason in ZOMBIE_REASONS and self.connected:
            # A layer without a ZombieDetected of its own (the WebSocket ping): still a zombie.
            silent = event.monotonic - (self.last_frame_at or event.monotonic)
            zombie = ZombieInfo(
                reason=event.reason,
                at=event.monotonic,
                unacked=self.unacked,
                idle_for=max(0.0, silent),
                heartbeat_interval=self.interval or 0.0,
            )
        was_live = self.live
        self.connected = self.live = self.hello = False
        self.unacked = 0
        self.zombie = None
        open_incident = self.open_incident()
        if open_incident is not None and not was_live:
            # A failed attempt while recovering: the same incident (its reason stays the one
            # that started it), with the latest attempt's reason beside it.
            open_incident.last_attempt_reason = event.reason
            return
        self.incident_count += 1
        self.incidents.append(
            Incident(
                seq=self.incident_count,
                at=event.monotonic,
                reason=event.reason,
                close_code=event.close_code,
                detail=detail,
                resumable=event.resumable,
                connection_age=event.connection_age,
                zombie=zombie,
            )
        )

    def on_fatal(self, t: float, reason: str, message: str) -> None:
        self.fatal = message
        incident = self.open_incident()
        if incident is None:
            # Given up before any connection opened (refused credentials): still a line.
            self.incident_count += 1
            incident = Incident(
                seq=self.incident_count,
                at=t,
                reason=reason,
                close_code=None,
                detail=message,
                resumable=False,
                connection_age=None,
            )
            self.incidents.append(incident)
        incident.fatal = message

    def on_stopped(self, reason: str) -> None:
        self.stopped = reason
        self.connected = self.live = False

    def open_incident(self) -> Incident | None:
        if self.incidents and self.incidents[-1].open:
            return self.incidents[-1]
        return None

    # --- reading -------------------------------------------------------------------------
    def rtt_series(self, now: float) -> Series:
        start = now - self.window
        return [(t, rtt) for t, rtt in self.rtts if t >= start]

    def frame_age_series(self, now: float, step: float) -> Series:
        """The peak last-frame age in each ``step`` of the window, one point per step end.

        Between frames the age grows linearly and a frame resets it, so the peak within a
        step is the largest gap that ended inside it or the age at its end, whichever is
        larger (gaps inside a run are below the resolution). No point before the first frame.
        """
        runs = self.frame_runs
        if not runs:
            return []
        start = max(now - self.window, runs[0][0])
        n = max(1, math.ceil((now - start) / step))
        t0 = now - n * step
        points: Series = []
        j = 0  # the next run not yet reached
        while j < len(runs) and runs[j][0] <= t0:
            j += 1
        for k in range(1, n + 1):
            end = t0 + k * step
            peak = 0.0
            while j < len(runs) and runs[j][0] <= end:
                if j > 0:
                    peak = max(peak, runs[j][0] - runs[j - 1][1])
                j += 1
            if j == 0:
                continue  # no frame yet
            last = runs[j - 1][1]
            points.append((end, max(peak, end - last if last < end else 0.0)))
        return points

    def _per_second(self, now: float) -> tuple[range, dict[int, _Second]]:
        first = max(int(now - self.window) + 1, int(self.started_at))
        return range(first, int(now) + 1), {b.second: b for b in self.seconds}

    def events_per_second(self, now: float) -> Series:
        """Events dispatched in each whole second of the window (0 where none); the second
        under way is left out (a partial count would read as a drop)."""
        seconds, buckets = self._per_second(now)
        out: Series = []
        for second in seconds[:-1]:
            bucket = buckets.get(second)
            out.append((float(second + 1), float(bucket.events) if bucket is not None else 0.0))
        return out

    def queue_depth_series(self, now: float) -> Series:
        """The peak handler queue depth in each second of the window; the last point is the
        depth now. A second without a depth change has the depth the previous one ended with."""
        seconds, buckets = self._per_second(now)
        out: Series = []
        depth = 0
        for bucket in self.seconds:  # the depth the window starts with
            if bucket.second >= seconds.start:
                break
            depth = bucket.depth_end
        for second in seconds:
            found = buckets.get(second)
            if found is None:
                out.append((float(second + 1), float(depth)))
            else:
                out.append((float(second + 1), float(found.peak_depth)))
                depth = found.depth_end
        if out:
            out[-1] = (out[-1][0], float(self.queue_depth))
        return out

    def recent_types(self, now: float, seconds: int = RATE_WINDOW) -> dict[str, int]:
        """Events by type over the last ``seconds`` whole seconds (the current one included)."""
        return _recent([(b.second, b.by_type) for b in self.seconds], now, seconds)


def _recent(buckets: list[tuple[int, dict[str, int]]], now: float, seconds: int) -> dict[str, int]:
    """The per-name counts of the buckets (``(second, counts)``, oldest first) of the last
    ``seconds`` whole seconds, summed."""
    since = int(now) - seconds + 1
    out: dict[str, int] = {}
    for second, counts in reversed(buckets):
        if second < since:
            break
        for name, count in counts.items():
            out[name] = out.get(name, 0) + count
    return out


@dataclass(slots=True)
class _WebhookSecond:
    second: int
    requests: int = 0
    rejected: int = 0
    by_outcome: dict[str, int] = field(default_factory=dict)


class WebhookHistory:
    """The callback receiver's story (webhook transport): one per process."""

    def __init__(self, *, window: float, started_at: float) -> None:
        self.window = window
        self.started_at = started_at
        self.url: str | None = None
        self.listening_since: float | None = None
        self.stopped: str | None = None
        self.stopped_error: str | None = None
        self.last_request_at: float | None = None
        self.last_valid_at: float | None = None
        self.validated_at: float | None = None
        self.requests = 0
        self.rejected = 0  # signature failures
        self.by_outcome: dict[str, int] = {}
        self.acks: deque[tuple[float, float]] = deque(maxlen=MAX_ACK_SAMPLES)
        self.seconds: deque[_WebhookSecond] = deque(maxlen=math.ceil(window) + 1)

    @property
    def listening(self) -> bool:
        return self.listening_since is not None and self.stopped is None

    def on_listening(self, t: float, url: str) -> None:
        self.url, self.listening_since = url, t
        self.stopped = self.stopped_error = None

    def on_stopped(self, reason: str, error: str | None) -> None:
        self.stopped, self.stopped_error = reason, error

    def on_request(self, t: float, outcome: str, signed: bool, duration: float) -> None:
        self.requests += 1
        self.last_request_at = t
        rejected = outcome in SIGNATURE_FAILURES
        if signed:
            self.last_valid_at = t
            self.acks.append((t, duration))
        if outcome == "validated":
            self.validated_at = t
        if rejected:
            self.rejected += 1
        by_outcome = self.by_outcome
        if outcome not in by_outcome and len(by_outcome) >= MAX_OUTCOMES:
            outcome = _OTHER
        by_outcome[outcome] = by_outcome.get(outcome, 0) + 1
        second = int(t)
        seconds = self.seconds
        if not seconds or seconds[-1].second != second:
            seconds.append(_WebhookSecond(second))
        bucket = seconds[-1]
        bucket.requests += 1
        bucket.rejected += rejected
        bucket.by_outcome[outcome] = bucket.by_outcome.get(outcome, 0) + 1

    def ack_series(self, now: float) -> Series:
        start = now - self.window
        return [(t, d) for t, d in self.acks if t >= start]

    def per_second(self, now: float, rejected: bool = False) -> Series:
        """Requests (or rejected requests) in each whole second of the window."""
        buckets = {b.second: b for b in self.seconds}
        first = max(int(now - self.window) + 1, int(self.started_at))
        out: Series = []
        for second in range(first, int(now)):
            b = buckets.get(second)
            value = 0 if b is None else (b.rejected if rejected else b.requests)
            out.append((float(second + 1), float(value)))
        return out

    def recent_outcomes(self, now: float, seconds: int = RATE_WINDOW) -> dict[str, int]:
        """Requests by outcome over the last ``seconds`` whole seconds."""
        return _recent([(b.second, b.by_outcome) for b in self.seconds], now, seconds)


class StatusHistory:
    """The lifecycle subscriber: routes each event to its shard's :class:`ShardHistory`."""

    def __init__(
        self,
        *,
        window: float = DEFAULT_WINDOW,
        sanitize: Callable[[str], str] = lambda text: text,
    ) -> None:
        if not window > 0:
            raise ValueError("window must be positive")
        self.window = window
        self.sanitize = sanitize
        self.shards: dict[int, ShardHistory] = {}
        #: Created on the first webhook event (webhook transport only).
        self.webhook: WebhookHistory | None = None
        self._started_at: float | None = None
        self.token_refreshed_at: float | None = None
        self.token_failed_at: float | None = None
        self.token_error: str | None = None
        self._routes: dict[type[ev.LifecycleEvent], Callable[[ShardHistory, Any], None]] = {
            ev.FrameReceived: _on_frame,
            ev.EventDispatched: _on_dispatched,
            ev.HeartbeatSent: _on_heartbeat,
            ev.HeartbeatAcked: _on_ack,
            ev.HandlerQueueDepth: _on_queue,
            ev.HandlerCompleted: _on_handled,
            ev.HandlerFailed: _on_handler_failed,
            ev.DuplicateDropped: _on_duplicate,
            ev.StateChanged: _on_state,
            ev.ConnectAttempt: _on_attempt,
            ev.Connected: _on_connected,
            ev.HelloReceived: _on_hello,
            ev.SessionReady: _on_ready,
            ev.SessionResumed: _on_resumed,
            ev.ZombieDetected: _on_zombie,
            ev.PingLayerChanged: ShardHistory.on_ping_layer,
            ev.PongReceived: ShardHistory.on_pong,
            ev.Disconnected: self._on_disconnected,
            ev.ShardFatal: self._on_fatal,
            ev.SupervisorStopped: _on_stopped,
        }

    def bind_stats(self, shard: int, stats: ev.ShardStats, queue_capacity: int) -> None:
        """Read ``shard``'s per-event facts from the adapter's counters (see :meth:`sample`)."""
        s = self.shards.get(shard)
        if s is not None:
            s.stats = stats
            s.queue_capacity = queue_capacity

    def sample(self, now: float) -> None:
        for s in self.shards.values():
            s.sample(now)

    def add_shards(self, shards: Iterable[int], now: float) -> None:
        if self._started_at is None:
            self._started_at = now
        for shard in shards:
            if shard not in self.shards:
                self.shards[shard] = ShardHistory(shard, window=self.window, started_at=now)

    def observe(self, event: ev.LifecycleEvent) -> None:
        route = self._routes.get(type(event))
        if route is not None:
            shard = event.shard
            history = self.shards.get(shard) if shard is not None else None
            if history is not None:
                route(history, event)
        elif isinstance(event, ev.WebhookRequest | ev.WebhookListening | ev.WebhookStopped):
            self._on_webhook(event)
        elif isinstance(event, ev.TokenRefreshed):
            self.token_refreshed_at = event.monotonic
            self.token_error = None
        elif isinstance(event, ev.TokenRefreshFailed):
            self.token_failed_at = event.monotonic
            self.token_error = self._clean(event.error)

    def _on_webhook(
        self, event: ev.WebhookRequest | ev.WebhookListening | ev.WebhookStopped
    ) -> None:
        wh = self.webhook
        if wh is None:
            started = self._started_at if self._started_at is not None else event.monotonic
            wh = self.webhook = WebhookHistory(window=self.window, started_at=started)
        if isinstance(event, ev.WebhookRequest):
            wh.on_request(event.monotonic, event.outcome, event.signed, event.duration)
        elif isinstance(event, ev.WebhookListening):
            wh.on_listening(event.monotonic, self._clean(event.url))
        else:
            wh.on_stopped(event.reason, None if event.error is None else self._clean(event.error))

    def _clean(self, text: str) -> str:
        text = self.sanitize(text)
        return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."

    def _on_disconnected(self, s: ShardHistory, e: ev.Disconnected) -> None:
        s.on_disconnected(e, self._clean(e.detail))

    def _on_fatal(self, s: ShardHistory, e: ev.ShardFatal) -> None:
        s.on_fatal(e.monotonic, e.reason, self._clean(e.message))


# The routes: module functions, so the dict above is built once per history.
def _on_frame(s: ShardHistory, e: ev.FrameReceived) -> None:
    s.frame(e.monotonic)


def _on_dispatched(s: ShardHistory, e: ev.EventDispatched) -> None:
    s.dispatched(e.monotonic, e.event_type)


def _on_heartbeat(s: ShardHistory, e: ev.HeartbeatSent) -> None:
    s.on_heartbeat(e.monotonic, e.unacked)


def _on_ack(s: ShardHistory, e: ev.HeartbeatAcked) -> None:
    s.on_ack(e.monotonic, e.rtt)


def _on_queue(s: ShardHistory, e: ev.HandlerQueueDepth) -> None:
    s.queue(e.monotonic, e.depth, e.capacity)


def _on_handled(s: ShardHistory, e: ev.HandlerCompleted) -> None:
    s.handled += 1


def _on_handler_failed(s: ShardHistory, e: ev.HandlerFailed) -> None:
    s.handled += 1
    s.handler_errors += 1
    name = e.event_type
    errors = s.errors_by_type
    if name not in errors and len(errors) >= MAX_EVENT_TYPES:
        name = _OTHER
    errors[name] = errors.get(name, 0) + 1
    # The message is not kept: a handler may put anything (a token, a user's text) into it.
    s.last_error = (e.monotonic, e.event_type[:80], e.handler[:120], e.error_type[:80])


def _on_duplicate(s: ShardHistory, e: ev.DuplicateDropped) -> None:
    s.duplicates += 1


def _on_state(s: ShardHistory, e: ev.StateChanged) -> None:
    s.on_state(e.monotonic, e.new)


def _on_attempt(s: ShardHistory, e: ev.ConnectAttempt) -> None:
    s.on_attempt()


def _on_connected(s: ShardHistory, e: ev.Connected) -> None:
    s.on_connected(e.monotonic)


def _on_hello(s: ShardHistory, e: ev.HelloReceived) -> None:
    s.on_hello(e.heartbeat_interval)


def _on_ready(s: ShardHistory, e: ev.SessionReady) -> None:
    s.on_live(e.monotonic, "identify")


def _on_resumed(s: ShardHistory, e: ev.SessionResumed) -> None:
    s.on_live(e.monotonic, "resume", e.replayed)


def _on_zombie(s: ShardHistory, e: ev.ZombieDetected) -> None:
    s.on_zombie(e)


def _on_stopped(s: ShardHistory, e: ev.SupervisorStopped) -> None:
    s.on_stopped(e.reason)
