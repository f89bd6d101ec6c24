"""The embedded QQ gateway simulator: token endpoint, OpenAPI subset and WebSocket gateway.

One aiohttp application serves everything on one port of the host it is given:

- ``POST /app/getAppAccessToken``: access tokens (``expires_in`` a string, as QQ sends it);
- ``GET /gateway``, ``GET /gateway/bot``, ``GET /users/@me``: discovery and identity;
- ``POST /v2/users/{openid}/messages`` and the other send endpoints: validated and recorded;
- ``GET /websocket``: the gateway (Hello, Identify/Resume, heartbeats, dispatches, replay);
- ``/_sim/...``: a JSON control API to inject faults and read a summary from another process.

Everything the server does is recorded for tests (see ``records``). Faults are switched by the
``Simulator`` methods below or by ``POST /_sim/faults``. Times are ``loop.time()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from types import TracebackType
from typing import Any, Final, TypeVar

from aiohttp import web

from qqbot_gateway.adapter.protocol import Op
from qqbot_gateway.simulator import control
from qqbot_gateway.simulator.core import Outgoing, SessionInfo
from qqbot_gateway.simulator.faults import (
    MISSING,
    RAW_FRAME_KINDS,
    FaultState,
    GatewayFault,
    LatencyModel,
    RefuseMode,
    TokenFault,
)
from qqbot_gateway.simulator.gateway import GatewayProtocol
from qqbot_gateway.simulator.queries import Queries
from qqbot_gateway.simulator.records import (
    DispatchRecord,
)
from qqbot_gateway.simulator.rest import RestAPI
from qqbot_gateway.simulator.wsio import MAX_CLIENT_FRAME, abort_conn

__all__ = ["SessionInfo", "Simulator"]

_log = logging.getLogger("qqbot_gateway.simulator")

T = TypeVar("T")

#: The generator ticks at least this often so high rates stay smooth.
GENERATOR_TICK: Final = 0.05
#: Bound on the whole of ``stop()`` waiting for handlers (then transports are aborted).
STOP_GRACE: Final = 1.0


class Simulator(Queries, RestAPI, GatewayProtocol):
    """An embedded QQ gateway. See the module docstring; all addresses bind the given host only.

    The parts (one job each): :mod:`.core` shared state, tokens, addresses; :mod:`.rest` token
    endpoint and OpenAPI subset; :mod:`.wsio` WebSocket I/O; :mod:`.gateway` the gateway
    protocol; :mod:`.control` the control API and fault registry; :mod:`.queries` the records
    as tests read them. This class adds the lifecycle, the event generator and the fault
    switches.
    """

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Bind ``host:port`` (0: ephemeral) and serve. Starting twice is an error."""
        if self._started:
            raise RuntimeError("simulator already started")
        self._started = True
        app = web.Application(client_max_size=MAX_CLIENT_FRAME)
        self._add_routes(app)
        # shutdown_timeout bounds how long cleanup waits for handlers still running.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=STOP_GRACE)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self._host = host
        self._port = int(runner.addresses[0][1])
        self._generator_task = self._spawn(self._generator(), "simulator event generator")
        _log.info("simulator listening on %s", self.base_url)

    def _add_routes(self, app: web.Application) -> None:
        self._add_rest_routes(app.router)
        app.router.add_get("/websocket", self._h_websocket)
        app.router.add_get("/websocket/", self._h_websocket)
        if self.config.control_api:
            control.add_control_routes(app.router, self)

    async def stop(self) -> None:
        """Close every connection and the listener. Bounded, idempotent."""
        if not self._started or self._stopped:
            return
        self._stopped = True
        if self._generator_task is not None:
            self._generator_task.cancel()
        for conn in list(self._conns.values()):
            if conn.blackholed:
                abort_conn(conn)
            elif not conn.closing:
                self._enqueue_close(conn, 1001, "simulator stopping")
        if self._conns:
            with contextlib.suppress(TimeoutError):
                await self.wait_for(lambda: not self._conns, timeout=STOP_GRACE)
        for conn in list(self._conns.values()):
            abort_conn(conn)
        served = self._runner is not None
        if self._runner is not None:
            await self._runner.cleanup()
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_GRACE)
        if served:  # a start that could not bind has nothing to announce
            _log.info("simulator stopped")

    async def apply_fault(self, name: str, params: dict[str, Any]) -> Any:
        """Apply a fault by name (the control API's ``POST /_sim/faults`` body); the table of
        faults is :data:`qqbot_gateway.simulator.control.FAULTS`."""
        return await control.apply_fault(self, name, params)

    async def __aenter__(self) -> Simulator:
        if not self._started:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def pause_events(self) -> None:
        """Stop the background generator (explicit ``emit_event`` still works)."""
        self._events_paused = True

    def resume_events(self) -> None:
        self._events_paused = False

    def set_event_rate(self, rate: float) -> None:
        """Background dispatches per second per session (0: none)."""
        if rate < 0:
            raise ValueError("rate must not be negative")
        self._event_rate = rate

    async def emit_event(
        self,
        type: str | None = None,
        data: Any = None,
        *,
        shard: int | None = None,
        session_id: str | None = None,
        event_id: str | None = None,
    ) -> list[DispatchRecord]:
        """Create one dispatch for every live session (of ``shard``/``session_id`` if given).

        ``type`` None picks a random type the session subscribed to; ``data`` None builds a
        realistic payload. Sessions whose connection is blackholed or gone (but resumable) get
        the event in their replay buffer only. Returns one record per session.
        """
        return self._emit(type, data, shard=shard, session_id=session_id, event_id=event_id)

    async def emit_events(
        self,
        n: int,
        type: str | None = None,
        data: Any = None,
        *,
        shard: int | None = None,
        session_id: str | None = None,
    ) -> list[DispatchRecord]:
        """``n`` times ``emit_event``."""
        out: list[DispatchRecord] = []
        for _ in range(n):
            out.extend(self._emit(type, data, shard=shard, session_id=session_id, event_id=None))
        return out

    def _emit(
        self,
        event_type: str | None,
        data: Any,
        *,
        shard: int | None,
        session_id: str | None,
        event_id: str | None,
    ) -> list[DispatchRecord]:
        out = []
        for s in self._live_sessions(shard, session_id):
            t = event_type if event_type is not None else self._factory.pick_type(s.intents)
            eid, d = self._factory.build(t, bot_id=self.config.bot_id)
            if data is not None:
                d = data
            if event_id is not None:
                eid = event_id
            out.append(self._dispatch(s, t, d, eid))
        return out

    async def _generator(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            rate = self._event_rate
            await asyncio.sleep(min(GENERATOR_TICK, 1.0 / rate) if rate > 0 else GENERATOR_TICK)
            now = loop.time()
            elapsed, last = now - last, now
            if rate <= 0 or self._events_paused:
                continue
            for s in self._live_sessions(None, None):
                s.credit += elapsed * rate
                while s.credit >= 1.0 and s.state == "active":
                    s.credit -= 1.0
                    t = self._factory.pick_type(s.intents)
                    eid, d = self._factory.build(t, bot_id=self.config.bot_id)
                    self._dispatch(s, t, d, eid)

    def stop_acks(self) -> None:
        """Heartbeats are still received and recorded, but no op 11 is sent."""
        self.faults.acks_stopped = True

    def resume_acks(self) -> None:
        self.faults.acks_stopped = False

    def ignore_pings(self, on: bool = True) -> None:
        """WebSocket pings are read and dropped: no pong (the rest of the link is healthy)."""
        self.faults.pings_ignored = on

    def set_reply_latency(
        self,
        median: float | None = 0.05,
        *,
        jitter: float = 10.0,
        spike_rate: float = 0.0,
        spike: float = 0.0,
        seed: int | None = None,
    ) -> None:
        """Delay each op 11 and each pong by a draw of :class:`LatencyModel` (None: off)."""
        self.faults.reply_latency = (
            None
            if median is None
            else LatencyModel(median, jitter, spike_rate=spike_rate, spike=spike, seed=seed)
        )

    def blackhole(self, *, current: bool = True, new: bool = False) -> int:
        """Silence connections: no byte written, none read, no close. Returns how many.

        ``new=True`` also blackholes connections opened from now on (no Hello).
        """
        if new:
            self.faults.blackhole_new = True
        count = 0
        if current:
            for conn in self._conns.values():
                if not conn.blackholed and not conn.closing:
                    self._blackhole_conn(conn)
                    count += 1
        return count

    def unblackhole(self) -> int:
        """Heal: new connections work again; blackholed sockets are aborted (a NAT that forgot)."""
        self.faults.blackhole_new = False
        count = 0
        for conn in list(self._conns.values()):
            if conn.blackholed:
                abort_conn(conn)
                count += 1
        return count

    heal = unblackhole

    async def close_connections(
        self, code: int = 4009, reason: str = "", *, shard: int | None = None
    ) -> int:
        """Close current (not blackholed) connections with ``code``. Returns how many.

        Codes 4006, 4007, 4004 and 49xx invalidate the session (its undelivered events are
        recorded as dropped); others (4009, 4008, 1000, ...) leave it resumable.
        """
        invalidate = code in (4004, 4006, 4007) or 4900 <= code <= 4999 or 4010 <= code <= 4014
        targets = self._targets(shard)
        for conn in targets:
            self._enqueue_close(conn, code, reason, invalidate=invalidate)
        return len(targets)

    async def send_reconnect(self, *, shard: int | None = None) -> int:
        """Send op 7 (the session stays resumable). Returns how many connections got it."""
        targets = self._targets(shard)
        for conn in targets:
            self._send_frame(conn, {"op": int(Op.RECONNECT), "d": None})
        return len(targets)

    async def send_invalid_session(
        self,
        resumable: bool = False,
        *,
        shard: int | None = None,
        close_code: int | str | None = "config",
    ) -> int:
        """Send op 9 with ``d=resumable``; ``false`` invalidates the session.

        Then closes with ``close_code`` (default: ``config.invalid_session_close_code``; None
        leaves the connection open for the client to close).
        """
        targets = self._targets(shard)
        for conn in targets:
            self._invalid_session(conn, resumable, close_code=close_code)
        return len(targets)

    def set_outgoing_delay(self, seconds: float) -> None:
        """Delay every frame written from now on by ``seconds`` (order is kept)."""
        if seconds < 0:
            raise ValueError("delay must not be negative")
        self.faults.outgoing_delay = seconds

    def refuse_connections(self, mode: RefuseMode | str = RefuseMode.HTTP_503) -> None:
        """Refuse new WebSocket connections: ``"503"`` answers the upgrade 503, ``"reset"``
        resets the TCP connection."""
        self.faults.refuse = RefuseMode(mode)

    def accept_connections(self) -> None:
        self.faults.refuse = None

    def set_token_fault(
        self,
        mode: TokenFault | str | None = None,
        *,
        delay: float = 0.0,
        expires_in: int | str | None = None,
    ) -> None:
        """Token endpoint faults: ``"500"``, ``"error_200"``, ``"malformed"`` or None; a delay
        in seconds; an ``expires_in`` override sent as given (e.g. 60 or ``"60"``)."""
        self.faults.token_fault = None if mode is None else TokenFault(mode)
        self.faults.token_delay = delay
        self.faults.token_expires_in = expires_in

    def set_gateway_fault(
        self, mode: GatewayFault | str | None = None, *, delay: float = 0.0
    ) -> None:
        """``/gateway`` and ``/gateway/bot`` faults: ``"500"``, ``"503"``, ``"malformed"`` or
        None, plus a delay in seconds."""
        self.faults.gateway_fault = None if mode is None else GatewayFault(mode)
        self.faults.gateway_delay = delay

    def reject_next_resumes(self, n: int = 1) -> None:
        """The next ``n`` resumes fail (per ``config.resume_failure``, op 9 false by default)."""
        self.faults.reject_resumes = n

    def withhold_hello(self, on: bool = True) -> None:
        """New connections get no Hello (but are otherwise served)."""
        self.faults.withhold_hello = on

    def withhold_ready(self, on: bool = True) -> None:
        """Identify and Resume are ignored: no READY, no RESUMED, no session."""
        self.faults.withhold_ready = on

    def set_hello_interval(self, value: Any = MISSING) -> None:
        """Hello of new connections carries ``heartbeat_interval: value`` (0, -5, "abc", None,
        or ``MISSING`` to leave the key out). ``clear_hello_interval()`` undoes it."""
        self.faults.hello_interval = value
        self.faults.hello_interval_set = True

    def clear_hello_interval(self) -> None:
        self.faults.hello_interval = None
        self.faults.hello_interval_set = False

    async def send_raw(self, kind: str, *, size: int = 2 << 20, shard: int | None = None) -> int:
        """Send a bad frame to current connections. ``kind``: invalid_json, binary, unknown_op,
        missing_fields, wrong_types, huge (a text frame of about ``size`` bytes)."""
        if kind not in RAW_FRAME_KINDS:
            raise ValueError(f"unknown raw frame kind {kind!r} (known: {RAW_FRAME_KINDS})")
        targets = self._targets(shard)
        for conn in targets:
            if kind == "binary":
                item = Outgoing(0.0, "raw_binary", data=b"\x00\x01binary\xff")
            elif kind == "invalid_json":
                item = Outgoing(0.0, "raw_text", text='{"op": 0, "d": {')
            elif kind == "unknown_op":
                item = Outgoing(0.0, "raw_text", text=json.dumps({"op": 42, "d": {}}))
            elif kind == "missing_fields":
                item = Outgoing(0.0, "raw_text", text=json.dumps({"d": {"x": 1}}))
            elif kind == "wrong_types":
                bad = {"op": "zero", "s": "one", "t": 7, "d": []}
                item = Outgoing(0.0, "raw_text", text=json.dumps(bad))
            else:
                head = '{"op": 0, "t": "SIMULATOR_HUGE", "d": {"padding": "'
                pad = "x" * max(0, size - len(head) - 3)
                item = Outgoing(0.0, "raw_text", text=head + pad + '"}}')
            self._enqueue(conn, item)
        return len(targets)

    def reset_faults(self) -> None:
        """Every switch back to healthy. Blackholed connections stay so (use ``unblackhole``)."""
        self.faults = FaultState()
