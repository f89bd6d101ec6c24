"""Plain value types: the configs, statuses and small values drivers, telemetry and config share.

Nothing here does I/O or imports a driver: telemetry (health, status page) and the settings
loader import these instead of the aiohttp connection, the supervisor or the client, so the
dependency runs one way (``tests/test_import_contract.py``). The I/O modules re-export what
used to live in them (``adapter.connection.TransportConfig``, ``adapter.client.ClientConfig``
and ``Secret``, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Final

from . import events as ev
from .protocol import DEFAULT_API_BASE, DEFAULT_TOKEN_URL, GatewayEvent, Intents, parse_intents
from .reconnect import ReconnectPolicy
from .session import LivenessConfig

__all__ = [
    "DEFAULT_CHECKPOINT_INTERVAL",
    "DEFAULT_HANDLER_QUEUE_SIZE",
    "DEFAULT_MAX_BODY",
    "DEFAULT_REPLAY_WINDOW",
    "DEFAULT_SESSION_MAX_AGE",
    "MODES",
    "ClientConfig",
    "HandlerContext",
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
