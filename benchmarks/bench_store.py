"""The session store's cost: handled events/s with the store on vs off, and checkpoint lag.

Both parts run the adapter's real per-event path in process, without sockets, the way
``bench_telemetry`` does: a ~390-byte ``C2C_MESSAGE_CREATE`` frame through a real
``GatewaySession`` (parse, dedupe, counters) read by the connection's own read loop
(``GatewayConnection._read_loop`` over a stand-in socket, ``benchmarks/_inproc.py``), and a real
``Dispatcher`` (bounded queue, handler task, a no-op handler: the worst case for a relative
cost); the pipeline and the flood are ``benchmarks/_inproc.py``'s, shared with
``bench_failover``. "On" wires a :class:`~qqbot_gateway.adapter.checkpoint.Checkpointer`
exactly as a shard does (``adapter/shard.py``: the dispatcher keeps its progress per handled
event, the checkpointer reads it) over the real
:class:`~qqbot_gateway.adapter.store.FileSessionStore` in a temporary directory: atomic
writes with ``fsync`` of the file and the directory, batched by the default 100 ms window,
in a worker thread.

1. **Throughput**: a flood as fast as the loop takes it; store off and on interleaved, rounds
   repeated, medians compared (a shared 2-core machine: noise falls on both alike).
2. **Checkpoint lag at 1,000 events/s**: events fed at a steady 1,000/s for a few seconds;
   every 5 ms the number of events handled but not yet covered by a durable write is sampled
   (``Checkpointer.lag``), and each write's duration is recorded.

A script, not a test (it writes ``benchmarks/bench_store.md`` with ``--write``)::

    .venv/bin/python -m benchmarks.bench_store [--events 60000] [--rounds 31] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import platform
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks._inproc import APP_ID, Flood, Pipeline, file_store, store_rounds
from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter.checkpoint import DEFAULT_DEDUPE_IDS, MAX_HOLD
from qqbot_gateway.adapter.dispatch import Dispatcher, Progress
from qqbot_gateway.adapter.protocol import GatewayEvent
from qqbot_gateway.adapter.session import GatewaySession
from qqbot_gateway.adapter.store import FileSessionStore

REPORT = Path(__file__).with_name("bench_store.md")


def frames(n: int) -> list[bytes]:
    from benchmarks.bench_throughput import _c2c_frame

    return [_c2c_frame(seq) for seq in range(2, n + 2)]


@dataclass
class LagResult:
    rate: float
    seconds: float
    samples: list[int]
    writes: list[float]
    handled: int
    final_seq: int


async def paced(payloads: list[bytes], rate: float, seconds: float, directory: str) -> LagResult:
    """Feed ``rate`` events/s; sample the checkpoint lag every 5 ms."""
    store = FileSessionStore(directory, APP_ID, 0)
    store.acquire()
    pipe = Pipeline(len(payloads) + 10, store)
    await pipe.start()
    ckpt = pipe.checkpointer
    assert ckpt is not None
    loop = asyncio.get_running_loop()
    samples: list[int] = []
    stop = asyncio.Event()

    async def sampler() -> None:
        while not stop.is_set():
            samples.append(ckpt.lag)
            await asyncio.sleep(0.005)

    task = asyncio.create_task(sampler())
    n = min(len(payloads), int(rate * seconds))
    start = loop.time()
    tick = 0.01  # feed in 10 ms slices: 10 events per slice at 1,000/s
    sent = 0
    while sent < n:
        due = min(n, int((loop.time() - start) * rate) + 1)
        pipe.reader.push(payloads[sent:due])
        sent = due
        await asyncio.sleep(tick)
    elapsed = loop.time() - start
    await asyncio.sleep(0.3)  # let the last window close
    stop.set()
    await task
    await pipe.close()
    state = FileSessionStore(directory, APP_ID, 0).load()
    return LagResult(
        rate=n / elapsed,
        seconds=elapsed,
        samples=samples,
        writes=pipe.writes,
        handled=pipe.handled,
        final_seq=state.seq if state else 0,
    )


def write_cpu(directory: str, n: int = 50) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one atomic write of a full state (all ids), alone."""
    from qqbot_gateway.adapter.store import StoredSession

    store = FileSessionStore(directory, APP_ID, 0)
    store.acquire()
    ids = tuple(f"C2C_MESSAGE_CREATE:{i:010d}" for i in range(DEFAULT_DEDUPE_IDS))
    state = StoredSession(APP_ID, 0, 1, "bench", 5, ids, time.time())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, wall0 = usage.ru_utime + usage.ru_stime, time.perf_counter()
    for _ in range(n):
        store.save(state)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    store.close()
    return (usage.ru_utime + usage.ru_stime - cpu0) / n, (time.perf_counter() - wall0) / n


