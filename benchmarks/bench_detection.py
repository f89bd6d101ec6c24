"""Detection latency per fault kind, in heartbeat intervals (H), and the false-positive run.

Each fault kind runs N trials against the simulator over real sockets, each injected at a
random phase of the heartbeat cycle after a healthy stretch; the adapter runs at its default
liveness settings (only the reconnect backoff is shortened, so one run stays short). For every
trial it records when the adapter declares the connection dead (from the fault) and which layer
fired, then lets it resume and checks that no event was lost or duplicated.

Fault kinds:

* ``blackhole``: the link goes silent both ways, the socket stays open (a NAT that forgot the
  flow); new connections work. The server answers pings, so the ping layer is armed.
* ``blackhole_pings_ignored``: the same, against a server that never answers WebSocket pings
  (the ping layer turns itself off; the ACK and idle layers must do it).
* ``stop_acks``: the server stops sending op 11 while the socket, pings and events flow.
* ``netns_flow``: a kernel-made half-open link. The simulator and the adapter run as separate
  processes in two network namespaces; nft drops every packet of the live flows (no FIN, no
  RST: both kernels keep the connection ESTABLISHED), new connections pass. Needs root,
  ``ip netns`` and nft or iptables (the helpers of ``tests/reliability/netns.py``).

The false-positive run (``--fp-minutes``) keeps one connection under realistic abuse and
counts every connection the adapter gives up: ACK and pong latency median 50 ms, jitter to 10x,
1 % spikes to 0.2 H, events at a low rate (the link is quiet most of the time, so the ping
layer probes), and the adapter's event loop stalled for 100 ms every few seconds. The simulator
runs in a child process there, so the stalls hit the adapter only. A second short run does the
same against a server that never answers pings (zero reconnects expected).

    .venv/bin/python -m benchmarks.bench_detection --trials 30 --interval-ms 1000 --fp-minutes 10
    .venv/bin/python -m benchmarks.bench_detection --trials 3 --interval-ms 41250 \\
        --kinds blackhole,stop_acks --fp-minutes 0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import random
import statistics
import sys
import time
from asyncio.subprocess import PIPE
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter.client import ClientConfig, QQBotClient, Secret
from qqbot_gateway.adapter.connection import TransportConfig
from qqbot_gateway.adapter.session import LivenessConfig
from qqbot_gateway.adapter.supervisor import ReconnectPolicy
from qqbot_gateway.simulator import Simulator, SimulatorConfig

KINDS = ("blackhole", "blackhole_pings_ignored", "stop_acks", "netns_flow")


@dataclass
class KindResult:
    kind: str
    detections: list[float] = field(default_factory=list)  # in H
    back: list[float] = field(default_factory=list)  # fault -> RESUMED, in H
    layers: Counter[str] = field(default_factory=Counter)
    lags: list[float] = field(default_factory=list)  # worst event loop lag in each trial, s
    emitted: int = 0
    lost: int = 0
    duplicated: int = 0


def client_config(base: str, token_url: str, interval: float) -> ClientConfig:
    return ClientConfig(
        app_id="1",
        client_secret=Secret("bench"),
        api_base=base,
        token_url=token_url,
        # Default liveness; the handshake limits follow the interval so slow H stays sane.
        liveness=LivenessConfig(
            hello_timeout=max(2.0, 2 * interval), handshake_timeout_min=max(2.0, 2 * interval)
        ),
        transport=TransportConfig(connect_timeout=2.0, close_timeout=0.5),
        reconnect=ReconnectPolicy(backoff_base=0.05, backoff_cap=0.25, healthy_after=interval),
    )


class Recorder:
    def __init__(self, client: QQBotClient) -> None:
        self.log: list[ev.LifecycleEvent] = []
        client.events.subscribe(self.log.append)
        self.loop = asyncio.get_running_loop()
        self.lag = 0.0  # worst event loop lag since the last reset (a 5 ms sleep overshooting)
        self._lag_task = asyncio.create_task(self._watch_lag(), name="bench loop lag")

    async def _watch_lag(self) -> None:
        while True:
            before = self.loop.time()
            await asyncio.sleep(0.005)
            self.lag = max(self.lag, self.loop.time() - before - 0.005)

    def stop(self) -> None:
        self._lag_task.cancel()

    async def wait(
        self, kind: type[ev.LifecycleEvent], after: int, timeout: float
    ) -> ev.LifecycleEvent:
        deadline = self.loop.time() + timeout
        while self.loop.time() < deadline:
            for e in self.log[after:]:
                if isinstance(e, kind):
                    return e
            await asyncio.sleep(0.005)
        raise TimeoutError(f"no {kind.__name__} within {timeout:g}s")


async def run_kind(kind: str, trials: int, interval_ms: int, rng: random.Random) -> KindResult:
    interval = interval_ms / 1000
    sim = Simulator(
        SimulatorConfig(
            app_id="1",
            client_secret="bench",
            heartbeat_interval_ms=interval_ms,
            event_rate=10,
            seed=rng.randrange(1 << 30),
        )
    )
    await sim.start("127.0.0.1", 0)
    if kind == "blackhole_pings_ignored":
        sim.ignore_pings()
    client = QQBotClient(client_config(sim.base_url, sim.token_url, interval))
    rec = Recorder(client)
    delivered: list[str | None] = []
    client.add_handler(lambda e: delivered.append(e.event_id))
    result = KindResult(kind)
    loop = asyncio.get_running_loop()
    await client.start()
    try:
        await rec.wait(ev.SessionReady, 0, 10)
        for _ in range(trials):
            # A healthy stretch (long enough for the ping layer to calibrate: it arms on the
            # first pong, or turns itself off after 3 unanswered pings, ~4 H), then the fault
            # at a random phase of the heartbeat cycle.
            settle = 5.0 if kind == "blackhole_pings_ignored" else 2.0
            await asyncio.sleep(interval * (settle + rng.random()))
            mark = len(rec.log)
            rec.lag = 0.0
            t_fault = loop.time()
            if kind == "stop_acks":
                sim.stop_acks()
            else:
                sim.blackhole(current=True, new=False)
            zombie = await rec.wait(ev.ZombieDetected, mark, 4 * interval + 2)
            assert isinstance(zombie, ev.ZombieDetected)
            result.detections.append((zombie.monotonic - t_fault) / interval)
            result.layers[zombie.reason] += 1
            result.lags.append(rec.lag)
            sim.resume_acks()
            resumed = await rec.wait(ev.SessionResumed, mark, 4 * interval + 5)
            result.back.append((resumed.monotonic - t_fault) / interval)
            sim.unblackhole()  # drop the dead sockets the simulator still holds
        sim.pause_events()
        await asyncio.sleep(max(1.0, 0.5 * interval))
    finally:
        rec.stop()
        await client.close()
        await sim.stop()
    emitted = {r.event_id for r in sim.emitted_events()}
    got = [d for d in delivered if d in emitted]
    result.emitted = len(emitted)
    result.lost = len(emitted - set(got))
    result.duplicated = len(got) - len(set(got))
    return result


async def run_netns(trials: int, interval_ms: int, rng: random.Random) -> KindResult | None:
    from tests.reliability.netns import (
        CLIENT_SCRIPT,
        SIM_SCRIPT,
        JsonLines,
        NetnsPair,
        netns_unavailable,
    )

    reason = netns_unavailable()
    if reason is not None:
        print(f"netns_flow skipped: {reason}", file=sys.stderr)
        return None
    interval = interval_ms / 1000
    result = KindResult("netns_flow")
    lifecycle = {"READY", "RESUMED"}

    def delivered(client: JsonLines) -> list[tuple[str, int, str | None]]:
        return [
            (e["session_id"], e["seq"], e["id"])
            for e in client.of("event")
            if e["type"] not in lifecycle
        ]

    with NetnsPair.create("bd") as pair:
        sim: JsonLines | None = None
        client: JsonLines | None = None
        try:
            sim = await JsonLines.start(
                pair.sim.cmd(
                    sys.executable, "-c", SIM_SCRIPT, pair.sim.address, "0", str(interval_ms), "10"
                ),
                "simulator",
            )
            up = await sim.wait_line("listening", 20)
            sim_port = int(up["ws"].rsplit(":", 1)[1].split("/", 1)[0])
            client = await JsonLines.start(
                pair.client.cmd(
                    sys.executable,
                    "-c",
                    CLIENT_SCRIPT,
                    up["base"],
                    up["token_url"],
                    up["ws"],
                    str(interval),
                    "on",
                ),
                "adapter",
            )
            await client.wait_line("ready", 20)
            adapter = client
            since = 0  # the lines of the current connection start here
            for _ in range(trials):
                await asyncio.sleep(interval * (2 + rng.random()))
                await adapter.wait_for(
                    functools.partial(_armed_since, adapter.lines, since),
                    10,
                    "the ping layer to arm on this connection",
                )
                mark = len(adapter.lines)
                ports = pair.client.established_ports(sim_port)
                # CLOCK_MONOTONIC: the adapter loop's clock. The cut counts from before the
                # nft command (conservative: the drop starts somewhere while it runs).
                cut = time.monotonic()
                pair.client.block_flows(ports)
                nft = time.monotonic() - cut
                gone = await adapter.wait_line("disconnected", 10 * interval + 2, after=mark)
                back = await adapter.wait_line("resumed", 10 * interval + 5, after=mark)
                pair.client.unblock()
                since = len(adapter.lines)
                result.detections.append((gone["t"] - cut) / interval)
                result.back.append((back["t"] - cut) / interval)
                result.layers[gone["reason"]] += 1
                # The adapter runs in its own process (its loop lag is not measured here): the
                # column holds the time the nft command took instead.
                result.lags.append(nft)
            await sim.send("pause")
            await sim.wait_line("paused", 5)
            await asyncio.sleep(max(1.0, interval))
            before = len(sim.of("dump"))
            await sim.send("dump")
            await sim.wait_for(lambda: len(sim.of("dump")) > before, 10, "a dump")
            dump = sim.of("dump")[-1]
            emitted = {(s, q, i) for s, q, i, _t in dump["emitted"]}
            got = delivered(adapter)
            result.emitted = len(emitted)
            result.lost = len(emitted - set(got))
            result.duplicated = len(got) - len(set(got))
        finally:
            for proc in (client, sim):
                if proc is not None:
                    await proc.stop()
    return result


def _armed_since(lines: list[dict[str, Any]], start: int) -> bool:
    return any(x.get("k") == "ping_layer" and x.get("state") == "armed" for x in lines[start:])


# --- the false-positive run ---------------------------------------------------------------

#: The simulator in a child process: argv interval_ms event_rate seed ignore_pings(0/1).
SIM_CHILD = r"""
import asyncio, json, sys
from qqbot_gateway.simulator import Simulator, SimulatorConfig

