"""The QQ Bot gateway protocol as pure data: opcodes, intents, close codes, reasons.

Nothing here does I/O. The facts come from the official QQ Bot documentation
(https://bot.q.qq.com/wiki/develop/api-v2/) and from the production gateway's observed
behaviour; where the two disagree, the observed behaviour wins.
"""

from __future__ import annotations

import enum
import importlib.util
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Final, TypedDict

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = [
    "DEFAULT_API_BASE",
    "DEFAULT_TOKEN_URL",
    "DISCONNECT_REASONS",
    "EVENT_INTENTS",
    "GROUP_MEMBER_EVENT_TYPES",
    "MESSAGE_EVENT_TYPES",
    "NEEDS_CRYPTOGRAPHY",
    "SANDBOX_API_BASE",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "CloseAction",
    "ClosePolicy",
    "GatewayEvent",
    "GroupAuthor",
    "GroupMemberData",
    "GroupMessageData",
    "Intents",
    "Op",
    "WebhookKey",
    "classify_close",
    "close_reason",
    "derive_seed",
    "missing_cryptography",
    "new_event",
    "parse_intents",
    "url_host",
]

DEFAULT_API_BASE: Final = "https://api.sgroup.qq.com"
SANDBOX_API_BASE: Final = "https://sandbox.api.sgroup.qq.com"
DEFAULT_TOKEN_URL: Final = "https://bots.qq.com/app/getAppAccessToken"


class Op(enum.IntEnum):
    """Gateway opcodes (``op`` field of every frame)."""

    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    RESUME = 6
    RECONNECT = 7
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11
    HTTP_CALLBACK_ACK = 12
    CALLBACK_VALIDATION = 13


class Intents(enum.IntFlag):
    """Event subscription bits sent in Identify."""

    GUILDS = 1 << 0
    GUILD_MEMBERS = 1 << 1
    GUILD_MESSAGES = 1 << 9
    GUILD_MESSAGE_REACTIONS = 1 << 10
    DIRECT_MESSAGE = 1 << 12
    OPEN_FORUMS_EVENT = 1 << 18
    AUDIO_OR_LIVE_CHANNEL_MEMBER = 1 << 19
    GROUP_AND_C2C_EVENT = 1 << 25
    INTERACTION = 1 << 26
    MESSAGE_AUDIT = 1 << 27
    FORUMS_EVENT = 1 << 28
    AUDIO_ACTION = 1 << 29
    PUBLIC_GUILD_MESSAGES = 1 << 30

    @classmethod
    def public_default(cls) -> Intents:
        """What a public bot may subscribe to without special grants."""
        return cls.PUBLIC_GUILD_MESSAGES | cls.GROUP_AND_C2C_EVENT | cls.DIRECT_MESSAGE | cls.GUILDS


_ALL_INTENT_BITS: Final = sum(int(i) for i in Intents)


def parse_intents(value: int | str | Iterable[str]) -> int:
    """Parse intents from an int, a decimal/hex string, or names joined by ``|``, ``,`` or spaces.

    Raises ``ValueError`` with a message naming the bad part.
    """
    if isinstance(value, bool):
        raise ValueError("intents must be a number or intent names, not a boolean")
    if isinstance(value, int):
        bits = value
    else:
        parts: list[str]
        if isinstance(value, str):
            text = value.strip()
            if not text:
                raise ValueError("intents is empty")
            try:
                bits = int(text, 0)
            except ValueError:
                parts = [p for p in text.replace("|", " ").replace(",", " ").split() if p]
            else:
                return _check_bits(bits)
        else:
            parts = [str(p) for p in value]
            if not parts:
                raise ValueError("intents is empty")
        bits = 0
        for part in parts:
            name = part.strip().upper()
            try:
                bits |= int(Intents[name])
            except KeyError:
                known = ", ".join(i.name or "" for i in Intents)
                raise ValueError(f"unknown intent {part!r} (known: {known})") from None
    return _check_bits(bits)


