"""Telemetry for the gateway adapter: Prometheus metrics, OpenTelemetry traces, structured logs
and the health report, all fed by the adapter's lifecycle events (the adapter never imports
this package), plus the HTTP side server (``/healthz``, ``/livez``, ``/readyz``, ``/metrics``)
and the webhook transport's receiver (:class:`WebhookReceiver`).

::

    from qqbot_gateway.telemetry import Telemetry, TelemetryConfig, configure_logging

    configure_logging(fmt="auto", level="INFO")
    tel = Telemetry(TelemetryConfig(http_port=8080))
    tel.attach(client)
    await tel.start()
"""

from __future__ import annotations

from .core import Telemetry, TelemetryConfig
from .health import Check, HealthConfig, HealthEvaluator, HealthReport
from .logs import add_secrets, configure_logging
from .metrics import GatewayMetrics
from .otel import TelemetryConfigError, Tracing
from .webhook import WebhookReceiver

__all__ = [
    "Check",
    "GatewayMetrics",
    "HealthConfig",
    "HealthEvaluator",
    "HealthReport",
    "Telemetry",
    "TelemetryConfig",
    "TelemetryConfigError",
    "Tracing",
    "WebhookReceiver",
    "add_secrets",
    "configure_logging",
]
