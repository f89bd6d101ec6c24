"""Settings for the service, from ``QQBOT_*`` environment variables and/or a TOML file.

The names are a public contract (Kubernetes manifests and operators' scripts use them)::

    QQBOT_APP_ID                 the bot's AppID (required by run and check)
    QQBOT_CLIENT_SECRET          the bot's AppSecret                          (or the _FILE form)
    QQBOT_CLIENT_SECRET_FILE     a file holding the secret (stripped)
    QQBOT_INTENTS                int (decimal or 0x..) or intent names, comma separated
    QQBOT_SHARD_COUNT            total shards of the bot                      (default 1)
    QQBOT_SHARD_ID               comma list of the shards this process runs   (default all)
    QQBOT_HTTP_ADDR              side port host:port, port 0 allowed, "off"   (default 0.0.0.0:8080)
    QQBOT_LIVENESS_GRACE         seconds without a live session before /healthz fails (300)
    QQBOT_LOOP_LAG_THRESHOLD     event loop lag in seconds that fails /healthz (2)
    QQBOT_LOG_FORMAT             auto | json | console                        (default auto)
    QQBOT_LOG_LEVEL              DEBUG | INFO | WARNING | ERROR | CRITICAL    (default INFO)
    QQBOT_API_BASE               OpenAPI base URL       (sandbox, proxies, the simulator)
    QQBOT_TOKEN_URL              access token URL
    QQBOT_GATEWAY_URL            connect here and skip GET /gateway/bot
    QQBOT_ACK_PROBES             extra heartbeats sent inside a heartbeat's ACK deadline (2)
    QQBOT_WS_PING                on | off: the WebSocket ping layer, timed in intervals (on)
    QQBOT_HANDLER_QUEUE_SIZE     bounded handler queue per shard              (1000)
    QQBOT_DRAIN_TIMEOUT          seconds handlers get to finish at shutdown   (10)
    QQBOT_STATE_DIR              session store directory, "off" disables it
                                 (default $XDG_STATE_HOME/qqbot-gateway, i.e.
                                 ~/.local/state/qqbot-gateway when XDG_STATE_HOME is unset)
    QQBOT_SESSION_MAX_AGE        seconds a stored session is worth resuming   (300)
    QQBOT_STATE_LOCK             fail | wait: another process owns the shard  (default fail)
    QQBOT_CHECKPOINT_INTERVAL    seconds between checkpoint writes (batching) (0.1)
    QQBOT_TRANSPORT              websocket | webhook                          (default websocket)
    QQBOT_WEBHOOK_ADDR           callback receiver host:port, never the side port (0.0.0.0:8443)
    QQBOT_WEBHOOK_PATH           the callback path                        (default /qqbot/callback)
    QQBOT_WEBHOOK_TLS_CERT       PEM certificate chain: serve HTTPS directly  (default: plain HTTP)
    QQBOT_WEBHOOK_TLS_KEY        PEM private key for it
    QQBOT_WEBHOOK_REPLAY_WINDOW  seconds a signature timestamp may differ from our clock (300)
    QQBOT_WEBHOOK_MAX_BODY       largest accepted callback body in bytes      (1048576)
    QQBOT_WEBHOOK_REQUIRE_VALIDATION  true: /readyz waits for the platform's op 13 (false)
    QQBOT_WEBHOOK_SILENCE        seconds without a valid callback before /readyz fails (0: off)
    QQBOT_TRACE_SAMPLE_RATIO     share of events traced, 0..1, when an exporter is set (0.01)
    QQBOT_TRACE_SLOW_HANDLER     seconds after which a handler is always traced (1)
    QQBOT_STATUS_PAGE            on | off: the status page on the side server (default on)

In the TOML file the keys are the lowercase names without the prefix (``app_id``,
``shard_count``, ``client_secret_file``, ...); an unknown key is an error. Environment
variables override the file. ``QQBOT_CONFIG`` names the file when ``--config`` is not given.
Secrets are never taken from the command line and never shown: ``repr(settings)`` hides them.

Every problem raises :class:`ConfigError` with a message that names the setting and says what
is wrong, e.g. ``QQBOT_SHARD_COUNT: expected a positive integer, got 'x'``.
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from qqbot_gateway.adapter.protocol import (
    DEFAULT_API_BASE,
    DEFAULT_TOKEN_URL,
    Intents,
    parse_intents,
)
from qqbot_gateway.adapter.session import LivenessConfig
from qqbot_gateway.adapter.types import Secret, TransportConfig, WebhookConfig

if TYPE_CHECKING:
    from qqbot_gateway.adapter.client import ClientConfig
    from qqbot_gateway.telemetry import TelemetryConfig

__all__ = [
    "ENV_PREFIX",
    "SETTING_NAMES",
    "ConfigError",
    "Settings",
    "default_state_dir",
    "load_settings",
]

ENV_PREFIX: Final = "QQBOT_"

#: Every setting, by its TOML key; the environment variable is ``QQBOT_`` + the key upper-cased.
SETTING_NAMES: Final[tuple[str, ...]] = (
    "app_id",
    "client_secret",
    "client_secret_file",
    "intents",
    "shard_count",
    "shard_id",
    "http_addr",
    "liveness_grace",
    "loop_lag_threshold",
    "log_format",
    "log_level",
    "api_base",
    "token_url",
    "gateway_url",
    "ack_probes",
    "ws_ping",
    "handler_queue_size",
    "drain_timeout",
    "state_dir",
    "session_max_age",
    "state_lock",
    "checkpoint_interval",
    "transport",
    "webhook_addr",
    "webhook_path",
    "webhook_tls_cert",
    "webhook_tls_key",
    "webhook_replay_window",
    "webhook_max_body",
    "webhook_require_validation",
    "webhook_silence",
    "trace_sample_ratio",
    "trace_slow_handler",
    "status_page",
)

#: ``QQBOT_*`` variables that belong to other tools (the simulator, the test suite) or name the
#: file itself: no typo warning for these.
_OTHER_VARIABLES: Final = frozenset({"QQBOT_CONFIG"})
_OTHER_PREFIXES: Final = ("QQBOT_SIM_", "QQBOT_TEST_")

#: Settings that no longer exist, with what replaces them: an error, not a warning, because
#: silently ignoring e.g. ``ws_ping_interval = 0`` would leave a layer on that was meant off.
_REMOVED: Final[dict[str, str]] = {
    "ack_miss_limit": (
        "removed: each heartbeat now has an ACK deadline derived from the interval; "
        "use ack_probes (extra heartbeats sent while one waits for its ACK, default 2)"
    ),
    "ws_ping_interval": (
        "removed: the ping cadence now derives from the heartbeat interval; "
        "use ws_ping = on|off (default on)"
    ),
}

_LOG_FORMATS: Final = ("auto", "json", "console")
_LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_DEFAULT_HTTP_ADDR: Final = "0.0.0.0:8080"  # every interface: kubelet and Prometheus connect
_TRANSPORTS: Final = ("websocket", "webhook")
#: 8443: one of the four ports QQ accepts in a callback URL (80, 443, 8080, 8443), and not the
#: side port's 8080.
_DEFAULT_WEBHOOK_ADDR: Final = "0.0.0.0:8443"
_DEFAULT_WEBHOOK_PATH: Final = "/qqbot/callback"


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the setting and what is wrong."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated service settings. Build with :func:`load_settings`.

    ``client_secret`` is a :class:`~qqbot_gateway.adapter.client.Secret` (never shown), or None
    when not configured (``demo`` and ``simulate`` need none).
    """

    app_id: str | None = None
    client_secret: Secret | None = None
    intents: int = int(Intents.public_default())
    shard_count: int = 1
    #: The shards this process runs; None runs all of ``range(shard_count)``.
    shard_ids: tuple[int, ...] | None = None
    #: (host, port) of the side server; None when ``QQBOT_HTTP_ADDR=off``.
    http_addr: tuple[str, int] | None = ("0.0.0.0", 8080)  # noqa: S104 - see _DEFAULT_HTTP_ADDR
    liveness_grace: float = 300.0
    loop_lag_threshold: float = 2.0
    log_format: str = "auto"
    log_level: str = "INFO"
    api_base: str = DEFAULT_API_BASE
    token_url: str = DEFAULT_TOKEN_URL
    gateway_url: str | None = None
    ack_probes: int = LivenessConfig().ack_probes
    #: False: the WebSocket ping layer is off (``QQBOT_WS_PING=off``).
    ws_ping: bool = True
    handler_queue_size: int = 1000
    drain_timeout: float = 10.0
    #: Session store directory; None when ``QQBOT_STATE_DIR=off``. :func:`load_settings`
    #: fills in the default (:func:`default_state_dir`).
    state_dir: str | None = None
    session_max_age: float = 300.0
    state_lock: str = "fail"
    checkpoint_interval: float = 0.1
    transport: str = "websocket"
    webhook_addr: tuple[str, int] = ("0.0.0.0", 8443)  # noqa: S104 - the platform must reach it
    webhook_path: str = _DEFAULT_WEBHOOK_PATH
    webhook_tls_cert: str | None = None
    webhook_tls_key: str | None = None
    webhook_replay_window: float = 300.0
    webhook_max_body: int = 1 << 20
    webhook_require_validation: bool = False
    webhook_silence: float | None = None
    #: Tracing (only with an exporter, ``OTEL_*``): share of events traced, and the handler
    #: duration past which an event is traced anyway (failures and replays always are).
    trace_sample_ratio: float = 0.01
    trace_slow_handler: float = 1.0
    #: The status page (``/``, ``/status``, ``/status.json``) on the side server.
    status_page: bool = True
    #: Where each value came from, for messages: setting key -> "QQBOT_X" or "key (in file)".
    sources: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def source(self, key: str) -> str:
        """The name to use in a message about ``key``: the env var or the file key."""
        return dict(self.sources).get(key, ENV_PREFIX + key.upper())

    def require_credentials(self) -> tuple[str, Secret]:
        """``(app_id, Secret)``, or a ConfigError naming what is missing."""
        if not self.app_id:
            raise ConfigError(
                "QQBOT_APP_ID: required (set it in the environment or app_id in the config file)"
            )
        if self.client_secret is None:
            raise ConfigError(
                "QQBOT_CLIENT_SECRET: required (set QQBOT_CLIENT_SECRET or "
                "QQBOT_CLIENT_SECRET_FILE; never on the command line)"
            )
        return self.app_id, self.client_secret

    def client_config(self) -> ClientConfig:
        """The :class:`~qqbot_gateway.adapter.client.ClientConfig` for these settings."""
        # Imported here: adapter.client pulls in aiohttp and the whole adapter, and config
        # stays cheap to import (``--help``, ``simulate``).
        from qqbot_gateway.adapter.client import ClientConfig

        app_id, secret = self.require_credentials()
        return ClientConfig(
            app_id=app_id,
            client_secret=secret,
            intents=self.intents,
            shard_count=self.shard_count,
            shard_ids=self.shard_ids,
            api_base=self.api_base,
            token_url=self.token_url,
            gateway_url=self.gateway_url,
            liveness=LivenessConfig(ack_probes=self.ack_probes, ws_ping=self.ws_ping),
            transport=TransportConfig(),
            handler_queue_size=self.handler_queue_size,
            state_dir=self.state_dir,
            session_max_age=self.session_max_age,
            state_lock=self.state_lock,
            checkpoint_interval=self.checkpoint_interval,
            mode=self.transport,
            webhook=WebhookConfig(
                host=self.webhook_addr[0],
                port=self.webhook_addr[1],
                path=self.webhook_path,
                replay_window=self.webhook_replay_window,
                max_body=self.webhook_max_body,
                tls_cert=self.webhook_tls_cert,
                tls_key=self.webhook_tls_key,
                require_validation=self.webhook_require_validation,
                silence=self.webhook_silence,
            ),
        )

    def telemetry_config(self) -> TelemetryConfig:
        """The :class:`~qqbot_gateway.telemetry.TelemetryConfig` for these settings."""
        from qqbot_gateway.telemetry import TelemetryConfig

        host, port = self.http_addr if self.http_addr is not None else ("127.0.0.1", None)
        return TelemetryConfig(
            liveness_grace=self.liveness_grace,
            loop_lag_threshold=self.loop_lag_threshold,
            http_host=host,
            http_port=port,
            trace_sample_ratio=self.trace_sample_ratio,
            trace_slow_handler=self.trace_slow_handler,
            status_page=self.status_page,
        )


