"""Settings for the service, from ``QQBOT_*`` environment variables and/or a TOML file.

Every setting is one row of :data:`SETTINGS` (name, parser, default, help): the loader, the
list below, ``qqbot-gateway run --help`` and the table in docs/configuration.md all come from
it (``python scripts/gen_docs.py`` rewrites that table; tests/test_config.py checks it). The
names are a public contract (Kubernetes manifests and operators' scripts use them).

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
import re
import textwrap
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
from qqbot_gateway.adapter.types import (
    DEFAULT_CHECKPOINT_INTERVAL,
    DEFAULT_HANDLER_QUEUE_SIZE,
    DEFAULT_MAX_BODY,
    DEFAULT_REPLAY_WINDOW,
    DEFAULT_SESSION_MAX_AGE,
    ClientConfig,
    LivenessConfig,
    Secret,
    TransportConfig,
    WebhookConfig,
)

if TYPE_CHECKING:
    from qqbot_gateway.telemetry import TelemetryConfig

__all__ = [
    "CLUSTER_SETTINGS",
    "ENV_PREFIX",
    "REMOVED_SETTINGS",
    "SETTINGS",
    "SETTING_NAMES",
    "ConfigError",
    "Setting",
    "Settings",
    "default_state_dir",
    "load_settings",
    "refuse_removed_env",
    "settings_help",
    "settings_markdown",
]

ENV_PREFIX: Final = "QQBOT_"

#: ``QQBOT_*`` variables that belong to other tools (the simulator, the test suite, the hermes
#: plugin, hermes's built-in QQ adapter: one ``.env`` often feeds both) or name the file itself:
#: no typo warning for these.
_OTHER_VARIABLES: Final = frozenset(
    {
        "QQBOT_CONFIG",
        # hermes's built-in QQ adapter's cron home channel.
        "QQBOT_HOME_CHANNEL",
        "QQBOT_HOME_CHANNEL_NAME",
        "QQBOT_HOME_CHANNEL_THREAD_ID",
    }
)
#: ``QQBOT_HERMES_*``: the hermes plugin's own settings (qqbot_gateway.integrations.hermes).
_OTHER_PREFIXES: Final = ("QQBOT_SIM_", "QQBOT_TEST_", "QQBOT_HERMES_")

#: Settings that no longer exist, with what replaces them: an error, not a warning, because
#: silently ignoring e.g. ``ws_ping_interval = 0`` would leave a layer on that was meant off.
REMOVED_SETTINGS: Final[dict[str, str]] = {
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
_DELIVERIES: Final = ("local", "stream")
#: The settings of cluster mode (Redis leases, the stream, workers): ``qqbot-gateway run`` and
#: ``worker`` read them; an embedding that runs one client of its own (the hermes plugin) refuses
#: them rather than ignore them.
CLUSTER_SETTINGS: Final = frozenset(
    {
        "redis_url",
        "lease_ttl",
        "delivery",
        "stream_claim_idle",
        "stream_max_len",
        "stream_group",
        "worker_concurrency",
        "stream_max_attempts",
        "stream_dedupe_window",
        "worker_name",
    }
)
#: Shard lease length. A dead owner holds its shards this long at most, so it is most of the
#: failover time: 10 s is a quarter of QQ's 41.25 s heartbeat interval (a takeover resumes well
#: inside the session's resume window and within the 0.5 H goal), and renewing every third of it
#: rides out a Redis hiccup of several seconds without giving the shard up. Measured: SIGKILL of
#: the owner to the standby's RESUMED takes 8.6 s (median; 0.21 H), benchmarks/bench_failover.md.
DEFAULT_LEASE_TTL: Final = 10.0
#: Below 1 s renewals (every third) would compete with the event path on a busy Redis.
MIN_LEASE_TTL: Final = 1.0
#: Above 10 minutes a dead owner would outlast QQ's resume window: failover would lose events.
MAX_LEASE_TTL: Final = 600.0
#: A worker's entry pending this long is taken over by another worker. 30 s: well past a
#: handler's ordinary run (an LLM call takes seconds), short against a consumer's restart.
DEFAULT_STREAM_CLAIM_IDLE: Final = 30.0
#: The stream's bound: entries not yet acknowledged by every consumer group. 100,000 events of
#: about 1 kB are 100 MB of Redis memory, and at 1,000 events/s a 100 s outage of every worker
#: before the gateway stops reading (the platform then keeps the rest for a resume).
DEFAULT_STREAM_MAX_LEN: Final = 100_000
#: The consumer group of ``worker`` (and the one ``run`` creates, so that events appended before
#: the first worker ever started are kept for it).
DEFAULT_STREAM_GROUP: Final = "handlers"
#: Events one worker process holds at once (read, in a handler, or awaiting its acknowledgement).
#: 64: an I/O-bound handler (an LLM call, a REST reply) overlaps its waits, and a flood of quick
#: events costs a few round trips per 64; CPU-bound handlers scale by processes instead.
DEFAULT_WORKER_CONCURRENCY: Final = 64
#: Deliveries of one entry before it goes to the dead-letter stream: a handler that failed 5
#: times, claim_idle apart, is failing on the event, not on a blip.
DEFAULT_STREAM_MAX_ATTEMPTS: Final = 5
#: How long a handled event's id is remembered per group. An hour: far past any redelivery
#: (claim_idle) and any platform replay of a resumed session (minutes).
DEFAULT_STREAM_DEDUPE_WINDOW: Final = 3600.0
#: 8443: one of the four ports QQ accepts in a callback URL (80, 443, 8080, 8443), and not the
#: side port's 8080.
_DEFAULT_WEBHOOK_ADDR: Final = "0.0.0.0:8443"
_DEFAULT_WEBHOOK_PATH: Final = WebhookConfig().path


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the setting and what is wrong."""


