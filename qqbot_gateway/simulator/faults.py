"""Fault switches of the simulator: plain data, flipped by ``Simulator`` and the control API."""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass, field, fields
from typing import Any, Final

__all__ = [
    "MISSING",
    "RAW_FRAME_KINDS",
    "FaultState",
    "GatewayFault",
    "LatencyModel",
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
class LatencyModel:
    """How long the server takes to answer a heartbeat (op 11) or a ping (pong), each reply
    drawn on its own (server-side delay; dispatches are not held behind it).

    A log-normal around ``median`` whose 99.9th percentile is ``jitter`` x the median, cut at
    that; with probability ``spike_rate`` a reply takes ``spike`` seconds instead.
    """

    median: float = 0.05
    jitter: float = 10.0
    spike_rate: float = 0.0
    spike: float = 0.0
    seed: int | None = None
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.median < 0 or self.jitter < 1 or self.spike < 0:
            raise ValueError("need median >= 0, jitter >= 1, spike >= 0")
        if not 0 <= self.spike_rate <= 1:
            raise ValueError("spike_rate must be within [0, 1]")
        self._rng = random.Random(self.seed)

    def sample(self) -> float:
        if self.spike_rate and self._rng.random() < self.spike_rate:
            return self.spike
        if self.median == 0:
            return 0.0
        # 3.09: the standard normal's 99.9th percentile.
        sigma = math.log(self.jitter) / 3.09
        return min(self.median * math.exp(self._rng.gauss(0.0, sigma)), self.median * self.jitter)

    def summary(self) -> dict[str, float]:
        return {
            "median": self.median,
            "jitter": self.jitter,
            "spike_rate": self.spike_rate,
            "spike": self.spike,
        }


@dataclass(slots=True)
class FaultState:
    """Every switch at its healthy value by default."""

    acks_stopped: bool = False
    #: The server never answers WebSocket pings (whether QQ does is unverified).
    pings_ignored: bool = False
    #: Delay of each op 11 and each pong (None: answered at once).
    reply_latency: LatencyModel | None = None
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
            elif isinstance(value, LatencyModel):
                value = value.summary()
            elif isinstance(value, enum.Enum):
                value = value.value
            out[f.name] = value
        return out
