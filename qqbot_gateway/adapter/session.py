"""The gateway session as a sans-I/O state machine.

No sockets, no tasks, no clock: the driver feeds it received frames and the current time
(``loop.time()``, monotonic) and executes the actions it answers with:

* :class:`Send`: write this payload;
* :class:`Deliver`: hand this dispatch to the user's handlers;
* :class:`Close`: close the connection with this code and reason (``abort`` means the link is
  believed dead: tear it down without waiting for the peer);
* :class:`Emit`: publish this lifecycle event.

The driver also asks :meth:`GatewaySession.next_deadline` when to call :meth:`tick` next.

One ``GatewaySession`` lives as long as a shard: it keeps the session id and the last sequence
number across connections, so that a new connection can resume. Per connection it goes
through::

    connect()          receive(Hello)            receive(READY / RESUMED)
    --------> AWAIT_HELLO --------> AWAIT_READY ------------------------> READY
                  |  hello_timeout     |  handshake_timeout                  | ack/idle timeout,
                  v                    v                                     v op 7, op 9, ...
                CLOSING <--------------------------------------------------- +
                  |  connection_lost(close_code)
                  v
              DISCONNECTED  -> an Outcome telling the supervisor what to do next

Liveness is layered and scaled to the server's interval (all in :class:`LivenessConfig`):

* **ACK tracking.** When a heartbeat is due and ``ack_miss_limit`` heartbeats are already
  outstanding (sent, no op 11 since), the link is a zombie (``ack_timeout``). Heartbeats are
  counted, not wall time: a stalled event loop delays the verdict instead of faking one.
* **Receive idle.** No frame of any kind for ``idle_timeout_factor`` x interval (``idle_timeout``).
  The server ACKs every heartbeat, so a healthy link is never silent that long.
* Hello and READY/RESUMED deadlines for a handshake that never completes.
"""

from __future__ import annotations

import enum
import math
import platform
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from . import events as ev
from . import protocol as p
from .protocol import CloseAction, GatewayEvent, Op

__all__ = [
    "Action",
    "Close",
    "Deliver",
    "Emit",
    "GatewaySession",
    "LivenessConfig",
    "Outcome",
    "Phase",
    "Send",
]

#: Close code we use for every close we start ourselves. Anything but 1000/1001 keeps the
#: session resumable on gateways that follow Discord's rule; 4000 is in the private range.
RESUMABLE_CLOSE_CODE: Final = 4000


@dataclass(frozen=True, slots=True)
class LivenessConfig:
    """Timing rules. Every value derived from Hello's interval is scaled, then capped.

    ``None`` disables a layer (not allowed for ``ack_miss_limit``: ACK tracking is the one
    layer the protocol itself defines).
    """

    #: N consecutive heartbeats without an op 11 make a zombie. 2, not 1: a single late ACK
    #: (GC pause, a congested hop, a slow gateway node) must not cost a reconnect, while two
    #: in a row bound detection to [2, 3) intervals by this layer alone.
    ack_miss_limit: int = 2
    #: No frame at all for this many intervals makes a zombie. 2.5: the server ACKs every
    #: heartbeat, so a healthy link is never silent for more than one interval plus one RTT;
    #: 2.5 tolerates one lost or late ACK and still fires before the ACK layer on a dead link.
    idle_timeout_factor: float | None = 2.5
    #: Absolute cap on the idle deadline, whatever the interval.
    idle_timeout_max: float = 180.0
    #: Hello's interval is clamped into this range: a malformed tiny value must never become
    #: a heartbeat storm, a huge one must not disable liveness.
    min_heartbeat_interval: float = 0.2
    max_heartbeat_interval: float = 120.0
    #: Seconds from the WebSocket opening to op 10 Hello.
    hello_timeout: float | None = 10.0
    #: Seconds from Identify/Resume to READY/RESUMED; None derives 2 x interval within
    #: [handshake_timeout_min, handshake_timeout_max] (a resume replays a backlog first).
    handshake_timeout: float | None = None
    handshake_timeout_min: float = 5.0
    handshake_timeout_max: float = 60.0
    #: Consecutive failed resumes after which the session is dropped and we identify.
    max_resume_failures: int = 3
    #: Consecutive identifies answered by op 9 before READY after which we stop: the intents
    #: are not granted to this bot (a configuration error, not something to retry).
    max_identify_rejections: int = 3

    def __post_init__(self) -> None:
        if self.ack_miss_limit < 1:
            raise ValueError("ack_miss_limit must be at least 1")
        if self.idle_timeout_factor is not None and self.idle_timeout_factor <= 1.0:
            raise ValueError("idle_timeout_factor must be greater than 1 (or None to disable)")
        if not 0 < self.min_heartbeat_interval <= self.max_heartbeat_interval:
            raise ValueError("need 0 < min_heartbeat_interval <= max_heartbeat_interval")
        for name in ("hello_timeout", "handshake_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive (or None)")
        if self.max_resume_failures < 1 or self.max_identify_rejections < 1:
            raise ValueError("max_resume_failures and max_identify_rejections must be >= 1")

    def handshake_deadline(self, interval: float) -> float:
        if self.handshake_timeout is not None:
            return self.handshake_timeout
        return min(max(2.0 * interval, self.handshake_timeout_min), self.handshake_timeout_max)

    def idle_deadline(self, interval: float) -> float | None:
        if self.idle_timeout_factor is None:
            return None
        return min(self.idle_timeout_factor * interval, self.idle_timeout_max)