def _check_bits(bits: int) -> int:
    if bits <= 0:
        raise ValueError(f"intents must be a positive bit mask, got {bits}")
    unknown = bits & ~_ALL_INTENT_BITS
    if unknown:
        raise ValueError(f"intents contain unknown bits {unknown:#x}")
    return bits


class CloseAction(enum.Enum):
    """What the supervisor does after the server closed the connection with a code."""

    RESUME = "resume"
    IDENTIFY = "identify"
    REFRESH_TOKEN = "refresh_token"  # refresh the access token, then identify
    WAIT_THEN_RESUME = "wait_then_resume"  # 4008: sending too fast
    SLOW_IDENTIFY = "slow_identify"  # 4001/4002: our bug; identify but never quickly
    FATAL = "fatal"


@dataclass(frozen=True, slots=True)
class ClosePolicy:
    code: int | None
    action: CloseAction
    meaning: str


_CLOSE_TABLE: Final[dict[int, tuple[CloseAction, str]]] = {
    1000: (CloseAction.RESUME, "normal closure"),
    1001: (CloseAction.RESUME, "going away"),
    1006: (CloseAction.RESUME, "abnormal closure"),
    1011: (CloseAction.RESUME, "server error"),
    4001: (CloseAction.SLOW_IDENTIFY, "invalid opcode"),
    4002: (CloseAction.SLOW_IDENTIFY, "invalid payload"),
    4004: (CloseAction.REFRESH_TOKEN, "authentication failed"),
    4006: (CloseAction.IDENTIFY, "invalid session id"),
    4007: (CloseAction.IDENTIFY, "invalid seq"),
    4008: (CloseAction.WAIT_THEN_RESUME, "sending payloads too fast"),
    4009: (CloseAction.RESUME, "connection expired"),
    4010: (CloseAction.FATAL, "invalid shard"),
    4011: (CloseAction.FATAL, "too many guilds for this shard count"),
    4012: (CloseAction.FATAL, "invalid gateway version"),
    4013: (CloseAction.FATAL, "invalid intent"),
    4014: (CloseAction.FATAL, "intent not permitted (disallowed intents)"),
    4914: (CloseAction.FATAL, "bot delisted: only the sandbox may connect"),
    4915: (CloseAction.FATAL, "bot banned"),
    4924: (CloseAction.FATAL, "session ip forbidden"),
}
for _code in range(4900, 4914):
    _CLOSE_TABLE.setdefault(_code, (CloseAction.IDENTIFY, "internal server error"))
_CLOSE_TABLE[4902] = (CloseAction.IDENTIFY, "session reset by resume")
_CLOSE_TABLE[4903] = (CloseAction.IDENTIFY, "create session error")

#: Close codes that get their own ``server_close:<code>`` reason label.
KNOWN_CLOSE_CODES: Final = tuple(sorted(_CLOSE_TABLE))


def classify_close(code: int | None) -> ClosePolicy:
    """The action for a close code. ``None`` (the link broke without a close frame) resumes."""
    if code is None:
        return ClosePolicy(None, CloseAction.RESUME, "connection lost without a close frame")
    try:
        action, meaning = _CLOSE_TABLE[code]
    except KeyError:
        # The official table ends with "else: identify".
        return ClosePolicy(code, CloseAction.IDENTIFY, "unknown close code")
    return ClosePolicy(code, action, meaning)


