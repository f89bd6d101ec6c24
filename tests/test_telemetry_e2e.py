"""Client + telemetry against the simulator: a blackholed link seen in metrics and probes.

Skipped until ``qqbot_gateway.adapter.client`` is importable (auth/api are being written).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging

import aiohttp
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

pytest.importorskip(
    "qqbot_gateway.adapter.api", reason="the adapter's api/auth modules are not there yet"
)

from qqbot_gateway.adapter.client import QQBotClient
from qqbot_gateway.simulator import Simulator
from qqbot_gateway.telemetry import Telemetry, TelemetryConfig, configure_logging

from .gateway_harness import INTERVAL, SECRET, client_config, sim_config


async def test_blackhole_is_seen_and_recovered() -> None:
    out = io.StringIO()
    handler = configure_logging(fmt="json", level="DEBUG", stream=out)
    sim = Simulator(sim_config())
    await sim.start("127.0.0.1", 0)
    client = QQBotClient(client_config(sim))
    tel = Telemetry(
        TelemetryConfig(http_host="127.0.0.1", http_port=0, liveness_grace=30.0),
        span_exporter=InMemorySpanExporter(),
    )
    tel.attach(client)
    await tel.start()
    await client.start()
    loop = asyncio.get_running_loop()
    bodies: list[str] = []
    try:
        async with aiohttp.ClientSession() as http:

            async def get(path: str) -> tuple[int, str]:
                async with http.get(f"{tel.http_url}{path}") as resp:
                    text = await resp.text()
                    bodies.append(text)
                    return resp.status, text

            def value(name: str, **labels: str) -> float:
                return tel.registry.get_sample_value(name, {"shard": "0", **labels}) or 0.0

            async def until(pred: object, within: float, what: str) -> None:
                deadline = loop.time() + within
                while not await pred():  # type: ignore[operator]
                    assert loop.time() < deadline, f"timed out waiting for {what}"
                    await asyncio.sleep(0.05)

            async def ready() -> bool:
                return (await get("/readyz"))[0] == 200

            await until(ready, 10 * INTERVAL, "ready")
            await asyncio.sleep(1.5 * INTERVAL)
            sent_before = value("qqbot_gateway_heartbeats_sent_total")
            assert sent_before >= 1
            before = {
                r: value("qqbot_gateway_reconnects_total", reason=r)
                for r in ("ack_timeout", "idle_timeout")
            }
            sim.blackhole()

            async def not_ready() -> bool:
                return (await get("/readyz"))[0] == 503

            await until(not_ready, 5 * INTERVAL, "readyz 503")
            assert value("qqbot_gateway_last_frame_age_seconds") > 0.5 * INTERVAL

            async def reconnected() -> bool:
                return any(
                    value("qqbot_gateway_reconnects_total", reason=r) > before[r] for r in before
                )

            await until(reconnected, 10 * INTERVAL, "a zombie reconnect")
            sim.unblackhole()
            await until(ready, 15 * INTERVAL, "ready again")
            assert value("qqbot_gateway_heartbeats_sent_total") > sent_before
            status, body = await get("/healthz")
            assert status == 200 and json.loads(body)["status"] == "ok"
            await get("/metrics")
            await get("/healthz?verbose")
    finally:
        tel.begin_shutdown()
        await client.close(drain_timeout=1.0)
        await tel.stop()
        await sim.stop()
        logging.getLogger().removeHandler(handler)
    everything = out.getvalue() + "".join(bodies)
    assert SECRET not in everything
    for token in getattr(sim, "issued_tokens", lambda: [])():
        assert token not in everything
