"""``qqbot-gateway demo``: the whole stack against the embedded simulator, with faults.

Everything runs in this process on 127.0.0.1: the simulator (token endpoint, OpenAPI subset,
WebSocket gateway) with a short heartbeat interval and a steady event stream, the client, and
the telemetry side server (``/healthz``, ``/readyz``, ``/metrics``). After a healthy period the
demo injects, one after the other:

* **blackhole**: the gateway goes silent without closing (the silent death);
* **op 7**: the gateway asks for a reconnect;
* **stopped ACKs**: heartbeats are received, never acknowledged;
* **server close 4009**: the gateway closes the connection (session expired, resumable);
* **process restart**: the adapter is stopped mid-stream as an orchestrator stops it (SIGTERM:
  readiness 503, close 4000, drain, final checkpoint to the session store) and, one interval
  later, a brand-new client and side server start from the session store and resume the
  session: the events sent while no adapter was connected are replayed. (SIGKILL restarts are
  measured by ``tests/test_restart_resume.py``, see docs/session-store.md.)

For each it measures how long detection took (injection to ``Disconnected``), how long recovery
took (injection to ``SessionResumed`` / ``SessionReady``), and compares the events the simulator
emitted with the events the handler received: none may be lost, none delivered twice. The exit
status is 0 only if every fault was detected and recovered from without loss or duplicates.

With a TTY the progress is a live table (rich); otherwise plain lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sys
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, TextIO, cast

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter.client import ClientConfig, QQBotClient, Secret
from qqbot_gateway.adapter.connection import TransportConfig
from qqbot_gateway.adapter.protocol import GatewayEvent
from qqbot_gateway.adapter.session import LivenessConfig
from qqbot_gateway.adapter.supervisor import ReconnectPolicy
from qqbot_gateway.demo_defaults import DEFAULT_DURATION, DEFAULT_EVENT_RATE, DEFAULT_INTERVAL
from qqbot_gateway.simulator import Simulator, SimulatorConfig
from qqbot_gateway.telemetry import Telemetry, TelemetryConfig

__all__ = ["DemoOptions", "DemoTooShortError", "FaultResult", "minimum_duration", "run_demo"]

_log = logging.getLogger("qqbot_gateway.demo")

#: The demo bot's identity on the simulator (made up; the secret is generated per run).
DEMO_APP_ID: Final = "102000000"
#: Seconds from start to the first READY, budgeted in the schedule (a loaded machine included).
_STARTUP_BUDGET: Final = 1.0
#: Plain-mode status lines this often (seconds).
_STATUS_EVERY: Final = 5.0


class DemoTooShortError(ValueError):
    """The requested duration cannot fit the fault schedule at this interval."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    duration: float = DEFAULT_DURATION
    #: Heartbeat interval the simulator sends in Hello, in seconds (QQ sends 41.25).
    interval: float = DEFAULT_INTERVAL
    event_rate: float = DEFAULT_EVENT_RATE
    #: None: decide by ``out.isatty()``.
    interactive: bool | None = None
    http_port: int = 0


def _lead_in(interval: float) -> float:
    """The healthy period before the first fault."""
    return max(3.0, 3 * interval)


def _tail(interval: float) -> float:
    """Time kept at the end to let the last events arrive and to count them."""
    return 1.5 + 2 * interval


def _min_slot(interval: float) -> float:
    """Per fault: detection takes at most 1.4 intervals (stopped ACKs: the next heartbeat, then
    its ACK deadline; a blackhole 0.35 with the ping layer armed), recovery a backoff and a
    handshake (for the process restart, a new adapter resuming from the session store), then
    the link proves itself for a while; the rest is margin for a loaded machine."""
    return 4 * interval + 1.0


def minimum_duration(interval: float) -> float:
    """The shortest ``--duration`` the fault schedule fits in at this interval."""
    return (
        _STARTUP_BUDGET
        + _lead_in(interval)
        + len(_faults()) * _min_slot(interval)
        + _tail(interval)
    )


