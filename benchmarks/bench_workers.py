"""Stream delivery: gateway -> Redis -> 2 workers, against ``local`` delivery, side by side.

Every process is real: the flood server of :mod:`benchmarks.bench_throughput` (its own
process; pre-framed ~390-byte ``C2C_MESSAGE_CREATE`` dispatches), ``qqbot-gateway run``,
Debian's ``redis-server`` (AOF on, ``appendfsync everysec``: the common production setting) and
two ``qqbot-gateway worker`` processes, all on this machine.

* **Throughput** (a flood, as fast as the receiver takes it), with a no-op handler:
  ``local`` is ``run --handler`` (handlers in the gateway process); ``stream`` is ``run`` with
  ``QQBOT_DELIVERY=stream`` plus two workers. For ``stream`` the driver polls the group's
  ``XINFO GROUPS`` (entries read minus pending = acknowledged) and times from the
  ``warmup``-th acknowledged event to the last: events/s *handled and acknowledged*, end to end.
  CPU: user + system time of every process of the path (gateway, Redis, workers) over the run,
  from ``/proc``.
* **Latency** at a paced rate (default 1,000 events/s): the flood server writes each frame with
  its send time in ``content``; the handler records ``time.time() - sent`` (one clock, one
  machine): the time from the platform's write to the handler's call, through the gateway's
  read, its append, Redis and a worker's read for ``stream``.

Trials are interleaved (``local``, ``stream``, ``local``, ...) so the noise of a shared machine
falls on both alike; the report gives each trial and the medians. A script, not a test::

    .venv/bin/python -m benchmarks.bench_workers [--events 40000] [--rounds 2]
        [--rate 1000] [--seconds 10] [--out benchmarks/bench_workers.md]
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parent.parent
APP_ID = "1024"
SECRET = "bench-secret"
GROUP = "handlers"


# --- handlers (in the gateway or worker processes) ----------------------------------------


def noop(event: Any) -> None:
    """The throughput handler: nothing."""


_LATENCIES: list[float] = []


def _dump_latencies() -> None:
    out = os.environ.get("BENCH_LAT_DIR")
    if out and _LATENCIES:
        Path(out, f"lat-{os.getpid()}.json").write_text(json.dumps(_LATENCIES))


def latency(event: Any) -> None:
    """The latency handler: the time since the flood server wrote the frame."""
    if not _LATENCIES:
        atexit.register(_dump_latencies)
    try:
        sent = float(event.data["content"])
    except (KeyError, TypeError, ValueError):
        return
    _LATENCIES.append(time.time() - sent)


# --- the paced server (its own process) ---------------------------------------------------


async def _serve_paced(rate: float, count: int) -> None:
    from aiohttp import web

    from benchmarks.bench_throughput import FloodServer, _ws_frame

    class Paced(FloodServer):
        async def flood(self) -> None:
            await self._all_ready.wait()
            _ws, transport = self._ready[0]
            loop = asyncio.get_running_loop()
            start = loop.time()
            seq = 2
            while seq < count + 2 and not transport.is_closing():
                due = int((loop.time() - start) * rate) + 2
                while seq < min(due, count + 2):
                    transport.write(_ws_frame(_frame(seq, time.time())))
                    seq += 1
                await asyncio.sleep(0.0005)

    server = Paced(1, count)
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    listening: Any = site._server
    sockets = listening.sockets if listening is not None else []
    server.port = sockets[0].getsockname()[1]
    print(server.port, flush=True)
    await server.flood()
    await asyncio.sleep(3600)


def _frame(seq: int, sent: float) -> bytes:
    openid = "E4F3B2A1C0D9E8F7A6B5C4D3E2F1A0B9"
    d = {
        "author": {"id": openid, "user_openid": openid, "union_openid": openid},
        "content": repr(sent),
        "id": f"ROBOT1.0_bench.{seq:012d}.message.c2c",
        "timestamp": "2026-11-30T10:00:00+08:00",
        "message_scene": {"source": "default"},
        "message_type": 0,
    }
    frame = {"op": 0, "s": seq, "t": "C2C_MESSAGE_CREATE", "id": f"C2C_MESSAGE_CREATE:{seq:010d}"}
    frame["d"] = d
    return json.dumps(frame, separators=(",", ":")).encode()


# --- the driver ---------------------------------------------------------------------------


def _cpu(pid: int) -> float:
    """User + system seconds of ``pid`` (children not included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[Any]] = []

    def spawn(self, argv: list[str], env: dict[str, str] | None = None, **kw: Any) -> Any:
        proc = subprocess.Popen(argv, cwd=_ROOT, env=env, **kw)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


