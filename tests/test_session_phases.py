"""The session's phase transitions are data (``PHASE_TRANSITIONS``); these tests read the table.

Every phase is reachable from DISCONNECTED and leads back to it; the session, driven through
whole connections (a handshake, a resume, closes of every kind), only ever moves along the
table's edges; a transition the table lacks fails loudly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from qqbot_gateway.adapter.session import (
    PHASE_TRANSITIONS,
    GatewaySession,
    LivenessConfig,
    Phase,
    next_phase,
)

HELLO = json.dumps({"op": 10, "d": {"heartbeat_interval": 1000}})
READY = json.dumps({"op": 0, "s": 1, "t": "READY", "d": {"session_id": "s1", "user": {}}})
RESUMED = json.dumps({"op": 0, "s": 5, "t": "RESUMED", "d": {}})
RECONNECT = json.dumps({"op": 7})


def reachable(start: Phase) -> set[Phase]:
    seen, todo = {start}, [start]
    while todo:
        here = todo.pop()
        for (phase, _), after in PHASE_TRANSITIONS.items():
            if phase is here and after not in seen:
                seen.add(after)
                todo.append(after)
    return seen


def test_every_phase_is_reachable_and_every_one_can_end() -> None:
    assert reachable(Phase.DISCONNECTED) == set(Phase)
    for phase in Phase:
        assert PHASE_TRANSITIONS[phase, "lost"] is Phase.DISCONNECTED
    assert {happened for _, happened in PHASE_TRANSITIONS} == {
        "connect",
        "hello",
        "ready",
        "close",
        "lost",
    }


def test_the_handshake_path_is_the_one_the_docstring_draws() -> None:
    path = [Phase.DISCONNECTED]
    for happened in ("connect", "hello", "ready", "close", "lost"):
        path.append(next_phase(path[-1], happened))
    assert path == [
        Phase.DISCONNECTED,
        Phase.AWAIT_HELLO,
        Phase.AWAIT_READY,
        Phase.READY,
        Phase.CLOSING,
        Phase.DISCONNECTED,
    ]


@pytest.mark.parametrize(
    ("phase", "happened"),
    [
        (Phase.DISCONNECTED, "hello"),
        (Phase.AWAIT_HELLO, "ready"),  # a dispatch before Hello is a violation, never READY
        (Phase.READY, "hello"),
        (Phase.CLOSING, "ready"),
        (Phase.DISCONNECTED, "close"),
    ],
)
def test_a_transition_the_table_lacks_fails_loudly(phase: Phase, happened: str) -> None:
    assert (phase, happened) not in PHASE_TRANSITIONS
    with pytest.raises(RuntimeError, match="no phase transition"):
        next_phase(phase, happened)


def _observed(steps: list[Callable[[GatewaySession], Any]]) -> list[tuple[Phase, Phase]]:
    """Run ``steps`` on a session; the phase changes it made, as (before, after) pairs."""
    session = GatewaySession(intents=1, liveness=LivenessConfig(hello_timeout=5.0))
    moves = []
    for step in steps:
        before = session.phase
        step(session)
        if session.phase is not before:
            moves.append((before, session.phase))
    return moves


SCENARIOS: dict[str, list[Callable[[GatewaySession], Any]]] = {
    "identify, op 7, resume": [
        lambda s: s.connect(0.0, "t"),
        lambda s: s.receive(HELLO, 0.1),
        lambda s: s.receive(READY, 0.2),
        lambda s: s.receive(RECONNECT, 0.3),
        lambda s: s.connection_lost(0.4),
        lambda s: s.connect(1.0, "t"),
        lambda s: s.receive(HELLO, 1.1),
        lambda s: s.receive(RESUMED, 1.2),
        lambda s: s.close_requested("shutdown", "bye", abort=False),
        lambda s: s.connection_lost(1.3),
    ],
    "no Hello in time": [
        lambda s: s.connect(0.0, "t"),
        lambda s: s.tick(5.0),
        lambda s: s.connection_lost(5.1),
    ],
    "a zombie": [
        lambda s: s.connect(0.0, "t"),
        lambda s: s.receive(HELLO, 0.0),
        lambda s: s.receive(READY, 0.1),
        *[lambda s, t=t: s.tick(t / 10) for t in range(1, 40)],
        lambda s: s.connection_lost(4.0),
    ],
    "the server goes away mid-handshake": [
        lambda s: s.connect(0.0, "t"),
        lambda s: s.receive(HELLO, 0.1),
        lambda s: s.connection_lost(0.2, 4009),
    ],
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_session_moves_only_along_the_table(name: str) -> None:
    edges = {(phase, after) for (phase, _), after in PHASE_TRANSITIONS.items()}
    moves = _observed(SCENARIOS[name])
    assert moves, "the scenario changed phases"
    assert moves[0] == (Phase.DISCONNECTED, Phase.AWAIT_HELLO)
    assert moves[-1][1] is Phase.DISCONNECTED
    for move in moves:
        assert move in edges, (name, move)
