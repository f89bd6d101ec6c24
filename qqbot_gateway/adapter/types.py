"""Plain value types: the configs, statuses and small values drivers, telemetry and config share.

Nothing here does I/O or imports a driver: telemetry (health, status page) and the settings
loader import these instead of the aiohttp connection, the supervisor or the client, so the
dependency runs one way (``tests/test_import_contract.py``). The I/O modules re-export what
used to live in them (``adapter.connection.TransportConfig``, ``adapter.client.ClientConfig``
and ``Secret``, ...).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Final

from . import events as ev
from .backoff import Backoff
from .protocol import DEFAULT_API_BASE, DEFAULT_TOKEN_URL, GatewayEvent, Intents, parse_intents

__all__ = [
    "DEFAULT_CHECKPOINT_INTERVAL",
    "DEFAULT_HANDLER_QUEUE_SIZE",
    "DEFAULT_MAX_BODY",
    "DEFAULT_REPLAY_WINDOW",
    "DEFAULT_SESSION_MAX_AGE",
    "MODES",
    "ClientConfig",
    "DedupeWindow",
    "HandlerContext",
    "LivenessConfig",
    "ReconnectPolicy",
    "Secret",
    "ShardStatus",
    "TransportConfig",
    "WebhookConfig",
    "WebhookStatus",
]

#: ``ClientConfig.mode`` values (``QQBOT_TRANSPORT``).
MODES: Final = ("websocket", "webhook")
#: Default bound on the age of a stored session worth resuming (``QQBOT_SESSION_MAX_AGE``):
#: 300 s covers every restart path the store exists for (a SIGTERM restart or a rolling update
#: takes seconds; a crash loop's back-off is capped at 300 s by the kubelet). The platform
#: documents no resume window (PROTOCOL.md), so trying a stale session costs one op 9 round
#: trip and a WARNING, while skipping a live one would lose its backlog: the bound only avoids
#: pointless attempts, which is why it is not tighter.
DEFAULT_SESSION_MAX_AGE: Final = 300.0
#: Default checkpoint batch window: at 20 events/s about two events per write, at 1,000/s about
#: 100; the window bounds the duplicates a SIGKILL can cause (see ``adapter.checkpoint``).
DEFAULT_CHECKPOINT_INTERVAL: Final = 0.1

#: Events a shard's handler queue holds; when full, intake pauses and the session resumes later
#: (nothing is lost).
DEFAULT_HANDLER_QUEUE_SIZE: Final = 1000

#: Wraps the handling of one event, e.g. to make a tracing span current while handlers run.
HandlerContext = Callable[[GatewayEvent], AbstractContextManager[Any]]


@dataclass(frozen=True, slots=True)
class LivenessConfig:
    """Timing rules. Every timer is a fraction of the heartbeat interval H from Hello (after
    clamping H), or derived from a measured round-trip time and then floored and capped in H.

    ``None`` disables a layer where allowed (the ACK layer is the one the protocol itself
    defines and cannot be disabled). The defaults come from the numbers in
    ``benchmarks/bench_detection.md``: a half-open link is declared dead within
    ``ping_quiet + ping_timeout_min`` (0.35 H) while the ping layer is armed, a server that
    stops ACKing within ``1 + ack_timeout_min`` (1.4 H), with no false positive over a
    10-minute run with ACK and pong latency of median 50 ms, jitter to 10x, 1 % spikes to
    0.2 H and 100 ms event loop stalls, at H = 1 s.
    """

    #: ACK deadline per heartbeat, in H: RFC 6298 RTO of the ACK RTT, clamped into
    #: [min, max]. The floor 0.4 H: with ``ack_probes`` = 2, a false positive needs the ACK
    #: late by more than 0.4 H *and* both probes' ACKs late by 0.27 H and 0.13 H (about 3e-6 per
    #: heartbeat under the benchmark's latency model); it bounds "server stops ACKing" to 1.4 H.
    #: The cap 0.9 H: a measured RTT can stretch the deadline that far, never into the next
    #: heartbeat.
    ack_timeout_min: float = 0.4
    ack_timeout_max: float = 0.9
    #: Extra heartbeats sent while a heartbeat waits for its ACK, evenly inside the deadline.
    ack_probes: int = 2
    #: The WebSocket ping layer. False switches it off (``QQBOT_WS_PING=off``).
    ws_ping: bool = True
    #: Probe after this much silence, in H (and again after each such silence). 0.05 H: one
    #: ping per ~2 s of silence at QQ's 41.25 s, negligible; several pings in flight before a
    #: verdict, so one slow pong is not a false positive.
    ping_quiet: float = 0.05
    #: Pong deadline, in H: RFC 6298 RTO of the ping RTT clamped into [min, max]. 0.3 H floor:
    #: at H = 1 s it tolerates the benchmark's 10x jitter (500 ms pongs) because six pings sent
    #: into the silence must all be late; 0.45 cap keeps ping_quiet + deadline within 0.5 H.
    ping_timeout_min: float = 0.3
    ping_timeout_max: float = 0.45
    #: The layer stands by (``suspended``) while the smoothed ping RTT exceeds this, in H, and
    #: arms again below 3/4 of it: a link that slow leaves the pong deadline no margin over
    #: the RTT. Judged on the smoothed RTT, not on the RTO, so jitter alone never suspends it.
    ping_suspend_rtt: float = 0.2
    #: Pings that go without a pong for ``ping_lost_after`` x H while other frames prove the
    #: link alive, in a row, after which the layer turns itself off for the connection.
    ping_unanswered_limit: int = 3
    ping_lost_after: float = 1.0
    #: No frame at all for this many intervals makes a zombie. 2.5: the backstop behind the
    #: ACK layer (which judges by 1.9 H at most); a healthy link is never silent that long.
    idle_timeout_factor: float | None = 2.5
    #: Absolute cap on the idle deadline, whatever the interval.
    idle_timeout_max: float = 180.0
    #: TCP_USER_TIMEOUT set on the socket after Hello: this many H, at least the floor in
    #: seconds (kernel retransmissions need time on a lossy but live link). 1 H: the kernel
    #: layer never fires before the ping layer, and bounds a starved loop's dead socket.
    tcp_user_timeout_factor: float | None = 1.0
    tcp_user_timeout_min: float = 1.0
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
        if not 0 < self.ack_timeout_min <= self.ack_timeout_max < 1.0:
            raise ValueError("need 0 < ack_timeout_min <= ack_timeout_max < 1 (in intervals)")
        if not 0 <= self.ack_probes <= 10:
            raise ValueError("ack_probes must be between 0 and 10")
        if not 0 < self.ping_quiet < 1.0:
            raise ValueError("ping_quiet must be between 0 and 1 (in intervals)")
        if not 0 < self.ping_timeout_min <= self.ping_timeout_max < 1.0:
            raise ValueError("need 0 < ping_timeout_min <= ping_timeout_max < 1 (in intervals)")
        if not 0 < self.ping_suspend_rtt < self.ping_timeout_max:
            raise ValueError("need 0 < ping_suspend_rtt < ping_timeout_max (in intervals)")
        if self.ping_unanswered_limit < 1:
            raise ValueError("ping_unanswered_limit must be at least 1")
        if self.ping_lost_after <= self.ping_timeout_max:
            raise ValueError("ping_lost_after must exceed ping_timeout_max (in intervals)")
        if self.idle_timeout_factor is not None and self.idle_timeout_factor <= 1.0:
            raise ValueError("idle_timeout_factor must be greater than 1 (or None to disable)")
        if self.tcp_user_timeout_factor is not None and self.tcp_user_timeout_factor <= 0:
            raise ValueError("tcp_user_timeout_factor must be positive (or None to disable)")
        if not 0 < self.min_heartbeat_interval <= self.max_heartbeat_interval:
            raise ValueError("need 0 < min_heartbeat_interval <= max_heartbeat_interval")
        for name in ("hello_timeout", "handshake_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive (or None)")
        if self.max_resume_failures < 1 or self.max_identify_rejections < 1:
            raise ValueError("max_resume_failures and max_identify_rejections must be >= 1")

    @property
    def ack_miss_limit(self) -> int:
        """Heartbeats outstanding (the heartbeat and its probes) when the ACK layer fires."""
        return 1 + self.ack_probes

    def handshake_deadline(self, interval: float) -> float:
        if self.handshake_timeout is not None:
            return self.handshake_timeout
        return min(max(2.0 * interval, self.handshake_timeout_min), self.handshake_timeout_max)

    def idle_deadline(self, interval: float) -> float | None:
        if self.idle_timeout_factor is None:
            return None
        return min(self.idle_timeout_factor * interval, self.idle_timeout_max)

    def ack_deadline(self, interval: float, rto: float | None) -> float:
        """Seconds a heartbeat may wait for its ACK (probes included)."""
        return _clamp(rto, self.ack_timeout_min * interval, self.ack_timeout_max * interval)

    def pong_deadline(self, interval: float, rto: float | None) -> float:
        """Seconds the first ping sent into a silence may wait for any frame."""
        return _clamp(rto, self.ping_timeout_min * interval, self.ping_timeout_max * interval)

    def tcp_user_timeout(self, interval: float) -> float | None:
        if self.tcp_user_timeout_factor is None:
            return None
        return max(self.tcp_user_timeout_factor * interval, self.tcp_user_timeout_min)


def _clamp(value: float | None, low: float, high: float) -> float:
    return low if value is None else min(max(value, low), high)


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """Reconnect pacing: exponential backoff with full jitter and a cap, reset after a healthy
    connection; the 4008 wait and the quick-loop slowdown (see :mod:`.reconnect`)."""

    #: First backoff ceiling; doubles per consecutive failure up to ``backoff_cap``.
    backoff_base: float = 1.0
    #: 60 s: the longest a bot stays offline between attempts when QQ is down, and at most
    #: ~2 attempts a minute against an outage, far below any session-start limit.
    backoff_cap: float = 60.0
    #: A connection READY this long proves the setup works: the backoff starts over.
    healthy_after: float = 60.0
    #: Close 4008 ("sending too fast"): peers wait 60 s before resuming.
    rate_limit_wait: float = 60.0
    #: A connection that ends sooner than this (or never gets READY) is a quick failure.
    quick_lifetime: float = 10.0
    #: This many quick failures in a row are a disconnect loop: slow to >= cap / 2.
    quick_loop_threshold: int = 5

    def __post_init__(self) -> None:
        if not 0 < self.backoff_base <= self.backoff_cap:
            raise ValueError("need 0 < backoff_base <= backoff_cap")
        if self.healthy_after < 0 or self.rate_limit_wait < 0 or self.quick_lifetime < 0:
            raise ValueError("healthy_after, rate_limit_wait and quick_lifetime must be >= 0")
        if self.quick_loop_threshold < 1:
            raise ValueError("quick_loop_threshold must be >= 1")

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.backoff_base, self.backoff_cap)


#: Event ids a dedupe window keeps unless told otherwise: seconds to minutes of traffic.
DEFAULT_DEDUPE_WINDOW: Final = 4096


class DedupeWindow(OrderedDict[str, None]):
    """The most recently accepted event ids, oldest first, at most ``limit`` of them.

    One kind of window for both transports: the WebSocket session (:mod:`.session`, whose
    per-frame path reads it as the plain ordered dict it is) and the webhook acceptor
    (:mod:`.callbacks`). An id in it means "accepted already": its redelivery is dropped.
    """

    __slots__ = ("limit",)

    def __init__(self, limit: int = DEFAULT_DEDUPE_WINDOW) -> None:
        super().__init__()
        if limit < 1:
            raise ValueError("a dedupe window holds at least one id")
        self.limit = limit

    def add(self, event_id: str) -> None:
        self[event_id] = None
        if len(self) > self.limit:
            self.popitem(last=False)

    def remember(self, event_ids: Iterable[str]) -> None:
        """Add ids, oldest first (a restored window), keeping the newest ``limit``."""
        for event_id in event_ids:
            self[event_id] = None
        while len(self) > self.limit:
            self.popitem(last=False)

    def forget(self, event_id: str) -> None:
        self.pop(event_id, None)


class Secret:
    """A string that never shows itself in ``repr``, ``str``, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ValueError("secret must be a non-empty string")
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """Socket-level settings. ``None`` disables a layer."""

    #: Whole WebSocket handshake (DNS, TCP, TLS, HTTP upgrade).
    connect_timeout: float = 10.0
    #: Each frame we send; a send that cannot complete means the link is gone.
    send_timeout: float = 5.0
    #: A graceful close waits at most this long for the peer, then the socket is aborted.
    close_timeout: float = 1.0
    #: SO_KEEPALIVE with these timings (Linux): probes start after idle, every interval,
    #: and the kernel drops the link after count unanswered probes.
    tcp_keepalive: bool = True
    tcp_keepidle: int = 30
    tcp_keepintvl: int = 10
    tcp_keepcnt: int = 3
    #: TCP_USER_TIMEOUT (Linux) until Hello: sent data unacknowledged by the peer's kernel for
    #: this long kills the socket. After Hello the session derives it from the interval
    #: (``LivenessConfig.tcp_user_timeout``) and the driver sets that instead.
    tcp_user_timeout: float | None = 60.0
    #: Frames above this size are a protocol error (the connection is dropped and resumed).
    max_frame_size: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "send_timeout", "close_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.tcp_user_timeout is not None and self.tcp_user_timeout <= 0:
            raise ValueError("tcp_user_timeout must be positive (or None to disable)")
        if self.max_frame_size < 1024:
            raise ValueError("max_frame_size must be at least 1024 bytes")


