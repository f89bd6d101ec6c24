"""Session store: what a shard needs to resume its gateway session from another process.

Per shard it keeps the session id, the *handled* sequence watermark (see
:mod:`~.checkpoint`), the recent event ids used for deduplication, and when it was written.
The store is a small protocol (:class:`SessionStore`) so that another backend (Redis, a
database row) can be plugged in; :class:`FileSessionStore` is the embedded default.

Why here and not in ``telemetry/store.py`` (where the first layout sketch put it): telemetry
observes and never steers (DESIGN principle 4), while the store decides whether a shard sends
Resume or Identify. It is the adapter's own state, written with nothing but the standard
library, so it lives next to the session it restores; the adapter still imports no telemetry.

The file backend, per shard, in ``<state dir>/<app id>/``:

* ``shard-<id>.json``: the state. Written atomically: a temporary file in the same directory,
  ``fsync``, ``rename`` over the old file, ``fsync`` of the directory. A crash at any point
  leaves either the old state or the new one, never a mix; a stray ``.tmp`` file from a crash
  is ignored (and replaced by the next write).
* ``shard-<id>.lock``: an exclusive ``flock`` held for the life of the process, with the
  holder's pid written in it. The kernel releases it when the process dies, however it dies,
  so there are no stale locks to clean up. Two processes can never resume the same session.

Errors (one tree)::

    StoreError                 the state cannot be read or written
     +-- StoreLockedError      another live process owns this shard's state (``holder_pid``)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from .errors import StoreError, StoreLockedError

__all__ = [
    "FORMAT",
    "FileSessionStore",
    "SessionStore",
    "StoreError",
    "StoreLockedError",
    "StoredSession",
    "age_of",
    "fsync_dir",
]

#: The ``format`` field of a state file; a file with another value is not ours (or too new).
FORMAT: Final = "qqbot-gateway-session/1"
#: A state file larger than this is not one of ours (4096 ids of ~40 characters is ~200 kB).
_MAX_FILE_SIZE: Final = 4 << 20


@dataclass(frozen=True, slots=True)
class StoredSession:
    """One shard's resumable session, as persisted."""

    app_id: str
    shard_id: int
    shard_count: int
    session_id: str
    #: Every event up to this sequence number has been handled (or dropped as a duplicate).
    seq: int
    #: Ids of the most recently handled events, oldest first.
    event_ids: tuple[str, ...]
    #: Unix time of the write.
    written_at: float

    def to_json(self) -> bytes:
        body = {
            "format": FORMAT,
            "app_id": self.app_id,
            "shard": [self.shard_id, self.shard_count],
            "session_id": self.session_id,
            "seq": self.seq,
            "event_ids": list(self.event_ids),
            "written_at": self.written_at,
        }
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> StoredSession:
        """Parse and validate; ``ValueError`` with a short reason if the content is not usable."""
        if not raw.strip():
            raise ValueError("the file is empty")
        try:
            d: Any = json.loads(raw)
        except (ValueError, RecursionError):
            raise ValueError("not valid JSON (truncated or corrupt)") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        shard = d.get("shard")
        ids = d.get("event_ids")
        ok = (
            isinstance(d.get("app_id"), str)
            and isinstance(shard, list)
            and len(shard) == 2
            and all(_is_int(x) for x in shard)
            and isinstance(d.get("session_id"), str)
            and d["session_id"] != ""
            and _is_int(d.get("seq"))
            and d["seq"] >= 0
            and isinstance(ids, list)
            and all(isinstance(x, str) for x in ids)
            and isinstance(d.get("written_at"), int | float)
            and not isinstance(d.get("written_at"), bool)
        )
        if not ok or not isinstance(shard, list) or not isinstance(ids, list):
            raise ValueError("fields missing or of the wrong type")
        return cls(
            app_id=d["app_id"],
            shard_id=shard[0],
            shard_count=shard[1],
            session_id=d["session_id"],
            seq=d["seq"],
            event_ids=tuple(ids),
            written_at=float(d["written_at"]),
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class SessionStore(Protocol):
    """One shard's session state. ``save`` and ``load`` may block (file or network I/O): the
    adapter calls them from a worker thread, never on the event loop's read path."""

    def acquire(self) -> None:
        """Become the only owner of this shard's state, or raise :class:`StoreLockedError`."""

    def load(self) -> StoredSession | None:
        """The stored state; None if there is none; :class:`StoreError` if it is unreadable."""

    def save(self, state: StoredSession) -> None:
        """Persist ``state`` durably and atomically; :class:`StoreError` on failure."""

    def clear(self) -> None:
        """Delete the state (the session was ended on purpose)."""

    def close(self) -> None:
        """Release ownership. Idempotent."""

    @property
    def location(self) -> str:
        """Where the state lives, for log lines (never a secret)."""


class FileSessionStore:
    """The embedded default: one JSON file per shard, one lock file per shard."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        app_id: str,
        shard_id: int,
        *,
        stem: str | None = None,
    ) -> None:
        #: ``stem`` names the files (default ``shard-<id>``; the webhook transport's is
        #: ``webhook``, next to its intake journal: see :mod:`.journal`).
        name = stem or f"shard-{shard_id}"
        self.directory = Path(directory) / _safe_name(app_id)
        self.path = self.directory / f"{name}.json"
        self.lock_path = self.directory / f"{name}.lock"
        self._tmp = self.directory / f".{name}.json.tmp"
        self._lock_fd: int | None = None

    @property
    def location(self) -> str:
        return str(self.path)

    # --- ownership -----------------------------------------------------------------------
    def acquire(self) -> None:
        if self._lock_fd is not None:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot create {self.lock_path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f"pid {holder}" if holder is not None else "another process"
                raise StoreLockedError(
                    f"shard state {self.path} is in use by {who}",
                    holder_pid=holder,
                    path=str(self.lock_path),
                ) from None
            raise StoreError(f"cannot lock {self.lock_path}: {exc.strerror or exc}") from None
        # Ours now: record our pid for the next process's error message.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def close(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # releases the flock

    # --- state ---------------------------------------------------------------------------
    def load(self) -> StoredSession | None:
        try:
            with self.path.open("rb") as fh:
                raw = fh.read(_MAX_FILE_SIZE + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        if len(raw) > _MAX_FILE_SIZE:
            raise StoreError(f"{self.path}: larger than {_MAX_FILE_SIZE} bytes, not a state file")
        try:
            return StoredSession.from_json(raw)
        except ValueError as exc:
            raise StoreError(f"{self.path}: {exc}") from None

    def save(self, state: StoredSession) -> None:
        data = state.to_json()
        try:
            self._write_atomically(data)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._tmp.unlink()
            raise StoreError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def clear(self) -> None:
        for path in (self.path, self._tmp):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise StoreError(f"cannot delete {path}: {exc.strerror or exc}") from None
        with contextlib.suppress(OSError):
            fsync_dir(self.directory)

    def _write_atomically(self, data: bytes) -> None:
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            self._write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self._tmp, self.path)
        fsync_dir(self.directory)

    @staticmethod
    def _write_all(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (the directory entry is data too)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _safe_name(app_id: str) -> str:
    """The app id as a directory name: app ids are digits; anything else is made harmless."""
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in app_id.strip())
    return cleaned.strip(".") or "_"


def age_of(state: StoredSession, now: float | None = None) -> float:
    """Seconds since ``state`` was written (0 if its clock is ahead of ours)."""
    return max(0.0, (time.time() if now is None else now) - state.written_at)
