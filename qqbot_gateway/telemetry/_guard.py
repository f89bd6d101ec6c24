"""Bounds on what clients can hold on an aiohttp server: the side server and the webhook receiver.

A :class:`ConnectionGuard` wraps aiohttp's protocol factory (``runner.server``) for
``loop.create_server``: at most ``max_connections`` are open (one more is closed at once), and
each connection must complete a request's headers every ``deadline`` seconds (a watchdog
closes it otherwise, which ends slow-header clients and idle keep-alive connections alike).
The server's handler calls :meth:`ConnectionGuard.seen` for every request.

:func:`start_guarded` and :func:`stop_guarded` are the start and the bounded stop both servers
share.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web

__all__ = ["ConnectionGuard", "start_guarded", "stop_guarded"]

#: A connection over the limit is closed as soon as it is connected: looked for this often...
_DROP_RETRY = 0.01
#: ...this many times (then the watchdog closes it at its deadline).
_DROP_TRIES = 100


class ConnectionGuard:
    def __init__(self, *, deadline: float, max_connections: int) -> None:
        if deadline <= 0 or max_connections < 1:
            raise ValueError("deadline must be > 0 and max_connections >= 1")
        self.deadline = deadline
        self.max_connections = max_connections
        self._requests: dict[Any, int] = {}
        self._open = 0

    @property
    def open(self) -> int:
        """Connections counted as open (closed ones are forgotten at their next watchdog)."""
        return self._open

    def protocol_factory(
        self, factory: Callable[[], asyncio.BaseProtocol]
    ) -> Callable[[], asyncio.BaseProtocol]:
        loop = asyncio.get_running_loop()

        def guarded() -> asyncio.BaseProtocol:
            proto = factory()
            self._open += 1
            self._requests[proto] = 0
            if self._open > self.max_connections:
                loop.call_soon(self._drop, proto)
            loop.call_later(self.deadline, self._watchdog, proto, 0)
            return proto

        return guarded

    def seen(self, proto: Any) -> None:
        """A request on ``proto`` completed its headers."""
        if proto in self._requests:
            self._requests[proto] += 1

    def clear(self) -> None:
        self._requests.clear()
        self._open = 0

    def _drop(self, proto: Any, tries: int = _DROP_TRIES) -> None:
        transport = getattr(proto, "transport", None)
        if transport is None and tries > 0 and proto in self._requests:
            # Not connected yet: the loop calls connection_made after the factory returns
            # (after the TLS handshake with TLS). Look again shortly; the watchdog is the
            # backstop either way.
            loop = asyncio.get_running_loop()
            loop.call_later(_DROP_RETRY, self._drop, proto, tries - 1)
            return
        self._forget(proto)
        if transport is not None:
            transport.close()

    def _forget(self, proto: Any) -> None:
        if self._requests.pop(proto, None) is not None:
            self._open -= 1

    def _watchdog(self, proto: Any, seen: int) -> None:
        count = self._requests.get(proto)
        if count is None:
            return
        if getattr(proto, "transport", None) is None:  # closed: forget it
            self._forget(proto)
            return
        if count == seen:  # no request completed its headers in a whole deadline
            self._drop(proto)
            return
        asyncio.get_running_loop().call_later(self.deadline, self._watchdog, proto, count)


async def start_guarded(
    app: web.Application,
    guard: ConnectionGuard,
    host: str,
    port: int,
    *,
    backlog: int,
    ssl_context: ssl.SSLContext | None = None,
    **runner_options: Any,
) -> tuple[web.AppRunner, asyncio.Server]:
    """Serve ``app`` on ``host:port`` through ``guard``: an :class:`~aiohttp.web.AppRunner` (no
    access log, no signal handlers, keep-alive as long as the guard's deadline, 1 s shutdown,
    plus ``runner_options``) and ``loop.create_server``. If the bind fails (OSError: port in
    use, address not available, ...) the runner is cleaned up and the error propagates as is."""
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        keepalive_timeout=guard.deadline,
        shutdown_timeout=1.0,
        **runner_options,
    )
    await runner.setup()
    factory = runner.server
    assert factory is not None
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            guard.protocol_factory(factory),
            host,
            port,
            ssl=ssl_context,
            reuse_address=True,
            backlog=backlog,
        )
    except BaseException:
        await runner.cleanup()
        raise
    return runner, server


async def stop_guarded(
    runner: web.AppRunner | None,
    server: asyncio.AbstractServer | None,
    guard: ConnectionGuard,
    within: float,
) -> None:
    """Stop listening, close the open connections and wait for the server to close, each of
    the two waits bounded by ``within`` seconds; then forget the guard's connections."""
    if server is not None:
        server.close()
    if runner is not None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await runner.cleanup()  # closes open connections
    if server is not None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await server.wait_closed()
    guard.clear()
