"""``redis+sentinel://``: a real Sentinel (``redis-server --sentinel``) in front of a real
redis-server; the lease and the fenced store work through the master it names."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from pathlib import Path

import pytest

from qqbot_gateway.adapter.store import StoredSession
from qqbot_gateway.cluster.runtime import open_cluster
from qqbot_gateway.cluster.shards import ShardTerm
from tests.redis_harness import REDIS_SERVER, RedisServer, free_port, needs_redis

pytestmark = [pytest.mark.slow, needs_redis]


async def test_a_sentinel_url_reaches_the_master(tmp_path: Path, redis_server: RedisServer) -> None:
    assert REDIS_SERVER is not None
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor qqmaster 127.0.0.1 {redis_server.port} 1\n"
    )
    proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once; stopped below
        [REDIS_SERVER, str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"redis+sentinel://127.0.0.1:{port}/qqmaster/0"
        deadline = time.monotonic() + 20
        while True:
            try:
                cluster = await open_cluster(url, "1024", ttl=5.0, timeout=2.0)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        try:
            ran: list[int] = []

            async def run_term(term: ShardTerm) -> None:
                store = cluster.store_factory(0)
                state = StoredSession("1024", 0, 1, "s-1", 9, ("e1",), time.time())
                await asyncio.to_thread(store.save, state)
                loaded = await asyncio.to_thread(store.load)
                assert loaded is not None and loaded.seq == 9
                ran.append(term.token)
                cluster.ownership.stop()

            async with asyncio.timeout(20):
                await cluster.ownership.hold(0, run_term)
            assert ran == [1]
        finally:
            await cluster.close()
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()
