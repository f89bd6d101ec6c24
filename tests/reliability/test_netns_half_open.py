"""A genuinely half-open TCP connection, made by the kernel, not simulated.

Two network namespaces joined by a veth pair: the simulator (standalone, its own process)
listens in one, the adapter (``QQBotClient``, its own process) runs in the other. While events
flow, a firewall rule in the adapter's namespace starts dropping every packet on the veth: no
FIN, no RST, no ICMP, both kernels keep the connection ESTABLISHED and the sockets stay quiet.
The adapter must notice on its own (a zombie reason, within its layers' worst case in heartbeat
intervals H), and, once the rule is gone, resume the same session and deliver every event the
simulator emitted exactly once: the ones written into the void during the outage come back as a
replay.

Variants:

* ``flow``: only the live connection's packets are dropped (a NAT or load balancer that forgot
  the flow; new connections pass). With the ping layer armed, the adapter must have *resumed*
  within 0.5 H + 0.2 s of the cut: detection (0.35 H by design) plus reconnect and resume.
* ``both`` directions dropped on the whole link, with the ping layer on (``ping_timeout``
  within 0.35 H) and off (the ACK deadline: within 1.4 H);
* ``inbound`` only (the server hears our heartbeats and keeps the session alive, we hear
  nothing) and ``outbound`` only (the server hears nothing; it may tell us itself with a close
  4009 after its heartbeat grace, which is a correct detection too), both with the ping layer
  off, so the ACK and idle layers must do it.

Needs root, ``ip netns`` and nft or iptables; skips with the reason otherwise. ~5 s a variant.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import pytest

from qqbot_gateway.adapter.protocol import ZOMBIE_REASONS

from .netns import CLIENT_SCRIPT, SIM_SCRIPT, JsonLines, NetnsPair

pytestmark = pytest.mark.netns

INTERVAL = 1.0  # seconds: the simulator's Hello interval (H)
EVENT_RATE = 20.0  # dispatches per second: a steady stream
LIFECYCLE = frozenset({"READY", "RESUMED"})
#: Scheduling slack a loaded CI machine may add to a verdict, in seconds.
SLACK = 0.3
#: The layers' worst case at their defaults: with the ping layer armed, 0.05 H of quiet and the
#: pong deadline (0.3 H on a fast link); without it, the next heartbeat within 1 H of the last
#: ACK and its ACK deadline 0.4 H later.
DETECTION_BOUND = {"on": 0.35 * INTERVAL + SLACK, "off": 1.4 * INTERVAL + SLACK}
#: The bound for the ``flow`` variant: resumed within 0.5 H + 0.2 s of the cut.
RESUMED_BOUND = 0.5 * INTERVAL + 0.2

ALLOWED_REASONS = {
    "flow": set(ZOMBIE_REASONS),
    "both": set(ZOMBIE_REASONS),
    "inbound": set(ZOMBIE_REASONS),
    # The simulator closes a connection that sent no heartbeat for 1.45 intervals (as QQ
    # does after ~60 s); with only our packets dropped, that close frame can still reach us.
    "outbound": set(ZOMBIE_REASONS) | {"server_close:4009"},
}


def delivered(client: JsonLines) -> list[tuple[str, int, str | None]]:
    return [
        (e["session_id"], e["seq"], e["id"])
        for e in client.of("event")
        if e["type"] not in LIFECYCLE
    ]


async def dump(sim: JsonLines) -> dict[str, Any]:
    before = len(sim.of("dump"))
    await sim.send("dump")
    await sim.wait_for(lambda: len(sim.of("dump")) > before, 10, "a dump")
    return sim.of("dump")[-1]


@pytest.mark.parametrize(
    ("direction", "ws_ping"),
    [("flow", "on"), ("both", "on"), ("both", "off"), ("inbound", "off"), ("outbound", "off")],
    ids=["flow", "both-ws-ping", "both", "inbound", "outbound"],
)
async def test_half_open_link_is_detected_and_the_session_resumes_without_loss(
    direction: str, ws_ping: str
) -> None:
    label = f"{direction}, ws ping {ws_ping}"
    with NetnsPair.create(f"h{direction[0]}{'p' if ws_ping == 'on' else ''}") as pair:
        sim: JsonLines | None = None
        client: JsonLines | None = None
        try:
            sim = await JsonLines.start(
                pair.sim.cmd(
                    sys.executable,
                    "-c",
                    SIM_SCRIPT,
                    pair.sim.address,
                    "0",
                    str(int(INTERVAL * 1000)),
                    str(EVENT_RATE),
                ),
                "simulator",
            )
            listening = await sim.wait_line("listening", 20)
            client = await JsonLines.start(
                pair.client.cmd(
                    sys.executable,
                    "-c",
                    CLIENT_SCRIPT,
                    listening["base"],
                    listening["token_url"],
                    listening["ws"],
                    str(INTERVAL),
                    ws_ping,
                ),
                "adapter",
            )
            ready = await client.wait_line("ready", 20)
            session_id = ready["session_id"]
            # A healthy stretch: events flow and heartbeats are acknowledged.
            await client.wait_for(lambda: len(delivered(client)) >= 20, 10, "20 events")
            await client.wait_line("ack", 5)
            if ws_ping == "on":
                # the simulator answers pings: the layer arms on the first pong
                await client.wait_for(
                    lambda: any(x["state"] == "armed" for x in client.of("ping_layer")),
                    5,
                    "the ping layer to arm",
                )
            sim_port = int(listening["ws"].rsplit(":", 1)[1].split("/", 1)[0])

            mark = len(client.lines)
            if direction == "flow":
                # Every flow open to the simulator (the WebSocket and the REST client's pooled
                # connections) is forgotten; new connections pass.
                ports = pair.client.established_ports(sim_port)
                cut_at = time.monotonic()  # CLOCK_MONOTONIC: the adapter loop's clock
                pair.client.block_flows(ports)
            else:
                cut_at = time.monotonic()
                pair.client.block(direction)
            gone = await client.wait_line("disconnected", 10 * INTERVAL, after=mark)
            detection = gone["t"] - cut_at
            zombies = [z for z in client.of("zombie") if z["t"] >= cut_at]
            print(
                f"\n[{label}] detected after {detection:.2f}s: {gone['reason']} "
                f"({gone['detail']}); zombie events: {[z['reason'] for z in zombies]}"
            )
            assert gone["reason"] in ALLOWED_REASONS[direction], gone
            if ws_ping == "on":
                assert gone["reason"] == "ping_timeout", gone
            assert gone["resumable"] is True, gone
            bound = DETECTION_BOUND[ws_ping]
            assert 0 < detection <= bound, f"detection took {detection:.2f}s (bound {bound:g}s)"
            if gone["reason"] in ZOMBIE_REASONS:
                assert zombies and zombies[0]["reason"] == gone["reason"]

            if direction == "flow":
                # New connections pass: resumed right after the verdict.
                resumed = await client.wait_line("resumed", 5 * INTERVAL, after=mark)
                back = resumed["t"] - cut_at
                print(f"[{label}] resumed {back:.2f}s after the cut")
                assert back <= RESUMED_BOUND, f"resumed {back:.2f}s after the cut"
                pair.client.unblock()
            else:
                # Keep the outage a little longer: reconnect attempts fail into the black hole.
                await asyncio.sleep(1.5 * INTERVAL)
                pair.client.unblock()
                healed_at = time.monotonic()
                resumed = await client.wait_line("resumed", 20, after=mark)
                print(
                    f"[{label}] resumed {resumed['t'] - healed_at:.2f}s after the heal, "
                    f"{resumed['replayed']} events replayed"
                )
            assert resumed["session_id"] == session_id
            assert not [r for r in client.lines[mark:] if r.get("k") == "ready"], (
                "the session was identified afresh instead of resumed"
            )

            # Events flow again; then stop the generator and let everything drain.
            count = len(delivered(client))
            await client.wait_for(
                lambda: len(delivered(client)) >= count + 10, 10, "events after the resume"
            )
            await sim.send("pause")
            await sim.wait_line("paused", 5)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while True:
                state = await dump(sim)
                emitted = [(s, q, i) for s, q, i, _t in state["emitted"]]
                got = delivered(client)
                if len(got) >= len(emitted) or loop.time() > deadline:
                    break
                await asyncio.sleep(0.2)

            # Exactly once, in order, nothing missing, nothing extra.
            assert state["sessions"] == [session_id], "one session from start to end"
            assert [r[2] for r in state["resumes"]] == ["resumed"] * len(state["resumes"])
            assert len(got) == len(set(got)), "an event was delivered twice"
            seqs = [q for _s, q, _i in got]
            assert seqs == sorted(seqs), "events were delivered out of order"
            missing = sorted(set(emitted) - set(got))
            extra = sorted(set(got) - set(emitted))
            assert not missing, f"{len(missing)} emitted events never delivered: {missing[:5]}"
            assert not extra, f"delivered events the simulator never emitted: {extra[:5]}"
            # 20 events before the cut and 10 after the resume were waited for
            assert len(emitted) >= 30
            replayed = [e for e in client.of("event") if e["replayed"]]
            print(
                f"[{label}] {len(emitted)} events emitted, all delivered exactly once "
                f"({len(replayed)} during replay); duplicates dropped by the adapter: "
                f"{len(client.of('duplicate'))}"
            )
        finally:
            for proc in (client, sim):
                if proc is not None:
                    await proc.stop()
