"""Failover between ``qqbot-gateway run`` processes through Redis leases, over real sockets.

A real redis-server (AOF), the simulator at 20 events/s with H = 1 s, and ``run
--print-events`` subprocesses with ``QQBOT_REDIS_URL`` and a short lease. Counting as in
``test_restart_resume``: *lost* = emitted and printed by no process; a duplicate is allowed only
in the documented window (above the watermark durable in Redis when the owner died).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from qqbot_gateway.cluster.store import session_key
from qqbot_gateway.simulator import Simulator, SimulatorConfig
from tests.redis_harness import RedisServer, needs_redis

from .test_cli import APP_ID, SECRET
from .test_restart_resume import RATE, START_TIMEOUT, Bot, Case

pytestmark = [pytest.mark.slow, needs_redis]

#: Short enough for quick tests, long enough that renewals (every third) survive a loaded box.
LEASE = "2"


class ClusterCase(Case):
    def __init__(self, sim: Simulator, state_dir: Path, server: RedisServer) -> None:
        super().__init__(sim, state_dir)
        self.redis = server

    def env(self, **overrides: str) -> dict[str, str]:
        return super().env(
            **{"QQBOT_REDIS_URL": self.redis.url, "QQBOT_LEASE_TTL": LEASE, **overrides}
        )

    def durable_seq(self, shard: int = 0) -> int:
        client = redis.Redis.from_url(self.redis.url, socket_timeout=2)
        try:
            raw = client.get(session_key(APP_ID, shard))
        except redis.RedisError:
            return 0
        finally:
            client.close()
        return int(json.loads(raw)["seq"]) if raw else 0


@pytest.fixture
async def cluster(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[ClusterCase]:
    config = SimulatorConfig(
        app_id=APP_ID,
        client_secret=SECRET,
        heartbeat_interval_ms=1000,
        event_rate=RATE,
        resume_window=120.0,
        seed=11,
    )
    async with Simulator(config) as sim:
        c = ClusterCase(sim, tmp_path / "state", redis_server)
        try:
            yield c
        finally:
            for bot in c.bots:
                await bot.cleanup()


def process(bot: Bot) -> asyncio.subprocess.Process:
    assert bot.proc is not None
    return bot.proc


def resumes(sim: Simulator) -> list[Any]:
    return [r for r in sim.resumes if r.outcome == "resumed"]


async def probe(bot: Bot, path: str) -> tuple[int, str]:
    """GET ``path?verbose`` on the bot's side server."""
    addr = bot.env["QQBOT_HTTP_ADDR"]
    async with aiohttp.ClientSession() as http, http.get(f"http://{addr}{path}?verbose") as r:
        return r.status, await r.text()


def metric_value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not exported")


async def owner_and_standby(c: ClusterCase) -> tuple[Bot, Bot]:
    first = await c.bot()
    await c.streaming(first, 10)
    second = await c.bot()
    await second.stderr_lines("standby", timeout=START_TIMEOUT)
    assert not second.handled
    return first, second


async def test_owner_sigkilled_standby_resumes_and_replays_the_gap(cluster: ClusterCase) -> None:
    first, second = await owner_and_standby(cluster)
    # /healthz is about the process: a standby is healthy; /readyz says who owns the shard.
    status, text = await probe(second, "/healthz")
    assert status == 200 and "[+]shard/0/lease ok: standby: owned by" in text, text
    status, text = await probe(second, "/readyz")
    assert status == 200 and "standby" in text, text
    _, page = await probe(second, "/status.json")
    (shard,) = json.loads(page)["shards"]
    assert shard["condition"] == "standby" and shard["lease"].startswith("standby: owned by")
    status, text = await probe(first, "/readyz")
    assert status == 200 and "[+]shard/0/lease ok: owner: " in text, text
    await cluster.streaming(first, 30)
    durable = cluster.durable_seq()
    process(first).kill()
    await first.exit_code(10)
    loop = asyncio.get_running_loop()
    killed_at = loop.time()
    await second.wait(lambda: second.saw("RESUMED"), "standby RESUMED", START_TIMEOUT)
    print(f"\n[cluster] SIGKILL -> standby RESUMED in {loop.time() - killed_at:.2f}s", flush=True)
    assert not second.saw("READY"), "the standby resumed the stored session, never identified"
    assert [r.seq for r in resumes(cluster.sim)][-1] >= durable
    lines = await second.stderr_lines("lease acquired")
    assert any("the previous owner's lease ran out" in line for line in lines), lines
    await second.wait(lambda: len(second.handled) > 0, "the new owner handles events", 30)
    status, text = await probe(second, "/readyz")
    assert status == 200 and "[+]shard/0/lease ok: owner: " in text, text
    _, metrics = await probe(second, "/metrics")
    assert 'qqbot_gateway_shard_owner{shard="0"} 1.0' in metrics
    assert 'qqbot_gateway_lease_takeovers_total{cause="expired",shard="0"} 1.0' in metrics
    assert 'qqbot_gateway_shard_fencing_token{shard="0"} 2.0' in metrics
    lost, _, dups = await cluster.drain_and_count(second, "cluster SIGKILL")
    assert lost == 0
    assert all(seq > durable for seq in dups), (durable, dups)