async def _dispatch_ns(events: list[GatewayEvent], progress: Progress | None) -> float:
    """ns per event through the real dispatcher (put, the handler task, a no-op handler)."""
    session = GatewaySession(intents=1)
    dispatcher = Dispatcher(
        session,
        bus=ev.EventBus(),
        handlers=lambda t: [_noop],
        capacity=len(events) + 10,
        progress=progress,
    )
    dispatcher.start()
    gc.collect()
    start = time.perf_counter_ns()
    put = dispatcher.put
    for event in events:
        put(event)
    while not dispatcher.idle:  # noqa: ASYNC110 - the dispatcher has no drained event
        await asyncio.sleep(0)
    elapsed = time.perf_counter_ns() - start
    await dispatcher.close(1.0)
    return elapsed / len(events)


def _noop(event: GatewayEvent) -> None:
    return None


def inline_cost(n: int = 100_000, rounds: int = 7) -> float:
    """ns per event of the dispatcher's inline progress update: the real dispatcher with a
    Progress (a session store) against the same without one, best of ``rounds`` each."""
    events = [
        GatewayEvent("C2C_MESSAGE_CREATE", {}, seq, f"id-{seq}", 0, "s", False)
        for seq in range(1, n + 1)
    ]
    best: dict[bool, float] = {True: math.inf, False: math.inf}
    for _ in range(rounds):
        for tracked in (True, False):
            progress = Progress(DEFAULT_DEDUPE_IDS) if tracked else None
            best[tracked] = min(best[tracked], asyncio.run(_dispatch_ns(events, progress)))
    return max(0.0, best[True] - best[False])


