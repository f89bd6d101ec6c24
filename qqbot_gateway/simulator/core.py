"""The simulator's shared state and the value types its parts pass around.

:class:`SimulatorCore` holds what every part reads: the configuration, the fault switches,
the sessions and connections, the records, the tokens and the addresses. The parts are mixins
over it, one job each (:mod:`.wsio` WebSocket I/O, :mod:`.gateway` the gateway protocol,
:mod:`.rest` the token endpoint and OpenAPI subset, :mod:`.control` the control API and the
fault registry); :class:`~qqbot_gateway.simulator.server.Simulator` composes them.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import random
import secrets
import uuid
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from qqbot_gateway.adapter.protocol import url_host
from qqbot_gateway.simulator.config import SimulatorConfig
from qqbot_gateway.simulator.events import EventFactory
from qqbot_gateway.simulator.faults import (
    FaultState,
)
from qqbot_gateway.simulator.records import (
    ConnectionRecord,
    DispatchRecord,
    IdentifyRecord,
    ResumeRecord,
    SentMessage,
    WriteRecord,
)

__all__ = [
    "CODE_BAD_REQUEST",
    "Conn",
    "Outgoing",
    "SessionInfo",
    "SessionState",
    "SimulatorCore",
    "json_response",
]

_log = logging.getLogger("qqbot_gateway.simulator")

CODE_BAD_REQUEST: Final = 40034001
TRACE_HEADER: Final = "X-Tps-trace-ID"


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
class Outgoing:
    """One item of a connection's write queue (a frame, raw bytes or a close)."""

    due: float
    kind: str  # frame, raw_text, raw_binary, close
    frame: dict[str, Any] | None = None
    text: str | None = None
    data: bytes | None = None
    code: int = 1000
    reason: str = ""
    invalidate: bool = False
    replayed: bool = False
    session: SessionState | None = None


@dataclass(eq=False, slots=True)
class SessionState:
    """One gateway session on the server side (its seq, replay buffer, connection)."""

    session_id: str
    shard: tuple[int, int]
    intents: int
    created_at: float
    seq: int = 0
    buffer: deque[tuple[int, dict[str, Any], DispatchRecord]] = field(default_factory=deque)
    evicted_seq: int = 0  # highest seq that fell out of the replay buffer
    max_written_seq: int = 0
    conn: Conn | None = None
    state: str = "active"
    disconnected_at: float | None = None
    credit: float = 0.0  # generator: fractional events owed


@dataclass(eq=False, slots=True)
class Conn:
    """One WebSocket connection and its writer queue."""

    conn_id: int
    ws: web.WebSocketResponse
    request: web.Request
    record: ConnectionRecord
    queue: asyncio.Queue[Outgoing] = field(default_factory=asyncio.Queue)
    writer_task: asyncio.Task[None] | None = None
    watchdog_task: asyncio.Task[None] | None = None
    session: SessionState | None = None
    blackholed: bool = False
    closing: bool = False
    hello_at: float | None = None
    last_heartbeat: float | None = None


class SimulatorCore:
    """The state every part of the simulator shares (see the module docstring)."""

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
        self._conns: dict[int, Conn] = {}
        self._sessions: dict[str, SessionState] = {}
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

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{url_host(self._host)}:{self._port}"

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

    def _error(self, status: int, code: int, message: str) -> web.Response:
        trace_id = uuid.UUID(int=self._rng.getrandbits(128)).hex
        body = {"message": message, "code": code, "err_code": code, "trace_id": trace_id}
        return json_response(body, status=status, headers={TRACE_HEADER: trace_id})

    def _ok(self, body: Any, status: int = 200) -> web.Response:
        trace_id = uuid.UUID(int=self._rng.getrandbits(128)).hex
        return json_response(body, status=status, headers={TRACE_HEADER: trace_id})


def json_response(
    body: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response with ``Content-Type: application/json`` exactly, as QQ sends it.

    (aiohttp's ``json_response`` adds ``; charset=utf-8``, which botpy does not recognise.)
    """
    return web.Response(
        body=json.dumps(body, ensure_ascii=False).encode(),
        status=status,
        headers=headers,
        content_type="application/json",
    )
