"""The webhook intake journal: a callback is on disk before its ACK goes out.

QQ does not redeliver a callback it got an op 12 ACK for, and a webhook has no gateway session
to resume: an event ACKed and then lost with the process (SIGKILL, OOM kill, a crash) would be
gone for good. So with a state directory (``QQBOT_STATE_DIR``, the default) every accepted
dispatch is appended to a journal and made durable *before* the ACK, and the next process hands
the handlers what the previous one ACKed and did not handle.

**The file**, per app: ``<state dir>/<app id>/webhook.journal``::

    qqbot-gateway-webhook-journal/1 {"app_id":"102000000","generation":"9f2c..."}
    <crc32, 8 hex> <n> <the callback's JSON body, CR/LF folded to spaces>
    ...

``n`` numbers the records (1, 2, ... per generation, never reused once durable); the CRC covers
``<n> <body>``. JSON has no raw newline inside a string, so a body with its CR/LF turned into
spaces is the same JSON on one line, and a line is a record. The header is written atomically
(temporary file, ``fsync``, rename, ``fsync`` of the directory) with a fresh random
``generation``.

**Appends: group commit, off the event loop.** :meth:`IntakeJournal.submit` queues a record and
returns a future; one writer task takes every record queued so far, writes them with one
``write`` and one ``fdatasync`` in a worker thread, then hands the events to the handler queue
in record order and resolves the futures (the receiver answers 200 + op 12 only then).
Concurrent callbacks therefore share one ``fdatasync``. A failed write is cut off again
(``ftruncate`` back to the last durable size) and every request of the batch is answered 503 so
that the platform retries; the event ids are taken out of the dedupe window (else the retry
would be dropped as a duplicate: a loss). A duplicate of an event whose append is still in
flight waits for that append and gets the same answer.

**The watermark.** Handlers run one event at a time, in record order (``dispatch.py``), so the
records handled are a prefix: the watermark is the record before the first one still queued or
in a handler. It is checkpointed with the handled event ids (the dedupe window) by the
session store's :class:`~.checkpoint.Checkpointer` in ``webhook.json`` (the
:class:`~.store.StoredSession` fields: ``session_id`` = the journal's generation, ``seq`` = the
watermark), batched and atomic, never on the event loop; ``webhook.lock`` is the same
single-process ``flock`` the session store takes.

**Bounded.** Once a durable checkpoint covers records that fill more than
:data:`COMPACT_AT` bytes, the writer compacts between two appends: ``ftruncate`` to the header
when nothing is left unhandled, else an atomic rewrite keeping the unhandled records. A clean
shutdown (everything handled and checkpointed) leaves the header only.

**Recovery** (:meth:`JournalFile.recover`, before the receiver listens): records past the
stored watermark are re-delivered in order, except ids in the stored dedupe window (handled
already). A torn end (a crash in the middle of an append, which was never ACKed) is cut off with
one WARNING; a corrupt record in the middle is skipped with one WARNING; a file that is not a
journal of this app (unknown format, another app id, no header) is moved aside to
``webhook.journal.corrupt`` with one WARNING and a new journal starts, as the session store
treats an unusable state file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from . import events as ev
from .protocol import GatewayEvent
from .store import StoreError, fsync_dir

__all__ = [
    "COMPACT_AT",
    "FORMAT",
    "JOURNAL_NAME",
    "IntakeJournal",
    "JournalFile",
    "JournalRecord",
    "Recovery",
]

_log = logging.getLogger("qqbot_gateway.journal")

FORMAT: Final = "qqbot-gateway-webhook-journal/1"
JOURNAL_NAME: Final = "webhook.journal"
#: Compact once handled records fill this many bytes: ~3,000 callbacks of a few hundred bytes.
#: Reading that much at a start takes milliseconds; compacting more often would put a rename
#: and two fsyncs between appends for nothing.
COMPACT_AT: Final = 1 << 20
#: A journal larger than this is not one of ours (compaction keeps it near COMPACT_AT plus the
#: unhandled records, at most a handler queue of bodies).
_MAX_FILE_SIZE: Final = 256 << 20
_CRC_WIDTH: Final = 8


@dataclass(frozen=True, slots=True)
class JournalRecord:
    n: int
    #: The callback body on one line (JSON).
    body: bytes

    def line(self) -> bytes:
        payload = b"%d " % self.n + self.body
        return b"%08x " % zlib.crc32(payload) + payload + b"\n"

    def payload(self) -> Any:
        return json.loads(self.body)


@dataclass(slots=True)
class Recovery:
    """What a previous process left: its generation (None: start a new journal), the whole
    records in order, the byte size up to the last whole record, and WARNING lines."""

    generation: str | None = None
    records: list[JournalRecord] = field(default_factory=list)
    good_size: int = 0
    header_size: int = 0
    warnings: list[str] = field(default_factory=list)
    #: Why the file was not usable at all and was moved aside (None: it was usable or absent).
    unusable: str | None = None


def one_line(body: bytes) -> bytes:
    """A JSON body on one line: CR and LF only ever occur as whitespace between tokens."""
    return body.replace(b"\r", b" ").replace(b"\n", b" ")


def _parse_record(line: bytes) -> JournalRecord | None:
    if len(line) < _CRC_WIDTH + 3 or line[_CRC_WIDTH : _CRC_WIDTH + 1] != b" ":
        return None
    try:
        crc = int(line[:_CRC_WIDTH], 16)
    except ValueError:
        return None
    payload = line[_CRC_WIDTH + 1 :]
    if zlib.crc32(payload) != crc:
        return None
    number, sep, body = payload.partition(b" ")
    if not sep or not number.isdigit():
        return None
    return JournalRecord(int(number), body)


class JournalFile:
    """The journal's blocking file operations; called from a worker thread (or at start)."""

    def __init__(self, directory: str | os.PathLike[str], app_id: str) -> None:
        self.directory = Path(directory)
        self.app_id = app_id
        self.path = self.directory / JOURNAL_NAME
        self.aside = self.directory / f"{JOURNAL_NAME}.corrupt"
        self._tmp = self.directory / f".{JOURNAL_NAME}.tmp"
        self._fd: int | None = None
        self.generation = ""
        #: Bytes known durable (the file is cut back to this after a failed append).
        self.size = 0
        self.header_size = 0
        self._dirty = False  # a failed append may have left bytes past ``size``

    @property
    def location(self) -> str:
        return str(self.path)

    # --- recovery ------------------------------------------------------------------------
    def recover(self) -> Recovery:
        """Read what a previous process left; content problems become warnings, never errors.
        :class:`StoreError` only if the file cannot be read or moved aside."""
        try:
            with self.path.open("rb") as fh:
                raw = fh.read(_MAX_FILE_SIZE + 1)
        except FileNotFoundError:
            return Recovery()
        except OSError as exc:
            raise StoreError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        if len(raw) > _MAX_FILE_SIZE:
            return self._set_aside(f"larger than {_MAX_FILE_SIZE} bytes")
        header, sep, rest = raw.partition(b"\n")
        problem = "the file is empty" if not raw else self._header_problem(header, sep)
        if problem is not None:
            return self._set_aside(problem)
        generation = json.loads(header[len(FORMAT) + 1 :])["generation"]
        offset = good = len(header) + 1
        recovery = Recovery(generation=generation, header_size=offset)
        corrupt = 0
        pending_bad = 0  # bad lines after the last good record: the torn end, unless more follow
        lines = rest.split(b"\n")
        for line in lines[:-1]:  # the last element is what follows the last newline
            offset += len(line) + 1
            record = _parse_record(line)
            last = recovery.records[-1].n if recovery.records else 0
            if record is None or record.n <= last:
                pending_bad += 1
                continue
            corrupt += pending_bad
            pending_bad = 0
            recovery.records.append(record)
            good = offset
        torn = len(raw) - good
        recovery.good_size = good
        if corrupt:
            recovery.warnings.append(
                f"webhook journal {self.path}: skipped {corrupt} corrupt record(s) in the middle "
                "(their events cannot be replayed)"
            )
        if torn:
            recovery.warnings.append(
                f"webhook journal {self.path}: ignoring a torn record at its end ({torn} bytes: "
                "the previous process died while appending it, before its ACK; the platform "
                "retries it)"
            )
        return recovery

    def _header_problem(self, header: bytes, sep: bytes) -> str | None:
        prefix = FORMAT.encode() + b" "
        if not sep or not header.startswith(prefix):
            return f"not a {FORMAT} file"
        try:
            d = json.loads(header[len(prefix) :])
        except (ValueError, RecursionError):
            return "its header is not valid JSON (corrupt)"
        if (
            not isinstance(d, dict)
            or not isinstance(d.get("generation"), str)
            or not d["generation"]
        ):
            return "its header lacks a generation (corrupt)"
        if d.get("app_id") != self.app_id:
            return f"it belongs to app id {d.get('app_id')!r}, not this bot"
        return None

    def _set_aside(self, why: str) -> Recovery:
        try:
            os.replace(self.path, self.aside)
        except OSError as exc:
            raise StoreError(
                f"{self.path}: {why}, and it cannot be moved aside: {exc.strerror or exc}"
            ) from None
        return Recovery(
            unusable=f"{self.path}: {why}",
            warnings=[
                f"webhook journal {self.path}: {why}; moved to {self.aside.name} and starting a "
                "new journal (nothing in it can be replayed)"
            ],
        )

    # --- writing -------------------------------------------------------------------------
    def open(self, recovery: Recovery) -> None:
        """Continue the recovered journal (its torn end cut off) or start a new one."""
        if recovery.generation is None:
            self.generation = secrets.token_hex(8)
            self._replace_with([])
            return
        self.generation = recovery.generation
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            self.header_size = recovery.header_size  # the header as written, byte for byte
            if os.fstat(fd).st_size != recovery.good_size:
                os.ftruncate(fd, recovery.good_size)
                os.fdatasync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self.size = fd, recovery.good_size

    def append(self, data: bytes) -> None:
        """Write ``data`` (whole records) durably, or raise OSError with the file as before."""
        fd = self._require_fd()
        if self._dirty:  # cut off what a failed append may have left
            os.ftruncate(fd, self.size)
            self._dirty = False
        try:
            _write_all(fd, data)
            os.fdatasync(fd)
        except OSError:
            self._dirty = True
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self.size)
                os.fdatasync(fd)
                self._dirty = False
            raise
        self.size += len(data)

    def truncate(self) -> None:
        """Drop every record (all handled and checkpointed): the header stays."""
        fd = self._require_fd()
        os.ftruncate(fd, self.header_size)
        os.fdatasync(fd)
        self.size, self._dirty = self.header_size, False

    def rewrite(self, lines: list[bytes]) -> None:
        """Keep only ``lines`` (the unhandled records), atomically."""
        self._replace_with(lines)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _header(self) -> bytes:
        meta = {"app_id": self.app_id, "generation": self.generation}
        return f"{FORMAT} {json.dumps(meta, separators=(',', ':'))}\n".encode()

    def _replace_with(self, lines: list[bytes]) -> None:
        header = self._header()
        data = header + b"".join(lines)
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self._tmp, self.path)
        fsync_dir(self.directory)
        self.close()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self.header_size, self.size, self._dirty = len(header), len(data), False

    def _require_fd(self) -> int:
        if self._fd is None:
            raise OSError(f"{self.path} is not open")
        return self._fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@dataclass(slots=True)
