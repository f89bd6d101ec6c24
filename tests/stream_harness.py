"""Gateway and worker processes against a real ``redis-server``, for the stream e2e tests.

``qqbot-gateway run`` (``QQBOT_DELIVERY=stream``) and ``qqbot-gateway worker`` as subprocesses
with their side servers on free loopback ports, against the simulator running in the test.
Shared by tests/test_cluster_stream_e2e.py and tests/test_workers_dashboard_e2e.py.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from pathlib import Path
from typing import Any

from qqbot_gateway.simulator import Simulator
from tests.ports import free_port
from tests.redis_harness import RedisServer

from .proc_harness import CliProcess
from .test_cli import APP_ID, bot_env

#: Interpreter start plus imports on a loaded 2-core machine.
START_TIMEOUT = 60.0
#: A dead worker's entries are claimed after this (the production default is 30 s).
CLAIM_IDLE = "1"
#: The session's own dispatches (no event id) travel the stream too.
LIFECYCLE = {"READY", "RESUMED"}


class Proc(CliProcess):
    """One ``run`` or ``worker`` process; stdout parsed as JSON lines as it comes."""


class Fleet:
    """The simulator, Redis, a state directory, one gateway and its workers."""

    def __init__(self, sim: Simulator, redis: RedisServer, state_dir: Path) -> None:
        self.sim = sim
        self.redis = redis
        self.state_dir = state_dir
        self.procs: list[Proc] = []
        self.workers: list[Proc] = []

    def env(self, **overrides: str) -> dict[str, str]:
        settings = {
            "QQBOT_STATE_DIR": str(self.state_dir),
            "QQBOT_LOG_FORMAT": "console",
            "QQBOT_REDIS_URL": self.redis.url,
            "QQBOT_DELIVERY": "stream",
            "QQBOT_STREAM_CLAIM_IDLE": CLAIM_IDLE,
            "QQBOT_CHECKPOINT_INTERVAL": "0.2",
        }
        return bot_env(self.sim.base_url, free_port(), **{**settings, **overrides})

    async def gateway(self) -> Proc:
        proc = await Proc(self.env(), "run").start()
        self.procs.append(proc)
        return proc

    async def worker(self, name: str, *args: str, **env: str) -> Proc:
        proc = Proc(self.env(QQBOT_WORKER_NAME=name, **env), "worker", *args, "--print-events")
        await proc.start()
        self.procs.append(proc)
        self.workers.append(proc)
        await proc.wait(lambda: proc.logged("reading"), f"worker {name} started", START_TIMEOUT)
        return proc

    async def live_session(self, gateway: Proc, what: str) -> None:
        def live() -> bool:
            return any(s.state == "active" and s.connected for s in self.sim.sessions())

        await gateway.wait(live, what, START_TIMEOUT)

    async def pending_of(self, consumer: str) -> int:
        from qqbot_gateway.cluster.connect import open_redis
        from qqbot_gateway.cluster.stream import StreamKeys

        client = await open_redis(self.redis.url)
        try:
            summary: Any = await client.xpending(StreamKeys(APP_ID).stream, "handlers")
        finally:
            await client.aclose()
        return sum(
            int(c["pending"]) for c in summary["consumers"] if c["name"] == consumer.encode()
        )

    def printed(self) -> collections.Counter[str]:
        return collections.Counter(
            str(e["id"]) for w in self.workers for e in w.events if e["type"] not in LIFECYCLE
        )

    async def drain_and_count(
        self, label: str, *, unhandled: frozenset[str] = frozenset()
    ) -> tuple[int, list[str]]:
        """Wait for every emitted event (but ``unhandled``) to be printed by some worker;
        (lost, duplicated ids)."""
        emitted = {str(r.event_id) for r in self.sim.emitted_events(shard=0)} - unhandled
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(90):
                while not emitted <= set(self.printed()):  # noqa: ASYNC110 - stdout readers
                    await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # a late duplicate (a claim) would show by now
        counts = self.printed()
        lost = len(emitted - set(counts))
        dups = [i for i, n in counts.items() if n > 1]
        print(
            f"\n[stream] {label}: emitted {len(emitted)}, lost {lost}, duplicated {len(dups)}",
            flush=True,
        )
        return lost, dups


async def side(proc: Proc, path: str, *, status: bool = False) -> str:
    """GET ``path`` from the process's side server: the body, or the status code."""
    import aiohttp

    url = f"http://{proc.env['QQBOT_HTTP_ADDR']}{path}"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return str(resp.status) if status else await resp.text()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the first sample of ``name`` with ``labels`` in a Prometheus text body."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} {labels} in the metrics")


async def flood(sim: Simulator, n: int, *, chunk: int = 250, pause: float = 0.05) -> None:
    for _ in range(n // chunk):
        await sim.emit_events(chunk, "C2C_MESSAGE_CREATE", shard=0)
        await asyncio.sleep(pause)
