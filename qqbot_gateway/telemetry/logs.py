"""Logging: structlog for our lines, the same rendering for stdlib lines, redaction for both.

``configure_logging()`` sets up, once per process:

* JSON lines when the stream is not a TTY (or ``fmt="json"``), structlog's console renderer on a
  TTY (or ``fmt="console"``);
* stdlib ``logging`` (the adapter, aiohttp, user code) rendered the same way through
  :class:`structlog.stdlib.ProcessorFormatter`, with ``extra=`` fields kept as keys;
* on every line: timestamp, level, logger, ``shard`` / ``session_id`` / ``connection_id`` of the
  current task (:func:`qqbot_gateway.adapter.context.log_fields`), and the current OpenTelemetry
  ``trace_id`` / ``span_id``;
* redaction, last before rendering (so it also covers rendered exceptions): values of keys that
  name a credential, the secret values registered with :func:`add_secrets`, ``QQBot <token>`` /
  ``Bearer <token>`` and ``access_token=...``-style pairs in any string;
* exceptions rendered without frame locals.

:class:`LifecycleLogger` turns lifecycle events into log lines the adapter does not already write
(the adapter logs zombies, disconnects, fatal shards, ready/resumed and handler failures itself):
protocol violations and token failures at WARNING, a shard stopped at INFO, per-frame and
per-heartbeat detail at DEBUG only.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, Final, Literal, TextIO

import structlog
from opentelemetry import trace
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor, WrappedLogger

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter.context import log_fields

__all__ = [
    "REDACTED",
    "LifecycleLogger",
    "Redactor",
    "add_secrets",
    "add_shard_context",
    "add_trace_context",
    "configure_logging",
    "redactor",
]

REDACTED: Final = "[REDACTED]"

#: A key whose lowercased name contains one of these holds a credential.
_SENSITIVE_KEY_PARTS: Final = (
    "token",
    "secret",
    "authorization",
    "password",
    "passwd",
    "cookie",
    "api_key",
    "apikey",
    "credential",
    "signature",
)
#: ``QQBot <token>``, ``Bearer <token>``, ``Basic <b64>``: the scheme stays, the token goes.
_AUTH_SCHEME_RE: Final = re.compile(r"(?i)\b(QQBot|Bearer|Basic)(\s+)[A-Za-z0-9._~+/=\-]+")
#: ``access_token=...`` in a query string, ``"clientSecret": "..."`` in JSON, ``token: ...``.
_PAIR_RE: Final = re.compile(
    r"(?i)((?:access_?token|refresh_?token|client_?secret|app_?secret|secret|token|password|"
    r"passwd|authorization|api_?key|signature)[\"']?\s*[=:]\s*[\"']?)([^\"'&\s,;}\]]+)"
)
#: Secrets shorter than this are not matched literally (they would redact ordinary words).
_MIN_SECRET_LEN: Final = 4


class Redactor:
    """Removes credentials from log event dicts and from any text. Thread-safe to update."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._literal: re.Pattern[str] | None = None
        self._lock = threading.Lock()
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        with self._lock:
            for secret in secrets:
                if isinstance(secret, str) and len(secret) >= _MIN_SECRET_LEN:
                    self._secrets.add(secret)
            if self._secrets:
                alternatives = sorted(self._secrets, key=len, reverse=True)
                self._literal = re.compile("|".join(re.escape(s) for s in alternatives))

    def text(self, text: str) -> str:
        literal = self._literal
        if literal is not None:
            text = literal.sub(REDACTED, text)
        text = _AUTH_SCHEME_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
        return _PAIR_RE.sub(lambda m: m.group(1) + REDACTED, text)

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {k: self._keyed(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        if isinstance(value, bytes | bytearray):
            return self.text(bytes(value).decode("utf-8", "replace"))
        if value is None or isinstance(value, bool | int | float):
            return value
        return self.text(str(value))

    def _keyed(self, key: str, value: Any) -> Any:
        if value is not None and not isinstance(value, bool | int | float) and _sensitive(key):
            return REDACTED
        return self.value(value)

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        for key, value in list(event_dict.items()):
            event_dict[key] = self._keyed(key, value)
        return event_dict


def _sensitive(key: str) -> bool:
    lowered = key.lower()
    return any(part in lowered for part in _SENSITIVE_KEY_PARTS)


#: The process-wide redactor used by the logging pipeline and the health bodies.
_REDACTOR = Redactor()


def redactor() -> Redactor:
    return _REDACTOR


def add_secrets(*secrets: str) -> None:
    """Register secret values (client secret, access tokens) to remove from every log line."""
    _REDACTOR.add(*secrets)


def add_shard_context(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """``shard``, ``session_id``, ``connection_id`` of the current task (explicit keys win)."""
    for key, value in log_fields().items():
        event_dict.setdefault(key, value)
    return event_dict


def add_trace_context(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """``trace_id`` / ``span_id`` of the current OpenTelemetry span, if there is one."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict.setdefault("trace_id", trace.format_trace_id(ctx.trace_id))
        event_dict.setdefault("span_id", trace.format_span_id(ctx.span_id))
    return event_dict


_HANDLER_MARK: Final = "_qqbot_gateway_handler"

Format = Literal["auto", "json", "console"]


def configure_logging(
    fmt: Format = "auto",
    level: int | str = "INFO",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> logging.Handler:
    """Configure structlog and stdlib logging for the process; returns the installed handler.

    Calling it again replaces the handler it installed before (never one another library
    installed). ``secrets`` are added to the redactor (see :func:`add_secrets`).
    """
    if fmt not in ("auto", "json", "console"):
        raise ValueError(f"unknown log format {fmt!r} (auto, json or console)")
    out: TextIO = stream if stream is not None else sys.stderr
    add_secrets(*secrets)
    isatty = getattr(out, "isatty", None)
    console = fmt == "console" or (fmt == "auto" and callable(isatty) and bool(isatty()))
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_shard_context,
        add_trace_context,
    ]
    exceptions: Processor
    renderer: Processor
    if console:
        exceptions = structlog.processors.format_exc_info
        renderer = structlog.dev.ConsoleRenderer(
            colors=callable(isatty) and bool(isatty()),
            exception_formatter=structlog.dev.plain_traceback,
        )
    else:
        exceptions = structlog.processors.ExceptionRenderer(
            ExceptionDictTransformer(show_locals=False)
        )
        renderer = structlog.processors.JSONRenderer(default=str)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.StackInfoRenderer(),
            exceptions,
            _REDACTOR,
            renderer,
        ],
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    return handler


class LifecycleLogger:
    """Lifecycle events -> log lines the adapter does not write itself (see module doc)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("qqbot_gateway.telemetry")

    def observe(self, event: ev.LifecycleEvent) -> None:
        log = self.log
        shard = event.shard
        if isinstance(event, ev.ProtocolViolation):
            log.warning(
                "shard %s: protocol violation: %s",
                shard,
                event.detail,
                extra=_extra(shard, detail=event.detail),
            )
        elif isinstance(event, ev.SupervisorStopped):
            if event.reason == "shutdown":
                log.info("shard %s stopped", shard, extra=_extra(shard, reason=event.reason))
        elif log.isEnabledFor(logging.DEBUG):
            self._debug(event)

    def _debug(self, event: ev.LifecycleEvent) -> None:
        shard = event.shard
        fields: dict[str, Any]
        if isinstance(event, ev.FrameReceived):
            message, fields = (
                "frame received",
                {"op": event.op, "event_type": event.event_type, "size": event.size},
            )
        elif isinstance(event, ev.HeartbeatSent):
            message, fields = "heartbeat sent", {"seq": event.seq, "unacked": event.unacked}
        elif isinstance(event, ev.HeartbeatAcked):
            message, fields = "heartbeat acknowledged", {"rtt": round(event.rtt, 6)}
        elif isinstance(event, ev.ConnectAttempt):
            message, fields = "connecting", {"attempt": event.attempt, "resume": event.resume}
        elif isinstance(event, ev.Connected):
            message, fields = (
                "websocket open",
                {"connection_id": event.connection_id, "url": event.url},
            )
        elif isinstance(event, ev.HelloReceived):
            message, fields = "hello received", {"heartbeat_interval": event.heartbeat_interval}
        elif isinstance(event, ev.IdentifySent):
            message, fields = "identify sent", {"intents": event.intents}
        elif isinstance(event, ev.ResumeSent):
            message, fields = "resume sent", {"seq": event.seq}
        elif isinstance(event, ev.StateChanged):
            message, fields = "state changed", {"old": event.old.value, "new": event.new.value}
        elif isinstance(event, ev.ReconnectScheduled):
            message, fields = (
                "reconnect scheduled",
                {
                    "reason": event.reason,
                    "delay": round(event.delay, 3),
                    "mode": event.mode,
                },
            )
        elif isinstance(event, ev.EventDispatched):
            message, fields = (
                "event dispatched",
                {
                    "event_type": event.event_type,
                    "seq": event.seq,
                    "replayed": event.replayed,
                },
            )
        elif isinstance(event, ev.DuplicateDropped):
            message, fields = (
                "duplicate event dropped",
                {"event_type": event.event_type, "seq": event.seq},
            )
        elif isinstance(event, ev.TokenRefreshed):
            message, fields = (
                "access token refreshed",
                {"expires_in": event.expires_in, "forced": event.forced},
            )
        else:
            return
        if shard is None:  # process-wide events (access tokens)
            self.log.debug("%s", message, extra=_extra(shard, **fields))
        else:
            self.log.debug("shard %s: %s", shard, message, extra=_extra(shard, **fields))


def _extra(shard: int | None, **fields: Any) -> MutableMapping[str, Any]:
    if shard is not None:
        fields["shard"] = shard
    return fields
