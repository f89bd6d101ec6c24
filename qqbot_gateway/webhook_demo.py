"""``qqbot-gateway demo --transport webhook``: the webhook transport against the simulator.

Everything runs in this process on 127.0.0.1: the simulator's token endpoint and OpenAPI (for
replies), the client in webhook mode with its receiver, the telemetry side server, a chaos proxy
in front of the receiver, and the simulator's platform side posting signed callbacks through it
at a steady rate. After the op 13 validation and a healthy period it runs, one after the other:

* **forged and stale requests**: bad signatures and old timestamps next to genuine deliveries;
* **replays and duplicate storms**: the same signed request again, several copies at once;
* **failing receiver**: the proxy answers 502 or loses the ACK after the receiver accepted;
* **slow receiver**: the proxy holds requests past the platform's timeout;
* **slow handler**: the handler stalls, the bounded queue fills, callbacks get 503.

The client runs with the intake journal on (in a temporary state directory), as the service
does by default, so every ACK waits for its ``fdatasync``. The platform side retries a callback
answered 503 for longer than a phase lasts (the slow-handler phase keeps the queue full for a
whole phase), so a longer ``--duration`` does not make it give up on events.

It then compares what the platform delivered with what the handler received (none lost, none
twice) and shows every request counted by outcome. Exit status 0 only if nothing was lost or
duplicated, nothing forged was accepted and every phase's fault really happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final, TextIO

from qqbot_gateway.adapter.client import ClientConfig, QQBotClient, Secret
from qqbot_gateway.adapter.protocol import GatewayEvent
from qqbot_gateway.adapter.webhook import OUTCOMES, WebhookConfig
from qqbot_gateway.simulator import Simulator, SimulatorConfig
from qqbot_gateway.simulator.webhook import (
    ChaosProxy,
    DeliveryPolicy,
    WebhookDeliverer,
    WebhookFaults,
)
from qqbot_gateway.telemetry import Telemetry, TelemetryConfig
from qqbot_gateway.telemetry.webhook import WebhookReceiver

__all__ = ["MIN_DURATION", "WebhookStack", "run_webhook_demo", "webhook_stack"]

DEMO_APP_ID: Final = "102000000"
_LEAD_IN: Final = 1.0
_PHASES: Final = 5
#: Seconds kept at the end for retries in flight to land.
_TAIL: Final = 3.0
MIN_DURATION: Final = _LEAD_IN + _PHASES * 1.2 + _TAIL
_PATH: Final = "/qqbot/callback"


@dataclass(frozen=True, slots=True)
class WebhookStack:
    """Everything of a webhook run on 127.0.0.1, started: see :func:`webhook_stack`."""

    sim: Simulator
    client: QQBotClient
    telemetry: Telemetry
    receiver: WebhookReceiver
    proxy: ChaosProxy

    @property
    def platform_url(self) -> str:
        """Where the platform side posts: the chaos proxy in front of the receiver."""
        assert self.proxy.url is not None
        return self.proxy.url

    def count(self, outcome: str) -> int:
        """``qqbot_gateway_webhook_requests_total{outcome=...}`` of shard 0."""
        value = self.telemetry.registry.get_sample_value(
            "qqbot_gateway_webhook_requests_total", {"shard": "0", "outcome": outcome}
        )
        return int(value or 0)


@contextlib.asynccontextmanager
async def webhook_stack(
    secret: str,
    *,
    app_id: str = DEMO_APP_ID,
    path: str = _PATH,
    handler_queue_size: int = 1000,
    http_port: int = 0,
    proxy_seed: int | None = None,
    slow_delay: float = 1.2,
    state_dir: str | None = None,
) -> AsyncIterator[WebhookStack]:
    """The simulator (tokens and OpenAPI for replies), a webhook-mode client with telemetry and
    its side server, the receiver, and a chaos proxy (all faults off) in front of it; stopped in
    order on exit. Register handlers on ``stack.client`` (they may be added after start).
    ``state_dir`` turns the intake journal on (the service's default)."""
    sim_config = SimulatorConfig(app_id=app_id, client_secret=secret, event_rate=0.0)
    async with Simulator(sim_config) as sim:
        client = QQBotClient(
            ClientConfig(
                app_id=app_id,
                client_secret=Secret(secret),
                api_base=sim.base_url,
                token_url=sim.token_url,
                mode="webhook",
                webhook=WebhookConfig(host="127.0.0.1", port=0, path=path),
                handler_queue_size=handler_queue_size,
                state_dir=state_dir,
            )
        )
        tel = Telemetry(
            TelemetryConfig(http_host="127.0.0.1", http_port=http_port, tracing=False),
            process_collectors=False,
        )
        tel.attach(client)
        await tel.start()
        receiver: WebhookReceiver | None = None
        proxy: ChaosProxy | None = None
        try:
            await client.start()
            assert client.webhook is not None
            receiver = WebhookReceiver(client.webhook, health=lambda: tel.evaluate().healthy)
            await receiver.start()
            assert receiver.url is not None
            proxy = ChaosProxy(receiver.url, slow_delay=slow_delay, seed=proxy_seed)
            await proxy.start()
            yield WebhookStack(sim, client, tel, receiver, proxy)
        finally:
            await client.close(drain_timeout=2)  # callbacks get a 503 from here on
            if receiver is not None:
                await receiver.stop()
            if proxy is not None:
                await proxy.stop()
            await tel.stop()


@dataclass(frozen=True, slots=True)
class _Phase:
    name: str
    faults: WebhookFaults
    proxy: tuple[float, float, float]  # fail, lose_ack, slow
    slow_handler: bool = False


def _phases() -> list[_Phase]:
    none = (0.0, 0.0, 0.0)
    return [
        _Phase(
            "forged and stale requests", WebhookFaults(bad_signature=0.5, stale_timestamp=0.5), none
        ),
        _Phase(
            "replays and duplicate storms",
            WebhookFaults(replay=0.5, duplicate_storm=0.3, storm_size=4),
            none,
        ),
        _Phase("failing receiver (502, lost ACKs)", WebhookFaults(), (0.2, 0.2, 0.0)),
        _Phase("slow receiver (past the platform's timeout)", WebhookFaults(), (0.0, 0.0, 0.3)),
        _Phase("slow handler (queue full: 503, retried)", WebhookFaults(), none, True),
    ]


async def run_webhook_demo(
    *, duration: float, event_rate: float, http_port: int, out: TextIO
) -> int:
    def say(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    secret = secrets.token_urlsafe(9)  # 12 characters: the seed repeats it three times
    seen: Counter[str] = Counter()
    stall = asyncio.Event()
    replies = 0

    # The intake journal on, as the service runs by default: every ACK waits for its fdatasync.
    async with contextlib.AsyncExitStack() as stacks:
        state_dir = stacks.enter_context(tempfile.TemporaryDirectory(prefix="qqbot-webhook-demo-"))
        stack = await stacks.enter_async_context(
            webhook_stack(
                secret,
                handler_queue_size=4,  # small: the slow-handler phase (1 event/s) fills it at once
                http_port=http_port,
                proxy_seed=5,
                state_dir=state_dir,
            )
        )
        client, tel, receiver, proxy = stack.client, stack.telemetry, stack.receiver, stack.proxy

        @client.on()
        async def handle(event: GatewayEvent) -> None:
            nonlocal replies
            seen[event.event_id or ""] += 1
            if stall.is_set():
                await asyncio.sleep(1.0)
            if event.type == "C2C_MESSAGE_CREATE" and replies < 5:
                await client.api.reply(event, f"webhook demo got: {event.data.get('content')}")
                replies += 1

        say(f"side server:       {tel.http_url}/healthz  /readyz  /metrics")
        say(f"webhook receiver:  {receiver.url}  (the platform posts via a chaos proxy)")
        # The platform keeps retrying a callback answered 503 for longer than a phase lasts plus
        # the tail: the slow-handler phase keeps the queue full for a whole phase, and a retry
        # budget shorter than that would make the platform give up (QQ's own schedule is not
        # documented). Full jitter: a retry waits backoff_cap / 2 on average once at the cap.
        phase_len = max(1.2, (duration - _LEAD_IN - _TAIL) / _PHASES)
        cap = 0.5
        attempts = max(30, math.ceil(2.0 * (phase_len + _TAIL) / (cap / 2)))
        policy = DeliveryPolicy(
            timeout=1.0, max_attempts=attempts, backoff_base=0.05, backoff_cap=cap
        )
        platform = WebhookDeliverer(
            stack.platform_url, secret=secret, app_id=DEMO_APP_ID, policy=policy
        )
        deliveries: list[asyncio.Task[bool]] = []
        sent: list[str] = []
        try:
            async with platform:
                ok = await platform.validate()
                say(f"op 13 validation:  {'answered with a valid signature' if ok else 'FAILED'}")
                loop = asyncio.get_running_loop()
                start = loop.time()
                schedule = [(start + _LEAD_IN + i * phase_len, p) for i, p in enumerate(_phases())]
                end = start + _LEAD_IN + _PHASES * phase_len
                say(f"healthy traffic at {event_rate:g} events/s ...")

                def apply(phase: _Phase | None) -> None:
                    platform.faults = phase.faults if phase else WebhookFaults()
                    proxy.fail, proxy.lose_ack, proxy.slow = phase.proxy if phase else (0, 0, 0)
                    if phase is not None and phase.slow_handler:
                        stall.set()
                    else:
                        stall.clear()

                current: _Phase | None = None
                while (now := loop.time()) < end:
                    due = [p for t, p in schedule if t <= now]
                    phase = due[-1] if due else None
                    if phase is not current:
                        current = phase
                        apply(phase)
                        if phase is not None:
                            say(f"fault: {phase.name}")
                    payload = platform.make_event()
                    sent.append(str(payload["id"]))
                    deliveries.append(asyncio.create_task(platform.deliver(payload)))
                    await asyncio.sleep(1.0 / max(event_rate, 0.1))
                apply(None)
                say("faults off; waiting for retries in flight ...")
                async with asyncio.timeout(_TAIL + policy.timeout * policy.max_attempts):
                    acked = sum(await asyncio.gather(*deliveries))
                    while len(seen) < acked:  # noqa: ASYNC110 - the handler catches up
                        await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)
                healthy = tel.evaluate().healthy
        finally:
            for task in deliveries:
                task.cancel()

    count = stack.count

    stats = platform.stats
    lost = sum(1 for i in sent if i not in seen)
    duplicated = sum(n - 1 for n in seen.values() if n > 1)
    foreign = sum(1 for i in seen if i not in set(sent))
    say("")
    say("requests by outcome (qqbot_gateway_webhook_requests_total):")
    for outcome in OUTCOMES:
        if count(outcome):
            say(f"  {outcome:<18} {count(outcome)}")
    say(
        f"platform side: {stats.attempts} genuine attempts, {stats.retries} retries, "
        f"{stats.forged_sent} forged, {stats.stale_sent} stale, {stats.replays_sent} replays, "
        f"{stats.storms} storms, {stats.lost_acks} ACKs lost; proxy {dict(proxy.counts)}"
    )
    say(f"replies sent through client.api.reply: {replies}")
    say(
        f"events: sent {len(sent)}, delivered {len(seen)}, lost {lost}, duplicated "
        f"{duplicated}, forged accepted {foreign}"
    )
    gave_up = sum(
        1
        for task in deliveries
        if task.done() and not task.cancelled() and task.exception() is None and not task.result()
    )
    if gave_up:
        say(f"  the platform gave up on {gave_up} after {policy.max_attempts} attempts each")
    checks: list[tuple[str, Callable[[], bool]]] = [
        ("validation answered", lambda: ok),
        ("nothing lost, nothing twice", lambda: lost == 0 and duplicated == 0 and foreign == 0),
        ("forged and stale refused", lambda: count("bad_signature") + count("stale_timestamp") > 0),
        ("redeliveries dropped", lambda: count("duplicate") > 0),
        ("full queue answered 503", lambda: count("queue_full") > 0),
        ("no wrong answer", lambda: not stats.unexpected),
        ("healthy at the end", lambda: healthy),
    ]
    failed = [name for name, check in checks if not check()]
    with contextlib.suppress(Exception):
        for line in stats.unexpected[:5]:
            say(f"  unexpected: {line}")
    say("RESULT: ok" if not failed else f"RESULT: FAILED ({', '.join(failed)})")
    return 0 if not failed else 1