# --- parsers: raw value -> typed value, or ValueError with "expected ..., got ..." ----------


def _show(raw: Any) -> str:
    return "nothing" if raw is None else repr(raw)


def _positive_int(raw: Any) -> int:
    value = _int(raw, "a positive integer")
    if value < 1:
        raise ValueError(f"expected a positive integer, got {_show(raw)}")
    return value


def _int(raw: Any, what: str) -> int:
    if isinstance(raw, bool):
        raise ValueError(f"expected {what}, got {_show(raw)}")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str):
        try:
            return int(raw.strip())
        except ValueError:
            pass
    raise ValueError(f"expected {what}, got {_show(raw)}")


def _number(raw: Any, what: str) -> float:
    if isinstance(raw, bool):
        raise ValueError(f"expected {what}, got {_show(raw)}")
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"expected {what}, got {_show(raw)}") from None
    else:
        raise ValueError(f"expected {what}, got {_show(raw)}")
    if not math.isfinite(value):
        raise ValueError(f"expected {what}, got {_show(raw)}")
    return value


def _positive_seconds(raw: Any) -> float:
    value = _number(raw, "a positive number of seconds")
    if value <= 0:
        raise ValueError(f"expected a positive number of seconds, got {_show(raw)}")
    return value


def _ack_probes(raw: Any) -> int:
    value = _int(raw, "an integer from 0 to 10")
    if not 0 <= value <= 10:
        raise ValueError(f"expected an integer from 0 to 10, got {_show(raw)}")
    return value


