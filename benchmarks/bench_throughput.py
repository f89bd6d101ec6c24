"""End-to-end throughput: the real service path against qq-botpy, flooded from another process.

A flood server (its own process) speaks just enough of the QQ gateway for both clients (token,
``/users/@me``, ``/gateway/bot``, Hello, Identify, READY, heartbeat ACKs) and then writes
pre-framed ~390-byte ``C2C_MESSAGE_CREATE`` dispatches as fast as the receiver takes them (the
frames are built before the flood, so the sender costs little CPU). Each receiver is a process
of its own with a no-op handler that only counts; it measures, between the ``warmup``-th and the
last event, the wall time and its own process CPU time, writes them as JSON and exits.

Receivers:

* ``run``: ``qqbot-gateway run`` itself (``python -m qqbot_gateway run --handler ...``) with
  default settings: metrics, health, logs, and tracing as shipped; the session store off, so
  that every trial starts from nothing.
* ``store``: the same with the session store on (the file store, in a fresh temporary
  directory per trial): what the store costs on the real service path.
* ``notrace``: the same wiring with ``TelemetryConfig(tracing=False)``.
* ``traced``: ``qqbot-gateway run`` with a trace exporter configured: OTLP over HTTP
  (protobuf) to the flood server, which accepts and drops the spans; events sampled at the
  default 1 %, spans batched, encoded and posted by the SDK's export thread.
* ``traced10``: the same at ``QQBOT_TRACE_SAMPLE_RATIO=0.1``.
* ``off``: the library alone, no telemetry attached (no subscribers).
* ``botpy``: qq-botpy 1.2.1, ``on_c2c_message_create`` (its endpoints redirected to the flood
  server the way ``tests/test_botpy_interop.py`` does).
* ``bare``: aiohttp ``receive()`` + ``json.loads``: the floor.

Trials are interleaved (receiver order rotates per round) so that the noise of a shared machine
falls on every receiver alike; the report gives medians. ``--shards`` also runs ``run`` with one
shard and with 50 shards in one process (same total events) and compares CPU per event.
``--tree NAME=DIR`` (repeatable) also runs the ``run`` and ``off`` receivers (and ``run`` x50
with ``--shards``) from another checkout, e.g. the commit before a change, in the same rounds:
before/after side by side (copy this file into that checkout's ``benchmarks/`` first).
A script, not a test::

    .venv/bin/python -m benchmarks.bench_throughput [--events 60000] [--rounds 3] [--shards]
        [--tree before=/tmp/before]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

APP_ID = "1024"
SECRET = "bench-secret"
QQ_TOKEN_URL = "https://bots.qq.com/app/getAppAccessToken"
RECEIVERS = ("run", "store", "notrace", "traced", "traced10", "off", "botpy", "bare")
LABELS = {
    "run": "`qqbot-gateway run` defaults",
    "store": "the same, with the session store on (as by default; a temporary directory)",
    "notrace": "the same, tracing off",
    "traced": "the same, a trace exporter configured (1 % sampled, the default)",
    "traced10": "the same, a trace exporter configured (10 % sampled)",
    "off": "telemetry off (no subscribers)",
    "botpy": "qq-botpy 1.2.1, `on_c2c_message_create`",
    "bare": "bare aiohttp `receive()` + `json.loads`",
}
_ROOT = Path(__file__).resolve().parent.parent


# --- the flood server (its own process) ---------------------------------------------------


def _c2c_frame(seq: int) -> bytes:
    openid = "E4F3B2A1C0D9E8F7A6B5C4D3E2F1A0B9"
    d = {
        "author": {"id": openid, "user_openid": openid, "union_openid": openid},
        "content": "hello there",
        "id": f"ROBOT1.0_bench.{seq:012d}.message.c2c",
        "timestamp": "2026-11-30T10:00:00+08:00",
        "message_scene": {"source": "default"},
        "message_type": 0,
    }
    frame = {"op": 0, "s": seq, "t": "C2C_MESSAGE_CREATE", "id": f"C2C_MESSAGE_CREATE:{seq:010d}"}
    frame["d"] = d
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":")).encode()


def _ws_frame(payload: bytes) -> bytes:
    """One unmasked server-to-client text frame."""
    n = len(payload)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 65536:
        header = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return header + payload


def _json(data: Any) -> web.Response:
    # Exactly "application/json": botpy compares the header verbatim (no charset).
    return web.Response(
        body=json.dumps(data).encode(), headers={"Content-Type": "application/json"}
    )


class FloodServer:
    def __init__(self, shards: int, per_shard: int) -> None:
        self.shards = shards
        self.per_shard = per_shard
        self.port = 0
        self._ready: dict[int, tuple[web.WebSocketResponse, asyncio.Transport]] = {}
        self._all_ready = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/app/getAppAccessToken", self._token)
        app.router.add_get("/gateway/bot", self._gateway_bot)
        app.router.add_get("/gateway", self._gateway_bot)
        app.router.add_get("/users/@me", self._me)
        app.router.add_get("/ws", self._ws)
        app.router.add_post("/v1/traces", self._traces)
        return app

    async def _traces(self, request: web.Request) -> web.Response:
        await request.read()  # an OTLP collector that keeps nothing
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def _token(self, request: web.Request) -> web.Response:
        return _json({"access_token": "bench-token", "expires_in": "7200"})

    async def _gateway_bot(self, request: web.Request) -> web.Response:
        limit = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 64}
        url = f"ws://127.0.0.1:{self.port}/ws"
        return _json({"url": url, "shards": self.shards, "session_start_limit": limit})

    async def _me(self, request: web.Request) -> web.Response:
        return _json({"id": "1", "username": "bench", "avatar": "", "bot": True})

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}}))
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            if frame.get("op") == 1:
                await ws.send_str('{"op":11}')
            elif frame.get("op") == 6:  # a stored session resumed: refused, identify afresh
                await ws.send_str(json.dumps({"op": 9, "d": False}))
            elif frame.get("op") == 2:
                shard = (frame["d"].get("shard") or [0, 1])[0]
                ready = {
                    "version": 1,
                    "session_id": f"bench-session-{shard}",
                    "user": {"id": "1", "username": "bench", "bot": True},
                    "shard": [shard, self.shards],
                }
                await ws.send_str(json.dumps({"op": 0, "s": 1, "t": "READY", "d": ready}))
                transport = request.transport
                assert isinstance(transport, asyncio.Transport)
                self._ready[shard] = (ws, transport)
                if len(self._ready) == self.shards:
                    self._all_ready.set()
        return ws

    async def flood(self) -> None:
        await self._all_ready.wait()
        chunk = 64
        frames = [_ws_frame(_c2c_frame(seq)) for seq in range(2, self.per_shard + 2)]
        blobs = [b"".join(frames[i : i + chunk]) for i in range(0, len(frames), chunk)]
        positions = dict.fromkeys(self._ready, 0)
        while positions:
            wrote = False
            for shard in list(positions):
                ws, transport = self._ready[shard]
                if ws.closed or transport.is_closing():
                    del positions[shard]
                    continue
                if transport.get_write_buffer_size() > 1 << 20:
                    continue
                transport.write(blobs[positions[shard]])
                wrote = True
                positions[shard] += 1
                if positions[shard] == len(blobs):
                    del positions[shard]
            await asyncio.sleep(0 if wrote else 0.0005)


async def _serve(shards: int, per_shard: int) -> None:
    server = FloodServer(shards, per_shard)
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sockets = site._server.sockets if site._server is not None else []  # type: ignore[union-attr]
    server.port = sockets[0].getsockname()[1]
    print(server.port, flush=True)
    await server.flood()
    await asyncio.sleep(3600)  # until the orchestrator terminates us


# --- the receivers (one process each) -----------------------------------------------------


class Sink:
    """Counts events; between the warmup-th and the last it measures wall and CPU time."""

    def __init__(self, total: int, warmup: int, out: str, done: Callable[[], None]) -> None:
        self.total, self.warmup, self.out, self.done = total, warmup, out, done
        self.count = 0
        self.t0 = self.c0 = 0.0

    def __call__(self, event: Any = None) -> None:
        self.count += 1
        if self.count == self.warmup:
            self.t0, self.c0 = time.perf_counter(), time.process_time()
        elif self.count == self.total:
            wall, cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            result = {"events": self.total - self.warmup, "wall": wall, "cpu": cpu, "rss_kb": rss}
            Path(self.out).write_text(json.dumps(result))
            self.done()


def _sink_from_env(done: Callable[[], None]) -> Sink:
    env = os.environ
    return Sink(int(env["BENCH_TOTAL"]), int(env["BENCH_WARMUP"]), env["BENCH_OUT"], done)


_SINK: Sink | None = None


def sink(event: Any) -> None:
    """``--handler benchmarks.bench_throughput:sink`` for ``qqbot-gateway run``."""
    global _SINK
    if _SINK is None:
        _SINK = _sink_from_env(lambda: os.kill(os.getpid(), signal.SIGTERM))
    _SINK(event)


async def _receive_library(tracing: bool | None) -> None:
    from qqbot_gateway.adapter.client import QQBotClient
    from qqbot_gateway.config import load_settings
    from qqbot_gateway.telemetry import Telemetry

    settings = load_settings(None)
    client = QQBotClient(settings.client_config())
    finished = asyncio.Event()
    client.add_handler(_sink_from_env(finished.set))
    telemetry = None
    if tracing is not None:
        telemetry = Telemetry(replace(settings.telemetry_config(), tracing=tracing))
        telemetry.attach(client)
        await telemetry.start()
    await client.start()
    await finished.wait()
    await client.close(drain_timeout=1.0)
    if telemetry is not None:
        await telemetry.stop()


async def _receive_botpy(port: int) -> None:
    import botpy
    import botpy.http
    import botpy.robot
    from botpy.message import C2CMessage

    botpy.http.Route.SCHEME = "http"  # type: ignore[attr-defined]
    botpy.http.Route.DOMAIN = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    token_url = f"http://127.0.0.1:{port}/app/getAppAccessToken"

    class TokenSession:
        def __init__(self) -> None:
            self._session = aiohttp.ClientSession()

        def post(self, url: str, **kwargs: Any) -> Any:
            return self._session.post(token_url if url == QQ_TOKEN_URL else url, **kwargs)

        async def close(self) -> None:
            await self._session.close()

    botpy.robot.aiohttp = types.SimpleNamespace(  # type: ignore[attr-defined]
        ClientSession=TokenSession, ClientTimeout=aiohttp.ClientTimeout
    )
    count = _sink_from_env(lambda: os._exit(0))

    class Bot(botpy.Client):  # type: ignore[misc]
        async def on_c2c_message_create(self, message: C2CMessage) -> None:
            count(message)

    bot = Bot(intents=botpy.Intents(public_messages=True), bot_log=None)
    await bot.start(appid=APP_ID, secret=SECRET)


async def _receive_bare(port: int) -> None:
    count = _sink_from_env(lambda: None)
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"ws://127.0.0.1:{port}/ws", max_msg_size=0) as ws,
    ):
        await ws.receive()
        identify = {"token": "QQBot bench-token", "intents": 1 << 25, "shard": [0, 1]}
        await ws.send_str(json.dumps({"op": 2, "d": identify}))
        while count.count < count.total:
            msg = await ws.receive()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                return
            frame = json.loads(msg.data)
            if frame.get("t") == "C2C_MESSAGE_CREATE":
                count(frame)


def _receive(kind: str, port: int) -> None:
    if kind == "botpy":
        asyncio.run(_receive_botpy(port))
    elif kind == "bare":
        asyncio.run(_receive_bare(port))
    else:
        asyncio.run(_receive_library({"off": None, "notrace": False, "full": True}[kind]))


# --- the orchestrator ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    receiver: str
    events: int
    wall: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.events / self.wall

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.events * 1e6


def _trial(
    kind: str, events: int, warmup: int, shards: int, timeout: float, root: Path = _ROOT
) -> Result:
    per_shard = -(-(events + warmup) // shards)
    total = per_shard * shards
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.bench_throughput", "serve", str(shards), str(per_shard)],
        cwd=_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    receiver: subprocess.Popen[bytes] | None = None
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            env = {
                **os.environ,
                "BENCH_TOTAL": str(total),
                "BENCH_WARMUP": str(total - events),
                "BENCH_OUT": str(out),
                "QQBOT_APP_ID": APP_ID,
                "QQBOT_CLIENT_SECRET": SECRET,
                "QQBOT_API_BASE": f"http://127.0.0.1:{port}",
                "QQBOT_TOKEN_URL": f"http://127.0.0.1:{port}/app/getAppAccessToken",
                "QQBOT_SHARD_COUNT": str(shards),
                "QQBOT_HTTP_ADDR": "127.0.0.1:0",
                "QQBOT_INTENTS": "GROUP_AND_C2C_EVENT",
                # No session store (every trial identifies afresh, no state file left), except
                # for ``store``: the file store in this trial's temporary directory.
                "QQBOT_STATE_DIR": tmp if kind == "store" else "off",
            }
            for name in [k for k in env if k.startswith("OTEL_")]:
                del env[name]
            if kind.startswith("traced"):
                if kind == "traced10":
                    env["QQBOT_TRACE_SAMPLE_RATIO"] = "0.1"
                env["OTEL_TRACES_EXPORTER"] = "otlp"
                env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = f"http://127.0.0.1:{port}/v1/traces"
            if kind in ("run", "store", "traced", "traced10"):
                argv = [
                    "-m",
                    "qqbot_gateway",
                    "run",
                    "--handler",
                    "benchmarks.bench_throughput:sink",
                ]
            else:
                argv = ["-m", "benchmarks.bench_throughput", "receive", kind, str(port)]
            receiver = subprocess.Popen(
                [sys.executable, *argv],
                cwd=root,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + timeout
            while not out.exists() or not out.read_text():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{kind}: no result within {timeout:g}s")
                if receiver.poll() is not None and not out.exists():
                    raise RuntimeError(f"{kind}: receiver exited with {receiver.returncode}")
                time.sleep(0.05)
            time.sleep(0.05)
            data = json.loads(out.read_text())
        return Result(kind, data["events"], data["wall"], data["cpu"])
    finally:
        for proc in (receiver, server):
            if proc is None:
                continue
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        if server.stdout is not None:
            server.stdout.close()


def _median(results: list[Result]) -> tuple[float, float]:
    return (
        statistics.median(r.rate for r in results),
        statistics.median(r.cpu_us for r in results),
    )


def _spread(values: list[float]) -> str:
    """``median [p25, p75] (min to max)`` of ratios."""
    if len(values) < 2:
        return f"{values[0]:.2f}x"
    q1, _, q3 = statistics.quantiles(values, n=4)
    med = statistics.median(values)
    return f"{med:.2f}x [{q1:.2f}, {q3:.2f}] ({min(values):.2f} to {max(values):.2f})"


def _versions() -> str:
    import importlib.metadata as md

    names = ("aiohttp", "qq-botpy", "prometheus-client", "opentelemetry-sdk", "orjson")
    parts = []
    for name in names:
        with contextlib.suppress(md.PackageNotFoundError):
            parts.append(f"{name} {md.version(name)}")
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"Python {platform.python_version()}, {', '.join(parts)}; {cpu}, "
        f"{os.cpu_count()} CPUs; load average at start {os.getloadavg()[0]:.2f}"
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "serve":
        asyncio.run(_serve(int(argv[1]), int(argv[2])))
        return
    if argv and argv[0] == "receive":
        _receive(argv[1], int(argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000, help="measured events per trial")
    parser.add_argument("--warmup", type=int, default=5_000, help="events before measuring")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--receivers", default=",".join(RECEIVERS))
    parser.add_argument("--shards", action="store_true", help="also 1 vs 50 shards (run)")
    parser.add_argument("--timeout", type=float, default=180.0, help="per trial, seconds")
    parser.add_argument(
        "--tree", action="append", default=[], metavar="NAME=DIR", help="another checkout"
    )
    args = parser.parse_args(argv)
    trees: dict[str, Path] = {}
    for spec in args.tree:
        name, sep, path = spec.partition("=")
        if not sep or not (Path(path) / "benchmarks" / "bench_throughput.py").is_file():
            parser.error(f"--tree {spec!r}: expected NAME=DIR with benchmarks/bench_throughput.py")
        trees[name] = Path(path).resolve()
    kinds = [k.strip() for k in args.receivers.split(",") if k.strip()]
    unknown = set(kinds) - set(RECEIVERS)
    if unknown:
        parser.error(f"unknown receivers: {', '.join(sorted(unknown))}")
    print(_versions())
    results: dict[str, list[Result]] = {k: [] for k in kinds}
    plans: list[tuple[str, int, Path]] = [(k, 1, _ROOT) for k in kinds]
    if args.shards:
        results["run x50"] = []
        if "run" not in kinds:
            results["run"] = []
            plans.append(("run", 1, _ROOT))
        plans.append(("run x50", 50, _ROOT))
    for tree, path in trees.items():
        for kind, shards in [("run", 1), ("off", 1)] + ([("run x50", 50)] if args.shards else []):
            results[f"{tree}: {kind}"] = []
            plans.append((f"{tree}: {kind}", shards, path))
    for round_no in range(args.rounds):
        shift = round_no % len(plans)
        for name, shards, root in plans[shift:] + plans[:shift]:
            kind = name.split(": ")[-1].split()[0]
            r = _trial(kind, args.events, args.warmup, shards, args.timeout, root)
            results[name].append(r)
            print(
                f"round {round_no + 1} {name:14s} {r.rate:9.0f} events/s {r.cpu_us:6.1f} us/event",
                flush=True,
            )
    base = _median(results["botpy"])[0] if results.get("botpy") else None
    print()
    print(
        "| receiver | events/s (median) | CPU µs per event | vs qq-botpy (events/s) "
        "| vs qq-botpy (CPU per event) |"
    )
    print("|---|---|---|---|---|")
    base_cpu = _median(results["botpy"])[1] if results.get("botpy") else None
    for name, rs in results.items():
        if not rs or name.endswith("x50"):
            continue
        rate, cpu = _median(rs)
        ratio = f"{rate / base:.2f}x" if base else ""
        cpu_ratio = f"{base_cpu / cpu:.2f}x" if base_cpu else ""
        tree, _, kind = name.rpartition(": ")
        label = f"{tree}: {LABELS[kind]}" if tree else LABELS[kind]
        print(f"| {label} | {rate:,.0f} | {cpu:.1f} | {ratio} | {cpu_ratio} |")
    if results.get("botpy"):
        # Each round ran every receiver once, minutes apart at most: a ratio within a round
        # cancels the slow drifts of a shared machine. Median and quartiles over the rounds.
        print("\nvs qq-botpy, round by round: median [p25, p75] (min to max)")
        for name, rs in results.items():
            if name == "botpy" or name.endswith("x50") or len(rs) != len(results["botpy"]):
                continue
            pairs = list(zip(rs, results["botpy"], strict=True))
            rate = _spread([r.rate / b.rate for r, b in pairs])
            cpu = _spread([b.cpu_us / r.cpu_us for r, b in pairs])
            print(f"  {name:16s} events/s {rate}; CPU per event {cpu}")
    if results.get("run") and results.get("off"):
        run_rate, off_rate = _median(results["run"])[0], _median(results["off"])[0]
        print(f"\ntelemetry cost (run defaults vs off): {1 - run_rate / off_rate:+.1%} events/s")
    if results.get("run") and results.get("off"):
        run_cpu, off_cpu = _median(results["run"])[1], _median(results["off"])[1]
        print(f"telemetry cost (run defaults vs off): {run_cpu / off_cpu - 1:+.1%} CPU per event")
        pairs = list(zip(results["run"], results["off"], strict=True))
        print(
            "telemetry, round by round (run vs off): events/s "
            f"{_spread([r.rate / o.rate for r, o in pairs])}, CPU per event "
            f"{_spread([r.cpu_us / o.cpu_us for r, o in pairs])}"
        )
    if results.get("run") and results.get("store"):
        pairs = list(zip(results["store"], results["run"], strict=True))
        print(
            "session store, round by round (store vs run): events/s "
            f"{_spread([s.rate / r.rate for s, r in pairs])}, CPU per event "
            f"{_spread([s.cpu_us / r.cpu_us for s, r in pairs])}"
        )
    for prefix in ["", *(f"{tree}: " for tree in trees)]:
        if results.get(f"{prefix}run x50"):
            one = _median(results[f"{prefix}run"])[1]
            fifty = _median(results[f"{prefix}run x50"])[1]
            print(
                f"{prefix}1 vs 50 shards (run defaults): {one:.1f} vs {fifty:.1f} CPU µs per "
                f"event ({fifty / one - 1:+.1%})"
            )


if __name__ == "__main__":
    main()