@dataclass(slots=True)
class FaultResult:
    name: str
    description: str
    injected_at: float | None = None
    detected_at: float | None = None
    detect_reason: str | None = None
    recovered_at: float | None = None
    recovery: str | None = None  # "resumed, 3 replayed" / "new session"
    window_end: float | None = None
    emitted: int = 0
    lost: int = 0
    duplicated: int = 0
    note: str | None = None

    @property
    def detected_after(self) -> float | None:
        if self.injected_at is None or self.detected_at is None:
            return None
        return self.detected_at - self.injected_at

    @property
    def recovered_after(self) -> float | None:
        if self.injected_at is None or self.recovered_at is None:
            return None
        return self.recovered_at - self.injected_at

    @property
    def ok(self) -> bool:
        return (
            self.detected_at is not None
            and self.recovered_at is not None
            and self.lost == 0
            and self.duplicated == 0
        )


@dataclass(slots=True)
class _ShardView:
    state: str = "idle"
    rtt: float | None = None
    last_frame_at: float | None = None
    events: int = 0
    reconnects: Counter[str] = field(default_factory=Counter)
    sessions: int = 0
    resumes: int = 0


class _Fault:
    """One fault: how to inject it, and what to do once it was detected / recovered from."""

    def __init__(
        self,
        name: str,
        description: str,
        inject: Callable[[Simulator], Awaitable[int]] | None,
        on_detected: Callable[[Simulator], None] | None = None,
        on_recovered: Callable[[Simulator], None] | None = None,
    ) -> None:
        self.name = name
        self.description = description
        self.inject = inject
        self.on_detected = on_detected
        self.on_recovered = on_recovered


async def _blackhole(sim: Simulator) -> int:
    return sim.blackhole()


async def _reconnect(sim: Simulator) -> int:
    return await sim.send_reconnect()


async def _stop_acks(sim: Simulator) -> int:
    sim.stop_acks()
    return 1


async def _close_4009(sim: Simulator) -> int:
    return await sim.close_connections(4009, "session timed out (demo)")


def _heal_blackhole(sim: Simulator) -> None:
    sim.unblackhole()


def _faults() -> list[_Fault]:
    return [
        _Fault(
            "blackhole",
            "silent death: no byte in either direction, no close",
            _blackhole,
            # The old socket is aborted once the session lives on elsewhere (a NAT forgetting).
            on_recovered=_heal_blackhole,
        ),
        _Fault("op 7", "the gateway asks for a reconnect", _reconnect),
        _Fault(
            "stopped ACKs",
            "heartbeats received, never acknowledged",
            _stop_acks,
            # Heal at once, so that the new connection is served normally.
            on_detected=lambda sim: sim.resume_acks(),
        ),
        _Fault("server close 4009", "the gateway closes: session timed out", _close_4009),
        # Injected by the demo itself (it replaces its client): see _Demo._restart.
        _Fault("process restart", "the adapter is stopped and a new one started", None),
    ]


