"""The webhook intake journal, in process and without sockets: file format, recovery of torn,
corrupt and foreign files, group commit, a failed append, compaction, the watermark."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from qqbot_gateway.adapter import events as ev
from qqbot_gateway.adapter.journal import (
    FORMAT,
    IntakeJournal,
    JournalFile,
    JournalRecord,
)
from qqbot_gateway.adapter.protocol import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    GatewayEvent,
    WebhookKey,
)
from qqbot_gateway.adapter.session import GatewaySession
from qqbot_gateway.adapter.store import FileSessionStore, StoreLockedError
from qqbot_gateway.adapter.webhook import WebhookIntake

APP = "1024"


def body(i: int) -> bytes:
    # Pretty-printed, as a proxy might send it: the journal folds it onto one line.
    payload = {"op": 0, "id": f"E{i}", "s": i, "t": "C2C", "d": {"n": i}}
    return json.dumps(payload, indent=1).encode()


def event(i: int) -> GatewayEvent:
    return GatewayEvent("C2C", {"n": i}, i, f"E{i}", 0, None)


def new_file(tmp_path: Path) -> JournalFile:
    f = JournalFile(tmp_path, APP)
    f.open(f.recover())
    return f


def reopen(tmp_path: Path) -> tuple[JournalFile, Any]:
    f = JournalFile(tmp_path, APP)
    recovery = f.recover()
    f.open(recovery)
    return f, recovery


def test_records_round_trip_and_a_torn_end_is_cut_off(tmp_path: Path) -> None:
    f = new_file(tmp_path)
    header = f.path.read_bytes()
    assert header.startswith(FORMAT.encode() + b" ") and header.count(b"\n") == 1
    lines = [JournalRecord(n, body(n).replace(b"\n", b" ")).line() for n in (1, 2, 3)]
    f.append(b"".join(lines))
    good = f.size
    f.append(lines[0].replace(b" 1 ", b" 4 ")[:-20])  # a crash in the middle of an append
    f.close()
    g, recovery = reopen(tmp_path)
    assert [r.n for r in recovery.records] == [1, 2, 3]
    assert [r.payload()["id"] for r in recovery.records] == ["E1", "E2", "E3"]
    assert recovery.generation == f.generation
    assert len(recovery.warnings) == 1 and "torn record" in recovery.warnings[0]
    assert g.path.stat().st_size == good == g.size  # cut off before the next append
    g.append(JournalRecord(4, b"{}").line())
    g.close()
    assert [r.n for r in reopen(tmp_path)[1].records] == [1, 2, 3, 4]


def test_a_corrupt_record_in_the_middle_is_skipped_with_one_warning(tmp_path: Path) -> None:
    f = new_file(tmp_path)
    lines = [JournalRecord(n, b'{"id":"E%d"}' % n).line() for n in (1, 2, 3)]
    lines[1] = lines[1].replace(b"E2", b"X2")  # a flipped byte: the CRC no longer matches
    f.append(b"".join(lines))
    f.close()
    _, recovery = reopen(tmp_path)
    assert [r.n for r in recovery.records] == [1, 3]
    assert len(recovery.warnings) == 1 and "1 corrupt record" in recovery.warnings[0]


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "empty"),
        (b'{"format": "qqbot-gateway-session/1"}\n', "not a qqbot-gateway-webhook-journal/1"),
        (FORMAT.encode() + b' {"app_id": "999", "generation": "ab"}\n', "app id '999'"),
        (FORMAT.encode() + b" {not json\n", "not valid JSON"),
        (FORMAT.encode() + b' {"app_id": "1024"}', "not a qqbot"),  # no newline: torn header
    ],
)
def test_a_foreign_or_corrupt_journal_is_moved_aside(
    tmp_path: Path, content: bytes, why: str
) -> None:
    (tmp_path / "webhook.journal").write_bytes(content)
    f, recovery = reopen(tmp_path)
    assert recovery.records == [] and recovery.generation is None
    assert len(recovery.warnings) == 1 and why in recovery.warnings[0], recovery.warnings
    assert (tmp_path / "webhook.journal.corrupt").read_bytes() == content
    assert f.path.read_bytes().startswith(FORMAT.encode())  # a new journal
    f.close()


class Harness:
    def __init__(self, tmp_path: Path, compact_at: int = 1 << 20) -> None:
        self.bus = ev.EventBus()
        self.delivered: list[GatewayEvent] = []
        self.forgotten: list[str] = []
        self.handled = 0
        self.written: list[ev.JournalWritten] = []
        self.bus.subscribe_to(ev.JournalWritten, self.written.append)
        self.file = JournalFile(tmp_path, APP)
        recovery = self.file.recover()
        self.file.open(recovery)
        self.journal = IntakeJournal(
            self.file,
            bus=self.bus,
            deliver=self.delivered.append,
            handled=lambda: self.handled,
            forget=self.forgotten.append,
            compact_at=compact_at,
        )
        self.todo = self.journal.restore(recovery, (None, 0))
        self.journal.start()

    def checkpoint(self) -> None:
        _, seq = self.journal.position()
        self.journal.checkpoint_written(seq)  # the checkpointer's direct call


async def test_concurrent_callbacks_share_one_write_and_are_delivered_in_record_order(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    await asyncio.sleep(0.05)  # the writer is idle
    futures = [h.journal.submit(event(i), body(i)) for i in range(1, 6)]
    assert h.journal.in_flight == 5 and h.delivered == []  # nothing before it is durable
    waiting = h.journal.pending("E3")  # a duplicate of E3 waits for E3's append
    assert waiting is not None and h.journal.pending("E9") is None
    futures[1].cancel()  # a waiter that goes away does not cancel its append
    assert await asyncio.gather(waiting, *futures[2:]) == [True] * 4
    assert [e.event_id for e in h.delivered] == ["E1", "E2", "E3", "E4", "E5"]
    assert await futures[0]
    assert [w.records for w in h.written] == [5]  # one group commit, one fdatasync
    assert h.journal.pending("E3") is None and h.journal.in_flight == 0
    # The watermark: the record before the first one not yet handled.
    assert h.journal.position()[1] == 0
    h.handled = 3
    assert h.journal.position() == (h.file.generation, 3)
    h.handled = 5
    assert h.journal.position()[1] == 5
    await h.journal.close()
    assert [r.n for r in JournalFile(tmp_path, APP).recover().records] == [1, 2, 3, 4, 5]


async def test_a_failed_append_answers_false_forgets_the_ids_and_leaves_no_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness(tmp_path)
    assert await h.journal.submit(event(1), body(1))
    size = h.file.size
    real_write = os.write
    calls = 0

    def failing_write(fd: int, data: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            real_write(fd, bytes(data)[:10])  # half a record reached the file
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", failing_write)
    results = await asyncio.gather(
        h.journal.submit(event(2), body(2)), h.journal.submit(event(3), body(3))
    )
    assert list(results) == [False, False]
    assert h.forgotten == ["E2", "E3"] and [e.event_id for e in h.delivered] == ["E1"]
    assert h.file.path.stat().st_size == size  # cut back: nothing half-written stays
    # The platform's retry is accepted, under the record number the failed one did not use.
    assert await h.journal.submit(event(2), body(2))
    await h.journal.close()
    records = JournalFile(tmp_path, APP).recover().records
    assert [(r.n, r.payload()["id"]) for r in records] == [(1, "E1"), (2, "E2")]


async def test_compaction_keeps_only_unhandled_records_and_a_clean_close_empties_it(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path, compact_at=1000)  # 15 handled records are more
    for i in range(1, 21):
        assert await h.journal.submit(event(i), body(i))
    big = h.file.path.stat().st_size
    h.handled = 15  # 5 still queued
    h.checkpoint()
    for _ in range(100):
        await asyncio.sleep(0.01)
        if h.file.path.stat().st_size < big:
            break
    records = JournalFile(tmp_path, APP).recover().records
    assert [r.n for r in records] == [16, 17, 18, 19, 20]
    assert await h.journal.submit(event(21), body(21))  # appends go on after the rewrite
    h.handled = 21
    h.checkpoint()
    await h.journal.close()
    assert h.file.path.read_bytes().count(b"\n") == 1  # the header only


async def test_restore_replays_past_the_watermark_of_the_same_generation(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    for i in range(1, 5):
        assert await h.journal.submit(event(i), body(i))
    generation = h.file.generation
    task = h.journal._task
    assert task is not None
    task.cancel()  # "SIGKILL": no close, no compaction
    h.file.close()
    again = JournalFile(tmp_path, APP)
    recovery = again.recover()
    again.open(recovery)
    j = IntakeJournal(
        again, bus=ev.EventBus(), deliver=lambda e: None, handled=lambda: 0, forget=print
    )
    assert [r.n for r in j.restore(recovery, (generation, 2))] == [3, 4]
    j2 = IntakeJournal(
        again, bus=ev.EventBus(), deliver=lambda e: None, handled=lambda: 0, forget=print
    )
    # A watermark of another generation says nothing about this journal: all of it.
    assert [r.n for r in j2.restore(recovery, ("other", 3))] == [1, 2, 3, 4]
    again.close()


def test_the_journal_has_the_store_lock_discipline(tmp_path: Path) -> None:
    """One process per state directory: the webhook's lock is the session store's flock."""
    first = FileSessionStore(tmp_path, APP, 0, stem="webhook")
    first.acquire()
    second = FileSessionStore(tmp_path, APP, 0, stem="webhook")
    with pytest.raises(StoreLockedError) as caught:
        second.acquire()
    assert caught.value.holder_pid == os.getpid()
    assert first.directory == JournalFile(first.directory, APP).directory
    assert sorted(p.name for p in first.directory.iterdir()) == ["webhook.lock"]
    first.close()
    second.acquire()  # released with its holder
    second.close()


async def test_the_intake_acks_only_durable_dispatches_and_copies_share_the_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through :class:`WebhookIntake`: a failed append is a 503 for the request and for a copy
    that arrived while it was in flight, and the id is forgotten, so the retry is accepted."""
    session = GatewaySession(intents=1)
    bus = ev.EventBus()
    answers: list[str] = []
    bus.subscribe_to(ev.WebhookRequest, lambda e: answers.append(e.outcome))
    queue: list[GatewayEvent] = []
    file = JournalFile(tmp_path, APP)
    recovery = file.recover()
    file.open(recovery)
    journal = IntakeJournal(
        file, bus=bus, deliver=queue.append, handled=lambda: 0, forget=session.forget_id
    )
    journal.restore(recovery, (None, 0))
    journal.start()
    key = WebhookKey("s3cret")
    intake = WebhookIntake(
        key,
        session=session,
        bus=bus,
        deliver=queue.append,
        queue_full=lambda: False,
        journal=journal,
        wall=lambda: 1_800_000_000.0,
    )
    payload = json.dumps({"op": 0, "id": "E1", "s": 1, "t": "C2C", "d": {}}).encode()
    headers = {
        TIMESTAMP_HEADER: "1800000000",
        SIGNATURE_HEADER: key.sign_hex("1800000000", payload),
    }
    failing = True
    real_append = JournalFile.append

    def append(self: JournalFile, data: bytes) -> None:
        if failing:
            raise OSError(30, "Read-only file system")
        real_append(self, data)

    monkeypatch.setattr(JournalFile, "append", append)
    first, copy = await asyncio.gather(
        intake.receive(headers, payload), intake.receive(headers, payload)
    )
    assert (first.status, copy.status) == (503, 503) and queue == []
    assert json.loads(first.body) == {"op": 12, "d": 1}
    failing = False
    retry = await intake.receive(headers, payload)
    again = await intake.receive(headers, payload)
    assert (retry.status, again.status) == (200, 200) and [e.event_id for e in queue] == ["E1"]
    assert answers == ["journal_failed", "journal_failed", "accepted", "duplicate"]
    with pytest.raises(RuntimeError, match="receive"):
        intake.handle(headers, payload)
    await journal.close()


async def test_the_file_stays_bounded_under_a_steady_flood(tmp_path: Path) -> None:
    """Compaction runs between appends while callbacks keep arriving (the writer compacts even
    with callbacks waiting, or a flood that never lets the batch empty would grow the file)."""
    h = Harness(tmp_path, compact_at=1000)
    futures = []
    sizes = []
    for n in range(1, 301):  # a callback every ms: one is waiting whenever an append ends
        futures.append(h.journal.submit(event(n), body(n)))
        await asyncio.sleep(0.001)
        h.handled = len(h.delivered)  # fast handlers
        h.checkpoint()
        sizes.append(h.file.path.stat().st_size)
    assert all(await asyncio.gather(*futures))
    # 300 records of ~100 bytes would be ~30 kB; compacted at 1 kB of handled records, the
    # file stays within that plus the records of the batches in between.
    assert max(sizes) < 8000, max(sizes)
    await h.journal.close()