def _seconds_or_zero(raw: Any) -> float | None:
    value = _number(raw, "a number of seconds (0 disables)")
    if value < 0:
        raise ValueError(f"expected a number of seconds (0 disables), got {_show(raw)}")
    return None if value == 0 else value


def _non_negative_seconds(raw: Any) -> float:
    value = _number(raw, "a number of seconds >= 0")
    if value < 0:
        raise ValueError(f"expected a number of seconds >= 0, got {_show(raw)}")
    return value


def _ratio(raw: Any) -> float:
    value = _number(raw, "a number from 0 to 1")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"expected a number from 0 to 1, got {_show(raw)}")
    return value


def _text(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"expected a non-empty string, got {_show(raw)}")
    return raw.strip()


def _app_id(raw: Any) -> str:
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    text = _text(raw)
    if any(c.isspace() for c in text):
        raise ValueError("expected an AppID without spaces")
    return text


def _intents(raw: Any) -> int:
    if isinstance(raw, list):
        raw = [str(x) for x in raw]
    try:
        return parse_intents(raw)
    except (ValueError, TypeError) as exc:
        names = ", ".join(i.name or "" for i in Intents)
        detail = str(exc)
        if "known:" not in detail:
            detail += f" (an integer, or names from: {names})"
        raise ValueError(f"{detail}; got {_show(raw)}") from None


