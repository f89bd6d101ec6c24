"""Realistic dispatch payloads, shaped like the ones QQ sends (values are made up)."""

from __future__ import annotations

import random
import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

from qqbot_gateway.adapter.protocol import Intents

__all__ = [
    "EVENT_INTENTS",
    "GENERATED_TYPES",
    "ON_REQUEST_TYPES",
    "UNKNOWN_EVENT_TYPE",
    "EventFactory",
]

#: An event type no client knows: proves that unknown types pass through.
UNKNOWN_EVENT_TYPE: Final = "SIMULATOR_UNKNOWN_EVENT"

#: The intent that subscribes to each generated type.
EVENT_INTENTS: Final[dict[str, int]] = {
    "C2C_MESSAGE_CREATE": int(Intents.GROUP_AND_C2C_EVENT),
    "GROUP_AT_MESSAGE_CREATE": int(Intents.GROUP_AND_C2C_EVENT),
    "AT_MESSAGE_CREATE": int(Intents.PUBLIC_GUILD_MESSAGES),
    "DIRECT_MESSAGE_CREATE": int(Intents.DIRECT_MESSAGE),
}

GENERATED_TYPES: Final = (*EVENT_INTENTS, UNKNOWN_EVENT_TYPE)

#: Types with realistic payloads that the background generator never picks (so runs that count
#: generated kinds stay as they were): emitted on request, ``emit_event(type)`` or
#: ``POST /_sim/events {"type": T}``. ``GROUP_MESSAGE_CREATE`` is a group message without an @
#: (QQ sends it to bots granted every group message); the member events carry the group, the
#: member and who acted.
ON_REQUEST_TYPES: Final[dict[str, int]] = {
    "GROUP_MESSAGE_CREATE": int(Intents.GROUP_AND_C2C_EVENT),
    "GROUP_MEMBER_ADD": int(Intents.GROUP_AND_C2C_EVENT),
    "GROUP_MEMBER_REMOVE": int(Intents.GROUP_AND_C2C_EVENT),
}

# QQ timestamps are ISO 8601 in China Standard Time.
_CST: Final = timezone(timedelta(hours=8))
# About one generated event in fifty is of an unknown type.
_UNKNOWN_SHARE: Final = 0.02
_ALNUM: Final = string.ascii_letters + string.digits
_PHRASES: Final = (
    "hello",
    "ping",
    "how are you?",
    "/help",
    "天气怎么样",
    "测试消息",
    "roll a die",
    "good night",
)


class EventFactory:
    """Builds ``(event_id, d)`` for an event type with a seeded random generator."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._guild_seq = 0
        # A small fixed cast, so replies go to the same few users and groups.
        self.user_openids = [self._hex(32).upper() for _ in range(4)]
        self.group_openids = [self._hex(32).upper() for _ in range(3)]
        self.guild_ids = [str(self._rng.randrange(10**17, 10**18)) for _ in range(2)]
        self.channel_ids = [str(self._rng.randrange(10**6, 10**7)) for _ in range(3)]

    def _hex(self, n: int) -> str:
        return "".join(self._rng.choice("0123456789abcdef") for _ in range(n))

    def _alnum(self, n: int) -> str:
        return "".join(self._rng.choice(_ALNUM) for _ in range(n))

    def event_id(self, event_type: str) -> str:
        return f"{event_type}:{self._hex(40)}"

    def message_id(self) -> str:
        return f"ROBOT1.0_{self._alnum(40)}"

    @staticmethod
    def timestamp() -> str:
        return datetime.now(UTC).astimezone(_CST).isoformat(timespec="seconds")

    def pick_type(self, intents: int) -> str:
        """A random event type the session subscribed to (rarely an unknown one)."""
        if self._rng.random() < _UNKNOWN_SHARE:
            return UNKNOWN_EVENT_TYPE
        allowed = [t for t, bit in EVENT_INTENTS.items() if intents & bit]
        return self._rng.choice(allowed or list(EVENT_INTENTS))

    def build(self, event_type: str, *, bot_id: str) -> tuple[str, Any]:
        """Event id and ``d`` for one dispatch of ``event_type``."""
        rng = self._rng
        content = rng.choice(_PHRASES)
        ts = self.timestamp()
        if event_type == "C2C_MESSAGE_CREATE":
            openid = rng.choice(self.user_openids)
            d: Any = {
                "author": {"id": openid, "user_openid": openid, "union_openid": openid},
                "content": content,
                "id": self.message_id(),
                "timestamp": ts,
                "message_scene": {"source": "default", "ext": []},
                "message_type": 0,
            }
        elif event_type in ("GROUP_AT_MESSAGE_CREATE", "GROUP_MESSAGE_CREATE"):
            member = rng.choice(self.user_openids)
            group = rng.choice(self.group_openids)
            d = {
                # As QQ sends it (nonebot-adapter-qq's models require bot and member_role).
                "author": {
                    "id": member,
                    "member_openid": member,
                    "union_openid": member,
                    "bot": False,
                    "member_role": "member",
                },
                # An @-message's text starts after the (removed) mention; a plain one does not.
                "content": f" {content}" if event_type == "GROUP_AT_MESSAGE_CREATE" else content,
                "group_id": group,
                "group_openid": group,
                "id": self.message_id(),
                "timestamp": ts,
                "message_scene": {"source": "default", "ext": []},
                "message_type": 0,
            }
        elif event_type in ("AT_MESSAGE_CREATE", "DIRECT_MESSAGE_CREATE"):
            self._guild_seq += 1
            user_id = str(rng.randrange(10**18, 10**19))
            d = {
                "author": {
                    "avatar": "https://thirdqq.qlogo.cn/0",
                    "bot": False,
                    "id": user_id,
                    "username": f"user{user_id[-4:]}",
                },
                "channel_id": rng.choice(self.channel_ids),
                "content": (
                    f"<@!{bot_id}> {content}" if event_type == "AT_MESSAGE_CREATE" else content
                ),
                "guild_id": rng.choice(self.guild_ids),
                "id": f"08{self._hex(30)}",
                "member": {"joined_at": ts, "roles": ["1"]},
                "seq": self._guild_seq,
                "seq_in_channel": str(self._guild_seq),
                "timestamp": ts,
            }
            if event_type == "DIRECT_MESSAGE_CREATE":
                d["direct_message"] = True
                d["src_guild_id"] = rng.choice(self.guild_ids)
        elif event_type in ("GROUP_MEMBER_ADD", "GROUP_MEMBER_REMOVE"):
            member = rng.choice(self.user_openids)
            d = {
                "group_openid": rng.choice(self.group_openids),
                "member_openid": member,
                # Who acted: the member (joined, left) or an admin (invited, removed).
                "op_member_openid": rng.choice((member, *self.user_openids)),
                "timestamp": int(datetime.now(UTC).timestamp()),
            }
        else:
            d = {"note": "an event type the client does not know", "value": rng.randrange(1000)}
        return self.event_id(event_type), d
