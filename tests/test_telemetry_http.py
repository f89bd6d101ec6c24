"""The side server over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.telemetry import Telemetry, TelemetryConfig

from .test_telemetry_support import CS, SECRET, FakeClient, Feeder


class Rig:
    def __init__(self, tel: Telemetry, client: FakeClient, http: aiohttp.ClientSession) -> None:
        self.tel, self.client, self.http = tel, client, http
        self.f = Feeder(client.events)
        self.loop = asyncio.get_running_loop()

    @property
    def url(self) -> str:
        assert self.tel.http_url is not None
        return self.tel.http_url

    def live(self) -> None:
        t = self.loop.time()
        self.client.set_status(state=CS.READY, state_since=t, last_ready_at=t)
        self.f.connect(t, interval=30.0)
        self.f.ready(t)

    async def get(self, path: str, **kw: Any) -> tuple[int, str, CIMultiDictProxy[str]]:
        async with self.http.get(self.url + path, **kw) as resp:
            return resp.status, await resp.text(), resp.headers


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    tel = Telemetry(
        TelemetryConfig(
            http_host="127.0.0.1", http_port=0, liveness_grace=60.0, trace_sample_ratio=1.0
        ),
        span_exporter=InMemorySpanExporter(),
    )
    client = FakeClient()
    tel.attach(client)
    await tel.start()
    async with aiohttp.ClientSession() as http:
        yield Rig(tel, client, http)
    await tel.stop()


async def test_probes_json_and_verbose(rig: Rig) -> None:
    status, body, headers = await rig.get("/healthz")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    doc = json.loads(body)
    assert doc["status"] == "ok"
    assert {c["name"] for c in doc["checks"]} >= {"shard/0/connection", "event_loop"}
    assert all(set(c) == {"name", "ok", "reason"} for c in doc["checks"])
    status, body, _ = await rig.get("/readyz")
    assert status == 503 and json.loads(body)["status"] == "fail"
    rig.live()
    status, body, _ = await rig.get("/readyz?verbose")
    assert status == 200
    assert body.splitlines()[-1] == "readyz check passed"
    assert "[+]shard/0/ready ok" in body
    status, body, _ = await rig.get("/livez?verbose")
    assert status == 200 and body.endswith("healthz check passed\n")


async def test_zombie_makes_healthz_503_with_reason(rig: Rig) -> None:
    rig.live()
    t = rig.loop.time()
    rig.f.emit(
        ev.ZombieDetected,
        t,
        reason="idle_timeout",
        unacked=0,
        idle_for=75.0,
        heartbeat_interval=30.0,
    )
    status, body, _ = await rig.get("/healthz?verbose")
    assert status == 503
    assert "[-]shard/0/connection failed: idle_timeout: zombie connection declared" in body
    assert body.endswith("healthz check failed\n")
    status, _, _ = await rig.get("/readyz")
    assert status == 503
    status, body, _ = await rig.get("/metrics")
    assert "qqbot_gateway_healthy 0.0" in body
    assert 'qqbot_gateway_ready{shard="0"} 0.0' in body


async def test_begin_shutdown_makes_readyz_503(rig: Rig) -> None:
    rig.live()
    assert (await rig.get("/readyz"))[0] == 200
    status, body, _ = await rig.get("/metrics")
    assert 'qqbot_gateway_ready{shard="0"} 1.0' in body and "qqbot_gateway_healthy 1.0" in body
    rig.tel.begin_shutdown()
    status, body, _ = await rig.get("/readyz?verbose")
    assert status == 503 and "[-]shutdown failed: shutting down" in body
    assert (await rig.get("/healthz"))[0] == 200


async def test_head_404_405(rig: Rig) -> None:
    async with rig.http.head(rig.url + "/healthz") as resp:
        assert resp.status == 200
    async with rig.http.head(rig.url + "/readyz") as resp:
        assert resp.status == 503
    status, body, _ = await rig.get("/nope")
    assert status == 404 and body == "404 Not Found\n"
    status, _, _ = await rig.get("/index.html")
    assert status == 404
    async with rig.http.post(rig.url + "/healthz", data=b"x") as resp:
        assert resp.status == 405
        assert "GET" in resp.headers.get("Allow", "")
    async with rig.http.delete(rig.url + "/metrics") as resp:
        assert resp.status == 405


async def raw(rig: Rig, data: bytes, *, read_timeout: float = 5.0) -> bytes:
    assert rig.tel.server is not None and rig.tel.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.tel.server.port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(read_timeout):
            return await reader.read(65536)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_huge_header_and_request_line_rejected(rig: Rig) -> None:
    big = b"x" * 20000
    reply = await raw(rig, b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + big + b"\r\n\r\n")
    assert reply.split(b" ", 2)[1] in (b"400", b"431")
    reply = await raw(rig, b"GET /healthz?" + big + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reply.split(b" ", 2)[1] in (b"400", b"414")
    # The server is still fine.
    assert (await rig.get("/healthz"))[0] == 200


async def test_malformed_requests_are_one_warning_line_each(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    assert rig.tel.server is not None
    before = rig.tel.server.malformed_requests
    with caplog.at_level(logging.DEBUG, logger="qqbot_gateway.telemetry.server"):
        big = b"x" * 20000
        await raw(rig, b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + big + b"\r\n\r\n")
        await raw(rig, b"GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n")
    records = [r for r in caplog.records if r.name.startswith("qqbot_gateway.telemetry.server")]
    assert [r.levelname for r in records] == ["WARNING", "WARNING"], records
    assert all(r.exc_info is None for r in records)
    assert "malformed request from 127.0.0.1 answered 4" in records[0].getMessage()
    assert rig.tel.server.malformed_requests == before + 2
    _, metrics, _ = await rig.get("/metrics")
    assert f"qqbot_gateway_side_server_malformed_requests_total {before + 2:.1f}" in metrics


def test_malformed_request_filter_leaves_other_errors_alone() -> None:
    from qqbot_gateway.telemetry.server import MalformedRequestFilter

    f = MalformedRequestFilter()
    try:
        raise RuntimeError("a handler bug")
    except RuntimeError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1, "Error handling request from %s", ("1.2.3.4",), exc_info
    )
    assert f.filter(record)
    assert record.levelname == "ERROR" and record.exc_info is exc_info and f.count == 0


async def test_slow_client_is_cut_off() -> None:
    tel = Telemetry(TelemetryConfig(http_host="127.0.0.1", http_port=0, tracing=False))
    tel.attach(FakeClient())
    await tel.start()
    try:
        assert tel.server is not None
        tel.server._guard.deadline = 0.2  # a short deadline for the test
        port = tel.server.port
        assert port is not None
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n")  # never finishes the headers
        await writer.drain()
        # The first watchdog was armed with the default deadline; wait for a new connection's.
        reader2, writer2 = await asyncio.open_connection("127.0.0.1", port)
        writer2.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Slow: 1")
        await writer2.drain()
        async with asyncio.timeout(3):
            assert await reader2.read() == b""  # closed by the server
        for w in (writer, writer2):
            w.close()
    finally:
        await tel.stop()


async def test_metrics_negotiation_and_exemplars(rig: Rig) -> None:
    rig.live()
    t = rig.loop.time()
    rig.f.emit(
        ev.EventDispatched, t, event_type="C2C_MESSAGE_CREATE", seq=3, event_id="e3", replayed=False
    )
    status, body, headers = await rig.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert "# {" not in body  # no exemplars in the classic format
    assert "# EOF" not in body
    status, body, headers = await rig.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n")
    line = next(ln for ln in body.splitlines() if "events_dispatched_total{" in ln and "C2C" in ln)
    assert "trace_id=" in line
    assert "process_cpu_seconds_total" in body or "python_info" in body


async def test_no_secret_in_any_body(rig: Rig) -> None:
    rig.live()
    t = rig.loop.time()
    message = f"access token refused: client_secret={SECRET} Authorization: QQBot tok123456"
    rig.f.emit(ev.ShardFatal, t, reason="token_error", close_code=None, message=message)
    rig.client.set_status(state=CS.FATAL, task_alive=False, fatal_message=message)
    for path in ("/healthz", "/healthz?verbose", "/readyz", "/readyz?verbose", "/metrics"):
        _, body, _ = await rig.get(path)
        assert SECRET not in body and "tok123456" not in body, path
    _, body, _ = await rig.get("/healthz?verbose")
    assert "[-]shard/0/supervisor failed: shard stopped for good (fatal)" in body


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not on PATH")
async def test_promtool_check_metrics(rig: Rig) -> None:
    rig.live()
    t = rig.loop.time()
    rig.f.heartbeat(t)
    rig.f.ack(t)
    _, body, _ = await rig.get("/metrics")
    promtool = shutil.which("promtool")
    assert promtool is not None
    result = subprocess.run(  # noqa: ASYNC221 - a short, bounded tool run in a test
        [promtool, "check", "metrics"],
        input=body,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        result.stdout + result.stderr
    )


async def test_ephemeral_port_and_no_server() -> None:
    tel = Telemetry(TelemetryConfig(http_port=None, tracing=False))
    await tel.start()
    assert tel.http_url is None
    await tel.stop()