def _shard_ids(raw: Any) -> tuple[int, ...]:
    items: list[Any]
    if isinstance(raw, int) and not isinstance(raw, bool):
        items = [raw]
    elif isinstance(raw, list):
        items = list(raw)
    elif isinstance(raw, str):
        items = [part.strip() for part in raw.split(",")]
    else:
        raise ValueError(f"expected shard ids separated by commas, got {_show(raw)}")
    out: list[int] = []
    for item in items:
        try:
            value = _int(item, "a shard id")
        except ValueError:
            raise ValueError(
                f"expected shard ids (integers >= 0) separated by commas, got {_show(raw)}"
            ) from None
        if value < 0:
            raise ValueError(f"expected shard ids >= 0, got {_show(raw)}")
        out.append(value)
    if not out:
        raise ValueError("expected at least one shard id")
    if len(set(out)) != len(out):
        raise ValueError(f"shard ids must not repeat, got {_show(raw)}")
    return tuple(out)


def _http_addr(raw: Any) -> tuple[str, int] | None:
    text = _text(raw)
    if text.lower() == "off":
        return None
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(f"expected host:port or 'off', got {_show(raw)}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host or "0.0.0.0"  # noqa: S104 - ":8080" means every interface, like most servers
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"expected host:port ([addr]:port for IPv6), got {_show(raw)}"
            ) from None
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"expected host:port with a numeric port, got {_show(raw)}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0..65535, got {_show(raw)}")
    return host, port


