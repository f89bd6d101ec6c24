"""One ``qqbot-gateway`` CLI process under test, its output read as it comes.

The subprocess side shared by tests/test_restart_resume.py (``Bot``: ``run --print-events``)
and tests/stream_harness.py (``Proc``: ``run`` or ``worker``): stdout is parsed as JSON lines
into ``events`` (other lines are passed over), stderr is kept line by line in ``stderr``, each
by its own task, so a test can wait on either while the process runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Callable
from typing import Any, Self

import pytest

from .test_cli import CLI, ROOT


class CliProcess:
    """``python -m qqbot_gateway.cli <prefix> <args>`` with ``env``, started by ``start()``."""

    #: Arguments every process of the class starts with, before its own ``args``.
    prefix: tuple[str, ...] = ()

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.env = env
        self.args = args
        self.events: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> Self:
        self.proc = await asyncio.create_subprocess_exec(
            *CLI,
            *self.prefix,
            *self.args,
            env=self.env,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self._tasks = [
            asyncio.create_task(self._read(self.proc.stdout, self._on_out)),
            asyncio.create_task(self._read(self.proc.stderr, self.stderr.append)),
        ]
        return self

    @staticmethod
    async def _read(stream: asyncio.StreamReader | None, sink: Callable[[str], None]) -> None:
        assert stream is not None
        while line := await stream.readline():
            sink(line.decode(errors="replace").rstrip("\n"))

    def _on_out(self, line: str) -> None:
        with contextlib.suppress(ValueError):
            self.events.append(json.loads(line))

    async def wait(self, predicate: Callable[[], Any], what: str, timeout: float) -> None:
        """Until ``predicate()`` holds; the test fails with the stderr tail if the process
        ends first or ``timeout`` passes."""
        assert self.proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if self.proc.returncode is not None or loop.time() > deadline:
                tail = "\n".join(self.stderr[-30:])
                pytest.fail(f"{what}: not within {timeout}s (rc {self.proc.returncode}):\n{tail}")
            await asyncio.sleep(0.05)

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.stderr)

    async def stderr_lines(self, text: str, timeout: float = 15.0) -> list[str]:
        """The stderr lines containing ``text``, once there is one or the process has ended.

        stderr is read by its own task, so a line written before an event on stdout can still
        be on its way when the test has seen that event."""
        assert self.proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.logged(text) and loop.time() < deadline:
            if self.proc.returncode is not None:
                await asyncio.gather(*self._tasks)
                break
            await asyncio.sleep(0.05)
        return [line for line in self.stderr if text in line]

    async def signal(self, sig: signal.Signals, timeout: float = 60.0) -> int:
        """Send ``sig`` (unless the process has ended) and wait for its exit and its output."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        return await self.exit_code(timeout)

    async def stop(self, timeout: float = 30.0) -> int:
        return await self.signal(signal.SIGTERM, timeout)

    async def kill(self) -> None:
        """SIGKILL, and wait for the exit (not for the readers)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def exit_code(self, timeout: float) -> int:
        """The exit code, once the process has ended and its output has been read."""
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            rc = await self.proc.wait()
            await asyncio.gather(*self._tasks)
        return rc

    async def cleanup(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            with contextlib.suppress(Exception):
                await self.proc.wait()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
