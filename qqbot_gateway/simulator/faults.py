"""Fault switches of the simulator: plain data, flipped by ``Simulator`` and the control API."""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import Any, Final

__all__ = [
    "MISSING",
    "RAW_FRAME_KINDS",
    "FaultState",
    "GatewayFault",
    "RefuseMode",
    "TokenFault",
]


class _Missing(enum.Enum):
    """Sentinel: the field is left out of the frame entirely."""

    MISSING = "missing"


MISSING: Final = _Missing.MISSING


class TokenFault(enum.StrEnum):
    HTTP_500 = "500"
    ERROR_200 = "error_200"  # HTTP 200 with an error body, as QQ does
    MALFORMED = "malformed"  # HTTP 200, not JSON


class GatewayFault(enum.StrEnum):
    HTTP_500 = "500"
    HTTP_503 = "503"
    MALFORMED = "malformed"


class RefuseMode(enum.StrEnum):
    HTTP_503 = "503"  # the WebSocket upgrade is answered 503
    RESET = "reset"  # the TCP connection is reset (RST) before any answer


#: Kinds accepted by ``Simulator.send_raw``.
RAW_FRAME_KINDS: Final = (
    "invalid_json",
    "binary",
    "unknown_op",
    "missing_fields",
    "wrong_types",
    "huge",
)


@dataclass(slots=True)
class FaultState:
    """Every switch at its healthy value by default."""

    acks_stopped: bool = False
    blackhole_new: bool = False
    outgoing_delay: float = 0.0
    refuse: RefuseMode | None = None
    withhold_hello: bool = False
    withhold_ready: bool = False
    reject_resumes: int = 0
    token_fault: TokenFault | None = None
    token_delay: float = 0.0
    #: Replaces ``expires_in`` in token answers (number or string, sent as given).
    token_expires_in: int | str | None = None
    gateway_fault: GatewayFault | None = None
    gateway_delay: float = 0.0
    #: Replaces ``heartbeat_interval`` in Hello for new connections (``MISSING`` drops the key).
    hello_interval: Any = None
    hello_interval_set: bool = False

    def summary(self) -> dict[str, Any]:
        """JSON-friendly view of the switches (no secrets live here)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is MISSING:
                value = "missing"
            elif isinstance(value, enum.Enum):
                value = value.value
            out[f.name] = value
        return out
