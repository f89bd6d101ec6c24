"""A NoneBot2 bot (``tests/nonebot_app``) in a subprocess against the simulator in this process.

NoneBot's ``nonebot.init()`` is process-global state, and a NoneBot user runs ``bot.py`` as a
process: so each test starts one, configured the way a NoneBot user configures the QQ adapter
(``DRIVER``, ``QQ_BOTS``, ``QQ_API_BASE``, ``QQ_AUTH_BASE`` in the environment), and reads the
plugin's JSON lines on stdout. Shared by the tests and ``benchmarks/bench_nonebot.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from qqbot_gateway.simulator import Simulator
from tests.gateway_harness import APP_ID, SECRET, poll_until

ROOT = Path(__file__).resolve().parent.parent
DRIVERS = {"aiohttp": "~aiohttp", "httpx+websockets": "~httpx+~websockets"}
#: The intents a user sets for C2C, group @, guild @ and DMs.
INTENT = {"c2c_group_at_messages": True, "direct_message": True, "at_messages": True}
_CST = timezone(timedelta(hours=8))


def bot_env(
    sim: Simulator,
    *,
    adapter: str = "gateway",
    driver: str = "~aiohttp",
    plugin: str = "echo",
    state_dir: Path | None = None,
    secret: str = SECRET,
    use_websocket: bool = True,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a NoneBot process: NoneBot's own keys and, for ours, QQBOT_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QQBOT_", "QQ_"))}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "ENVIRONMENT": "prod",
            "DRIVER": driver,
            "LOG_LEVEL": "INFO",
            "NB_ADAPTER": adapter,
            "NB_PLUGIN": plugin,
            "QQ_BOTS": json.dumps(
                [
                    {
                        "id": APP_ID,
                        "secret": secret,
                        "intent": INTENT,
                        "shard": [0, 1],
                        "use_websocket": use_websocket,
                    }
                ]
            ),
            "QQ_API_BASE": sim.base_url + "/",
            "QQ_AUTH_BASE": sim.token_url,
            "QQBOT_STATE_DIR": str(state_dir) if state_dir is not None else "off",
        }
    )
    env.update(extra or {})
    return env


class NoneBotProcess:
    """``python -m tests.nonebot_app.bot`` with its stdout records and stderr lines."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.records: list[dict[str, Any]] = []
        self.log: list[str] = []
        self._readers: list[asyncio.Task[None]] = []

    async def start(self) -> NoneBotProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.nonebot_app.bot",
            cwd=str(ROOT),
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read(self.proc.stdout, self._record), name="nb stdout"),
            asyncio.create_task(self._read(self.proc.stderr, self.log.append), name="nb stderr"),
        ]
        return self

    @staticmethod
    async def _read(stream: asyncio.StreamReader, sink: Callable[[str], None]) -> None:
        while line := await stream.readline():
            sink(line.decode("utf-8", "replace").rstrip("\n"))

    def _record(self, line: str) -> None:
        try:
            record = json.loads(line)
        except ValueError:
            self.log.append(line)
            return
        if isinstance(record, dict):
            self.records.append(record)

    # --- what the plugin saw -------------------------------------------------------------
    def hooks(self) -> list[str]:
        return [r["hook"] for r in self.records if "hook" in r]

    def handled(self) -> list[str]:
        return [r["event"] for r in self.records if "event" in r]

    def last(self, key: str) -> dict[str, Any] | None:
        found = [r for r in self.records if key in r]
        return found[-1] if found else None

    def describe(self) -> str:
        return "records: {}\nlog tail:\n{}".format(self.records[-5:], "\n".join(self.log[-25:]))

    async def until(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        def failed() -> str:
            return f"{what}\n{self.describe()}"

        return await poll_until(predicate, timeout, failed)

    async def connected(self, count: int = 1, timeout: float = 30.0) -> None:
        await self.until(
            lambda: self.hooks().count("connect") >= count, timeout, f"{count} connect hook(s)"
        )

    # --- stopping ------------------------------------------------------------------------
    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the process and wait for it (killed after ``timeout``); its exit status."""
        proc = self.proc
        assert proc is not None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                async with asyncio.timeout(timeout):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for task in self._readers:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await task
        assert proc.returncode is not None
        return proc.returncode


# --- events shaped as QQ sends them (every field nonebot-adapter-qq's models require) ---------


def _ts() -> str:
    return datetime.now(UTC).astimezone(_CST).isoformat(timespec="seconds")


def message(kind: str, index: int, prefix: str = "N") -> tuple[str, dict[str, Any]]:
    """(event type, ``d``) of a user message numbered ``index``; its ``id`` is unique."""
    msg_id = f"{prefix}{kind[:2].upper()}{index:06d}"
    user = f"{prefix}USER{index % 7:04d}"
    text = f"hello {index}"
    scene: dict[str, Any] = {"source": "default", "ext": []}
    if kind == "c2c":
        author: dict[str, Any] = {"id": user, "user_openid": user, "union_openid": user}
        d: dict[str, Any] = {"author": author, "content": text, "id": msg_id, "timestamp": _ts()}
        return "C2C_MESSAGE_CREATE", {**d, "message_scene": scene, "message_type": 0}
    if kind == "group":
        author = {"id": user, "member_openid": user, "bot": False, "member_role": "member"}
        group = f"{prefix}GROUP{index % 3}"
        d = {"author": author, "content": f" {text}", "id": msg_id, "timestamp": _ts()}
        d |= {"group_id": group, "group_openid": group, "message_type": 0}
        return "GROUP_AT_MESSAGE_CREATE", {**d, "message_scene": scene}
    guild_author: dict[str, Any] = {
        "id": str(10**17 + index),
        "username": f"user{index}",
        "bot": False,
    }
    d = {
        "author": guild_author,
        "channel_id": f"{8000 + index % 3}",
        "guild_id": f"{9000 + index % 2}",
        "id": msg_id,
        "member": {"joined_at": _ts(), "roles": ["1"]},
        "seq": index,
        "seq_in_channel": str(index),
        "timestamp": _ts(),
    }
    if kind == "channel":
        return "AT_MESSAGE_CREATE", {**d, "content": f"<@!11111111111111111111> {text}"}
    return "DIRECT_MESSAGE_CREATE", {**d, "content": text, "direct_message": True}


KINDS = ("c2c", "group", "channel", "dms")


async def emit(sim: Simulator, start: int, count: int, prefix: str = "N") -> list[str]:
    """Emit ``count`` user messages (C2C, group @, guild @ and DM in turn); their event ids."""
    ids: list[str] = []
    for index in range(start, start + count):
        kind = KINDS[index % len(KINDS)]
        event_type, data = message(kind, index, prefix)
        event_id = f"{event_type}:{data['id']}"
        await sim.emit_event(event_type, data, event_id=event_id)
        ids.append(event_id)
    return ids


def replied_to(sim: Simulator) -> list[str]:
    """The ``msg_id`` of every passive reply the simulator accepted."""
    return [m.msg_id for m in sim.messages if m.msg_id is not None]
