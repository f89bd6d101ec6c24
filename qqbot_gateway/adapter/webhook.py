"""The webhook transport's protocol core: signed HTTP callbacks in, the same events out.

QQ's HTTP callback protocol (official ``bot-docs`` ``event-emit.md`` / ``sign.md``, and the
official Go SDK ``botgo`` ``interaction/signature``):

* The key is Ed25519 whose 32-byte private-key **seed** is the bot secret repeated until it is
  at least 32 bytes long, then cut to 32 (:func:`derive_seed`; a secret shorter than 16 bytes
  needs more than one repetition).
* Every callback carries ``X-Signature-Ed25519`` (hex, 64 bytes, ``sig[63] & 224 == 0``) and
  ``X-Signature-Timestamp``; the signed message is the timestamp followed by the raw body.
* Validation (op 13, ``{"plain_token", "event_ts"}``) is answered with ``{"plain_token",
  "signature": hex(sign(event_ts + plain_token))}``. We answer it only when the request itself
  is signed, as botgo does: an unsigned op 13 would turn the receiver into a signing oracle
  (``event_ts="1725442341"`` and ``plain_token='{"op":0,...}'`` make exactly the message of a
  forged callback).
* Dispatches (op 0) are acknowledged with ``{"op": 12, "d": 0}``; ``d: 1`` (or a non-2xx
  status) makes the platform retry later.

:class:`WebhookIntake` applies that to one request at a time, without any HTTP framework: the
aiohttp receiver (``qqbot_gateway.telemetry.webhook``) or any other web framework hands it the
method, headers and body, and sends back the :class:`WebhookReply`. Accepted dispatches go
through a :class:`~.callbacks.CallbackAcceptor` (its event-id :class:`~.types.DedupeWindow`)
into the shard's bounded handler queue; nothing waits for a handler. With an
:class:`~.journal.IntakeJournal` (the session store on, the service's default) an accepted
dispatch is first made durable in the journal, with other concurrent callbacks in one group
commit, and only then queued and ACKed (:meth:`WebhookIntake.receive`); if the journal cannot
be written the answer is a 503 (``journal_failed``) so that the platform retries, and the event
id leaves the dedupe window again. Without a journal the ACK is immediate and
:meth:`WebhookIntake.handle` answers synchronously. Every answer is one
:class:`~.events.WebhookRequest` lifecycle event with its ``outcome``.

Ed25519 comes from ``cryptography`` (the ``webhook`` extra), imported only when a webhook key
is made: the WebSocket path does not need it.
"""

from __future__ import annotations

import binascii
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from . import events as ev
from .actions import Action, Deliver, Emit
from .protocol import SIGNATURE_HEADER, TIMESTAMP_HEADER, GatewayEvent, Op, WebhookKey, derive_seed
from .types import DEFAULT_MAX_BODY, DEFAULT_REPLAY_WINDOW, WebhookConfig, WebhookStatus

__all__ = [
    "ACCEPTED",
    "BAD_METHOD",
    "BAD_SIGNATURE",
    "DEFAULT_MAX_BODY",
    "DEFAULT_REPLAY_WINDOW",
    "DUPLICATE",
    "IGNORED",
    "JOURNAL_FAILED",
    "MALFORMED_JSON",
    "MALFORMED_PAYLOAD",
    "MISSING_SIGNATURE",
    "NOT_FOUND",
    "OUTCOMES",
    "QUEUE_FULL",
    "SIGNATURE_FAILURES",
    "SIGNATURE_HEADER",
    "SLOW_BODY",
    "STALE_TIMESTAMP",
    "TIMESTAMP_HEADER",
    "TOO_LARGE",
    "UNAVAILABLE",
    "VALIDATED",
    "DispatchJournal",
    "WebhookConfig",
    "WebhookIntake",
    "WebhookKey",
    "WebhookReply",
    "WebhookStatus",
    "derive_seed",
]

_log = logging.getLogger("qqbot_gateway.webhook")

_SIGNATURE_SIZE: Final = 64