async def test_owner_paused_past_its_lease_never_sends_again(cluster: ClusterCase) -> None:
    """SIGSTOP the owner past its lease: the standby takes over; after SIGCONT the old owner
    sends no frame on the session (every frame the platform gets from then on comes on the new
    owner's connection), its late checkpoint is refused by the fence, and nothing is lost."""
    first, second = await owner_and_standby(cluster)
    await cluster.streaming(first, 30)
    durable = cluster.durable_seq()
    process(first).send_signal(signal.SIGSTOP)
    try:
        await second.wait(lambda: second.saw("RESUMED"), "standby RESUMED", START_TIMEOUT)
        took_over = resumes(cluster.sim)[-1]
        handled_by_new = len(second.handled)
    finally:
        process(first).send_signal(signal.SIGCONT)
    # The old owner wakes: it finds its lease gone and goes back to standby.
    lines = await first.stderr_lines("standing by again", timeout=30)
    assert lines, "\n".join(first.stderr[-30:])
    await second.wait(
        lambda: len(second.handled) >= handled_by_new + 20, "the new owner streams on", 30
    )
    # The platform's view: after the takeover, frames came on the new owner's connection only.
    late_resumes = [r for r in cluster.sim.resumes if r.at > took_over.at]
    late_identifies = [r for r in cluster.sim.identifies if r.at > took_over.at]
    assert not late_resumes and not late_identifies, (late_resumes, late_identifies)
    for conn in cluster.sim.connections:
        if conn.conn_id != took_over.conn_id:
            late = [h for h in conn.heartbeats if h.at > took_over.at]
            assert not late, f"connection {conn.conn_id} sent heartbeats after the takeover"
    # Its late checkpoint (if it had one pending) was refused by Redis, never written.
    assert not any("saved at seq" in line for line in first.stderr)
    refused = [line for line in first.stderr if "refused: fencing token" in line]
    _, metrics = await probe(first, "/metrics")
    assert 'qqbot_gateway_shard_owner{shard="0"} 0.0' in metrics
    assert 'qqbot_gateway_lease_losses_total{reason="expired",shard="0"} 1.0' in metrics
    # Each refused attempt counts (a failure streak logs once): as many or more than lines.
    count = metric_value(metrics, 'qqbot_gateway_fencing_refusals_total{shard="0"}')
    assert count >= len(refused), (count, refused)
    print(f"\n[cluster] SIGSTOP: late checkpoint writes refused: {len(refused)}", flush=True)
    lost, _, dups = await cluster.drain_and_count(second, "cluster SIGSTOP + SIGCONT")
    assert lost == 0
    assert all(seq > durable for seq in dups), (durable, dups)
    assert process(first).returncode is None, "the old owner stays up as a standby"


async def test_redis_restarted_mid_stream_loses_nothing(cluster: ClusterCase) -> None:
    """Redis restarts (AOF) under a streaming owner: the lease, fence and session survive; the
    owner keeps or retakes the shard (never crashes), and nothing is lost."""
    first = await cluster.bot()
    await cluster.streaming(first, 20)
    await cluster.redis.restart()
    before = len(first.handled)
    await first.wait(lambda: len(first.handled) >= before + 30, "streaming after restart", 30)
    lost, _, _ = await cluster.drain_and_count(first, "Redis restarted (AOF)")
    assert lost == 0
    assert process(first).returncode is None


async def test_redis_unreachable_longer_than_the_lease(cluster: ClusterCase) -> None:
    """Redis stops answering for twice the lease: the owner stops its connection by its own
    clock before the lease could expire, stays up as a standby, and when Redis answers again
    takes the shard back and resumes the stored session: 0 lost."""
    ttl = float(LEASE)
    first = await cluster.bot()
    await cluster.streaming(first, 20)
    loop = asyncio.get_running_loop()
    durable = cluster.durable_seq()
    paused_at = loop.time()
    cluster.redis.pause()
    try:
        lines = await first.stderr_lines("standing by again", timeout=4 * ttl)
        assert lines, "\n".join(first.stderr[-20:])
        gone = [c.closed_at for c in cluster.sim.connections if c.closed_at is not None]
        assert gone, "the owner's connection was closed"
        # By its own clock: within the lease (plus the simulator noticing the EOF, generously).
        assert gone[0] - paused_at < ttl + 2.5, gone[0] - paused_at
        await asyncio.sleep(max(0.0, paused_at + 2 * ttl - loop.time()))
    finally:
        cluster.redis.resume()
    await first.wait(
        lambda: sum(e["type"] == "RESUMED" for e in first.events) >= 1, "RESUMED", START_TIMEOUT
    )
    assert sum(e["type"] == "READY" for e in first.events) == 1, "resumed, not identified again"
    lost, duplicated, dups = await cluster.drain_and_count(
        first, "Redis unreachable for 2x the lease"
    )
    assert lost == 0
    # Handled while no checkpoint could be written: the next term here replays them from the
    # durable watermark, and drops those this process handled already (its own dedupe window).
    assert duplicated == 0, (durable, dups)
    assert process(first).returncode is None


