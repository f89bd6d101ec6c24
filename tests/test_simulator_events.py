"""QQ's newer group events in the simulator and through the client: ``GROUP_MESSAGE_CREATE``,
``GROUP_MEMBER_ADD`` and ``GROUP_MEMBER_REMOVE`` are emitted on request (the control API), reach
the handlers unchanged and are counted by type; so is an event type nobody knows yet."""

from __future__ import annotations

import random
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from qqbot_gateway.adapter.protocol import (
    EVENT_INTENTS,
    GROUP_MEMBER_EVENT_TYPES,
    GatewayEvent,
    GroupMemberData,
    GroupMessageData,
    Intents,
)
from qqbot_gateway.simulator.events import (
    EVENT_INTENTS as GENERATED,
)
from qqbot_gateway.simulator.events import (
    ON_REQUEST_TYPES,
    EventFactory,
)
from qqbot_gateway.telemetry.metrics import GatewayMetrics
from tests.gateway_harness import start_harness, stop_harness

NEW_TYPES = ("GROUP_MESSAGE_CREATE", *GROUP_MEMBER_EVENT_TYPES)


def test_new_types_have_intents_and_payloads() -> None:
    factory = EventFactory(random.Random(3))
    for t in NEW_TYPES:
        assert EVENT_INTENTS[t] is Intents.GROUP_AND_C2C_EVENT
        assert ON_REQUEST_TYPES[t] == int(Intents.GROUP_AND_C2C_EVENT)
        assert t not in GENERATED  # never picked by the background generator
        event_id, d = factory.build(t, bot_id="1")
        assert event_id.startswith(f"{t}:")
        typed = GroupMessageData if t == "GROUP_MESSAGE_CREATE" else GroupMemberData
        assert set(d) <= set(typed.__annotations__), (t, set(d) - set(typed.__annotations__))
        assert d["group_openid"] in factory.group_openids
    plain = factory.build("GROUP_MESSAGE_CREATE", bot_id="1")[1]
    at = factory.build("GROUP_AT_MESSAGE_CREATE", bot_id="1")[1]
    assert set(plain) == set(at)  # one shape for both: a reply is passive to d["id"] in each
    assert not plain["content"].startswith(" ") and at["content"].startswith(" ")
    member = factory.build("GROUP_MEMBER_ADD", bot_id="1")[1]
    assert isinstance(member["timestamp"], int) and member["member_openid"]


def _dispatched(registry: CollectorRegistry, event_type: str) -> float | None:
    return registry.get_sample_value(
        "qqbot_gateway_events_dispatched_total", {"shard": "0", "type": event_type}
    )


@pytest.mark.slow
async def test_control_api_emits_them_and_handlers_get_them_unchanged() -> None:
    h = await start_harness()
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, process_collectors=False)
    metrics.register_shard(0, ack_miss_limit=2, queue_capacity=1000)
    h.client.events.subscribe(metrics.observe)
    typed: list[GatewayEvent] = []
    h.client.add_handler(typed.append, "GROUP_MEMBER_ADD")
    try:
        await h.ready()
        h.sim.pause_events()
        sent: dict[str, Any] = {
            "GROUP_MEMBER_REMOVE": {"group_openid": "G1", "member_openid": "U1", "timestamp": 1},
            "QQ_EVENT_FROM_THE_FUTURE": {"nested": {"list": [1, 2.5, None, "三"]}},
        }
        async with aiohttp.ClientSession() as http:
            for t in dict.fromkeys((*NEW_TYPES, *sent)):
                body: dict[str, Any] = {"type": t, "count": 2}
                if t in sent:
                    body["data"] = sent[t]
                async with http.post(f"{h.sim.control_url}/events", json=body) as resp:
                    assert resp.status == 200, await resp.text()
                    assert [row[3] for row in (await resp.json())["emitted"]] == [t, t]
        await h.settle()
        h.assert_exactly_once()
        got = [e for e in h.rec.payload_events()]
        for t in dict.fromkeys((*NEW_TYPES, *sent)):
            assert sum(e.type == t for e in got) == 2, t
            assert _dispatched(registry, t) == 2.0, t
        for t, data in sent.items():
            assert all(e.data == data for e in got if e.type == t)  # passed through unchanged
        assert [e.type for e in typed] == ["GROUP_MEMBER_ADD"] * 2  # a handler by type
        for e in got:
            if e.type == "GROUP_MESSAGE_CREATE":
                assert e.data["id"] and e.data["group_openid"] and e.data["author"]
        assert _dispatched(registry, "other") in (None, 0.0)  # a handful of types: no folding
    finally:
        await stop_harness(h)


@pytest.mark.parametrize(
    "event_type",
    [
        "C2C_MESSAGE_CREATE",
        "GROUP_AT_MESSAGE_CREATE",
        "GROUP_MESSAGE_CREATE",
        "AT_MESSAGE_CREATE",
        "DIRECT_MESSAGE_CREATE",
    ],
)
def test_generated_messages_parse_with_nonebot_adapter_qq_models(event_type: str) -> None:
    """The simulator's messages carry every field QQ sends that nonebot-adapter-qq 1.7.3's
    models require (message_scene.ext, a group author's bot and member_role, ...): NoneBot bots
    see the simulator's traffic as they see QQ's, not as parse warnings."""
    pytest.importorskip("nonebot.adapters.qq")
    from nonebot.adapters.qq.event import EVENT_CLASSES
    from nonebot.compat import type_validate_python

    factory = EventFactory(random.Random(5))
    event_id, data = factory.build(event_type, bot_id="11111111111111111111")
    cls = EVENT_CLASSES[event_type]
    event = type_validate_python(cls, {**data, "event_id": event_id, "__type__": event_type})
    assert event.get_plaintext().strip() != "" or event_type == "DIRECT_MESSAGE_CREATE"