class Phase(enum.Enum):
    DISCONNECTED = "disconnected"
    AWAIT_HELLO = "await_hello"
    AWAIT_READY = "await_ready"
    READY = "ready"
    CLOSING = "closing"


@dataclass(frozen=True, slots=True)
class Send:
    payload: dict[str, Any]


# Deliver and Emit are made once per dispatched event: plain slots classes (a frozen
# dataclass's __init__ costs several times more); nobody keeps or mutates an action.
@dataclass(slots=True)
class Deliver:
    event: GatewayEvent


@dataclass(frozen=True, slots=True)
class Close:
    reason: str
    code: int
    abort: bool
    detail: str


@dataclass(slots=True)
class Emit:
    event: ev.LifecycleEvent


Action = Send | Deliver | Close | Emit


@dataclass(frozen=True, slots=True)
class Outcome:
    """What ended a connection, and what the supervisor should do about it."""

    reason: str
    close_code: int | None
    detail: str
    action: CloseAction
    #: True if the next connection will try to resume.
    resumable: bool
    #: The connection reached READY/RESUMED.
    was_ready: bool
    fatal_message: str | None = None


@dataclass(slots=True)
class _Conn:
    """State that lives and dies with one connection."""

    opened_at: float
    token: str
    phase: Phase = Phase.AWAIT_HELLO
    interval: float | None = None
    hello_at: float | None = None
    last_frame_at: float = 0.0
    next_heartbeat_at: float | None = None
    last_heartbeat_at: float | None = None
    unacked: int = 0
    resuming: bool = False
    resume_sent_at: float | None = None
    replayed: int = 0
    closing: Close | None = None
    invalid_session: bool | None = None  # d of the op 9 received, if any
    became_ready: bool = False
    pending: list[Action] = field(default_factory=list)


