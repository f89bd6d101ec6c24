"""qqbot-gateway: a QQ Bot gateway adapter that never dies silently.

The library surface::

    from qqbot_gateway import ClientConfig, QQBotClient, Secret

    client = QQBotClient(ClientConfig(app_id="102000000", client_secret=Secret("...")))

    @client.on("C2C_MESSAGE_CREATE")
    async def echo(event):
        await client.api.reply(event, f"you said: {event.data['content']}")

    await client.run()

Lifecycle events (heartbeats, disconnects with their reason, resumes, ...) are published on
``client.events``; their classes live in :mod:`qqbot_gateway.adapter.events` (``events`` here).
Telemetry (Prometheus, OpenTelemetry, logs, ``/healthz``) is in :mod:`qqbot_gateway.telemetry`,
the embedded gateway simulator in :mod:`qqbot_gateway.simulator`, and the service's settings
(``QQBOT_*`` variables, TOML) in :mod:`qqbot_gateway.config`.
"""

from __future__ import annotations

from qqbot_gateway._version import __version__
from qqbot_gateway.adapter import events
from qqbot_gateway.adapter.api import OpenAPIClient
from qqbot_gateway.adapter.client import ClientConfig, QQBotClient
from qqbot_gateway.adapter.errors import (
    APIConnectionError,
    APIError,
    AuthError,
    ForbiddenError,
    InvalidCredentialsError,
    MalformedResponseError,
    NotFoundError,
    QQBotError,
    RateLimitedError,
    ReplyRejectedError,
    ServerError,
    TokenFetchError,
    UnauthorizedError,
)
from qqbot_gateway.adapter.protocol import GatewayEvent, Intents
from qqbot_gateway.adapter.session import LivenessConfig
from qqbot_gateway.adapter.supervisor import ReconnectPolicy
from qqbot_gateway.adapter.types import Secret, TransportConfig, WebhookConfig
from qqbot_gateway.config import ConfigError, Settings, load_settings

__all__ = [
    "APIConnectionError",
    "APIError",
    "AuthError",
    "ClientConfig",
    "ConfigError",
    "ForbiddenError",
    "GatewayEvent",
    "Intents",
    "InvalidCredentialsError",
    "LivenessConfig",
    "MalformedResponseError",
    "NotFoundError",
    "OpenAPIClient",
    "QQBotClient",
    "QQBotError",
    "RateLimitedError",
    "ReconnectPolicy",
    "ReplyRejectedError",
    "Secret",
    "ServerError",
    "Settings",
    "TokenFetchError",
    "TransportConfig",
    "UnauthorizedError",
    "WebhookConfig",
    "__version__",
    "events",
    "load_settings",
]
