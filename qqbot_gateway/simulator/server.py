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
import collections
import contextlib
import json
import logging
import random
import secrets
import socket
import struct
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, TypeVar

from aiohttp import WSMsgType, web

from qqbot_gateway.adapter.protocol import Op
from qqbot_gateway.simulator.config import SimulatorConfig
from qqbot_gateway.simulator.events import EventFactory
from qqbot_gateway.simulator.faults import (
    MISSING,
    RAW_FRAME_KINDS,
    FaultState,
    GatewayFault,
    LatencyModel,
    RefuseMode,
    TokenFault,
)
from qqbot_gateway.simulator.records import (
    LIFECYCLE_TYPES,
    ConnectionRecord,
    DispatchRecord,
    HeartbeatRecord,
    IdentifyRecord,
    ResumeRecord,
    SentMessage,
    WriteRecord,
)

__all__ = ["SessionInfo", "Simulator"]

_log = logging.getLogger("qqbot_gateway.simulator")

T = TypeVar("T")

#: QQ answers a bad or expired token with this code on REST.
CODE_TOKEN_EXPIRED: Final = 11244
CODE_BAD_CREDENTIALS: Final = 100016
CODE_TOKEN_BUSY: Final = 100001  # "too many requests": the transient error_200 fault
CODE_MSG_LIMIT: Final = 22009  # more than 5 replies to one message
CODE_MSG_SEQ_DUPLICATE: Final = 40054005  # same msg_id + msg_seq twice
CODE_MSG_EXPIRED: Final = 304027  # passive reply window passed
CODE_PROACTIVE_LIMIT: Final = 304045
CODE_BAD_REQUEST: Final = 40034001
TRACE_HEADER: Final = "X-Tps-trace-ID"