async def main():
    interval_ms, rate, seed = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    sim = Simulator(SimulatorConfig(app_id="1", client_secret="bench",
                                    heartbeat_interval_ms=interval_ms, event_rate=rate, seed=seed))
    await sim.start("127.0.0.1", 0)
    sim.set_reply_latency(0.05, jitter=10.0, spike_rate=0.01, spike=0.2 * interval_ms / 1000,
                          seed=seed)
    if sys.argv[4] == "1":
        sim.ignore_pings()
    print(json.dumps({"base": sim.base_url, "token": sim.token_url}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()  # until the parent closes stdin
    sim.pause_events()
    st = sim.state()
    print(json.dumps({"emitted": sum(b["emitted"] for b in st["shards"].values()),
                      "heartbeats": st["heartbeats"], "connections": st["connections"]}),
          flush=True)
    await sim.stop()

asyncio.run(main())
"""


@dataclass
class FpResult:
    label: str
    duration: float
    interval: float
    zombies: Counter[str] = field(default_factory=Counter)
    disconnects: Counter[str] = field(default_factory=Counter)
    stalls: int = 0
    heartbeats: int = 0
    probes: int = 0
    acks: int = 0
    pings: int = 0
    pongs: int = 0
    ack_rtt: list[float] = field(default_factory=list)
    pong_rtt: list[float] = field(default_factory=list)
    ping_states: list[str] = field(default_factory=list)
    dispatched: int = 0
    server: dict[str, Any] = field(default_factory=dict)


async def run_fp(
    label: str, minutes: float, interval_ms: int, seed: int, ignore_pings: bool
) -> FpResult:
    interval = interval_ms / 1000
    argv = [str(interval_ms), "1.0", str(seed), str(int(ignore_pings))]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SIM_CHILD, *argv, stdin=PIPE, stdout=PIPE
    )
    assert proc.stdout is not None and proc.stdin is not None
    urls = json.loads(await proc.stdout.readline())
    client = QQBotClient(client_config(urls["base"], urls["token"], interval))
    result = FpResult(label, minutes * 60, interval)
    rng = random.Random(seed)

    def on_event(e: ev.LifecycleEvent) -> None:
        if isinstance(e, ev.ZombieDetected):
            result.zombies[e.reason] += 1
        elif isinstance(e, ev.Disconnected):
            result.disconnects[e.reason] += 1
        elif isinstance(e, ev.HeartbeatSent):
            result.heartbeats += 1
            result.probes += e.unacked > 1
        elif isinstance(e, ev.HeartbeatAcked):
            result.acks += 1
            result.ack_rtt.append(e.rtt)
        elif isinstance(e, ev.PingSent):
            result.pings += 1
        elif isinstance(e, ev.PongReceived):
            result.pongs += 1
            result.pong_rtt.append(e.rtt)
        elif isinstance(e, ev.PingLayerChanged):
            result.ping_states.append(e.state)
        elif isinstance(e, ev.EventDispatched):
            result.dispatched += 1

    client.events.subscribe(on_event)
    await client.start()
    loop = asyncio.get_running_loop()
    end = loop.time() + minutes * 60
    try:
        while (left := end - loop.time()) > 0:
            await asyncio.sleep(min(left, rng.uniform(2.0, 8.0)))
            if loop.time() < end:
                time.sleep(0.1)  # a 100 ms stall of the whole event loop  # noqa: ASYNC251
                result.stalls += 1
    finally:
        await client.close()
        proc.stdin.close()
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        with contextlib.suppress(ValueError):
            result.server = json.loads(line)
        await asyncio.wait_for(proc.wait(), 10)
    return result


# --- reporting ------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def kind_lines(results: list[KindResult], interval_ms: int, trials: int) -> list[str]:
    out = [
        f"Detection at H = {interval_ms / 1000:g} s, {trials} trials per fault kind "
        "(in H, from the fault to the verdict; back = fault to RESUMED; loop lag = the worst "
        "event loop lag measured during the worst trial, a loaded machine's share of it; for "
        "netns_flow, the time the nft command took in that trial, counted in the detection):",
        "",
        "| fault kind | min | median | worst | loop lag in worst (ms) | back (worst) "
        "| layer fired | events | lost | dup |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        layers = ", ".join(f"{k} x{v}" for k, v in r.layers.most_common())
        worst = max(range(len(r.detections)), key=r.detections.__getitem__)
        out.append(
            f"| {r.kind} | {min(r.detections):.2f} | {statistics.median(r.detections):.2f} | "
            f"**{r.detections[worst]:.2f}** | {r.lags[worst] * 1000:.0f} | {max(r.back):.2f} | "
            f"{layers} | {r.emitted} | {r.lost} | {r.duplicated} |"
        )
    return out


def fp_lines(r: FpResult) -> list[str]:
    ms = 1000
    return [
        f"False-positive run `{r.label}`: {r.duration / 60:g} min at H = {r.interval:g} s; "
        f"{r.stalls} loop stalls of 100 ms; ACK and pong latency median 50 ms, jitter to 10x, "
        f"1 % spikes to {0.2 * r.interval * ms:.0f} ms.",
        "",
        f"- connections given up: **{sum(r.disconnects.values())}** "
        f"(zombies {dict(r.zombies) or 0}, disconnects {dict(r.disconnects) or 0})",
        f"- heartbeats sent {r.heartbeats} (of which ACK probes {r.probes}), ACK rounds "
        f"answered {r.acks}; ACK time p50 {pct(r.ack_rtt, 0.5) * ms:.0f} ms, p99 "
        f"{pct(r.ack_rtt, 0.99) * ms:.0f} ms, max {max(r.ack_rtt, default=0) * ms:.0f} ms",
        f"- pings sent {r.pings}, pongs {r.pongs}; pong RTT p50 {pct(r.pong_rtt, 0.5) * ms:.0f} "
        f"ms, p99 {pct(r.pong_rtt, 0.99) * ms:.0f} ms, max "
        f"{max(r.pong_rtt, default=0) * ms:.0f} ms",
        f"- ping layer states seen: {' -> '.join(r.ping_states)}",
        f"- events dispatched {r.dispatched}; simulator: {r.server}",
    ]


async def main_async(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    lines: list[str] = []
    failed = False
    kinds = [k for k in args.kinds.split(",") if k]
    results = []
    for kind in kinds:
        if kind not in KINDS:
            print(f"unknown kind {kind!r}; known: {', '.join(KINDS)}", file=sys.stderr)
            return 2
        if kind == "netns_flow":
            measured = await run_netns(args.trials, args.interval_ms, rng)
            if measured is None:
                continue  # no network namespaces here: said on stderr
            r = measured
        else:
            r = await run_kind(kind, args.trials, args.interval_ms, rng)
        results.append(r)
        print(kind_lines([r], args.interval_ms, args.trials)[-1], flush=True)
        failed |= r.lost > 0 or r.duplicated > 0
    if results:
        lines += kind_lines(results, args.interval_ms, args.trials)
    if args.fp_minutes > 0:
        for label, ignore in (("pings answered", False), ("pings never answered", True)):
            minutes = args.fp_minutes if not ignore else max(1.0, args.fp_minutes / 5)
            r_fp = await run_fp(label, minutes, args.interval_ms, args.seed, ignore)
            lines += ["", *fp_lines(r_fp)]
            failed |= sum(r_fp.disconnects.values()) > 0
    print("\n".join(lines))
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--interval-ms", type=int, default=1000)
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated fault kinds")
    parser.add_argument(
        "--fp-minutes", type=float, default=0.0, help="length of the false-positive run"
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
