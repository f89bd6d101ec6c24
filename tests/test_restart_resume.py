"""The session outlives the process: ``qqbot-gateway run`` killed and restarted mid-stream.

Real sockets: the simulator runs in the test on 127.0.0.1 and sends 20 events/s; the adapter
runs as ``python -m qqbot_gateway.cli run --print-events`` subprocesses sharing one state
directory. Every case counts event ids across both processes: *lost* = emitted by the
simulator and printed by neither process, *duplicated* = printed more than once. The figures
are printed (``-s``) for the report in docs/reliability.md.

Where a duplicate is allowed (SIGKILL), it must be inside the documented window: its sequence
number is above the watermark that was durable in the state file at the moment of the kill.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from qqbot_gateway.simulator import Simulator, SimulatorConfig
from tests.ports import free_port

from .proc_harness import CliProcess
from .test_cli import APP_ID, SECRET, bot_env

#: Every test here runs the service in subprocesses and kills them.
pytestmark = pytest.mark.slow

RATE = 20.0
#: Interpreter start plus imports on a loaded 2-core machine.
START_TIMEOUT = 60.0
LIFECYCLE = {"READY", "RESUMED"}


class Bot(CliProcess):
    """One ``run --print-events`` process; stdout parsed as it comes."""

    prefix = ("run", "--print-events")

    @property
    def handled(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] not in LIFECYCLE]

    def saw(self, event_type: str) -> bool:
        return any(e["type"] == event_type for e in self.events)


class Case:
    """The simulator, a state directory and the bots of one test case."""

    def __init__(self, sim: Simulator, state_dir: Path) -> None:
        self.sim = sim
        self.state_dir = state_dir
        self.bots: list[Bot] = []

    def env(self, **overrides: str) -> dict[str, str]:
        settings = {
            "QQBOT_STATE_DIR": str(self.state_dir),
            "QQBOT_DRAIN_TIMEOUT": "10",
            "QQBOT_LOG_FORMAT": "console",
        }
        return bot_env(self.sim.base_url, free_port(), **{**settings, **overrides})

    async def bot(self, *args: str, **env: str) -> Bot:
        bot = Bot(self.env(**env), *args)
        self.bots.append(bot)
        return await bot.start()

    @property
    def state_file(self) -> Path:
        return self.state_dir / APP_ID / "shard-0.json"

    def durable_seq(self) -> int:
        """The watermark in the state file now (0 if none)."""
        try:
            return int(json.loads(self.state_file.read_text())["seq"])
        except (OSError, ValueError, KeyError):
            return 0

    async def streaming(self, bot: Bot, n: int) -> None:
        """Wait until ``bot`` handled ``n`` events (the stream flows through it)."""
        await bot.wait(lambda: len(bot.handled) >= n, f"{n} events handled", START_TIMEOUT)

    async def drain_and_count(
        self, last: Bot, label: str, *, gone: frozenset[str | None] = frozenset()
    ) -> tuple[int, int, list[int]]:
        """Stop the stream, wait for ``last`` to print everything (but ``gone``: events known to
        be lost, waited for only a moment), count lost and duplicated.

        Returns (lost, duplicated, seqs of the duplicates)."""
        self.sim.pause_events()
        emitted = {r.event_id for r in self.sim.emitted_events(shard=0)}

        def printed() -> set[str | None]:
            return {e["id"] for b in self.bots for e in b.handled}

        with contextlib.suppress(BaseException):
            await last.wait(lambda: emitted - gone <= printed(), "every event printed", 30.0)
        if gone:
            await asyncio.sleep(1.0)  # one of them printed late (it must not be) shows by now
        counts = collections.Counter(e["id"] for b in self.bots for e in b.handled)
        lost = len(emitted - set(counts))
        dups = [e["seq"] for b in self.bots for e in b.handled if counts[e["id"]] > 1]
        duplicated = sum(n - 1 for n in counts.values() if n > 1)
        print(
            f"\n[restart] {label}: emitted {len(emitted)}, lost {lost}, duplicated {duplicated}",
            flush=True,
        )
        return lost, duplicated, dups

    async def resume_after_kill(self, durable: int, label: str) -> None:
        """A new process resumes; nothing is lost, and every duplicate is in the documented
        window: above the watermark that was durable at the kill."""
        bot = await self.bot()
        await bot.wait(lambda: bot.saw("RESUMED"), "RESUMED", START_TIMEOUT)
        lost, _, dups = await self.drain_and_count(bot, label)
        assert lost == 0
        assert all(seq > durable for seq in dups), (durable, dups)


@pytest.fixture
async def case(tmp_path: Path) -> AsyncIterator[Case]:
    config = SimulatorConfig(
        app_id=APP_ID,
        client_secret=SECRET,
        heartbeat_interval_ms=1000,
        event_rate=RATE,
        resume_window=120.0,
        seed=9,
    )
    async with Simulator(config) as sim:
        c = Case(sim, tmp_path / "state")
        try:
            yield c
        finally:
            for bot in c.bots:
                await bot.cleanup()


def resumed_from_store(sim: Simulator) -> list[Any]:
    return [r for r in sim.resumes if r.outcome == "resumed"]


async def test_sigterm_then_restart_resumes_and_loses_nothing(case: Case) -> None:
    first = await case.bot()
    await case.streaming(first, 20)
    assert await first.signal(signal.SIGTERM) == 0
    assert any("session kept for the next start" in line for line in first.stderr)
    # The platform view: our close kept the session (4000, not 1000).
    closes = [c.close_code for c in case.sim.connections]
    assert 1000 not in closes, closes
    saved = case.durable_seq()
    assert saved == max(e["seq"] for e in first.handled), "the final checkpoint covers all"
    await asyncio.sleep(1.0)  # events keep coming while no process is connected
    second = await case.bot()
    await second.wait(lambda: second.saw("RESUMED"), "RESUMED", START_TIMEOUT)
    assert [r.seq for r in resumed_from_store(case.sim)] == [saved]
    lost, duplicated, _ = await case.drain_and_count(second, "SIGTERM + restart")
    assert (lost, duplicated) == (0, 0)
    assert not second.saw("READY"), "resumed, never identified"


async def test_end_session_closes_with_1000_and_deletes_the_state(case: Case) -> None:
    first = await case.bot("--end-session")
    await case.streaming(first, 5)
    assert await first.signal(signal.SIGTERM) == 0
    assert not case.state_file.exists(), "the state is deleted"
    assert [c.close_code for c in case.sim.connections] == [1000]
    assert [s.state for s in case.sim.sessions()] == ["invalidated"]
    second = await case.bot()
    await second.wait(lambda: second.saw("READY"), "READY", START_TIMEOUT)
    assert not case.sim.resumes, "a new start identifies: there was nothing to resume"
    assert not [line for line in second.stderr if "WARNING" in line.upper()], second.stderr


async def test_sigkill_then_restart_loses_nothing(case: Case) -> None:
    first = await case.bot()
    await case.streaming(first, 20)
    assert await first.signal(signal.SIGKILL) == -signal.SIGKILL
    durable = case.durable_seq()
    assert durable > 0
    await asyncio.sleep(1.0)
    await case.resume_after_kill(durable, "SIGKILL + restart")


async def test_sigkill_with_events_in_the_handler_queue(case: Case) -> None:
    first = await case.bot("--handler", "tests.restart_handlers:slow")
    await case.streaming(first, 10)
    await asyncio.sleep(1.5)  # 20/s in, ~6.7/s out: the queue fills
    assert await first.signal(signal.SIGKILL) == -signal.SIGKILL
    durable = case.durable_seq()
    written = [w.seq for w in case.sim.written_events(shard=0) if w.seq is not None]
    queued = max(written) - max(e["seq"] for e in first.handled)
    assert queued >= 5, f"the queue held {queued} events at the kill"
    await case.resume_after_kill(durable, f"SIGKILL with {queued} events in the handler queue")


async def test_sigkill_during_a_checkpoint_write(case: Case, tmp_path: Path) -> None:
    marker = tmp_path / "stalled"
    first = await case.bot(
        "--handler",
        "tests.restart_handlers:stall_store",
        QQBOT_TEST_STALL_MARKER=str(marker),
        QQBOT_TEST_STALL_AFTER="6",
    )
    await first.wait(marker.exists, "a checkpoint write in progress", START_TIMEOUT)
    await asyncio.sleep(0.5)  # handled events pile up behind the stalled write
    assert await first.signal(signal.SIGKILL) == -signal.SIGKILL
    temp = case.state_file.with_name(".shard-0.json.tmp")
    assert temp.exists(), "the kill interrupted a write"
    json.loads(case.state_file.read_text())  # the previous state is whole
    durable = case.durable_seq()
    await case.resume_after_kill(durable, "SIGKILL during a checkpoint write")


async def test_corrupt_and_foreign_state_files_mean_a_fresh_identify(case: Case) -> None:
    case.state_file.parent.mkdir(parents=True)
    for label, content in (
        ("truncated", '{"format": "qqbot-gateway-session/1", "app_id": "10'),
        (
            "foreign app id",
            json.dumps(
                {
                    "format": "qqbot-gateway-session/1",
                    "app_id": "999",
                    "shard": [0, 1],
                    "session_id": "not-ours",
                    "seq": 5,
                    "event_ids": [],
                    "written_at": 1e12,
                }
            ),
        ),
    ):
        case.state_file.write_text(content)
        bot = await case.bot()
        await bot.wait(partial(bot.saw, "READY"), f"READY after a {label} file", START_TIMEOUT)
        warnings = await bot.stderr_lines("not resuming the stored session")
        assert len(warnings) == 1, bot.stderr
        await case.streaming(bot, 5)
        assert await bot.signal(signal.SIGTERM) == 0
        assert json.loads(case.state_file.read_text())["app_id"] == APP_ID
    assert not case.sim.resumes, "nothing unusable was resumed"


async def test_two_processes_on_one_shard(case: Case) -> None:
    first = await case.bot()
    await case.streaming(first, 10)
    second = await case.bot()
    assert await second.exit_code(START_TIMEOUT) == 2
    errors = [line for line in second.stderr if line.startswith("qqbot-gateway: error:")]
    assert len(errors) == 1 and f"pid {first.proc.pid}" in errors[0], second.stderr  # type: ignore[union-attr]
    assert not second.events
    # A third one waits for the lock, then resumes where the first one stopped.
    third = await case.bot(QQBOT_STATE_LOCK="wait")
    await third.wait(
        lambda: any("waiting for it to exit" in line for line in third.stderr),
        "a waiting line",
        START_TIMEOUT,
    )
    assert not third.events
    assert await first.signal(signal.SIGTERM) == 0
    await third.wait(lambda: third.saw("RESUMED"), "RESUMED", START_TIMEOUT)
    lost, duplicated, _ = await case.drain_and_count(third, "second process waits for the lock")
    assert (lost, duplicated) == (0, 0)
    assert len(case.sim.sessions_created) == 1


async def test_an_expired_session_identifies_with_a_warning_and_a_metric(case: Case) -> None:
    case.sim.config.resume_window = 1.0
    first = await case.bot()
    await case.streaming(first, 10)
    assert await first.signal(signal.SIGTERM) == 0
    saved = case.durable_seq()
    assert saved == max(e["seq"] for e in first.handled), "the final checkpoint covers all"
    await asyncio.sleep(2.0)  # past the simulator's resume window
    env_port = free_port()
    second = await case.bot(QQBOT_HTTP_ADDR=f"127.0.0.1:{env_port}")
    await second.wait(lambda: second.saw("READY"), "READY", START_TIMEOUT)
    warnings = await second.stderr_lines("could not be resumed")
    assert len(warnings) == 1 and "may be missed" in warnings[0], second.stderr
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{env_port}/metrics") as resp:
            text = await resp.text()
    assert 'qqbot_gateway_restart_resumes_total{outcome="refused",shard="0"} 1.0' in text
    assert [r.outcome for r in case.sim.resumes] == ["expired"]
    # The events the expired session took with it: every one past the checkpoint saved at the
    # SIGTERM. That is more than the simulator's "dropped" (never written to a socket): frames
    # it wrote while our close handshake was under way were never read, and are not covered
    # by the checkpoint, so a resume would have replayed them; an expired session cannot.
    expired = case.sim.sessions_created[0]
    gap = {
        r.event_id for r in case.sim.emitted_events(shard=0, session_id=expired) if r.seq > saved
    }
    assert {r.event_id for r in case.sim.dropped_events(shard=0)} <= gap
    lost, duplicated, _ = await case.drain_and_count(
        second, "expired session (op 9 -> Identify)", gone=frozenset(gap)
    )
    printed = {e["id"] for b in case.bots for e in b.handled}
    emitted = {r.event_id for r in case.sim.emitted_events(shard=0)}
    assert emitted - printed == gap != set(), "exactly the events of the expired session are lost"
    assert lost == len(gap)
    assert duplicated == 0
