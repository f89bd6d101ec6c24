"""The service's composition root and shutdown contract, in-process against the simulator.

The subprocess tests in test_cli.py keep covering signals and exit statuses; these drive
``run_service`` and ``check`` directly (a stop event instead of SIGTERM), in about a second.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from qqbot_gateway.config import Settings, load_settings
from qqbot_gateway.service import EXIT_CONFIG, EXIT_OK, ServiceError, check, run_service
from qqbot_gateway.simulator import Simulator, SimulatorConfig, standalone
from tests.ports import free_port

from .test_cli import async_status

APP_ID = "4242"
SECRET = "service-test-secret-Zp3"


def settings_for(sim: Simulator, state_dir: Path, **extra: str) -> Settings:
    env = {
        "QQBOT_APP_ID": APP_ID,
        "QQBOT_CLIENT_SECRET": SECRET,
        "QQBOT_API_BASE": sim.base_url,
        "QQBOT_TOKEN_URL": sim.token_url,
        "QQBOT_HTTP_ADDR": f"127.0.0.1:{free_port()}",
        "QQBOT_STATE_DIR": str(state_dir),
        "QQBOT_DRAIN_TIMEOUT": "3",
        **extra,
    }
    return load_settings(None, env=env, warn=lambda line: None)


def sim_config(**kw: Any) -> SimulatorConfig:
    return SimulatorConfig(
        app_id=APP_ID, client_secret=SECRET, heartbeat_interval_ms=500, event_rate=20.0, **kw
    )


async def test_run_service_serves_then_keeps_the_session_on_stop(tmp_path: Path) -> None:
    handled: list[Any] = []
    async with Simulator(sim_config()) as sim:
        settings = settings_for(sim, tmp_path)
        assert settings.http_addr is not None
        readyz = "http://{}:{}/readyz".format(*settings.http_addr)
        stop = asyncio.Event()
        service = asyncio.create_task(
            run_service(settings, [handled.append], stop=stop, signals=False)
        )
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(30):
                while await async_status(http, readyz) != 200:
                    assert not service.done(), service.result()
                    await asyncio.sleep(0.05)
            await sim.wait_for(lambda: len(handled) >= 5, timeout=30)
            stop.set()
            async with asyncio.timeout(30):
                assert await service == EXIT_OK
            # The side server is gone with the service.
            assert await async_status(http, readyz) is None
        closes = [c.close_code for c in sim.connections if c.closed_by == "client"]
        # The contract: close 4000, so the stored session stays resumable.
        assert closes == [4000], sim.connections
        (session_id,) = sim.sessions_created
    # The final checkpoint names the session the next start resumes.
    stored = [p.read_text() for p in tmp_path.glob("*/shard-0.json")]  # noqa: ASYNC240 - done
    assert len(stored) == 1 and session_id in stored[0], stored
    events = [e for e in handled if e.type != "READY"]
    assert events and all(e.seq is not None for e in events)


async def test_run_service_end_session_closes_1000(tmp_path: Path) -> None:
    async with Simulator(sim_config()) as sim:
        stop = asyncio.Event()
        service = asyncio.create_task(
            run_service(settings_for(sim, tmp_path), [], end_session=True, stop=stop, signals=False)
        )
        await sim.wait_for(lambda: bool(sim.sessions_created), timeout=30)
        await sim.wait_for(lambda: bool(sim.open_connections()), timeout=30)
        stop.set()
        async with asyncio.timeout(30):
            assert await service == EXIT_OK
        closes = [c.close_code for c in sim.connections if c.closed_by == "client"]
        assert closes == [1000], sim.connections
    # Ending the session deletes its stored state.
    assert not list(tmp_path.glob("*/shard-0.json"))  # noqa: ASYNC240 - the service is done


async def test_run_service_refused_credentials_is_a_config_error(tmp_path: Path) -> None:
    async with Simulator(sim_config()) as sim:
        settings = settings_for(sim, tmp_path, QQBOT_CLIENT_SECRET="wrong")
        with pytest.raises(ServiceError) as err:
            async with asyncio.timeout(30):
                await run_service(settings, [], signals=False)
    assert err.value.status == EXIT_CONFIG
    assert "wrong" not in str(err.value)


async def test_check_in_process(tmp_path: Path) -> None:
    lines: list[str] = []
    async with Simulator(sim_config()) as sim:
        assert await check(settings_for(sim, tmp_path), 30.0, say=lines.append) == EXIT_OK
        # check ends its own session (no store) and leaves nothing open.
        await sim.wait_for(lambda: not sim.open_connections(), timeout=10)
    text = "\n".join(lines)
    assert "READY as simulated-bot" in text
    assert "heartbeat interval 0.5s" in text
    assert SECRET not in text


# --- the command line's entry points -------------------------------------------------------


def test_build_parser_imports_neither_the_demo_nor_rich() -> None:
    code = (
        "import sys; from qqbot_gateway.cli import build_parser; build_parser(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'rich' "
        "or m.startswith(('qqbot_gateway.demo.', 'qqbot_gateway.simulator')) "
        "or m == 'qqbot_gateway.demo'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_simulator_flags_are_one_set() -> None:
    """`qqbot-gateway simulate` and `python -m qqbot_gateway.simulator` share one parser; the
    old spellings of both still parse, and many shards start as fast as max_concurrency says."""
    parser = standalone.build_parser()
    args = parser.parse_args(
        ["--heartbeat-interval-ms", "500", "--shards", "100", "--max-concurrency", "16"]
    )
    config = standalone.config_from_args(args)
    assert config.heartbeat_interval_ms == 500
    assert config.shards == 100 and config.max_shards >= 100
    assert config.session_start_limit.max_concurrency == 16
    assert parser.parse_args(["--heartbeat-interval", "700"]).heartbeat_interval == 700
    with pytest.raises(ValueError, match="max-concurrency"):
        standalone.config_from_args(parser.parse_args(["--max-concurrency", "0"]))
    with pytest.raises(ValueError, match="port"):
        standalone.config_from_args(parser.parse_args(["--port", "70000"]))


async def test_simulator_reports_max_concurrency_and_many_shards() -> None:
    parser = standalone.build_parser()
    config = standalone.config_from_args(
        parser.parse_args(["--shards", "80", "--max-concurrency", "8", "--event-rate", "0"])
    )
    async with Simulator(config) as sim, aiohttp.ClientSession() as http:
        token, _ = sim.issue_token()
        headers = {"Authorization": f"QQBot {token}"}
        async with http.get(f"{sim.base_url}/gateway/bot", headers=headers) as resp:
            body = await resp.json()
    assert body["shards"] == 80
    assert body["session_start_limit"]["max_concurrency"] == 8


def test_python_m_simulator_help_lists_every_fault() -> None:
    from qqbot_gateway.simulator.control import FAULTS

    out = subprocess.run(
        [sys.executable, "-m", "qqbot_gateway.simulator", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "100"},
    )
    for name in FAULTS:
        assert name in out.stdout, name


# --- the container's HEALTHCHECK --------------------------------------------------------------


async def test_healthcheck_probes_where_qqbot_http_addr_points() -> None:
    from aiohttp import web

    from qqbot_gateway import healthcheck

    answer = {"status": 200}

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(status=answer["status"])

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        # A wildcard bind (as in the image) is probed on loopback, on the configured port.
        env = {"QQBOT_HTTP_ADDR": f"0.0.0.0:{port}"}
        assert healthcheck.healthz_url(env) == f"http://127.0.0.1:{port}/healthz"
        assert await asyncio.to_thread(healthcheck.main, env) == 0
        answer["status"] = 503
        assert await asyncio.to_thread(healthcheck.main, env) == 1
    finally:
        await runner.cleanup()
    assert await asyncio.to_thread(healthcheck.main, env) == 1  # nothing listens any more
    assert healthcheck.main({"QQBOT_HTTP_ADDR": "off"}) == 0
    assert healthcheck.main({"QQBOT_HTTP_ADDR": "nonsense"}) == 1
    assert healthcheck.healthz_url({"QQBOT_HTTP_ADDR": "[::]:9"}) == "http://[::1]:9/healthz"


def test_dockerfile_healthcheck_uses_the_module() -> None:
    text = (Path(__file__).resolve().parent.parent / "Dockerfile").read_text()
    (line,) = [x for x in text.splitlines() if x.strip().startswith("CMD [") and "health" in x]
    assert '"-m", "qqbot_gateway.healthcheck"' in line
