"""A real ``redis-server`` (Debian's package) for cluster-mode tests, on a free loopback port.

::

    server = RedisServer(tmp_path)        # or the ``redis_server`` fixture in conftest.py
    await server.start()                  # waits until it answers PING
    server.url                            # redis://127.0.0.1:<port>/0
    await server.restart()                # same port, same data dir (AOF: data survives)
    server.pause() / server.resume()      # SIGSTOP / SIGCONT: a server that stops answering
    await server.stop()

Tests that need it skip when ``redis-server`` is not installed (``.ci/run`` installs it). Every
server is started with ``--appendonly yes --appendfsync always`` in its own directory, so a
restart keeps what was acknowledged, as an operator's AOF-backed Redis would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.ports import free_port

__all__ = ["REDIS_SERVER", "RedisServer", "free_port", "needs_redis"]

REDIS_SERVER = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server is not installed (apt-get install redis-server)"
)


class RedisServer:
    def __init__(self, directory: Path, *, port: int | None = None, password: str | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _argv(self) -> list[str]:
        assert REDIS_SERVER is not None
        argv = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        if self.password:
            argv += ["--requirepass", self.password]
        return argv

    async def start(self, timeout: float = 20.0) -> None:
        if REDIS_SERVER is None:
            pytest.skip("redis-server is not installed")
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once; waited on below
            self._argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.proc.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {log}")
            if await self._answers():
                return
            if loop.time() > deadline:
                raise TimeoutError(f"redis-server on port {self.port} did not answer PING")
            await asyncio.sleep(0.05)

    async def _answers(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            if self.password:
                writer.write(f"AUTH {self.password}\r\n".encode())
            writer.write(b"PING\r\n")
            await writer.drain()
            async with asyncio.timeout(2):
                data = b""
                while b"PONG" not in data and b"LOADING" not in data:
                    chunk = await reader.read(100)
                    if not chunk:
                        return False
                    data += chunk
            return b"PONG" in data
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: what was fsynced to the AOF survives, nothing else is flushed."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)

    async def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.terminate()
        try:
            await asyncio.wait_for(asyncio.to_thread(self.proc.wait), 10)
        except TimeoutError:
            self.kill()

    async def restart(self, *, down_for: float = 0.0) -> None:
        """Stop (SIGTERM, AOF flushed), stay down ``down_for`` seconds, start on the same port."""
        await self.stop()
        if down_for:
            await asyncio.sleep(down_for)
        await self.start()