# --- outcomes: the ``outcome`` label of qqbot_gateway_webhook_requests_total -----------------
ACCEPTED: Final = "accepted"  # op 0 queued for the handlers, ACKed
DUPLICATE: Final = "duplicate"  # op 0 seen already (a redelivery), ACKed and dropped
VALIDATED: Final = "validated"  # op 13 answered with our signature
IGNORED: Final = "ignored"  # a signed payload with an op we do not act on, ACKed
QUEUE_FULL: Final = "queue_full"  # handler queue full: 503, the platform retries later
UNAVAILABLE: Final = "unavailable"  # shutting down: 503, the platform retries later
JOURNAL_FAILED: Final = "journal_failed"  # the intake journal cannot be written: 503, retried
MISSING_SIGNATURE: Final = "missing_signature"  # no signature or timestamp header: 401
BAD_SIGNATURE: Final = "bad_signature"  # malformed or wrong signature / timestamp: 401
STALE_TIMESTAMP: Final = "stale_timestamp"  # outside the replay window: 401
MALFORMED_JSON: Final = "malformed_json"  # signed, but not a JSON object with an int op: 400
MALFORMED_PAYLOAD: Final = "malformed_payload"  # op 0 / 13 without the fields it needs: 400
BAD_METHOD: Final = "bad_method"  # not POST: 405
NOT_FOUND: Final = "not_found"  # not the callback path: 404
TOO_LARGE: Final = "too_large"  # body over the limit: 413
SLOW_BODY: Final = "slow_body"  # the body did not arrive within the receiver's deadline: 408

OUTCOMES: Final[tuple[str, ...]] = (
    ACCEPTED,
    DUPLICATE,
    VALIDATED,
    IGNORED,
    QUEUE_FULL,
    UNAVAILABLE,
    JOURNAL_FAILED,
    MISSING_SIGNATURE,
    BAD_SIGNATURE,
    STALE_TIMESTAMP,
    MALFORMED_JSON,
    MALFORMED_PAYLOAD,
    BAD_METHOD,
    NOT_FOUND,
    TOO_LARGE,
    SLOW_BODY,
)
#: Outcomes of requests that failed authentication (the signature-failure alert counts these).
SIGNATURE_FAILURES: Final = frozenset({MISSING_SIGNATURE, BAD_SIGNATURE, STALE_TIMESTAMP})

_ACK_OK: Final = b'{"op":12,"d":0}'
#: ``d: 1`` is botgo's "handling failed, retry"; with a 503 either signal makes QQ redeliver.
_ACK_RETRY: Final = b'{"op":12,"d":1}'
#: Refused requests are logged at most this often (with their counts).
_REFUSAL_LOG_EVERY: Final = 60.0
#: Seconds a 503 asks the platform to wait (a hint; QQ's retry schedule is not documented).
_RETRY_AFTER: Final = "1"


class DispatchJournal(Protocol):
    """Where accepted dispatches become durable before their ACK (:class:`~.journal.
    IntakeJournal`). Each awaitable resolves True once the record is durable and the event is
    in the handler queue, False if it could not be written; awaiting it never cancels the
    append (a request whose client went away does not undo it)."""

    def submit(self, event: GatewayEvent, body: bytes) -> Awaitable[bool]: ...

    def pending(self, event_id: str) -> Awaitable[bool] | None:
        """The append in flight for ``event_id``, if any."""


@dataclass(frozen=True, slots=True)
class _Pending:
    """A dispatch waiting for the journal: ``done`` resolves True once it is durable."""

    done: Awaitable[bool]
    outcome: str  # ACCEPTED, or DUPLICATE for a copy of a record still being written


@dataclass(frozen=True, slots=True)
class WebhookReply:
    status: int
    body: bytes
    outcome: str
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


class CallbackSink(Protocol):
    """What the intake hands an accepted callback to: a :class:`~.callbacks.CallbackAcceptor`
    (the webhook transport's), or a ``GatewaySession``, which keeps one over its own window."""

    @property
    def shard_id(self) -> int: ...

    def accept_callback(self, payload: Mapping[str, Any], now: float) -> list[Action]: ...


