"""``qqbot-gateway run`` with ``QQBOT_REDIS_URL``: a bad or unreachable Redis at start is one
line on stderr and exit status 2, with the password never shown."""

from __future__ import annotations

import asyncio

import pytest

from qqbot_gateway.adapter.protocol import Intents
from qqbot_gateway.simulator import Simulator, SimulatorConfig
from tests.ports import free_port
from tests.redis_harness import RedisServer, needs_redis

from .test_cli import (
    APP_ID,
    READY_TIMEOUT,
    SECRET,
    bot_env,
    clean_env,
    error_lines,
    run_cli,
    spawn_cli,
)

pytestmark = pytest.mark.slow


def _env(url: str) -> dict[str, str]:
    return clean_env(
        QQBOT_APP_ID=APP_ID,
        QQBOT_CLIENT_SECRET=SECRET,
        QQBOT_HTTP_ADDR=f"127.0.0.1:{free_port()}",
        QQBOT_REDIS_URL=url,
    )


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (f"redis://:hunter2@127.0.0.1:{free_port()}/0", "cannot use Redis (QQBOT_REDIS_URL)"),
        ("http://:hunter2@example/0", "QQBOT_REDIS_URL"),
    ],
    ids=["unreachable", "not-redis"],  # (the port is chosen at collection: ids stay stable)
)
def test_unreachable_or_wrong_redis_url_is_one_line_and_exit_2(url: str, says: str) -> None:
    result = run_cli(["run"], _env(url))
    assert result.returncode == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


@needs_redis
async def test_a_fatal_shard_in_cluster_mode_is_not_retaken_in_a_loop(
    redis_server: RedisServer,
) -> None:
    """A fatal close (intents refused: 4014) in a term: the shard stops for good in this
    process, its lease is released, and with no shard left the process exits 1 in one line,
    as without Redis, instead of taking the lease back and identifying again and again."""
    config = SimulatorConfig(
        app_id=APP_ID,
        client_secret=SECRET,
        heartbeat_interval_ms=500,
        disallowed_intents=int(Intents.GUILDS),
    )
    async with Simulator(config) as sim:
        env = bot_env(sim.base_url, 0, QQBOT_REDIS_URL=redis_server.url, QQBOT_LEASE_TTL="2")
        proc = await spawn_cli("run", env=env)
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                _, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        identifies = len(sim.identifies)
    assert proc.returncode == 1
    text = err.decode()
    assert "Traceback" not in text
    lines = error_lines(text)
    assert len(lines) == 1 and "every shard stopped for good" in lines[0], text
    assert "no longer offered" in text
    assert identifies <= 3, identifies
