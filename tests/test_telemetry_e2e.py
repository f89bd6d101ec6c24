"""Client + telemetry against the simulator: a blackholed link seen in metrics and probes,
and nothing secret in any log line or endpoint body of the whole run."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter.client import QQBotClient
from qqbot_gateway.simulator import Simulator
from qqbot_gateway.telemetry import HealthReport, Telemetry, TelemetryConfig, configure_logging

from .gateway_harness import INTERVAL, SECRET, client_config, sim_config

ZOMBIE_REASONS = ("ack_timeout", "idle_timeout", "ping_timeout")


@pytest.mark.slow
async def test_blackhole_is_seen_and_recovered() -> None:
    out = io.StringIO()
    handler = configure_logging(fmt="json", level="DEBUG", stream=out)
    sim = Simulator(sim_config(event_rate=5.0))
    await sim.start("127.0.0.1", 0)
    client = QQBotClient(client_config(sim))
    spans = InMemorySpanExporter()
    tel = Telemetry(
        TelemetryConfig(
            http_host="127.0.0.1", http_port=0, liveness_grace=30.0, trace_sample_ratio=1.0
        ),
        span_exporter=spans,
    )
    tel.attach(client)
    # The health verdict at the moment a zombie is declared (before the abort replaces it).
    at_zombie: list[HealthReport] = []

    def on_zombie(event: ev.ZombieDetected) -> None:
        at_zombie.append(tel.evaluate())

    client.events.subscribe_to(ev.ZombieDetected, on_zombie)
    await tel.start()
    await client.start()
    loop = asyncio.get_running_loop()
    bodies: list[str] = []
    try:
        async with aiohttp.ClientSession() as http:

            async def get(path: str) -> tuple[int, Any]:
                async with http.get(f"{tel.http_url}{path}") as resp:
                    text = await resp.text()
                    bodies.append(text)
                    is_json = resp.content_type == "application/json"
                    return resp.status, json.loads(text) if is_json else text

            def value(name: str, **labels: str) -> float:
                return tel.registry.get_sample_value(name, {"shard": "0", **labels}) or 0.0

            def zombies() -> float:
                return sum(
                    value("qqbot_gateway_reconnects_total", reason=r) for r in ZOMBIE_REASONS
                )

            async def until(pred: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
                deadline = loop.time() + within
                while not await pred():
                    assert loop.time() < deadline, f"timed out waiting for {what}"
                    await asyncio.sleep(0.05)

            async def ready() -> bool:
                return (await get("/readyz"))[0] == 200

            async def not_ready() -> bool:
                return (await get("/readyz"))[0] == 503

            await until(ready, 10 * INTERVAL, "ready")

            async def heartbeats_acked() -> bool:  # a few heartbeats and ACKs
                return (
                    value("qqbot_gateway_heartbeats_sent_total") >= 2
                    and value("qqbot_gateway_heartbeat_acks_total") >= 1
                )

            await until(heartbeats_acked, 10 * INTERVAL, "two heartbeats, one ACKed")
            sent_before = value("qqbot_gateway_heartbeats_sent_total")
            acks_before = value("qqbot_gateway_heartbeat_acks_total")
            rtt_before = value("qqbot_gateway_heartbeat_rtt_seconds_count")
            assert sent_before >= 2 and acks_before >= 1 and rtt_before == acks_before
            zombies_before = zombies()
            status, doc = await get("/healthz")
            assert status == 200 and doc["status"] == "ok"

            sim.blackhole(current=True, new=True)  # silent death; reconnects hang too
            ages = [value("qqbot_gateway_last_frame_age_seconds")]
            await until(not_ready, 5 * INTERVAL, "readyz 503")
            status, doc = await get("/readyz")
            failing = [c for c in doc["checks"] if not c["ok"]]
            assert status == 503 and failing and all(c["reason"] for c in failing)
            ages.append(value("qqbot_gateway_last_frame_age_seconds"))

            async def reconnected() -> bool:
                return zombies() > zombies_before

            await until(reconnected, 10 * INTERVAL, "a zombie reconnect")
            ages.append(value("qqbot_gateway_last_frame_age_seconds"))
            # The ping layer fires first (the simulator answers pings): never before its pong
            # deadline floor (0.3 H) of silence.
            assert ages == sorted(ages) and ages[-1] > 0.3 * INTERVAL, ages
            assert value("qqbot_gateway_zombies_detected_total", reason="ping_timeout") == 1
            # Exactly one zombie, counted once under the layer that fired.
            assert zombies() == zombies_before + 1
            (report,) = at_zombie
            assert not report.healthy
            assert any(
                not c.ok and any(r in c.reason for r in ZOMBIE_REASONS) for c in report.checks
            ), report
            # Torn down at once, visibly reconnecting within the grace: healthy, not ready.
            status, doc = await get("/healthz")
            assert status == 200, doc
            assert (await get("/readyz"))[0] == 503
            status, text = await get("/readyz?verbose")
            assert status == 503 and "[-]shard/0/ready failed: " in text

            sim.unblackhole()
            await until(ready, 20 * INTERVAL, "ready again")

            async def acked_again() -> bool:
                return (
                    value("qqbot_gateway_heartbeat_acks_total") > acks_before
                    and value("qqbot_gateway_heartbeat_rtt_seconds_count") > rtt_before
                )

            await until(acked_again, 10 * INTERVAL, "heartbeats ACKed after the resume")
            assert value("qqbot_gateway_heartbeats_sent_total") > sent_before
            assert value("qqbot_gateway_resumes_total", outcome="success") >= 1
            status, doc = await get("/healthz")
            assert status == 200 and doc["status"] == "ok"
            status, text = await get("/metrics")
            assert status == 200 and "qqbot_gateway_reconnects_total" in text
            await get("/healthz?verbose")
            await get("/readyz?verbose")
            tokens = [await client.tokens.get()]
    finally:
        tel.begin_shutdown()
        await client.close(drain_timeout=1.0)
        await tel.stop()
        await sim.stop()
        logging.getLogger().removeHandler(handler)
    names = {span.name for span in spans.get_finished_spans()}
    assert names, "no spans were exported"
    everything = out.getvalue() + "".join(bodies)
    everything += "".join(str(span.to_json()) for span in spans.get_finished_spans())
    assert '"event"' in out.getvalue()  # JSON log lines were written
    tokens += sim.issued_tokens()
    assert tokens and all(len(t) >= 16 for t in tokens)
    for secret in (SECRET, *tokens):
        assert secret not in everything