class WebhookIntake:
    """Applies the callback protocol to one request; see the module docstring.

    ``deliver`` puts an accepted event into the bounded handler queue; ``queue_full`` says
    whether it is at capacity (then the request gets a 503 and the platform retries later;
    the event id is not remembered, so the retry is accepted). ``handlers_alive`` feeds the
    status. ``clock`` is the event loop's (monotonic) clock, ``wall`` Unix time. With a
    ``journal`` (see the module docstring) answer requests with :meth:`receive`.
    """

    def __init__(
        self,
        key: WebhookKey,
        *,
        session: CallbackSink,
        bus: ev.EventBus,
        deliver: Callable[[GatewayEvent], None],
        queue_full: Callable[[], bool],
        handlers_alive: Callable[[], bool] = lambda: True,
        config: WebhookConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        journal: DispatchJournal | None = None,
    ) -> None:
        self.key = key
        self.journal = journal
        self.config = config or WebhookConfig()
        self.session = session
        self.shard = session.shard_id
        self._bus = bus
        self._deliver = deliver
        self._queue_full = queue_full
        self._handlers_alive = handlers_alive
        self._clock = clock
        self._wall = wall
        self._listening_since: float | None = None
        self._stopped: str | None = None
        self._validated_at: float | None = None
        self._last_valid_at: float | None = None
        self._closing = False
        self._warned_ops: set[int] = set()
        #: Refusals (outcome -> count) not yet logged; logged at most every _REFUSAL_LOG_EVERY.
        self._refused: dict[str, int] = {}
        self._refusals_logged_at: float | None = None
        #: Set by the receiver: whether its listening socket still serves.
        self.serving: Callable[[], bool] = lambda: True

    # --- receiver lifecycle --------------------------------------------------------------
    def listening(self, url: str) -> None:
        now = self._clock()
        self._listening_since, self._stopped = now, None
        self._bus.emit(ev.WebhookListening(shard=self.shard, monotonic=now, url=url))

    def stopped(self, reason: str, error: str | None = None) -> None:
        if self._listening_since is None and self._stopped is not None:
            return
        self._listening_since, self._stopped = None, reason
        self._bus.emit(
            ev.WebhookStopped(shard=self.shard, monotonic=self._clock(), reason=reason, error=error)
        )

    def close(self) -> None:
        """From now on dispatches get a 503 (the platform retries them, elsewhere or later)."""
        self._closing = True

    def status(self) -> WebhookStatus:
        return WebhookStatus(
            listening=self._listening_since is not None and self.serving(),
            listening_since=self._listening_since,
            stopped=self._stopped,
            handlers_alive=self._handlers_alive(),
            validated_at=self._validated_at,
            last_valid_at=self._last_valid_at,
            closing=self._closing,
        )

    # --- requests ------------------------------------------------------------------------
    def refuse(self, outcome: str, status: int, *, received_at: float, detail: str) -> WebhookReply:
        """An answer decided before the body was read (method, path, size)."""
        return self._answer(_error(status, outcome, detail), received_at, None, signed=False)

    async def receive(
        self,
        headers: Mapping[str, str],
        body: bytes,
        *,
        received_at: float | None = None,
    ) -> WebhookReply:
        """A POST to the callback path with this (case-insensitive) header mapping and body;
        with a journal, answered once the dispatch is durable (or could not be made so)."""
        start = self._clock() if received_at is None else received_at
        result = self._process(headers, body, start)
        if isinstance(result, WebhookReply):
            return result
        durable = await result.done
        if durable:
            return self._answer(WebhookReply(200, _ACK_OK, result.outcome), start, Op.DISPATCH)
        reply = _retry(503, JOURNAL_FAILED, "the intake journal cannot be written")
        return self._answer(reply, start, Op.DISPATCH)

    def handle(
        self,
        headers: Mapping[str, str],
        body: bytes,
        *,
        received_at: float | None = None,
    ) -> WebhookReply:
        """:meth:`receive` for an intake without a journal: the answer is immediate."""
        if self.journal is not None:
            raise RuntimeError("an intake with a journal answers through receive()")
        start = self._clock() if received_at is None else received_at
        result = self._process(headers, body, start)
        assert isinstance(result, WebhookReply)  # only the journal defers an answer
        return result

    def _process(
        self, headers: Mapping[str, str], body: bytes, start: float
    ) -> WebhookReply | _Pending:
        signature = headers.get(SIGNATURE_HEADER)
        timestamp = headers.get(TIMESTAMP_HEADER)
        if not signature or not timestamp:
            missing = SIGNATURE_HEADER if not signature else TIMESTAMP_HEADER
            reply = _error(401, MISSING_SIGNATURE, f"missing {missing}")
            return self._answer(reply, start, None, signed=False)
        refused = self._authenticate(signature, timestamp, body)
        if refused is not None:
            return self._answer(refused, start, None, signed=False)
        self._last_valid_at = self._clock()
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            return self._answer(_error(400, MALFORMED_JSON, "body is not JSON"), start, None)
        op = payload.get("op") if isinstance(payload, dict) else None
        if not isinstance(op, int) or isinstance(op, bool):
            reply = _error(400, MALFORMED_JSON, "body is not a JSON object with an integer op")
            return self._answer(reply, start, None)
        if op == Op.CALLBACK_VALIDATION:
            return self._answer(self._validate(payload), start, op)
        if op != Op.DISPATCH:
            if op not in self._warned_ops:
                self._warned_ops.add(op)
                _log.warning("webhook: ignoring a signed payload with op %d (ACKed)", op)
            return self._answer(WebhookReply(200, _ACK_OK, IGNORED), start, op)
        result = self._dispatch(payload, body)
        if isinstance(result, _Pending):
            return result
        return self._answer(result, start, op)

    def _authenticate(self, signature: str, timestamp: str, body: bytes) -> WebhookReply | None:
        try:
            sig = binascii.unhexlify(signature.strip())
        except (binascii.Error, ValueError):
            return _error(401, BAD_SIGNATURE, "signature is not hex")
        if len(sig) != _SIGNATURE_SIZE or sig[63] & 224 != 0:
            return _error(401, BAD_SIGNATURE, "signature is not a 64-byte Ed25519 signature")
        stamp = timestamp.strip()
        if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
            return _error(401, BAD_SIGNATURE, "timestamp is not Unix seconds")
        # The cheap check first: a stale request costs no signature verification.
        skew = self._wall() - int(stamp)
        if abs(skew) > self.config.replay_window:
            return _error(
                401,
                STALE_TIMESTAMP,
                f"timestamp is {skew:+.0f}s from now (window {self.config.replay_window:g}s)",
            )
        if not self.key.verify(sig, timestamp.encode() + body):
            return _error(401, BAD_SIGNATURE, "signature does not verify")
        return None

    def _validate(self, payload: Mapping[str, Any]) -> WebhookReply:
        d = payload.get("d")
        plain = d.get("plain_token") if isinstance(d, dict) else None
        event_ts = d.get("event_ts") if isinstance(d, dict) else None
        if isinstance(event_ts, int) and not isinstance(event_ts, bool):
            event_ts = str(event_ts)
        if not isinstance(plain, str) or not plain or not isinstance(event_ts, str):
            return _error(400, MALFORMED_PAYLOAD, "op 13 without plain_token and event_ts")
        answer = self.key.validation_response(plain, event_ts)
        first = self._validated_at is None
        self._validated_at = self._clock()
        if first:
            _log.info("webhook: callback URL validated by the platform (op 13)")
        return WebhookReply(200, json.dumps(answer).encode(), VALIDATED)

    def _dispatch(self, payload: Mapping[str, Any], body: bytes) -> WebhookReply | _Pending:
        if self._closing:
            return _retry(503, UNAVAILABLE, "shutting down")
        if self._queue_full():
            return _retry(503, QUEUE_FULL, "handler queue full")
        actions = self.session.accept_callback(payload, self._clock())
        journal = self.journal
        duplicate: ev.DuplicateDropped | None = None
        pending: _Pending | None = None
        delivered = False
        for action in actions:
            if isinstance(action, Deliver):
                delivered = True
                if journal is None:
                    self._deliver(action.event)
                else:  # queued and ACKed once durable (the journal's group commit)
                    pending = _Pending(journal.submit(action.event, body), ACCEPTED)
            elif isinstance(action, Emit):
                self._bus.emit(action.event)
                if isinstance(action.event, ev.DuplicateDropped):
                    duplicate = action.event
        if pending is not None:
            return pending
        if delivered:
            return WebhookReply(200, _ACK_OK, ACCEPTED)
        if duplicate is not None:
            # A copy of a record still being written gets the answer the original gets: an ACK
            # before the original is durable could lose the event if its append then fails.
            in_flight = None
            if journal is not None and duplicate.event_id is not None:
                in_flight = journal.pending(duplicate.event_id)
            if in_flight is not None:
                return _Pending(in_flight, DUPLICATE)
            return WebhookReply(200, _ACK_OK, DUPLICATE)
        return _error(400, MALFORMED_PAYLOAD, "op 0 without a string event type 't'")

    def _answer(
        self, reply: WebhookReply, start: float, op: int | None, *, signed: bool = True
    ) -> WebhookReply:
        now = self._clock()
        if reply.status in (400, 401):
            self._log_refusal(reply.outcome, now)
        self._bus.emit(
            ev.WebhookRequest(
                shard=self.shard,
                monotonic=now,
                outcome=reply.outcome,
                status=reply.status,
                op=op,
                duration=max(0.0, now - start),
                signed=signed,
                wall=self._wall(),
            )
        )
        return reply

    def _log_refusal(self, outcome: str, now: float) -> None:
        """One WARNING line at once, then at most one per interval with the counts: a rotated
        secret or a scan is visible in the logs too, without a line per request."""
        self._refused[outcome] = self._refused.get(outcome, 0) + 1
        last = self._refusals_logged_at
        if last is not None and now - last < _REFUSAL_LOG_EVERY:
            return
        counts = ", ".join(f"{n} {o}" for o, n in sorted(self._refused.items()))
        since = "" if last is None else f" in the last {now - last:.0f}s"
        _log.warning(
            "webhook: refused %s%s (a rotated secret, a wrong clock, or forged requests: "
            "see qqbot_gateway_webhook_requests_total)",
            counts,
            since,
        )
        self._refused.clear()
        self._refusals_logged_at = now


def _error(status: int, outcome: str, detail: str) -> WebhookReply:
    body = json.dumps({"error": outcome, "detail": detail}).encode()
    return WebhookReply(status, body, outcome)


def _retry(status: int, outcome: str, detail: str) -> WebhookReply:
    _log.debug("webhook: answering %d (%s): %s", status, outcome, detail)
    return WebhookReply(status, _ACK_RETRY, outcome, headers=(("Retry-After", _RETRY_AFTER),))
