"""The gateway's ``/healthz`` and ``/readyz`` with stream delivery: the ``stream/append`` check.

Through the HTTP side server of a real ``qqbot-gateway run`` (``QQBOT_DELIVERY=stream``) with
Debian's ``redis-server`` stopped (SIGSTOP: appends and polls time out), killed (connections
refused) or full (``QQBOT_STREAM_MAX_LEN`` entries no group has acknowledged): readiness fails
with the reason at once; liveness stays ok (a restart cannot fix Redis) until the failure has
lasted longer than ``QQBOT_LIVENESS_GRACE``; both recover when Redis does, and the events sent
meanwhile are in the stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.redis_harness import needs_redis

from .stream_harness import START_TIMEOUT, Fleet, Proc, sample, side
from .test_cluster_stream_e2e import fleet

__all__ = ["fleet"]  # the fixture, imported for pytest

pytestmark = [pytest.mark.slow, needs_redis, pytest.mark.timeout(180)]

#: Short, so that "longer than the grace" happens within the test.
GRACE = 12.0
#: Longer than the outage, so that the shard keeps its lease (and its session) throughout and
#: only the stream check speaks. (With the default 15 s the lease runs out mid-outage and the
#: shard stops and starts again, a separate matter: see the cluster tests.)
LEASE_TTL = "60"


async def probe(proc: Proc, path: str) -> tuple[int, dict[str, Any]]:
    """(HTTP status, the ``stream/append`` check) from ``path``'s JSON body."""
    import aiohttp

    url = f"http://{proc.env['QQBOT_HTTP_ADDR']}{path}"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        body = json.loads(await resp.text())
        checks = {c["name"]: c for c in body["checks"]}
        assert body["status"] == ("ok" if resp.status == 200 else "fail")
        return resp.status, checks["stream/append"]