# --- Disconnect reasons -------------------------------------------------------------------
# One fixed list: every forced close and every lost connection carries exactly one of these,
# in logs, in the ``reason`` label of ``reconnects_total`` and in the health report.
ACK_TIMEOUT: Final = "ack_timeout"  # a heartbeat unanswered past its ACK deadline
IDLE_TIMEOUT: Final = "idle_timeout"  # no frame at all for the idle deadline
PING_TIMEOUT: Final = "ping_timeout"  # quiet link: no frame within the pong deadline
HELLO_TIMEOUT: Final = "hello_timeout"  # connected, but no op 10 in time
HANDSHAKE_TIMEOUT: Final = "handshake_timeout"  # Identify/Resume sent, no READY/RESUMED in time
RECONNECT_REQUESTED: Final = "reconnect_requested"  # op 7
INVALID_SESSION: Final = "invalid_session"  # op 9
NETWORK_ERROR: Final = "network_error"  # transport broke, EOF without close frame, send failed
CONNECT_ERROR: Final = "connect_error"  # could not open the WebSocket (DNS, refused, TLS, 5xx)
GATEWAY_URL_ERROR: Final = "gateway_url_error"  # GET /gateway/bot failed
TOKEN_ERROR: Final = "token_error"  # no access token could be fetched
PROTOCOL_ERROR: Final = "protocol_error"  # a frame we cannot accept (bad Hello, oversize)
HANDLER_BACKPRESSURE: Final = "handler_backpressure"  # handler queue full: stop reading, resume
SERVER_CLOSE_OTHER: Final = "server_close:other"  # a close code not in the table

DISCONNECT_REASONS: Final[tuple[str, ...]] = (
    ACK_TIMEOUT,
    IDLE_TIMEOUT,
    PING_TIMEOUT,
    HELLO_TIMEOUT,
    HANDSHAKE_TIMEOUT,
    RECONNECT_REQUESTED,
    INVALID_SESSION,
    NETWORK_ERROR,
    CONNECT_ERROR,
    GATEWAY_URL_ERROR,
    TOKEN_ERROR,
    PROTOCOL_ERROR,
    HANDLER_BACKPRESSURE,
    *(f"server_close:{code}" for code in KNOWN_CLOSE_CODES),
    SERVER_CLOSE_OTHER,
)

#: The reasons that mean "the link was a zombie": detected by our own liveness layers.
ZOMBIE_REASONS: Final = frozenset({ACK_TIMEOUT, IDLE_TIMEOUT, PING_TIMEOUT})


def close_reason(code: int | None) -> str:
    """The reason label for a close received from the server."""
    if code is None:
        return NETWORK_ERROR
    if code in _CLOSE_TABLE:
        return f"server_close:{code}"
    return SERVER_CLOSE_OTHER


def frame(op: Op | int, d: Any = None, **extra: Any) -> dict[str, Any]:
    """Build an outgoing payload."""
    payload: dict[str, Any] = {"op": int(op), "d": d}
    payload.update(extra)
    return payload


@dataclass(frozen=True, slots=True)
class GatewayEvent:
    """A dispatch (op 0) as handed to user handlers.

    ``data`` is the frame's ``d`` as the server sent it (unknown event types pass through
    untouched); ``event_id`` is the frame's ``id``, used as ``event_id`` in some passive replies.
    """

    type: str
    data: Any
    seq: int | None
    event_id: str | None
    shard: int
    session_id: str | None
    replayed: bool = False


class _EventBuilder:
    """``GatewayEvent``'s slots, not frozen: see :func:`new_event`."""

    __slots__ = GatewayEvent.__slots__


def new_event(
    type: str,
    data: Any,
    seq: int | None,
    event_id: str | None,
    shard: int,
    session_id: str | None,
    replayed: bool,
) -> GatewayEvent:
    """``GatewayEvent(type, data, seq, event_id, shard, session_id, replayed)``, a third of
    the cost: built once per dispatched event, on the reader's hot path.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__`` (about
    100 ns a field, 0.8 us an event). This fills an object with the very same slots by plain
    attribute stores and then makes it a ``GatewayEvent`` (``__class__`` assignment, which
    CPython allows between classes of identical layout): the result is an ordinary
    ``GatewayEvent``, frozen, equal to the one the constructor builds.
    """
    event: Any = _EventBuilder.__new__(_EventBuilder)
    event.type = type
    event.data = data
    event.seq = seq
    event.event_id = event_id
    event.shard = shard
    event.session_id = session_id
    event.replayed = replayed
    event.__class__ = GatewayEvent
    return event  # type: ignore[no-any-return]


