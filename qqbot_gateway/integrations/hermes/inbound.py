"""Inbound: a QQ message dispatch in the terms hermes uses (chat, user, chat type)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from qqbot_gateway.adapter.protocol import GROUP_MEMBER_EVENT_TYPES, GatewayEvent

from .settings import _TRUE

__all__ = ["MESSAGE_KINDS", "NOT_MAPPED", "Inbound", "env_true", "inbound", "matches"]

#: Dispatch types that carry a user message, and where each one is answered.
#: ``GROUP_MESSAGE_CREATE`` (every group message, for bots QQ granted it; since the platform
#: update of 2026-05-27 some @-messages arrive as this type too) is handled exactly like a group
#: @-message: the same chat id, the same ``group_policy`` and allow-list, a passive reply.
MESSAGE_KINDS: Final[dict[str, str]] = {
    "C2C_MESSAGE_CREATE": "c2c",
    "GROUP_AT_MESSAGE_CREATE": "group",
    "GROUP_MESSAGE_CREATE": "group",
    "AT_MESSAGE_CREATE": "channel",
    "MESSAGE_CREATE": "channel",
    "DIRECT_MESSAGE_CREATE": "dms",
}
#: Events hermes has no place for (hermes 0.19 has no member-join/leave event): not handed to
#: hermes; they are still dispatched, counted in ``events_dispatched_total{type}`` and reach any
#: library handler registered for them.
NOT_MAPPED: Final = GROUP_MEMBER_EVENT_TYPES
_MENTION = re.compile(r"^\s*(?:<@!?\d+>\s*)+")
_GROUP_MENTION = re.compile(r"^\s*@\S+\s+")


@dataclass(frozen=True, slots=True)
class Inbound:
    """A user message, in the terms hermes uses (chat, user, chat type)."""

    kind: str  # c2c, group, channel or dms: where the reply goes
    chat_id: str
    user_id: str
    user_name: str | None
    chat_type: str  # "dm" or "group", as hermes's built-in QQ adapter reports them
    guild_id: str | None
    text: str
    msg_id: str
    timestamp: datetime
    attachments: tuple[dict[str, Any], ...]
    #: Text of the message this one quotes (QQ's ``message_type`` 103, ``msg_elements``).
    quote: str = ""


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def inbound(event: GatewayEvent) -> Inbound | None:
    """Map a message dispatch to :class:`Inbound`; None for other events or unusable data."""
    kind = MESSAGE_KINDS.get(event.type)
    d = event.data
    if kind is None or not isinstance(d, dict):
        return None
    msg_id = _str(d.get("id"))
    raw_author = d.get("author")
    author: dict[str, Any] = raw_author if isinstance(raw_author, dict) else {}
    raw_member = d.get("member")
    member: dict[str, Any] = raw_member if isinstance(raw_member, dict) else {}
    raw_content = d.get("content")
    content = raw_content if isinstance(raw_content, str) else ""
    guild_id = _str(d.get("guild_id"))
    user_name = None
    if kind == "c2c":
        chat_id = _str(author.get("user_openid")) or _str(author.get("id"))
        user_id, chat_type = chat_id, "dm"
    elif kind == "group":
        chat_id = _str(d.get("group_openid"))
        user_id = _str(author.get("member_openid")) or _str(author.get("id"))
        chat_type = "group"
        content = _GROUP_MENTION.sub("", content) if content.lstrip().startswith("@") else content
        content = _MENTION.sub("", content)  # <@id>, as GROUP_MESSAGE_CREATE may carry it
    elif kind == "channel":
        chat_id = _str(d.get("channel_id"))
        user_id = _str(author.get("id"))
        user_name = _str(member.get("nick")) or _str(author.get("username"))
        chat_type = "group"
        content = _MENTION.sub("", content)
    else:  # dms: a guild direct-message session is addressed by its guild id
        chat_id = guild_id
        user_id = _str(author.get("id"))
        user_name = _str(author.get("username"))
        chat_type = "dm"
    if chat_id is None or user_id is None or msg_id is None:
        return None
    raw_attachments = d.get("attachments")
    listed = list(raw_attachments) if isinstance(raw_attachments, list) else []
    quoted: list[str] = []
    elements = d.get("msg_elements")
    if str(d.get("message_type")) == "103" and isinstance(elements, list):
        for element in elements:
            if not isinstance(element, dict):
                continue
            said = element.get("content")
            if isinstance(said, str) and said.strip():
                quoted.append(said.strip())
            if isinstance(element.get("attachments"), list):
                listed += element["attachments"]  # a quoted image or voice counts too
    attachments = tuple(a for a in listed if isinstance(a, dict))
    return Inbound(
        kind=kind,
        chat_id=chat_id,
        user_id=user_id,
        user_name=user_name,
        chat_type=chat_type,
        guild_id=guild_id,
        text=content.strip(),
        msg_id=msg_id,
        timestamp=_timestamp(d.get("timestamp")),
        attachments=attachments,
        quote=" ".join(quoted),
    )


def _timestamp(raw: Any) -> datetime:
    if isinstance(raw, str) and raw:
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(raw)
        with contextlib.suppress(ValueError):
            return datetime.fromtimestamp(int(raw) / 1000, tz=UTC)
    return datetime.now(tz=UTC)


def matches(entries: tuple[str, ...], value: str) -> bool:
    value = value.strip().lower()
    return any(e.lower() in ("*", value) for e in entries)


def env_true(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() in _TRUE
