"""The service: its composition root and its shutdown contract, apart from the command line.

:func:`run_service` wires the pieces (``QQBotClient`` from the settings, the handlers, the
``Telemetry`` side server, the webhook receiver for ``QQBOT_TRANSPORT=webhook``) and owns their
order of start and stop. :func:`check` opens one session and closes it. The command line
(:mod:`qqbot_gateway.cli`) only parses arguments, loads settings and handlers, and turns a
:class:`ServiceError` into one line on stderr with its exit status; tests drive these functions
in-process against the simulator.

The shutdown contract (``run``):

1. A stop request (SIGTERM/SIGINT, or the ``stop`` event a caller passes): ``/readyz`` turns 503
   at once, before anything else closes.
2. The gateway closes with 4000, so the session stays resumable (``end_session=True``: 1000, and
   the stored state is deleted); handlers drain for ``drain_timeout``; the final checkpoint is
   written to the session store.
3. The whole close is bounded by ``drain_timeout`` + ``_CLOSE_MARGIN``; then the webhook
   receiver and the side server stop. Exit status 0.
4. A second signal exits at once with 130. Every shard stopped for good: a ServiceError (1).

Exit statuses: 0 success; 1 a runtime failure; 2 a configuration error; 130 a second signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import inspect
import json
import logging
import os
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Final

from qqbot_gateway._version import __version__
from qqbot_gateway.config import ConfigError, Settings

__all__ = [
    "EXIT_CONFIG",
    "EXIT_OK",
    "EXIT_RUNTIME",
    "EXIT_SECOND_SIGNAL",
    "Handler",
    "ReceiverError",
    "ServiceError",
    "check",
    "error_line",
    "load_handler",
    "print_event",
    "run_service",
    "start_receiver",
    "start_stream",
]

_log = logging.getLogger("qqbot_gateway.service")

PROG: Final = "qqbot-gateway"
#: Exit statuses (see the module docstring).
EXIT_OK: Final = 0
EXIT_RUNTIME: Final = 1
EXIT_CONFIG: Final = 2
EXIT_SECOND_SIGNAL: Final = 130
#: ``close()`` gets the drain timeout plus this for closing the WebSocket (the supervisor bounds
#: its own stop at 5 s), the token refresher and the HTTP sessions. Drain (10 s by default) +
#: 5 s + the side server's bounded stop stay within Kubernetes' default 30 s grace period.
_CLOSE_MARGIN: Final = 5.0

Handler = Callable[[Any], Awaitable[Any] | Any]
Say = Callable[[str], None]


class ServiceError(Exception):
    """A failure to report as one line with an exit status (``status``)."""

    def __init__(self, message: str, status: int = EXIT_RUNTIME) -> None:
        super().__init__(message)
        self.status = status


class ReceiverError(ServiceError):
    """The webhook receiver cannot listen; ``errno`` of the failed bind (None: the TLS files)."""

    def __init__(self, message: str, status: int = EXIT_RUNTIME, errno: int | None = None) -> None:
        super().__init__(message, status)
        self.errno = errno


def _say(text: str) -> None:
    print(text, flush=True)


def error_line(message: str) -> None:
    """One ``qqbot-gateway: error: ...`` line on stderr: how every failure reaches the user."""
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


# --- handlers -----------------------------------------------------------------------------


def load_handler(spec: str) -> Handler:
    """``module:function`` (the attribute may be dotted) -> the callable. ConfigError if not."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--handler {spec!r}: expected MODULE:FUNCTION, e.g. mybot.handlers:on")
    # Like uvicorn and gunicorn: modules in the working directory are importable.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"--handler {spec!r}: cannot import {module_name}: {type(exc).__name__}: {exc}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
        raise ConfigError(
            f"--handler {spec!r}: importing {module_name} failed: {type(exc).__name__}: {exc}"
        ) from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(f"--handler {spec!r}: {module_name} has no {attr}") from None
    if not callable(target):
        raise ConfigError(f"--handler {spec!r}: {module_name}.{attr} is not callable")
    return target  # type: ignore[no-any-return]


