"""The webhook transport end to end over real sockets on 127.0.0.1.

The simulator's platform side validates the endpoint and delivers 1,000 events through a proxy
that fails, loses ACKs and stalls, while injecting forged, stale, replayed and duplicated
requests; every event reaches the handler exactly once, every bad request is refused and
counted, and both health endpoints answer throughout. Then ``run --print-events`` as a
subprocess prints webhook events in the same JSON lines as gateway events.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from qqbot_gateway.adapter.client import ClientConfig, Secret
from qqbot_gateway.adapter.protocol import GatewayEvent
from qqbot_gateway.simulator import Simulator, SimulatorConfig
from qqbot_gateway.simulator.webhook import (
    DeliveryPolicy,
    WebhookDeliverer,
    WebhookFaults,
)
from qqbot_gateway.telemetry import Telemetry
from qqbot_gateway.webhook_demo import webhook_stack
from tests.ports import free_port
from tests.test_cli import async_status, await_ready, bot_env, spawn_cli

SECRET = "e2e-secret"  # 10 characters: the seed needs four repetitions
EVENTS = 1000


def sample(tel: Telemetry, name: str, **labels: str) -> float:
    value = tel.registry.get_sample_value(name, {"shard": "0", **labels})
    return 0.0 if value is None else value


def outcome(tel: Telemetry, name: str) -> float:
    return sample(tel, "qqbot_gateway_webhook_requests_total", outcome=name)


@pytest.mark.slow
async def test_thousand_events_with_faults_reach_the_handler_exactly_once(tmp_path: Path) -> None:
    # A small queue: the slow moments of the handler below fill it. The intake journal on, as
    # in the service: duplicate storms and lost ACKs meet appends still in flight.
    async with webhook_stack(
        SECRET,
        path="/cb",
        handler_queue_size=32,
        proxy_seed=3,
        slow_delay=1.5,
        state_dir=str(tmp_path),
    ) as stack:
        client, tel, receiver, proxy = stack.client, stack.telemetry, stack.receiver, stack.proxy
        proxy.fail, proxy.lose_ack, proxy.slow = 0.03, 0.03, 0.01
        seen: collections.Counter[str] = collections.Counter()
        events: list[GatewayEvent] = []

        @client.on()
        async def handle(event: GatewayEvent) -> None:
            seen[event.event_id or ""] += 1
            events.append(event)
            if len(events) % 150 == 0:
                await asyncio.sleep(0.2)  # a slow moment: the queue fills, callbacks get 503

        assert receiver.url is not None
        policy = DeliveryPolicy(timeout=1.0, max_attempts=40, backoff_base=0.02, backoff_cap=0.3)
        faults = WebhookFaults(
            bad_signature=0.05,
            stale_timestamp=0.05,
            replay=0.05,
            lost_ack=0.03,
            duplicate_storm=0.02,
            storm_size=4,
        )
        probes: collections.Counter[tuple[str, int | None]] = collections.Counter()
        stop = asyncio.Event()
        health_url = f"{tel.http_url}/healthz"
        sim = stack.sim
        receiver_health = receiver.url.replace("/cb", "/healthz")

        async def poll_health(http: aiohttp.ClientSession) -> None:
            while not stop.is_set():
                probes["side", await async_status(http, health_url)] += 1
                probes["receiver", await async_status(http, receiver_health)] += 1
                await asyncio.sleep(0.05)

        try:
            async with (
                aiohttp.ClientSession() as http,
                WebhookDeliverer(
                    stack.platform_url, secret=SECRET, policy=policy, faults=faults, seed=11
                ) as platform,
            ):
                poller = asyncio.create_task(poll_health(http))
                async with http.get(f"{tel.http_url}/readyz") as r:
                    assert r.status == 200, await r.text()
                validated = False
                for _ in range(10):  # the proxy may fail the first attempts, as QQ would see
                    validated = await platform.validate()
                    if validated:
                        break
                assert validated
                payloads = platform.make_events(EVENTS)
                ids = {p["id"] for p in payloads}
                async with asyncio.timeout(90):
                    acked = await platform.deliver_many(payloads, concurrency=16)
                    while len(seen) < EVENTS:  # noqa: ASYNC110 - the handler catches up
                        await asyncio.sleep(0.05)
                    await asyncio.sleep(0.2)  # any late straggler (a slow copy) arrives now
                    while client.handler_queue_depth(0):  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                first = events[0]
                reply = await client.api.reply(first, "got it")
                stop.set()
                await poller
        finally:
            stop.set()

    stats = platform.stats
    # Exactly once: every genuine event, nothing else, never twice.
    assert acked == EVENTS and stats.gave_up == 0
    assert set(seen) == ids
    assert max(seen.values()) == 1
    assert stats.unexpected == []
    # The faults really happened...
    assert stats.forged_sent and stats.stale_sent and stats.replays_sent and stats.storms
    assert stats.retries and stats.lost_acks
    assert proxy.counts["failed"] and proxy.counts["lost_ack"] and proxy.counts["slow"]
    # ...and every forged / stale request that reached the receiver was refused and counted
    # (some died in the proxy before it; none was accepted: their ids are not in `seen`).
    assert stats.forged_refused <= outcome(tel, "bad_signature") <= stats.forged_sent
    assert stats.stale_refused <= outcome(tel, "stale_timestamp") <= stats.stale_sent
    assert stats.forged_refused > 0 and stats.stale_refused > 0
    assert outcome(tel, "accepted") == EVENTS
    writes = tel.registry.get_sample_value(
        "qqbot_gateway_webhook_journal_write_seconds_count", {"shard": "0"}
    )
    assert writes is not None and 0 < writes <= EVENTS  # every accepted event went through it
    assert outcome(tel, "validated") >= 1
    # Replays, lost ACKs, storms and proxy losses were all answered as duplicates.
    assert outcome(tel, "duplicate") >= stats.replays_acked + stats.lost_acks
    assert sample(tel, "qqbot_gateway_events_dispatched_total", type=first.type) > 0
    assert sample(tel, "qqbot_gateway_events_duplicate_total") == outcome(tel, "duplicate")
    # Health answered 200 on both ports throughout.
    assert set(probes) == {("side", 200), ("receiver", 200)}, probes
    assert probes["side", 200] >= 5
    # A reply goes out through the same API as for WebSocket events.
    assert reply.id
    assert any(m.msg_id == first.data["id"] for m in sim.messages)


async def test_run_print_events_prints_webhook_events_like_gateway_events() -> None:
    side, hook = free_port(), free_port()
    secret = "print-events-secret"
    async with Simulator(SimulatorConfig(client_secret=secret)) as sim:
        env = bot_env(
            sim.base_url,
            side,
            QQBOT_CLIENT_SECRET=secret,
            QQBOT_APP_ID=sim.config.app_id,
            QQBOT_TRANSPORT="webhook",
            QQBOT_WEBHOOK_ADDR=f"127.0.0.1:{hook}",
            QQBOT_WEBHOOK_PATH="/qq",
            QQBOT_LOG_FORMAT="json",
        )
        proc = await spawn_cli("run", "--print-events", env=env)
        try:
            async with aiohttp.ClientSession() as http:
                await await_ready(http, proc, f"http://127.0.0.1:{side}")
            async with WebhookDeliverer(
                f"http://127.0.0.1:{hook}/qq", secret=secret, app_id=sim.config.app_id
            ) as platform:
                assert await platform.validate()
                sent = platform.make_events(3)
                for payload in sent:
                    assert await platform.deliver(payload)
                assert await platform.deliver(sent[0])  # a redelivery: not printed again
            lines: list[dict[str, Any]] = []
            assert proc.stdout is not None
            async with asyncio.timeout(30):
                while len(lines) < 3:
                    lines.append(json.loads(await proc.stdout.readline()))
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                rest, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                with contextlib.suppress(ProcessLookupError):
                    await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert rest.decode().strip() == ""
    for line, payload in zip(lines, sent, strict=True):
        assert {k: line[k] for k in ("type", "id", "seq", "shard", "data")} == {
            "type": payload["t"],
            "id": payload["id"],
            "seq": payload["s"],
            "shard": 0,
            "data": payload["d"],
        }
    text = err.decode()
    assert secret not in text and "Traceback" not in text
    assert "receiving webhooks on http://127.0.0.1" in text


@pytest.mark.parametrize("transport", ["webhook"])
def test_webhook_needs_no_shards(transport: str) -> None:
    with pytest.raises(ValueError, match="no shards"):
        ClientConfig(app_id="1", client_secret=Secret("x"), mode=transport, shard_count=2)


async def test_check_with_the_webhook_transport_opens_no_session() -> None:
    secret = "check-secret"
    async with Simulator(SimulatorConfig(client_secret=secret)) as sim:
        env = bot_env(
            sim.base_url,
            free_port(),
            QQBOT_CLIENT_SECRET=secret,
            QQBOT_APP_ID=sim.config.app_id,
            QQBOT_TRANSPORT="webhook",
            QQBOT_WEBHOOK_PATH="/qq",
            QQBOT_WEBHOOK_ADDR="[::]:8443",
        )
        proc = await spawn_cli("check", env=env)
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
        assert sim.connections == []
    text = out.decode()
    assert proc.returncode == 0, text + err.decode()
    assert "transport:      webhook" in text
    assert "receiver:       http://[::]:8443/qq" in text  # an IPv6 host in brackets
    assert "round trip ok" in text and secret not in text
