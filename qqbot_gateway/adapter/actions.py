"""The session's answers: what a driver does when the sans-I/O core (:mod:`.session`) says so.

* :class:`Send`: write this payload;
* :class:`Deliver`: hand this dispatch to the user's handlers;
* :class:`Close`: close the connection with this code and reason (``abort`` means the link is
  believed dead: tear it down without waiting for the peer);
* :class:`Emit`: publish this lifecycle event;
* :class:`SendPing`: send a WebSocket ping; :class:`TuneSocket`: set ``TCP_USER_TIMEOUT``.

:data:`Action` is that closed union; a driver matches it exhaustively (``assert_never``).
:class:`Outcome` is what a connection's end means for the supervisor. Pure: no I/O, no state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import events as ev
from .protocol import CloseAction, GatewayEvent

__all__ = [
    "Action",
    "Close",
    "Deliver",
    "Emit",
    "LocalAction",
    "Outcome",
    "Send",
    "SendPing",
    "TuneSocket",
]


@dataclass(frozen=True, slots=True)
class Send:
    payload: dict[str, Any]


# Deliver and Emit are made once per dispatched event: plain slots classes (a frozen
# dataclass's __init__ costs several times more); nobody keeps or mutates an action.
@dataclass(slots=True)
class Deliver:
    event: GatewayEvent


@dataclass(frozen=True, slots=True)
class Close:
    reason: str
    code: int
    abort: bool
    detail: str


@dataclass(slots=True)
class Emit:
    event: ev.LifecycleEvent


@dataclass(frozen=True, slots=True)
class SendPing:
    """Send a WebSocket ping with this payload; report its pong with ``receive_pong``."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class TuneSocket:
    """Set ``TCP_USER_TIMEOUT`` on the connection's socket (seconds; None leaves it)."""

    tcp_user_timeout: float | None


#: The actions a driver can run without awaiting anything (no frame to write).
LocalAction = TuneSocket | Deliver | Close | Emit
#: Every action: a closed union; a driver matches it exhaustively (``assert_never``).
Action = Send | SendPing | LocalAction


@dataclass(frozen=True, slots=True)
class Outcome:
    """What ended a connection, and what the supervisor should do about it."""

    reason: str
    close_code: int | None
    detail: str
    action: CloseAction
    #: True if the next connection will try to resume.
    resumable: bool
    #: The connection reached READY/RESUMED.
    was_ready: bool
    fatal_message: str | None = None