def _wants_client(handler: Handler) -> bool:
    """True if ``handler`` takes a second positional parameter (the client)."""
    try:
        params = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    return len(positional) >= 2 or any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)


def bind_client(handler: Handler, client: Any) -> Handler:
    if not _wants_client(handler):
        return handler

    def call(event: Any) -> Awaitable[Any] | Any:
        return handler(event, client)  # type: ignore[call-arg]

    call.__name__ = getattr(handler, "__name__", "handler")
    call.__qualname__ = getattr(handler, "__qualname__", call.__name__)
    return call


def print_event(event: Any) -> None:
    """The ``--print-events`` handler: one JSON object per line on stdout."""
    record = {
        "type": event.type,
        "shard": event.shard,
        "seq": event.seq,
        "id": event.event_id,
        "session_id": event.session_id,
        "replayed": event.replayed,
        "data": event.data,
    }
    sys.stdout.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


# --- run ----------------------------------------------------------------------------------


async def run_service(
    settings: Settings,
    handlers: list[Handler],
    *,
    end_session: bool = False,
    stop: asyncio.Event | None = None,
    signals: bool = True,
    freeze_gc: bool = False,
) -> int:
    """Run until ``stop`` is set or a signal arrives (``signals``), then shut down as the module
    docstring says. Returns the exit status; a ServiceError for a failure to report.

    ``freeze_gc`` (the ``run`` command, which owns its process): once everything is started,
    ``gc.freeze()`` moves the objects that exist then (modules, telemetry, configuration:
    tens of thousands of objects that live as long as the process) out of the cyclic
    collector's way. Under a flood, events waiting in the handler queue survive young
    collections and make full ones frequent (several per second); each full collection walked
    all of those startup objects (about 30 ms each), about a tenth of the process's CPU at
    saturation (benchmarks/throughput.md). A library caller's process is not ours to freeze."""
    from qqbot_gateway.adapter.client import QQBotClient
    from qqbot_gateway.adapter.errors import AuthError, InvalidCredentialsError
    from qqbot_gateway.adapter.store import StoreError, StoreLockedError
    from qqbot_gateway.telemetry import Telemetry, TelemetryConfigError

    loop = asyncio.get_running_loop()
    config = settings.client_config()
    cluster = await _open_cluster(settings, config.app_id)
    client = QQBotClient(
        config,
        store_factory=cluster.store_factory if cluster is not None else None,
        ownership=cluster.ownership if cluster is not None else None,
        webhook_intake=(
            cluster.intake_factory(settings.stream_claim_idle) if cluster is not None else None
        ),
    )
    for handler in handlers:
        client.add_handler(bind_client(handler, client))
    try:
        telemetry = Telemetry(settings.telemetry_config())
    except TelemetryConfigError as exc:  # e.g. OTLP export asked for, exporter not installed
        raise ServiceError(str(exc), EXIT_CONFIG) from None
    telemetry.attach(client)
    if cluster is not None:
        from qqbot_gateway.telemetry.cluster import ClusterMetrics

        cluster.ownership.observer = ClusterMetrics(telemetry.registry, config.shards)

    stop = asyncio.Event() if stop is None else stop
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            error_line(f"second {sig.name}: exiting at once")
            os._exit(EXIT_SECOND_SIGNAL)
        received.append(sig.name)
        telemetry.begin_shutdown()  # /readyz answers 503 from this moment
        stop.set()

    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT) if signals else ():
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)

    started = False
    receiver: Any = None
    publisher: Any = None
    try:
        try:
            await telemetry.start()
        except OSError as exc:
            host, port = settings.http_addr or ("", 0)
            raise ServiceError(
                f"cannot listen on {host}:{port} ({settings.source('http_addr')}): "
                f"{exc.strerror or exc}"
            ) from None
        if settings.delivery == "stream":
            # (load_settings refuses stream delivery without QQBOT_REDIS_URL: cluster mode)
            assert cluster is not None
            publisher = await start_stream(settings, cluster.redis)
            client.event_sink = publisher.append
            from qqbot_gateway.telemetry.stream import StreamMetrics

            StreamMetrics(telemetry.registry, publisher=publisher)
            # /healthz and /readyz: the stream/append check (failing, unanswered, full).
            telemetry.health.stream_status = publisher.append_health
        try:
            await client.start()
        except StoreLockedError as exc:
            holder = f"pid {exc.holder_pid}" if exc.holder_pid is not None else "another process"
            raise ServiceError(
                f"{holder} already runs this shard ({exc}); stop it first, or set "
                "QQBOT_STATE_LOCK=wait to wait for it",
                EXIT_CONFIG,
            ) from None
        except StoreError as exc:
            raise ServiceError(
                f"session store: {exc} ({settings.source('state_dir')}; a writable directory, "
                "or off)",
                EXIT_CONFIG,
            ) from None
        except InvalidCredentialsError as exc:
            raise ServiceError(
                f"{exc}; check {settings.source('app_id')} and the client secret",
                EXIT_CONFIG,
            ) from None
        except AuthError as exc:
            raise ServiceError(
                f"cannot get an access token from {settings.token_url} "
                f"({settings.source('token_url')}): {exc}"
            ) from None
        if client.webhook is not None:
            receiver = await start_receiver(
                settings, client, health=lambda: telemetry.evaluate().healthy
            )
        started = True
        if freeze_gc:
            gc.collect()  # the startup garbage first: what is frozen is never collected
            gc.freeze()
        if receiver is not None:
            _log.info(
                "%s %s receiving webhooks on %s; side server %s",
                PROG,
                __version__,
                receiver.url,
                telemetry.http_url or "off",
            )
        shards = ", ".join(str(s) for s in client.config.shards)
        if receiver is None:
            _log.info(
                "%s %s running shard(s) %s of %d; side server %s",
                PROG,
                __version__,
                shards,
                settings.shard_count,
                telemetry.http_url or "off",
            )
        stopper = asyncio.create_task(stop.wait(), name="qqbot signal wait")
        closed = asyncio.create_task(client.wait_closed(), name="qqbot wait closed")
        try:
            await asyncio.wait({stopper, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stopper, closed):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if not stop.is_set():
            return _every_shard_stopped(client)
        _log.info(
            "received %s: readiness is now 503; closing the gateway (%s), draining handlers "
            "for up to %gs",
            received[0] if received else "a stop request",
            "ending the session"
            if end_session or settings.state_dir is None
            else "session kept for the next start",
            settings.drain_timeout,
        )
        return EXIT_OK
    finally:
        telemetry.begin_shutdown()
        try:
            async with asyncio.timeout(settings.drain_timeout + _CLOSE_MARGIN):
                await client.close(drain_timeout=settings.drain_timeout, end_session=end_session)
        except TimeoutError:
            _log.warning("shutdown: the client did not close in time; exiting anyway")
        if publisher is not None:
            await publisher.close()
        if receiver is not None:
            await receiver.stop()
        if cluster is not None:
            with contextlib.suppress(Exception):
                await cluster.close()
        await telemetry.stop()
        if started and stop.is_set():
            _log.info("stopped cleanly")
        for sig in installed:
            loop.remove_signal_handler(sig)


async def start_stream(settings: Settings, redis: Any) -> Any:
    """``QQBOT_DELIVERY=stream``: a started
    :class:`~qqbot_gateway.cluster.stream.StreamPublisher` on cluster mode's Redis client
    (``redis``, connected; its owner closes it), or a ServiceError (exit 2) with one line: the
    stream is another app's, or Redis refuses."""
    from qqbot_gateway.cluster.connect import ClusterError
    from qqbot_gateway.cluster.stream import StreamPublisher

    app_id, _secret = settings.require_credentials()
    publisher = StreamPublisher(
        redis, app_id, max_len=settings.stream_max_len, group=settings.stream_group
    )
    try:
        await publisher.start()
    except Exception as exc:
        if isinstance(exc, ClusterError):
            raise ServiceError(f"stream delivery: {exc}", EXIT_CONFIG) from None
        from redis.exceptions import RedisError

        if isinstance(exc, RedisError):
            raise ServiceError(f"stream delivery: Redis: {exc}", EXIT_CONFIG) from None
        raise
    _log.info(
        "stream delivery: appending events to %s (bound %d, group %s)",
        publisher.keys.stream,
        settings.stream_max_len,
        settings.stream_group,
    )
    return publisher


async def _open_cluster(settings: Settings, app_id: str) -> Any:
    """Cluster mode (``QQBOT_REDIS_URL``): connect to Redis, or a ServiceError (exit 2) in one
    line; None without the setting."""
    if settings.redis_url is None:
        return None
    from qqbot_gateway.cluster.connect import ClusterError, missing_redis

    hint = missing_redis()
    if hint is not None:
        raise ServiceError(hint, EXIT_CONFIG)
    from qqbot_gateway.cluster.runtime import open_cluster

    try:
        return await open_cluster(settings.redis_url.get(), app_id, ttl=settings.lease_ttl)
    except ClusterError as exc:
        raise ServiceError(
            f"cannot use Redis ({settings.source('redis_url')}): {exc}", EXIT_CONFIG
        ) from None


async def start_receiver(
    settings: Settings, client: Any, *, health: Callable[[], bool] | None = None
) -> Any:
    """The webhook receiver for a started webhook-mode ``client`` on QQBOT_WEBHOOK_ADDR, or a
    :class:`ReceiverError` naming the setting (the hermes plugin runs it the same way)."""
    from qqbot_gateway.telemetry.webhook import WebhookReceiver

    receiver = WebhookReceiver(client.webhook, health=health)
    try:
        await receiver.start()
    except ssl.SSLError as exc:
        raise ReceiverError(
            f"cannot use the TLS certificate/key ({settings.source('webhook_tls_cert')}): {exc}",
            EXIT_CONFIG,
        ) from None
    except OSError as exc:
        host, port = settings.webhook_addr
        raise ReceiverError(
            f"cannot listen on {host}:{port} ({settings.source('webhook_addr')}): "
            f"{exc.strerror or exc}",
            errno=exc.errno,
        ) from None
    return receiver


def _every_shard_stopped(client: Any) -> int:
    statuses = client.shard_status()
    reasons = [
        f"shard {st.shard}: {st.fatal_message or st.last_reason or st.state.value}"
        for st in statuses
    ]
    raise ServiceError("every shard stopped for good: " + "; ".join(reasons))


# --- check --------------------------------------------------------------------------------


def _check_webhook(settings: Settings, say: Say) -> int:
    """``check`` with the webhook transport: there is no session to open; the platform calls us.
    Say what the receiver will do and prove the signing key works (a round trip)."""
    from qqbot_gateway.adapter.protocol import missing_cryptography, url_host
    from qqbot_gateway.adapter.webhook import WebhookKey

    _app_id, secret = settings.require_credentials()
    if missing := missing_cryptography():
        raise ServiceError(f"webhook: {missing}", EXIT_CONFIG)
    key = WebhookKey(secret.get())
    body = b'{"op":0,"d":{},"t":"CHECK"}'
    if not key.verify(bytes.fromhex(key.sign_hex("0", body)), b"0" + body):
        raise ServiceError("webhook: the Ed25519 key derived from the secret does not verify")
    host, port = settings.webhook_addr
    scheme = "https" if settings.webhook_tls_cert else "http"
    say("transport:      webhook (no WebSocket session is opened)")
    say(f"receiver:       {scheme}://{url_host(host)}:{port}{settings.webhook_path}")
    say("signing key:    derived from the secret, sign/verify round trip ok")
    if port not in (80, 443, 8080, 8443) and scheme == "https":
        say(f"note:           QQ accepts callback URLs on ports 80, 443, 8080, 8443 only ({port})")
    say(
        "next:           enter https://<public host>"
        f"{settings.webhook_path} as the callback URL on the QQ open platform"
    )
    return EXIT_OK


async def check(settings: Settings, timeout: float, *, say: Say = _say) -> int:
    """Token, ``GET /gateway/bot`` and one session (READY), then a clean close; ``say`` gets
    each finding as one line. The webhook transport: the signing key instead of a session."""
    import aiohttp

    from qqbot_gateway.adapter import events as ev
    from qqbot_gateway.adapter.api import OpenAPIClient
    from qqbot_gateway.adapter.auth import TokenManager
    from qqbot_gateway.adapter.client import QQBotClient
    from qqbot_gateway.adapter.errors import (
        APIConnectionError,
        APIError,
        AuthError,
        InvalidCredentialsError,
    )

    app_id, secret = settings.require_credentials()
    cfg = settings.client_config()
    say(f"app id:         {app_id}")
    say(f"token endpoint: {settings.token_url}")
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=cfg.request_timeout)
    ) as http:
        tokens = TokenManager(
            app_id, secret.get(), token_url=settings.token_url, http=http, startup_attempts=1
        )
        try:
            await tokens.start()
        except InvalidCredentialsError as exc:
            raise ServiceError(f"bad credentials: {exc}", EXIT_CONFIG) from None
        except AuthError as exc:
            raise ServiceError(f"access token: {exc} ({settings.token_url})") from None
        try:
            lifetime = tokens.expires_in or 0.0
            say(f"access token:   ok (expires in {lifetime:.0f}s)")
            if cfg.mode == "webhook":
                return _check_webhook(settings, say)
            api = OpenAPIClient(
                base_url=settings.api_base,
                tokens=tokens,
                http=http,
                app_id=app_id,
                timeout=cfg.request_timeout,
                max_retries=1,
            )
            say(f"OpenAPI:        {settings.api_base}")
            try:
                info = await api.get_gateway_bot()
            except APIConnectionError as exc:
                raise ServiceError(f"GET /gateway/bot: unreachable: {exc}") from None
            except APIError as exc:
                raise ServiceError(f"GET /gateway/bot: {exc}") from None
            limit = info.session_start_limit
            say(f"gateway URL:    {info.url}")
            say(f"shards:         {info.shards} recommended (configured: {settings.shard_count})")
            say(
                f"session starts: {limit.remaining} of {limit.total} left, resets in "
                f"{limit.reset_after_ms / 1000:.0f}s, max concurrency {limit.max_concurrency}"
            )
        finally:
            await tokens.close()

    shard = cfg.shards[0]
    url = settings.gateway_url or info.url
    # No session store: check ends its own session and must not contend with a running service.
    client = QQBotClient(replace(cfg, shard_ids=(shard,), gateway_url=url, state_dir=None))
    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    interval: list[float] = []

    def observe(event: ev.LifecycleEvent) -> None:
        if outcome.done():
            return
        if isinstance(event, ev.HelloReceived):
            interval.append(event.heartbeat_interval)
        elif isinstance(event, ev.SessionReady):
            who = event.username or event.user_id or "?"
            outcome.set_result(f"READY as {who} (session {event.session_id})")
        elif isinstance(event, ev.ShardFatal):
            outcome.set_exception(ServiceError(f"gateway: {event.message}", EXIT_CONFIG))
        elif isinstance(event, ev.Disconnected):
            outcome.set_exception(
                ServiceError(f"gateway: disconnected before READY: {event.reason}: {event.detail}")
            )

    client.events.subscribe(observe)
    say(f"gateway:        connecting to {url} as shard {shard} of {settings.shard_count}")
    try:
        await client.start()
        try:
            async with asyncio.timeout(timeout):
                ready = await outcome
        except TimeoutError:
            raise ServiceError(f"gateway: no READY within {timeout:g}s") from None
        hb = f", heartbeat interval {interval[0]:g}s" if interval else ""
        say(f"session:        {ready}{hb}")
    except AuthError as exc:
        raise ServiceError(f"access token: {exc}") from None
    finally:
        await client.close(drain_timeout=1.0)
    say("session closed cleanly. All checks passed.")
    return EXIT_OK