def _webhook_addr(raw: Any) -> tuple[str, int]:
    addr = _http_addr(raw)
    if addr is None:
        raise ValueError(f"expected host:port, got {_show(raw)} (QQBOT_TRANSPORT selects webhooks)")
    return addr


def _webhook_path(raw: Any) -> str:
    text = _text(raw)
    if not text.startswith("/") or any(c.isspace() or c in "?#" for c in text):
        raise ValueError(f"expected a path starting with '/' (no spaces, ? or #), got {_show(raw)}")
    return text


def _readable_file(raw: Any) -> str:
    path = Path(_text(raw)).expanduser()
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    return str(path)


def _body_limit(raw: Any) -> int:
    value = _int(raw, "a number of bytes >= 1024")
    if value < 1024:
        raise ValueError(f"expected a number of bytes >= 1024, got {_show(raw)}")
    return value


def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(raw, str) and raw.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {_show(raw)}")


def _silence(raw: Any) -> float | None:
    if isinstance(raw, str) and raw.strip().lower() == "off":
        return None
    return _seconds_or_zero(raw)


def _url(schemes: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        text = _text(raw)
        parts = urlsplit(text)
        if parts.scheme not in schemes or not parts.netloc:
            wanted = " or ".join(f"{s}://" for s in schemes)
            raise ValueError(f"expected a {wanted} URL, got {_show(raw)}")
        return text.rstrip("/") if parts.path in ("", "/") else text

    return parse


def _choice(options: tuple[str, ...], *, upper: bool = False) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        text = _text(raw)
        value = text.upper() if upper else text.lower()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {_show(raw)}")
        return value

    return parse


def _state_dir(raw: Any) -> str | None:
    text = _text(raw).strip()
    if not text:
        raise ValueError("expected a directory or off, got nothing")
    if text.lower() == "off":
        return None
    return str(Path(text).expanduser())


def default_state_dir(env: Mapping[str, str] | None = None) -> str:
    """``$XDG_STATE_HOME/qqbot-gateway``, else ``~/.local/state/qqbot-gateway``.

    The XDG state directory, not the working directory: a session belongs to the bot (app id
    and shard), not to the directory a process happens to start in, so two processes of one bot
    on one machine must find the same state (and the same lock) wherever they were started; the
    XDG spec defines the state directory as data that should persist between restarts of an
    application. Containers set ``QQBOT_STATE_DIR`` to a mounted volume.
    """
    env = os.environ if env is None else env
    xdg = env.get("XDG_STATE_HOME", "").strip()
    if xdg and Path(xdg).is_absolute():
        return str(Path(xdg) / "qqbot-gateway")
    home = env.get("HOME", "").strip() or str(Path.home())
    return str(Path(home) / ".local" / "state" / "qqbot-gateway")


_PARSERS: Final[dict[str, Callable[[Any], Any]]] = {
    "app_id": _app_id,
    "intents": _intents,
    "shard_count": _positive_int,
    "shard_id": _shard_ids,
    "http_addr": _http_addr,
    "liveness_grace": _positive_seconds,
    "loop_lag_threshold": _positive_seconds,
    "log_format": _choice(_LOG_FORMATS),
    "log_level": _choice(_LOG_LEVELS, upper=True),
    "api_base": _url(("http", "https")),
    "token_url": _url(("http", "https")),
    "gateway_url": _url(("ws", "wss")),
    "ack_probes": _ack_probes,
    "ws_ping": _bool,
    "handler_queue_size": _positive_int,
    "drain_timeout": _non_negative_seconds,
    "state_dir": _state_dir,
    "session_max_age": _positive_seconds,
    "state_lock": _choice(("fail", "wait")),
    "checkpoint_interval": _non_negative_seconds,
    "transport": _choice(_TRANSPORTS),
    "webhook_addr": _webhook_addr,
    "webhook_path": _webhook_path,
    "webhook_tls_cert": _readable_file,
    "webhook_tls_key": _readable_file,
    "webhook_replay_window": _positive_seconds,
    "webhook_max_body": _body_limit,
    "webhook_require_validation": _bool,
    "webhook_silence": _silence,
    "trace_sample_ratio": _ratio,
    "trace_slow_handler": _positive_seconds,
    "status_page": _bool,
}


# --- loading ------------------------------------------------------------------------------


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"--config: file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {path} is not valid TOML: {exc}") from None
    # A [qqbot] table is accepted too, for files shared with other tools.
    if set(data) == {"qqbot"} and isinstance(data["qqbot"], dict):
        data = data["qqbot"]
    for key in data:
        if key in _REMOVED:
            raise ConfigError(f"{key} (in {path}): {_REMOVED[key]}")
        if key not in SETTING_NAMES:
            hint = _close_match(key, SETTING_NAMES)
            raise ConfigError(
                f"{key} (in {path}): unknown setting{hint}; known: {', '.join(SETTING_NAMES)}"
            )
    return data


