"""hermes-agent platform plugin: a hermes QQ bot on this project's client.

hermes-agent loads it through its own plugin discovery (entry point group
``hermes_agent.plugins``, name ``qqbot-gateway``) once it is listed in ``config.yaml``::

    plugins:
      enabled: [qqbot-gateway]
    platforms:
      qqbot_gateway:
        enabled: true
        extra:
          app_id: "102000000"          # or QQBOT_APP_ID in the environment
          http_addr: "0.0.0.0:9464"    # optional: /healthz, /readyz, /metrics in this process
          transport: webhook           # optional: QQ's HTTP callbacks instead of the WebSocket
          webhook_addr: "127.0.0.1:8080"   # required with webhook (behind a TLS reverse proxy)

The secret comes from ``QQBOT_CLIENT_SECRET`` or ``QQBOT_CLIENT_SECRET_FILE``, or
``client_secret`` / ``client_secret_file`` in ``extra`` (hermes's ``QQ_CLIENT_SECRET`` is read as
a last resort).
Every ``QQBOT_*`` setting of the service (see :mod:`qqbot_gateway.config`) is accepted in
``extra`` under its lowercase name, except cluster mode's (``CLUSTER_SETTINGS``: refused with one
line, they belong to ``qqbot-gateway run`` and ``worker``); ``extra`` wins over the
environment. ``docs/hermes.md`` has the full list, the differences from hermes's built-in QQ
adapter and a migration path.

What hermes gets from this adapter instead of its built-in one: layered liveness (ACK tracking,
receive-idle deadline, WebSocket ping, TCP keepalive) so a half-open link is replaced within a
fraction of a heartbeat interval (about 1.4 against a server that ignores pings); resume with
replayed events delivered exactly once, across a restart of hermes too (the session store,
``QQBOT_STATE_DIR``); a bounded handler queue; and a connected state that tells the truth:
``_mark_disconnected`` as soon as a zombie is detected or a shard backs off, ``_mark_connected``
on READY/RESUMED, and a fatal error (``_set_fatal_error`` + ``_notify_fatal_error``, once) only
when a shard stopped for good.

With ``transport: webhook`` there is no connection: the service's webhook receiver
(:func:`qqbot_gateway.service.start_receiver`, the code ``qqbot-gateway run`` uses) runs in the
hermes process on ``webhook_addr``, callbacks go through the intake journal and the dedupe
window into the same handler, and hermes is connected while the receiver listens (with
``webhook_require_validation``: once QQ's op 13 arrived). A receiver that cannot listen makes
``connect()`` fail with the error set, as hermes's own servers do.

The package: :mod:`.settings` (what ``extra`` and the environment may say), :mod:`.inbound`
(QQ dispatches as hermes messages), :mod:`.adapter` (the adapter), :mod:`.sender` (sending
without a gateway process: cron) and :mod:`.registration` (what is handed to
``register_platform``: decided from the running hermes's signature, not its version).
"""

from __future__ import annotations

from .adapter import MAX_REPLIES_PER_MESSAGE, TRUNCATED_NOTE, QQBotGatewayAdapter, url_is_safe
from .inbound import MESSAGE_KINDS, NOT_MAPPED, Inbound, inbound
from .registration import (
    apply_yaml_config,
    check_requirements,
    env_enablement,
    is_connected,
    platform_entry,
    register,
    setup,
    validate_config,
)
from .sender import standalone_send
from .settings import (
    DEFAULT_PLATFORM,
    ENTRY_POINT,
    HOME_CHANNEL_ENV,
    HTTP_ADDR_ENV,
    INSTALL_HINT,
    PLATFORM_ENV,
    PLUGIN_KEYS,
    REQUIRED_ENV,
    SERVICE_KEYS,
    HermesSettings,
    hermes_settings,
    platform_name,
)

__all__ = [
    "DEFAULT_PLATFORM",
    "ENTRY_POINT",
    "HOME_CHANNEL_ENV",
    "HTTP_ADDR_ENV",
    "INSTALL_HINT",
    "MAX_REPLIES_PER_MESSAGE",
    "MESSAGE_KINDS",
    "NOT_MAPPED",
    "PLATFORM_ENV",
    "PLUGIN_KEYS",
    "REQUIRED_ENV",
    "SERVICE_KEYS",
    "TRUNCATED_NOTE",
    "HermesSettings",
    "Inbound",
    "QQBotGatewayAdapter",
    "apply_yaml_config",
    "check_requirements",
    "env_enablement",
    "hermes_settings",
    "inbound",
    "is_connected",
    "platform_entry",
    "platform_name",
    "register",
    "setup",
    "standalone_send",
    "url_is_safe",
    "validate_config",
]
