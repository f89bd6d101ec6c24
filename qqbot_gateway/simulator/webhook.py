"""The platform's side of the webhook transport: signed deliveries, retries and faults.

::

    async with WebhookDeliverer(receiver_url, secret="s3cret") as platform:
        assert await platform.validate()             # op 13, our answer's signature checked
        await platform.deliver_many(platform.make_events(1000), concurrency=8)
        platform.stats                                # what was sent, retried, refused

:class:`WebhookDeliverer` signs like QQ (the same seed derivation, ``X-Signature-Ed25519`` over
timestamp + body, a fresh timestamp per attempt), sends op 13 validation, and retries every
delivery that was not acknowledged with ``{"op": 12, "d": 0}`` (a non-200, ``d: 1``, a timeout,
a refused connection) with exponential backoff and full jitter. QQ's real retry schedule is not
documented; the policy is a parameter.

Faults (:class:`WebhookFaults`, probabilities per delivery) that a correct receiver must survive:
``bad_signature`` (a forged copy first: must be refused), ``stale_timestamp`` (a copy signed
outside the replay window: refused), ``replay`` (the identical signed request again after its
ACK: dropped as a duplicate), ``lost_ack`` (an ACK treated as lost: the redelivery must be
dropped), ``duplicate_storm`` (several copies at once: handled once). :class:`ChaosProxy` sits
in front of the receiver for the faults of the receiver's own side: slow (answers after the
platform gave up) and failing (502 without forwarding, or forwarding and then losing the ACK).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

import aiohttp
from aiohttp import web

from qqbot_gateway.adapter.protocol import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookKey,
    url_host,
)
from qqbot_gateway.simulator.events import EVENT_INTENTS, EventFactory

__all__ = [
    "ChaosProxy",
    "DeliveryPolicy",
    "DeliveryStats",
    "WebhookDeliverer",
    "WebhookFaults",
]

_log = logging.getLogger("qqbot_gateway.simulator.webhook")

_ACK: Final = {"op": 12, "d": 0}
#: How far outside the receiver's window a stale copy is signed (an hour: any sane window).
_STALE_BY: Final = 3600


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    #: Seconds one attempt may take before it counts as failed (the platform gives up).
    timeout: float = 5.0
    max_attempts: int = 10
    #: Backoff before attempt n+1: uniform(0, min(cap, base * 2**n)).
    backoff_base: float = 0.05
    backoff_cap: float = 2.0


@dataclass(frozen=True, slots=True)
class WebhookFaults:
    """Probabilities per delivery (0 disables each)."""

    bad_signature: float = 0.0
    stale_timestamp: float = 0.0
    replay: float = 0.0
    lost_ack: float = 0.0
    duplicate_storm: float = 0.0
    storm_size: int = 5


@dataclass(slots=True)
class DeliveryStats:
    """Counts from the platform's side. ``unexpected`` lists answers a correct receiver never
    gives (a forged request accepted, a genuine one refused with 4xx); it should stay empty."""

    validations: int = 0
    deliveries: int = 0  # events handed to deliver()
    acked: int = 0  # events finally acknowledged
    gave_up: int = 0  # events never acknowledged within max_attempts
    attempts: int = 0  # genuine requests sent, retries and storms included
    retries: int = 0
    forged_sent: int = 0
    forged_refused: int = 0
    stale_sent: int = 0
    stale_refused: int = 0
    replays_sent: int = 0
    replays_acked: int = 0
    lost_acks: int = 0
    storms: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)


class WebhookDeliverer:
    def __init__(
        self,
        url: str,
        *,
        secret: str,
        app_id: str = "1024",
        policy: DeliveryPolicy | None = None,
        faults: WebhookFaults | None = None,
        seed: int | None = None,
        wall: Callable[[], float] = time.time,
        ssl: Any = None,
    ) -> None:
        self.url = url
        self.app_id = app_id
        self.key = WebhookKey(secret)
        self.policy = policy or DeliveryPolicy()
        self.faults = faults or WebhookFaults()
        self.stats = DeliveryStats()
        self._rng = random.Random(seed)
        self._factory = EventFactory(random.Random(seed))
        self._wall = wall
        self._ssl = ssl
        self._seq = 0
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> WebhookDeliverer:
        self._http = aiohttp.ClientSession()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    # --- payloads ------------------------------------------------------------------------
    def make_event(self, event_type: str | None = None) -> dict[str, Any]:
        """One op 0 payload shaped like QQ's (fresh id, the next ``s``)."""
        t = event_type or self._rng.choice(list(EVENT_INTENTS))
        event_id, d = self._factory.build(t, bot_id=self.app_id)
        self._seq += 1
        return {"op": 0, "id": event_id, "d": d, "s": self._seq, "t": t}

    def make_events(self, n: int) -> list[dict[str, Any]]:
        return [self.make_event() for _ in range(n)]

    def signed_headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        stamp = str(int(self._wall()) if timestamp is None else timestamp)
        return {
            "Content-Type": "application/json",
            "User-Agent": "QQBot-Callback",
            "X-Bot-Appid": self.app_id,
            "X-Signature-Method": "Ed25519",
            TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: self.key.sign_hex(stamp, body),
        }

    # --- requests ------------------------------------------------------------------------
    async def post(
        self, body: bytes, headers: dict[str, str], *, timeout: float | None = None
    ) -> tuple[int, bytes]:
        """One request; (status, body), or (0, b"") when it failed or timed out."""
        if self._http is None:
            raise RuntimeError("use 'async with WebhookDeliverer(...)'")
        limit = aiohttp.ClientTimeout(total=timeout or self.policy.timeout)
        try:
            async with self._http.post(
                self.url, data=body, headers=headers, timeout=limit, ssl=self._ssl
            ) as response:
                data = await response.read()
                self.stats.statuses[response.status] = (
                    self.stats.statuses.get(response.status, 0) + 1
                )
                return response.status, data
        except (aiohttp.ClientError, TimeoutError):
            self.stats.statuses[0] = self.stats.statuses.get(0, 0) + 1
            return 0, b""

    async def validate(self, plain_token: str | None = None) -> bool:
        """Op 13 as the platform sends it when a callback URL is configured; True when the
        answer echoes the token and carries a valid signature of event_ts + plain_token."""
        token = plain_token or "".join(
            self._rng.choice("abcdefABCDEF0123456789") for _ in range(20)
        )
        event_ts = str(int(self._wall()))
        body = json.dumps({"op": 13, "d": {"plain_token": token, "event_ts": event_ts}}).encode()
        status, data = await self.post(body, self.signed_headers(body))
        self.stats.validations += 1
        if status != 200:
            return False
        try:
            answer = json.loads(data)
            signature = bytes.fromhex(answer["signature"])
        except (ValueError, KeyError, TypeError):
            return False
        return answer.get("plain_token") == token and self.key.verify(
            signature, (event_ts + token).encode()
        )

    async def deliver(self, payload: dict[str, Any]) -> bool:
        """Deliver one event until it is ACKed (True) or the attempts run out (False),
        injecting this deliverer's faults around it."""
        body = json.dumps(payload, ensure_ascii=False).encode()
        self.stats.deliveries += 1
        f = self.faults
        # Forged and stale copies carry ids of their own: were one ever accepted, a handler
        # would see an event that was never genuinely delivered.
        if f.bad_signature and self._rng.random() < f.bad_signature:
            await self._forged(_variant(payload, "forged"))
        if f.stale_timestamp and self._rng.random() < f.stale_timestamp:
            await self._stale(_variant(payload, "stale"))
        if f.duplicate_storm and self._rng.random() < f.duplicate_storm:
            self.stats.storms += 1
            results = await asyncio.gather(
                *(self._until_acked(body) for _ in range(max(2, f.storm_size)))
            )
            ok = any(acked for acked, _ in results)
            sent = next((s for acked, s in results if acked), None)
        else:
            ok, sent = await self._until_acked(body)
        if ok:
            self.stats.acked += 1
            if f.replay and sent is not None and self._rng.random() < f.replay:
                await self._replay(body, sent)
        else:
            self.stats.gave_up += 1
        return ok

    async def deliver_many(
        self, payloads: Iterable[dict[str, Any]], *, concurrency: int = 8
    ) -> int:
        """Deliver all, ``concurrency`` at a time; returns how many were acknowledged."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for payload in payloads:
            queue.put_nowait(payload)
        acked = 0

        async def worker() -> None:
            nonlocal acked
            while not queue.empty():
                if await self.deliver(queue.get_nowait()):
                    acked += 1

        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
        return acked

    async def _until_acked(self, body: bytes) -> tuple[bool, dict[str, str] | None]:
        p = self.policy
        for attempt in range(p.max_attempts):
            if attempt:
                self.stats.retries += 1
                ceiling = min(p.backoff_cap, p.backoff_base * 2.0 ** (attempt - 1))
                await asyncio.sleep(self._rng.uniform(0.0, ceiling))
            headers = self.signed_headers(body)
            self.stats.attempts += 1
            status, data = await self.post(body, headers)
            if status == 200 and _is_ack(data):
                if self.faults.lost_ack and self._rng.random() < self.faults.lost_ack:
                    self.stats.lost_acks += 1  # as if the answer never reached the platform
                    continue
                return True, headers
            if 400 <= status < 500:
                self.stats.unexpected.append(f"genuine delivery refused with {status}: {data!r}")
        return False, None

    async def _forged(self, body: bytes) -> None:
        headers = self.signed_headers(body)
        sig = bytearray(bytes.fromhex(headers[SIGNATURE_HEADER]))
        sig[self._rng.randrange(32)] ^= 1 << self._rng.randrange(8)  # one bit of R flipped
        headers[SIGNATURE_HEADER] = sig.hex()
        self.stats.forged_sent += 1
        status, _ = await self.post(body, headers)
        if status == 401:
            self.stats.forged_refused += 1
        elif status == 200:
            self.stats.unexpected.append("a forged request was answered 200")

    async def _stale(self, body: bytes) -> None:
        headers = self.signed_headers(body, int(self._wall()) - _STALE_BY)
        self.stats.stale_sent += 1
        status, _ = await self.post(body, headers)
        if status == 401:
            self.stats.stale_refused += 1
        elif status == 200:
            self.stats.unexpected.append("a stale request was answered 200")

    async def _replay(self, body: bytes, headers: dict[str, str]) -> None:
        self.stats.replays_sent += 1
        status, data = await self.post(body, headers)
        if status == 200 and _is_ack(data):
            self.stats.replays_acked += 1


def _variant(payload: dict[str, Any], what: str) -> bytes:
    copy = dict(payload, id=f"{payload.get('id')}#{what}")
    return json.dumps(copy, ensure_ascii=False).encode()


def _is_ack(data: bytes) -> bool:
    try:
        return bool(json.loads(data) == _ACK)
    except ValueError:
        return False


class ChaosProxy:
    """A reverse proxy in front of the receiver that misbehaves on purpose.

    ``fail``: answer 502 without forwarding; ``lose_ack``: forward, then answer 502 (the
    receiver accepted the event, the platform thinks it failed); ``slow``: forward only after
    ``slow_delay`` seconds (set it above the deliverer's timeout: the platform gives up and
    retries while the receiver still gets the first copy). Probabilities per request.
    """

    def __init__(
        self,
        target: str,
        *,
        fail: float = 0.0,
        lose_ack: float = 0.0,
        slow: float = 0.0,
        slow_delay: float = 1.0,
        seed: int | None = None,
    ) -> None:
        self.target = target
        self.fail, self.lose_ack, self.slow, self.slow_delay = fail, lose_ack, slow, slow_delay
        self.counts: dict[str, int] = {"forwarded": 0, "failed": 0, "lost_ack": 0, "slow": 0}
        self._rng = random.Random(seed)
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self.url: str | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application(client_max_size=8 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        server: Any = site._server  # aiohttp exposes the bound socket (port 0) only here
        bound = server.sockets[0].getsockname()[1]
        self._runner = runner
        self._http = aiohttp.ClientSession()
        path = self.target.split("/", 3)[3] if self.target.count("/") >= 3 else ""
        self.url = f"http://{url_host(host)}:{bound}/{path}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()  # waits (bounded) for requests still in flight
        if self._http is not None:
            await self._http.close()

    async def _forward(self, request: web.Request, body: bytes) -> tuple[int, bytes]:
        if self._http is None or self._http.closed:
            return 502, b"proxy stopped"
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("host", "content-length", "transfer-encoding", "connection")
        }
        try:
            async with self._http.request(
                request.method, self.target, data=body, headers=headers
            ) as response:
                self.counts["forwarded"] += 1
                return response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError, RuntimeError):
            return 502, b"receiver unreachable"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        roll = self._rng.random()
        if roll < self.fail:
            self.counts["failed"] += 1
            return web.Response(status=502, text="bad gateway (injected)\n")
        roll -= self.fail
        if roll < self.slow:
            self.counts["slow"] += 1
            await asyncio.sleep(self.slow_delay)
            status, data = await self._forward(request, body)
            return web.Response(status=status, body=data, content_type="application/json")
        roll -= self.slow
        status, data = await self._forward(request, body)
        if roll < self.lose_ack:
            self.counts["lost_ack"] += 1
            return web.Response(status=502, text="bad gateway (answer lost, injected)\n")
        return web.Response(status=status, body=data, content_type="application/json")