class _CurrentStderr:
    """A stream that writes to whatever ``sys.stderr`` is now (rich's Live redirects it, so
    log lines appear above the live table instead of tearing it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return bool(getattr(sys.__stderr__, "isatty", lambda: False)())


def log_stream() -> TextIO:
    """The stream for ``configure_logging`` in the demo (see :class:`_CurrentStderr`)."""
    stream: Any = _CurrentStderr()
    return cast(TextIO, stream)


class _Demo:
    def __init__(self, opts: DemoOptions, out: TextIO) -> None:
        self.opts = opts
        self.out = out
        self.interval = opts.interval
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.views: dict[int, _ShardView] = {}
        self.delivered: Counter[tuple[str | None, int | None, str | None]] = Counter()
        self.duplicates_dropped = 0
        self.results = [FaultResult(f.name, f.description) for f in _faults()]
        self.current: tuple[_Fault, FaultResult] | None = None
        self.detected = asyncio.Event()
        self.recovered = asyncio.Event()
        self.ready = asyncio.Event()
        self.delivery = asyncio.Event()
        self.phase = "starting"
        self.total_emitted = self.total_delivered = self.total_lost = self.total_duplicated = 0
        self.live: Live | None = None
        self.telemetry: Telemetry | None = None
        self.client: QQBotClient | None = None
        self.sim: Simulator | None = None
        #: The session store of the demo's adapters (a temporary directory per run).
        self.state_dir = ""
        interactive = opts.interactive
        if interactive is None:
            interactive = bool(getattr(out, "isatty", lambda: False)())
        self.interactive = interactive
        if interactive:
            self.console = Console(file=out, force_terminal=True)
        else:
            # Plain text for logs and pipes: wide enough for the summary table on one line each.
            self.console = Console(file=out, width=140, no_color=True, highlight=False)

    # --- output --------------------------------------------------------------------------
    def now(self) -> float:
        return self.loop.time() - self.t0

    def say(self, text: str) -> None:
        line = f"[{self.now():6.1f}s] {text}"
        if self.live is not None:
            self.live.console.print(Text(line))
        else:
            print(line, file=self.out, flush=True)

    # --- event plumbing ------------------------------------------------------------------
    def handler(self, event: GatewayEvent) -> None:
        key = (event.session_id, event.seq, event.event_id)
        self.delivered[key] += 1
        self.delivery.set()
        view = self.views.setdefault(event.shard, _ShardView())
        view.events += 1

    def observe(self, event: ev.LifecycleEvent) -> None:
        if event.shard is None:
            return
        view = self.views.setdefault(event.shard, _ShardView())
        if isinstance(event, ev.StateChanged):
            view.state = event.new.value
        elif isinstance(event, ev.HeartbeatAcked):
            view.rtt = event.rtt
        elif isinstance(event, ev.FrameReceived):
            view.last_frame_at = event.monotonic
        elif isinstance(event, ev.DuplicateDropped):
            self.duplicates_dropped += 1
        elif isinstance(event, ev.Disconnected):
            view.reconnects[event.reason] += 1
            self._on_disconnected(event)
        elif isinstance(event, ev.SessionReady | ev.SessionResumed):
            if isinstance(event, ev.SessionReady):
                view.sessions += 1
            else:
                view.resumes += 1
            self.ready.set()
            self._on_live(event)

    def _on_disconnected(self, event: ev.Disconnected) -> None:
        current = self.current
        if current is None:
            if self.phase != "stopping":
                self.say(f"shard {event.shard} disconnected: {event.reason} (no fault injected)")
            return
        fault, result = current
        if result.detected_at is not None or result.injected_at is None:
            return
        if event.monotonic < result.injected_at:
            return
        result.detected_at = event.monotonic
        result.detect_reason = event.reason
        after = event.monotonic - result.injected_at
        self.say(
            f"detected: shard {event.shard} disconnected ({event.reason}) "
            f"{after:.2f}s after injection = {after / self.interval:.1f} heartbeat intervals"
        )
        if fault.on_detected is not None and self.sim is not None:
            fault.on_detected(self.sim)
        self.detected.set()

    def _on_live(self, event: ev.SessionReady | ev.SessionResumed) -> None:
        current = self.current
        if current is None:
            what = "ready (new session)" if isinstance(event, ev.SessionReady) else "resumed"
            self.say(f"shard {event.shard} {what}")
            return
        fault, result = current
        if result.detected_at is None or result.recovered_at is not None:
            return
        result.recovered_at = event.monotonic
        if isinstance(event, ev.SessionResumed):
            result.recovery = f"resumed, {event.replayed} replayed"
        else:
            result.recovery = "new session (identify)"
        after = result.recovered_after or 0.0
        self.say(f"recovered: shard {event.shard} {result.recovery}, {after:.2f}s after injection")
        if fault.on_recovered is not None and self.sim is not None:
            fault.on_recovered(self.sim)
        self.recovered.set()

    # --- views ---------------------------------------------------------------------------
    def _health(self) -> tuple[bool, dict[int, str]]:
        if self.telemetry is None:
            return True, {}
        report = self.telemetry.evaluate()
        verdicts: dict[int, str] = {}
        for shard in self.views:
            failing = [
                c for c in report.checks if not c.ok and c.name.startswith(f"shard/{shard}/")
            ]
            if failing:
                verdicts[shard] = f"UNHEALTHY ({failing[0].name}: {failing[0].reason})"
            elif report.shard_ready.get(shard):
                verdicts[shard] = "healthy, ready"
            else:
                reason = next(
                    (c.reason for c in report.readiness if c.name == f"shard/{shard}/ready"), ""
                )
                verdicts[shard] = f"healthy, not ready ({reason})" if reason else "healthy"
        return report.healthy, verdicts

    def _shard_row(self, shard: int, view: _ShardView, verdict: str) -> list[str]:
        now = self.loop.time()
        rtt = "-" if view.rtt is None else f"{view.rtt * 1000:.1f} ms"
        age = "-" if view.last_frame_at is None else f"{now - view.last_frame_at:.1f}s"
        total = sum(view.reconnects.values())
        reasons = ", ".join(f"{r} x{n}" for r, n in sorted(view.reconnects.items()))
        reconnects = f"{total} ({reasons})" if total else "0"
        return [str(shard), view.state, rtt, age, str(view.events), reconnects, verdict]

    def render(self) -> RenderableType:
        _, verdicts = self._health()
        shards = Table(title="shards", box=box.SIMPLE_HEAVY, expand=False)
        for column in (
            "shard",
            "state",
            "heartbeat RTT",
            "last frame",
            "events",
            "reconnects (reasons)",
            "health",
        ):
            shards.add_column(column)
        for shard, view in sorted(self.views.items()):
            shards.add_row(*self._shard_row(shard, view, verdicts.get(shard, "-")))
        return Group(
            Text(f"t={self.now():.1f}s / {self.opts.duration:.0f}s   phase: {self.phase}"),
            shards,
            self.fault_table(final=False),
        )

    def fault_table(self, *, final: bool) -> Table:
        title = "summary" if final else "faults"
        table = Table(title=title, box=box.SIMPLE_HEAVY if not final else box.ROUNDED)
        table.add_column("fault")
        table.add_column("detected after")
        table.add_column("detected by")
        table.add_column("recovered after")
        table.add_column("events lost", justify="right")
        table.add_column("duplicated", justify="right")
        if final:
            table.add_column("result")
        for r in self.results:
            if r.injected_at is None:
                row = [r.name, r.note or "not injected", "-", "-", "-", "-"]
            else:
                da, ra = r.detected_after, r.recovered_after
                detected = (
                    "NOT DETECTED"
                    if da is None
                    else f"{da:.2f}s = {da / self.interval:.1f} intervals"
                )
                recovered = "NOT RECOVERED" if ra is None else f"{ra:.2f}s ({r.recovery})"
                counted = r.window_end is not None
                row = [
                    r.name,
                    detected,
                    r.detect_reason or "-",
                    recovered,
                    str(r.lost) if counted else "…",
                    str(r.duplicated) if counted else "…",
                ]
            if final:
                row.append("ok" if r.ok else f"FAILED{': ' + r.note if r.note else ''}")
            table.add_row(*row)
        return table

    def status_line(self) -> str:
        _, verdicts = self._health()
        parts = []
        for shard, view in sorted(self.views.items()):
            cells = self._shard_row(shard, view, verdicts.get(shard, "-"))
            parts.append(
                f"shard {cells[0]}: {cells[1]}, heartbeat RTT {cells[2]}, last frame {cells[3]} "
                f"ago, events {cells[4]}, reconnects {cells[5]}, health: {cells[6]}"
            )
        return "; ".join(parts) or "no shard yet"

    # --- the run -------------------------------------------------------------------------
    async def run(self) -> int:
        opts = self.opts
        interval = self.interval
        secret = secrets.token_urlsafe(16)
        sim = Simulator(
            SimulatorConfig(
                app_id=DEMO_APP_ID,
                client_secret=secret,
                heartbeat_interval_ms=max(1, round(interval * 1000)),
                event_rate=opts.event_rate,
            )
        )
        self.sim = sim
        self.secret = secret
        await sim.start("127.0.0.1", 0)
        state = tempfile.TemporaryDirectory(prefix="qqbot-demo-state-")
        self.state_dir = state.name
        try:
            client, telemetry = await self._start_adapter(opts.http_port)
            url = telemetry.http_url
            self.say(f"simulated QQ gateway: {sim.base_url} (heartbeat interval {interval:g}s)")
            self.say(f"status:    {url}/   (a live page: open it in a browser)")
            self.say(f"health:    {url}/healthz   (also {url}/healthz?verbose)")
            self.say(f"readiness: {url}/readyz")
            self.say(f"metrics:   {url}/metrics")
            await client.start()
            if self.interactive:
                with Live(
                    console=self.console,
                    get_renderable=self.render,
                    refresh_per_second=4,
                    transient=True,
                ) as live:
                    self.live = live
                    try:
                        await self._schedule(sim)
                    finally:
                        self.live = None
            else:
                await self._schedule(sim)
        finally:
            self.phase = "stopping"
            # The demo is over: end the session (close 1000), nothing is left for a next run.
            await self._stop_adapter(end_session=True)
            await sim.stop()
            state.cleanup()
        return self.summarize()

    async def _start_adapter(self, http_port: int) -> tuple[QQBotClient, Telemetry]:
        """A client and its side server, as one ``qqbot-gateway run`` process has them."""
        assert self.sim is not None
        client = QQBotClient(self._client_config(self.sim, self.secret))
        client.add_handler(self.handler)
        client.events.subscribe(self.observe)
        telemetry = Telemetry(TelemetryConfig(http_host="127.0.0.1", http_port=http_port))
        telemetry.attach(client)
        self.client, self.telemetry = client, telemetry
        await telemetry.start()
        return client, telemetry

    async def _stop_adapter(self, *, end_session: bool) -> None:
        client, telemetry = self.client, self.telemetry
        if telemetry is not None:
            telemetry.begin_shutdown()
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close(drain_timeout=2.0, end_session=end_session)
        if telemetry is not None:
            with contextlib.suppress(Exception):
                await telemetry.stop()

    async def _restart(self, result: FaultResult) -> int:
        """The "process restart" fault: stop the adapter as SIGTERM does (the session is kept
        in the store), leave the gateway without a client for one interval, start a new one."""
        telemetry = self.telemetry
        port = telemetry.server.port if telemetry and telemetry.server else None
        await self._stop_adapter(end_session=False)
        result.detected_at = self.loop.time()
        result.detect_reason = "stopped (session kept)"
        after = result.detected_at - (result.injected_at or result.detected_at)
        self.say(f"adapter stopped in {after:.2f}s; the session is in the store")
        self.detected.set()
        await asyncio.sleep(self.interval)  # events keep coming while no adapter is connected
        self.say("starting a new adapter from the session store")
        client, _ = await self._start_adapter(port or 0)
        await client.start()
        return 1

    def _client_config(self, sim: Simulator, secret: str) -> ClientConfig:
        interval = self.interval
        return ClientConfig(
            app_id=DEMO_APP_ID,
            client_secret=Secret(secret),
            api_base=sim.base_url,
            token_url=sim.token_url,
            # The liveness layers scale with Hello's interval by themselves; only the absolute
            # floors of the handshake timeouts are lowered to match the short demo interval.
            liveness=LivenessConfig(
                hello_timeout=max(2.0, 3 * interval),
                handshake_timeout_min=max(2.0, 3 * interval),
            ),
            transport=TransportConfig(connect_timeout=5.0, close_timeout=0.5, send_timeout=2.0),
            state_dir=self.state_dir,
            # Backoff scaled like everything else (production: 1 s base, 60 s cap).
            reconnect=ReconnectPolicy(
                backoff_base=0.25 * interval,
                backoff_cap=2.0 * interval,
                healthy_after=3 * interval,
                rate_limit_wait=2.0 * interval,
                quick_lifetime=0.2 * interval,
            ),
        )

    async def _schedule(self, sim: Simulator) -> None:
        opts = self.opts
        interval = self.interval
        end = self.t0 + opts.duration
        tail = _tail(interval)
        faults = _faults()
        self.phase = "connecting"
        try:
            async with asyncio.timeout(max(5.0, 5 * interval)):
                await self.ready.wait()
        except TimeoutError:
            for r in self.results:
                r.note = "never connected"
            self.say("the client did not get a session in time; giving up")
            return
        self.phase = "healthy"
        lead = _lead_in(interval)
        first = self.loop.time() + lead
        slot = max(_min_slot(interval), (end - tail - first) / len(faults))
        self.say(f"healthy period of {lead:.1f}s, then {len(faults)} faults, one every {slot:.1f}s")
        plain_status = asyncio.create_task(self._plain_status(), name="demo status lines")
        try:
            planned = first
            for index, (fault, result) in enumerate(zip(faults, self.results, strict=True)):
                await self._sleep_until(planned)
                await self._wait_live(end - tail)
                if self.loop.time() + _min_slot(interval) / 2 > end - tail:
                    result.note = "out of time"
                    self.say(f"no time left for {fault.name}")
                    continue
                await self._run_fault(sim, fault, result, deadline=min(planned + slot, end - tail))
                settle = result.recovered_at if result.recovered_at is not None else planned
                planned = max(planned + slot, settle + 1.5 * interval)
                if index + 1 < len(faults):
                    self.phase = "healthy"
            # Watch the recovered link until the schedule's end, then count.
            self.phase = "healthy"
            await self._sleep_until(min(planned, end - tail))
            self.phase = "counting events"
            await self._account(end)
        finally:
            plain_status.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await plain_status

    async def _plain_status(self) -> None:
        if self.interactive:
            return
        while True:
            await asyncio.sleep(_STATUS_EVERY)
            self.say(self.status_line())

    async def _sleep_until(self, when: float) -> None:
        delay = when - self.loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _wait_live(self, deadline: float) -> None:
        """Faults are injected into a live session only."""
        while self.loop.time() < deadline:
            if any(v.state == ev.ConnectionState.READY.value for v in self.views.values()):
                return
            await asyncio.sleep(0.05)

    async def _run_fault(
        self, sim: Simulator, fault: _Fault, result: FaultResult, *, deadline: float
    ) -> None:
        # Detection and recovery get at least 8 intervals (+3 s for a loaded machine).
        deadline = max(deadline, self.loop.time() + 8 * self.interval + 3.0)
        self.detected.clear()
        self.recovered.clear()
        self.phase = f"fault: {fault.name}"
        result.injected_at = self.loop.time()
        self.current = (fault, result)
        self.say(f"injecting fault: {fault.name} ({fault.description})")
        try:
            count = await (self._restart(result) if fault.inject is None else fault.inject(sim))
        except Exception as exc:  # noqa: BLE001 - reported in the summary, the demo goes on
            result.injected_at = None
            result.note = f"injection failed: {exc}"
            self.current = None
            return
        if count == 0:
            result.injected_at = None
            result.note = "no connection to inject into"
            self.current = None
            return
        remaining = deadline - self.loop.time()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.1, remaining)):
                await self.detected.wait()
                await self.recovered.wait()
        if result.detected_at is None:
            self.say(f"{fault.name}: NOT detected within {remaining:.1f}s")
            result.note = "not detected in time"
        elif result.recovered_at is None:
            self.say(f"{fault.name}: NOT recovered within {remaining:.1f}s")
            result.note = "not recovered in time"
        # Heal whatever is left of the fault before the next one.
        sim.resume_acks()
        sim.unblackhole()
        self.current = None

    async def _account(self, end: float) -> None:
        """Stop the stream, let every emitted event arrive, then compare per fault window."""
        assert self.sim is not None
        sim = self.sim
        sim.pause_events()
        emitted = sim.emitted_events()
        keys = [(r.session_id, r.seq, r.event_id) for r in emitted]
        wait_until = max(end, self.loop.time() + 2 * self.interval + 2.0)
        while any(self.delivered[k] == 0 for k in keys):
            remaining = wait_until - self.loop.time()
            if remaining <= 0:
                break
            self.delivery.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 0.5)):
                    await self.delivery.wait()
        starts = [r.injected_at for r in self.results]
        for index, result in enumerate(self.results):
            if result.injected_at is None:
                continue
            later = [s for s in starts[index + 1 :] if s is not None]
            window_end = later[0] if later else float("inf")
            result.window_end = window_end
            mine = [
                (r.session_id, r.seq, r.event_id)
                for r in emitted
                if result.injected_at <= r.at < window_end
            ]
            result.emitted = len(mine)
            result.lost = sum(1 for k in mine if self.delivered[k] == 0)
            result.duplicated = sum(1 for k in mine if self.delivered[k] > 1)
            if result.lost:
                self.say(f"{result.name}: {result.lost} of {len(mine)} events lost")
            if result.duplicated:
                self.say(f"{result.name}: {result.duplicated} events delivered more than once")
        self.total_emitted = len(keys)
        self.total_lost = sum(1 for k in keys if self.delivered[k] == 0)
        self.total_duplicated = sum(1 for k in keys if self.delivered[k] > 1)
        self.total_delivered = sum(1 for k in keys if self.delivered[k] > 0)

    def summarize(self) -> int:
        console = self.console
        console.print(self.fault_table(final=True))
        ok = all(r.ok for r in self.results) and self.total_lost == 0
        ok = ok and self.total_duplicated == 0
        console.print(
            f"events: emitted {self.total_emitted}, delivered {self.total_delivered}, "
            f"lost {self.total_lost}, duplicated {self.total_duplicated} "
            f"(replays dropped as duplicates by the adapter: {self.duplicates_dropped})",
            highlight=False,
        )
        detected = sum(1 for r in self.results if r.detected_at is not None)
        recovered = sum(1 for r in self.results if r.recovered_at is not None)
        verdict = "PASS" if ok else "FAIL"
        console.print(
            f"{verdict}: {detected}/{len(self.results)} faults detected, "
            f"{recovered}/{len(self.results)} recovered, {self.total_lost} events lost, "
            f"{self.total_duplicated} duplicated",
            highlight=False,
        )
        return 0 if ok else 1


async def run_demo(opts: DemoOptions, out: TextIO | None = None) -> int:
    """Run the demo; returns the exit status (0: every fault detected and recovered, no loss).

    Raises :class:`DemoTooShortError` if ``opts.duration`` cannot fit the schedule.
    """
    if opts.interval <= 0 or opts.event_rate <= 0:
        raise ValueError("interval and event rate must be positive")
    need = minimum_duration(opts.interval)
    if opts.duration < need:
        raise DemoTooShortError(
            f"--duration {opts.duration:g} is too short for --interval {opts.interval:g}: "
            f"the fault schedule needs at least {need:.0f}s"
        )
    demo = _Demo(opts, out if out is not None else sys.stdout)
    return await demo.run()
