"""The webhook transport with stream delivery: callbacks -> ``run`` -> Redis stream -> workers.

Processes over real sockets: ``qqbot-gateway run`` (``QQBOT_TRANSPORT=webhook``,
``QQBOT_DELIVERY=stream``), two ``qqbot-gateway worker --print-events``, Debian's
``redis-server``; the simulator's :class:`WebhookDeliverer` plays the platform (signed
callbacks, every one retried until it is ACKed), the simulator itself serves the token and the
OpenAPI. *Lost* = a callback ACKed to the platform that no worker printed; *twice* = printed
more than once.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pytest

from qqbot_gateway.simulator.webhook import DeliveryPolicy, WebhookDeliverer
from tests.ports import free_port
from tests.redis_harness import needs_redis

from .stream_harness import START_TIMEOUT, Fleet, Proc, sample, side
from .test_cli import APP_ID, SECRET
from .test_cluster_stream_e2e import fleet

__all__ = ["fleet"]  # the fixture, imported for pytest

pytestmark = [pytest.mark.slow, needs_redis, pytest.mark.timeout(240)]

#: The platform retries for about a minute, 0.2 s apart at most: long past a gateway restart.
RETRY = DeliveryPolicy(timeout=3.0, max_attempts=300, backoff_base=0.05, backoff_cap=0.2)
CALLBACKS = 1500


async def webhook_gateway(fleet: Fleet, port: int) -> Proc:
    env = fleet.env(
        QQBOT_TRANSPORT="webhook",
        QQBOT_WEBHOOK_ADDR=f"127.0.0.1:{port}",
        QQBOT_WEBHOOK_PATH="/qq",
    )
    gateway = await Proc(env, "run").start()
    fleet.procs.append(gateway)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    while True:  # ready: listening, and Redis answers appends
        with_status = ""
        try:
            with_status = await side(gateway, "/readyz", status=True)
        except OSError:
            pass
        if with_status == "200":
            return gateway
        assert gateway.proc is not None and gateway.proc.returncode is None, gateway.stderr[-20:]
        assert loop.time() < deadline, f"webhook gateway not ready: {gateway.stderr[-20:]}"
        await asyncio.sleep(0.1)


async def gateway_and_two_workers(fleet: Fleet) -> tuple[Proc, Proc, int]:
    """The webhook gateway and workers "a" and "b": (gateway, a, the webhook's port)."""
    port = free_port()
    gateway = await webhook_gateway(fleet, port)
    a = await fleet.worker("a")
    await fleet.worker("b")
    return gateway, a, port


async def where_are(fleet: Fleet, missing: set[str]) -> str:
    """For a failure: where the missing callbacks are (the event stream and who holds them,
    the dead-letter stream, the intake stream), and the consumer groups."""
    from qqbot_gateway.cluster.connect import open_redis
    from qqbot_gateway.cluster.intake import intake_keys
    from qqbot_gateway.cluster.stream import StreamKeys

    client: Any = await open_redis(fleet.redis.url)
    keys = StreamKeys(APP_ID)
    intake, _seen = intake_keys(APP_ID)
    out = []
    try:
        for name, key in (("events", keys.stream), ("dead", keys.dead), ("intake", intake)):
            entries = await client.xrange(key)
            found = {
                entry_id.decode(): i
                for entry_id, fields in entries
                for i in missing
                if i.encode() in fields.get(b"e", fields.get(b"body", b""))
            }
            out.append(f"{name}: {len(entries)} entries; the missing ones: {found}")
            group = {"events": "handlers", "intake": "gateway"}.get(name)
            if group is not None and found:
                pending = await client.xpending_range(key, group, "-", "+", 10_000)
                held = [p for p in pending if p["message_id"].decode() in found]
                out.append(f"  pending: {held}")
        out.append(f"groups: {await client.xinfo_groups(keys.stream)}")
    finally:
        await client.aclose()
    return "\n".join(out)


def counts(fleet: Fleet) -> dict[str, int]:
    return dict(fleet.printed())


async def test_webhook_callbacks_through_the_stream_to_workers_gateway_sigkilled_mid_flood(
    fleet: Fleet,
) -> None:
    gateway, a, port = await gateway_and_two_workers(fleet)
    url = f"http://127.0.0.1:{port}/qq"
    async with WebhookDeliverer(url, secret=SECRET, app_id=APP_ID, policy=RETRY, seed=19) as qq:
        payloads = qq.make_events(CALLBACKS)
        ids = {str(p["id"]) for p in payloads}
        flood = asyncio.create_task(qq.deliver_many(payloads, concurrency=16))
        # Mid-flood, the gateway dies with callbacks ACKed and not yet appended, appended and
        # not yet acknowledged to the intake, and in flight; the platform retries the rest.
        await a.wait(lambda: len(fleet.printed()) >= 300, "the workers handle", 60)
        await gateway.kill()
        killed_after = len(fleet.printed())
        gateway = await webhook_gateway(fleet, port)
        async with asyncio.timeout(150):
            acked = await flood
        assert acked == CALLBACKS, "the platform got an ACK for every callback"
        await a.wait(lambda: ids <= set(fleet.printed()), "every callback handled", 90)
        # The platform redelivers callbacks already handled (a lost ACK): no handler again.
        for payload in payloads[:50]:
            assert await qq.deliver(payload)
        await asyncio.sleep(2.0)  # a copy would be appended and handed out by now
    printed = counts(fleet)
    lost = ids - set(printed)
    twice = sorted(i for i, n in printed.items() if n > 1)
    strangers = set(printed) - ids
    recognised = 0.0  # copies in the stream the workers acknowledged without a handler
    for worker in fleet.workers:
        worker_metrics = await side(worker, "/metrics")
        recognised += sample(
            worker_metrics, "qqbot_gateway_worker_events_total", outcome="duplicate"
        )
    print(
        f"\n[stream+webhook] {CALLBACKS} callbacks, 2 workers, the gateway SIGKILLed after "
        f"{killed_after} handled: lost {len(lost)}, handed twice {len(twice)}, copies "
        f"recognised by the workers {recognised:g}, platform statuses {dict(qq.stats.statuses)}",
        flush=True,
    )
    assert not lost
    assert twice == []
    assert not strangers
    # The gateway's metrics count the stream path with the webhook transport.
    metrics = await side(gateway, "/metrics")
    assert sample(metrics, "qqbot_gateway_stream_appended_total") >= 1
    assert await gateway.stop() == 0
    for worker in fleet.workers:
        assert await worker.stop() == 0


async def test_webhook_callbacks_through_the_stream_redis_stopped_mid_flood(fleet: Fleet) -> None:
    """Redis (the intake's and the stream's) stops answering for longer than the clients' 5 s
    timeout: callbacks are refused or time out and the platform retries them, appends are
    retried, readiness says so; afterwards every callback is handled once."""
    gateway, a, port = await gateway_and_two_workers(fleet)
    url = f"http://127.0.0.1:{port}/qq"
    async with WebhookDeliverer(url, secret=SECRET, app_id=APP_ID, policy=RETRY, seed=20) as qq:
        payloads = qq.make_events(1000)
        ids = {str(p["id"]) for p in payloads}
        flood = asyncio.create_task(qq.deliver_many(payloads, concurrency=8))
        await a.wait(lambda: len(fleet.printed()) >= 200, "the workers handle", 60)
        fleet.redis.pause()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while await side(gateway, "/readyz", status=True) == "200":
                assert loop.time() < deadline, "readiness fails while Redis is stopped"
                await asyncio.sleep(0.2)
            assert "[-]stream/append failed" in await side(gateway, "/readyz?verbose")
            await asyncio.sleep(2.0)
        finally:
            fleet.redis.resume()
        async with asyncio.timeout(150):
            acked = await flood
        assert acked == len(payloads)
        try:
            await a.wait(lambda: ids <= set(fleet.printed()), "every callback handled", 90)
        except BaseException:
            missing = sorted(ids - set(fleet.printed()))
            print(f"\nmissing {len(missing)}: {missing[:10]}", flush=True)
            print("gateway stderr tail:\n" + "\n".join(gateway.stderr[-40:]), flush=True)
            for w in fleet.workers:
                print("worker stderr tail:\n" + "\n".join(w.stderr[-15:]), flush=True)
            print(await where_are(fleet, set(missing)), flush=True)
            raise
        await asyncio.sleep(2.0)  # a late copy (a retried append, a claim) would show by now
    printed = counts(fleet)
    lost = ids - set(printed)
    twice = sorted(i for i, n in printed.items() if n > 1)
    print(
        f"\n[stream+webhook] 1000 callbacks, Redis SIGSTOPped mid-flood: lost {len(lost)}, "
        f"handed twice {len(twice)}, platform statuses {dict(qq.stats.statuses)}",
        flush=True,
    )
    if twice:  # who handed them out, after how many claims
        for w in fleet.workers:
            mine = collections.Counter(str(e["id"]) for e in w.events)
            text = await side(w, "/metrics")
            claims = sample(text, "qqbot_gateway_worker_claims_total")
            print(f"worker {w.env['QQBOT_WORKER_NAME']}: {[mine[i] for i in twice]}, {claims=}")
            print("\n".join(line for line in w.stderr if "claimed" in line or "failed" in line))
    assert not lost
    assert twice == []
    assert await side(gateway, "/readyz", status=True) == "200"
    assert await gateway.stop() == 0
