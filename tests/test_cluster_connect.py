"""``QQBOT_REDIS_URL``: parsing, redaction, and the first connection against a real redis-server."""

from __future__ import annotations

import time

import pytest

from qqbot_gateway.cluster.connect import (
    ClusterError,
    RedisUnavailable,
    keyspace,
    open_redis,
    parse_redis_url,
    redact_url,
)
from qqbot_gateway.config import ConfigError, load_settings
from tests.redis_harness import RedisServer, free_port, needs_redis


@pytest.mark.parametrize(
    ("url", "db", "sentinels", "service"),
    [
        ("redis://127.0.0.1:6379/0", 0, (), None),
        ("redis://:pw@redis.example:6380/3", 3, (), None),
        ("rediss://user:pw@redis.example/1", 1, (), None),
        ("unix:///run/redis.sock?db=2", 2, (), None),
        (
            "redis+sentinel://:pw@s1:26379,s2,[::1]:26380/mymaster/4",
            4,
            (("s1", 26379), ("s2", 26379), ("::1", 26380)),
            "mymaster",
        ),
        ("rediss+sentinel://s1/mymaster", 0, (("s1", 26379),), "mymaster"),
    ],
)
def test_supported_urls_parse(
    url: str, db: int, sentinels: tuple[tuple[str, int], ...], service: str | None
) -> None:
    target = parse_redis_url(url)
    assert (target.db, target.sentinels, target.service) == (db, sentinels, service)
    assert "pw" not in repr(target) and "pw" not in target.shown


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://h:1", "unsupported scheme http://"),
        ("h:6379", "unsupported scheme"),
        ("redis://", "no host"),
        ("redis://h:99999", "out of range"),
        ("redis://h:x", "not a number"),
        ("redis://h/abc", "database 'abc'"),
        ("redis://h1,h2/0", "several hosts need redis+sentinel://"),
        ("redis+sentinel://s1:26379", "names the master's service"),
        ("unix://", "socket path"),
    ],
)
def test_bad_urls_say_why_without_the_password(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("+", r"\+").replace("(", r"\(")):
        parse_redis_url(url)


def test_redaction_hides_passwords_everywhere() -> None:
    assert redact_url("redis://u:secret@h:1/0") == "redis://u:***@h:1/0"
    assert redact_url("redis://:secret@h/0") == "redis://:***@h/0"
    assert redact_url("redis://secret@h/0") == "redis://***@h/0"
    shown = redact_url("redis+sentinel://s1/m?sentinel_password=secret&x=1")
    assert "secret" not in shown and "x=1" in shown
    assert redact_url("redis://h:1/0") == "redis://h:1/0"


def test_keyspace_is_a_cluster_hash_tag_per_app() -> None:
    assert keyspace("1024") == "qqbot:{1024}:"
    assert keyspace("a}b") != keyspace("a") and "}" not in keyspace("a}b")[7:-2]


def test_the_setting_is_a_secret_and_stream_delivery_needs_it() -> None:
    env = {"QQBOT_REDIS_URL": "redis://:hunter2@127.0.0.1:1/0"}
    settings = load_settings(env=env, warn=lambda _m: None)
    assert settings.redis_url is not None
    assert settings.redis_url.get() == env["QQBOT_REDIS_URL"]
    assert "hunter2" not in repr(settings)
    with pytest.raises(ConfigError, match="QQBOT_REDIS_URL: unsupported scheme"):
        load_settings(env={"QQBOT_REDIS_URL": "mysql://:hunter2@h/0"}, warn=lambda _m: None)
    with pytest.raises(ConfigError) as err:
        load_settings(env={"QQBOT_REDIS_URL": "redis://:hunter2@h:x/0"}, warn=lambda _m: None)
    assert "hunter2" not in str(err.value)
    with pytest.raises(ConfigError, match="QQBOT_DELIVERY: stream delivery needs QQBOT_REDIS_URL"):
        load_settings(env={"QQBOT_DELIVERY": "stream"}, warn=lambda _m: None)
    with pytest.raises(ConfigError, match="QQBOT_LEASE_TTL"):
        load_settings(env={"QQBOT_LEASE_TTL": "0.1"}, warn=lambda _m: None)


@needs_redis
async def test_open_redis_pings_a_real_server(redis_server: RedisServer) -> None:
    client = await open_redis(redis_server.url)
    try:
        assert await client.ping()
    finally:
        await client.aclose()


async def test_nothing_listening_is_one_line_within_the_timeout() -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    with pytest.raises(RedisUnavailable) as err:
        await open_redis(url, timeout=2)
    message = str(err.value)
    assert "\n" not in message and "hunter2" not in message and "***" in message
    assert time.monotonic() - started < 30  # bounded, not a hang (the bound is generous)
    assert isinstance(err.value, ClusterError)


@needs_redis
async def test_a_wrong_password_is_refused_in_one_line(tmp_path: object) -> None:
    from pathlib import Path

    server = RedisServer(Path(str(tmp_path)) / "r", password="right")
    await server.start()
    try:
        with pytest.raises(RedisUnavailable) as err:
            await open_redis(f"redis://:wrong@127.0.0.1:{server.port}/0", timeout=5)
        assert "wrong" not in str(err.value) and "\n" not in str(err.value)
        client = await open_redis(server.url)
        await client.aclose()
    finally:
        server.kill()