def _close_match(name: str, options: tuple[str, ...]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.75)
    return f" (did you mean {match[0]}?)" if match else ""


def _warn_unknown_env(env: Mapping[str, str], warn: Callable[[str], None]) -> None:
    known = {ENV_PREFIX + key.upper() for key in SETTING_NAMES}
    for key, why in _REMOVED.items():
        if env.get(ENV_PREFIX + key.upper(), "").strip():
            raise ConfigError(f"{ENV_PREFIX + key.upper()}: {why}")
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in known or name in _OTHER_VARIABLES:
            continue
        if name.startswith(_OTHER_PREFIXES):
            continue
        hint = _close_match(name, tuple(sorted(known)))
        warn(f"warning: ignoring unknown environment variable {name}{hint}")


def _read_secret_file(name: str, raw: Any) -> str:
    path = Path(_text(raw)).expanduser()
    try:
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"{name}: file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc}") from None
    if not value:
        raise ConfigError(f"{name}: the file {path} is empty")
    return value


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Settings:
    """Settings from the TOML file (if any) overridden by ``QQBOT_*`` variables of ``env``.

    ``env`` defaults to ``os.environ``. ``warn`` receives one line per unknown ``QQBOT_*``
    variable (default: a WARNING log line). Raises :class:`ConfigError`.
    """
    env = os.environ if env is None else env
    if config_file is None and env.get("QQBOT_CONFIG", "").strip():
        config_file = env["QQBOT_CONFIG"].strip()
    _warn_unknown_env(env, warn if warn is not None else _default_warn)

    raw: dict[str, tuple[Any, str]] = {}  # key -> (value, name for messages)
    if config_file is not None:
        path = Path(config_file)
        for key, value in _read_file(path).items():
            raw[key] = (value, f"{key} (in {path})")
    env_values = {
        key: env[ENV_PREFIX + key.upper()]
        for key in SETTING_NAMES
        if env.get(ENV_PREFIX + key.upper(), "").strip() != ""
    }
    if {"client_secret", "client_secret_file"} & set(env_values):
        # The secret is one setting with two spellings: the environment's wins over the file's.
        raw.pop("client_secret", None)
        raw.pop("client_secret_file", None)
    for key, value in env_values.items():
        raw[key] = (value, ENV_PREFIX + key.upper())

    values: dict[str, Any] = {}
    for key, (value, name) in raw.items():
        parser = _PARSERS.get(key)
        if parser is None:
            continue  # secrets, below
        try:
            values[key] = parser(value)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None

    secret_text: str | None = None
    if "client_secret" in raw and "client_secret_file" in raw:
        raise ConfigError(
            f"{raw['client_secret'][1]}: set either the secret or {raw['client_secret_file'][1]},"
            " not both"
        )
    if "client_secret" in raw:
        value, name = raw["client_secret"]
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{name}: expected a non-empty string")
        secret_text = value.strip()
    elif "client_secret_file" in raw:
        value, name = raw["client_secret_file"]
        try:
            secret_text = _read_secret_file(name, value)
        except ValueError as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{name}: {exc}") from None

    shard_count = values.get("shard_count", 1)
    shard_ids = values.get("shard_id")
    if shard_ids is not None:
        for shard in shard_ids:
            if shard >= shard_count:
                name = raw["shard_id"][1]
                raise ConfigError(
                    f"{name}: shard id {shard} is outside 0..{shard_count - 1} "
                    f"({_source(raw, 'shard_count')} is {shard_count})"
                )
    http_addr = values["http_addr"] if "http_addr" in values else _http_addr(_DEFAULT_HTTP_ADDR)
    webhook_addr = values.get("webhook_addr") or _webhook_addr(_DEFAULT_WEBHOOK_ADDR)
    transport = values.get("transport", "websocket")
    if transport == "webhook":
        _check_webhook(raw, values, shard_count, shard_ids, http_addr, webhook_addr)
    return Settings(
        app_id=values.get("app_id"),
        client_secret=None if secret_text is None else Secret(secret_text),
        intents=values.get("intents", int(Intents.public_default())),
        shard_count=shard_count,
        shard_ids=shard_ids,
        http_addr=http_addr,
        liveness_grace=values.get("liveness_grace", 300.0),
        loop_lag_threshold=values.get("loop_lag_threshold", 2.0),
        log_format=values.get("log_format", "auto"),
        log_level=values.get("log_level", "INFO"),
        api_base=values.get("api_base", DEFAULT_API_BASE),
        token_url=values.get("token_url", DEFAULT_TOKEN_URL),
        gateway_url=values.get("gateway_url"),
        ack_probes=values.get("ack_probes", LivenessConfig().ack_probes),
        ws_ping=values.get("ws_ping", True),
        handler_queue_size=values.get("handler_queue_size", 1000),
        drain_timeout=values.get("drain_timeout", 10.0),
        state_dir=values["state_dir"] if "state_dir" in values else default_state_dir(env),
        session_max_age=values.get("session_max_age", 300.0),
        state_lock=values.get("state_lock", "fail"),
        checkpoint_interval=values.get("checkpoint_interval", 0.1),
        transport=transport,
        webhook_addr=webhook_addr,
        webhook_path=values.get("webhook_path", _DEFAULT_WEBHOOK_PATH),
        webhook_tls_cert=values.get("webhook_tls_cert"),
        webhook_tls_key=values.get("webhook_tls_key"),
        webhook_replay_window=values.get("webhook_replay_window", 300.0),
        webhook_max_body=values.get("webhook_max_body", 1 << 20),
        webhook_require_validation=values.get("webhook_require_validation", False),
        webhook_silence=values.get("webhook_silence"),
        trace_sample_ratio=values.get("trace_sample_ratio", 0.01),
        trace_slow_handler=values.get("trace_slow_handler", 1.0),
        status_page=values.get("status_page", True),
        sources=tuple((key, name) for key, (_, name) in sorted(raw.items())),
    )


