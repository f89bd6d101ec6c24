"""The real command line, run as subprocesses against the simulator on 127.0.0.1.

Waits poll with generous deadlines (a loaded 2-core machine must pass); every subprocess is
killed in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from qqbot_gateway.adapter.protocol import Intents
from qqbot_gateway.demo import minimum_duration
from qqbot_gateway.simulator import Simulator, SimulatorConfig
from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "qqbot_gateway.cli"]
#: Every test here runs the CLI in a subprocess.
pytestmark = pytest.mark.slow

APP_ID = "102030405"
SECRET = "cli-test-secret-Qw9"
#: Generous: interpreter start plus imports take seconds on a loaded machine.
READY_TIMEOUT = 45.0


async def slow_handler(event: Any) -> None:
    """Loaded by ``run --handler tests.test_cli:slow_handler``: keeps the drain busy."""
    await asyncio.sleep(0.3)


#: Session state of the subprocesses: a fresh directory per environment, so that no test
#: resumes (or contends for the lock of) a session another test left behind.
_STATE_ROOT = tempfile.TemporaryDirectory(prefix="qqbot-test-state-")
_state_dirs = itertools.count()


def clean_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QQBOT_", "OTEL_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env["QQBOT_STATE_DIR"] = os.path.join(_STATE_ROOT.name, str(next(_state_dirs)))
    env.update(overrides)
    return env


def bot_env(base_url: str, http_port: int, **overrides: str) -> dict[str, str]:
    settings = {
        "QQBOT_APP_ID": APP_ID,
        "QQBOT_CLIENT_SECRET": SECRET,
        "QQBOT_API_BASE": base_url,
        "QQBOT_TOKEN_URL": f"{base_url}/app/getAppAccessToken",
        "QQBOT_HTTP_ADDR": f"127.0.0.1:{http_port}",
    }
    return clean_env(**{**settings, **overrides})


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("qqbot-gateway: error:")]


@contextlib.contextmanager
def spawn(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [*CLI, *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=10)


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - 127.0.0.1 only
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def wait_ready(url: str, proc: subprocess.Popen[str], timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"process exited {proc.returncode} before ready:\n{out}\n{err}")
        if http_status(f"{url}/readyz") == 200:
            return
        time.sleep(0.1)
    pytest.fail(f"{url}/readyz never answered 200 within {timeout}s")


async def async_status(http: aiohttp.ClientSession, url: str) -> int | None:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            await resp.read()
            return resp.status
    except (aiohttp.ClientError, TimeoutError):
        return None


async def spawn_cli(
    *args: str, env: dict[str, str], stdout: int = asyncio.subprocess.PIPE
) -> asyncio.subprocess.Process:
    """``qqbot-gateway ARGS`` in a subprocess from the repository root, stderr piped."""
    return await asyncio.create_subprocess_exec(
        *CLI, *args, env=env, cwd=ROOT, stdout=stdout, stderr=asyncio.subprocess.PIPE
    )


async def await_ready(
    http: aiohttp.ClientSession, proc: asyncio.subprocess.Process, url: str
) -> None:
    """Poll ``url``/readyz until it answers 200; fail if the process exits first."""
    async with asyncio.timeout(READY_TIMEOUT):
        while await async_status(http, f"{url}/readyz") != 200:
            assert proc.returncode is None, "run exited before it was ready"
            await asyncio.sleep(0.1)


# --- simple commands ------------------------------------------------------------------------


def test_version() -> None:
    result = run_cli(["--version"], clean_env())
    assert result.returncode == 0
    assert result.stdout.strip() == "qqbot-gateway 0.1.0"


def test_help_lists_the_commands() -> None:
    result = run_cli(["--help"], clean_env())
    assert result.returncode == 0
    for command in ("run", "demo", "simulate", "check"):
        assert command in result.stdout


# --- configuration errors: one clear line, no traceback, non-zero ---------------------------


def _bad_config_cases(tmp_path: Path) -> list[tuple[str, list[str], dict[str, str], int, str]]:
    toml = tmp_path / "bad.toml"
    toml.write_text('app_id = "1"\nshard_cuont = 2\n', encoding="utf-8")
    dead = free_port()  # nothing listens here
    base = f"http://127.0.0.1:{dead}"
    creds = {"QQBOT_APP_ID": APP_ID, "QQBOT_CLIENT_SECRET": SECRET}
    return [
        (
            "missing secret",
            ["run"],
            clean_env(QQBOT_APP_ID=APP_ID),
            2,
            "QQBOT_CLIENT_SECRET: required",
        ),
        (
            "unknown key in TOML",
            ["run", "--config", str(toml)],
            clean_env(QQBOT_CLIENT_SECRET=SECRET),
            2,
            f"shard_cuont (in {toml}): unknown setting (did you mean shard_count?)",
        ),
        (
            "malformed intents",
            ["run"],
            clean_env(**creds, QQBOT_INTENTS="GUILDS,NOT_AN_INTENT"),
            2,
            "QQBOT_INTENTS: unknown intent 'NOT_AN_INTENT'",
        ),
        (
            "handler not importable",
            ["run", "--handler", "no_such_module_x:handle"],
            clean_env(**creds),
            2,
            "--handler 'no_such_module_x:handle': cannot import no_such_module_x",
        ),
        (
            "handler not callable",
            ["run", "--handler", "qqbot_gateway:__version__"],
            clean_env(**creds),
            2,
            "qqbot_gateway.__version__ is not callable",
        ),
        (
            "unreachable token URL",
            ["run"],
            bot_env(base, free_port()),
            1,
            f"cannot get an access token from {base}/app/getAppAccessToken (QQBOT_TOKEN_URL)",
        ),
    ]


def test_bad_configurations(tmp_path: Path) -> None:
    for name, args, env, status, expected in _bad_config_cases(tmp_path):
        result = run_cli(args, env)
        assert result.returncode == status, (name, result.returncode, result.stderr)
        assert "Traceback" not in result.stderr, (name, result.stderr)
        lines = error_lines(result.stderr)
        assert len(lines) == 1, (name, result.stderr)
        assert expected in lines[0], (name, lines[0])
        assert SECRET not in result.stdout + result.stderr, name


def test_port_in_use() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        dead = f"http://127.0.0.1:{free_port()}"
        result = run_cli(["run"], bot_env(dead, port))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port} (QQBOT_HTTP_ADDR)" in lines[0]
    assert "in use" in lines[0]


def test_demo_duration_too_short() -> None:
    result = run_cli(["demo", "--duration", "5", "--non-interactive"], clean_env())
    assert result.returncode == 2
    need = minimum_duration(1.0)
    assert error_lines(result.stderr) == [
        "qqbot-gateway: error: --duration 5 is too short for --interval 1: the fault schedule "
        f"needs at least {need:.0f}s"
    ]


# --- run against an in-test simulator ------------------------------------------------------


async def test_run_serves_probes_and_drains_on_sigterm() -> None:
    config = SimulatorConfig(
        app_id=APP_ID, client_secret=SECRET, heartbeat_interval_ms=500, event_rate=20.0
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with Simulator(config) as sim:
        env = bot_env(sim.base_url, port, QQBOT_DRAIN_TIMEOUT="3", QQBOT_LOG_FORMAT="json")
        proc = await spawn_cli(
            "run", "--print-events", "--handler", "tests.test_cli:slow_handler", env=env
        )
        try:
            async with aiohttp.ClientSession() as http:
                await await_ready(http, proc, url)
                async with http.get(f"{url}/healthz") as resp:
                    assert resp.status == 200
                    body = await resp.json()
                    assert body["status"] == "ok"
                async with http.get(f"{url}/readyz?verbose") as resp:
                    assert resp.status == 200
                    assert "[+]shard/0/ready ok" in await resp.text()
                async with http.get(f"{url}/metrics") as resp:
                    assert resp.status == 200
                    metrics = await resp.text()
                    assert 'qqbot_gateway_connection_state{shard="0",state="ready"} 1.0' in metrics
                    assert "qqbot_gateway_heartbeats_sent_total" in metrics
                # Events pile up behind the slow handler, so the drain takes a while.
                await sim.wait_for(lambda: len(sim.emitted_events()) >= 20, timeout=30)
                proc.send_signal(signal.SIGTERM)
                statuses: list[int | None] = []
                async with asyncio.timeout(30):
                    while proc.returncode is None:
                        status = await async_status(http, f"{url}/readyz")
                        statuses.append(status)
                        if status is None:
                            break
                        await asyncio.sleep(0.02)
            # 503 from the signal on (never 200 again), while the handlers still drain.
            assert 503 in statuses, statuses
            assert 200 not in statuses[statuses.index(503) :], statuses
            async with asyncio.timeout(30):
                out, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, err.decode()
    text = err.decode()
    assert "Traceback" not in text
    assert SECRET not in text and SECRET not in out.decode()
    events = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    assert events and events[0]["type"] == "READY"
    assert any(e["type"] != "READY" and e["seq"] is not None for e in events)
    assert "readiness is now 503" in text


async def test_second_signal_exits_at_once() -> None:
    config = SimulatorConfig(
        app_id=APP_ID, client_secret=SECRET, heartbeat_interval_ms=500, event_rate=50.0
    )
    port = free_port()
    async with Simulator(config) as sim:
        env = bot_env(sim.base_url, port, QQBOT_DRAIN_TIMEOUT="60")
        proc = await spawn_cli(
            "run",
            "--handler",
            "tests.test_cli:slow_handler",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
        )
        try:
            async with aiohttp.ClientSession() as http:
                await await_ready(http, proc, f"http://127.0.0.1:{port}")
            await sim.wait_for(lambda: len(sim.emitted_events()) >= 20, timeout=30)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)  # now draining for up to 60 s
            assert proc.returncode is None
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(15):
                _, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 130
    assert error_lines(err.decode()) == ["qqbot-gateway: error: second SIGTERM: exiting at once"]


async def test_run_exits_when_every_shard_is_fatal() -> None:
    # The bot asks for GUILDS (part of the default intents) and is not granted it: 4014.
    config = SimulatorConfig(
        app_id=APP_ID,
        client_secret=SECRET,
        heartbeat_interval_ms=500,
        disallowed_intents=int(Intents.GUILDS),
    )
    async with Simulator(config) as sim:
        proc = await spawn_cli("run", env=bot_env(sim.base_url, 0))
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                _, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 1
    text = err.decode()
    assert "Traceback" not in text
    lines = error_lines(text)
    assert len(lines) == 1, text
    assert "every shard stopped for good: shard 0:" in lines[0]


# --- simulate + run (+ check) in separate processes ------------------------------------------


def _read_exports(proc: subprocess.Popen[str], timeout: float = READY_TIMEOUT) -> dict[str, str]:
    assert proc.stdout is not None
    exports: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while "QQBOT_TOKEN_URL" not in exports:
        assert time.monotonic() < deadline, "simulate never printed its settings"
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"simulate exited: {proc.wait()}")
        text = line.strip()
        if text.startswith("export "):
            key, _, value = text[len("export ") :].partition("=")
            exports[key] = value
    return exports


def test_simulate_and_run_interoperate() -> None:
    with spawn(
        ["simulate", "--port", "0", "--heartbeat-interval", "500", "--event-rate", "5"],
        clean_env(),
    ) as simulator:
        exports = _read_exports(simulator)
        assert exports["QQBOT_API_BASE"].startswith("http://127.0.0.1:")
        port = free_port()
        env = clean_env(**exports, QQBOT_HTTP_ADDR=f"127.0.0.1:{port}")
        with spawn(["run"], env) as bot:
            wait_ready(f"http://127.0.0.1:{port}", bot)
            assert http_status(f"http://127.0.0.1:{port}/healthz") == 200
            bot.send_signal(signal.SIGTERM)
            bot.wait(timeout=30)
            assert bot.returncode == 0
        # check: token, /gateway/bot, one session.
        result = run_cli(["check"], clean_env(**exports))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "READY as simulated-bot" in result.stdout
        assert "All checks passed" in result.stdout
        assert exports["QQBOT_CLIENT_SECRET"] not in result.stdout
        # check with a wrong secret: exit 2, one line naming the problem.
        wrong = clean_env(**{**exports, "QQBOT_CLIENT_SECRET": "wrong-secret"})
        result = run_cli(["check"], wrong)
        assert result.returncode == 2
        assert len(error_lines(result.stderr)) == 1
        assert "bad credentials" in error_lines(result.stderr)[0]
        simulator.send_signal(signal.SIGTERM)
        simulator.wait(timeout=15)
        assert simulator.returncode == 0


def test_check_unreachable() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    env = clean_env(
        QQBOT_APP_ID=APP_ID,
        QQBOT_CLIENT_SECRET=SECRET,
        QQBOT_API_BASE=dead,
        QQBOT_TOKEN_URL=f"{dead}/app/getAppAccessToken",
    )
    result = run_cli(["check"], env)
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "unreachable" in lines[0], result.stderr
