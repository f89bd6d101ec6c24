"""The gateway protocol as the server plays it: Hello, Identify/Resume, heartbeats and their
ACKs, dispatches with their seq and replay buffer, op 9, session expiry and invalidation.

Frames arrive from :mod:`.wsio` as text; answers go back through its queue (``_send_frame``,
``_enqueue_close``), so the delay and blackhole faults apply to them too.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from qqbot_gateway.adapter.protocol import Op
from qqbot_gateway.simulator.core import Conn, Outgoing, SessionState
from qqbot_gateway.simulator.faults import (
    MISSING,
)
from qqbot_gateway.simulator.records import (
    LIFECYCLE_TYPES,
    DispatchRecord,
    HeartbeatRecord,
    IdentifyRecord,
    ResumeRecord,
)
from qqbot_gateway.simulator.wsio import WebSocketIO

__all__ = ["GatewayProtocol"]

_log = logging.getLogger("qqbot_gateway.simulator")


class GatewayProtocol(WebSocketIO):
    """The gateway protocol over :class:`WebSocketIO` (see the module docstring)."""

    def _send_hello(self, conn: Conn) -> None:
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

    def _on_text(self, conn: Conn, text: str) -> None:
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

    def _on_heartbeat(self, conn: Conn, d: Any) -> None:
        if d is not None and (not isinstance(d, int) or isinstance(d, bool)):
            self._enqueue_close(conn, 4002, "invalid payload: heartbeat d")
            return
        now = self._now()
        conn.last_heartbeat = now
        acked = not self.faults.acks_stopped
        conn.record.heartbeats.append(HeartbeatRecord(conn.conn_id, d, now, acked))
        if acked:
            self._reply_later(conn, lambda: self._send_frame(conn, {"op": int(Op.HEARTBEAT_ACK)}))

    def _on_identify(self, conn: Conn, d: Any) -> None:
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
        s = SessionState(session_id=session_id, shard=shard, intents=intents, created_at=now)
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

    def _on_resume(self, conn: Conn, d: Any) -> None:
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
            self._enqueue(conn, Outgoing(0.0, "frame", frame=frame, replayed=True, session=s))
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

    def _fail_resume(self, conn: Conn, s: SessionState | None) -> None:
        if s is not None:
            self._invalidate(s, "resume refused")
        mode = self.config.resume_failure
        if mode == "op9":
            self._invalid_session(conn, False)
        else:
            self._enqueue_close(conn, int(mode), "invalid session" if mode == "4006" else "seq")

    def _invalid_session(
        self, conn: Conn, resumable: bool, *, close_code: int | str | None = "config"
    ) -> None:
        code = self.config.invalid_session_close_code if close_code == "config" else close_code
        self._send_frame(conn, {"op": int(Op.INVALID_SESSION), "d": resumable})
        if not resumable and conn.session is not None:
            self._invalidate(conn.session, "op 9 false")
        if isinstance(code, int):
            self._enqueue_close(conn, code, "invalid session", invalidate=not resumable)

    def _dispatch(
        self, s: SessionState, event_type: str, d: Any, event_id: str | None
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
            self._enqueue(conn, Outgoing(0.0, "frame", frame=frame, session=s))
        return rec

    def _invalidate(self, s: SessionState, why: str) -> None:
        if s.state != "active":
            return
        s.state = "invalidated"
        for seq, _, rec in s.buffer:
            if seq > s.max_written_seq:
                self._dropped.append(rec)
        s.buffer.clear()
        _log.debug("session %s invalidated (%s)", s.session_id, why)

    def _expire_if_due(self, s: SessionState, now: float) -> None:
        if (
            s.state == "active"
            and s.conn is None
            and s.disconnected_at is not None
            and now - s.disconnected_at > self.config.resume_window
        ):
            self._invalidate(s, "expired")

    def _live_sessions(self, shard: int | None, session_id: str | None) -> list[SessionState]:
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
