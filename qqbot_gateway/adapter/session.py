"""The gateway session as a sans-I/O state machine.

No sockets, no tasks, no clock: the driver feeds it received frames and the current time
(``loop.time()``, monotonic) and executes the actions it answers with:

* :class:`Send`: write this payload;
* :class:`Deliver`: hand this dispatch to the user's handlers;
* :class:`Close`: close the connection with this code and reason (``abort`` means the link is
  believed dead: tear it down without waiting for the peer);
* :class:`Emit`: publish this lifecycle event;
* :class:`SendPing`: send a WebSocket ping; :class:`TuneSocket`: set ``TCP_USER_TIMEOUT``.

:data:`Action` is that closed union; a driver matches it exhaustively (``assert_never``).
``close_requested``, which a driver calls from synchronous code, is typed to return only a
:class:`Close` (a :data:`LocalAction`: nothing to write, nothing to await).
When the server closes, the driver reports it (:meth:`GatewaySession.server_closed`); which
close code decides the outcome is the session's policy (:meth:`GatewaySession.connection_lost`).

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

Liveness is layered; every verdict is taken in the sans-I/O core (the layers' rules are the
pure :mod:`.liveness` module, which the session consults per connection; the phases of a
connection are the data table :data:`PHASE_TRANSITIONS`), with explicit times, and every timer is a
fraction of the server's heartbeat interval H (or derived from a measured round-trip time and
then floored and capped in H), so a test at H = 1 s runs exactly the production logic
(:class:`LivenessConfig`):

* **WebSocket ping** (``ping_timeout``), the fast layer. Probe only when the link is quiet: when
  no frame has arrived for ``ping_quiet`` x H, the session asks the driver to send a ping
  (:class:`SendPing`), and again every ``ping_quiet`` x H while the silence lasts. The pong is
  expected within a deadline computed like TCP's retransmission timeout (RFC 6298: smoothed RTT
  + 4 x RTT variance), floored and capped in H. The link is dead when no frame of any kind
  arrived within that deadline of the first ping sent into the silence. The layer calibrates
  itself: it judges nothing until a first pong proves the server answers pings (``armed``; the
  calibration ping goes out ``ping_quiet`` x H after Hello even on a busy link); if
  pings go unanswered while other frames prove the link alive, it turns itself off for the
  connection (``disabled``, one ``PingLayerChanged``), so a server that ignores pings cannot
  cause a reconnect; while the smoothed RTT is too high for H it stands by (``suspended``)
  rather than guess.
* **ACK deadline** (``ack_timeout``). Each heartbeat (op 1, one per H) must be answered by an
  op 11 within a deadline derived from the measured ACK RTT the same way, floored and capped in
  H. While it waits, the session re-sends the heartbeat ``ack_probes`` times (evenly inside the
  deadline), so one ACK lost or delayed by the server does not cost a reconnect; any op 11
  answers the round, and its RTT is taken from the heartbeat that opened the round.
* **Receive idle** (``idle_timeout``): no frame of any kind for ``idle_timeout_factor`` x H, the
  backstop when the layers above cannot judge (for instance a wedged heartbeat).
* **Kernel**: the session answers Hello with a :class:`TuneSocket` carrying ``TCP_USER_TIMEOUT``
  derived from H, for the driver to set on the socket.
* Hello and READY/RESUMED deadlines for a handshake that never completes.
"""

from __future__ import annotations

import enum
import math
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import orjson

from . import events as ev
from . import protocol as p
from .actions import (
    Action,
    Close,
    Deliver,
    Emit,
    LocalAction,
    Outcome,
    Send,
    SendPing,
    TuneSocket,
)
from .callbacks import CallbackAcceptor
from .liveness import Link, Liveness, PingState, RttEstimator
from .protocol import CloseAction, GatewayEvent, Op, new_event
from .types import DEFAULT_DEDUPE_WINDOW, DedupeWindow, LivenessConfig

__all__ = [
    "PHASE_TRANSITIONS",
    "Action",
    "Close",
    "Deliver",
    "Emit",
    "GatewaySession",
    "LivenessConfig",
    "LocalAction",
    "Outcome",
    "Phase",
    "PingState",
    "RttEstimator",
    "Send",
    "SendPing",
    "TuneSocket",
    "next_phase",
]