# --- parsers: raw value -> typed value, or ValueError with "expected ..., got ..." ----------


def _show(raw: Any) -> str:
    return "nothing" if raw is None else repr(raw)


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


def _integer_in(what: str, low: int, high: int | None = None) -> Callable[[Any], int]:
    """A parser of an integer in ``[low, high]``; ``what`` is the "expected ..." phrase."""

    def parse(raw: Any) -> int:
        value = _int(raw, what)
        if value < low or (high is not None and value > high):
            raise ValueError(f"expected {what}, got {_show(raw)}")
        return value

    return parse


def _number_in(
    what: str, low: float, high: float = math.inf, *, low_open: bool = False
) -> Callable[[Any], float]:
    """A parser of a finite number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""

    def parse(raw: Any) -> float:
        value = _number(raw, what)
        if value < low or (low_open and value == low) or value > high:
            raise ValueError(f"expected {what}, got {_show(raw)}")
        return value

    return parse


_positive_int = _integer_in("a positive integer", 1)
_ack_probes = _integer_in("an integer from 0 to 10", 0, 10)
_body_limit = _integer_in("a number of bytes >= 1024", 1024)
_positive_seconds = _number_in("a positive number of seconds", 0.0, low_open=True)
_non_negative_seconds = _number_in("a number of seconds >= 0", 0.0)
_ratio = _number_in("a number from 0 to 1", 0.0, 1.0)
_seconds_or_off = _number_in("a number of seconds (0 disables)", 0.0)


def _seconds_or_zero(raw: Any) -> float | None:
    value = _seconds_or_off(raw)
    return None if value == 0 else value


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


def _redis_url(raw: Any) -> Secret:
    from qqbot_gateway.cluster.connect import parse_redis_url

    text = _text(raw)
    parse_redis_url(text)  # ValueError with a reason that never holds the password
    return Secret(text)


def _lease_ttl(raw: Any) -> float:
    value = _number(raw, "seconds")
    if not MIN_LEASE_TTL <= value <= MAX_LEASE_TTL:
        raise ValueError(
            f"expected seconds between {MIN_LEASE_TTL:g} and {MAX_LEASE_TTL:g}, got {_show(raw)}"
        )
    return value


def _group_name(raw: Any) -> str:
    text = _text(raw)
    if len(text) > 64 or not all(c.isalnum() or c in "-_." for c in text):
        raise ValueError(f"expected up to 64 letters, digits, '-', '_' or '.', got {_show(raw)}")
    return text


_worker_concurrency = _integer_in("an integer from 1 to 1024", 1, 1024)
_max_attempts = _integer_in("an integer from 1 to 1000", 1, 1000)
_stream_max_len = _integer_in("an integer >= 100", 100)


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


# --- the settings table ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting: its TOML key (the variable is ``QQBOT_`` + the key upper-cased), the parser
    of a raw value (None: the loader handles it, the secrets), the typed default, the default
    as documented (Markdown; "" when there is none) and the help (Markdown)."""

    key: str
    parse: Callable[[Any], Any] | None
    default: Any
    shown_default: str
    help: str

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()