def _spread(values: list[float], fmt: str = "{:.3f}") -> str:
    """``median [p25, p75] (min to max)``."""
    q1, _, q3 = statistics.quantiles(values, n=4)
    parts = (statistics.median(values), q1, q3, min(values), max(values))
    med, lo, hi, least, most = (fmt.format(v) for v in parts)
    return f"{med} [{lo}, {hi}] ({least} to {most})"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def interleaved(payloads: list[bytes], rounds: int, parent: str) -> dict[str, list[Flood]]:
    """``rounds`` floods with the store off and on (a new file store in ``parent`` each time),
    the order alternating each round."""
    stores = {"off": lambda: None, "on": lambda: file_store(parent)}
    return asyncio.run(store_rounds(payloads, stores, rounds))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--long-events", type=int, default=500_000)
    parser.add_argument("--long-rounds", type=int, default=6)
    parser.add_argument("--write", action="store_true", help=f"write {REPORT.name}")
    args = parser.parse_args()
    payloads = frames(args.events)
    with tempfile.TemporaryDirectory(prefix="qqbot-bench-store-") as tmp:
        runs = interleaved(payloads, args.rounds, tmp)
        # Sustained floods, longer than checkpoint.MAX_HOLD: writes must still complete.
        long_runs = interleaved(frames(args.long_events), args.long_rounds, tmp)
        lag = asyncio.run(paced(payloads, 1000.0, args.seconds, os.path.join(tmp, "lag")))
        one_write_cpu, one_write_wall = write_cpu(os.path.join(tmp, "cpu"))
    per_event_inline = inline_cost()
    off = statistics.median(f.rate for f in runs["off"])
    on = statistics.median(f.rate for f in runs["on"])
    cpu_off = statistics.median(f.cpu_ns for f in runs["off"])
    cpu_on = statistics.median(f.cpu_ns for f in runs["on"])
    cost, cpu_cost = 1 - on / off, cpu_on / cpu_off - 1
    # Against the adapter's own CPU per event (the loop thread's, store off) and its rate.
    intrinsic = (per_event_inline + one_write_cpu * 10 * cpu_off) / cpu_off
    best_off = max(f.rate for f in runs["off"])
    best_on = max(f.rate for f in runs["on"])
    min_cpu_off = min(f.cpu_ns for f in runs["off"])
    min_cpu_on = min(f.cpu_ns for f in runs["on"])
    # Each round's on/off pair ran back to back: its ratio cancels slow drifts of the machine.
    pair_rate = [b.rate / a.rate for a, b in zip(runs["off"], runs["on"], strict=True)]
    pair_cpu = [b.cpu_ns / a.cpu_ns for a, b in zip(runs["off"], runs["on"], strict=True)]
    all_off = statistics.median(f.all_ns for f in runs["off"])
    all_on = statistics.median(f.all_ns for f in runs["on"])
    long_cost = (
        statistics.median(f.cpu_ns for f in long_runs["on"])
        / statistics.median(f.cpu_ns for f in long_runs["off"])
        - 1
    )
    long_ratios = [
        a.cpu_ns / b.cpu_ns for a, b in zip(long_runs["on"], long_runs["off"], strict=True)
    ]
    lag_ms = [s / lag.rate * 1000 for s in lag.samples]
    writes_ms = [w * 1000 for w in lag.writes]
    lines = [
        "# Session store benchmark",
        "",
        "Generated by `python -m benchmarks.bench_store --write` "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, a machine shared with other "
        "jobs). In process, no sockets: a real `GatewaySession`, the driver's own read loop "
        "and `Dispatcher` "
        "with a no-op handler (the adapter's own per-event cost, the worst case for a relative "
        "figure); the store is the real `FileSessionStore` (atomic writes, `fsync` of file and "
        "directory, 100 ms batches, in a worker thread) in a temporary directory.",
        "",
        "## Throughput: store on vs off",
        "",
        f"{args.events} events per run, {args.rounds} rounds, off and on interleaved (the "
        "order alternates each round); medians, with the spread as quartiles [p25, p75] and "
        f"extremes (min to max). Load average at the end: {os.getloadavg()[0]:.2f}.",
        "",
        "| store | handled events/s: median [p25, p75] (min to max) "
        "| loop thread CPU per event: median [p25, p75] (min to max) "
        "| process CPU per event (median) |",
        "|---|---|---|---|",
        f"| off | {_spread([f.rate for f in runs['off']], '{:,.0f}')} "
        f"| {_spread([f.cpu_ns for f in runs['off']], '{:,.0f}')} ns | {all_off:,.0f} ns |",
        f"| on | {_spread([f.rate for f in runs['on']], '{:,.0f}')} "
        f"| {_spread([f.cpu_ns for f in runs['on']], '{:,.0f}')} ns | {all_on:,.0f} ns |",
        "",
        f"**Store on/off, medians: throughput ratio {on / off:.3f} ({cost:.1%} cost), event "
        f"loop CPU per event {cpu_on / cpu_off:.3f} ({cpu_cost:+.1%}). Round by round (each "
        f"on run against the off run next to it): throughput ratio {_spread(pair_rate)}, loop "
        f"CPU per event {_spread(pair_cpu)}. Best runs: throughput ratio "
        f"{best_on / best_off:.3f} ({1 - best_on / best_off:.1%} cost), loop CPU per event "
        f"{min_cpu_on / min_cpu_off:.3f} ({min_cpu_on / min_cpu_off - 1:+.1%})** (goal: <= 5 %). "
        "The loop thread's CPU time is what bounds a shard's rate (the writes run in a worker "
        "thread, on another core); the process CPU column adds that thread and the kernel's "
        "work for each `fsync` (a journal commit, whose cost depends on everything "
        f"else the file system has to flush: {all_on / all_off - 1:+.1%} here). The "
        "wall-clock rate swings with the other jobs on the machine. "
        f"Checkpoint writes completed during each flood: "
        f"{', '.join(str(f.writes) for f in runs['on'])}. A write started under a flood cannot "
        "finish before the flood ends: the worker thread that runs it needs the GIL back after "
        "each system call, and a saturated loop, which releases the GIL around every `epoll` "
        "call, takes it back before the waiting thread has woken up (CPython's hand-off), "
        "while each of those releases wakes the waiting thread for nothing. That cost the "
        "loop 4 to 6 % of its time per event here before the writer learned to hold a write "
        "back while the loop thread is busy for 95 % of a poll window "
        "(`checkpoint.SATURATED`); the state is written in the first window with time to "
        "spare, or after `checkpoint.MAX_HOLD` (1 s) with the GIL handed to the worker thread, "
        "so at saturation the durable watermark trails by about a second (these floods are "
        "shorter than that; at 1,000 events/s, below, writes run every 100 ms).",
        "",
        "Runs, in order (events/s): off "
        f"{', '.join(f'{f.rate:,.0f}' for f in runs['off'])}; on "
        f"{', '.join(f'{f.rate:,.0f}' for f in runs['on'])}.",
        "",
        "## The same cost, measured piece by piece",
        "",
        "The flood figures above move by several per cent from run to run on this shared "
        "machine (other jobs, CPU frequency, a second thread competing for two cores). The "
        "store's own work, measured alone:",
        "",
        "- per event, the dispatcher's inline progress update (no call; it keeps the last "
        "handled event), measured through the real dispatcher with and without it: "
        f"**{per_event_inline:.0f} ns**, {per_event_inline / cpu_off:.1%} of the adapter's "
        f"{cpu_off:,.0f} ns of CPU per event;",
        f"- per checkpoint write (a full state with {DEFAULT_DEDUPE_IDS} event ids; JSON, "
        "temporary file, two "
        f"`fsync`, rename): **{one_write_cpu * 1e3:.2f} ms of CPU** (user + system), "
        f"{one_write_wall * 1e3:.1f} ms of wall time mostly waiting on the disk (in the worker "
        "thread); at most 10 writes/s (the 100 ms window) is "
        f"{one_write_cpu * 10 * 1e3:.1f} ms of CPU per second, i.e. "
        f"{one_write_cpu * 10 * cpu_off:.0f} ns per event when the loop is saturated (one event "
        f"every {cpu_off:,.0f} ns); at 1,000 events/s the same "
        f"{one_write_cpu * 10 * 1e3:.1f} ms per second sits next to the adapter's own "
        f"{cpu_off * 1000 / 1e6:.1f} ms: large in proportion at a low rate, "
        f"{one_write_cpu * 10:.1%} of one core in absolute terms;",
        f"- together, on a saturated loop: **{intrinsic:.1%}** of the adapter's per-event cost "
        "(goal: <= 5 %).",
        "",
        "Reading the two together: the store's own work is well inside the goal, and at the "
        "rates a shard sees in production it is small in absolute terms (10 writes/s at most: "
        f"{one_write_cpu * 10 * 1e3:.1f} ms of CPU per second, "
        f"{one_write_cpu * 10:.1%} of one core, whatever the event rate). The flood "
        "comparison on this shared 2-core machine moves by several per cent between "
        f"successive runs of this script (this run: {cpu_cost:+.1%} loop CPU, median), hence "
        "the many interleaved rounds and the round-by-round ratios; below saturation the "
        "writes run on the worker thread while the loop waits for events, and their CPU "
        "(the figure above) is what they cost.",
        "",
        "## A sustained flood",
        "",
        f"{args.long_events:,} events per run (seconds each, longer than "
        f"`checkpoint.MAX_HOLD` = {MAX_HOLD:g} s), {args.long_rounds} rounds, interleaved: a "
        "loop saturated for good still checkpoints.",
        "",
        "| store | seconds per flood (median) | loop thread CPU per event: median [p25, p75] "
        "| checkpoint writes completed during each flood |",
        "|---|---|---|---|",
        f"| off | {statistics.median(args.long_events / f.rate for f in long_runs['off']):.2f} "
        f"| {_spread([f.cpu_ns for f in long_runs['off']], '{:,.0f}')} ns | |",
        f"| on | {statistics.median(args.long_events / f.rate for f in long_runs['on']):.2f} "
        f"| {_spread([f.cpu_ns for f in long_runs['on']], '{:,.0f}')} ns "
        f"| {', '.join(str(f.writes) for f in long_runs['on'])} |",
        "",
        f"Loop CPU per event, on/off, medians: {long_cost:+.1%}; round by round: "
        f"{', '.join(f'{r:.3f}' for r in long_ratios)}.",
        "",
        "## Checkpoint lag at 1,000 events/s",
        "",
        f"{lag.handled - 1} events fed at {lag.rate:,.0f}/s for {lag.seconds:.1f} s; the lag "
        "(events handled but not yet durable) sampled every 5 ms "
        f"({len(lag.samples)} samples).",
        "",
        "| | mean | p50 | p99 | max |",
        "|---|---|---|---|---|",
        f"| lag, events | {statistics.mean(lag.samples):.1f} | {pct(lag.samples, 0.5):.0f} | "
        f"{pct(lag.samples, 0.99):.0f} | {max(lag.samples)} |",
        f"| lag, ms of traffic | {statistics.mean(lag_ms):.1f} | {pct(lag_ms, 0.5):.0f} | "
        f"{pct(lag_ms, 0.99):.0f} | {max(lag_ms):.0f} |",
        f"| write duration, ms | {statistics.mean(writes_ms):.2f} | {pct(writes_ms, 0.5):.2f} | "
        f"{pct(writes_ms, 0.99):.2f} | {max(writes_ms):.2f} |",
        "",
        f"{len(lag.writes)} writes in {lag.seconds:.1f} s ({len(lag.writes) / lag.seconds:.1f}/s: "
        "the 100 ms window batches about 100 events per write). After the final flush the state "
        f"file holds seq {lag.final_seq} = every event handled "
        f"({lag.handled} including READY). The lag is what a SIGKILL at that instant could "
        "hand to a handler a second time after the restart (docs/session-store.md); nothing is "
        "lost either way.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        REPORT.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