#: What builds a ``GatewayEvent`` from its fields in order (``new_event``, or the class).
EventBuilder = Callable[[str, Any, int | None, str | None, int, str | None, bool], GatewayEvent]


def verified_builder(build: EventBuilder) -> EventBuilder:
    """``build`` if it makes exactly what the constructor makes (the class, frozen, every field
    of ``GatewayEvent`` the very object passed in), else the constructor itself: where
    ``__class__`` assignment is not allowed (another interpreter), ``new_event`` falls back."""
    args: tuple[Any, ...] = ("T", {"k": 1}, 1, "id", 0, "s", True)
    names = [f.name for f in fields(GatewayEvent)]
    try:
        made, reference = build(*args), GatewayEvent(*args)
        ok = (
            type(made) is GatewayEvent
            and len(names) == len(args)
            and all(getattr(made, n) is getattr(reference, n) for n in names)
            and made == reference
        )
    except (TypeError, AttributeError):
        ok = False
    return build if ok else GatewayEvent


def _check_new_event() -> None:
    global new_event
    if verified_builder(new_event) is not new_event:
        new_event = GatewayEvent


_check_new_event()


#: The message events a bot exists to handle (single chat, group @, group without @, guild @,
#: guild DM): telemetry creates the ``type`` children of ``handler_errors_total`` for these at
#: zero from the start.
MESSAGE_EVENT_TYPES: Final = (
    "C2C_MESSAGE_CREATE",
    "GROUP_AT_MESSAGE_CREATE",
    "GROUP_MESSAGE_CREATE",
    "AT_MESSAGE_CREATE",
    "DIRECT_MESSAGE_CREATE",
)

#: The member events of QQ groups (a member joined, a member left or was removed).
GROUP_MEMBER_EVENT_TYPES: Final = ("GROUP_MEMBER_ADD", "GROUP_MEMBER_REMOVE")

#: The intent that subscribes to each event type a bot exists to handle. QQ's documentation gives
#: ``1<<25`` (``GROUP_AND_C2C_EVENT``) for every group and C2C event it documents; for
#: ``GROUP_MESSAGE_CREATE`` (every message of a group, not only @-messages: for bots QQ granted
#: it, platform update of 2026-05-27) and the member events it gives no bit of its own, and the
#: SDKs that handle them subscribe with the same ``GROUP_AND_C2C_EVENT``. Event types not listed
#: here are not refused: every dispatch reaches the handlers registered for its type (or
#: ``"*"``) unchanged, and telemetry counts it by type.
EVENT_INTENTS: Final[dict[str, Intents]] = {
    "C2C_MESSAGE_CREATE": Intents.GROUP_AND_C2C_EVENT,
    "GROUP_AT_MESSAGE_CREATE": Intents.GROUP_AND_C2C_EVENT,
    "GROUP_MESSAGE_CREATE": Intents.GROUP_AND_C2C_EVENT,
    "GROUP_MEMBER_ADD": Intents.GROUP_AND_C2C_EVENT,
    "GROUP_MEMBER_REMOVE": Intents.GROUP_AND_C2C_EVENT,
    "GROUP_ADD_ROBOT": Intents.GROUP_AND_C2C_EVENT,
    "GROUP_DEL_ROBOT": Intents.GROUP_AND_C2C_EVENT,
    "FRIEND_ADD": Intents.GROUP_AND_C2C_EVENT,
    "FRIEND_DEL": Intents.GROUP_AND_C2C_EVENT,
    "AT_MESSAGE_CREATE": Intents.PUBLIC_GUILD_MESSAGES,
    "MESSAGE_CREATE": Intents.GUILD_MESSAGES,
    "DIRECT_MESSAGE_CREATE": Intents.DIRECT_MESSAGE,
    "INTERACTION_CREATE": Intents.INTERACTION,
}


class GroupAuthor(TypedDict, total=False):
    """``author`` of a group message: the sender's openid in this group."""

    member_openid: str
    union_openid: str
    id: str


