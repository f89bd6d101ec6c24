"""A genuinely half-open TCP connection, made by the kernel, not simulated.

Two network namespaces joined by a veth pair: the simulator (standalone, its own process)
listens in one, the adapter (``QQBotClient``, its own process) runs in the other. While events
flow, a firewall rule in the adapter's namespace starts dropping every packet on the veth: no
FIN, no RST, no ICMP, both kernels keep the connection ESTABLISHED and the sockets stay quiet.
The adapter must notice on its own (a zombie reason, within a few heartbeat intervals), and,
once the rule is gone, resume the same session and deliver every event the simulator emitted
exactly once: the ones written into the void during the outage come back as a replay.

Variants: ``both`` directions dropped (a dead link, a NAT that forgot the flow), ``inbound``
only (the server hears our heartbeats and keeps the session alive, we hear nothing) and
``outbound`` only (the server hears nothing; it may tell us itself with a close 4009 after
its heartbeat grace, which is a correct detection too); all three with the WebSocket ping
layer off, so the session's own layers must do it, and ``both`` once more with WebSocket
pings every interval (then the ping layer may win: ``ping_timeout``).

Needs root and ``ip netns``; skips with the reason otherwise. Takes ~6 s per variant.
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

INTERVAL = 1.0  # seconds: the simulator's Hello interval
EVENT_RATE = 20.0  # dispatches per second: a steady stream
LIFECYCLE = frozenset({"READY", "RESUMED"})
#: The session's layers at their defaults: ACK tracking ends it by 3 intervals after the last
#: ACK (at most one interval before the cut), idle by 2.5 intervals after the last frame.
DETECTION_BOUND = 4 * INTERVAL + 1.0  # + scheduling slack on a loaded CI machine

ALLOWED_REASONS = {
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
    [("both", None), ("inbound", None), ("outbound", None), ("both", INTERVAL)],
    ids=["both", "inbound", "outbound", "both-ws-ping"],
)
async def test_half_open_link_is_detected_and_the_session_resumes_without_loss(
    direction: str, ws_ping: float | None
) -> None:
    label = direction if ws_ping is None else f"{direction}, ws ping {ws_ping:g}s"
    with NetnsPair.create(f"h{direction[0]}{'p' if ws_ping else ''}") as pair:
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
                    *([] if ws_ping is None else [str(ws_ping)]),
                ),
                "adapter",
            )
            ready = await client.wait_line("ready", 20)
            session_id = ready["session_id"]
            # A healthy stretch: events flow and heartbeats are acknowledged.
            await client.wait_for(lambda: len(delivered(client)) >= 20, 10, "20 events")
            await client.wait_line("ack", 5)

            mark = len(client.lines)
            cut_at = time.monotonic()  # CLOCK_MONOTONIC: the same clock as the adapter's loop
            pair.client.block(direction)
            gone = await client.wait_line("disconnected", 10 * INTERVAL, after=mark)
            detection = gone["t"] - cut_at
            zombies = [z for z in client.of("zombie") if z["t"] >= cut_at]
            print(
                f"\n[{label}] detected after {detection:.2f}s: {gone['reason']} "
                f"({gone['detail']}); zombie events: {[z['reason'] for z in zombies]}"
            )
            assert gone["reason"] in ALLOWED_REASONS[direction], gone
            assert gone["resumable"] is True, gone
            assert 0 < detection <= DETECTION_BOUND, f"detection took {detection:.2f}s"
            if gone["reason"] in ZOMBIE_REASONS:
                assert zombies and zombies[0]["reason"] == gone["reason"]

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
            assert len(emitted) >= 60
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
