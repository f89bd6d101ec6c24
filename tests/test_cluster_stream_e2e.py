"""Gateway -> Redis stream -> workers, as processes: SIGKILLs mid-flood, nothing lost.

Real sockets everywhere: the simulator runs in the test on 127.0.0.1, ``redis-server`` is
Debian's (``tests/redis_harness.py``), and ``qqbot-gateway run`` (``QQBOT_DELIVERY=stream``)
and ``qqbot-gateway worker --print-events`` are subprocesses. Every case counts event ids across
every worker: *lost* = emitted by the simulator and printed by no worker, *duplicated* = printed
more than once. The figures are printed (``-s``) for docs/workers.md.

Where a duplicate is allowed (a worker SIGKILLed), it must be inside the documented window
(``cluster/worker.py``): an event the killed worker's handler had already run (it printed it)
whose ``SET done`` + ``XACK`` did not happen before the kill.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from qqbot_gateway.simulator import Simulator, SimulatorConfig
from tests.redis_harness import RedisServer, needs_redis

from .test_cli import APP_ID, CLI, ROOT, SECRET, clean_env, free_port

pytestmark = [pytest.mark.slow, needs_redis, pytest.mark.timeout(240)]

#: Interpreter start plus imports on a loaded 2-core machine.
START_TIMEOUT = 60.0
#: A dead worker's entries are claimed after this (the production default is 30 s).
CLAIM_IDLE = "1"
#: The session's own dispatches (no event id) travel the stream too.
LIFECYCLE = {"READY", "RESUMED"}


class Proc:
    """One ``run`` or ``worker`` process; stdout parsed as JSON lines as it comes."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.env = env
        self.args = args
        self.events: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> Proc:
        self.proc = await asyncio.create_subprocess_exec(
            *CLI,
            *self.args,
            env=self.env,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self._tasks = [
            asyncio.create_task(self._read(self.proc.stdout, self._on_out)),
            asyncio.create_task(self._read(self.proc.stderr, self.stderr.append)),
        ]
        return self

    @staticmethod
    async def _read(stream: asyncio.StreamReader | None, sink: Callable[[str], None]) -> None:
        assert stream is not None
        while line := await stream.readline():
            sink(line.decode(errors="replace").rstrip("\n"))

    def _on_out(self, line: str) -> None:
        with contextlib.suppress(ValueError):
            self.events.append(json.loads(line))

    async def wait(self, predicate: Callable[[], Any], what: str, timeout: float) -> None:
        assert self.proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if self.proc.returncode is not None or loop.time() > deadline:
                tail = "\n".join(self.stderr[-30:])
                pytest.fail(f"{what}: not within {timeout}s (rc {self.proc.returncode}):\n{tail}")
            await asyncio.sleep(0.05)

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.stderr)

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(timeout):
            rc = await self.proc.wait()
            await asyncio.gather(*self._tasks)
        return rc

    async def cleanup(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            with contextlib.suppress(Exception):
                await self.proc.wait()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class Fleet:
    """The simulator, Redis, a state directory, one gateway and its workers."""

    def __init__(self, sim: Simulator, redis: RedisServer, state_dir: Path) -> None:
        self.sim = sim
        self.redis = redis
        self.state_dir = state_dir
        self.procs: list[Proc] = []
        self.workers: list[Proc] = []

    def env(self, **overrides: str) -> dict[str, str]:
        base = self.sim.base_url
        settings = {
            "QQBOT_APP_ID": APP_ID,
            "QQBOT_CLIENT_SECRET": SECRET,
            "QQBOT_API_BASE": base,
            "QQBOT_TOKEN_URL": f"{base}/app/getAppAccessToken",
            "QQBOT_HTTP_ADDR": f"127.0.0.1:{free_port()}",
            "QQBOT_STATE_DIR": str(self.state_dir),
            "QQBOT_LOG_FORMAT": "console",
            "QQBOT_REDIS_URL": self.redis.url,
            "QQBOT_DELIVERY": "stream",
            "QQBOT_STREAM_CLAIM_IDLE": CLAIM_IDLE,
            "QQBOT_CHECKPOINT_INTERVAL": "0.2",
        }
        return clean_env(**{**settings, **overrides})

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


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    config = SimulatorConfig(
        app_id=APP_ID,
        client_secret=SECRET,
        heartbeat_interval_ms=1000,
        event_rate=0.0,
        resume_window=120.0,
        replay_buffer=20_000,
        seed=19,
    )
    redis = RedisServer(tmp_path / "redis")
    await redis.start()
    try:
        async with Simulator(config) as sim:
            f = Fleet(sim, redis, tmp_path / "state")
            try:
                yield f
            finally:
                for proc in f.procs:
                    await proc.cleanup()
    finally:
        redis.kill()


async def flood(sim: Simulator, n: int, *, chunk: int = 250, pause: float = 0.05) -> None:
    for _ in range(n // chunk):
        await sim.emit_events(chunk, "C2C_MESSAGE_CREATE", shard=0)
        await asyncio.sleep(pause)


async def test_a_worker_sigkilled_mid_flood_loses_nothing(fleet: Fleet) -> None:
    gateway = await fleet.gateway()
    await fleet.live_session(gateway, "a live session")
    a = await fleet.worker("a")
    b = await fleet.worker("b", "--handler", "tests.stream_handlers:slow")
    first = asyncio.create_task(flood(fleet.sim, 2500, pause=0.1))
    await b.wait(lambda: len(b.events) >= 100, "worker b handling", START_TIMEOUT)
    for _ in range(200):  # b holds a batch in its 100 ms handlers most of the time
        if await fleet.pending_of("b"):
            break
    await b.kill()  # with entries pending: read, some handled, none of the last acknowledged
    # Read at once: a claims them only once they were idle for QQBOT_STREAM_CLAIM_IDLE (1 s).
    pending = await fleet.pending_of("b")
    killed_printed = {str(e["id"]) for e in b.events}
    assert pending > 0, "b held entries when it was killed"
    await first
    await flood(fleet.sim, 2500)
    lost, dups = await fleet.drain_and_count("2 workers, 5,000 events, one SIGKILLed")
    assert lost == 0
    # Inside the documented window: handled by b (it printed them) and not acknowledged.
    assert set(dups) <= killed_printed, dups
    assert len(dups) <= 64, "at most the killed worker's in-flight events (concurrency 64)"
    assert any("claimed" in line for line in a.stderr), "a took over b's pending entries"
    # The side servers: a worker's probes and metrics, the gateway's stream metrics.
    worker_metrics = await side(a, "/metrics")
    assert await side(a, "/healthz", status=True) == "200"
    assert await side(a, "/readyz", status=True) == "200"
    handled = sample(worker_metrics, "qqbot_gateway_worker_events_total", outcome="handled")
    assert handled == len(a.events)  # every event a printed (READY too, if a took it)
    assert sample(worker_metrics, "qqbot_gateway_worker_claims_total") >= pending
    gateway_metrics = await side(gateway, "/metrics")
    assert sample(gateway_metrics, "qqbot_gateway_stream_appended_total") >= 5000
    assert sample(gateway_metrics, "qqbot_gateway_stream_group_pending", group="handlers") == 0
    assert await a.stop() == 0
    assert await gateway.stop() == 0


async def test_the_gateway_sigkilled_mid_flood_loses_nothing(fleet: Fleet) -> None:
    gateway = await fleet.gateway()
    await fleet.live_session(gateway, "a live session")
    await fleet.worker("a")
    await fleet.worker("b")
    flooding = asyncio.create_task(flood(fleet.sim, 4000, pause=0.1))
    await asyncio.sleep(0.6)
    await gateway.kill()  # events in its queue, appended but not checkpointed, in flight
    await flooding  # the rest waits in the platform's replay buffer of the session
    second = await fleet.gateway()
    await second.wait(
        lambda: any(r.outcome == "resumed" for r in fleet.sim.resumes), "a resume", START_TIMEOUT
    )
    await flood(fleet.sim, 1000)
    lost, dups = await fleet.drain_and_count("gateway SIGKILLed mid-flood, 5,000 events")
    assert lost == 0
    # A replayed event that had reached the stream is recognised by its id: never handled twice.
    assert dups == []
    for proc in (second, *fleet.workers):
        assert await proc.stop() == 0


async def test_a_stream_written_by_another_app_is_one_line_and_exit_2(fleet: Fleet) -> None:
    from qqbot_gateway.cluster.connect import keyspace, open_redis

    client = await open_redis(fleet.redis.url)
    try:
        await client.hset(keyspace(APP_ID) + "events:meta", mapping={"app": "42", "format": "1"})
    finally:
        await client.aclose()
    for args in (("run",), ("worker", "--print-events")):
        proc = await Proc(fleet.env(), *args).start()
        assert proc.proc is not None
        async with asyncio.timeout(START_TIMEOUT):
            rc = await proc.proc.wait()
        await asyncio.gather(*proc._tasks)
        errors = [line for line in proc.stderr if "error:" in line]
        assert rc == 2, proc.stderr[-10:]
        assert len(errors) == 1 and "written by app '42'" in errors[0], proc.stderr
        assert not any("Traceback" in line for line in proc.stderr)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            ("worker", "--handler", "no_such_module_here:f"),
            {},
            "cannot import no_such_module_here",
        ),
        (
            ("worker", "--print-events"),
            {"QQBOT_REDIS_URL": "redis://:hunter2@127.0.0.1:{port}/0"},
            "redis://:***@127.0.0.1:{port}/0",
        ),
        (("run",), {"QQBOT_REDIS_URL": "redis://127.0.0.1:{port}/0"}, "127.0.0.1:{port}"),
        (("run", "--print-events"), {}, "handlers run in `qqbot-gateway worker"),
        (("worker",), {}, "give at least one --handler"),
    ],
)
async def test_bad_input_is_one_line_and_exit_2(
    fleet: Fleet, args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    port = str(free_port())  # nothing listens there
    overrides = {k: v.replace("{port}", port) for k, v in env.items()}
    proc = await Proc(fleet.env(**overrides), *args).start()
    assert proc.proc is not None
    async with asyncio.timeout(START_TIMEOUT):
        rc = await proc.proc.wait()
    await asyncio.gather(*proc._tasks)
    errors = [line for line in proc.stderr if "error:" in line]
    assert rc == 2, proc.stderr[-10:]
    assert len(errors) == 1 and message.replace("{port}", port) in errors[0], proc.stderr
    assert not any("hunter2" in line or "Traceback" in line for line in proc.stderr)


async def test_a_worker_handler_replies_through_client_api_as_in_process(fleet: Fleet) -> None:
    """The same ``f(event, client)`` as with local delivery: the worker's own token and api."""
    gateway = await fleet.gateway()
    await fleet.live_session(gateway, "a live session")
    worker = await fleet.worker("a", "--handler", "tests.stream_handlers:echo")
    await fleet.sim.emit_events(20, "C2C_MESSAGE_CREATE", shard=0)

    def handled() -> list[dict[str, Any]]:
        return [e for e in worker.events if e["type"] == "C2C_MESSAGE_CREATE"]

    await worker.wait(lambda: len(handled()) == 20, "20 events handled", START_TIMEOUT)
    want = {e["data"]["id"] for e in handled()}
    replied = {m.msg_id for m in fleet.sim.messages if m.kind == "c2c"}
    assert want <= replied, "every reply sent (print-events runs after the echo returned)"
    assert all(str(m.body.get("content", "")).startswith("echo: ") for m in fleet.sim.messages)


async def test_redis_stopped_mid_flood_loses_nothing_and_hands_nothing_twice(
    fleet: Fleet,
) -> None:
    """Redis stops answering for longer than the clients' 5 s socket timeout (SIGSTOP), then
    comes back: appends and acknowledgements that timed out are retried (some were applied
    after all, so the stream holds copies), and the copies are recognised by id."""
    gateway = await fleet.gateway()
    await fleet.live_session(gateway, "a live session")
    await fleet.worker("a")
    await fleet.worker("b")
    flooding = asyncio.create_task(flood(fleet.sim, 2000, pause=0.2))
    await asyncio.sleep(1.0)
    fleet.redis.pause()
    try:
        await asyncio.sleep(7.0)
    finally:
        fleet.redis.resume()
    await flooding
    lost, dups = await fleet.drain_and_count("Redis stopped for 7 s mid-flood, 2,000 events")
    assert lost == 0
    assert dups == []
    assert any("retrying" in line for line in gateway.stderr + fleet.workers[0].stderr)
    for proc in (gateway, *fleet.workers):
        assert await proc.stop() == 0


async def test_a_poison_event_reaches_the_dead_letter_stream_while_others_flow(
    fleet: Fleet,
) -> None:
    from qqbot_gateway.cluster.connect import open_redis
    from qqbot_gateway.cluster.stream import StreamKeys, decode_entry

    gateway = await fleet.gateway()
    await fleet.live_session(gateway, "a live session")
    attempts = {"QQBOT_STREAM_MAX_ATTEMPTS": "3"}
    a = await fleet.worker("a", "--handler", "tests.stream_handlers:poison", **attempts)
    b = await fleet.worker("b", "--handler", "tests.stream_handlers:poison", **attempts)
    await fleet.sim.emit_events(100, "C2C_MESSAGE_CREATE", shard=0)
    bad = await fleet.sim.emit_event("C2C_MESSAGE_CREATE", {"content": "poison", "id": "m-p"})
    await flood(fleet.sim, 1000, chunk=100, pause=0.2)  # the others keep flowing meanwhile
    poisoned = frozenset({str(bad[0].event_id)})
    lost, dups = await fleet.drain_and_count("a poison event among 1,101", unhandled=poisoned)
    assert lost == 0 and dups == []
    assert not poisoned & set(fleet.printed()), "its handler raised: never printed"

    def dead_letters() -> float:
        return sum(w.logged("moved to the dead-letter stream") for w in (a, b))

    await a.wait(lambda: dead_letters() >= 1, "the dead letter", 30.0)
    client = await open_redis(fleet.redis.url)
    try:
        letters: Any = await client.xrange(StreamKeys(APP_ID).dead)
    finally:
        await client.aclose()
    assert len(letters) == 1
    fields = letters[0][1]
    assert fields[b"deliveries"] == b"3"
    assert b"ValueError: this handler cannot take poison" in fields[b"reason"]
    assert decode_entry(fields[b"e"])[0].event_id == bad[0].event_id
    moved = [
        sample(await side(w, "/metrics"), "qqbot_gateway_worker_dead_letters_total") for w in (a, b)
    ]
    assert sum(moved) == 1
    failed = [
        sample(await side(w, "/metrics"), "qqbot_gateway_worker_events_total", outcome="failed")
        for w in (a, b)
    ]
    assert sum(failed) == 3, "one handler run per delivery"


async def test_two_consumer_groups_each_see_every_event_once(fleet: Fleet) -> None:
    gateway = await fleet.gateway()
    await fleet.live_session(gateway, "a live session")
    handlers = [await fleet.worker(f"h{i}") for i in range(2)]
    audit = await fleet.worker("audit-0", QQBOT_STREAM_GROUP="audit")
    await flood(fleet.sim, 2000)
    emitted = {str(r.event_id) for r in fleet.sim.emitted_events(shard=0)}

    def ids(procs: list[Proc]) -> collections.Counter[str]:
        return collections.Counter(
            str(e["id"]) for p in procs for e in p.events if e["type"] not in LIFECYCLE
        )

    await audit.wait(lambda: set(ids([audit])) >= emitted, "the audit group", 60.0)
    await audit.wait(lambda: set(ids(handlers)) >= emitted, "the handlers group", 60.0)
    await asyncio.sleep(1.0)
    for group in (handlers, [audit]):
        counts = ids(group)
        assert set(counts) == emitted and max(counts.values()) == 1
    assert all(h.events for h in handlers), "the two workers of one group shared the events"
    # The lines of `run --print-events`, field for field.
    fields = {"type", "shard", "seq", "id", "session_id", "replayed", "data"}
    assert all(set(e) == fields for p in (*handlers, audit) for e in p.events)