class GroupMessageData(TypedDict, total=False):
    """``d`` of ``GROUP_AT_MESSAGE_CREATE`` and ``GROUP_MESSAGE_CREATE`` (the same fields): ``id``
    answers it passively (``msg_id``), ``group_openid`` is where the reply goes."""

    id: str
    author: GroupAuthor
    content: str
    timestamp: str  # RFC 3339
    group_openid: str
    group_id: str
    attachments: list[dict[str, Any]]
    message_type: int
    message_scene: dict[str, Any]
    msg_elements: list[dict[str, Any]]


class GroupMemberData(TypedDict, total=False):
    """``d`` of ``GROUP_MEMBER_ADD`` / ``GROUP_MEMBER_REMOVE``. QQ's public documentation has no
    field table for these; the shape is that of its documented group events
    (``GROUP_ADD_ROBOT``: ``group_openid``, ``op_member_openid``, ``timestamp``) plus the member
    concerned (``member_openid``). A handler must treat every field as optional."""

    group_openid: str
    member_openid: str
    op_member_openid: str
    timestamp: int


# --- webhook signatures (HTTP callbacks; see adapter.webhook) ------------------------------

SIGNATURE_HEADER: Final = "X-Signature-Ed25519"
TIMESTAMP_HEADER: Final = "X-Signature-Timestamp"
_SEED_SIZE: Final = 32


def derive_seed(secret: str | bytes) -> bytes:
    """The Ed25519 seed: the secret repeated until >= 32 bytes, cut to 32 (UTF-8 bytes)."""
    raw = secret.encode() if isinstance(secret, str) else bytes(secret)
    if not raw:
        raise ValueError("the bot secret is empty")
    repeats = -(-_SEED_SIZE // len(raw))  # ceil: 12 bytes need 3 copies, 16 need 2
    return (raw * repeats)[:_SEED_SIZE]


def url_host(host: str) -> str:
    """``host`` as written in a URL: an IPv6 address in brackets (``[::1]``), else unchanged."""
    return f"[{host}]" if ":" in host else host


#: The one line for a webhook transport chosen without ``cryptography`` (the ``webhook`` extra).
NEEDS_CRYPTOGRAPHY: Final = (
    "the webhook transport needs Ed25519 from the 'cryptography' package: "
    "pip install 'qqbot-gateway[webhook]'"
)


def missing_cryptography() -> str | None:
    """:data:`NEEDS_CRYPTOGRAPHY` when ``cryptography`` is not installed, else None (the check
    imports nothing, so it is cheap and safe before any connection is opened)."""
    return NEEDS_CRYPTOGRAPHY if importlib.util.find_spec("cryptography") is None else None


class WebhookKey:
    """The bot's Ed25519 key pair, derived from the bot secret. Never shows the secret."""

    __slots__ = ("_private", "_public", "public_bytes")

    def __init__(self, secret: str | bytes) -> None:
        try:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
            from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
        except ImportError:  # pragma: no cover - depends on the installation
            raise RuntimeError(NEEDS_CRYPTOGRAPHY) from None
        self._private: Ed25519PrivateKey = Ed25519PrivateKey.from_private_bytes(derive_seed(secret))
        self._public: Ed25519PublicKey = self._private.public_key()
        self.public_bytes = self._public.public_bytes(Encoding.Raw, PublicFormat.Raw)

    def __repr__(self) -> str:
        return f"WebhookKey(public={self.public_bytes.hex()})"

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    def sign_hex(self, timestamp: str, body: bytes) -> str:
        """The ``X-Signature-Ed25519`` value for ``timestamp`` + ``body``."""
        return self.sign(timestamp.encode() + body).hex()

    def verify(self, signature: bytes, message: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature

        try:
            self._public.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def validation_response(self, plain_token: str, event_ts: str) -> dict[str, str]:
        """The answer to an op 13 validation request."""
        signature = self.sign((event_ts + plain_token).encode()).hex()
        return {"plain_token": plain_token, "signature": signature}
