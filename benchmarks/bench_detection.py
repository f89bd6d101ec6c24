"""Detection latency of a half-open link, in heartbeat intervals, and time to RESUMED.

Runs N trials against the simulator over real sockets. Each trial blackholes the link at a
random phase of the heartbeat cycle (the TCP socket stays open, every byte is dropped both
ways, new connections hang too), measures when the adapter declares the zombie, then heals
the link and measures the time from the link coming back to RESUMED. Prints the distribution
and the worst case.

    .venv/bin/python -m benchmarks.bench_detection --trials 30 --interval-ms 500
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter.client import ClientConfig, QQBotClient, Secret
from qqbot_gateway.adapter.connection import TransportConfig
from qqbot_gateway.adapter.session import LivenessConfig
from qqbot_gateway.adapter.supervisor import ReconnectPolicy
from qqbot_gateway.simulator import Simulator, SimulatorConfig


async def run(trials: int, interval_ms: int, seed: int) -> int:
    rng = random.Random(seed)
    interval = interval_ms / 1000
    sim = Simulator(
        SimulatorConfig(
            app_id="1", client_secret="bench", heartbeat_interval_ms=interval_ms, event_rate=10
        )
    )
    await sim.start("127.0.0.1", 0)
    cfg = ClientConfig(
        app_id="1",
        client_secret=Secret("bench"),
        api_base=sim.base_url,
        token_url=sim.token_url,
        liveness=LivenessConfig(hello_timeout=2 * interval, handshake_timeout_min=2 * interval),
        transport=TransportConfig(connect_timeout=2.0, close_timeout=0.5),
        reconnect=ReconnectPolicy(backoff_base=0.05, backoff_cap=0.25, healthy_after=interval),
    )
    client = QQBotClient(cfg)
    log: list[ev.LifecycleEvent] = []
    client.events.subscribe(log.append)
    delivered: list[str | None] = []
    client.add_handler(lambda e: delivered.append(e.event_id))
    loop = asyncio.get_running_loop()

    async def wait(kind: type[ev.LifecycleEvent], after: int, timeout: float) -> ev.LifecycleEvent:
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            for e in log[after:]:
                if isinstance(e, kind):
                    return e
            await asyncio.sleep(0.005)
        raise TimeoutError(kind.__name__)

    detections: list[float] = []
    recoveries: list[float] = []
    reasons: dict[str, int] = {}
    await client.start()
    try:
        await wait(ev.SessionReady, 0, 10)
        for _ in range(trials):
            # settle into a healthy rhythm, then cut at a random phase of the cycle
            await asyncio.sleep(interval * (2 + rng.random()))
            mark = len(log)
            t_cut = loop.time()
            sim.blackhole(current=True, new=True)
            zombie = await wait(ev.ZombieDetected, mark, 10 * interval)
            assert isinstance(zombie, ev.ZombieDetected)
            detections.append((zombie.monotonic - t_cut) / interval)
            reasons[zombie.reason] = reasons.get(zombie.reason, 0) + 1
            await asyncio.sleep(interval * rng.random())
            mark = len(log)
            t_heal = loop.time()
            sim.unblackhole()
            await wait(ev.SessionResumed, mark, 20 * interval)
            resumed = next(e for e in log[mark:] if isinstance(e, ev.SessionResumed))
            recoveries.append(resumed.monotonic - t_heal)
        sim.pause_events()
        await asyncio.sleep(1.0)
    finally:
        await client.close()
        await sim.stop()
    emitted = {r.event_id for r in sim.emitted_events()}
    got = [d for d in delivered if d in emitted]
    lost = len(emitted - set(got))
    dupes = len(got) - len(set(got))
    print(f"trials: {trials}, heartbeat interval {interval_ms} ms, layers fired: {reasons}")
    print(
        "detection (intervals): "
        f"min {min(detections):.2f}  median {statistics.median(detections):.2f}  "
        f"max {max(detections):.2f}"
    )
    print(
        "link back -> RESUMED (s): "
        f"min {min(recoveries):.3f}  median {statistics.median(recoveries):.3f}  "
        f"max {max(recoveries):.3f}"
    )
    print(f"events emitted {len(emitted)}, lost {lost}, duplicated {dupes}")
    return 0 if lost == 0 and dupes == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--interval-ms", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    return asyncio.run(run(args.trials, args.interval_ms, args.seed))


if __name__ == "__main__":
    sys.exit(main())
