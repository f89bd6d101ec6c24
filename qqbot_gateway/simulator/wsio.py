"""WebSocket I/O of the simulator: accept, read, write (with the delay fault), close, abort.

Every connection has one writer task draining its queue, and a heartbeat watchdog (4009 when
the client stops heartbeating). What a text frame means is the gateway protocol's business
(:mod:`.gateway`): this layer calls the hooks ``_on_text``, ``_send_hello`` and
``_invalidate``, which :class:`~qqbot_gateway.simulator.gateway.GatewayProtocol` provides.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import Callable
from typing import Any, Final

from aiohttp import WSMsgType, web

from qqbot_gateway.simulator.core import (
    CODE_BAD_REQUEST,
    Conn,
    Outgoing,
    SessionState,
    SimulatorCore,
)
from qqbot_gateway.simulator.faults import (
    RefuseMode,
)
from qqbot_gateway.simulator.records import (
    LIFECYCLE_TYPES,
    ConnectionRecord,
    WriteRecord,
)

__all__ = ["MAX_CLIENT_FRAME", "WebSocketIO", "abort_conn"]

#: Frames above this size are refused by the server (4002); QQ frames are small.
MAX_CLIENT_FRAME: Final = 1 << 20


class WebSocketIO(SimulatorCore):
    """The WebSocket side of the simulator (see the module docstring)."""

    # --- hooks the gateway protocol provides

    def _on_text(self, conn: Conn, text: str) -> None:
        raise NotImplementedError

    def _send_hello(self, conn: Conn) -> None:
        raise NotImplementedError

    def _invalidate(self, s: SessionState, why: str) -> None:
        raise NotImplementedError

    # --- connections

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
        conn = Conn(conn_id=conn_id, ws=ws, request=request, record=record)
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

    async def _read_loop(self, conn: Conn) -> None:
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

    async def _drain_until_closed(self, conn: Conn) -> None:
        while True:
            msg = await conn.ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return

    async def _finish(self, conn: Conn) -> None:
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

    async def _watchdog(self, conn: Conn) -> None:
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

    def _enqueue(self, conn: Conn, item: Outgoing) -> None:
        item.due = self._now() + self.faults.outgoing_delay
        conn.queue.put_nowait(item)

    def _send_frame(
        self, conn: Conn, frame: dict[str, Any], *, session: SessionState | None = None
    ) -> None:
        self._enqueue(conn, Outgoing(0.0, "frame", frame=frame, session=session))

    def _enqueue_close(
        self,
        conn: Conn,
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
        self._enqueue(conn, Outgoing(0.0, "close", code=code, reason=reason))

    async def _writer(self, conn: Conn) -> None:
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

    def _record_write(self, conn: Conn, item: Outgoing) -> None:
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

    def _reply_later(self, conn: Conn, reply: Callable[[], None]) -> None:
        model = self.faults.reply_latency
        delay = model.sample() if model is not None else 0.0
        if delay <= 0:
            reply()
            return

        def fire() -> None:
            if not conn.closing and not conn.blackholed and not conn.ws.closed:
                reply()

        asyncio.get_running_loop().call_later(delay, fire)

    def _pong(self, conn: Conn, data: bytes) -> None:
        def send() -> None:
            self._spawn(_send_pong(conn.ws, data), f"simulator pong conn {conn.conn_id}")

        self._reply_later(conn, send)

    def _blackhole_conn(self, conn: Conn) -> None:
        conn.blackholed = True
        conn.record.blackholed = True
        transport = conn.request.transport
        if transport is not None:
            # Stop reading at the socket: the peer's bytes pile up in kernel buffers unread.
            transport.pause_reading()
        if conn.watchdog_task is not None:
            conn.watchdog_task.cancel()

    def _targets(self, shard: int | None) -> list[Conn]:
        return [
            c
            for c in self._conns.values()
            if not c.blackholed
            and not c.closing
            and (shard is None or (c.session is not None and c.session.shard[0] == shard))
        ]


def abort_conn(conn: Conn) -> None:
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
