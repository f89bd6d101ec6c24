"""Per-shard logging context, carried by a stdlib ``ContextVar`` (no logging library here).

Each shard's tasks (supervisor, reader, timer, handlers) run with ``current_shard`` set to the
shard's :class:`ShardContext`; the object is shared and updated in place as the session id and
connection id change, so every task of the shard sees the current values. Telemetry's log
processors read it to bind ``shard``, ``session_id`` and ``connection_id`` to every log line,
including lines logged by user handlers.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

__all__ = ["ShardContext", "current_shard", "log_fields"]


@dataclass(slots=True)
class ShardContext:
    shard: int
    session_id: str | None = None
    connection_id: str | None = None


current_shard: ContextVar[ShardContext | None] = ContextVar("qqbot_shard_context", default=None)


def log_fields() -> dict[str, Any]:
    """The fields to bind to a log line emitted in the current context (empty outside a shard)."""
    ctx = current_shard.get()
    if ctx is None:
        return {}
    fields: dict[str, Any] = {"shard": ctx.shard}
    if ctx.session_id is not None:
        fields["session_id"] = ctx.session_id
    if ctx.connection_id is not None:
        fields["connection_id"] = ctx.connection_id
    return fields