class GatewaySession:
    """Frames and time in, actions out. See the module docstring."""

    def __init__(
        self,
        *,
        shard_id: int = 0,
        shard_count: int = 1,
        intents: int,
        liveness: LivenessConfig | None = None,
        properties: Mapping[str, Any] | None = None,
        dedupe_window: int = 4096,
        stats: ev.ShardStats | None = None,
    ) -> None:
        if not 0 <= shard_id < shard_count:
            raise ValueError(f"shard id {shard_id} is not in range for {shard_count} shard(s)")
        self.shard_id = shard_id
        self.shard_count = shard_count
        self.intents = p.parse_intents(intents)
        self.liveness = liveness or LivenessConfig()
        self.properties: dict[str, Any] = dict(
            properties
            or {"$os": platform.system().lower(), "$browser": "qqbot-gateway", "$device": ""}
        )
        self.session_id: str | None = None
        #: Sequence number of the last dispatch accepted for delivery (0: none yet).
        self.seq: int = 0
        self.resume_failures = 0
        self.identify_rejections = 0
        self._recent_ids: OrderedDict[str, None] = OrderedDict()
        self._dedupe_window = dedupe_window
        self._conn: _Conn | None = None
        self._backpressure = False
        #: Per-event facts as counters (frames by op, dispatches by type, last frame time).
        self.stats = stats if stats is not None else ev.ShardStats(shard_id)
        #: Whether anyone listens to the per-event kinds (``FrameReceived``, ``EventDispatched``):
        #: the driver sets it to the bus's ``interest(shard)``; alone, the session emits all.
        self.interest = ev.Interest()

    # --- introspection -------------------------------------------------------------------
    @property
    def phase(self) -> Phase:
        return self._conn.phase if self._conn else Phase.DISCONNECTED

    @property
    def heartbeat_interval(self) -> float | None:
        return self._conn.interval if self._conn else None

    @property
    def unacked(self) -> int:
        return self._conn.unacked if self._conn else 0

    @property
    def can_resume(self) -> bool:
        return self.session_id is not None

    def forget_session(self) -> None:
        """Drop the session id and seq: the next connection identifies."""
        self.session_id = None
        self.seq = 0

    def restore(self, session_id: str, seq: int, event_ids: Iterable[str] = ()) -> None:
        """Adopt a session an earlier process saved (its handled-seq watermark and recently
        handled event ids): the next connection resumes it, and a replayed event whose id is
        among ``event_ids`` is dropped as a duplicate."""
        if self._conn is not None and self._conn.phase is not Phase.DISCONNECTED:
            raise RuntimeError("restore() while a connection is active")
        self.session_id = session_id
        self.seq = seq
        for event_id in event_ids:
            self._recent_ids[event_id] = None
        while len(self._recent_ids) > self._dedupe_window:
            self._recent_ids.popitem(last=False)

    def set_backpressure(self, on: bool) -> None:
        """While on, the next dispatch is refused: the connection closes without advancing
        ``seq``, so a resume later replays it. Nothing is lost, nothing is buffered unbounded."""
        self._backpressure = on

    # --- inputs --------------------------------------------------------------------------
    def connect(self, now: float, token: str) -> list[Action]:
        """A new WebSocket is open. ``token`` is the bare access token."""
        if self._conn is not None and self._conn.phase is not Phase.DISCONNECTED:
            raise RuntimeError("connect() while a connection is still active")
        self._conn = _Conn(opened_at=now, token=token, last_frame_at=now)
        return []

    def receive(self, data: str | bytes, now: float) -> list[Action]:
        """One WebSocket message arrived: ``str`` a text frame, ``bytes`` a binary one."""
        if isinstance(data, bytes | bytearray):
            self._require_conn().last_frame_at = now
            return self._bad_frame(now, len(data), "binary frame (the gateway speaks JSON text)")
        return self.receive_text(data, now)

    def receive_text(self, data: str | bytes, now: float) -> list[Action]:
        """One text frame arrived, as ``str`` or as its UTF-8 bytes (not decoded first)."""
        conn = self._require_conn()
        conn.last_frame_at = now
        try:
            payload = orjson.loads(data)
        except (ValueError, RecursionError):  # RecursionError: nested past the parser's limit
            return self._bad_frame(now, len(data), "frame is not valid JSON")
        op = payload.get("op") if isinstance(payload, dict) else None
        if not isinstance(op, int) or isinstance(op, bool):
            return self._bad_frame(now, len(data), "frame has no integer 'op'")
        stats = self.stats
        stats.last_frame_at = now
        frames = stats.frames
        frames[op] = frames.get(op, 0) + 1
        t = payload.get("t")
        event_type = t if isinstance(t, str) else None
        out: list[Action] = []
        if self.interest.frames:
            out.append(self._frame_event(now, op, event_type, len(data)))
        if conn.phase is Phase.CLOSING:
            return out  # we are tearing this link down; nothing more is acted on
        if op == Op.HEARTBEAT_ACK:
            out.extend(self._on_ack(conn, now))
        elif op == Op.DISPATCH and conn.phase is Phase.AWAIT_HELLO:
            detail = "dispatch before Hello"
            out.extend([self._violation(now, detail), self._close(conn, p.PROTOCOL_ERROR, detail)])
        elif op == Op.DISPATCH:
            out.extend(self._on_dispatch(conn, payload, event_type, now))
        elif op == Op.HELLO:
            out.extend(self._on_hello(conn, payload.get("d"), now))
        elif op == Op.RECONNECT:
            out.append(self._close(conn, p.RECONNECT_REQUESTED, "server sent op 7 Reconnect"))
        elif op == Op.INVALID_SESSION:
            out.extend(self._on_invalid_session(conn, payload.get("d"), now))
        # Any other op (including op 1 from the server) is counted and otherwise ignored:
        # unknown ops pass through rather than break the session.
        return out

    def tick(self, now: float) -> list[Action]:
        """Run the timers that are due."""
        conn = self._conn
        if conn is None or conn.phase in (Phase.DISCONNECTED, Phase.CLOSING):
            return []
        lv = self.liveness
        if conn.phase is Phase.AWAIT_HELLO:
            if lv.hello_timeout is not None and now >= conn.opened_at + lv.hello_timeout:
                detail = f"no Hello within {lv.hello_timeout:g}s of connecting"
                return [self._close(conn, p.HELLO_TIMEOUT, detail, abort=True)]
            return []
        assert conn.interval is not None and conn.hello_at is not None
        idle = lv.idle_deadline(conn.interval)
        if idle is not None and now >= conn.last_frame_at + idle:
            return self._zombie(conn, p.IDLE_TIMEOUT, now, f"no frame for {idle:g}s")
        out: list[Action] = []
        if conn.next_heartbeat_at is not None and now >= conn.next_heartbeat_at:
            if conn.unacked >= lv.ack_miss_limit:
                detail = f"{conn.unacked} consecutive heartbeats unacknowledged"
                return self._zombie(conn, p.ACK_TIMEOUT, now, detail)
            out.extend(self._heartbeat(conn, now))
        if conn.phase is Phase.AWAIT_READY:
            limit = lv.handshake_deadline(conn.interval)
            if now >= conn.hello_at + limit:
                what = "RESUMED" if conn.resuming else "READY"
                out.append(
                    self._close(conn, p.HANDSHAKE_TIMEOUT, f"no {what} within {limit:g}s", True)
                )
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`tick` must run next (monotonic seconds), or None."""
        conn = self._conn
        if conn is None or conn.phase in (Phase.DISCONNECTED, Phase.CLOSING):
            return None
        lv = self.liveness
        if conn.phase is Phase.AWAIT_HELLO:
            return None if lv.hello_timeout is None else conn.opened_at + lv.hello_timeout
        assert conn.interval is not None and conn.hello_at is not None
        deadlines = [conn.next_heartbeat_at] if conn.next_heartbeat_at is not None else []
        idle = lv.idle_deadline(conn.interval)
        if idle is not None:
            deadlines.append(conn.last_frame_at + idle)
        if conn.phase is Phase.AWAIT_READY:
            deadlines.append(conn.hello_at + lv.handshake_deadline(conn.interval))
        return min(deadlines) if deadlines else None

    def close_requested(
        self, reason: str, detail: str, *, abort: bool, code: int = RESUMABLE_CLOSE_CODE
    ) -> list[Action]:
        """The driver (or a layer below the session, e.g. WS ping) decided to close."""
        conn = self._conn
        if conn is None or conn.phase in (Phase.DISCONNECTED, Phase.CLOSING):
            return []
        return [self._close(conn, reason, detail, abort, code)]

    def connection_lost(
        self,
        now: float,
        close_code: int | None,
        detail: str = "",
        *,
        peer_code: int | None = None,
    ) -> Outcome:
        """The connection is gone. Decide what comes next and reset per-connection state.

        ``close_code`` is the code the server closed with, or None if the link broke (or we
        closed it ourselves: our own reason, recorded when we decided to close, wins).
        ``peer_code`` is the code the server closed with even though we closed first (its
        answer to our close, or its own close right after an op 9): a fatal code there still
        stops the shard, or the adapter would retry against a ban.
        """
        conn = self._require_conn()
        self._conn = None
        was_ready = conn.became_ready
        if (
            conn.closing is not None
            and peer_code is not None
            and p.classify_close(peer_code).action is CloseAction.FATAL
        ):
            conn.closing = None
            close_code, detail = peer_code, ""
        if conn.closing is not None:
            reason, detail = conn.closing.reason, conn.closing.detail
            policy = p.ClosePolicy(None, CloseAction.RESUME, detail)
            if conn.invalid_session is not None:
                policy = p.ClosePolicy(
                    None,
                    CloseAction.RESUME if conn.invalid_session else CloseAction.IDENTIFY,
                    detail,
                )
        else:
            policy = p.classify_close(close_code)
            reason = p.close_reason(close_code)
            detail = detail or policy.meaning
        action = policy.action
        fatal_message: str | None = None

        if action is CloseAction.FATAL:
            fatal_message = (
                f"gateway closed with {close_code} ({policy.meaning}); this shard stops: "
                "fix the bot's configuration or status on the QQ open platform"
            )
        elif action in (CloseAction.IDENTIFY, CloseAction.SLOW_IDENTIFY, CloseAction.REFRESH_TOKEN):
            if conn.invalid_session is False and not was_ready and not conn.resuming:
                self.identify_rejections += 1
                if self.identify_rejections >= self.liveness.max_identify_rejections:
                    action = CloseAction.FATAL
                    fatal_message = (
                        f"Identify was refused with op 9 {self.identify_rejections} times in a "
                        f"row: intents {self.intents:#x} are probably not granted to this bot"
                    )
            self.forget_session()
        # A close of our own for handler backpressure is not a failed resume: the server was
        # replaying, so it had accepted the session.
        if (
            conn.resuming
            and not was_ready
            and action is not CloseAction.FATAL
            and reason != p.HANDLER_BACKPRESSURE
        ):
            self.resume_failures += 1
            if self.resume_failures >= self.liveness.max_resume_failures:
                detail = f"{detail}; {self.resume_failures} resumes failed, identifying"
                self.forget_session()
                self.resume_failures = 0
        if action is CloseAction.FATAL:
            self.forget_session()
        return Outcome(
            reason=reason,
            close_code=close_code,
            detail=detail,
            action=action,
            resumable=self.can_resume,
            was_ready=was_ready,
            fatal_message=fatal_message,
        )

    # --- handlers ------------------------------------------------------------------------
    def _on_hello(self, conn: _Conn, d: Any, now: float) -> list[Action]:
        if conn.phase is not Phase.AWAIT_HELLO:
            return [self._violation(now, "unexpected second Hello")]
        raw = d.get("heartbeat_interval") if isinstance(d, dict) else None
        ms: float | None = None
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            try:
                ms = float(raw)
            except OverflowError:  # an integer beyond the float range
                ms = math.inf
            if not math.isfinite(ms) or ms <= 0:
                ms = None
        if ms is None:
            detail = f"Hello has an unusable heartbeat_interval ({_describe(raw)})"
            return [self._violation(now, detail), self._close(conn, p.PROTOCOL_ERROR, detail)]
        lv = self.liveness
        interval = min(max(ms / 1000.0, lv.min_heartbeat_interval), lv.max_heartbeat_interval)
        conn.interval = interval
        conn.hello_at = now
        conn.phase = Phase.AWAIT_READY
        # The first heartbeat goes out one interval after Hello, then one per interval.
        conn.next_heartbeat_at = now + interval
        out: list[Action] = [
            Emit(
                ev.HelloReceived(
                    shard=self.shard_id,
                    monotonic=now,
                    heartbeat_interval=interval,
                    advertised_ms=raw,
                )
            )
        ]
        token = f"QQBot {conn.token}"
        if self.session_id is not None:
            conn.resuming = True
            conn.resume_sent_at = now
            d_resume = {"token": token, "session_id": self.session_id, "seq": self.seq}
            out.append(Send(p.frame(Op.RESUME, d_resume)))
            out.append(
                Emit(
                    ev.ResumeSent(
                        shard=self.shard_id,
                        monotonic=now,
                        session_id=self.session_id,
                        seq=self.seq,
                    )
                )
            )
        else:
            d_identify = {
                "token": token,
                "intents": self.intents,
                "shard": [self.shard_id, self.shard_count],
                "properties": self.properties,
            }
            out.append(Send(p.frame(Op.IDENTIFY, d_identify)))
            out.append(
                Emit(ev.IdentifySent(shard=self.shard_id, monotonic=now, intents=self.intents))
            )
        return out

    def _on_ack(self, conn: _Conn, now: float) -> list[Action]:
        out: list[Action] = []
        if conn.unacked > 0 and conn.last_heartbeat_at is not None:
            rtt = now - conn.last_heartbeat_at
            out.append(Emit(ev.HeartbeatAcked(shard=self.shard_id, monotonic=now, rtt=rtt)))
        conn.unacked = 0
        return out

    def _on_invalid_session(self, conn: _Conn, d: Any, now: float) -> list[Action]:
        resumable = d is True
        conn.invalid_session = resumable
        if not resumable:
            self.forget_session()
        detail = f"server sent op 9 Invalid Session (d={_describe(d)})"
        return [self._close(conn, p.INVALID_SESSION, detail)]

    def _on_dispatch(
        self, conn: _Conn, payload: dict[str, Any], event_type: str | None, now: float
    ) -> list[Action]:
        if event_type is None:
            return [self._violation(now, "dispatch without a string 't'")]
        s = payload.get("s")
        seq = s if isinstance(s, int) and not isinstance(s, bool) else None
        raw_id = payload.get("id")
        event_id = raw_id if isinstance(raw_id, str) and raw_id else None
        d = payload.get("d")
        out: list[Action] = []
        if event_type == "READY":
            if not isinstance(d, dict) or not isinstance(d.get("session_id"), str):
                detail = "READY without a session_id"
                return [self._violation(now, detail), self._close(conn, p.PROTOCOL_ERROR, detail)]
            self.session_id = d["session_id"]
            self.seq = seq or 0
            self.resume_failures = 0
            self.identify_rejections = 0
            conn.phase = Phase.READY
            conn.became_ready = True
            raw_user = d.get("user")
            user: dict[str, Any] = raw_user if isinstance(raw_user, dict) else {}
            out.append(
                Emit(
                    ev.SessionReady(
                        shard=self.shard_id,
                        monotonic=now,
                        session_id=self.session_id,
                        user_id=_opt_str(user.get("id")),
                        username=_opt_str(user.get("username")),
                    )
                )
            )
            out.extend(self._deliver(conn, event_type, d, seq, event_id, now))
            return out
        if event_type == "RESUMED":
            if seq is not None and seq > self.seq:
                self.seq = seq
            self.resume_failures = 0
            self.identify_rejections = 0
            conn.phase = Phase.READY
            conn.became_ready = True
            out.append(
                Emit(
                    ev.SessionResumed(
                        shard=self.shard_id,
                        monotonic=now,
                        session_id=self.session_id or "",
                        replayed=conn.replayed,
                        resume_started=conn.resume_sent_at or now,
                    )
                )
            )
            out.extend(self._deliver(conn, event_type, d, None, event_id, now))
            return out
        if (seq is not None and seq <= self.seq) or (
            event_id is not None and event_id in self._recent_ids
        ):
            out.append(
                Emit(
                    ev.DuplicateDropped(
                        shard=self.shard_id,
                        monotonic=now,
                        event_type=event_type,
                        seq=seq,
                        event_id=event_id,
                    )
                )
            )
            return out
        if self._backpressure:
            detail = "handler queue is full; resuming once it drains"
            return [self._close(conn, p.HANDLER_BACKPRESSURE, detail)]
        if seq is not None:
            self.seq = seq
        if event_id is not None:
            self._recent_ids[event_id] = None
            if len(self._recent_ids) > self._dedupe_window:
                self._recent_ids.popitem(last=False)
        if conn.resuming and conn.phase is Phase.AWAIT_READY:
            conn.replayed += 1
        return self._deliver(conn, event_type, d, seq, event_id, now)

    def _deliver(
        self,
        conn: _Conn,
        event_type: str,
        d: Any,
        seq: int | None,
        event_id: str | None,
        now: float,
    ) -> list[Action]:
        replayed = conn.resuming and conn.phase is Phase.AWAIT_READY
        # Positional (type, data, seq, event_id, shard, session_id, replayed): once per event,
        # and a third cheaper than keywords.
        event = GatewayEvent(event_type, d, seq, event_id, self.shard_id, self.session_id, replayed)
        self.stats.count_dispatch(event_type)
        if not self.interest.dispatched:
            return [Deliver(event)]
        return [
            Deliver(event),
            Emit(
                ev.EventDispatched(
                    shard=self.shard_id,
                    monotonic=now,
                    event_type=event_type,
                    seq=seq,
                    event_id=event_id,
                    replayed=replayed,
                )
            ),
        ]

    # --- webhook -------------------------------------------------------------------------
    def accept_callback(self, payload: Mapping[str, Any], now: float) -> list[Action]:
        """A dispatch that arrived as a signed webhook callback instead of a WebSocket frame.

        There is no connection, no heartbeat and no order: the platform retries a delivery it
        considers failed, possibly after later ones. So a duplicate is told by its event id
        alone, in the same window as WebSocket dispatches (``seq`` is passed through, never
        used to drop one). Answers ``Deliver`` (+ ``EventDispatched`` if anyone listens), or
        ``DuplicateDropped``, or a ``ProtocolViolation`` for a dispatch without a string ``t``.
        """
        t = payload.get("t")
        if not isinstance(t, str) or not t:
            return [self._violation(now, "callback dispatch without a string 't'")]
        s = payload.get("s")
        seq = s if isinstance(s, int) and not isinstance(s, bool) else None
        raw_id = payload.get("id")
        event_id = raw_id if isinstance(raw_id, str) and raw_id else None
        if event_id is not None and event_id in self._recent_ids:
            dropped = ev.DuplicateDropped(
                shard=self.shard_id, monotonic=now, event_type=t, seq=seq, event_id=event_id
            )
            return [Emit(dropped)]
        if event_id is not None:
            self._recent_ids[event_id] = None
            if len(self._recent_ids) > self._dedupe_window:
                self._recent_ids.popitem(last=False)
        event = GatewayEvent(
            type=t,
            data=payload.get("d"),
            seq=seq,
            event_id=event_id,
            shard=self.shard_id,
            session_id=None,
        )
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

    # --- helpers -------------------------------------------------------------------------
    def _heartbeat(self, conn: _Conn, now: float) -> list[Action]:
        assert conn.interval is not None
        conn.unacked += 1
        conn.last_heartbeat_at = now
        # Scheduled from now, not from the previous due time: after a stalled loop we never
        # fire a burst of catch-up heartbeats faster than the interval.
        conn.next_heartbeat_at = now + conn.interval
        d = self.seq if self.seq > 0 else None
        return [
            Send(p.frame(Op.HEARTBEAT, d)),
            Emit(ev.HeartbeatSent(shard=self.shard_id, monotonic=now, seq=d, unacked=conn.unacked)),
        ]

    def _zombie(self, conn: _Conn, reason: str, now: float, detail: str) -> list[Action]:
        assert conn.interval is not None
        return [
            Emit(
                ev.ZombieDetected(
                    shard=self.shard_id,
                    monotonic=now,
                    reason=reason,
                    unacked=conn.unacked,
                    idle_for=now - conn.last_frame_at,
                    heartbeat_interval=conn.interval,
                )
            ),
            self._close(conn, reason, detail, abort=True),
        ]

    def _close(
        self,
        conn: _Conn,
        reason: str,
        detail: str,
        abort: bool = False,
        code: int = RESUMABLE_CLOSE_CODE,
    ) -> Close:
        action = Close(reason=reason, code=code, abort=abort, detail=detail)
        conn.closing = action
        conn.phase = Phase.CLOSING
        return action

    def _bad_frame(self, now: float, size: int, detail: str) -> list[Action]:
        """A frame that is not a JSON object with an integer op: counted, and a violation."""
        stats = self.stats
        stats.last_frame_at = now
        stats.frames[None] = stats.frames.get(None, 0) + 1
        out: list[Action] = []
        if self.interest.frames:
            out.append(self._frame_event(now, None, None, size))
        out.append(self._violation(now, detail))
        return out

    def _frame_event(self, now: float, op: int | None, t: str | None, size: int) -> Emit:
        return Emit(
            ev.FrameReceived(shard=self.shard_id, monotonic=now, op=op, event_type=t, size=size)
        )

    def _violation(self, now: float, detail: str) -> Emit:
        return Emit(ev.ProtocolViolation(shard=self.shard_id, monotonic=now, detail=detail))

    def _require_conn(self) -> _Conn:
        if self._conn is None:
            raise RuntimeError("no active connection: call connect() first")
        return self._conn


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _describe(value: Any) -> str:
    """A short, safe description of a value from the wire (never the whole thing)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