#: Close code we use for every close we start ourselves. Anything but 1000/1001 keeps the
#: session resumable on gateways that follow Discord's rule; 4000 is in the private range.
RESUMABLE_CLOSE_CODE: Final = 4000
#: RFC 6455's "closed abnormally": WebSocket libraries report it for a link that broke without
#: a close frame, so it says nothing about the peer's intent.
ABNORMAL_CLOSURE: Final = 1006


class Phase(enum.Enum):
    DISCONNECTED = "disconnected"
    AWAIT_HELLO = "await_hello"
    AWAIT_READY = "await_ready"
    READY = "ready"
    CLOSING = "closing"


#: The phase transitions of one connection as data, in h11's manner (``h11/_state.py``):
#: (phase, what happened) -> the next phase. What happened: ``connect`` (a new WebSocket),
#: ``hello`` (op 10), ``ready`` (READY or RESUMED), ``close`` (we decided to close: a verdict, op
#: 7, op 9, a request; deciding again while closing keeps closing) and ``lost`` (the connection is
#: gone). Every change of phase goes through :func:`next_phase`, so a pair not in the table is a
#: bug that fails loudly instead of a state no rule covers. The module docstring draws it.
PHASE_TRANSITIONS: Final[Mapping[tuple[Phase, str], Phase]] = MappingProxyType(
    {
        (Phase.DISCONNECTED, "connect"): Phase.AWAIT_HELLO,
        (Phase.AWAIT_HELLO, "hello"): Phase.AWAIT_READY,
        (Phase.AWAIT_READY, "ready"): Phase.READY,
        (Phase.READY, "ready"): Phase.READY,  # a second READY: the session id it names wins
        **{(phase, "close"): Phase.CLOSING for phase in Phase if phase is not Phase.DISCONNECTED},
        **{(phase, "lost"): Phase.DISCONNECTED for phase in Phase},
    }
)


def next_phase(phase: Phase, happened: str) -> Phase:
    """The phase after ``happened`` in ``phase`` (:data:`PHASE_TRANSITIONS`)."""
    try:
        return PHASE_TRANSITIONS[phase, happened]
    except KeyError:
        raise RuntimeError(f"no phase transition for {happened!r} in {phase.value}") from None


# The per-frame path compares against these module constants: reading a member off an enum
# class costs about 70 ns in Python 3.11 (several per frame), a module global a fifth of that.
_AWAIT_HELLO: Final = Phase.AWAIT_HELLO
_AWAIT_READY: Final = Phase.AWAIT_READY
_CLOSING: Final = Phase.CLOSING
_OP_DISPATCH: Final = int(Op.DISPATCH)
_OP_HEARTBEAT_ACK: Final = int(Op.HEARTBEAT_ACK)