class _Entry:
    event: GatewayEvent
    body: bytes
    done: asyncio.Future[bool]


class IntakeJournal:
    """The event loop's side of the journal; see the module docstring.

    ``deliver`` puts an event into the handler queue; ``handled()`` counts the events the
    handlers have finished (the checkpoint's :class:`~.checkpoint.Progress`); ``forget(id)``
    takes an event id out of the dedupe window after a failed append.
    """

    def __init__(
        self,
        file: JournalFile,
        *,
        bus: ev.EventBus,
        deliver: Callable[[GatewayEvent], None],
        handled: Callable[[], int],
        forget: Callable[[str], None],
        shard: int = 0,
        compact_at: int = COMPACT_AT,
    ) -> None:
        self.file = file
        self.shard = shard
        self._bus = bus
        self._deliver = deliver
        self._handled = handled
        self._forget = forget
        self._compact_at = compact_at
        self._loop = asyncio.get_running_loop()
        self._batch: list[_Entry] = []
        self._writing = 0
        self._wake = asyncio.Event()
        self._pending: dict[str, asyncio.Future[bool]] = {}
        self._next_n = 1
        #: Record numbers handed to the handlers and not yet handled, in order.
        self._delivered: deque[int] = deque()
        self._popped = 0  # how many of the handled count were matched to a record
        self._done = 0  # the last record delivered or skipped
        #: Records in the file past the durable watermark: kept for a compaction's rewrite.
        self._live: deque[tuple[int, bytes]] = deque()
        self._live_bytes = 0
        self._durable = 0
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._failing = False

    # --- start ---------------------------------------------------------------------------
    def restore(self, recovery: Recovery, watermark: tuple[str | None, int]) -> list[JournalRecord]:
        """Adopt the opened journal; returns the records to re-deliver (past the watermark,
        which applies only to the same generation). Call :meth:`replayed` or :meth:`skipped`
        for each, in order."""
        generation, seq = watermark
        done = seq if generation == self.file.generation else 0
        last = recovery.records[-1].n if recovery.records else 0
        todo = [r for r in recovery.records if r.n > done]
        self._done = done
        self._durable = done
        self._next_n = max(last, done) + 1
        for record in todo:
            line = record.line()
            self._live.append((record.n, line))
            self._live_bytes += len(line)
        return todo

    def replayed(self, record: JournalRecord, event: GatewayEvent) -> None:
        self._delivered.append(record.n)
        self._done = record.n
        self._deliver(replace(event, replayed=True))

    def skipped(self, record: JournalRecord) -> None:
        self._done = record.n

    def start(self) -> None:
        self._task = asyncio.create_task(self._writer(), name=f"qqbot journal shard {self.shard}")

    # --- intake --------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Records submitted and not yet durable (they join the handler queue when they are)."""
        return len(self._batch) + self._writing

    def pending(self, event_id: str) -> asyncio.Future[bool] | None:
        """The append in flight for ``event_id`` (shielded: see :meth:`submit`)."""
        done = self._pending.get(event_id)
        return None if done is None else asyncio.shield(done)

    def submit(self, event: GatewayEvent, body: bytes) -> asyncio.Future[bool]:
        """Queue ``event`` (its raw ``body``) for the next group commit; the future says
        whether it is durable (and then in the handler queue). Each caller gets its own
        shield: cancelling a waiter (a request whose client went away) never cancels the
        append that duplicates may be waiting for too."""
        done: asyncio.Future[bool] = self._loop.create_future()
        event_id = event.event_id
        if self._closing or self._task is None or self._task.done():
            done.set_result(False)
            if event_id is not None:
                self._forget(event_id)
            return done
        self._batch.append(_Entry(event, one_line(body), done))
        if event_id is not None:
            self._pending[event_id] = done
        self._wake.set()
        return asyncio.shield(done)

    # --- the watermark -------------------------------------------------------------------
    def position(self) -> tuple[str | None, int]:
        """(generation, record number) up to which every record is handled."""
        handled, delivered = self._handled(), self._delivered
        while self._popped < handled and delivered:
            delivered.popleft()
            self._popped += 1
        watermark = delivered[0] - 1 if delivered else self._done
        return self.file.generation, watermark

    def checkpoint_written(self, seq: int) -> None:
        """A checkpoint covering record ``seq`` is durable (the checkpointer's direct call,
        ``on_written``): the records it covers leave the live set, and may be compacted."""
        self._durable = max(self._durable, seq)
        live = self._live
        while live and live[0][0] <= self._durable:
            self._live_bytes -= len(live.popleft()[1])
        if self._garbage() >= self._compact_at:
            self._wake.set()

    def _garbage(self) -> int:
        """Bytes of records in the file that a durable checkpoint covers."""
        return self.file.size - self.file.header_size - self._live_bytes

    # --- the writer ----------------------------------------------------------------------
    async def _writer(self) -> None:
        await asyncio.to_thread(int)  # start the worker thread now, not under the first load
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._batch:
                await self._commit()
            # Even with callbacks waiting: under a steady flood the batch is never empty here,
            # and the file must stay bounded. They wait for one rewrite, once per COMPACT_AT.
            if self._garbage() >= self._compact_at:
                await self._compact()
            if self._closing and not self._batch:
                return

    async def _commit(self) -> None:
        batch, self._batch = self._batch, []
        self._writing = len(batch)
        first = self._next_n
        records = [(first + i, e) for i, e in enumerate(batch)]
        lines = [JournalRecord(n, e.body).line() for n, e in records]
        started = self._loop.time()
        try:
            await asyncio.to_thread(self.file.append, b"".join(lines))
        except Exception as exc:  # noqa: BLE001 - reported; the platform retries every record
            self._writing = 0
            self._on_failure(exc, batch)
            return
        now = self._loop.time()
        self._writing = 0
        self._next_n = first + len(batch)
        if self._failing:
            _log.info("webhook journal: appends succeed again")
            self._failing = False
        for (n, entry), line in zip(records, lines, strict=True):
            self._live.append((n, line))
            self._live_bytes += len(line)
            self._delivered.append(n)
            self._done = n
            self._deliver(entry.event)
            self._settle(entry, True)
        self._bus.emit(
            ev.JournalWritten(
                shard=self.shard, monotonic=now, records=len(batch), duration=now - started
            )
        )

    def _on_failure(self, exc: Exception, batch: list[_Entry]) -> None:
        if not self._failing:
            _log.warning(
                "webhook journal: cannot append to %s (%s); answering 503 so that the platform "
                "retries; retrying with the next callback",
                self.file.location,
                f"{type(exc).__name__}: {exc}" if not isinstance(exc, OSError) else exc,
            )
            self._failing = True
        for entry in batch:
            if entry.event.event_id is not None:
                self._forget(entry.event.event_id)
            self._settle(entry, False)

    def _settle(self, entry: _Entry, ok: bool) -> None:
        event_id = entry.event.event_id
        if event_id is not None and self._pending.get(event_id) is entry.done:
            del self._pending[event_id]
        if not entry.done.done():
            entry.done.set_result(ok)

    async def _compact(self) -> None:
        lines = [line for _, line in self._live]
        try:
            if lines:
                await asyncio.to_thread(self.file.rewrite, lines)
            else:
                await asyncio.to_thread(self.file.truncate)
        except OSError as exc:
            _log.warning("webhook journal: cannot compact %s: %s", self.file.location, exc)

    # --- shutdown ------------------------------------------------------------------------
    async def flush(self) -> None:
        """Stop taking records; wait until the submitted ones are written (or failed)."""
        self._closing = True
        self._wake.set()
        task = self._task
        if task is not None and not task.done():
            await asyncio.shield(task)

    async def close(self) -> None:
        """After the handlers drained and the final checkpoint: drop what it covers, close."""
        await self.flush()
        try:
            if not self._live and self.file.size > self.file.header_size:
                await asyncio.to_thread(self.file.truncate)
        except OSError as exc:
            _log.warning("webhook journal: cannot truncate %s: %s", self.file.location, exc)
        finally:
            await asyncio.to_thread(self.file.close)