#: At most 5 passive replies per received message (QQ's documented limit).
MAX_REPLIES_PER_MSG: Final = 5
#: Passive reply windows in seconds (C2C 60 min; group, channel and DM 5 min).
REPLY_WINDOWS: Final[dict[str, float]] = {
    "c2c": 3600.0,
    "group": 300.0,
    "channel": 300.0,
    "dms": 300.0,
}
#: Frames above this size are refused by the server (4002); QQ frames are small.
MAX_CLIENT_FRAME: Final = 1 << 20
#: The generator ticks at least this often so high rates stay smooth.
GENERATOR_TICK: Final = 0.05
#: How often ``wait_for`` re-evaluates its predicate.
WAIT_POLL: Final = 0.01
#: Bound on the whole of ``stop()`` waiting for handlers (then transports are aborted).
STOP_GRACE: Final = 1.0


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A snapshot of one gateway session as the server sees it."""

    session_id: str
    shard: tuple[int, int]
    intents: int
    seq: int
    state: str  # active, invalidated
    connected: bool  # attached to a connection (possibly a blackholed one)
    buffered: int
    created_at: float
    disconnected_at: float | None


@dataclass(slots=True)
class _Outgoing:
    due: float
    kind: str  # frame, raw_text, raw_binary, close
    frame: dict[str, Any] | None = None
    text: str | None = None
    data: bytes | None = None
    code: int = 1000
    reason: str = ""
    invalidate: bool = False
    replayed: bool = False
    session: _Session | None = None


@dataclass(eq=False, slots=True)
class _Session:
    session_id: str
    shard: tuple[int, int]
    intents: int
    created_at: float
    seq: int = 0
    buffer: deque[tuple[int, dict[str, Any], DispatchRecord]] = field(default_factory=deque)
    evicted_seq: int = 0  # highest seq that fell out of the replay buffer
    max_written_seq: int = 0
    conn: _Conn | None = None
    state: str = "active"
    disconnected_at: float | None = None
    credit: float = 0.0  # generator: fractional events owed


@dataclass(eq=False, slots=True)
class _Conn:
    conn_id: int
    ws: web.WebSocketResponse
    request: web.Request
    record: ConnectionRecord
    queue: asyncio.Queue[_Outgoing] = field(default_factory=asyncio.Queue)
    writer_task: asyncio.Task[None] | None = None
    watchdog_task: asyncio.Task[None] | None = None
    session: _Session | None = None
    blackholed: bool = False
    closing: bool = False
    hello_at: float | None = None
    last_heartbeat: float | None = None


class Simulator:
    """An embedded QQ gateway. See the module docstring; all addresses bind the given host only."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config if config is not None else SimulatorConfig()
        self.faults = FaultState()
        self._rng = random.Random(self.config.seed)
        self._factory = EventFactory(self._rng)
        self._runner: web.AppRunner | None = None
        self._host = "127.0.0.1"
        self._port = 0
        self._started = False
        self._stopped = False
        self._generator_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._event_rate = self.config.event_rate
        self._events_paused = False
        self._conn_ids = 0
        self._conns: dict[int, _Conn] = {}
        self._sessions: dict[str, _Session] = {}
        self._tokens: dict[str, float] = {}  # token -> expiry (loop time)
        self._current_token: str | None = None
        self._issued: collections.deque[str] = collections.deque(maxlen=1000)
        self._client_secret = self.config.client_secret
        self._msg_times: dict[str, float] = {}  # message ids the server generated
        self._replies: dict[str, set[int]] = {}  # msg_id -> msg_seqs used
        # Records.
        self._dispatches: list[DispatchRecord] = []
        self._writes: list[WriteRecord] = []
        self._dropped: list[DispatchRecord] = []
        self._identifies: list[IdentifyRecord] = []
        self._resumes: list[ResumeRecord] = []
        self._connections: list[ConnectionRecord] = []
        self._messages: list[SentMessage] = []
        self._sessions_created: list[str] = []
        self.token_fetches = 0
        self.rest_requests = 0
        self.refused_connections = 0

    # ------------------------------------------------------------------ lifecycle

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

    async def stop(self) -> None:
        """Close every connection and the listener. Bounded, idempotent."""
        if not self._started or self._stopped:
            return
        self._stopped = True
        if self._generator_task is not None:
            self._generator_task.cancel()
        for conn in list(self._conns.values()):
            if conn.blackholed:
                _abort(conn)
            elif not conn.closing:
                self._enqueue_close(conn, 1001, "simulator stopping")
        if self._conns:
            with contextlib.suppress(TimeoutError):
                await self.wait_for(lambda: not self._conns, timeout=STOP_GRACE)
        for conn in list(self._conns.values()):
            _abort(conn)
        if self._runner is not None:
            await self._runner.cleanup()
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_GRACE)
        _log.info("simulator stopped")

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

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/app/getAppAccessToken"

    @property
    def ws_url(self) -> str:
        return "ws" + self.base_url[len("http") :] + "/websocket"

    @property
    def control_url(self) -> str:
        return f"{self.base_url}/_sim"

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    # ------------------------------------------------------------------ tokens

    def issue_token(self) -> tuple[str, float]:
        """The token a fetch now returns and its remaining lifetime in seconds."""
        now = self._now()
        current = self._current_token
        if current is not None:
            remaining = self._tokens.get(current, 0.0) - now
            if remaining > self.config.token_refresh_window:
                return current, remaining
        token = secrets.token_urlsafe(24)
        self._tokens[token] = now + self.config.token_ttl
        self._current_token = token
        self._issued.append(token)
        # Forget long-dead tokens so the table stays small.
        for old, expiry in list(self._tokens.items()):
            if expiry < now:
                del self._tokens[old]
        return token, float(self.config.token_ttl)

    def token_valid(self, token: str) -> bool:
        expiry = self._tokens.get(token)
        return expiry is not None and expiry > self._now()

    def _auth_token(self, value: object) -> bool:
        if not isinstance(value, str) or not value.startswith("QQBot "):
            return False
        return self.token_valid(value[len("QQBot ") :])

    def rotate_secret(self, new_secret: str) -> None:
        """The app secret changes on the platform: the old one is refused from now on (code
        100016); tokens already issued keep working until they expire."""
        if not new_secret:
            raise ValueError("the secret must not be empty")
        self._client_secret = new_secret

    def issued_tokens(self) -> list[str]:
        """Every access token handed out (the last 1000): for tests that grep output for them."""
        return list(self._issued)

    def expire_tokens(self) -> None:
        """Every token issued so far stops working now (REST 401/11244, Identify/Resume 4004)."""
        self._tokens.clear()
        self._current_token = None

    # ------------------------------------------------------------------ records

    @property
    def dispatches(self) -> list[DispatchRecord]:
        """Every dispatch created, READY and RESUMED included, in order."""
        return list(self._dispatches)

    def emitted_events(
        self, shard: int | None = None, session_id: str | None = None
    ) -> list[DispatchRecord]:
        """Dispatches emitted for sessions (READY/RESUMED excluded), in order."""
        return [
            r
            for r in self._dispatches
            if r.type not in LIFECYCLE_TYPES
            and (shard is None or r.shard == shard)
            and (session_id is None or r.session_id == session_id)
        ]

    @property
    def writes(self) -> list[WriteRecord]:
        """Every frame the server wrote to a live connection, in order."""
        return list(self._writes)

    def written_events(
        self,
        shard: int | None = None,
        session_id: str | None = None,
        conn_id: int | None = None,
    ) -> list[WriteRecord]:
        """Dispatches (READY/RESUMED excluded) actually written to a connection, replays too."""
        return [
            w
            for w in self._writes
            if w.op == int(Op.DISPATCH)
            and w.type not in LIFECYCLE_TYPES
            and w.seq is not None
            and (shard is None or w.shard == shard)
            and (session_id is None or w.session_id == session_id)
            and (conn_id is None or w.conn_id == conn_id)
        ]

    def dropped_events(self, shard: int | None = None) -> list[DispatchRecord]:
        """Events never written before their session was invalidated."""
        return [r for r in self._dropped if shard is None or r.shard == shard]

    @property
    def identifies(self) -> list[IdentifyRecord]:
        return list(self._identifies)

    @property
    def resumes(self) -> list[ResumeRecord]:
        return list(self._resumes)

    @property
    def connections(self) -> list[ConnectionRecord]:
        """Every WebSocket connection ever opened (closed ones keep their close code)."""
        return list(self._connections)

    def open_connections(self) -> list[ConnectionRecord]:
        return [c.record for c in self._conns.values()]

    def heartbeats(self, conn_id: int | None = None) -> list[HeartbeatRecord]:
        out: list[HeartbeatRecord] = []
        for rec in self._connections:
            if conn_id is None or rec.conn_id == conn_id:
                out.extend(rec.heartbeats)
        return sorted(out, key=lambda h: h.at)

    @property
    def messages(self) -> list[SentMessage]:
        """Messages accepted on the send endpoints, in order."""
        return list(self._messages)

    @property
    def sessions_created(self) -> list[str]:
        return list(self._sessions_created)

    def sessions(self) -> list[SessionInfo]:
        return [self._session_info(s) for s in self._sessions.values()]

    def session(self, session_id: str) -> SessionInfo | None:
        s = self._sessions.get(session_id)
        return None if s is None else self._session_info(s)

    @staticmethod
    def _session_info(s: _Session) -> SessionInfo:
        return SessionInfo(
            session_id=s.session_id,
            shard=s.shard,
            intents=s.intents,
            seq=s.seq,
            state=s.state,
            connected=s.conn is not None,
            buffered=len(s.buffer),
            created_at=s.created_at,
            disconnected_at=s.disconnected_at,
        )

    async def wait_for(
        self,
        predicate: Callable[[], T],
        timeout: float = 5.0,
        *,
        interval: float = WAIT_POLL,
    ) -> T:
        """Poll ``predicate`` until it returns something truthy; return it. TimeoutError after."""
        async with asyncio.timeout(timeout):
            while True:
                value = predicate()
                if value:
                    return value
                await asyncio.sleep(interval)

    def state(self) -> dict[str, Any]:
        """A JSON-friendly summary (served as ``GET /_sim/state``); holds no secret."""
        shards: dict[str, dict[str, int]] = {}

        def bucket(shard: int | None) -> dict[str, int]:
            key = "none" if shard is None else str(shard)
            return shards.setdefault(
                key,
                {
                    "sessions_active": 0,
                    "open_connections": 0,
                    "emitted": 0,
                    "written": 0,
                    "dropped": 0,
                },
            )

        for s in self._sessions.values():
            if s.state == "active":
                bucket(s.shard[0])["sessions_active"] += 1
        for c in self._conns.values():
            bucket(c.session.shard[0] if c.session else None)["open_connections"] += 1
        for r in self.emitted_events():
            bucket(r.shard)["emitted"] += 1
        for w in self.written_events():
            bucket(w.shard)["written"] += 1
        for r in self._dropped:
            bucket(r.shard)["dropped"] += 1
        outcomes: dict[str, int] = {}
        for rr in self._resumes:
            outcomes[rr.outcome] = outcomes.get(rr.outcome, 0) + 1
        return {
            "base_url": self.base_url,
            "ws_url": self.ws_url,
            "heartbeat_interval_ms": self.config.heartbeat_interval_ms,
            "event_rate": self._event_rate,
            "events_paused": self._events_paused,
            "shards": shards,
            "connections": {
                "open": len(self._conns),
                "blackholed": sum(1 for c in self._conns.values() if c.blackholed),
                "total": len(self._connections),
            },
            "sessions": [
                {
                    "session_id": s.session_id,
                    "shard": list(s.shard),
                    "seq": s.seq,
                    "state": s.state,
                    "connected": s.conn is not None,
                    "buffered": len(s.buffer),
                }
                for s in self._sessions.values()
            ],
            "identifies": len(self._identifies),
            "resumes": outcomes,
            "heartbeats": sum(len(c.heartbeats) for c in self._connections),
            "messages": len(self._messages),
            "token_fetches": self.token_fetches,
            "refused_connections": self.refused_connections,
            "faults": self.faults.summary(),
        }

    # ------------------------------------------------------------------ events

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

    def _live_sessions(self, shard: int | None, session_id: str | None) -> list[_Session]:
        now = self._now()
        out = []
        for s in list(self._sessions.values()):
            self._expire_if_due(s, now)
            if s.state != "active":
                continue
            if shard is not None and s.shard[0] != shard:
                continue
            if session_id is not None and s.session_id != session_id:
                continue
            out.append(s)
        return out

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

    def _dispatch(
        self, s: _Session, event_type: str, d: Any, event_id: str | None
    ) -> DispatchRecord:
        now = self._now()
        s.seq += 1
        frame: dict[str, Any] = {"op": int(Op.DISPATCH), "s": s.seq, "t": event_type, "d": d}
        if event_id is not None:
            frame["id"] = event_id
        rec = DispatchRecord(s.shard[0], s.session_id, s.seq, event_id, event_type, now)
        self._dispatches.append(rec)
        if isinstance(d, dict) and isinstance(d.get("id"), str):
            self._msg_times[d["id"]] = now
        if event_type not in LIFECYCLE_TYPES:
            s.buffer.append((s.seq, frame, rec))
            while len(s.buffer) > self.config.replay_buffer:
                seq, _, old = s.buffer.popleft()
                s.evicted_seq = seq
                if seq > s.max_written_seq:
                    self._dropped.append(old)
        conn = s.conn
        if conn is not None and not conn.blackholed and not conn.closing:
            self._enqueue(conn, _Outgoing(0.0, "frame", frame=frame, session=s))
        return rec

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

    def _expire_if_due(self, s: _Session, now: float) -> None:
        if (
            s.state == "active"
            and s.conn is None
            and s.disconnected_at is not None
            and now - s.disconnected_at > self.config.resume_window
        ):
            self._invalidate(s, "expired")

    def _invalidate(self, s: _Session, why: str) -> None:
        if s.state != "active":
            return
        s.state = "invalidated"
        for seq, _, rec in s.buffer:
            if seq > s.max_written_seq:
                self._dropped.append(rec)
        s.buffer.clear()
        _log.debug("session %s invalidated (%s)", s.session_id, why)

    # ------------------------------------------------------------------ faults

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

    def _reply_later(self, conn: _Conn, reply: Callable[[], None]) -> None:
        model = self.faults.reply_latency
        delay = model.sample() if model is not None else 0.0
        if delay <= 0:
            reply()
            return

        def fire() -> None:
            if not conn.closing and not conn.blackholed and not conn.ws.closed:
                reply()

        asyncio.get_running_loop().call_later(delay, fire)

    def _pong(self, conn: _Conn, data: bytes) -> None:
        def send() -> None:
            self._spawn(_send_pong(conn.ws, data), f"simulator pong conn {conn.conn_id}")

        self._reply_later(conn, send)

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
                _abort(conn)
                count += 1
        return count

    heal = unblackhole

    def _blackhole_conn(self, conn: _Conn) -> None:
        conn.blackholed = True
        conn.record.blackholed = True
        transport = conn.request.transport
        if transport is not None:
            # Stop reading at the socket: the peer's bytes pile up in kernel buffers unread.
            transport.pause_reading()
        if conn.watchdog_task is not None:
            conn.watchdog_task.cancel()

    def _targets(self, shard: int | None) -> list[_Conn]:
        return [
            c
            for c in self._conns.values()
            if not c.blackholed
            and not c.closing
            and (shard is None or (c.session is not None and c.session.shard[0] == shard))
        ]

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

    def _invalid_session(
        self, conn: _Conn, resumable: bool, *, close_code: int | str | None = "config"
    ) -> None:
        code = self.config.invalid_session_close_code if close_code == "config" else close_code
        self._send_frame(conn, {"op": int(Op.INVALID_SESSION), "d": resumable})
        if not resumable and conn.session is not None:
            self._invalidate(conn.session, "op 9 false")
        if isinstance(code, int):
            self._enqueue_close(conn, code, "invalid session", invalidate=not resumable)

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
                item = _Outgoing(0.0, "raw_binary", data=b"\x00\x01binary\xff")
            elif kind == "invalid_json":
                item = _Outgoing(0.0, "raw_text", text='{"op": 0, "d": {')
            elif kind == "unknown_op":
                item = _Outgoing(0.0, "raw_text", text=json.dumps({"op": 42, "d": {}}))
            elif kind == "missing_fields":
                item = _Outgoing(0.0, "raw_text", text=json.dumps({"d": {"x": 1}}))
            elif kind == "wrong_types":
                bad = {"op": "zero", "s": "one", "t": 7, "d": []}
                item = _Outgoing(0.0, "raw_text", text=json.dumps(bad))
            else:
                head = '{"op": 0, "t": "SIMULATOR_HUGE", "d": {"padding": "'
                pad = "x" * max(0, size - len(head) - 3)
                item = _Outgoing(0.0, "raw_text", text=head + pad + '"}}')
            self._enqueue(conn, item)
        return len(targets)

    def reset_faults(self) -> None:
        """Every switch back to healthy. Blackholed connections stay so (use ``unblackhole``)."""
        self.faults = FaultState()

    # ------------------------------------------------------------------ HTTP app

    def _add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/app/getAppAccessToken", self._h_token)
        r.add_get("/gateway", self._h_gateway)
        r.add_get("/gateway/bot", self._h_gateway_bot)
        r.add_get("/users/@me", self._h_me)
        r.add_get("/websocket", self._h_websocket)
        r.add_get("/websocket/", self._h_websocket)
        r.add_post("/v2/users/{target}/messages", self._sender("c2c"))
        r.add_post("/v2/groups/{target}/messages", self._sender("group"))
        r.add_post("/channels/{target}/messages", self._sender("channel"))
        r.add_post("/dms/{target}/messages", self._sender("dms"))
        r.add_post("/v2/users/{target}/files", self._sender("c2c_file"))
        r.add_post("/v2/groups/{target}/files", self._sender("group_file"))
        if self.config.control_api:
            r.add_get("/_sim/state", self._h_state)
            r.add_post("/_sim/faults", self._h_faults)
            r.add_post("/_sim/reset", self._h_reset)
            r.add_post("/_sim/events", self._h_events)
            r.add_post("/_sim/events/pause", self._h_pause)
            r.add_post("/_sim/events/resume", self._h_resume)
            r.add_get("/_sim/messages", self._h_messages)

    def _error(self, status: int, code: int, message: str) -> web.Response:
        trace_id = uuid.UUID(int=self._rng.getrandbits(128)).hex
        body = {"message": message, "code": code, "err_code": code, "trace_id": trace_id}
        return _json(body, status=status, headers={TRACE_HEADER: trace_id})

    def _ok(self, body: Any, status: int = 200) -> web.Response:
        trace_id = uuid.UUID(int=self._rng.getrandbits(128)).hex
        return _json(body, status=status, headers={TRACE_HEADER: trace_id})

    def _check_auth(self, request: web.Request) -> web.Response | None:
        self.rest_requests += 1
        if self._auth_token(request.headers.get("Authorization")):
            return None
        return self._error(401, CODE_TOKEN_EXPIRED, "token not exist or expire")

    async def _h_token(self, request: web.Request) -> web.Response:
        self.token_fetches += 1
        f = self.faults
        if f.token_delay > 0:
            await asyncio.sleep(f.token_delay)
        if f.token_fault is TokenFault.HTTP_500:
            return _json({"code": 500, "message": "internal error"}, status=500)
        if f.token_fault is TokenFault.ERROR_200:
            return _json({"code": CODE_TOKEN_BUSY, "message": "too many requests"})
        if f.token_fault is TokenFault.MALFORMED:
            return web.Response(body=b'{"access_token": ', content_type="application/json")
        try:
            body = await request.json()
        except ValueError:
            body = None
        if (
            not isinstance(body, dict)
            or body.get("appId") != self.config.app_id
            or body.get("clientSecret") != self._client_secret
        ):
            return _json({"code": CODE_BAD_CREDENTIALS, "message": "invalid appid or secret"})
        token, remaining = self.issue_token()
        expires: int | str
        if f.token_expires_in is not None:
            expires = f.token_expires_in
        else:
            seconds = max(1, int(remaining))
            expires = str(seconds) if self.config.token_expires_as_string else seconds
        return _json({"access_token": token, "expires_in": expires})

    async def _gateway_fault(self) -> web.Response | None:
        f = self.faults
        if f.gateway_delay > 0:
            await asyncio.sleep(f.gateway_delay)
        if f.gateway_fault is GatewayFault.HTTP_500:
            return self._error(500, 500, "internal error")
        if f.gateway_fault is GatewayFault.HTTP_503:
            return self._error(503, 503, "service unavailable")
        if f.gateway_fault is GatewayFault.MALFORMED:
            return web.Response(body=b'{"url": "ws', content_type="application/json")
        return None

    async def _h_gateway(self, request: web.Request) -> web.Response:
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        faulty = await self._gateway_fault()
        return faulty if faulty is not None else self._ok({"url": self.ws_url})

    async def _h_gateway_bot(self, request: web.Request) -> web.Response:
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        faulty = await self._gateway_fault()
        if faulty is not None:
            return faulty
        limit = self.config.session_start_limit
        return self._ok(
            {
                "url": self.ws_url,
                "shards": self.config.shards,
                "session_start_limit": {
                    "total": limit.total,
                    "remaining": limit.remaining,
                    "reset_after": limit.reset_after,
                    "max_concurrency": limit.max_concurrency,
                },
            }
        )

    async def _h_me(self, request: web.Request) -> web.Response:
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        return self._ok(
            {
                "id": self.config.bot_id,
                "username": self.config.bot_username,
                "avatar": "",
                "union_openid": "",
                "union_user_account": "",
            }
        )

    def _sender(self, kind: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            return await self._h_send(request, kind)

        return handler

    async def _h_send(self, request: web.Request, kind: str) -> web.Response:
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        target = request.match_info["target"]
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self._error(400, CODE_BAD_REQUEST, "request body must be a JSON object")
        now = self._now()
        ts = self._factory.timestamp()
        if kind.endswith("_file"):
            if not body.get("url") or not isinstance(body.get("file_type"), int):
                return self._error(400, CODE_BAD_REQUEST, "file_type and url are required")
            file_id = self._factory.message_id()
            self._messages.append(SentMessage(kind, target, body, None, None, None, file_id, now))
            return self._ok({"file_uuid": file_id, "file_info": file_id, "ttl": 0, "id": file_id})
        msg_id = body.get("msg_id") if isinstance(body.get("msg_id"), str) else None
        event_id = body.get("event_id") if isinstance(body.get("event_id"), str) else None
        raw_seq = body.get("msg_seq")
        try:
            msg_seq = 1 if raw_seq is None else int(raw_seq)
        except (TypeError, ValueError):
            return self._error(400, CODE_BAD_REQUEST, "msg_seq must be an integer")
        if not any(body.get(k) for k in ("content", "markdown", "ark", "embed", "media")):
            return self._error(400, CODE_BAD_REQUEST, "message is empty")
        if msg_id is None and event_id is None and not self.config.allow_proactive:
            return self._error(400, CODE_PROACTIVE_LIMIT, "proactive message not allowed")
        if msg_id is not None:
            born = self._msg_times.get(msg_id)
            if born is not None and now - born > REPLY_WINDOWS[kind]:
                return self._error(400, CODE_MSG_EXPIRED, "message expired for passive reply")
            used = self._replies.setdefault(msg_id, set())
            if msg_seq in used:
                return self._error(400, CODE_MSG_SEQ_DUPLICATE, "msg_seq duplicated")
            if len(used) >= MAX_REPLIES_PER_MSG:
                return self._error(400, CODE_MSG_LIMIT, "msg limit exceed")
            used.add(msg_seq)
        new_id = self._factory.message_id()
        self._messages.append(
            SentMessage(kind, target, body, msg_id, msg_seq, event_id, new_id, now)
        )
        answer: dict[str, Any] = {"id": new_id, "timestamp": ts}
        if kind in ("channel", "dms"):
            answer.update(
                {
                    "channel_id": target if kind == "channel" else "",
                    "guild_id": target if kind == "dms" else "",
                    "content": body.get("content", ""),
                    "author": {
                        "id": self.config.bot_id,
                        "username": self.config.bot_username,
                        "bot": True,
                    },
                }
            )
        return self._ok(answer)

    # ------------------------------------------------------------------ control API

    async def _h_state(self, request: web.Request) -> web.Response:
        return _json(self.state())

    async def _h_reset(self, request: web.Request) -> web.Response:
        self.reset_faults()
        return _json({"ok": True})

    async def _h_pause(self, request: web.Request) -> web.Response:
        self.pause_events()
        return _json({"ok": True})

    async def _h_resume(self, request: web.Request) -> web.Response:
        self.resume_events()
        return _json({"ok": True})

    async def _h_messages(self, request: web.Request) -> web.Response:
        return _json(
            [
                {
                    "kind": m.kind,
                    "target": m.target,
                    "body": m.body,
                    "msg_id": m.msg_id,
                    "msg_seq": m.msg_seq,
                    "id": m.id,
                }
                for m in self._messages
            ]
        )

    async def _h_events(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _json({"ok": False, "error": "expected a JSON object"}, status=400)
        try:
            count = int(body.get("count", 1))
            shard = body.get("shard")
            records = await self.emit_events(
                count,
                body.get("type"),
                body.get("data"),
                shard=None if shard is None else int(shard),
                session_id=body.get("session_id"),
            )
        except (TypeError, ValueError) as exc:
            return _json({"ok": False, "error": str(exc)}, status=400)
        return _json(
            {"ok": True, "emitted": [[r.shard, r.session_id, r.seq, r.type] for r in records]}
        )

    async def _h_faults(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("fault"), str):
            return _json({"ok": False, "error": 'expected {"fault": name}'}, status=400)
        try:
            result = await self.apply_fault(body["fault"], body)
        except (KeyError, TypeError, ValueError) as exc:
            return _json({"ok": False, "error": str(exc)}, status=400)
        return _json({"ok": True, "fault": body["fault"], "result": result})

    async def apply_fault(self, name: str, params: dict[str, Any]) -> Any:
        """Apply a fault by name (the control API's ``POST /_sim/faults`` body)."""
        p = params
        shard = p.get("shard")
        shard = None if shard is None else int(shard)
        match name:
            case "stop_acks":
                self.stop_acks()
            case "resume_acks":
                self.resume_acks()
            case "ignore_pings":
                self.ignore_pings(bool(p.get("on", True)))
            case "latency":
                median = p.get("median", 0.05)
                self.set_reply_latency(
                    None if median is None else float(median),
                    jitter=float(p.get("jitter", 10.0)),
                    spike_rate=float(p.get("spike_rate", 0.0)),
                    spike=float(p.get("spike", 0.0)),
                    seed=None if p.get("seed") is None else int(p["seed"]),
                )
            case "blackhole":
                return self.blackhole(current=bool(p.get("current", True)), new=bool(p.get("new")))
            case "unblackhole" | "heal":
                return self.unblackhole()
            case "close":
                return await self.close_connections(
                    int(p.get("code", 4009)), str(p.get("reason", "")), shard=shard
                )
            case "reconnect":
                return await self.send_reconnect(shard=shard)
            case "invalid_session":
                kwargs: dict[str, Any] = {}
                if "close_code" in p:
                    kwargs["close_code"] = p["close_code"]
                return await self.send_invalid_session(
                    bool(p.get("resumable", False)), shard=shard, **kwargs
                )
            case "delay":
                self.set_outgoing_delay(float(p.get("seconds", 0.0)))
            case "refuse":
                self.refuse_connections(str(p.get("mode", "503")))
            case "accept":
                self.accept_connections()
            case "expire_tokens":
                self.expire_tokens()
            case "token":
                self.set_token_fault(
                    p.get("mode"),
                    delay=float(p.get("delay", 0.0)),
                    expires_in=p.get("expires_in"),
                )
            case "gateway":
                self.set_gateway_fault(p.get("mode"), delay=float(p.get("delay", 0.0)))
            case "reject_resumes":
                self.reject_next_resumes(int(p.get("count", 1)))
            case "withhold_hello":
                self.withhold_hello(bool(p.get("on", True)))
            case "withhold_ready":
                self.withhold_ready(bool(p.get("on", True)))
            case "hello_interval":
                if "value" in p:
                    self.set_hello_interval(p["value"])
                else:
                    self.set_hello_interval(MISSING)
            case "clear_hello_interval":
                self.clear_hello_interval()
            case "raw":
                return await self.send_raw(
                    str(p.get("kind")), size=int(p.get("size", 2 << 20)), shard=shard
                )
            case "event_rate":
                self.set_event_rate(float(p.get("rate", 0.0)))
            case "pause_events":
                self.pause_events()
            case "resume_events":
                self.resume_events()
            case "reset":
                self.reset_faults()
            case _:
                raise ValueError(f"unknown fault {name!r}")
        return None

    # ------------------------------------------------------------------ WebSocket

    async def _h_websocket(self, request: web.Request) -> web.StreamResponse:
        refuse = self.faults.refuse
        if refuse is not None:
            self.refused_connections += 1
            if refuse is RefuseMode.RESET:
                _reset_transport(request)
            return self._error(503, 503, "service unavailable")
        # autoping off: a blackholed connection must not answer pings either.
        ws = web.WebSocketResponse(
            autoping=False, timeout=self.config.close_timeout, max_msg_size=MAX_CLIENT_FRAME
        )
        if not ws.can_prepare(request).ok:
            return self._error(400, CODE_BAD_REQUEST, "expected a WebSocket upgrade")
        await ws.prepare(request)
        now = self._now()
        self._conn_ids += 1
        conn_id = self._conn_ids
        peer = request.remote
        record = ConnectionRecord(conn_id=conn_id, remote=peer, opened_at=now)
        conn = _Conn(conn_id=conn_id, ws=ws, request=request, record=record)
        self._connections.append(record)
        self._conns[conn_id] = conn
        conn.writer_task = self._spawn(self._writer(conn), f"simulator writer conn {conn_id}")
        if self.faults.blackhole_new:
            self._blackhole_conn(conn)
        elif not self.faults.withhold_hello:
            self._send_hello(conn)
        try:
            await self._read_loop(conn)
        finally:
            await self._finish(conn)
        return ws

    def _send_hello(self, conn: _Conn) -> None:
        d: dict[str, Any] = {}
        f = self.faults
        if f.hello_interval_set:
            if f.hello_interval is not MISSING:
                d["heartbeat_interval"] = f.hello_interval
        else:
            d["heartbeat_interval"] = self.config.heartbeat_interval_ms
        self._send_frame(conn, {"op": int(Op.HELLO), "d": d})
        conn.hello_at = self._now()
        conn.watchdog_task = self._spawn(
            self._watchdog(conn), f"simulator heartbeat watchdog conn {conn.conn_id}"
        )

    async def _read_loop(self, conn: _Conn) -> None:
        ws = conn.ws
        while True:
            msg = await ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                if msg.type is WSMsgType.CLOSE and conn.record.closed_by is None:
                    conn.record.closed_by = "client"
                    conn.record.close_code = int(msg.data)
                    conn.record.close_reason = str(msg.extra or "")
                return
            if conn.blackholed:
                continue  # bytes that were already buffered before the blackhole: dropped
            if msg.type is WSMsgType.PING:
                if not self.faults.pings_ignored:
                    if self.faults.reply_latency is None:
                        await ws.pong(msg.data)
                    else:
                        self._pong(conn, msg.data)
            elif msg.type is WSMsgType.TEXT:
                self._on_text(conn, msg.data)
            elif msg.type is WSMsgType.BINARY:
                self._enqueue_close(conn, 4002, "binary frames are not accepted")
            if conn.closing:
                # Stop processing input once a close is on its way out.
                await self._drain_until_closed(conn)
                return

    async def _drain_until_closed(self, conn: _Conn) -> None:
        while True:
            msg = await conn.ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return

    async def _finish(self, conn: _Conn) -> None:
        """The connection is over: settle records and the session, stop its tasks."""
        writer = conn.writer_task
        if writer is not None and conn.closing and not writer.done():
            # Let an outgoing close finish (aiohttp bounds it by close_timeout).
            await asyncio.wait({writer}, timeout=self.config.close_timeout + 0.5)
        for task in (conn.writer_task, conn.watchdog_task):
            if task is not None and not task.done():
                task.cancel()
        for task in (conn.writer_task, conn.watchdog_task):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._conns.pop(conn.conn_id, None)
        rec = conn.record
        rec.closed_at = self._now()
        if rec.closed_by is None:
            rec.closed_by = "abort"
        s = conn.session
        if s is not None and s.conn is conn:
            s.conn = None
            s.disconnected_at = rec.closed_at
            if (
                rec.closed_by == "client"
                and rec.close_code in (1000, 1001)
                and self.config.client_normal_close_invalidates
            ):
                self._invalidate(s, "client closed normally")

    async def _watchdog(self, conn: _Conn) -> None:
        grace = self.config.heartbeat_interval_ms / 1000.0 * self.config.heartbeat_grace_factor
        loop = asyncio.get_running_loop()
        while True:
            last = conn.last_heartbeat or conn.hello_at or loop.time()
            wait = last + grace - loop.time()
            if wait <= 0:
                if not conn.blackholed and not conn.closing:
                    self._enqueue_close(conn, 4009, "session timed out")
                return
            await asyncio.sleep(wait)

    def _enqueue(self, conn: _Conn, item: _Outgoing) -> None:
        item.due = self._now() + self.faults.outgoing_delay
        conn.queue.put_nowait(item)

    def _send_frame(
        self, conn: _Conn, frame: dict[str, Any], *, session: _Session | None = None
    ) -> None:
        self._enqueue(conn, _Outgoing(0.0, "frame", frame=frame, session=session))

    def _enqueue_close(
        self,
        conn: _Conn,
        code: int,
        reason: str,
        *,
        invalidate: bool = False,
    ) -> None:
        if conn.closing:
            return
        conn.closing = True
        s = conn.session
        if invalidate and s is not None and s.conn is conn:
            # The session is detached in _finish, once the socket is gone.
            self._invalidate(s, f"close {code}")
        self._enqueue(conn, _Outgoing(0.0, "close", code=code, reason=reason))

    async def _writer(self, conn: _Conn) -> None:
        loop = asyncio.get_running_loop()
        ws = conn.ws
        while True:
            item = await conn.queue.get()
            wait = item.due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if conn.blackholed or ws.closed:
                continue
            if item.kind == "close":
                rec = conn.record
                if rec.closed_by is None:
                    rec.closed_by = "server"
                    rec.close_code = item.code
                    rec.close_reason = item.reason
                with contextlib.suppress(ConnectionError):
                    await ws.close(code=item.code, message=item.reason.encode())
                return
            try:
                if item.kind == "raw_binary":
                    await ws.send_bytes(item.data or b"")
                elif item.kind == "raw_text":
                    await ws.send_str(item.text or "")
                else:
                    assert item.frame is not None
                    await ws.send_str(json.dumps(item.frame, ensure_ascii=False))
            except (ConnectionError, RuntimeError):
                continue
            self._record_write(conn, item)

    def _record_write(self, conn: _Conn, item: _Outgoing) -> None:
        frame = item.frame
        s = item.session
        op = frame.get("op") if frame is not None else None
        seq = frame.get("s") if frame is not None else None
        if s is not None and isinstance(seq, int) and frame is not None and frame.get("t"):
            if frame["t"] not in LIFECYCLE_TYPES:
                s.max_written_seq = max(s.max_written_seq, seq)
        self._writes.append(
            WriteRecord(
                conn_id=conn.conn_id,
                shard=s.shard[0] if s is not None else None,
                session_id=s.session_id if s is not None else None,
                op=op if isinstance(op, int) else None,
                seq=seq if isinstance(seq, int) else None,
                type=frame.get("t") if frame is not None else item.kind,
                event_id=frame.get("id") if frame is not None else None,
                replayed=item.replayed,
                at=self._now(),
            )
        )

    # ------------------------------------------------------------------ gateway protocol

    def _on_text(self, conn: _Conn, text: str) -> None:
        try:
            payload = json.loads(text)
        except ValueError:
            self._enqueue_close(conn, 4002, "invalid payload: not JSON")
            return
        if not isinstance(payload, dict):
            self._enqueue_close(conn, 4002, "invalid payload: not an object")
            return
        op = payload.get("op")
        if not isinstance(op, int) or isinstance(op, bool):
            self._enqueue_close(conn, 4002, "invalid payload: op")
            return
        d = payload.get("d")
        if op == Op.HEARTBEAT:
            self._on_heartbeat(conn, d)
        elif op == Op.IDENTIFY:
            self._on_identify(conn, d)
        elif op == Op.RESUME:
            self._on_resume(conn, d)
        else:
            self._enqueue_close(conn, 4001, f"invalid opcode {op}")

    def _on_heartbeat(self, conn: _Conn, d: Any) -> None:
        if d is not None and (not isinstance(d, int) or isinstance(d, bool)):
            self._enqueue_close(conn, 4002, "invalid payload: heartbeat d")
            return
        now = self._now()
        conn.last_heartbeat = now
        acked = not self.faults.acks_stopped
        conn.record.heartbeats.append(HeartbeatRecord(conn.conn_id, d, now, acked))
        if acked:
            self._reply_later(conn, lambda: self._send_frame(conn, {"op": int(Op.HEARTBEAT_ACK)}))

    def _on_identify(self, conn: _Conn, d: Any) -> None:
        now = self._now()
        if conn.session is not None:
            return  # already identified: ignored, as a second READY would be nonsense
        if (
            not isinstance(d, dict)
            or not isinstance(d.get("token"), str)
            or not isinstance(d.get("intents"), int)
            or isinstance(d.get("intents"), bool)
        ):
            self._enqueue_close(conn, 4002, "invalid payload: identify")
            return
        intents: int = d["intents"]
        raw_shard = d.get("shard", [0, 1])
        shard: tuple[int, int] | None = None
        if (
            isinstance(raw_shard, list)
            and len(raw_shard) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in raw_shard)
        ):
            shard = (raw_shard[0], raw_shard[1])

        def record(outcome: str, session_id: str | None = None) -> None:
            self._identifies.append(
                IdentifyRecord(conn.conn_id, shard, intents, outcome, session_id, now)
            )

        if not self._auth_token(d["token"]):
            record("bad_token")
            self._enqueue_close(conn, 4004, "authentication fail")
            return
        if shard is None or not (0 <= shard[0] < shard[1] <= self.config.max_shards):
            record("invalid_shard")
            self._enqueue_close(conn, 4010, "invalid shard")
            return
        if intents & self.config.disallowed_intents:
            record("disallowed_intents")
            self._send_frame(conn, {"op": int(Op.INVALID_SESSION), "d": False})
            self._enqueue_close(conn, 4014, "disallowed intents")
            return
        if self.faults.withhold_ready:
            record("withheld")
            return
        session_id = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        s = _Session(session_id=session_id, shard=shard, intents=intents, created_at=now)
        self._sessions[session_id] = s
        self._sessions_created.append(session_id)
        record("ready", session_id)
        conn.session = s
        conn.record.session_id = session_id
        conn.record.shard = shard[0]
        ready = {
            "version": 1,
            "session_id": session_id,
            "user": {
                "id": self.config.bot_id,
                "username": self.config.bot_username,
                "bot": True,
                "status": 1,
            },
            "shard": [shard[0], shard[1]],
        }
        s.conn = conn  # READY goes through _dispatch, so attach first
        self._dispatch(s, "READY", ready, None)

    def _on_resume(self, conn: _Conn, d: Any) -> None:
        now = self._now()
        if conn.session is not None:
            return
        if (
            not isinstance(d, dict)
            or not isinstance(d.get("token"), str)
            or not isinstance(d.get("session_id"), str)
            or not isinstance(d.get("seq", 0), int | None)
            or isinstance(d.get("seq"), bool)
        ):
            self._enqueue_close(conn, 4002, "invalid payload: resume")
            return
        session_id: str = d["session_id"]
        seq: int | None = d.get("seq")
        last = 0 if seq is None else seq

        def record(outcome: str, replayed: int = 0) -> None:
            self._resumes.append(
                ResumeRecord(conn.conn_id, session_id, seq, outcome, replayed, now)
            )

        if not self._auth_token(d["token"]):
            record("bad_token")
            self._enqueue_close(conn, 4004, "authentication fail")
            return
        s = self._sessions.get(session_id)
        if s is not None:
            self._expire_if_due(s, now)
        if self.faults.reject_resumes > 0:
            self.faults.reject_resumes -= 1
            record("rejected_fault")
            self._fail_resume(conn, s)
            return
        if s is None:
            record("unknown_session")
            self._fail_resume(conn, None)
            return
        if s.state != "active":
            expired = s.disconnected_at is not None and (
                now - s.disconnected_at > self.config.resume_window
            )
            record("expired" if expired else "invalidated")
            self._fail_resume(conn, s)
            return
        if last > s.seq:
            record("seq_ahead")
            self._invalidate(s, "resume seq ahead")
            self._enqueue_close(conn, 4007, "invalid seq")
            return
        if last < s.evicted_seq:
            record("buffer_overflow")
            self._fail_resume(conn, s)
            return
        if self.faults.withhold_ready:
            record("withheld")
            return
        old = s.conn
        if old is not None and old is not conn:
            old.session = None
            if old.blackholed:
                pass  # forgotten; it is aborted on heal
            else:
                self._enqueue_close(old, 4902, "session reset by resume")
        replay = [(sq, frame) for sq, frame, _ in s.buffer if sq > last]
        for _, frame in replay:
            self._enqueue(conn, _Outgoing(0.0, "frame", frame=frame, replayed=True, session=s))
        record("resumed", len(replay))
        s.conn = conn
        s.disconnected_at = None
        conn.session = s
        conn.record.session_id = s.session_id
        conn.record.shard = s.shard[0]
        # RESUMED carries the session's current seq and takes no new one (it is not replayed).
        resumed = {"op": int(Op.DISPATCH), "s": s.seq, "t": "RESUMED", "d": ""}
        self._dispatches.append(
            DispatchRecord(s.shard[0], s.session_id, s.seq, None, "RESUMED", now)
        )
        self._send_frame(conn, resumed, session=s)

    def _fail_resume(self, conn: _Conn, s: _Session | None) -> None:
        if s is not None:
            self._invalidate(s, "resume refused")
        mode = self.config.resume_failure
        if mode == "op9":
            self._invalid_session(conn, False)
        else:
            self._enqueue_close(conn, int(mode), "invalid session" if mode == "4006" else "seq")


def _json(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response with ``Content-Type: application/json`` exactly, as QQ sends it.

    (aiohttp's ``json_response`` adds ``; charset=utf-8``, which botpy does not recognise.)
    """
    return web.Response(
        body=json.dumps(body, ensure_ascii=False).encode(),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def _abort(conn: _Conn) -> None:
    transport = conn.request.transport
    if transport is not None:
        transport.abort()


def _reset_transport(request: web.Request) -> None:
    """Abort with SO_LINGER 0 so the peer sees a TCP RST, not a FIN."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _send_pong(ws: web.WebSocketResponse, data: bytes) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.pong(data)
