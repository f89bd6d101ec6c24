"""The liveness layers of one connection, pure: heartbeats and ACK deadlines, WebSocket pings
with their pong deadline, receive idle. No sockets, no clock: times in, verdicts and actions out.

The session (:mod:`.session`) owns the protocol (Hello, Identify/Resume, dispatches, closes) and
asks this module, per connection, what the liveness rules say: :meth:`Liveness.start` after
Hello, :meth:`Liveness.on_ack` and :meth:`Liveness.on_pong` as frames arrive,
:meth:`Liveness.verdict` (is the link a zombie, and by which layer), :meth:`Liveness.timers`
(the heartbeat, ACK probes and pings that are due) and :meth:`Liveness.deadlines` (when to be
asked again). The per-connection state is a :class:`Link`; the session's own connection record
extends it, so the per-frame path reads the same slots it always did. Every timer is a fraction
of the heartbeat interval H or derived from a measured RTT (RFC 6298) floored and capped in H
(:class:`~.types.LivenessConfig`; the layers themselves are described in :mod:`.session`).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from . import events as ev
from . import protocol as p
from .actions import Action, Emit, Send, SendPing, TuneSocket
from .protocol import Op
from .types import LivenessConfig

__all__ = ["Link", "Liveness", "PingState", "RttEstimator"]


class RttEstimator:
    """RFC 6298 section 2: smoothed RTT and RTT variance (alpha 1/8, beta 1/4)."""

    __slots__ = ("rttvar", "samples", "srtt")

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.samples = 0

    def sample(self, rtt: float) -> None:
        rtt = max(rtt, 0.0)
        self.samples += 1
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
            return
        self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
        self.srtt = 0.875 * self.srtt + 0.125 * rtt

    def rto(self) -> float | None:
        """srtt + 4 x rttvar, or None before the first sample."""
        return None if self.srtt is None else self.srtt + 4 * self.rttvar


class PingState(enum.Enum):
    """The WebSocket ping layer of one connection."""

    OFF = "off"  # switched off by configuration
    CALIBRATING = "calibrating"  # pinging, judging nothing until a first pong
    ARMED = "armed"  # the server answers pings: a silent link past the deadline is dead
    SUSPENDED = "suspended"  # measured RTT exceeds the cap: standing by, not judging
    DISABLED = "disabled"  # pings go unanswered while the link is alive: off for this conn


@dataclass(slots=True)
class Link:
    """The liveness state of one connection (lives and dies with it)."""

    last_frame_at: float = 0.0
    interval: float | None = None
    hello_at: float | None = None
    next_heartbeat_at: float | None = None
    unacked: int = 0
    # ACK layer: the oldest unanswered heartbeat of this round, its deadline, probes sent
    ack_round_at: float | None = None
    ack_deadline_at: float | None = None
    probes_sent: int = 0
    ack_rtt: RttEstimator = field(default_factory=RttEstimator)
    # send times of the op 1 frames not matched to an op 11 yet (the server answers in order)
    acks_owed: deque[float] = field(default_factory=deque)
    # ping layer: payload -> (sent at, pong deadline in seconds), oldest first
    ping_state: PingState = PingState.OFF
    pings: dict[bytes, tuple[float, float]] = field(default_factory=dict)
    ping_counter: int = 0
    last_ping_at: float | None = None
    pings_unanswered: int = 0
    ping_rtt: RttEstimator = field(default_factory=RttEstimator)


class Liveness:
    """The liveness rules of one shard's connections (``config``), applied to a :class:`Link`."""

    def __init__(self, config: LivenessConfig, shard_id: int = 0) -> None:
        self.config = config
        self.shard_id = shard_id

    def start(self, conn: Link, interval: float, now: float) -> list[Action]:
        """Hello arrived with heartbeat interval ``interval`` (clamped already): schedule the
        first heartbeat one interval from now, tune the socket, start the ping layer."""
        lv = self.config
        conn.interval = interval
        conn.hello_at = now
        # The first heartbeat goes out one interval after Hello, then one per interval.
        conn.next_heartbeat_at = now + interval
        out: list[Action] = []
        user_timeout = lv.tcp_user_timeout(interval)
        if user_timeout is not None:
            out.append(TuneSocket(user_timeout))
        if lv.ws_ping:
            detail = "waiting for a first pong to prove the server answers pings"
            out.append(self.set_ping_state(conn, PingState.CALIBRATING, now, detail))
        else:
            out.append(self.set_ping_state(conn, PingState.OFF, now, "switched off"))
        return out

    def on_pong(self, conn: Link, payload: bytes, now: float) -> list[Action]:
        """A WebSocket pong arrived (not while closing)."""
        sent = conn.pings.pop(bytes(payload), None)
        if sent is None:
            return []  # unsolicited (RFC 6455 allows it) or already given up: a frame, no more
        interval = conn.interval
        assert interval is not None  # pings are only sent after Hello
        rtt = now - sent[0]
        conn.ping_rtt.sample(rtt)
        conn.pings_unanswered = 0
        deadline = self.config.pong_deadline(interval, conn.ping_rtt.rto())
        out: list[Action] = [
            Emit(ev.PongReceived(shard=self.shard_id, monotonic=now, rtt=rtt, deadline=deadline))
        ]
        out.extend(self.judge_ping_layer(conn, now))
        return out

    def verdict(self, conn: Link, now: float) -> tuple[str, str] | None:
        """(reason, detail) if a layer declares the link dead at ``now`` (after Hello), in the
        order idle, ping, ACK; else None."""
        assert conn.interval is not None and conn.hello_at is not None
        interval = conn.interval
        idle = self.config.idle_deadline(interval)
        if idle is not None and now >= conn.last_frame_at + idle:
            return p.IDLE_TIMEOUT, f"no frame for {idle:g}s"
        verdict = self.ping_verdict(conn)
        if verdict is not None and now >= verdict[0]:
            sent_at, deadline, n = verdict[1], verdict[2], len(conn.pings)
            detail = (
                f"no frame for {now - conn.last_frame_at:.3f}s: {n} ping(s) unanswered, the "
                f"first sent {now - sent_at:.3f}s ago (pong deadline {deadline:.3f}s = "
                f"{deadline / interval:.2f} H)"
            )
            return p.PING_TIMEOUT, detail
        if conn.ack_deadline_at is not None and now >= conn.ack_deadline_at:
            assert conn.ack_round_at is not None
            waited = now - conn.ack_round_at
            limit = conn.ack_deadline_at - conn.ack_round_at
            detail = (
                f"heartbeat unacknowledged for {waited:.3f}s, {conn.probes_sent} probe(s) too "
                f"(ACK deadline {limit:.3f}s = {limit / interval:.2f} H)"
            )
            return p.ACK_TIMEOUT, detail
        return None

    def timers(self, conn: Link, now: float, seq: int) -> list[Action]:
        """The heartbeat or ACK probe, ping housekeeping and the ping that are due at ``now``
        (``seq``: the session's sequence number, for op 1)."""
        out: list[Action] = []
        if conn.next_heartbeat_at is not None and now >= conn.next_heartbeat_at:
            out.extend(self.heartbeat(conn, now, seq))
        else:
            probe_at = self.next_probe_at(conn)
            if probe_at is not None and now >= probe_at:
                conn.probes_sent += 1
                out.extend(self.send_heartbeat(conn, now, seq))
        out.extend(self.ping_housekeeping(conn, now))
        ping_at = self.next_ping_at(conn)
        if ping_at is not None and now >= ping_at:
            out.extend(self.ping(conn, now))
        return out

    def deadlines(self, conn: Link) -> list[float]:
        """Every time at which :meth:`verdict` or :meth:`timers` may change its answer."""
        assert conn.interval is not None
        candidates = [
            conn.next_heartbeat_at,
            conn.ack_deadline_at,
            self.next_probe_at(conn),
            self.next_ping_at(conn),
        ]
        verdict = self.ping_verdict(conn)
        if verdict is not None:
            candidates.append(verdict[0])
        if conn.pings:
            first_sent = next(iter(conn.pings.values()))[0]
            candidates.append(first_sent + self.config.ping_lost_after * conn.interval)
        deadlines = [t for t in candidates if t is not None]
        idle = self.config.idle_deadline(conn.interval)
        if idle is not None:
            deadlines.append(conn.last_frame_at + idle)
        return deadlines

    def on_ack(self, conn: Link, now: float) -> list[Action]:
        # The server answers op 1 frames in order: this op 11 answers the oldest one owed. Its
        # RTT is a sample even when a probe was sent (dropping those, as Karn's rule would, keeps
        # the estimate below any RTT past the first probe: a slowly rising RTT would then end
        # in a false verdict). An ACK owed by an earlier round (a probe's, arriving after the
        # next heartbeat) is a sample but does not answer the round that is open now.
        if conn.interval is None:
            return []  # before Hello nothing was sent: an op 11 now answers nothing
        owed = conn.acks_owed
        while owed and owed[0] < now - conn.interval:
            owed.popleft()  # more than H old: that ACK is not coming; do not match against it
        sent_at = owed.popleft() if owed else None
        if sent_at is not None:
            conn.ack_rtt.sample(now - sent_at)
        round_at = conn.ack_round_at
        if round_at is None or (sent_at is not None and sent_at < round_at):
            return []
        conn.unacked = 0
        out: list[Action] = [
            Emit(ev.HeartbeatAcked(shard=self.shard_id, monotonic=now, rtt=now - round_at))
        ]
        conn.ack_round_at = conn.ack_deadline_at = None
        conn.probes_sent = 0
        return out

    def heartbeat(self, conn: Link, now: float, seq: int) -> list[Action]:
        """The regular heartbeat, once per interval; it opens an ACK round if none is open."""
        assert conn.interval is not None
        # Scheduled from now, not from the previous due time: after a stalled loop we never
        # fire a burst of catch-up heartbeats faster than the interval.
        conn.next_heartbeat_at = now + conn.interval
        if conn.ack_round_at is None:
            conn.ack_round_at = now
            conn.probes_sent = 0
            limit = self.config.ack_deadline(conn.interval, conn.ack_rtt.rto())
            conn.ack_deadline_at = now + limit
        return self.send_heartbeat(conn, now, seq)

    def send_heartbeat(self, conn: Link, now: float, seq: int) -> list[Action]:
        """One op 1 (``d``: the last sequence number, None before any); an ACK is owed."""
        conn.unacked += 1
        conn.acks_owed.append(now)
        d = seq if seq > 0 else None
        return [
            Send(p.frame(Op.HEARTBEAT, d)),
            Emit(ev.HeartbeatSent(shard=self.shard_id, monotonic=now, seq=d, unacked=conn.unacked)),
        ]

    def next_probe_at(self, conn: Link) -> float | None:
        """When the next ACK probe is due (evenly spaced inside the ACK deadline)."""
        probes = self.config.ack_probes
        if conn.ack_round_at is None or conn.ack_deadline_at is None:
            return None
        if conn.probes_sent >= probes:
            return None
        span = conn.ack_deadline_at - conn.ack_round_at
        return conn.ack_round_at + span * (conn.probes_sent + 1) / (probes + 1)

    def next_ping_at(self, conn: Link) -> float | None:
        """When the next ping is due: after ``ping_quiet`` x H without a frame or a ping.

        Calibrating, one ping at a time, ``ping_quiet`` x H after Hello (or after the previous
        one was given up) whatever the traffic: a busy link is never quiet, and the layer must
        be armed before the link goes silent.
        """
        state = conn.ping_state
        if state in (PingState.OFF, PingState.DISABLED) or conn.interval is None:
            return None
        quiet = self.config.ping_quiet * conn.interval
        if state is PingState.CALIBRATING:
            if conn.pings:
                return None
            start = conn.last_ping_at if conn.last_ping_at is not None else conn.hello_at
            assert start is not None
            return start + quiet
        ref = conn.last_frame_at
        if conn.last_ping_at is not None and conn.last_ping_at > ref:
            ref = conn.last_ping_at
        return ref + quiet

    def ping_verdict(self, conn: Link) -> tuple[float, float, float] | None:
        """(verdict time, sent at, deadline) of the first ping sent into the current silence,
        while the layer is armed; None if there is none."""
        if conn.ping_state is not PingState.ARMED:
            return None
        for sent_at, deadline in conn.pings.values():
            if sent_at >= conn.last_frame_at:
                return sent_at + deadline, sent_at, deadline
        return None

    def ping(self, conn: Link, now: float) -> list[Action]:
        assert conn.interval is not None
        conn.ping_counter += 1
        payload = b"qqbot-%d" % conn.ping_counter
        deadline = self.config.pong_deadline(conn.interval, conn.ping_rtt.rto())
        conn.pings[payload] = (now, deadline)
        conn.last_ping_at = now
        return [
            SendPing(payload),
            Emit(ev.PingSent(shard=self.shard_id, monotonic=now, outstanding=len(conn.pings))),
        ]

    def ping_housekeeping(self, conn: Link, now: float) -> list[Action]:
        """Give up on pings unanswered for ``ping_lost_after`` x H; if the link was alive
        meanwhile (a frame arrived after the ping), the server is not answering pings."""
        assert conn.interval is not None
        lost_after = self.config.ping_lost_after * conn.interval
        alive_misses = 0
        for payload, (sent_at, _) in list(conn.pings.items()):
            if now < sent_at + lost_after:
                break
            del conn.pings[payload]
            if conn.last_frame_at > sent_at:
                alive_misses += 1
        if not alive_misses:
            return []
        conn.pings_unanswered += alive_misses
        limit = self.config.ping_unanswered_limit
        if conn.pings_unanswered < limit or conn.ping_state in (PingState.OFF, PingState.DISABLED):
            return []
        conn.pings.clear()
        detail = (
            f"{conn.pings_unanswered} WebSocket pings went unanswered while the link was alive: "
            "the server does not answer pings; the ping layer is off for this connection"
        )
        return [self.set_ping_state(conn, PingState.DISABLED, now, detail)]

    def judge_ping_layer(self, conn: Link, now: float) -> list[Emit]:
        """After a pong: armed, or suspended while the smoothed RTT is too high for H."""
        if conn.ping_state in (PingState.OFF, PingState.DISABLED):
            return []
        assert conn.interval is not None
        srtt = conn.ping_rtt.srtt or 0.0
        limit = self.config.ping_suspend_rtt * conn.interval
        if conn.ping_state is PingState.SUSPENDED:
            if srtt >= 0.75 * limit:
                return []
        elif srtt > limit:
            detail = (
                f"smoothed ping RTT {srtt:.3f}s exceeds {limit:.3f}s "
                f"({self.config.ping_suspend_rtt:g} H): standing by, the ACK layer judges"
            )
            return [self.set_ping_state(conn, PingState.SUSPENDED, now, detail)]
        if conn.ping_state is PingState.ARMED:
            return []
        detail = f"the server answers pings (RTT {srtt:.3f}s)"
        return [self.set_ping_state(conn, PingState.ARMED, now, detail)]

    def set_ping_state(self, conn: Link, state: PingState, now: float, detail: str) -> Emit:
        conn.ping_state = state
        event = ev.PingLayerChanged(
            shard=self.shard_id, monotonic=now, state=state.value, detail=detail
        )
        return Emit(event)