@dataclass(slots=True, kw_only=True)
class _Conn(Link):
    """State that lives and dies with one connection: the liveness state (:class:`Link`) and
    the protocol's."""

    opened_at: float
    token: str
    phase: Phase = Phase.AWAIT_HELLO
    resuming: bool = False
    resume_sent_at: float | None = None
    replayed: int = 0
    closing: Close | None = None
    invalid_session: bool | None = None  # d of the op 9 received, if any
    became_ready: bool = False
    pending: list[Action] = field(default_factory=list)
    # what the server said when it closed (see server_closed)
    server_code: int | None = None
    server_detail: str = ""
    peer_code: int | None = None


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
        dedupe_window: int = DEFAULT_DEDUPE_WINDOW,
        dedupe: DedupeWindow | None = None,
        stats: ev.ShardStats | None = None,
    ) -> None:
        if not 0 <= shard_id < shard_count:
            raise ValueError(f"shard id {shard_id} is not in range for {shard_count} shard(s)")
        self.shard_id = shard_id
        self.shard_count = shard_count
        self.intents = p.parse_intents(intents)
        self.liveness = liveness or LivenessConfig()
        #: The liveness layers (pure, :mod:`.liveness`), applied to each connection's state.
        self._layers = Liveness(self.liveness, shard_id)
        self.properties: dict[str, Any] = dict(
            properties
            or {"$os": platform.system().lower(), "$browser": "qqbot-gateway", "$device": ""}
        )
        self.session_id: str | None = None
        #: Sequence number of the last dispatch accepted for delivery (0: none yet).
        self.seq: int = 0
        self.resume_failures = 0
        self.identify_rejections = 0
        #: Accepted event ids: a redelivery among them is dropped (read on the per-frame path).
        self._recent_ids = dedupe if dedupe is not None else DedupeWindow(dedupe_window)
        self._dedupe_window = self._recent_ids.limit
        self._callbacks: CallbackAcceptor | None = None
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
    def ping_state(self) -> PingState:
        return self._conn.ping_state if self._conn else PingState.OFF

    @property
    def ping_rtt(self) -> RttEstimator | None:
        return self._conn.ping_rtt if self._conn else None

    @property
    def ack_rtt(self) -> RttEstimator | None:
        return self._conn.ack_rtt if self._conn else None

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
        self.remember_ids(event_ids)

    def remember_ids(self, event_ids: Iterable[str]) -> None:
        """Add handled event ids (oldest first) to the dedupe window."""
        self._recent_ids.remember(event_ids)

    def forget_id(self, event_id: str) -> None:
        """Take an accepted id out of the dedupe window again: its callback was answered with a
        retry (the webhook journal could not record it), so the redelivery must be accepted."""
        self._recent_ids.forget(event_id)

    def set_backpressure(self, on: bool) -> None:
        """While on, the next dispatch is refused: the connection closes without advancing
        ``seq``, so a resume later replays it. Nothing is lost, nothing is buffered unbounded."""
        self._backpressure = on

    # --- inputs --------------------------------------------------------------------------
    def connect(self, now: float, token: str) -> list[Action]:
        """A new WebSocket is open. ``token`` is the bare access token."""
        if self._conn is not None and self._conn.phase is not Phase.DISCONNECTED:
            raise RuntimeError("connect() while a connection is still active")
        phase = next_phase(Phase.DISCONNECTED, "connect")
        self._conn = _Conn(opened_at=now, token=token, last_frame_at=now, phase=phase)
        return []

    def receive(self, data: str | bytes, now: float) -> list[Action]:
        """One WebSocket message arrived: ``str`` a text frame, ``bytes`` a binary one."""
        if isinstance(data, bytes | bytearray):
            self._require_conn().last_frame_at = now
            return self._bad_frame(now, len(data), "binary frame (the gateway speaks JSON text)")
        return self.receive_text(data, now)

    def receive_text(self, data: str | bytes, now: float) -> list[Action]:
        """One text frame arrived, as ``str`` or as its UTF-8 bytes (not decoded first)."""
        result = self.receive_frame(data, now)
        return result if isinstance(result, list) else [Deliver(result)]

    def receive_frame(self, data: str | bytes, now: float) -> GatewayEvent | list[Action]:
        """:meth:`receive_text` for a driver's per-frame path: when the frame's only action is
        to deliver a dispatch (the common case), the event itself, without a ``Deliver`` and a
        list around it; otherwise the actions."""
        conn = self._conn
        if conn is None:
            conn = self._require_conn()  # raises
        conn.last_frame_at = now
        try:
            payload = orjson.loads(data)
        except (ValueError, RecursionError):  # RecursionError: nested past the parser's limit
            return self._bad_frame(now, len(data), "frame is not valid JSON")
        # The parser makes exact dicts, ints and strs: ``type(x) is int`` is ``isinstance``
        # without bool, and cheaper (this runs for every frame).
        op = payload.get("op") if type(payload) is dict else None
        if type(op) is not int:
            return self._bad_frame(now, len(data), "frame has no integer 'op'")
        stats = self.stats
        stats.last_frame_at = now
        frames = stats.frames
        frames[op] = frames.get(op, 0) + 1
        t = payload.get("t")
        event_type = t if type(t) is str else None
        phase = conn.phase
        if not self.interest.frames:
            if op == _OP_DISPATCH and phase is not _CLOSING and phase is not _AWAIT_HELLO:
                return self._dispatch(conn, payload, event_type, now)  # the common case
            out: list[Action] = []
        else:
            out = [self._frame_event(now, op, event_type, len(data))]
        if phase is _CLOSING:
            return out  # we are tearing this link down; nothing more is acted on
        if op == _OP_HEARTBEAT_ACK:
            out.extend(self._layers.on_ack(conn, now))
        elif op == _OP_DISPATCH and phase is _AWAIT_HELLO:
            detail = "dispatch before Hello"
            out.extend([self._violation(now, detail), self._close(conn, p.PROTOCOL_ERROR, detail)])
        elif op == _OP_DISPATCH:
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

    def receive_pong(self, payload: bytes, now: float) -> list[Action]:
        """A WebSocket pong arrived (``payload`` as received)."""
        conn = self._require_conn()
        conn.last_frame_at = now
        if conn.phase is Phase.CLOSING:
            return []
        return self._layers.on_pong(conn, payload, now)

    def receive_ping(self, now: float) -> list[Action]:
        """The server sent a WebSocket ping (the driver answers it): proof of a live link."""
        conn = self._require_conn()
        conn.last_frame_at = now
        return []

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
        verdict = self._layers.verdict(conn, now)
        if verdict is not None:
            return self._zombie(conn, verdict[0], now, verdict[1])
        out = self._layers.timers(conn, now, self.seq)
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
        deadlines = self._layers.deadlines(conn)
        if conn.phase is Phase.AWAIT_READY:
            deadlines.append(conn.hello_at + lv.handshake_deadline(conn.interval))
        return min(deadlines) if deadlines else None

    def close_requested(
        self, reason: str, detail: str, *, abort: bool, code: int = RESUMABLE_CLOSE_CODE
    ) -> list[Close]:
        """The driver (or a layer below the session, e.g. WS ping) decided to close."""
        conn = self._conn
        if conn is None or conn.phase in (Phase.DISCONNECTED, Phase.CLOSING):
            return []
        return [self._close(conn, reason, detail, abort, code)]

    def server_closed(self, code: int | None, detail: str = "") -> None:
        """The server's close frame arrived (or the socket reported it closed with ``code``).

        Before we decided to close, it is the server's verdict (``close_code`` of the outcome);
        after, it is only its answer to our close (or its own close right after an op 9), kept
        as the peer code: a fatal one still stops the shard (see :meth:`connection_lost`).
        0 and None mean "no code".
        """
        conn = self._conn
        if conn is None:
            return
        code = code or None
        if code is not None:
            conn.peer_code = code
        if conn.closing is None:
            conn.server_code, conn.server_detail = code, detail

    def connection_lost(
        self,
        now: float,
        close_code: int | None = None,
        detail: str = "",
        *,
        peer_code: int | None = None,
        socket_code: int | None = None,
    ) -> Outcome:
        """The connection is gone. Decide what comes next and reset per-connection state.

        ``close_code`` is the code the server closed with (default: what
        :meth:`server_closed` recorded), or None if the link broke (or we closed it ourselves:
        our own reason, recorded when we decided to close, wins). ``peer_code`` is the code the
        server closed with even though we closed first (default: the last code
        :meth:`server_closed` saw, else ``socket_code``, the WebSocket's final close code, unless
        that is 1006, which the library invents for a link that broke): a fatal code there still
        stops the shard, or the adapter would retry against a ban.
        """
        conn = self._require_conn()
        conn.phase = next_phase(conn.phase, "lost")
        self._conn = None
        if close_code is None:
            close_code, detail = conn.server_code, detail or conn.server_detail
        if peer_code is None:
            peer_code = conn.peer_code
        if peer_code is None and socket_code not in (None, 0, ABNORMAL_CLOSURE):
            peer_code = socket_code
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
        conn.phase = next_phase(conn.phase, "hello")
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
        out.extend(self._layers.start(conn, interval, now))
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
        result = self._dispatch(conn, payload, event_type, now)
        return result if isinstance(result, list) else [Deliver(result)]

    def _dispatch(
        self, conn: _Conn, payload: dict[str, Any], event_type: str | None, now: float
    ) -> GatewayEvent | list[Action]:
        """An op 0 frame: its actions, or (the common case) just the event to deliver."""
        if event_type is None:
            return [self._violation(now, "dispatch without a string 't'")]
        s = payload.get("s")
        seq = s if type(s) is int else None  # parsed: an exact int, never a bool
        raw_id = payload.get("id")
        event_id = raw_id if type(raw_id) is str and raw_id else None
        d = payload.get("d")
        out: list[Action]  # READY and RESUMED: the Emit, then the Deliver
        if event_type == "READY":
            if not isinstance(d, dict) or not isinstance(d.get("session_id"), str):
                detail = "READY without a session_id"
                return [self._violation(now, detail), self._close(conn, p.PROTOCOL_ERROR, detail)]
            self.session_id = d["session_id"]
            self.seq = seq or 0
            self.resume_failures = 0
            self.identify_rejections = 0
            conn.phase = next_phase(conn.phase, "ready")
            conn.became_ready = True
            raw_user = d.get("user")
            user: dict[str, Any] = raw_user if isinstance(raw_user, dict) else {}
            out = [
                Emit(
                    ev.SessionReady(
                        shard=self.shard_id,
                        monotonic=now,
                        session_id=self.session_id,
                        user_id=_opt_str(user.get("id")),
                        username=_opt_str(user.get("username")),
                    )
                )
            ]
            # conn.phase is READY now: nothing delivered from here on is a replay
            out.extend(self._deliver(event_type, d, seq, event_id, self.session_id, False, now))
            return out
        if event_type == "RESUMED":
            if seq is not None and seq > self.seq:
                self.seq = seq
            self.resume_failures = 0
            self.identify_rejections = 0
            conn.phase = next_phase(conn.phase, "ready")
            conn.became_ready = True
            out = [
                Emit(
                    ev.SessionResumed(
                        shard=self.shard_id,
                        monotonic=now,
                        session_id=self.session_id or "",
                        replayed=conn.replayed,
                        resume_started=conn.resume_sent_at or now,
                    )
                )
            ]
            out.extend(self._deliver(event_type, d, None, event_id, self.session_id, False, now))
            return out
        if (seq is not None and seq <= self.seq) or (
            event_id is not None and event_id in self._recent_ids
        ):
            dropped = ev.DuplicateDropped(
                shard=self.shard_id,
                monotonic=now,
                event_type=event_type,
                seq=seq,
                event_id=event_id,
            )
            return [Emit(dropped)]
        if self._backpressure:
            detail = "handler queue is full; resuming once it drains"
            return [self._close(conn, p.HANDLER_BACKPRESSURE, detail)]
        if seq is not None:
            self.seq = seq
        if event_id is not None:
            recent = self._recent_ids
            recent[event_id] = None
            if len(recent) > self._dedupe_window:
                recent.popitem(last=False)
        replayed = conn.resuming and conn.phase is _AWAIT_READY
        if replayed:
            conn.replayed += 1
        if self.interest.dispatched:
            return self._deliver(event_type, d, seq, event_id, self.session_id, replayed, now)
        # _deliver without the EventDispatched nobody listens to, inline: once per event.
        dispatched = self.stats.dispatched
        count = dispatched.get(event_type)
        if count is not None:
            dispatched[event_type] = count + 1  # count_dispatch's common case
        else:
            self.stats.count_dispatch(event_type)
        return new_event(event_type, d, seq, event_id, self.shard_id, self.session_id, replayed)

    def _deliver(
        self,
        event_type: str,
        d: Any,
        seq: int | None,
        event_id: str | None,
        session_id: str | None,
        replayed: bool,
        now: float,
    ) -> list[Action]:
        """The deliver tail of an accepted dispatch, WebSocket or webhook: count it, then
        ``Deliver`` (+ ``EventDispatched`` if anyone listens). ``_dispatch`` inlines the
        no-listener case (once per event, on the reader's hot path)."""
        event = new_event(event_type, d, seq, event_id, self.shard_id, session_id, replayed)
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
        """A dispatch that arrived as a webhook callback, deduplicated in this session's window
        (see :class:`~.callbacks.CallbackAcceptor`, which the webhook transport uses alone)."""
        acceptor = self._callbacks
        if acceptor is None:
            acceptor = self._callbacks = CallbackAcceptor(
                self.shard_id, window=self._recent_ids, stats=self.stats
            )
        acceptor.interest = self.interest
        return acceptor.accept_callback(payload, now)

    # --- helpers -------------------------------------------------------------------------
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
        conn.phase = next_phase(conn.phase, "close")
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
