"""``qqbot-gateway worker``'s composition root: Redis, the token, the handlers' client, the
:class:`~.worker.StreamWorker`, the side server (``/healthz``, ``/readyz``, ``/metrics``) and the
signals. The worker itself (reading, claiming, acknowledging) is in :mod:`.worker`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Final

from qqbot_gateway.adapter.connection import tcp_connector

from .worker import StreamWorker, WorkerConfig, default_consumer

__all__ = ["WorkerClient", "run_worker"]

_log = logging.getLogger("qqbot_gateway.cluster.worker")

#: A stop (SIGTERM) lets handlers finish for QQBOT_DRAIN_TIMEOUT (10 s by default); the whole
#: stop is bounded by that plus this margin for the loops' exit and the last acknowledgement
#: (20 s by default, inside Kubernetes' default 30 s grace period). Entries cut short stay
#: pending and are claimed by another worker.
_STOP_MARGIN: Final = 10.0


class WorkerClient:
    """What a handler's second argument offers in a worker: the same ``api`` (and ``tokens``)
    as :class:`~qqbot_gateway.adapter.client.QQBotClient`, on this process's own token."""

    def __init__(self, api: Any, tokens: Any, app_id: str) -> None:
        self.api = api
        self.tokens = tokens
        self.app_id = app_id


class _WorkerHealth:
    """``/healthz``: the worker's loops run and Redis answered within the liveness grace;
    ``/readyz``: Redis answers now and no shutdown has begun."""

    def __init__(self, worker: StreamWorker, grace: float) -> None:
        self.worker = worker
        self.grace = grace
        self.loop = asyncio.get_running_loop()
        self.started = self.loop.time()
        self.last_ok = self.started
        self.shutting_down = False
        self.run_task: asyncio.Task[None] | None = None

    def evaluate(self) -> Any:
        from qqbot_gateway.telemetry.health import Check, HealthReport

        now = self.loop.time()
        stats = self.worker.stats
        if stats.redis_ok:
            self.last_ok = now
        silent = now - self.last_ok
        redis_ok = stats.redis_ok or silent < self.grace
        redis_reason = (
            "answering"
            if stats.redis_ok
            else f"no answer for {silent:.0f}s (grace {self.grace:g}s)"
        )
        alive = self.run_task is not None and not self.run_task.done()
        checks = [
            Check("redis", redis_ok, redis_reason),
            Check("worker", alive or self.shutting_down, "running" if alive else "stopped"),
        ]
        readiness = [
            Check("redis", stats.redis_ok, redis_reason),
            Check("shutdown", not self.shutting_down, "began" if self.shutting_down else "no"),
        ]
        return HealthReport(
            healthy=all(c.ok for c in checks),
            ready=all(c.ok for c in readiness) and alive,
            checks=checks,
            readiness=readiness,
            evaluated_at=now,
        )


