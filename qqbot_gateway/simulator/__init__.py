"""An embedded QQ Bot gateway simulator with fault injection.

Serves the token endpoint, the OpenAPI subset bots use (gateway discovery, sending messages)
and the WebSocket gateway on one port of the host it is given (default 127.0.0.1)::

    async with Simulator(SimulatorConfig(heartbeat_interval_ms=500)) as sim:
        ...  # point QQBOT_API_BASE at sim.base_url and QQBOT_TOKEN_URL at sim.token_url

The layout, one job per module:

* ``server``: :class:`Simulator`, composing the parts below; lifecycle, event generator,
  fault switches (its public API);
* ``core``: the state every part shares (sessions, connections, tokens, addresses);
* ``rest``: the token endpoint, discovery and the send endpoints (passive-reply rules);
* ``wsio``: WebSocket I/O (accept, read loop, writer queue, watchdog, close, abort);
* ``gateway``: the gateway protocol (Hello, Identify/Resume, heartbeats, dispatch, replay);
* ``control``: the ``/_sim`` control API and the fault registry (``FAULTS``) that
  ``apply_fault`` and ``--help`` read;
* ``queries``: the records as tests read them, and ``GET /_sim/state``;
* ``config``, ``faults``, ``records``, ``events``: plain data (settings, fault switches,
  record types, realistic event payloads);
* ``standalone``: the one entry point (``qqbot-gateway simulate`` =
  ``python -m qqbot_gateway.simulator``); ``webhook``: the platform's webhook side.
"""

from __future__ import annotations

from qqbot_gateway.simulator.config import SessionStartLimit, SimulatorConfig
from qqbot_gateway.simulator.faults import (
    MISSING,
    RAW_FRAME_KINDS,
    FaultState,
    GatewayFault,
    RefuseMode,
    TokenFault,
)
from qqbot_gateway.simulator.records import (
    ConnectionRecord,
    DispatchRecord,
    HeartbeatRecord,
    IdentifyRecord,
    ResumeRecord,
    SentMessage,
    WriteRecord,
)
from qqbot_gateway.simulator.server import SessionInfo, Simulator
from qqbot_gateway.simulator.standalone import run_standalone

__all__ = [
    "MISSING",
    "RAW_FRAME_KINDS",
    "ConnectionRecord",
    "DispatchRecord",
    "FaultState",
    "GatewayFault",
    "HeartbeatRecord",
    "IdentifyRecord",
    "RefuseMode",
    "ResumeRecord",
    "SentMessage",
    "SessionInfo",
    "SessionStartLimit",
    "Simulator",
    "SimulatorConfig",
    "TokenFault",
    "WriteRecord",
    "run_standalone",
]