@dataclass(frozen=True, slots=True)
class ShardStatus:
    """A snapshot for the health evaluator and status displays (monotonic times)."""

    shard: int
    state: ev.ConnectionState
    state_since: float
    task_alive: bool
    attempts: int
    next_attempt_at: float | None
    last_ready_at: float | None  # last READY/RESUMED
    ready: bool
    fatal_message: str | None
    last_reason: str | None


#: 5 minutes either way, as Slack and Stripe use: enough for clock skew between QQ and the pod
#: and for the platform's own delivery delay; a captured request is useless after it.
DEFAULT_REPLAY_WINDOW: Final = 300.0
#: 1 MiB. QQ's callbacks are a few KB (attachments are URLs, not bytes); a body 100x larger is
#: not a callback, and reading it would only cost memory.
DEFAULT_MAX_BODY: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """The receiver's settings (``QQBOT_WEBHOOK_*``). See README, "Webhook transport"."""

    #: Where the receiver listens. QQ accepts callback URLs on ports 80, 443, 8080 and 8443
    #: only; behind an ingress or proxy the receiver's own port is free (not the side port).
    host: str = "0.0.0.0"  # noqa: S104 - the platform (or the ingress) must reach it
    port: int = 8443
    path: str = "/qqbot/callback"
    #: A request whose signature timestamp is further than this from our clock is refused.
    replay_window: float = DEFAULT_REPLAY_WINDOW
    max_body: int = DEFAULT_MAX_BODY
    #: TLS for direct exposure (cert chain and key, PEM); None: plain HTTP behind a proxy.
    tls_cert: str | None = None
    tls_key: str | None = None
    #: Readiness waits for the first valid op 13 validation request.
    require_validation: bool = False
    #: /readyz fails after this long without a valid callback; None (default): never, because
    #: a quiet bot is not a broken bot.
    silence: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"webhook port {self.port} is not a TCP port")
        if not self.path.startswith("/") or any(c.isspace() for c in self.path):
            raise ValueError(f"webhook path must start with '/' and have no spaces: {self.path!r}")
        if self.replay_window <= 0:
            raise ValueError("webhook replay window must be > 0 seconds")
        if self.max_body < 1024:
            raise ValueError("webhook body limit must be >= 1024 bytes")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("webhook TLS needs both a certificate and a key file")
        if self.silence is not None and self.silence <= 0:
            raise ValueError("webhook silence must be > 0 seconds (or None)")