def _redis(tmp: Path, procs: Procs) -> tuple[str, subprocess.Popen[Any]]:
    from tests.redis_harness import free_port

    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    proc = procs.spawn(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(tmp),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--logfile",
            str(tmp / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    client.close()
    return f"redis://127.0.0.1:{port}/0", proc


def _env(port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QQBOT_", "OTEL_"))}
    env.update(
        {
            "QQBOT_APP_ID": APP_ID,
            "QQBOT_CLIENT_SECRET": SECRET,
            "QQBOT_API_BASE": f"http://127.0.0.1:{port}",
            "QQBOT_TOKEN_URL": f"http://127.0.0.1:{port}/app/getAppAccessToken",
            "QQBOT_HTTP_ADDR": "127.0.0.1:0",
            "QQBOT_INTENTS": "GROUP_AND_C2C_EVENT",
            "QQBOT_STATE_DIR": "off",
            "QQBOT_LOG_LEVEL": "WARNING",
            **extra,
        }
    )
    return env


def _acked(client: Any, stream: str) -> int:
    try:
        groups = client.xinfo_groups(stream)
    except Exception:  # noqa: BLE001 - the stream does not exist yet
        return 0
    for g in groups:
        if g["name"] in (GROUP, GROUP.encode()):
            return int(g.get("entries-read") or 0) - int(g["pending"])
    return 0


@dataclass
class Trial:
    mode: str
    events: int
    wall: float
    cpu: float
    #: The 1-minute load average after the trial (other work on the shared machine).
    load: float = 0.0

    @property
    def rate(self) -> float:
        return self.events / self.wall

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.events * 1e6


def throughput(mode: str, events: int, warmup: int, timeout: float) -> Trial:
    total = events + warmup
    procs = Procs()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        try:
            server = procs.spawn(
                [sys.executable, "-m", "benchmarks.bench_throughput", "serve", "1", str(total)],
                stdout=subprocess.PIPE,
                text=True,
            )
            port = int(server.stdout.readline())
            if mode == "local":
                out = tmp / "result.json"
                env = _env(
                    port, BENCH_TOTAL=str(total), BENCH_WARMUP=str(warmup), BENCH_OUT=str(out)
                )
                gw = procs.spawn(
                    [
                        sys.executable,
                        "-m",
                        "qqbot_gateway",
                        "run",
                        "--handler",
                        "benchmarks.bench_throughput:sink",
                    ],
                    env,
                    stdout=subprocess.DEVNULL,
                )
                c0 = _cpu(gw.pid)
                deadline = time.monotonic() + timeout
                while not out.exists() or not out.read_text():
                    if time.monotonic() > deadline or gw.poll() is not None:
                        raise RuntimeError(f"local: no result (rc {gw.poll()})")
                    time.sleep(0.05)
                data = json.loads(out.read_text())
                return Trial(mode, data["events"], data["wall"], data["cpu"] or _cpu(gw.pid) - c0)
            import redis

            url, rproc = _redis(tmp, procs)
            # The flood server cannot resume a session, and it writes faster than any receiver
            # reads: a full handler queue (backpressure, a close for a resume) would end the
            # trial. Room for the whole flood; the rate is measured at the far end anyway
            # (acknowledged by the workers). ``local`` keeps the default queue: its no-op
            # handler keeps up with the reader.
            env = _env(
                port,
                QQBOT_REDIS_URL=url,
                QQBOT_DELIVERY="stream",
                QQBOT_HANDLER_QUEUE_SIZE=str(total + 1000),
            )
            workers = [
                procs.spawn(
                    [
                        sys.executable,
                        "-m",
                        "qqbot_gateway",
                        "worker",
                        "--handler",
                        "benchmarks.bench_workers:noop",
                    ],
                    {**env, "QQBOT_WORKER_NAME": f"w{i}"},
                    stdout=subprocess.DEVNULL,
                )
                for i in range(2)
            ]
            time.sleep(3.0)  # both workers read before the flood starts
            gw = procs.spawn(
                [sys.executable, "-m", "qqbot_gateway", "run"], env, stdout=subprocess.DEVNULL
            )
            client = redis.Redis.from_url(url)
            stream = f"qqbot:{{{APP_ID}}}:events"
            pids = [gw.pid, rproc.pid, *(w.pid for w in workers)]
            deadline = time.monotonic() + timeout
            t0: float | None = None
            c0 = 0.0
            from_ = 0
            while True:
                acked = _acked(client, stream)
                now = time.perf_counter()
                if t0 is None and acked >= warmup:
                    t0, c0, from_ = now, sum(map(_cpu, pids)), acked
                if acked >= total:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"stream: {acked} of {total} acknowledged in {timeout}s")
                time.sleep(0.01)
            cpu = sum(map(_cpu, pids)) - c0
            client.close()
            assert t0 is not None
            return Trial(mode, total - from_, now - t0, cpu)
        finally:
            procs.stop()


def latencies(mode: str, rate: float, seconds: float, timeout: float) -> list[float]:
    count = int(rate * seconds)
    procs = Procs()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        lat_dir = tmp / "lat"
        lat_dir.mkdir()
        try:
            env_extra = {"BENCH_LAT_DIR": str(lat_dir)}
            if mode == "stream":
                url, _ = _redis(tmp, procs)
                env_extra.update(QQBOT_REDIS_URL=url, QQBOT_DELIVERY="stream")
            # The server starts after the receivers are up: it floods from the first READY.
            server = procs.spawn(
                [sys.executable, "-m", "benchmarks.bench_workers", "serve", str(rate), str(count)],
                stdout=subprocess.PIPE,
                text=True,
            )
            port = int(server.stdout.readline())
            env = _env(port, **env_extra)
            handlers = ["--handler", "benchmarks.bench_workers:latency"]
            receivers = []
            if mode == "stream":
                for i in range(2):
                    receivers.append(
                        procs.spawn(
                            [sys.executable, "-m", "qqbot_gateway", "worker", *handlers],
                            {**env, "QQBOT_WORKER_NAME": f"w{i}"},
                            stdout=subprocess.DEVNULL,
                        )
                    )
                time.sleep(3.0)
                gw = procs.spawn(
                    [sys.executable, "-m", "qqbot_gateway", "run"], env, stdout=subprocess.DEVNULL
                )
            else:
                gw = procs.spawn(
                    [sys.executable, "-m", "qqbot_gateway", "run", *handlers],
                    env,
                    stdout=subprocess.DEVNULL,
                )
                receivers.append(gw)
            time.sleep(seconds + 2.0)
            deadline = time.monotonic() + timeout
            if mode == "stream":
                import redis

                client = redis.Redis.from_url(env_extra["QQBOT_REDIS_URL"])
                while _acked(client, f"qqbot:{{{APP_ID}}}:events") < count:
                    if time.monotonic() > deadline:
                        raise RuntimeError("stream latency: not every event acknowledged")
                    time.sleep(0.05)
                client.close()
            for proc in receivers:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
            if mode == "stream":
                gw.send_signal(signal.SIGTERM)
                gw.wait(30)
            values: list[float] = []
            for path in lat_dir.glob("lat-*.json"):
                values.extend(json.loads(path.read_text()))
            if len(values) < count:
                raise RuntimeError(f"{mode} latency: {len(values)} of {count} events recorded")
            return values
        finally:
            procs.stop()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "serve":
        asyncio.run(_serve_paced(float(args[1]), int(args[2])))
        return
    parser = argparse.ArgumentParser(prog="bench_workers")
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--warmup", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--out", type=Path, default=None)
    opts = parser.parse_args(args)
    trials: list[Trial] = []
    lat: dict[str, list[list[float]]] = {"local": [], "stream": []}
    loads: dict[str, list[float]] = {"local": [], "stream": []}
    for r in range(opts.rounds):
        order = ("local", "stream") if r % 2 == 0 else ("stream", "local")
        for mode in order:
            t = throughput(mode, opts.events, opts.warmup, opts.timeout)
            t.load = os.getloadavg()[0]
            trials.append(t)
            print(
                f"throughput {mode}: {t.rate:,.0f} events/s, {t.cpu_us:.0f} us CPU/event",
                flush=True,
            )
        for mode in order:
            values = latencies(mode, opts.rate, opts.seconds, opts.timeout)
            lat[mode].append(values)
            loads[mode].append(os.getloadavg()[0])
            print(
                f"latency {mode} at {opts.rate:g}/s: p50 {_pct(values, 0.5) * 1e3:.2f} ms, "
                f"p99 {_pct(values, 0.99) * 1e3:.2f} ms, max {max(values) * 1e3:.1f} ms",
                flush=True,
            )
    report = _report(opts, trials, lat, loads)
    print(report)
    if opts.out is not None:
        opts.out.write_text(report)


def _report(
    opts: Any,
    trials: list[Trial],
    lat: dict[str, list[list[float]]],
    loads: dict[str, list[float]],
) -> str:
    lines = [
        "# bench_workers: stream delivery (gateway -> Redis -> 2 workers) against local",
        "",
        f"Machine: {os.cpu_count()} CPUs, {platform.platform()}, Python "
        f"{platform.python_version()}; "
        + subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, check=False
        ).stdout.split(" sha")[0]
        + " (AOF, appendfsync everysec). A shared machine: other work ran beside this.",
        "",
        f"Command: `.venv/bin/python -m benchmarks.bench_workers --events {opts.events} "
        f"--rounds {opts.rounds} --rate {opts.rate:g} --seconds {opts.seconds:g}`",
        "",
        f"## Throughput: a flood of {opts.events:,} events (after {opts.warmup:,} of warmup), "
        "no-op handler",
        "",
        "| trial | delivery | events/s handled | CPU per event (all processes of the path) "
        "| load average after |",
        "|---|---|---|---|---|",
    ]
    for i, t in enumerate(trials, 1):
        lines.append(f"| {i} | {t.mode} | {t.rate:,.0f} | {t.cpu_us:.0f} us | {t.load:.1f} |")
    for mode in ("local", "stream"):
        rates = [t.rate for t in trials if t.mode == mode]
        cpus = [t.cpu_us for t in trials if t.mode == mode]
        lines.append(
            f"| median | {mode} | **{statistics.median(rates):,.0f}** | "
            f"{statistics.median(cpus):.0f} us | |"
        )
    lines += [
        "",
        f"## Latency at {opts.rate:g} events/s for {opts.seconds:g} s: platform write -> "
        "handler call",
        "",
        "| delivery | trial | p50 | p90 | p99 | max | load average after |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode in ("local", "stream"):
        for i, values in enumerate(lat[mode], 1):
            lines.append(
                f"| {mode} | {i} | {_pct(values, 0.5) * 1e3:.2f} ms | "
                f"{_pct(values, 0.9) * 1e3:.2f} ms | **{_pct(values, 0.99) * 1e3:.2f} ms** | "
                f"{max(values) * 1e3:.1f} ms | {loads[mode][i - 1]:.1f} |"
            )
        p99s = [_pct(values, 0.99) * 1e3 for values in lat[mode]]
        lines.append(f"| {mode} | median | | | **{statistics.median(p99s):.2f} ms** | | |")
    lines += [
        "",
        "## Reading it",
        "",
        "* `local` is the rate at which the gateway's own handler is called (the sink of",
        "  bench_throughput.py, timed inside the process): one process, no broker. `stream` is",
        "  timed at the far end: events *acknowledged* by the two workers (every one appended by",
        "  the gateway, delivered by Redis, handled, marked done and `XACK`ed), counted in Redis.",
        "* Where the CPU goes for `stream`: every process of the path (gateway, `redis-server`,",
        "  two workers) on 2 cores, so the sum of CPU per event caps the rate at about",
        "  2 s / (CPU per event); the flood server's CPU is not counted (it pre-builds frames).",
        "* The latency is one machine's clock (the flood server writes the send time into each",
        "  frame; the handler reads `time.time()`); the stream path adds the gateway's batch",
        "  append (one script call per batch, an `XADD` per event inside it), Redis, and the",
        "  worker's `XREADGROUP` (a blocking read answered as soon as an entry arrives) and",
        "  dedupe script.",
        "* Goals (issue 19): >= 20,000 events/s through the stream path on 2 cores; p99 <= 10 ms",
        "  at 1,000 events/s. Trials on a loaded machine vary by 2x; the medians are the figures.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
