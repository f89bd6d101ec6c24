"""The metric contract holds its values: a scripted gateway run gives the same metrics as before.

A scripted WebSocket server (no randomness, no heartbeat during the script: the interval is an
hour) plays: Hello, READY, dispatches of several types (one of them a handler error, one an
unknown type), a duplicate, a frame that is not JSON, a frame without an op, an unknown op, then
op 7; the client resumes, the server replays two events and one already seen, RESUMED, more
events, and a last one that ends the script. The client runs with telemetry attached as
``qqbot-gateway run`` wires it, and every deterministic series of the registry is compared with
``golden/metrics_scripted_run.json``, generated from the code before the per-event path was made
cheaper; series added since may come on top. Timing-dependent series (ages,
timestamps, durations' sums and buckets, loop lag, process metrics, ``_created``) are left out;
the handler-duration count is kept.

Regenerate (only when the contract changes on purpose)::

    QQBOT_TEST_WRITE_GOLDEN=1 .venv/bin/pytest tests/test_metrics_golden.py
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from qqbot_gateway.adapter.client import ClientConfig, QQBotClient, Secret
from qqbot_gateway.adapter.protocol import GatewayEvent
from qqbot_gateway.adapter.session import LivenessConfig
from qqbot_gateway.adapter.supervisor import ReconnectPolicy
from qqbot_gateway.telemetry import Telemetry, TelemetryConfig

pytestmark = pytest.mark.timeout(60)

GOLDEN = Path(__file__).parent / "golden" / "metrics_scripted_run.json"
_TIMING = (
    "_age_seconds",
    "_timestamp_seconds",
    "_created",
    "_bucket",
    "_sum",
    "event_loop_lag",
    "heartbeat_rtt",
)


def _dispatch(seq: int, t: str, **d: Any) -> str:
    return json.dumps({"op": 0, "s": seq, "t": t, "id": f"{t}:{seq}", "d": d})


def _script_first() -> list[str]:
    frames = [_dispatch(2, "C2C_MESSAGE_CREATE", content="a")]
    frames.append(_dispatch(3, "GROUP_AT_MESSAGE_CREATE", content="b"))
    frames.append(_dispatch(4, "C2C_MESSAGE_CREATE", content="boom"))  # the handler raises
    frames.append(_dispatch(3, "GROUP_AT_MESSAGE_CREATE", content="b"))  # a duplicate
    frames.append("{not json")
    frames.append(json.dumps({"t": "X", "d": {}}))  # no op
    frames.append(json.dumps({"op": 42, "d": None}))  # an unknown op
    frames.append(_dispatch(5, "SOME_FUTURE_EVENT", x=1))
    frames += [_dispatch(s, "C2C_MESSAGE_CREATE", content=str(s)) for s in range(6, 26)]
    return frames


def _script_resumed() -> list[str]:
    frames = [_dispatch(25, "C2C_MESSAGE_CREATE", content="25")]  # seen already: dropped
    frames += [_dispatch(s, "AT_MESSAGE_CREATE", content=str(s)) for s in (26, 27)]  # replayed
    frames.append(json.dumps({"op": 0, "s": 27, "t": "RESUMED", "d": ""}))
    frames += [_dispatch(s, "C2C_MESSAGE_CREATE", content=str(s)) for s in range(28, 40)]
    frames.append(_dispatch(40, "SCRIPT_END"))
    return frames


class ScriptedGateway:
    def __init__(self) -> None:
        self.port = 0
        self.connections = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/app/getAppAccessToken", self._token)
        app.router.add_get("/ws", self._ws)
        return app

    async def _token(self, request: web.Request) -> web.Response:
        return web.json_response({"access_token": "golden-token", "expires_in": "7200"})

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connections += 1
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 3_600_000}}))
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            op = json.loads(msg.data).get("op")
            if op == 2:
                ready = {"version": 1, "session_id": "golden", "user": {"id": "1"}, "shard": [0, 1]}
                await ws.send_str(json.dumps({"op": 0, "s": 1, "t": "READY", "d": ready}))
                for frame in _script_first():
                    await ws.send_str(frame)
                await ws.send_str(json.dumps({"op": 7, "d": None}))
            elif op == 6:
                for frame in _script_resumed():
                    await ws.send_str(frame)
        return ws


@pytest.fixture
async def gateway() -> AsyncIterator[ScriptedGateway]:
    server = ScriptedGateway()
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.port = runner.addresses[0][1]
    try:
        yield server
    finally:
        await runner.cleanup()


def _deterministic(registry: CollectorRegistry) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in registry.collect():
        for s in family.samples:
            if any(part in s.name for part in _TIMING) or s.name.startswith(
                ("process_", "python_")
            ):
                continue
            found = dict(s.labels)
            if s.name == "qqbot_gateway_build_info":
                # The running interpreter's version (3.11.2 on Debian's own python3, 3.11.7
                # elsewhere): the same series whichever runs the test.
                assert found.get("python") == platform.python_version(), found
                found["python"] = "<running>"
            labels = ",".join(f"{k}={v}" for k, v in sorted(found.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


async def test_metrics_after_a_scripted_run_match_the_golden_values(
    gateway: ScriptedGateway,
) -> None:
    base = f"http://127.0.0.1:{gateway.port}"
    config = ClientConfig(
        app_id="1",
        client_secret=Secret("golden-secret"),
        api_base=base,
        token_url=f"{base}/app/getAppAccessToken",
        gateway_url=f"ws://127.0.0.1:{gateway.port}/ws",
        liveness=LivenessConfig(ws_ping=False),
        reconnect=ReconnectPolicy(backoff_base=0.01, backoff_cap=0.05),
    )
    client = QQBotClient(config)
    done = asyncio.Event()

    def handler(event: GatewayEvent) -> None:
        if event.type == "SCRIPT_END":
            done.set()
        elif isinstance(event.data, dict) and event.data.get("content") == "boom":
            raise RuntimeError("scripted handler failure")

    client.add_handler(handler)
    registry = CollectorRegistry()
    telemetry = Telemetry(
        TelemetryConfig(http_port=None), registry=registry, process_collectors=False, env={}
    )
    telemetry.attach(client)
    await telemetry.start()
    await client.start()
    try:
        async with asyncio.timeout(30):
            await done.wait()
            while client.handler_queue_depth(0) or client.shard_status()[0].state.value != "ready":  # noqa: ASYNC110 - two conditions, no event for them
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the last handler's completion is counted
        values = _deterministic(registry)
        # The status page reads the same counters (sampled, not per-event events).
        telemetry.history.sample(asyncio.get_running_loop().time())
        history = telemetry.history.shards[0]
    finally:
        await client.close(drain_timeout=1.0)
        await telemetry.stop()
    assert gateway.connections == 2
    if os.environ.get("QQBOT_TEST_WRITE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(values, indent=1, sort_keys=True) + "\n")
    golden = json.loads(GOLDEN.read_text())
    # Every series of the contract as it was, with the same value; metrics added since (new
    # names in docs/metrics.md) may come on top.
    assert {name: values.get(name) for name in golden} == golden
    dispatched = {
        name.split("type=")[1].rstrip("}"): value
        for name, value in values.items()
        if name.startswith("qqbot_gateway_events_dispatched_total")
    }
    assert history.events_by_type == dispatched
    assert history.handled == values["qqbot_gateway_handler_duration_seconds_count{shard=0}"] + 1
    assert history.last_frame_at is not None and history.frame_runs
