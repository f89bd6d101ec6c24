"""The bus routes by kind and shard; per-event facts are counters unless someone asks for them."""

from __future__ import annotations

import json

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter.session import Deliver, Emit, GatewaySession


def frame(t: float, shard: int = 0) -> ev.FrameReceived:
    return ev.FrameReceived(shard=shard, monotonic=t, op=0, event_type="X", size=10)


def test_routing_by_kind_shard_and_exclusion() -> None:
    bus = ev.EventBus()
    everything: list[ev.LifecycleEvent] = []
    shard1: list[ev.LifecycleEvent] = []
    control: list[ev.LifecycleEvent] = []
    bus.subscribe(everything.append)
    bus.subscribe(shard1.append, kinds=(ev.FrameReceived, ev.SessionReady), shard=1)
    stop = bus.subscribe(control.append, exclude=ev.PER_EVENT)
    bus.emit(frame(1.0, shard=0))
    bus.emit(frame(2.0, shard=1))
    ready = ev.SessionReady(shard=1, monotonic=3.0, session_id="s", user_id=None, username=None)
    bus.emit(ready)
    token = ev.TokenRefreshed(shard=None, monotonic=4.0, expires_in=7200.0, forced=False)
    bus.emit(token)
    assert [e.monotonic for e in everything] == [1.0, 2.0, 3.0, 4.0]
    assert [e.monotonic for e in shard1] == [2.0, 3.0]
    assert control == [ready, token]
    assert bus.wants(ev.FrameReceived, 0)
    stop()
    bus.emit(token)
    assert control == [ready, token]


def test_wants_follows_subscriptions() -> None:
    bus = ev.EventBus()
    assert not bus.wants(ev.EventDispatched, 0)
    stop = bus.subscribe(lambda e: None, exclude=ev.PER_EVENT)
    assert not bus.wants(ev.EventDispatched, 0) and bus.wants(ev.Disconnected, 0)
    stop_typed = bus.subscribe_to(ev.EventDispatched, lambda e: None, shard=0)
    assert bus.wants(ev.EventDispatched, 0) and not bus.wants(ev.EventDispatched, 1)
    interest = bus.interest(0)
    assert interest.dispatched and not interest.frames and not bus.interest(1).dispatched
    stop_typed()
    assert not interest.dispatched
    stop()
    assert not bus.wants(ev.Disconnected, 0)


def test_a_failing_subscriber_does_not_stop_the_others() -> None:
    bus = ev.EventBus()
    seen: list[ev.LifecycleEvent] = []

    def broken(event: ev.LifecycleEvent) -> None:
        raise RuntimeError("boom")

    bus.subscribe(broken)
    bus.subscribe(seen.append)
    bus.emit(frame(1.0))
    assert len(seen) == 1


def _dispatch(seq: int, t: str = "C2C_MESSAGE_CREATE") -> bytes:
    return json.dumps({"op": 0, "s": seq, "t": t, "id": f"e{seq}", "d": {}}).encode()


def test_the_session_counts_and_builds_no_per_event_objects_unless_wanted() -> None:
    s = GatewaySession(intents=1 << 25)
    s.interest = ev.Interest(False)
    s.connect(0.0, "t")
    s.receive_text(json.dumps({"op": 10, "d": {"heartbeat_interval": 1000}}), 0.1)
    ready = {"session_id": "s", "user": {"id": "1"}}
    s.receive_text(json.dumps({"op": 0, "s": 1, "t": "READY", "d": ready}), 0.2)
    out = s.receive_text(_dispatch(2), 0.3)
    assert [type(a) for a in out] == [Deliver]
    s.receive_text(_dispatch(2), 0.4)  # a duplicate: not a dispatch
    s.receive_text(b"{not json", 0.5)
    s.receive_text(_dispatch(3, "GROUP_AT_MESSAGE_CREATE"), 0.6)
    stats = s.stats
    assert stats.frames == {10: 1, 0: 4, None: 1}
    assert stats.dispatched == {"READY": 1, "C2C_MESSAGE_CREATE": 1, "GROUP_AT_MESSAGE_CREATE": 1}
    assert stats.last_frame_at == 0.6
    bus = ev.EventBus()
    s.interest = bus.interest(0)
    assert not s.interest.frames
    bus.subscribe(lambda e: None)  # someone subscribed to everything: the events are back
    out = s.receive_text(_dispatch(4), 0.7)
    kinds = [type(a.event) for a in out if isinstance(a, Emit)]
    assert kinds == [ev.FrameReceived, ev.EventDispatched]


def test_stats_cap_event_types_and_bucket_durations() -> None:
    stats = ev.ShardStats(0)
    for i in range(ev.MAX_COUNTED_TYPES + 5):
        stats.count_dispatch(f"T{i}")
    assert len(stats.dispatched) == ev.MAX_COUNTED_TYPES + 1
    assert stats.dispatched[ev.OTHER_TYPE] == 5
    for seconds in (0.0005, 0.001, 0.3, 100.0):
        stats.count_handled(seconds)
    assert stats.handled == 4 and stats.handler_buckets[0] == 2  # le=0.001 is inclusive
    assert stats.handler_buckets[-1] == 1  # +Inf


def test_status_history_samples_the_counters() -> None:
    from qqbot_gateway.telemetry.history import StatusHistory

    history = StatusHistory(window=60.0)
    history.add_shards([0], 100.0)
    stats = ev.ShardStats(0)
    history.bind_stats(0, stats, queue_capacity=50)
    for i in range(10):  # a steady stream of frames between two samples: one run
        stats.frames[0] = stats.frames.get(0, 0) + 1
        stats.last_frame_at = 100.0 + i * 0.02
        stats.count_dispatch("C2C_MESSAGE_CREATE" if i % 2 else "GROUP_AT_MESSAGE_CREATE")
    stats.queue_depth = 7
    stats.count_handled(0.01)
    history.sample(100.25)
    stats.frames[0] += 5
    stats.last_frame_at = 100.45
    history.sample(100.5)
    s = history.shards[0]
    assert s.last_frame_at == 100.45
    assert [list(run) for run in s.frame_runs] == [[100.18, 100.45]]
    assert s.events_total == 10
    assert s.events_by_type == {"GROUP_AT_MESSAGE_CREATE": 5, "C2C_MESSAGE_CREATE": 5}
    assert s.queue_depth == 7 and s.queue_capacity == 50 and s.handled == 1
    history.sample(101.0)  # nothing new: nothing counted twice
    assert s.events_total == 10 and s.handled == 1