async def owners(bots: list[Bot], shard: int) -> list[int]:
    """Indexes of the live bots whose /readyz says they own ``shard``."""
    found = []
    for i, bot in enumerate(bots):
        if process(bot).returncode is not None:
            continue
        try:
            _, text = await probe(bot, "/readyz")
        except aiohttp.ClientError:
            continue  # not listening yet
        if f"[+]shard/{shard}/lease ok: owner" in text:
            found.append(i)
    return found


async def test_three_processes_two_shards_each_owned_exactly_once(tmp_path: Path) -> None:
    """Three processes offer both shards; kill owners one by one: every shard always has exactly
    one owner once things settle, never two open sessions at once, and 0 events lost."""
    server = RedisServer(tmp_path / "redis")
    config = SimulatorConfig(
        app_id=APP_ID,
        client_secret=SECRET,
        heartbeat_interval_ms=1000,
        event_rate=RATE / 2,
        resume_window=120.0,
        shards=2,
        seed=13,
    )
    await server.start()
    try:
        async with Simulator(config) as sim:
            c = ClusterCase(sim, tmp_path / "state", server)
            overlap: list[tuple[int | None, int]] = []

            async def watch() -> None:
                # Never two connections with a session on one shard at the same time.
                while True:
                    per_shard = collections.Counter(
                        r.shard for r in sim.open_connections() if r.session_id is not None
                    )
                    overlap.extend((s, n) for s, n in per_shard.items() if n > 1)
                    await asyncio.sleep(0.02)

            watcher = asyncio.create_task(watch())
            try:
                bots = [await c.bot(QQBOT_SHARD_COUNT="2") for _ in range(3)]

                async def settled(shard: int) -> list[int]:
                    deadline = asyncio.get_running_loop().time() + START_TIMEOUT
                    while True:
                        found = await owners(bots, shard)
                        if len(found) == 1 or asyncio.get_running_loop().time() > deadline:
                            return found
                        await asyncio.sleep(0.2)

                for _ in range(2):
                    owner = {shard: await settled(shard) for shard in (0, 1)}
                    assert all(len(o) == 1 for o in owner.values()), owner
                    victim = bots[owner[0][0]]
                    before = len(victim.handled)

                    def flowing(v: Bot = victim, b: int = before) -> bool:
                        return len(v.handled) > b + 5

                    await victim.wait(flowing, "events flowing", 30)
                    process(victim).kill()
                    await victim.exit_code(10)
                # The last process owns both shards.
                owner = {shard: await settled(shard) for shard in (0, 1)}
                assert all(len(o) == 1 for o in owner.values()), owner
                last = bots[owner[0][0]]
                assert owner[1] == owner[0]
                await last.wait(lambda: last.saw("RESUMED"), "RESUMED", START_TIMEOUT)
                await asyncio.sleep(1.0)
                sim.pause_events()
                emitted = {r.event_id for s in (0, 1) for r in sim.emitted_events(shard=s)}

                def printed() -> set[str | None]:
                    return {e["id"] for b in bots for e in b.handled}

                await last.wait(lambda: emitted <= printed(), "every event printed", 30)
                print(
                    f"\n[cluster] 3 processes, 2 shards, 2 kills: emitted {len(emitted)}, "
                    f"lost {len(emitted - printed())}",
                    flush=True,
                )
                assert not overlap, overlap
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
                for bot in c.bots:
                    await bot.cleanup()
    finally:
        server.kill()


async def test_owner_sigterm_hands_the_lease_over_at_once(cluster: ClusterCase) -> None:
    """A rolling update: the owner closes with 4000, drains, writes its final checkpoint and
    releases the lease; the standby takes it at once (cause released) and resumes exactly there:
    0 lost, 0 handled twice."""
    first, second = await owner_and_standby(cluster)
    await cluster.streaming(first, 30)
    loop = asyncio.get_running_loop()
    stopped_at = loop.time()
    assert await first.signal(signal.SIGTERM) == 0
    await second.wait(lambda: second.saw("RESUMED"), "standby RESUMED", START_TIMEOUT)
    assert not second.saw("READY")
    lines = await second.stderr_lines("lease acquired")
    assert any("the previous owner let go" in line for line in lines), lines
    # Faster than a lease: the release, not the expiry, let the standby in.
    assert loop.time() - stopped_at < float(LEASE) + 10
    assert 1000 not in [c.close_code for c in cluster.sim.connections]
    lost, duplicated, _ = await cluster.drain_and_count(second, "cluster SIGTERM handover")
    assert (lost, duplicated) == (0, 0)
