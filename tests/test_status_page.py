"""The status page's history and document with explicit times, and its routes over HTTP.

The browser end-to-end run is ``tests/test_status_page_browser.py``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.telemetry import Telemetry, TelemetryConfig
from qqbot_gateway.telemetry.health import HealthEvaluator
from qqbot_gateway.telemetry.history import (
    FRAME_RESOLUTION,
    MAX_EVENT_TYPES,
    MAX_INCIDENTS,
    MAX_RTT_SAMPLES,
    StatusHistory,
)
from qqbot_gateway.telemetry.logs import Redactor
from qqbot_gateway.telemetry.status import (
    CONTENT_SECURITY_POLICY,
    DOCUMENT_REUSE,
    SCHEMA,
    StatusPage,
)

from .test_telemetry_support import CS, SECRET, FakeClient, FakeClock, Feeder

T0 = 1000.0


class Rig:
    """A history + health evaluator + status page on one fake clock, fed through one bus."""

    def __init__(self, *, window: float = 300.0) -> None:
        self.clock = FakeClock(T0)
        self.client = FakeClient()
        self.redactor = Redactor([SECRET])
        self.history = StatusHistory(window=window, sanitize=self.redactor.text)
        self.history.add_shards([0], T0)
        self.health = HealthEvaluator(
            shards=[0],
            clock=self.clock.monotonic,
            started_at=T0,
            status_provider=self.client.shard_status,
        )
        self.client.events.subscribe(self.history.observe)
        self.client.events.subscribe(self.health.observe)
        self.page = StatusPage(
            history=self.history,
            evaluate=self.health.evaluate,
            clock=self.clock,
            shard_status=self.client.shard_status,
            sanitize=self.redactor.text,
            started_at=T0,
        )
        self.f = Feeder(self.client.events)

    @property
    def shard(self) -> Any:
        return self.history.shards[0]

    def doc(self, at: float) -> dict[str, Any]:
        self.clock.now = at
        doc = self.page.document()
        json.dumps(doc, allow_nan=False)  # always valid JSON
        return doc

    def live(self, t: float, *, interval: float = 1.0) -> None:
        self.f.state(t, CS.IDLE, CS.CONNECTING)
        self.f.connect(t, interval=interval)
        self.f.state(t, CS.CONNECTING, CS.HANDSHAKING)
        self.f.ready(t)
        self.f.state(t, CS.HANDSHAKING, CS.READY)
        self.client.set_status(state=CS.READY, state_since=t, last_ready_at=t)

    def beat(self, t: float, rtt: float = 0.02) -> None:
        self.f.heartbeat(t)
        self.f.ack(t + rtt, rtt)


# --- history ----------------------------------------------------------------------------
def test_frame_age_is_a_sawtooth_with_the_silence_at_the_end() -> None:
    rig = Rig()
    rig.live(T0)
    for k in range(1, 11):
        rig.f.emit(ev.FrameReceived, T0 + k, op=11, event_type=None, size=10)
    series = rig.shard.frame_age_series(T0 + 20.0, 1.0)
    values = dict(series)
    # Frames every second: the peak age in each 1 s step is about one second.
    assert all(0.9 <= values[T0 + k] <= 1.0 + 1e-9 for k in range(2, 11)), series
    # Then silence: the age grows one second per second up to now.
    assert values[T0 + 15.0] == pytest.approx(5.0)
    assert series[-1] == (T0 + 20.0, pytest.approx(10.0))
    # Before the first frame there is no point.
    assert series[0][0] > T0 - 1e-9


def test_frames_merge_into_runs_so_memory_is_bounded() -> None:
    rig = Rig(window=60.0)
    rig.live(T0)
    t = T0
    for _ in range(100_000):  # a frame every 10 ms for 1000 s
        t += 0.01
        rig.f.emit(ev.FrameReceived, t, op=0, event_type=None, size=10)
    assert len(rig.shard.frame_runs) <= 3
    for _ in range(10_000):  # then frames spaced wider than the resolution
        t += FRAME_RESOLUTION * 1.5
        rig.f.emit(ev.FrameReceived, t, op=0, event_type=None, size=10)
    assert len(rig.shard.frame_runs) == rig.shard.frame_runs.maxlen
    assert rig.shard.frame_runs.maxlen <= 60.0 / FRAME_RESOLUTION + 2
    points = rig.shard.frame_age_series(t, 1.0)
    assert len(points) <= 61 and all(v <= FRAME_RESOLUTION * 1.5 + 1e-9 for _, v in points)


def test_everything_is_bounded_whatever_the_traffic() -> None:
    rig = Rig(window=30.0)
    rig.live(T0)
    t = T0
    for k in range(2_000):
        t += 0.5
        rig.beat(t)
        rig.f.emit(
            ev.EventDispatched, t, event_type=f"TYPE_{k}", seq=k, event_id=None, replayed=False
        )
        rig.f.emit(ev.HandlerQueueDepth, t, depth=k % 7, capacity=100)
    s = rig.shard
    assert len(s.rtts) <= MAX_RTT_SAMPLES
    assert len(s.events_by_type) == MAX_EVENT_TYPES + 1 and s.events_by_type["other"] > 0
    assert len(s.seconds) <= 31
    for _ in range(3 * MAX_INCIDENTS):
        t += 1.0
        rig.f.disconnect(t, "network_error")
        rig.live(t + 0.5)
    assert len(s.incidents) == MAX_INCIDENTS and s.incidents[-1].seq == 3 * MAX_INCIDENTS
    doc = rig.doc(t + 1.0)
    shard = doc["shards"][0]
    assert len(shard["series"]["events_per_second"]) <= 30
    assert len(shard["series"]["heartbeat_rtt_seconds"]) <= 61
    assert len(json.dumps(doc)) < 60_000


def test_zombie_disconnect_failed_attempts_and_resume_make_one_incident() -> None:
    rig = Rig()
    rig.live(T0)
    rig.beat(T0 + 1)
    rig.f.heartbeat(T0 + 2, unacked=1)
    rig.f.heartbeat(T0 + 3, unacked=2)
    rig.f.emit(
        ev.ZombieDetected,
        T0 + 4,
        reason="ack_timeout",
        unacked=2,
        idle_for=2.98,
        heartbeat_interval=1.0,
    )
    doc = rig.doc(T0 + 4)
    assert doc["shards"][0]["condition"] == "zombie"
    assert "ack_timeout" in doc["shards"][0]["condition_reason"]
    rig.f.disconnect(T0 + 4, "ack_timeout")
    rig.f.state(T0 + 4, CS.READY, CS.BACKOFF)
    rig.client.set_status(state=CS.BACKOFF, state_since=T0 + 4, next_attempt_at=T0 + 4.5)
    doc = rig.doc(T0 + 4.2)
    shard = doc["shards"][0]
    assert shard["condition"] == "reconnecting"
    assert "zombie connection (ack_timeout)" in shard["condition_reason"]
    assert shard["connection"]["next_attempt_in_seconds"] == pytest.approx(0.3)
    # Two attempts: the first hangs without Hello, the second resumes.
    rig.f.emit(ev.ConnectAttempt, T0 + 4.5, attempt=1, resume=True)
    rig.f.emit(ev.Connected, T0 + 4.5, connection_id="c2", url="wss://gw.example/websocket")
    rig.f.disconnect(T0 + 7.5, "hello_timeout")
    rig.f.emit(ev.ConnectAttempt, T0 + 8, attempt=2, resume=True)
    rig.f.connect(T0 + 8, resume=True)
    rig.f.emit(ev.ResumeSent, T0 + 8, session_id="sess-secret-id-1", seq=5)
    rig.f.emit(
        ev.SessionResumed,
        T0 + 8.25,
        session_id="sess-secret-id-1",
        replayed=3,
        resume_started=T0 + 8,
    )
    rig.client.set_status(state=CS.READY, state_since=T0 + 8.25, last_ready_at=T0 + 8.25)
    doc = rig.doc(T0 + 9)
    (incident,) = doc["shards"][0]["incidents"]
    assert incident["reason"] == "ack_timeout"
    assert incident["zombie"] == {
        "reason": "ack_timeout",
        "unacked": 2,
        "silent_for_seconds": 2.98,
        "heartbeat_interval_seconds": 1.0,
    }
    assert incident["attempts"] == 3  # the ConnectAttempt inside connect() counts too
    assert incident["last_attempt_reason"] == "hello_timeout"
    assert incident["recovered"] and incident["recovered_by"] == "resume"
    assert incident["recovery_seconds"] == pytest.approx(4.25)
    assert incident["replayed"] == 3
    assert incident["at"] == pytest.approx(T0 + 4 + 1_700_000_000.0)
    assert doc["shards"][0]["session"]["resumed_total"] == 1
    assert "sess-secret-id-1" not in json.dumps(doc)


def test_ping_timeout_without_zombie_event_is_still_a_zombie() -> None:
    rig = Rig()
    rig.live(T0)
    rig.f.disconnect(T0 + 40, "ping_timeout")
    incident = rig.doc(T0 + 41)["shards"][0]["incidents"][0]
    assert incident["zombie"]["reason"] == "ping_timeout"
    assert incident["zombie"]["silent_for_seconds"] == pytest.approx(40.0)


def test_fatal_before_any_connection_is_on_the_timeline() -> None:
    rig = Rig()
    rig.f.emit(
        ev.ShardFatal,
        T0 + 1,
        reason="token_error",
        close_code=None,
        message=f"credentials refused (secret {SECRET})",
    )
    rig.f.state(T0 + 1, CS.CONNECTING, CS.FATAL)
    shard = rig.doc(T0 + 2)["shards"][0]
    assert shard["condition"] == "down"
    (incident,) = shard["incidents"]
    assert incident["fatal"] and incident["reason"] == "token_error"
    assert SECRET not in json.dumps(shard)


def test_free_text_is_redacted_and_handler_messages_are_not_kept() -> None:
    rig = Rig()
    rig.live(T0)
    rig.f.emit(
        ev.Disconnected,
        T0 + 1,
        reason="network_error",
        close_code=None,
        detail="GET https://x/?access_token=tok-Very-Secret-77 failed",
        resumable=True,
        connection_age=1.0,
    )
    rig.f.emit(
        ev.HandlerFailed,
        T0 + 2,
        event_type="C2C_MESSAGE_CREATE",
        handler="on_msg",
        error_type="ValueError",
        error="user said: my password is hunter2-xyz",
    )
    rig.f.emit(
        ev.TokenRefreshFailed, T0 + 2, error=f"401 for secret {SECRET}", code=401, retry_in=1.0
    )
    text = json.dumps(rig.doc(T0 + 3))
    for secret in ("tok-Very-Secret-77", "hunter2-xyz", SECRET):
        assert secret not in text
    handlers = rig.doc(T0 + 3)["shards"][0]["handlers"]
    assert handlers["errors_total"] == 1
    assert handlers["errors_by_type"] == [{"type": "C2C_MESSAGE_CREATE", "count": 1}]
    assert handlers["last_error"]["error_type"] == "ValueError"


def test_queue_depth_and_event_rates() -> None:
    rig = Rig()
    rig.live(T0)
    for k in range(120):  # two events a second for a minute
        t = T0 + 0.5 * k
        rig.f.emit(
            ev.EventDispatched,
            t,
            event_type="C2C_MESSAGE_CREATE",
            seq=k,
            event_id=None,
            replayed=False,
        )
        if k == 20:
            rig.f.emit(ev.HandlerQueueDepth, T0 + 10.2, depth=9, capacity=50)
            rig.f.emit(ev.HandlerQueueDepth, T0 + 10.7, depth=4, capacity=50)
    shard = rig.doc(T0 + 60.5)["shards"][0]
    (c2c,) = [t for t in shard["events"]["by_type"] if t["type"] == "C2C_MESSAGE_CREATE"]
    assert c2c["total"] == 120 and c2c["per_minute"] == pytest.approx(120, rel=0.05)
    assert shard["events"]["per_second"] == pytest.approx(2.0)
    depth = {round(60.5 - ago): v for ago, v in shard["series"]["handler_queue_depth"]}
    assert depth[11] == 9  # the peak of that second
    assert depth[12] == 4 and depth[40] == 4  # carried over the seconds without a change
    assert shard["handlers"]["queue_depth"] == 4 and shard["handlers"]["queue_capacity"] == 50


def test_document_shape_and_layers() -> None:
    rig = Rig()
    doc = rig.doc(T0 + 1)
    assert doc["schema"] == SCHEMA and doc["version"] == 1
    assert doc["service"]["transport"] == "websocket"
    assert doc["shards"][0]["condition"] == "starting"
    rig.live(T0 + 2)
    rig.beat(T0 + 3, rtt=0.05)
    doc = rig.doc(T0 + 3.5)
    shard = doc["shards"][0]
    assert shard["condition"] == "live" and shard["state"] == "ready"
    assert shard["heartbeat"]["rtt_seconds"]["last"] == 0.05
    assert shard["heartbeat"]["unacked_threshold"] == 3  # the heartbeat and its 2 ACK probes
    assert shard["heartbeat"]["idle_deadline_seconds"] == 2.5
    layers = {layer["name"]: layer for layer in shard["liveness_layers"]}
    assert set(layers) == {
        "ack",
        "idle",
        "handshake",
        "ws_ping",
        "tcp_keepalive",
        "tcp_user_timeout",
        "event_loop",
    }
    assert layers["ack"]["armed"] and layers["idle"]["armed"]
    assert not layers["handshake"]["armed"]
    assert doc["health"]["healthz"]["status"] == "ok"
    assert doc["health"]["readyz"]["http_status"] == 200
    # No ACK for 2.4 intervals and no heartbeat either (a wedged timer): readiness fails
    # first (degraded); a heartbeat then unanswered for a whole interval makes it a zombie.
    rig.f.emit(ev.FrameReceived, T0 + 5, op=0, event_type="C2C_MESSAGE_CREATE", size=99)
    assert rig.doc(T0 + 5.5)["shards"][0]["condition"] == "degraded"
    rig.f.heartbeat(T0 + 5.6, unacked=1)
    zombie = rig.doc(T0 + 6.7)["shards"][0]
    assert zombie["condition"] == "zombie" and "ack_timeout" in zombie["condition_reason"]


# --- HTTP -------------------------------------------------------------------------------
@pytest.fixture
async def served() -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    tel = Telemetry(TelemetryConfig(http_host="127.0.0.1", http_port=0, tracing=False))
    tel.attach(FakeClient())
    await tel.start()
    try:
        async with aiohttp.ClientSession() as http:
            assert tel.http_url is not None
            yield tel.http_url, http
    finally:
        await tel.stop()


async def test_page_assets_and_document_are_served(
    served: tuple[str, aiohttp.ClientSession],
) -> None:
    url, http = served
    for path in ("/", "/status"):
        async with http.get(url + path) as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            assert resp.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            body = await resp.text()
            assert 'src="static/status.js"' in body and 'aria-live="polite"' in body
            assert "http://" not in body and "https://" not in body  # nothing from elsewhere
    for path, kind in (
        ("/static/status.js", "application/javascript"),
        ("/static/status.css", "text/css"),
    ):
        async with http.get(url + path) as resp:
            assert resp.status == 200 and resp.content_type == kind
            etag = resp.headers["ETag"]
        async with http.get(url + path, headers={"If-None-Match": etag}) as resp:
            assert resp.status == 304
    async with http.get(url + "/status.json") as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        assert resp.headers["Cache-Control"] == "no-store"
        doc = await resp.json()
    assert doc["version"] == 1 and [s["shard"] for s in doc["shards"]] == [0]
    for path in ("/static/status.html", "/static/", "/status.json/", "/status.js"):
        async with http.get(url + path) as resp:
            assert resp.status == 404, path


async def test_the_page_can_be_switched_off() -> None:
    tel = Telemetry(
        TelemetryConfig(http_host="127.0.0.1", http_port=0, tracing=False, status_page=False)
    )
    tel.attach(FakeClient())
    await tel.start()
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("/", "/status", "/status.json", "/static/status.js"):
                async with http.get(f"{tel.http_url}{path}") as resp:
                    assert resp.status == 404, path
            async with http.get(f"{tel.http_url}/healthz") as resp:
                assert resp.status == 200
    finally:
        await tel.stop()


def test_ping_layer_state_from_the_session() -> None:
    """The session runs the WebSocket ping layer and reports its state (``PingLayerChanged``,
    ``PongReceived``); the page shows that state, not just the configuration."""
    rig = Rig()
    PingLayerChanged, PongReceived = ev.PingLayerChanged, ev.PongReceived
    rig.live(T0, interval=40.0)
    rig.f.emit(PingLayerChanged, T0 + 1, state="calibrating", detail="waiting for a first pong")
    layer = {x["name"]: x for x in rig.doc(T0 + 1)["shards"][0]["liveness_layers"]}["ws_ping"]
    assert layer["state"] == "calibrating" and not layer["armed"]
    rig.f.emit(PongReceived, T0 + 3, rtt=0.05, deadline=12.0)
    rig.f.emit(PingLayerChanged, T0 + 3, state="armed", detail="")
    layer = {x["name"]: x for x in rig.doc(T0 + 4)["shards"][0]["liveness_layers"]}["ws_ping"]
    assert layer["state"] == "armed" and layer["armed"]
    assert "ping after 2s of silence" in layer["detail"] and "pong within 12s" in layer["detail"]
    assert "last pong 50 ms" in layer["detail"]
    rig.f.disconnect(T0 + 5, "ping_timeout")
    layer = {x["name"]: x for x in rig.doc(T0 + 6)["shards"][0]["liveness_layers"]}["ws_ping"]
    assert layer["state"] == "idle" and not layer["armed"]


async def test_requests_close_together_share_one_document() -> None:
    rig = Rig()
    rig.live(T0)
    built = []
    document = rig.page.document

    def counted() -> dict[str, Any]:
        built.append(rig.clock.now)
        return document()

    rig.page.document = counted  # type: ignore[method-assign]
    request: Any = None  # the handler reads nothing from the request
    rig.clock.now = T0 + 1
    bodies = [(await rig.page._serve_document(request)).text for _ in range(5)]
    rig.clock.now = T0 + 1 + DOCUMENT_REUSE / 2
    bodies.append((await rig.page._serve_document(request)).text)
    assert built == [T0 + 1] and len(set(bodies)) == 1
    rig.clock.now = T0 + 1 + DOCUMENT_REUSE
    later = (await rig.page._serve_document(request)).text
    assert built == [T0 + 1, T0 + 1 + DOCUMENT_REUSE] and later != bodies[0]