SETTINGS: Final[tuple[Setting, ...]] = (
    Setting(
        "app_id",
        _app_id,
        None,
        "(required)",
        "the bot's AppID",
    ),
    Setting(
        "client_secret",
        None,
        None,
        "(required, or the next one)",
        "the bot's AppSecret",
    ),
    Setting(
        "client_secret_file",
        None,
        None,
        "",
        "a file holding the secret (whitespace stripped); for Kubernetes secrets mounted as files",
    ),
    Setting(
        "intents",
        _intents,
        int(Intents.public_default()),
        "`GUILDS,DIRECT_MESSAGE,GROUP_AND_C2C_EVENT,PUBLIC_GUILD_MESSAGES`",
        (
            "an integer (`1107300353`, `0x...`) or intent names separated by commas (`GUILDS`, "
            "`GUILD_MEMBERS`, `GUILD_MESSAGES`, `GUILD_MESSAGE_REACTIONS`, `DIRECT_MESSAGE`, "
            "`OPEN_FORUMS_EVENT`, `AUDIO_OR_LIVE_CHANNEL_MEMBER`, `GROUP_AND_C2C_EVENT`, "
            "`INTERACTION`, `MESSAGE_AUDIT`, `FORUMS_EVENT`, `AUDIO_ACTION`, "
            "`PUBLIC_GUILD_MESSAGES`)"
        ),
    ),
    Setting(
        "shard_count",
        _positive_int,
        1,
        "`1`",
        "total number of shards of the bot",
    ),
    Setting(
        "shard_id",
        _shard_ids,
        None,
        "all shards",
        "comma-separated shard ids this process runs (`0`, or `0,2`)",
    ),
    Setting(
        "http_addr",
        _http_addr,
        _http_addr(_DEFAULT_HTTP_ADDR),
        "`0.0.0.0:8080`",
        (
            "side server `host:port` (`[::]:8080` for IPv6, port 0 picks a free one); `off` "
            "disables "
            "it"
        ),
    ),
    Setting(
        "liveness_grace",
        _positive_seconds,
        300.0,
        "`300`",
        (
            "seconds without a live session (with `QQBOT_DELIVERY=stream`: of failing appends to "
            "Redis) before `/healthz` fails (a QQ or Redis outage must not become a restart storm)"
        ),
    ),
    Setting(
        "loop_lag_threshold",
        _positive_seconds,
        2.0,
        "`2`",
        "event loop lag in seconds above which `/healthz` fails",
    ),
    Setting(
        "log_format",
        _choice(_LOG_FORMATS),
        "auto",
        "`auto`",
        "`json` lines, `console`, or `auto` (console on a terminal, JSON otherwise)",
    ),
    Setting(
        "log_level",
        _choice(_LOG_LEVELS, upper=True),
        "INFO",
        "`INFO`",
        "`DEBUG`, `INFO`, `WARNING`, `ERROR` or `CRITICAL`",
    ),
    Setting(
        "api_base",
        _url(("http", "https")),
        DEFAULT_API_BASE,
        "`https://api.sgroup.qq.com`",
        (
            "OpenAPI base URL (the sandbox is `https://sandbox.api.sgroup.qq.com`; proxies; the "
            "simulator)"
        ),
    ),
    Setting(
        "token_url",
        _url(("http", "https")),
        DEFAULT_TOKEN_URL,
        "`https://bots.qq.com/app/getAppAccessToken`",
        "access token endpoint",
    ),
    Setting(
        "gateway_url",
        _url(("ws", "wss")),
        None,
        "(from `GET /gateway/bot`)",
        "connect to this `wss://` URL and skip `GET /gateway/bot`",
    ),
    Setting(
        "ack_probes",
        _ack_probes,
        LivenessConfig().ack_probes,
        "`2`",
        (
            "extra heartbeats sent while one waits for its ACK (inside its deadline, 0.4 heartbeat "
            "intervals by default); `0`: none"
        ),
    ),
    Setting(
        "ws_ping",
        _bool,
        True,
        "`on`",
        (
            "the WebSocket ping layer (probes a quiet link every 0.05 intervals, dead after "
            "0.3-0.45 "
            "intervals without a frame, once the server has answered a ping); `off` switches it off"
        ),
    ),
    Setting(
        "handler_queue_size",
        _positive_int,
        DEFAULT_HANDLER_QUEUE_SIZE,
        f"`{DEFAULT_HANDLER_QUEUE_SIZE}`",
        (
            "bounded handler queue per shard; when full, intake pauses and the session resumes "
            "later "
            "(no loss)"
        ),
    ),
    Setting(
        "drain_timeout",
        _non_negative_seconds,
        10.0,
        "`10`",
        "seconds queued events get to be handled at shutdown",
    ),
    Setting(
        "state_dir",
        _state_dir,
        None,
        "`$XDG_STATE_HOME/qqbot-gateway` (`~/.local/state/qqbot-gateway`)",
        (
            "session store: one state file and one lock per shard under `<dir>/<app id>/`; `off` "
            "disables it (sessions then end with the process). The XDG state directory rather "
            "than the"
            " working directory: a session belongs to the bot, so every process of one bot on a "
            "machine finds the same state and lock wherever it starts; containers point it at a "
            "volume"
            " (`/var/lib/qqbot-gateway` in the image)"
        ),
    ),
    Setting(
        "session_max_age",
        _positive_seconds,
        DEFAULT_SESSION_MAX_AGE,
        f"`{DEFAULT_SESSION_MAX_AGE:g}`",
        (
            "seconds a stored session is worth resuming: covers a restart, a rolling update and "
            "the kubelet's crash-loop back-off (capped at 300 s); QQ documents no resume window, "
            "and a refused resume costs only one round trip"
        ),
    ),
    Setting(
        "state_lock",
        _choice(("fail", "wait")),
        "fail",
        "`fail`",
        (
            "another live process holds a shard's state: `fail` (exit 2 naming its pid) or "
            "`wait` for it to exit"
        ),
    ),
    Setting(
        "redis_url",
        _redis_url,
        None,
        "unset (no Redis)",
        (
            "cluster mode: `redis://`, `rediss://`, `unix://` or `redis+sentinel://h1,h2/service` "
            "(needs the `redis` extra); shard leases with fencing, the session store, shared "
            "dedupe and the event stream live there (see docs/cluster.md). Unset: the file "
            "store, one process, no Redis anywhere. The password is never shown"
        ),
    ),
    Setting(
        "lease_ttl",
        _lease_ttl,
        DEFAULT_LEASE_TTL,
        f"`{DEFAULT_LEASE_TTL:g}`",
        (
            "with `QQBOT_REDIS_URL`: seconds a shard lease lasts without renewal; bounds how "
            "long a dead owner holds a shard (see docs/cluster.md for the choice)"
        ),
    ),
    Setting(
        "delivery",
        _choice(_DELIVERIES),
        "local",
        "`local`",
        (
            "`local`: handlers run in this process; `stream` (needs `QQBOT_REDIS_URL`): every "
            "accepted event is appended to the app's Redis stream for `qqbot-gateway worker`"
        ),
    ),
    Setting(
        "stream_claim_idle",
        _positive_seconds,
        DEFAULT_STREAM_CLAIM_IDLE,
        f"`{DEFAULT_STREAM_CLAIM_IDLE:g}`",
        (
            "workers, and webhook replicas on Redis: seconds an entry stays pending with a dead "
            "or stuck consumer before another one claims it (a worker claims at a second look "
            "2 s later)"
        ),
    ),
    Setting(
        "stream_max_len",
        _stream_max_len,
        DEFAULT_STREAM_MAX_LEN,
        f"`{DEFAULT_STREAM_MAX_LEN}`",
        (
            "`stream` delivery: the most entries the stream holds that some consumer group has "
            "not acknowledged; at the bound `run` stops appending, its handler queue fills and "
            "the session resumes later (no loss, as with a full queue today). Acknowledged "
            "entries are trimmed; unacknowledged ones never are"
        ),
    ),
    Setting(
        "stream_group",
        _group_name,
        DEFAULT_STREAM_GROUP,
        f"`{DEFAULT_STREAM_GROUP}`",
        (
            "the consumer group of `worker`: every group sees every event once; workers of one "
            "group share the events. `run` creates this group when it creates the stream"
        ),
    ),
    Setting(
        "worker_concurrency",
        _worker_concurrency,
        DEFAULT_WORKER_CONCURRENCY,
        f"`{DEFAULT_WORKER_CONCURRENCY}`",
        (
            "`worker`: events one process holds at once (in its handlers or awaiting their "
            "acknowledgement)"
        ),
    ),
    Setting(
        "stream_max_attempts",
        _max_attempts,
        DEFAULT_STREAM_MAX_ATTEMPTS,
        f"`{DEFAULT_STREAM_MAX_ATTEMPTS}`",
        (
            "`worker`: deliveries of one entry (a handler raised, or its worker died) before it "
            "moves to the dead-letter stream (counted, alerted; never dropped)"
        ),
    ),
    Setting(
        "stream_dedupe_window",
        _positive_seconds,
        DEFAULT_STREAM_DEDUPE_WINDOW,
        f"`{DEFAULT_STREAM_DEDUPE_WINDOW:g}`",
        (
            "`worker`: seconds a handled event id is remembered per group in Redis, so a "
            "redelivered or replayed copy is acknowledged without reaching a handler again"
        ),
    ),
    Setting(
        "worker_name",
        _group_name,
        None,
        "`<hostname>-<pid>`",
        ("`worker`: the consumer name in the group (stable per process; a pod name in Kubernetes)"),
    ),
    Setting(
        "checkpoint_interval",
        _non_negative_seconds,
        DEFAULT_CHECKPOINT_INTERVAL,
        f"`{DEFAULT_CHECKPOINT_INTERVAL:g}`",
        (
            "seconds between checkpoint writes (one batch per window); bounds the events a "
            "SIGKILL can hand to a handler twice"
        ),
    ),
    Setting(
        "transport",
        _choice(_TRANSPORTS),
        "websocket",
        "`websocket`",
        (
            "`websocket` (the gateway session) or `webhook` (QQ posts signed HTTP callbacks; see "
            "[webhook.md](webhook.md))"
        ),
    ),
    Setting(
        "webhook_addr",
        _webhook_addr,
        _webhook_addr(_DEFAULT_WEBHOOK_ADDR),
        "`0.0.0.0:8443`",
        (
            "the callback receiver's `host:port`; never the side port (the side server must "
            "never be "
            "public)"
        ),
    ),
    Setting(
        "webhook_path",
        _webhook_path,
        _DEFAULT_WEBHOOK_PATH,
        "`/qqbot/callback`",
        "the callback path (the URL configured on the platform ends with it)",
    ),
    Setting(
        "webhook_tls_cert",
        _readable_file,
        None,
        "(plain HTTP)",
        (
            "PEM certificate chain: the receiver serves HTTPS itself (direct exposure); leave "
            "unset "
            "behind an ingress or reverse proxy that terminates TLS"
        ),
    ),
    Setting(
        "webhook_tls_key",
        _readable_file,
        None,
        "",
        "PEM private key for `QQBOT_WEBHOOK_TLS_CERT`",
    ),
    Setting(
        "webhook_replay_window",
        _positive_seconds,
        DEFAULT_REPLAY_WINDOW,
        f"`{DEFAULT_REPLAY_WINDOW:g}`",
        (
            "seconds a callback's `X-Signature-Timestamp` may differ from our clock before it is "
            "refused as stale"
        ),
    ),
    Setting(
        "webhook_max_body",
        _body_limit,
        DEFAULT_MAX_BODY,
        f"`{DEFAULT_MAX_BODY}`",
        "largest callback body in bytes (413 above it)",
    ),
    Setting(
        "webhook_require_validation",
        _bool,
        False,
        "`false`",
        "`true`: `/readyz` waits for the platform's op 13 validation request",
    ),
    Setting(
        "webhook_silence",
        _silence,
        None,
        "`0` (off)",
        (
            "seconds without a validly signed callback after which `/readyz` reports the "
            "silence; off "
            "by default because a quiet bot is not a broken bot"
        ),
    ),
    Setting(
        "trace_sample_ratio",
        _ratio,
        0.01,
        "`0.01`",
        (
            "with a trace exporter configured: the share of dispatched events traced (`0`..`1`; "
            "each "
            "traced event costs the process tens of µs, so 1 % by default); connection attempts, "
            "handshakes, heartbeats, replayed events and events whose handler failed or was slow "
            "are "
            "always traced"
        ),
    ),
    Setting(
        "trace_slow_handler",
        _positive_seconds,
        1.0,
        "`1`",
        "seconds: an event whose handler runs this long is traced even when sampled out",
    ),
    Setting(
        "status_page",
        _bool,
        True,
        "`on`",
        (
            "`off` removes the status page (`/`, `/status`, `/status.json`) from the side server, "
            "leaving the probes and `/metrics`"
        ),
    ),
)

