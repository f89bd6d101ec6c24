"""hermes-agent, as a hermes user runs it, around this project's simulator. Shared by the plugin
tests and ``benchmarks/bench_hermes.py``.

``load_platform`` goes through hermes's own machinery: a temporary ``HERMES_HOME`` with a
``config.yaml`` that lists the plugin under ``plugins: enabled:``, hermes's plugin discovery
(entry point group ``hermes_agent.plugins``), hermes's gateway config loader, and the
platform registry's factory, exactly the steps hermes's gateway runner takes before it calls
``set_message_handler`` and ``connect()``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from tests.gateway_harness import poll_until

PLUGIN = "qqbot-gateway"


@contextmanager
def hermes_home(path: Path, config: dict[str, Any], env: dict[str, str]) -> Iterator[Path]:
    """``HERMES_HOME=path`` with ``config.yaml`` and extra environment, restored afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    # The gateway's session store lives in this hermes home: no test resumes another's session.
    env = {"QQBOT_STATE_DIR": str(path / "qqbot-state"), **env}
    (path / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    saved = {k: os.environ.get(k) for k in (*env, "HERMES_HOME")}
    os.environ.update(env)
    os.environ["HERMES_HOME"] = str(path)
    try:
        yield path
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def plugin_config(platform: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "plugins": {"enabled": [PLUGIN]},
        "platforms": {platform: {"enabled": True, "extra": extra}},
    }


def load_platform(platform: str) -> Any:
    """Discover plugins and build the adapter for ``platform`` the way hermes's runner does."""
    from gateway.config import Platform, load_gateway_config
    from gateway.platform_registry import platform_registry
    from hermes_cli.plugins import discover_plugins, get_plugin_manager

    discover_plugins(force=True)
    loaded = get_plugin_manager()._plugins.get(PLUGIN)
    if loaded is None or not loaded.enabled:
        raise AssertionError(f"hermes did not load the plugin: {loaded and loaded.error}")
    config = load_gateway_config()
    platform_config = config.platforms[Platform(platform)]
    adapter = platform_registry.create_adapter(platform, platform_config)
    if adapter is None:
        raise AssertionError(f"hermes could not create the {platform} adapter")
    return adapter


class Watch:
    """What hermes sees of an adapter: handler calls, connected-state marks, fatal reports."""

    def __init__(self, adapter: Any, reply: Callable[[Any], str | None] | None = None) -> None:
        self.adapter = adapter
        self.loop = asyncio.get_running_loop()
        self.received: list[Any] = []
        self.marks: list[tuple[str, float]] = []
        self.fatal: list[tuple[str | None, bool]] = []
        self._reply = reply

        async def on_message(event: Any) -> str | None:
            self.received.append(event)
            return self._reply(event) if self._reply is not None else None

        def on_fatal(a: Any) -> None:
            self.fatal.append((a.fatal_error_code, a.fatal_error_retryable))

        adapter.set_message_handler(on_message)
        adapter.set_fatal_error_handler(on_fatal)
        connected, disconnected = adapter._mark_connected, adapter._mark_disconnected

        def mark_connected() -> None:
            self.marks.append(("connected", self.loop.time()))
            connected()

        def mark_disconnected() -> None:
            self.marks.append(("disconnected", self.loop.time()))
            disconnected()

        adapter._mark_connected = mark_connected
        adapter._mark_disconnected = mark_disconnected

    async def until(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        return await poll_until(predicate, timeout, what)

    def message_ids(self) -> list[str]:
        return [e.message_id for e in self.received]


def c2c_message(index: int, text: str | None = None, *, prefix: str = "M") -> dict[str, Any]:
    """A C2C message from its own user, so hermes never merges it with another one."""
    return {
        "id": f"{prefix}{index:05d}",
        "author": {"user_openid": f"{prefix}USER{index:05d}", "id": f"{prefix}USER{index:05d}"},
        "content": text if text is not None else f"message {index}",
        "timestamp": "2026-07-01T12:00:00+08:00",
    }
