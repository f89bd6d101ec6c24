"""What the simulator recorded, as tests and the control API read it: dispatches, writes,
dropped events, identifies, resumes, connections, heartbeats, sent messages, sessions, and
the JSON summary ``GET /_sim/state`` serves. Read-only: nothing here changes the simulation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final, TypeVar

from qqbot_gateway.adapter.protocol import Op
from qqbot_gateway.simulator.core import SessionInfo, SessionState, SimulatorCore
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

__all__ = ["Queries"]

T = TypeVar("T")

#: How often ``wait_for`` re-evaluates its predicate.
WAIT_POLL: Final = 0.01


class Queries(SimulatorCore):
    """Read-only views of the records (see the module docstring)."""

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
    def _session_info(s: SessionState) -> SessionInfo:
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