#: Every setting, by its TOML key.
SETTING_NAMES: Final[tuple[str, ...]] = tuple(s.key for s in SETTINGS)
_BY_KEY: Final[dict[str, Setting]] = {s.key: s for s in SETTINGS}
#: Setting key -> :class:`Settings` field, where they differ.
_FIELDS: Final = {"shard_id": "shard_ids"}
#: Settings whose value :func:`load_settings` works out itself (defaults from the environment,
#: values checked against each other).
_LOADER_FILLS: Final = frozenset({"http_addr", "state_dir", "transport", "webhook_addr"})


#: The typed default of each setting, by key (the :class:`Settings` field defaults).
_DEFAULTS: Final[dict[str, Any]] = {s.key: s.default for s in SETTINGS}


def _plain(markdown: str) -> str:
    """Help text for a terminal: no backticks, links reduced to their text."""
    return re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", markdown).replace("`", "")


def settings_help(width: int = 96) -> str:
    """The settings as plain text: the ``--help`` epilog and this module's docstring."""
    lines: list[str] = []
    for s in SETTINGS:
        shown = _plain(s.shown_default)
        if shown and not shown.startswith("("):
            shown = f"(default: {shown})"
        lines.append(f"  {s.env}  {shown}".rstrip())
        lines.extend(
            textwrap.wrap(
                _plain(s.help), width, initial_indent="      ", subsequent_indent="      "
            )
        )
    return "\n".join(lines)


def settings_markdown() -> str:
    """The settings table of docs/configuration.md."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for s in SETTINGS:
        default = f" {s.shown_default} " if s.shown_default else " "
        rows.append(f"| `{s.env}` |{default}| {s.help} |")
    return "\n".join(rows) + "\n"


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated service settings. Build with :func:`load_settings`.

    ``client_secret`` is a :class:`~qqbot_gateway.adapter.client.Secret` (never shown), or None
    when not configured (``demo`` and ``simulate`` need none).
    """

    app_id: str | None = _DEFAULTS["app_id"]
    client_secret: Secret | None = _DEFAULTS["client_secret"]
    intents: int = _DEFAULTS["intents"]
    shard_count: int = _DEFAULTS["shard_count"]
    #: The shards this process runs; None runs all of ``range(shard_count)``.
    shard_ids: tuple[int, ...] | None = _DEFAULTS["shard_id"]
    #: (host, port) of the side server; None when ``QQBOT_HTTP_ADDR=off``.
    http_addr: tuple[str, int] | None = _DEFAULTS["http_addr"]
    liveness_grace: float = _DEFAULTS["liveness_grace"]
    loop_lag_threshold: float = _DEFAULTS["loop_lag_threshold"]
    log_format: str = _DEFAULTS["log_format"]
    log_level: str = _DEFAULTS["log_level"]
    api_base: str = _DEFAULTS["api_base"]
    token_url: str = _DEFAULTS["token_url"]
    gateway_url: str | None = _DEFAULTS["gateway_url"]
    ack_probes: int = _DEFAULTS["ack_probes"]
    #: False: the WebSocket ping layer is off (``QQBOT_WS_PING=off``).
    ws_ping: bool = _DEFAULTS["ws_ping"]
    handler_queue_size: int = _DEFAULTS["handler_queue_size"]
    drain_timeout: float = _DEFAULTS["drain_timeout"]
    #: Session store directory; None when ``QQBOT_STATE_DIR=off``. :func:`load_settings`
    #: fills in the default (:func:`default_state_dir`).
    state_dir: str | None = _DEFAULTS["state_dir"]
    session_max_age: float = _DEFAULTS["session_max_age"]
    state_lock: str = _DEFAULTS["state_lock"]
    checkpoint_interval: float = _DEFAULTS["checkpoint_interval"]
    #: Cluster mode (``QQBOT_REDIS_URL``): None without Redis. A Secret: the URL may hold a
    #: password; :func:`qqbot_gateway.cluster.connect.redact_url` shows it safely.
    redis_url: Secret | None = _DEFAULTS["redis_url"]
    lease_ttl: float = _DEFAULTS["lease_ttl"]
    delivery: str = _DEFAULTS["delivery"]
    stream_claim_idle: float = _DEFAULTS["stream_claim_idle"]
    stream_max_len: int = _DEFAULTS["stream_max_len"]
    stream_group: str = _DEFAULTS["stream_group"]
    worker_concurrency: int = _DEFAULTS["worker_concurrency"]
    stream_max_attempts: int = _DEFAULTS["stream_max_attempts"]
    stream_dedupe_window: float = _DEFAULTS["stream_dedupe_window"]
    #: None: ``<hostname>-<pid>``.
    worker_name: str | None = _DEFAULTS["worker_name"]
    transport: str = _DEFAULTS["transport"]
    webhook_addr: tuple[str, int] = _DEFAULTS["webhook_addr"]
    webhook_path: str = _DEFAULTS["webhook_path"]
    webhook_tls_cert: str | None = _DEFAULTS["webhook_tls_cert"]
    webhook_tls_key: str | None = _DEFAULTS["webhook_tls_key"]
    webhook_replay_window: float = _DEFAULTS["webhook_replay_window"]
    webhook_max_body: int = _DEFAULTS["webhook_max_body"]
    webhook_require_validation: bool = _DEFAULTS["webhook_require_validation"]
    webhook_silence: float | None = _DEFAULTS["webhook_silence"]
    #: Tracing (only with an exporter, ``OTEL_*``): share of events traced, and the handler
    #: duration past which an event is traced anyway (failures and replays always are).
    trace_sample_ratio: float = _DEFAULTS["trace_sample_ratio"]
    trace_slow_handler: float = _DEFAULTS["trace_slow_handler"]
    #: The status page (``/``, ``/status``, ``/status.json``) on the side server.
    status_page: bool = _DEFAULTS["status_page"]
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


if __doc__ is not None:  # None under ``python -OO``
    __doc__ += "\nThe settings::\n\n" + settings_help(92) + "\n"


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
        if key in REMOVED_SETTINGS:
            raise ConfigError(f"{key} (in {path}): {REMOVED_SETTINGS[key]}")
        if key not in SETTING_NAMES:
            hint = _close_match(key, SETTING_NAMES)
            raise ConfigError(
                f"{key} (in {path}): unknown setting{hint}; known: {', '.join(SETTING_NAMES)}"
            )
    return data


def _close_match(name: str, options: tuple[str, ...]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.75)
    return f" (did you mean {match[0]}?)" if match else ""


def refuse_removed_env(env: Mapping[str, str]) -> None:
    """Raise :class:`ConfigError` for a retired ``QQBOT_*`` variable that is set."""
    for key, why in REMOVED_SETTINGS.items():
        if env.get(ENV_PREFIX + key.upper(), "").strip():
            raise ConfigError(f"{ENV_PREFIX + key.upper()}: {why}")


def _warn_unknown_env(env: Mapping[str, str], warn: Callable[[str], None]) -> None:
    known = {ENV_PREFIX + key.upper() for key in SETTING_NAMES}
    refuse_removed_env(env)
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
        parser = _BY_KEY[key].parse
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

    shard_count = values.get("shard_count", _DEFAULTS["shard_count"])
    shard_ids = values.get("shard_id")
    if shard_ids is not None:
        for shard in shard_ids:
            if shard >= shard_count:
                name = raw["shard_id"][1]
                raise ConfigError(
                    f"{name}: shard id {shard} is outside 0..{shard_count - 1} "
                    f"({_source(raw, 'shard_count')} is {shard_count})"
                )
    http_addr = values.get("http_addr", _DEFAULTS["http_addr"])
    webhook_addr = values.get("webhook_addr", _DEFAULTS["webhook_addr"])
    transport = values.get("transport", _DEFAULTS["transport"])
    if values.get("delivery") == "stream" and "redis_url" not in values:
        raise ConfigError(
            f"{_source(raw, 'delivery')}: stream delivery needs QQBOT_REDIS_URL "
            "(the stream lives in Redis)"
        )
    if transport == "webhook":
        _check_webhook(raw, values, shard_count, shard_ids, http_addr, webhook_addr)
    fields = {
        _FIELDS.get(s.key, s.key): values.get(s.key, s.default)
        for s in SETTINGS
        if s.parse is not None and s.key not in _LOADER_FILLS
    }
    return Settings(
        **fields,
        client_secret=None if secret_text is None else Secret(secret_text),
        http_addr=http_addr,
        state_dir=values["state_dir"] if "state_dir" in values else default_state_dir(env),
        transport=transport,
        webhook_addr=webhook_addr,
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