@dataclass(frozen=True, slots=True)
class WebhookStatus:
    """A snapshot for the health evaluator (monotonic times)."""

    listening: bool
    listening_since: float | None
    stopped: str | None  # WebhookStopped.reason once the receiver stopped
    handlers_alive: bool
    validated_at: float | None  # last valid op 13
    last_valid_at: float | None  # last request with a valid signature
    closing: bool


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Everything a :class:`QQBotClient` needs: credentials, intents, shards, endpoints, and the
    liveness, transport and reconnect policies. From the environment or a TOML file:
    ``qqbot_gateway.load_settings().client_config()``."""

    app_id: str
    client_secret: Secret
    intents: int = int(Intents.public_default())
    shard_count: int = 1
    #: The shards this process runs; None runs all of ``range(shard_count)``.
    shard_ids: tuple[int, ...] | None = None
    api_base: str = DEFAULT_API_BASE
    token_url: str = DEFAULT_TOKEN_URL
    #: Skip ``GET /gateway/bot`` and connect here (tests, proxies).
    gateway_url: str | None = None
    liveness: LivenessConfig = field(default_factory=LivenessConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    reconnect: ReconnectPolicy = field(default_factory=ReconnectPolicy)
    handler_queue_size: int = DEFAULT_HANDLER_QUEUE_SIZE
    request_timeout: float = 10.0
    #: Session store directory (one file and one lock per shard); None: no store, sessions end
    #: with the process (the library default; the service defaults to a directory).
    state_dir: str | None = None
    #: A stored session older than this (seconds) is not resumed.
    session_max_age: float = DEFAULT_SESSION_MAX_AGE
    #: Another live process holds a shard's state: ``"fail"`` (StoreLockedError) or ``"wait"``.
    state_lock: str = "fail"
    #: Checkpoint batch window in seconds (see :mod:`.checkpoint`).
    checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL
    #: "websocket" (the gateway session) or "webhook" (signed HTTP callbacks; one logical
    #: shard 0: the platform shards nothing for callbacks).
    mode: str = "websocket"
    webhook: WebhookConfig = field(default_factory=WebhookConfig)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "webhook" and (self.shard_count != 1 or self.shard_ids not in (None, (0,))):
            raise ValueError("the webhook transport has no shards: shard_count must be 1")
        if not self.app_id or not str(self.app_id).strip():
            raise ValueError("app_id is empty")
        if not isinstance(self.client_secret, Secret):
            raise TypeError("client_secret must be a Secret (it is never printed)")
        parse_intents(self.intents)
        if self.shard_count < 1:
            raise ValueError("shard_count must be >= 1")
        for shard in self.shard_ids or ():
            if not 0 <= shard < self.shard_count:
                raise ValueError(f"shard id {shard} is outside 0..{self.shard_count - 1}")
        if self.shard_ids is not None and len(set(self.shard_ids)) != len(self.shard_ids):
            raise ValueError("shard_ids contains duplicates")
        if self.handler_queue_size < 1:
            raise ValueError("handler_queue_size must be >= 1")
        if self.session_max_age <= 0 or self.checkpoint_interval < 0:
            raise ValueError("session_max_age must be > 0 and checkpoint_interval >= 0")
        if self.state_lock not in ("fail", "wait"):
            raise ValueError("state_lock must be 'fail' or 'wait'")

    @property
    def shards(self) -> tuple[int, ...]:
        return self.shard_ids if self.shard_ids is not None else tuple(range(self.shard_count))