def _check_webhook(
    raw: Mapping[str, tuple[Any, str]],
    values: Mapping[str, Any],
    shard_count: int,
    shard_ids: tuple[int, ...] | None,
    http_addr: tuple[str, int] | None,
    webhook_addr: tuple[str, int],
) -> None:
    """The combinations only the webhook transport forbids."""
    name = _source(raw, "webhook_addr")
    if shard_count != 1 or shard_ids not in (None, (0,)):
        raise ConfigError(
            f"{_source(raw, 'shard_count')}: the webhook transport has no shards "
            "(the platform posts every event to one URL); leave QQBOT_SHARD_COUNT at 1"
        )
    if http_addr is not None and webhook_addr[1] != 0 and webhook_addr[1] == http_addr[1]:
        hosts = {http_addr[0], webhook_addr[0]}
        if len(hosts) == 1 or hosts & {"0.0.0.0", "::", ""}:  # noqa: S104 - a comparison
            raise ConfigError(
                f"{name}: port {webhook_addr[1]} is the side port ({_source(raw, 'http_addr')});"
                " the receiver needs its own address: the side port must never be public"
            )
    if ("webhook_tls_cert" in values) != ("webhook_tls_key" in values):
        have = "webhook_tls_cert" if "webhook_tls_cert" in values else "webhook_tls_key"
        want = "webhook_tls_key" if have == "webhook_tls_cert" else "webhook_tls_cert"
        raise ConfigError(f"{_source(raw, have)}: TLS needs {_source(raw, want)} as well")


def _source(raw: Mapping[str, tuple[Any, str]], key: str) -> str:
    return raw[key][1] if key in raw else ENV_PREFIX + key.upper()


def _default_warn(message: str) -> None:
    logging.getLogger("qqbot_gateway.config").warning("%s", message)
