"""The shape of the client telemetry attaches to, as a Protocol.

Telemetry needs only a few members of :class:`qqbot_gateway.adapter.client.QQBotClient`; naming
them here keeps the dependency one-way and lets tests attach to a small fake.
"""

from __future__ import annotations

from typing import Protocol

from qqbot_gateway.adapter.events import EventBus
from qqbot_gateway.adapter.types import HandlerContext, LivenessConfig, ShardStatus, TransportConfig
from qqbot_gateway.adapter.webhook import WebhookIntake

__all__ = ["ClientLike", "ConfigLike", "SecretLike"]


class SecretLike(Protocol):
    def get(self) -> str: ...


class ConfigLike(Protocol):
    @property
    def shards(self) -> tuple[int, ...]: ...

    @property
    def liveness(self) -> LivenessConfig: ...

    @property
    def transport(self) -> TransportConfig: ...

    @property
    def handler_queue_size(self) -> int: ...

    @property
    def request_timeout(self) -> float: ...

    @property
    def client_secret(self) -> SecretLike: ...


class ClientLike(Protocol):
    handler_context: HandlerContext | None
    #: The webhook intake (``mode="webhook"``, after start), else None.
    webhook: WebhookIntake | None

    @property
    def events(self) -> EventBus: ...

    @property
    def config(self) -> ConfigLike: ...

    def shard_status(self) -> list[ShardStatus]: ...
