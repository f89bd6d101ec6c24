"""Suite-wide options, the suite's own state directory, and the shared fixtures.

Fixtures every file may request:

- ``http``: an ``aiohttp.ClientSession``, closed after the test.
- ``simulator_config``: the simulator's settings; a module overrides this fixture to change
  them for all its tests (``sim`` and ``start_sim`` pick the override up).
- ``start_sim``: ``await start_sim(**overrides)`` starts one more simulator on 127.0.0.1 (the
  module's ``simulator_config`` with ``overrides`` replaced); every one is stopped after the test.
- ``sim``: one started simulator with the module's ``simulator_config``.
- ``redis_server``: a real ``redis-server`` on a free port (:mod:`tests.redis_harness`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from qqbot_gateway.simulator import Simulator, SimulatorConfig

#: The credentials of the default ``simulator_config``.
APP_ID = "1024"
SECRET = "s3cret"

StartSim = Callable[..., Awaitable[Simulator]]

_STATE_HOME_KEY = pytest.StashKey[tuple[str, str | None]]()


def pytest_configure(config: pytest.Config) -> None:
    # The service keeps its session store under $XDG_STATE_HOME by default. A test (or a
    # subprocess it starts) that does not name its own QQBOT_STATE_DIR must neither write into
    # the developer's home nor resume a session a previous run left there.
    home = tempfile.mkdtemp(prefix="qqbot-test-state-")
    config.stash[_STATE_HOME_KEY] = (home, os.environ.get("XDG_STATE_HOME"))
    os.environ["XDG_STATE_HOME"] = home


def pytest_unconfigure(config: pytest.Config) -> None:
    home, before = config.stash.get(_STATE_HOME_KEY, ("", None))
    if not home:
        return
    if before is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = before
    shutil.rmtree(home, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A network-namespace test is a slow one too: `-m "not slow"` leaves it out.
    for item in items:
        if item.get_closest_marker("netns") is not None:
            item.add_marker(pytest.mark.slow)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak-minutes",
        type=float,
        default=None,
        help="run the chaos soak (tests/reliability/test_soak.py) for this many minutes "
        "instead of the short CI version, and print its counts",
    )
    parser.addoption(
        "--update-report",
        action="store_true",
        default=False,
        help="write docs/reliability.md from the fault matrix's rows at the end of the run "
        "(only when every row of the matrix ran); a plain test run never writes it",
    )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def simulator_config() -> SimulatorConfig:
    return SimulatorConfig(app_id=APP_ID, client_secret=SECRET, seed=1)


@pytest.fixture
async def start_sim(simulator_config: SimulatorConfig) -> AsyncIterator[StartSim]:
    started: list[Simulator] = []

    async def start(**overrides: Any) -> Simulator:
        simulator = Simulator(dataclasses.replace(simulator_config, **overrides))
        await simulator.start(host="127.0.0.1", port=0)
        started.append(simulator)
        return simulator

    try:
        yield start
    finally:
        for simulator in reversed(started):
            await simulator.stop()


@pytest.fixture
async def sim(start_sim: StartSim) -> Simulator:
    return await start_sim()


@pytest.fixture
async def redis_server(tmp_path: Any) -> AsyncIterator[Any]:
    """A real ``redis-server`` on a free loopback port (skips when it is not installed); see
    :mod:`tests.redis_harness`. Stopped after the test."""
    from tests.redis_harness import RedisServer

    server = RedisServer(tmp_path / "redis")
    try:
        await server.start()
        yield server
    finally:
        server.kill()
