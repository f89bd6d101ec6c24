"""The health evaluator: lifecycle events + supervisor status + time in, a report out.

Pure: no I/O, no tasks, no clock of its own. :meth:`HealthEvaluator.observe` is a lifecycle
subscriber; :meth:`HealthEvaluator.evaluate` takes ``now`` (the event loop's clock, the same
clock the events carry) and answers a :class:`HealthReport`. The HTTP side server renders it.

Liveness (``/healthz``, ``/livez``) fails, per DESIGN.md principle 5, when

* ``shard/<n>/connection``: a zombie connection exists and has not been torn down: the session
  declared one (``ZombieDetected``) and no ``Disconnected`` / new ``Connected`` followed yet, or
  the evidence says so although the session did not act (a wedged timer): a heartbeat still
  unanswered a whole interval after it was sent (its ACK deadline is at most 0.9 of that), or
  no frame for the idle deadline, both derived from ``client.config.liveness`` and the interval
  in Hello;
* ``shard/<n>/liveness/<layer>`` (``ping``, ``ack``, ``idle``, ``tcp``): one line per liveness
  layer with its state and timers (the ping layer: off, calibrating, armed with its RTT and
  pong deadline, suspended or disabled); a layer fails while its own verdict is pending;
* ``shard/<n>/session``: no live session (READY/RESUMED) for longer than ``liveness_grace``,
  counted from start or from the end of the last live session (a visible reconnect within the
  grace is healthy: a QQ outage must not become a restart storm);
* ``shard/<n>/supervisor``: the supervisor task died (crashed, or gone while not stopped by a
  shutdown), the shard is FATAL, or the supervisor stalled: still in BACKOFF ``stall_margin``
  after ``next_attempt_at``, or in CONNECTING / HANDSHAKING about twice as long as every timeout
  of that phase together allows;
* ``event_loop``: the event loop lag exceeds ``loop_lag_threshold``.

With the webhook transport (``webhook_status`` set) there is no connection and no heartbeat,
and the shard checks are replaced by:

* liveness ``webhook/receiver``: the receiver listens and its socket serves (not listening yet
  within ``liveness_grace`` of the start is fine); ``webhook/handlers``: the handler task runs;
* readiness ``webhook/receiver``: listening and not shutting down; ``webhook/validation`` (only
  with ``require_validation``): a valid op 13 arrived; ``webhook/silence`` (only with
  ``webhook_silence``): a validly signed callback arrived within that many seconds (counted from
  the start of listening before the first). Silence is off by default: a quiet bot is not a
  broken bot; the last-callback metrics and the alert rules show it either way.

With stream delivery (``QQBOT_DELIVERY=stream``, ``stream_status`` set), both transports add
``stream/append`` (the Redis stream the events are appended to, see
:mod:`qqbot_gateway.cluster.stream`):

* liveness: fails only when appends (or the publisher's polls) have been failing, or one append
  has waited for Redis's answer, for longer than ``liveness_grace``. A Redis outage is not this
  process's fault and a restart cannot fix it (the reasoning of the QQ-outage grace): within
  the grace the check is ok and its reason says what fails and for how long;
* readiness: fails while appends are failing (the reason: since when, how many attempts, the
  last error), while an append has waited for Redis longer than ``stall_margin``, and while
  the stream is full (``QQBOT_STREAM_MAX_LEN`` entries some consumer group has not
  acknowledged: the workers are behind; the next append waits for room).

Readiness (``/readyz``) is ``ok`` only while every shard of this process is READY with a recent
ACK (``shard/<n>/ready``) and :meth:`begin_shutdown` has not been called (``shutdown``). "Recent"
is ``(1 + ack_timeout_max + 0.5) x interval`` since the last ACK (or since the session went
live): the next heartbeat, its longest ACK deadline, and half an interval of slack.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter.types import LivenessConfig, ShardStatus, TransportConfig, WebhookStatus

if TYPE_CHECKING:
    from qqbot_gateway.cluster.stream import AppendHealth

__all__ = ["Check", "HealthConfig", "HealthEvaluator", "HealthReport"]

#: Reasons shown in reports are cut to this many characters (a body is not a log file).
_MAX_REASON: Final = 240


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    reason: str


@dataclass(frozen=True, slots=True)
class HealthReport:
    """``healthy`` is the ``/healthz`` verdict over ``checks``; ``ready`` the ``/readyz``
    verdict over ``readiness``; ``shard_ready`` feeds the ``ready{shard}`` gauge."""

    healthy: bool
    ready: bool
    checks: list[Check]
    readiness: list[Check] = field(default_factory=list)
    shard_ready: dict[int, bool] = field(default_factory=dict)
    evaluated_at: float = 0.0

    def failing(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


@dataclass(frozen=True, slots=True)
class HealthConfig:
    #: No live session for this long fails liveness (QQBOT_LIVENESS_GRACE). 300 s: several
    #: backoff cycles at the 60 s cap, so a QQ outage or a network blip never restarts the pod,
    #: while a process that cannot recover is restarted within minutes.
    liveness_grace: float = 300.0
    #: Event loop lag above this fails liveness. 2 s: a loop that cannot run a 0.25 s timer
    #: within 2 s is starving handlers and probes alike, and it is still far below the 41 s
    #: heartbeat interval, so the zombie layers are not yet fooled.
    loop_lag_threshold: float = 2.0
    #: A supervisor in BACKOFF this long past its next attempt has stalled. 10 s: far more than
    #: a busy loop delays a timer, far less than the grace.
    stall_margin: float = 10.0
    #: Readiness wants an ACK within (1 + ack_timeout_max + this) intervals.
    ready_ack_slack: float = 0.5

    def __post_init__(self) -> None:
        if self.liveness_grace <= 0 or self.loop_lag_threshold <= 0 or self.stall_margin < 0:
            raise ValueError("liveness_grace and loop_lag_threshold must be > 0, stall_margin >= 0")


@dataclass(slots=True)
class _Shard:
    """What the events told us about one shard (monotonic times)."""

    connected: bool = False
    connected_at: float | None = None
    interval: float | None = None
    live: bool = False
    live_since: float | None = None
    live_ended: float | None = None
    last_frame_at: float | None = None  # from FrameReceived, or the connection's opening
    #: The adapter's counters for the shard: its last frame time, read when evaluating.
    stats: ev.ShardStats | None = None
    last_ack_at: float | None = None
    last_heartbeat_at: float | None = None
    round_at: float | None = None  # the oldest heartbeat still waiting for its ACK
    unacked: int = 0
    ping_state: str = "off"
    ping_detail: str = ""
    ping_rtt: float | None = None
    pong_deadline: float | None = None
    zombie_reason: str | None = None
    zombie_at: float | None = None
    last_reason: str | None = None
    stopped: str | None = None  # SupervisorStopped.reason
    stopped_error: str | None = None
    fatal_message: str | None = None
    state: ev.ConnectionState = ev.ConnectionState.IDLE
    state_since: float | None = None
    next_attempt_at: float | None = None
    #: When the supervisor last started (cluster mode: a new term of ownership).
    started_at: float | None = None


class HealthEvaluator:
    """See the module docstring. ``observe`` is the subscriber, ``evaluate`` the verdict."""

    def __init__(
        self,
        *,
        shards: Iterable[int] = (),
        liveness: LivenessConfig | None = None,
        transport: TransportConfig | None = None,
        request_timeout: float = 10.0,
        config: HealthConfig | None = None,
        status_provider: Callable[[], Sequence[ShardStatus]] | None = None,
        loop_lag: Callable[[float], float] | None = None,
        clock: Callable[[], float] | None = None,
        started_at: float | None = None,
        sanitize: Callable[[str], str] = lambda text: text,
    ) -> None:
        self.liveness = liveness or LivenessConfig()
        self.transport = transport or TransportConfig()
        self.request_timeout = request_timeout
        self.config = config or HealthConfig()
        self.status_provider = status_provider
        self.loop_lag = loop_lag
        self.clock = clock
        self.sanitize = sanitize
        self._shards: dict[int, _Shard] = {}
        #: Webhook transport: the intake's status (None before the client started); see the
        #: module docstring. None here means the WebSocket transport.
        self.webhook_status: Callable[[], WebhookStatus | None] | None = None
        self.webhook_silence: float | None = None
        self.webhook_require_validation = False
        #: Cluster mode (``QQBOT_REDIS_URL``): shard -> ("owner" | "standby", detail). A standby
        #: shard is owned by another process: this process is healthy and ready without it.
        self.roles: Callable[[], Mapping[int, tuple[str, str]]] | None = None
        #: Stream delivery: the publisher's :meth:`append_health` (see the module docstring).
        self.stream_status: Callable[[], AppendHealth] | None = None
        self._shutting_down = False
        self._started_at = started_at if started_at is not None else (clock() if clock else 0.0)
        for shard in shards:
            self.add_shard(shard)

    # --- inputs --------------------------------------------------------------------------
    def add_shard(self, shard: int, stats: ev.ShardStats | None = None) -> None:
        """Watch ``shard``; ``stats`` (the adapter's counters) give its last frame time, so
        that no ``FrameReceived`` event is needed per frame."""
        s = self._shards.setdefault(shard, _Shard())
        if stats is not None:
            s.stats = stats

    def mark_started(self, now: float) -> None:
        """The grace for the first session counts from here."""
        self._started_at = now

    def begin_shutdown(self) -> None:
        self._shutting_down = True

    def observe(self, event: ev.LifecycleEvent) -> None:
        shard = event.shard
        if shard is None:
            return
        s = self._shards.get(shard)
        if s is None:
            return
        t = event.monotonic
        if isinstance(event, ev.FrameReceived):
            s.last_frame_at = t
        elif isinstance(event, ev.HeartbeatSent):
            s.unacked = event.unacked
            s.last_heartbeat_at = t
            if s.round_at is None:
                s.round_at = t
        elif isinstance(event, ev.HeartbeatAcked):
            s.unacked = 0
            s.last_ack_at = t
            s.round_at = None
        elif isinstance(event, ev.PongReceived):
            s.ping_rtt, s.pong_deadline = event.rtt, event.deadline
        elif isinstance(event, ev.PingLayerChanged):
            s.ping_state, s.ping_detail = event.state, event.detail
        elif isinstance(event, ev.Connected):
            s.connected, s.connected_at, s.last_frame_at = True, t, t
            s.interval, s.unacked, s.last_heartbeat_at, s.last_ack_at = None, 0, None, None
            s.round_at = s.ping_rtt = s.pong_deadline = None
            s.ping_state, s.ping_detail = "off", ""
            s.zombie_reason = s.zombie_at = None
        elif isinstance(event, ev.HelloReceived):
            s.interval = event.heartbeat_interval
        elif isinstance(event, ev.SessionReady | ev.SessionResumed):
            s.live, s.live_since = True, t
        elif isinstance(event, ev.ZombieDetected):
            s.zombie_reason, s.zombie_at = event.reason, t
        elif isinstance(event, ev.Disconnected):
            if s.live:
                s.live_ended = t
            s.connected = s.live = False
            s.zombie_reason = s.zombie_at = None
            s.unacked = 0
            s.round_at = None
            s.last_reason = event.reason
        elif isinstance(event, ev.StateChanged):
            s.state, s.state_since = event.new, t
            if event.new is ev.ConnectionState.CONNECTING and event.old in (
                ev.ConnectionState.IDLE,
                ev.ConnectionState.STOPPED,
            ):
                # A supervisor starts: in cluster mode, once per term of ownership (a shard
                # owned after a long standby gets its full grace from here).
                s.stopped = s.stopped_error = None
                s.started_at = t
            if event.new is not ev.ConnectionState.BACKOFF:
                s.next_attempt_at = None
        elif isinstance(event, ev.ReconnectScheduled):
            s.next_attempt_at = t + event.delay
        elif isinstance(event, ev.ShardFatal):
            s.fatal_message = event.message
            s.last_reason = event.reason
        elif isinstance(event, ev.SupervisorStopped):
            if s.live:
                s.live_ended = t
            s.live = s.connected = False
            s.stopped, s.stopped_error = event.reason, event.error

    # --- the verdict ---------------------------------------------------------------------
    def evaluate(self, now: float | None = None) -> HealthReport:
        if now is None:
            if self.clock is None:
                raise ValueError("evaluate() needs now= when the evaluator has no clock")
            now = self.clock()
        if self.webhook_status is not None:
            report = self._evaluate_webhook(self.webhook_status, now)
        else:
            report = self._evaluate_shards(now)
        if self.stream_status is None:
            return report
        live, ready = self._stream_checks(self.stream_status)
        checks = [*report.checks, live]
        readiness = [*report.readiness, ready]
        return HealthReport(
            healthy=report.healthy and live.ok,
            ready=report.ready and ready.ok,
            checks=checks,
            readiness=readiness,
            shard_ready=report.shard_ready,
            evaluated_at=report.evaluated_at,
        )

    def _stream_checks(self, provider: Callable[[], AppendHealth]) -> tuple[Check, Check]:
        """``stream/append``: (liveness, readiness); see the module docstring."""
        name = "stream/append"
        try:
            st = provider()
        except Exception as exc:  # noqa: BLE001 - a broken provider is a failing check
            why = f"stream status unavailable: {type(exc).__name__}"
            return Check(name, False, why), Check(name, False, why)
        grace = self.config.liveness_grace
        fill = f"{st.length} of {st.max_len} entries"
        problems: list[str] = []
        worst = 0.0  # how long the oldest problem has lasted
        if st.failing_for is not None:
            worst = st.failing_for
            problems.append(
                f"appends failing for {st.failing_for:.1f}s ({st.failures} attempt(s); "
                f"last error {st.error})"
            )
        if st.in_flight_for is not None and st.in_flight_for > self.config.stall_margin:
            worst = max(worst, st.in_flight_for)
            problems.append(f"an append unanswered by Redis for {st.in_flight_for:.1f}s")
        if problems:
            text = "; ".join(problems)
            ready = Check(name, False, self._clean(text))
            if worst > grace:
                live = Check(name, False, self._clean(f"{text} (grace {grace:g}s)"))
            else:
                live = Check(
                    name,
                    True,
                    self._clean(f"{text} (grace {grace:g}s; a restart cannot fix Redis)"),
                )
            return live, ready
        if st.blocked_for is not None or st.length >= st.max_len:
            # The workers are behind: not this process's fault, never a restart.
            held = (
                f"appends held for {st.blocked_for:.1f}s, the session pauses its intake"
                if st.blocked_for is not None
                else "the next append waits for room"
            )
            text = (
                f"stream full: {fill} not acknowledged by every group (QQBOT_STREAM_MAX_LEN); "
                f"{held}"
            )
            return Check(name, True, text), Check(name, False, text)
        if st.last_append_ago is None:
            text = f"Redis answers; nothing appended yet ({fill})"
        else:
            text = f"last append {st.last_append_ago:.1f}s ago ({fill})"
        return Check(name, True, text), Check(name, True, text)

    def _evaluate_shards(self, now: float) -> HealthReport:
        checks: list[Check] = []
        readiness: list[Check] = []
        shard_ready: dict[int, bool] = {}
        statuses, status_error = self._statuses()
        if status_error is not None:
            checks.append(Check("supervisors", False, status_error))
        roles = self._roles()
        for shard, s in sorted(self._shards.items()):
            role = roles.get(shard)
            if role is not None:
                # A fatal shard fails here and keeps its own checks (the supervisor's verdict).
                lease = Check(f"shard/{shard}/lease", role[0] != "fatal", f"{role[0]}: {role[1]}")
                readiness.append(lease)
                if role[0] == "standby":
                    checks.append(lease)
                    shard_ready[shard] = False
                    continue
            status = statuses.get(shard)
            zombie = self._zombie(s, now)  # once per shard: three checks judge by it
            checks.append(self._connection_check(shard, s, zombie, now))
            checks.extend(self._layer_checks(shard, s, zombie, now))
            checks.append(self._session_check(shard, s, status, now, term=role is not None))
            checks.append(self._supervisor_check(shard, s, status, now))
            ready = self._ready_check(shard, s, status, zombie, now)
            readiness.append(ready)
            shard_ready[shard] = ready.ok and not self._shutting_down
        checks.append(self._loop_check(now))
        if not self._shards:
            readiness.append(Check("shards", False, "no shards registered"))
        if self._shutting_down:
            readiness.insert(0, Check("shutdown", False, "shutting down"))
        else:
            readiness.insert(0, Check("shutdown", True, "not shutting down"))
        return HealthReport(
            healthy=all(c.ok for c in checks),
            ready=all(c.ok for c in readiness),
            checks=checks,
            readiness=readiness,
            shard_ready=shard_ready,
            evaluated_at=now,
        )

    def _roles(self) -> Mapping[int, tuple[str, str]]:
        if self.roles is None:
            return {}
        try:
            return self.roles()
        except Exception:  # noqa: BLE001 - a broken provider: judge the shards as without it
            return {}

    def _evaluate_webhook(
        self, provider: Callable[[], WebhookStatus | None], now: float
    ) -> HealthReport:
        try:
            status, error = provider(), None
        except Exception as exc:  # noqa: BLE001 - a broken provider is a failing check
            status, error = None, f"webhook status unavailable: {type(exc).__name__}"
        checks: list[Check] = []
        readiness: list[Check] = [
            Check("shutdown", False, "shutting down")
            if self._shutting_down
            else Check("shutdown", True, "not shutting down")
        ]
        if error is not None:
            checks.append(Check("webhook/receiver", False, error))
            readiness.append(Check("webhook/receiver", False, error))
        elif status is None:
            waited = max(0.0, now - self._started_at)
            grace = self.config.liveness_grace
            ok = waited <= grace or self._shutting_down
            checks.append(Check("webhook/receiver", ok, f"not started yet ({waited:.1f}s)"))
            readiness.append(Check("webhook/receiver", False, "not started yet"))
        else:
            checks.extend(self._webhook_liveness(status, now))
            readiness.extend(self._webhook_readiness(status, now))
        checks.append(self._loop_check(now))
        ready = all(c.ok for c in readiness)
        return HealthReport(
            healthy=all(c.ok for c in checks),
            ready=ready,
            checks=checks,
            readiness=readiness,
            shard_ready={shard: ready for shard in self._shards} or {0: ready},
            evaluated_at=now,
        )

    def _webhook_liveness(self, st: WebhookStatus, now: float) -> list[Check]:
        stopping = self._shutting_down or st.closing or st.stopped == "shutdown"
        if st.listening:
            receiver = Check("webhook/receiver", True, "listening")
        elif st.stopped == "shutdown" or (stopping and st.listening_since is None):
            receiver = Check("webhook/receiver", True, "stopped by shutdown")
        elif st.stopped is not None:
            receiver = Check("webhook/receiver", False, f"receiver stopped ({st.stopped})")
        elif st.listening_since is not None:
            receiver = Check("webhook/receiver", False, "the listening socket no longer serves")
        else:
            waited = max(0.0, now - self._started_at)
            grace = self.config.liveness_grace
            receiver = Check(
                "webhook/receiver",
                waited <= grace,
                f"not listening yet after {waited:.1f}s (grace {grace:g}s)",
            )
        if st.handlers_alive or stopping:
            handlers = Check("webhook/handlers", True, "handler task running")
        else:
            handlers = Check("webhook/handlers", False, "the handler task is not running")
        return [receiver, handlers]

    def _webhook_readiness(self, st: WebhookStatus, now: float) -> list[Check]:
        out = []
        if st.listening and not st.closing:
            out.append(Check("webhook/receiver", True, "listening"))
        else:
            out.append(Check("webhook/receiver", False, "not listening"))
        if self.webhook_require_validation:
            if st.validated_at is None:
                out.append(Check("webhook/validation", False, "no valid op 13 validation yet"))
            else:
                age = max(0.0, now - st.validated_at)
                out.append(Check("webhook/validation", True, f"validated {age:.1f}s ago"))
        silence = self.webhook_silence
        if silence is not None:
            ref = st.last_valid_at if st.last_valid_at is not None else st.listening_since
            if ref is None:
                out.append(Check("webhook/silence", False, "not listening"))
            else:
                age = max(0.0, now - ref)
                what = "last valid callback" if st.last_valid_at is not None else "listening"
                if age > silence:
                    reason = (
                        f"no valid callback for {age:.1f}s (QQBOT_WEBHOOK_SILENCE {silence:g}s)"
                    )
                    out.append(Check("webhook/silence", False, reason))
                else:
                    out.append(Check("webhook/silence", True, f"{what} {age:.1f}s ago"))
        return out

    def _statuses(self) -> tuple[dict[int, ShardStatus], str | None]:
        if self.status_provider is None:
            return {}, None
        try:
            return {st.shard: st for st in self.status_provider()}, None
        except Exception as exc:  # noqa: BLE001 - a broken provider is a failing check
            return {}, f"shard status unavailable: {type(exc).__name__}"

    def _zombie(self, s: _Shard, now: float) -> str | None:
        """Why the open connection is a zombie, or None."""
        if not s.connected:
            return None
        if s.zombie_reason is not None and s.zombie_at is not None:
            return (
                f"{s.zombie_reason}: zombie connection declared {now - s.zombie_at:.1f}s ago "
                "and not torn down yet"
            )
        interval = s.interval
        if interval is None:
            return None  # no Hello yet: the hello timeout and the supervisor check cover it
        lv = self.liveness
        if s.round_at is not None and now >= s.round_at + interval:
            return (
                f"ack_timeout: heartbeat unanswered for {now - s.round_at:.1f}s ({s.unacked} "
                f"sent since the last ACK; its deadline is at most "
                f"{lv.ack_timeout_max * interval:g}s)"
            )
        idle = lv.idle_deadline(interval)
        last = _last_frame(s)
        if last is None:
            last = s.connected_at
        if idle is not None and last is not None and now - last >= idle:
            return f"idle_timeout: no frame for {now - last:.1f}s (limit {idle:g}s)"
        return None

    def _layer_checks(self, shard: int, s: _Shard, zombie: str | None, now: float) -> list[Check]:
        """One check per liveness layer: its state and timers, in seconds and in H.
        ``zombie`` is :meth:`_zombie`'s verdict for this shard at ``now``."""
        base = f"shard/{shard}/liveness"
        names = ("ping", "ack", "idle", "tcp")
        interval = s.interval
        if not s.connected or interval is None:
            why = "no connection open" if not s.connected else "waiting for Hello"
            return [Check(f"{base}/{n}", True, why) for n in names]
        lv = self.liveness
        fired = s.zombie_reason

        def seconds(value: float) -> str:
            return f"{value:.3g}s = {value / interval:.2f} H"

        ping = s.ping_state
        if ping == "armed" and s.pong_deadline is not None:
            rtt_ms = (s.ping_rtt or 0.0) * 1000
            ping = (
                f"armed: RTT {rtt_ms:.0f} ms, probe after {seconds(lv.ping_quiet * interval)} "
                f"quiet, pong deadline {seconds(s.pong_deadline)}"
            )
        elif s.ping_detail:
            ping = f"{ping}: {s.ping_detail}"
        ack_floor = lv.ack_deadline(interval, None)
        ack = (
            f"ACK deadline {seconds(ack_floor)} to {seconds(lv.ack_timeout_max * interval)} per "
            f"heartbeat, {lv.ack_probes} probe(s); {s.unacked} outstanding"
        )
        if s.last_ack_at is not None:
            ack += f", last ACK {max(0.0, now - s.last_ack_at):.1f}s ago"
        idle_limit = lv.idle_deadline(interval)
        last = _last_frame(s)
        if last is None:
            last = s.connected_at or now
        idle = (
            "off"
            if idle_limit is None
            else f"last frame {max(0.0, now - last):.1f}s ago, limit {seconds(idle_limit)}"
        )
        user_timeout = lv.tcp_user_timeout(interval)
        tcp = "off" if user_timeout is None else f"TCP_USER_TIMEOUT {seconds(user_timeout)}"
        out = []
        for name, text in zip(names, (ping, ack, idle, tcp), strict=True):
            reason = f"{name}_timeout"
            failing = fired == reason or (
                fired is None and zombie is not None and zombie.startswith(reason)
            )
            out.append(
                Check(
                    f"{base}/{name}",
                    not failing,
                    self._clean((zombie or text) if failing else text),
                )
            )
        return out

    def _connection_check(self, shard: int, s: _Shard, zombie: str | None, now: float) -> Check:
        name = f"shard/{shard}/connection"
        if zombie is not None:
            return Check(name, False, zombie)
        if not s.connected:
            return Check(name, True, "no connection open")
        last = _last_frame(s)
        if last is None:
            return Check(name, True, "connected")
        return Check(
            name,
            True,
            f"connected, last frame {max(0.0, now - last):.1f}s ago, "
            f"{s.unacked} heartbeat(s) outstanding",
        )

    def _session_check(
        self, shard: int, s: _Shard, status: ShardStatus | None, now: float, *, term: bool = False
    ) -> Check:
        name = f"shard/{shard}/session"
        if s.live or (status is not None and status.ready):
            return Check(name, True, "live session")
        if s.stopped == "shutdown" or (
            self._shutting_down and status is not None and not status.task_alive
        ):
            return Check(name, True, "stopped by shutdown")
        grace = self.config.liveness_grace
        since_candidates = [self._started_at]
        if term and s.started_at is not None:  # cluster mode: from the term's start
            since_candidates.append(s.started_at)
        if s.live_ended is not None:
            since_candidates.append(s.live_ended)
        elif status is not None and status.last_ready_at is not None:
            since_candidates.append(status.last_ready_at)
        down_for = max(0.0, now - max(since_candidates))
        last = s.last_reason or (status.last_reason if status is not None else None)
        why = f"; last disconnect: {last}" if last else ""
        if down_for > grace:
            return Check(
                name, False, f"no live session for {down_for:.1f}s (grace {grace:g}s){why}"
            )
        return Check(
            name, True, f"reconnecting: no live session for {down_for:.1f}s (grace {grace:g}s){why}"
        )

    def connecting_limit(self) -> float:
        """CONNECTING covers the token fetch and GET /gateway/bot (request_timeout each) and
        the WebSocket handshake; twice all of that, plus the margin, is a stall."""
        budget = 2 * self.request_timeout + self.transport.connect_timeout
        return 2 * budget + self.config.stall_margin

    def handshaking_limit(self, interval: float | None) -> float:
        """HANDSHAKING covers the WebSocket open, Hello, Identify/Resume -> READY/RESUMED and
        a bounded close; twice all of that, plus the margin, is a stall."""
        lv = self.liveness
        hello = lv.hello_timeout if lv.hello_timeout is not None else 60.0
        deadline = lv.handshake_deadline(interval if interval else lv.max_heartbeat_interval)
        budget = (
            self.transport.connect_timeout + hello + deadline + 2 * self.transport.close_timeout
        )
        return 2 * budget + self.config.stall_margin

    def _supervisor_check(
        self, shard: int, s: _Shard, status: ShardStatus | None, now: float
    ) -> Check:
        name = f"shard/{shard}/supervisor"
        state = status.state if status is not None else s.state
        if state is ev.ConnectionState.FATAL or s.fatal_message is not None:
            message = (status.fatal_message if status is not None else None) or s.fatal_message
            return Check(name, False, self._clean(f"shard stopped for good (fatal): {message}"))
        if s.stopped == "crashed":
            return Check(name, False, self._clean(f"supervisor crashed: {s.stopped_error}"))
        if status is None:
            if s.stopped == "shutdown":
                return Check(name, True, "stopped by shutdown")
            return Check(name, True, f"{state.value} (no supervisor status yet)")
        if not status.task_alive:
            if state is ev.ConnectionState.IDLE:
                return Check(name, True, "not started yet")
            if state is ev.ConnectionState.STOPPED and (
                s.stopped == "shutdown" or self._shutting_down
            ):
                return Check(name, True, "stopped by shutdown")
            return Check(name, False, f"supervisor task is not running (state {state.value})")
        in_state = now - status.state_since
        if state is ev.ConnectionState.BACKOFF and status.next_attempt_at is not None:
            overdue = now - status.next_attempt_at
            if overdue > self.config.stall_margin:
                return Check(
                    name,
                    False,
                    f"stalled: next connection attempt overdue by {overdue:.1f}s "
                    f"(attempt {status.attempts})",
                )
        elif state is ev.ConnectionState.CONNECTING:
            limit = self.connecting_limit()
            if in_state > limit:
                return Check(
                    name, False, f"stalled: connecting for {in_state:.1f}s (limit {limit:g}s)"
                )
        elif state is ev.ConnectionState.HANDSHAKING:
            limit = self.handshaking_limit(s.interval)
            if in_state > limit:
                return Check(
                    name, False, f"stalled: handshaking for {in_state:.1f}s (limit {limit:g}s)"
                )
        return Check(name, True, f"{state.value} for {max(0.0, in_state):.1f}s")

    def _ready_check(
        self, shard: int, s: _Shard, status: ShardStatus | None, zombie: str | None, now: float
    ) -> Check:
        name = f"shard/{shard}/ready"
        state = status.state if status is not None else s.state
        if state is not ev.ConnectionState.READY or not s.live:
            return Check(name, False, f"no live session (state {state.value})")
        if zombie is not None:
            return Check(name, False, zombie)
        interval = s.interval
        ref = max(s.last_ack_at or -math.inf, s.live_since or -math.inf)
        if interval is None or ref == -math.inf:
            return Check(name, True, "session live")
        limit = (1 + self.liveness.ack_timeout_max + self.config.ready_ack_slack) * interval
        age = max(0.0, now - ref)
        what = "last ACK" if s.last_ack_at is not None and s.last_ack_at >= ref else "session live"
        if age > limit:
            return Check(name, False, f"no heartbeat ACK for {age:.1f}s (limit {limit:g}s)")
        return Check(name, True, f"{what} {age:.1f}s ago")

    def _loop_check(self, now: float) -> Check:
        if self.loop_lag is None:
            return Check("event_loop", True, "lag not measured")
        lag = self.loop_lag(now)
        threshold = self.config.loop_lag_threshold
        if lag > threshold:
            return Check("event_loop", False, f"event loop lag {lag:.3f}s exceeds {threshold:g}s")
        return Check("event_loop", True, f"lag {lag:.3f}s")

    def _clean(self, text: str) -> str:
        text = self.sanitize(text)
        return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def _last_frame(s: _Shard) -> float | None:
    """The later of the last frame seen as an event or counted by the adapter."""
    counted = s.stats.last_frame_at if s.stats is not None else None
    if counted is None:
        return s.last_frame_at
    if s.last_frame_at is None:
        return counted
    return max(counted, s.last_frame_at)
