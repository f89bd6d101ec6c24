"""Logging: JSON lines, stdlib lines through structlog, shard/trace context, redaction."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter.context import ShardContext, current_shard
from qqbot_gateway.telemetry import configure_logging
from qqbot_gateway.telemetry.logs import REDACTED, LifecycleLogger, Redactor

from .test_telemetry_support import SECRET


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = configure_logging(fmt="json", level="DEBUG", secrets=[SECRET], stream=out)
    yield out
    logging.getLogger().removeHandler(handler)
    structlog.reset_defaults()


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def test_redactor_keys_values_patterns() -> None:
    r = Redactor([SECRET])
    assert r.text(f"secret is {SECRET}!") == f"secret is {REDACTED}!"
    assert r.text("Authorization: QQBot abc.DEF-123") == f"Authorization: {REDACTED} {REDACTED}"
    assert r.text("header Bearer eyJhbGciOi.x") == f"header Bearer {REDACTED}"
    assert r.text("GET /ws?access_token=AAA&x=1") == f"GET /ws?access_token={REDACTED}&x=1"
    assert r.text('{"clientSecret": "zzz999", "appId": "1"}') == (
        f'{{"clientSecret": "{REDACTED}", "appId": "1"}}'
    )
    assert r.text("reason=token_error shard=0") == "reason=token_error shard=0"
    redacted = r.value(
        {
            "token": "t0k3n",
            "nested": {"password": "pw", "ok": "fine"},
            "expires_in": 7200,
            "list": [f"x {SECRET}"],
        }
    )
    assert redacted == {
        "token": REDACTED,
        "nested": {"password": REDACTED, "ok": "fine"},
        "expires_in": 7200,
        "list": [f"x {REDACTED}"],
    }


def test_structlog_processor_with_capture() -> None:
    r = Redactor([SECRET])
    with structlog.testing.capture_logs(processors=[r]) as logs:
        structlog.get_logger().info(f"fetched with {SECRET}", authorization="QQBot x", n=1)
    assert logs == [
        {
            "event": f"fetched with {REDACTED}",
            "authorization": REDACTED,
            "n": 1,
            "log_level": "info",
        }
    ]


def test_json_lines_for_structlog_and_stdlib(stream: io.StringIO) -> None:
    structlog.get_logger("app").info("hello", client_secret=SECRET, url="wss://x/?token=abc")
    token = current_shard.set(ShardContext(2, session_id="s-1", connection_id="c-9"))
    try:
        logging.getLogger("qqbot_gateway.supervisor").warning(
            "shard %d disconnected (%s)", 2, "ack_timeout", extra={"reason": "ack_timeout"}
        )
    finally:
        current_shard.reset(token)
    first, second = lines(stream)
    assert first["event"] == "hello" and first["client_secret"] == REDACTED
    assert first["url"] == f"wss://x/?token={REDACTED}"
    assert first["level"] == "info" and "timestamp" in first
    assert second["event"] == "shard 2 disconnected (ack_timeout)"
    assert second["level"] == "warning" and second["logger"] == "qqbot_gateway.supervisor"
    assert second["reason"] == "ack_timeout"
    assert (second["shard"], second["session_id"], second["connection_id"]) == (2, "s-1", "c-9")
    assert SECRET not in stream.getvalue()


def test_trace_ids_on_lines(stream: io.StringIO) -> None:
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("x") as span:
        logging.getLogger("user").info("in a span")
    (line,) = lines(stream)
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert len(str(line["span_id"])) == 16


def test_exceptions_redacted_without_locals(stream: io.StringIO) -> None:
    def fail() -> None:
        access_token = "tok-SHOULD-NOT-APPEAR"  # a local: must never be rendered
        raise RuntimeError(f"refused {SECRET} Authorization: QQBot {access_token}")

    try:
        fail()
    except RuntimeError:
        logging.getLogger("qqbot_gateway.client").exception("token fetch failed")
    text = stream.getvalue()
    assert SECRET not in text and "tok-SHOULD-NOT-APPEAR" not in text
    (line,) = lines(stream)
    assert "RuntimeError" in json.dumps(line["exception"])
    frames = [fr for exc in line["exception"] for fr in exc["frames"]]  # type: ignore[attr-defined]
    assert frames and all(not fr.get("locals") for fr in frames)


def test_console_renderer_redacts(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    handler = configure_logging(fmt="console", level="INFO", secrets=[SECRET], stream=out)
    try:
        try:
            raise ValueError(f"bad {SECRET}")
        except ValueError:
            logging.getLogger("x").exception("boom password=%s", "pw123456")
    finally:
        logging.getLogger().removeHandler(handler)
        structlog.reset_defaults()
    text = out.getvalue()
    assert "boom" in text and "ValueError" in text
    assert SECRET not in text and "pw123456" not in text


def test_auto_is_json_when_not_a_tty(stream: io.StringIO) -> None:
    out = io.StringIO()
    handler = configure_logging(fmt="auto", stream=out)
    try:
        logging.getLogger("x").warning("w")
    finally:
        logging.getLogger().removeHandler(handler)
    assert json.loads(out.getvalue())["event"] == "w"
    with pytest.raises(ValueError, match="unknown log format"):
        configure_logging(fmt="xml")  # type: ignore[arg-type]


def test_lifecycle_logger_levels(caplog: pytest.LogCaptureFixture) -> None:
    lifelog = LifecycleLogger()
    caplog.set_level(logging.INFO, logger="qqbot_gateway.telemetry")
    lifelog.observe(ev.FrameReceived(shard=0, monotonic=1.0, op=11, event_type=None, size=9))
    lifelog.observe(
        ev.ZombieDetected(
            shard=0,
            monotonic=1.0,
            reason="ack_timeout",
            unacked=2,
            idle_for=1.0,
            heartbeat_interval=1.0,
        )
    )  # adapter logs it
    lifelog.observe(ev.ProtocolViolation(shard=0, monotonic=1.0, detail="frame is not JSON"))
    lifelog.observe(  # the adapter's auth module logs it
        ev.TokenRefreshFailed(shard=None, monotonic=1.0, error="HTTP 503", code=None, retry_in=2.0)
    )
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "shard 0: protocol violation: frame is not JSON"),
    ]
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="qqbot_gateway.telemetry")
    lifelog.observe(ev.FrameReceived(shard=0, monotonic=1.0, op=11, event_type=None, size=9))
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("DEBUG", "shard 0: frame received")
    ]
