"""Handlers that ``qqbot-gateway run --handler`` loads in the restart tests.

* ``slow``: 150 ms per event, so the handler queue holds events when the process is killed.
* ``stall_store``: importing it fault-injects the file store: the Nth checkpoint write
  (``QQBOT_TEST_STALL_AFTER``, default 5) writes half of the temporary file, creates the marker
  file named by ``QQBOT_TEST_STALL_MARKER`` and blocks its worker thread for good, so that the
  test can SIGKILL the process in the middle of a checkpoint write.
* ``journal_fault``: importing it makes webhook intake journal appends fail while the file
  named by ``QQBOT_TEST_JOURNAL_FAULT`` exists.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

from qqbot_gateway.adapter import store as store_mod


async def slow(event: Any) -> None:
    await asyncio.sleep(0.15)


def stall_store(event: Any) -> None:
    """A no-op handler: the fault is installed when this module is imported."""


def _install_stall() -> None:
    marker = os.environ.get("QQBOT_TEST_STALL_MARKER")
    if not marker:
        return
    after = int(os.environ.get("QQBOT_TEST_STALL_AFTER", "5"))
    original = store_mod.FileSessionStore._write_all
    calls = [0]
    forever = threading.Event()

    def write_all(fd: int, data: bytes) -> None:
        calls[0] += 1
        if calls[0] < after:
            original(fd, data)
            return
        original(fd, data[: len(data) // 2])
        os.fsync(fd)
        Path(marker).write_text(str(calls[0]))
        forever.wait()  # the writer thread hangs mid-write until the process is killed

    store_mod.FileSessionStore._write_all = staticmethod(write_all)  # type: ignore[method-assign]


_install_stall()


def journal_fault(event: Any) -> None:
    """A no-op handler: importing it makes webhook journal appends fail while the file named by
    ``QQBOT_TEST_JOURNAL_FAULT`` exists (an I/O error, as from a failing or full disk)."""


def _install_journal_fault() -> None:
    marker = os.environ.get("QQBOT_TEST_JOURNAL_FAULT")
    if not marker:
        return
    from qqbot_gateway.adapter import journal as journal_mod

    original = journal_mod.JournalFile.append

    def append(self: Any, data: bytes) -> None:
        if Path(marker).exists():
            raise OSError(5, "Input/output error (injected)")
        original(self, data)

    journal_mod.JournalFile.append = append  # type: ignore[method-assign]


_install_journal_fault()


async def sluggish(event: Any) -> None:
    """20 ms per event: a webhook replica holds a backlog when it is killed mid-flood."""
    await asyncio.sleep(0.02)