async def run_worker(
    settings: Any,
    handlers: Sequence[Callable[..., Any]],
    *,
    stop: asyncio.Event | None = None,
    signals: bool = True,
) -> int:
    """``qqbot-gateway worker``: run until a signal (or ``stop``), then drain and acknowledge.

    One line and exit 2 (a ServiceError) when Redis does not answer, the stream is another
    app's, or the credentials are refused; 0 after a clean stop."""
    import signal

    import aiohttp
    from prometheus_client import CollectorRegistry
    from prometheus_client.process_collector import ProcessCollector

    from qqbot_gateway.adapter.api import OpenAPIClient
    from qqbot_gateway.adapter.auth import TokenManager
    from qqbot_gateway.adapter.errors import AuthError, InvalidCredentialsError
    from qqbot_gateway.service import EXIT_CONFIG, EXIT_OK, ServiceError, bind_client
    from qqbot_gateway.telemetry.server import SideServer
    from qqbot_gateway.telemetry.stream import StreamMetrics

    from .connect import ClusterError, close_redis, open_redis

    app_id, secret = settings.require_credentials()
    if settings.redis_url is None:
        raise ServiceError(
            "worker: QQBOT_REDIS_URL is not set (the worker reads the app's stream from Redis)",
            EXIT_CONFIG,
        )
    try:
        redis = await open_redis(settings.redis_url.get())
    except ClusterError as exc:
        raise ServiceError(f"{settings.source('redis_url')}: {exc}", EXIT_CONFIG) from None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event() if stop is None else stop
    http: aiohttp.ClientSession | None = None
    tokens: TokenManager | None = None
    server: SideServer | None = None
    installed: list[signal.Signals] = []
    try:
        cfg = settings.client_config()
        http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=cfg.request_timeout), connector=tcp_connector()
        )
        tokens = TokenManager(
            app_id,
            secret.get(),
            token_url=settings.token_url,
            http=http,
            timeout=cfg.request_timeout,
        )
        try:
            await tokens.start()
        except InvalidCredentialsError as exc:
            raise ServiceError(
                f"{exc}; check {settings.source('app_id')} and the client secret", EXIT_CONFIG
            ) from None
        except AuthError as exc:
            raise ServiceError(
                f"cannot get an access token from {settings.token_url}: {exc}"
            ) from None
        api = OpenAPIClient(
            base_url=settings.api_base,
            tokens=tokens,
            http=http,
            app_id=app_id,
            timeout=cfg.request_timeout,
        )
        client = WorkerClient(api, tokens, app_id)
        config = WorkerConfig(
            app_id=app_id,
            group=settings.stream_group,
            consumer=settings.worker_name or default_consumer(),
            concurrency=settings.worker_concurrency,
            claim_idle=settings.stream_claim_idle,
            max_attempts=settings.stream_max_attempts,
            dedupe_window=settings.stream_dedupe_window,
            drain_timeout=settings.drain_timeout,
        )
        worker = StreamWorker(redis, config, [bind_client(h, client) for h in handlers])
        try:
            await worker.start()
        except ClusterError as exc:
            raise ServiceError(f"worker: {exc}", EXIT_CONFIG) from None
        health = _WorkerHealth(worker, settings.liveness_grace)
        if settings.http_addr is not None:
            registry = CollectorRegistry()
            StreamMetrics(registry, worker=worker)
            ProcessCollector(registry=registry)
            server = SideServer(registry=registry, evaluate=health.evaluate)
            host, port = settings.http_addr
            try:
                await server.start(host, port)
            except OSError as exc:
                server = None
                raise ServiceError(
                    f"cannot listen on {host}:{port} ({settings.source('http_addr')}): "
                    f"{exc.strerror or exc}"
                ) from None

        def on_signal(sig: signal.Signals) -> None:
            if stop.is_set():
                os._exit(130)
            health.shutting_down = True
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT) if signals else ():
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, on_signal, sig)
                installed.append(sig)
        _log.info(
            "worker %s of group %s reading %s (concurrency %d); side server %s",
            config.consumer,
            config.group,
            worker.keys.stream,
            config.concurrency,
            server.url if server is not None else "off",
        )
        run_task = health.run_task = asyncio.create_task(worker.run(stop), name="qqbot worker")

        async def bound_the_stop() -> None:
            await stop.wait()
            bound = config.drain_timeout + _STOP_MARGIN
            await asyncio.sleep(bound)
            _log.warning("worker: the stop took over %gs; exiting without waiting", bound)
            run_task.cancel()

        watchdog = asyncio.create_task(bound_the_stop(), name="qqbot worker stop bound")
        try:
            await run_task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are cancelled ourselves, not the watchdog's doing
        finally:
            watchdog.cancel()
        health.shutting_down = True
        _log.info("worker %s stopped cleanly", config.consumer)
        return EXIT_OK
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        if server is not None:
            await server.stop()
        if tokens is not None:
            await tokens.close()
        if http is not None:
            await http.close()
        with contextlib.suppress(Exception):
            await close_redis(redis)