async def until(
    proc: Proc, path: str, want: Callable[[int, dict[str, Any]], bool], what: str, timeout: float
) -> tuple[int, dict[str, Any]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status, check = await probe(proc, path)
        if want(status, check):
            return status, check
        if loop.time() > deadline:
            pytest.fail(f"{what}: not within {timeout}s; last {path}: {status} {check}")
        await asyncio.sleep(0.2)


async def stream_length(fleet: Fleet) -> int:
    from qqbot_gateway.cluster.connect import open_redis
    from qqbot_gateway.cluster.stream import StreamKeys

    from .test_cli import APP_ID

    client = await open_redis(fleet.redis.url)
    try:
        return int(await client.xlen(StreamKeys(APP_ID).stream))
    finally:
        await client.aclose()


async def start_gateway(fleet: Fleet, **env: str) -> Proc:
    settings = {"QQBOT_LIVENESS_GRACE": str(GRACE), "QQBOT_LEASE_TTL": LEASE_TTL, **env}
    gateway = Proc(fleet.env(**settings), "run")
    await gateway.start()
    fleet.procs.append(gateway)
    await fleet.live_session(gateway, "a live session")
    await until(gateway, "/readyz", lambda s, c: s == 200, "ready", START_TIMEOUT)
    return gateway


async def test_redis_stopped_fails_readiness_at_once_and_liveness_only_past_the_grace(
    fleet: Fleet,
) -> None:
    gateway = await start_gateway(fleet)
    status, check = await probe(gateway, "/healthz")
    assert status == 200 and check["ok"], check
    await fleet.sim.emit_events(20, "C2C_MESSAGE_CREATE", shard=0)
    await until(gateway, "/readyz", lambda s, c: "last append" in c["reason"], "appended", 30)

    fleet.redis.pause()  # SIGSTOP: every command times out after the client's 5 s
    try:
        await fleet.sim.emit_events(30, "C2C_MESSAGE_CREATE", shard=0)
        # Readiness: failing, with the reason (the timeout), long before the grace is over.
        status, ready = await until(
            gateway, "/readyz", lambda s, c: not c["ok"], "readiness fails", 30
        )
        assert status == 503
        assert "failing for" in ready["reason"] and "Timeout" in ready["reason"], ready
        # Liveness: ok (the reason says what fails) while within the grace.
        status, live = await probe(gateway, "/healthz")
        assert live["ok"], live
        assert "a restart cannot fix Redis" in live["reason"], live
        assert status == 200, "a Redis outage within the grace does not restart the pod"
        verbose = await side(gateway, "/readyz?verbose")
        assert "[-]stream/append failed: appends failing for" in verbose, verbose
        # The status page shows the same verdict.
        doc = json.loads(await side(gateway, "/status.json"))
        shown = {c["name"]: c for c in doc["health"]["readyz"]["checks"]}
        assert not shown["stream/append"]["ok"]
        assert "failing for" in shown["stream/append"]["reason"]
        # Past the grace: liveness fails too, naming the grace.
        status, live = await until(
            gateway, "/healthz", lambda s, c: not c["ok"], "liveness fails past the grace", 40
        )
        assert status == 503
        assert f"(grace {GRACE:g}s)" in live["reason"], live
        assert "restart cannot" not in live["reason"], live
    finally:
        fleet.redis.resume()

    # Redis answers again: both recover, and what was sent meanwhile reached the stream.
    await until(gateway, "/readyz", lambda s, c: c["ok"], "readiness recovers", 40)
    await until(gateway, "/healthz", lambda s, c: c["ok"], "liveness recovers", 20)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while (length := await stream_length(fleet)) < 50 + 1:  # and READY
        tail = "\n".join(gateway.stderr[-30:])
        assert loop.time() < deadline, f"the events sent during the outage: {length}\n{tail}"
        await asyncio.sleep(0.2)
    assert await gateway.stop() == 0


async def test_redis_killed_fails_readiness_with_the_reason_and_recovers(fleet: Fleet) -> None:
    gateway = await start_gateway(fleet)
    fleet.redis.kill()  # connections refused: fails at the next poll, no timeout to wait for
    status, ready = await until(gateway, "/readyz", lambda s, c: not c["ok"], "not ready", 20)
    assert status == 503
    assert "poll: ConnectionError" in ready["reason"], ready
    status, live = await probe(gateway, "/healthz")
    assert live["ok"] and "restart cannot fix Redis" in live["reason"], live
    await fleet.sim.emit_events(10, "C2C_MESSAGE_CREATE", shard=0)
    await until(
        gateway, "/readyz", lambda s, c: "append: ConnectionError" in c["reason"], "append", 20
    )
    metrics = await side(gateway, "/metrics")
    assert sample(metrics, "qqbot_gateway_stream_append_failures_total") >= 1
    await fleet.redis.start()  # same port, its AOF: the stream and the group are back
    await until(gateway, "/readyz", lambda s, c: c["ok"], "readiness recovers", 40)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while await stream_length(fleet) < 10 + 1:
        assert loop.time() < deadline, "the events sent while Redis was down reached the stream"
        await asyncio.sleep(0.2)
    assert await gateway.stop() == 0


async def test_a_full_stream_fails_readiness_never_liveness(fleet: Fleet) -> None:
    gateway = await start_gateway(fleet, QQBOT_STREAM_MAX_LEN="100")
    await fleet.sim.emit_events(300, "C2C_MESSAGE_CREATE", shard=0)
    status, ready = await until(gateway, "/readyz", lambda s, c: not c["ok"], "full", 30)
    assert status == 503
    assert "stream full" in ready["reason"] and "QQBOT_STREAM_MAX_LEN" in ready["reason"], ready
    status, live = await probe(gateway, "/healthz")
    assert status == 200 and live["ok"] and "stream full" in live["reason"], live
    # A worker drains the group: room again, ready again, every event handled.
    worker = await fleet.worker("a")
    await until(gateway, "/readyz", lambda s, c: c["ok"], "ready after the drain", 60)
    emitted = {str(r.event_id) for r in fleet.sim.emitted_events(shard=0)}
    await worker.wait(lambda: emitted <= set(fleet.printed()), "every event handled", 60)
    assert await gateway.stop() == 0
    assert await worker.stop() == 0
