"""Shared fakes for the telemetry tests: a client shaped like QQBotClient, and an event feeder
that emits synthetic lifecycle events with explicit loop times. (No tests in this module.)"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter.connection import TransportConfig
from qqbot_gateway.adapter.dispatch import HandlerContext
from qqbot_gateway.adapter.session import LivenessConfig
from qqbot_gateway.adapter.supervisor import ShardStatus
from qqbot_gateway.adapter.webhook import WebhookIntake
from qqbot_gateway.telemetry._clock import Clock

SECRET = "client-secret-Qw3rty9"
CS = ev.ConnectionState


class FakeSecret:
    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value


@dataclass
class FakeConfig:
    shards: tuple[int, ...] = (0,)
    liveness: LivenessConfig = field(default_factory=LivenessConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    handler_queue_size: int = 100
    request_timeout: float = 10.0
    client_secret: FakeSecret = field(default_factory=lambda: FakeSecret(SECRET))


class FakeClient:
    def __init__(self, config: FakeConfig | None = None) -> None:
        self.config = config or FakeConfig()
        self.events = ev.EventBus()
        self.handler_context: HandlerContext | None = None
        self.webhook: WebhookIntake | None = None
        self.statuses: dict[int, ShardStatus] = {}

    def shard_status(self) -> list[ShardStatus]:
        return list(self.statuses.values())

    def set_status(self, shard: int = 0, **fields: Any) -> ShardStatus:
        base: dict[str, Any] = {
            "shard": shard,
            "state": CS.IDLE,
            "state_since": 0.0,
            "task_alive": True,
            "attempts": 0,
            "next_attempt_at": None,
            "last_ready_at": None,
            "ready": False,
            "fatal_message": None,
            "last_reason": None,
        }
        old = self.statuses.get(shard)
        if old is not None:
            base.update({k: getattr(old, k) for k in base})
        base.update(fields)
        if "state" in fields and "ready" not in fields:
            base["ready"] = fields["state"] is CS.READY
        status = ShardStatus(**base)
        self.statuses[shard] = status
        return status


class FakeClock(Clock):
    """A settable monotonic clock with the wall clock 1_700_000_000 s ahead."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        super().__init__(monotonic=lambda: self.now, wall=lambda: self.now + 1_700_000_000.0)


class Feeder:
    """Emits lifecycle events on a bus, each at an explicit loop time."""

    def __init__(self, bus: ev.EventBus, shard: int = 0) -> None:
        self.bus = bus
        self.shard = shard

    def emit(self, kind: type[ev.LifecycleEvent], t: float, **fields: Any) -> None:
        fields.setdefault("shard", self.shard)
        self.bus.emit(kind(monotonic=t, **fields))

    def state(self, t: float, old: ev.ConnectionState, new: ev.ConnectionState) -> None:
        self.emit(ev.StateChanged, t, old=old, new=new)

    def connect(self, t: float, *, interval: float = 1.0, resume: bool = False) -> None:
        """ConnectAttempt .. Hello at ``t`` (one connection, no session yet)."""
        self.emit(ev.ConnectAttempt, t, attempt=1, resume=resume)
        self.emit(ev.Connected, t, connection_id="c1", url="wss://gw.example/websocket")
        self.emit(ev.FrameReceived, t, op=10, event_type=None, size=40)
        self.emit(ev.HelloReceived, t, heartbeat_interval=interval, advertised_ms=interval * 1000)

    def ready(self, t: float, session_id: str = "sess-1") -> None:
        self.emit(ev.IdentifySent, t, intents=1)
        self.emit(ev.FrameReceived, t, op=0, event_type="READY", size=100)
        self.emit(ev.SessionReady, t, session_id=session_id, user_id="u", username="bot")
        self.emit(ev.EventDispatched, t, event_type="READY", seq=1, event_id=None, replayed=False)

    def heartbeat(self, t: float, unacked: int = 1) -> None:
        self.emit(ev.HeartbeatSent, t, seq=1, unacked=unacked)

    def ack(self, t: float, rtt: float = 0.02) -> None:
        self.emit(ev.FrameReceived, t, op=11, event_type=None, size=10)
        self.emit(ev.HeartbeatAcked, t, rtt=rtt)

    def disconnect(self, t: float, reason: str, code: int | None = None) -> None:
        self.emit(
            ev.Disconnected,
            t,
            reason=reason,
            close_code=code,
            detail="test",
            resumable=True,
            connection_age=1.0,
        )


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)
