"""The simulator's fault registry: every row reachable through ``POST /_sim/faults``, each
switching what it says (or undoing it), and a fault without a row here fails the test."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from qqbot_gateway.simulator import Simulator, SimulatorConfig
from qqbot_gateway.simulator.control import FAULTS

State = dict[str, Any]

#: fault, params, what the state summary says afterwards.
SWITCHES: list[tuple[str, dict[str, Any], Callable[[State], bool]]] = [
    ("stop_acks", {}, lambda s: s["faults"]["acks_stopped"] is True),
    ("ignore_pings", {}, lambda s: s["faults"]["pings_ignored"] is True),
    ("latency", {"median": 0.1}, lambda s: s["faults"]["reply_latency"]["median"] == 0.1),
    ("blackhole", {"new": True}, lambda s: s["faults"]["blackhole_new"] is True),
    ("delay", {"seconds": 0.5}, lambda s: s["faults"]["outgoing_delay"] == 0.5),
    ("refuse", {"mode": "reset"}, lambda s: s["faults"]["refuse"] == "reset"),
    ("token", {"mode": "500", "delay": 0.1}, lambda s: s["faults"]["token_fault"] == "500"),
    ("gateway", {"mode": "503"}, lambda s: s["faults"]["gateway_fault"] == "503"),
    ("reject_resumes", {"count": 3}, lambda s: s["faults"]["reject_resumes"] == 3),
    ("withhold_hello", {}, lambda s: s["faults"]["withhold_hello"] is True),
    ("withhold_ready", {}, lambda s: s["faults"]["withhold_ready"] is True),
    ("hello_interval", {}, lambda s: s["faults"]["hello_interval"] == "missing"),
    ("hello_interval", {"value": -5}, lambda s: s["faults"]["hello_interval"] == -5),
    ("event_rate", {"rate": 7}, lambda s: s["event_rate"] == 7.0),
    ("pause_events", {}, lambda s: s["events_paused"] is True),
]
#: fault that undoes a switch, the switch, what the state says afterwards.
UNDO: list[tuple[str, str, Callable[[State], bool]]] = [
    ("resume_acks", "stop_acks", lambda s: s["faults"]["acks_stopped"] is False),
    ("heal", "blackhole", lambda s: s["faults"]["blackhole_new"] is False),
    ("unblackhole", "blackhole", lambda s: s["faults"]["blackhole_new"] is False),
    ("accept", "refuse", lambda s: s["faults"]["refuse"] is None),
    (
        "clear_hello_interval",
        "hello_interval",
        lambda s: s["faults"]["hello_interval_set"] is False,
    ),
    ("resume_events", "pause_events", lambda s: s["events_paused"] is False),
    ("reset", "withhold_ready", lambda s: s["faults"]["withhold_ready"] is False),
]
#: Faults acting on open connections (covered with a bot in test_simulator.py and the fault
#: matrix): with none open they touch nothing and say so.
ON_CONNECTIONS = {"close": 0, "reconnect": 0, "invalid_session": 0, "raw": 0}
#: expire_tokens acts on tokens: checked below.
OTHER = {"expire_tokens"}


def test_every_fault_has_a_row_here() -> None:
    covered = {row[0] for row in SWITCHES} | {row[0] for row in UNDO}
    covered |= set(ON_CONNECTIONS) | OTHER
    assert covered == set(FAULTS)


@pytest.fixture
async def control() -> Any:
    async with (
        Simulator(SimulatorConfig(heartbeat_interval_ms=500)) as sim,
        aiohttp.ClientSession() as http,
    ):

        async def post(fault: str, **params: Any) -> tuple[int, Any]:
            async with http.post(
                f"{sim.control_url}/faults", json={"fault": fault, **params}
            ) as resp:
                return resp.status, await resp.json()

        yield sim, post


async def test_switches(control: Any) -> None:
    sim, post = control
    for fault, params, check in SWITCHES:
        status, body = await post(fault, **params)
        assert status == 200 and body["ok"], (fault, body)
        assert check(sim.state()), (fault, sim.state()["faults"])


async def test_undo(control: Any) -> None:
    sim, post = control
    for fault, switch, check in UNDO:
        (params,) = [p for name, p, _ in SWITCHES if name == switch][:1]
        assert (await post(switch, **params))[0] == 200
        status, body = await post(fault)
        assert status == 200 and body["ok"], (fault, body)
        assert check(sim.state()), (fault, sim.state()["faults"])


async def test_connection_faults_and_tokens(control: Any) -> None:
    sim, post = control
    for fault, count in ON_CONNECTIONS.items():
        params = {"kind": "binary"} if fault == "raw" else {}
        status, body = await post(fault, **params)
        assert status == 200 and body["result"] == count, (fault, body)
    token, _ = sim.issue_token()
    assert sim.token_valid(token)
    assert (await post("expire_tokens"))[0] == 200
    assert not sim.token_valid(token)


async def test_bad_requests_are_400_with_the_reason(control: Any) -> None:
    _, post = control
    status, body = await post("no_such_fault")
    assert status == 400 and "unknown fault 'no_such_fault'" in body["error"]
    status, body = await post("close", code="x")
    assert status == 400 and not body["ok"]
    status, body = await post("raw", kind="nonsense")
    assert status == 400 and "unknown raw frame kind" in body["error"]
    status, body = await post("refuse", mode="sometimes")
    assert status == 400
