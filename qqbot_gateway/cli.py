"""The command line: ``qqbot-gateway run | demo | simulate | check``.

* ``run``: the production service. Settings from ``QQBOT_*`` variables and/or ``--config``
  (see :mod:`qqbot_gateway.config`), handlers from ``--handler module:function``, the side
  server on ``QQBOT_HTTP_ADDR``. SIGTERM/SIGINT: ``/readyz`` turns 503 at once, the gateway
  closes with 4000 (the session stays resumable), handlers drain for ``QQBOT_DRAIN_TIMEOUT``,
  the final checkpoint is written to the session store (``QQBOT_STATE_DIR``), exit 0; the next
  ``run`` resumes the session. ``--end-session`` closes with 1000 instead and deletes the
  stored state. A second signal exits at once. A shard whose state another process holds:
  exit 2 naming that pid (or wait, ``QQBOT_STATE_LOCK=wait``).
* ``demo``: everything against the embedded simulator with injected faults (see
  :mod:`qqbot_gateway.demo`).
* ``simulate``: the simulator alone, for a ``run`` in another terminal.
* ``check``: token, ``GET /gateway/bot`` and one session, then a clean close.

Exit codes: 0 success; 1 a runtime failure (unreachable endpoint, port in use, every shard
stopped for good, a failed demo); 2 a configuration error (bad setting, refused credentials,
a handler that cannot be loaded); 130 a second signal. Errors are one line on stderr, never a
traceback, never a secret.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import json
import logging
import os
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, Final, cast

from qqbot_gateway._version import __version__
from qqbot_gateway.config import ConfigError, Settings, load_settings, settings_help

__all__ = ["main"]

_log = logging.getLogger("qqbot_gateway.cli")

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
#: ``check`` waits this long for READY by default.
_CHECK_TIMEOUT: Final = 30.0

Handler = Callable[[Any], Awaitable[Any] | Any]


class CommandError(Exception):
    """A failure to report as one line on stderr with an exit status."""

    def __init__(self, message: str, status: int = EXIT_RUNTIME) -> None:
        super().__init__(message)
        self.status = status


def _error_line(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


def _warn_line(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


# --- argument parsing ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="A QQ Bot gateway adapter that never dies silently.",
        epilog="Settings come from QQBOT_* environment variables or a TOML file; see README.md.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser(
        "run",
        help="run the gateway service (side server with /healthz, /readyz, /metrics)",
        description="Run the gateway service. Secrets come from QQBOT_CLIENT_SECRET or "
        "QQBOT_CLIENT_SECRET_FILE, never from the command line.",
        epilog="settings (environment variables; in a TOML file the lowercase names without "
        "QQBOT_):\n" + settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--config", metavar="FILE", help="TOML settings (env vars override it)")
    run.add_argument(
        "--handler",
        metavar="MODULE:FUNCTION",
        action="append",
        default=[],
        help="event handler, called as f(event) or f(event, client); repeatable",
    )
    run.add_argument(
        "--print-events",
        action="store_true",
        help="write every event as one JSON line to stdout (logs go to stderr)",
    )
    run.add_argument(
        "--end-session",
        action="store_true",
        help="at shutdown end the gateway session (close 1000) and delete its stored state, "
        "instead of keeping it for the next start to resume",
    )

    demo = sub.add_parser(
        "demo",
        help="watch detection and recovery of injected faults against the embedded simulator",
    )
    from qqbot_gateway import demo as demo_mod

    demo.add_argument(
        "--duration",
        type=float,
        default=demo_mod.DEFAULT_DURATION,
        metavar="S",
        help=f"bound on the whole run in seconds (default {demo_mod.DEFAULT_DURATION:g})",
    )
    demo.add_argument(
        "--interval",
        type=float,
        default=demo_mod.DEFAULT_INTERVAL,
        metavar="SECONDS",
        help="heartbeat interval the simulator sends (default "
        f"{demo_mod.DEFAULT_INTERVAL:g}; QQ sends 41.25)",
    )
    demo.add_argument(
        "--event-rate",
        type=float,
        default=demo_mod.DEFAULT_EVENT_RATE,
        metavar="N",
        help=f"events per second (default {demo_mod.DEFAULT_EVENT_RATE:g})",
    )
    demo.add_argument(
        "--non-interactive", action="store_true", help="plain lines instead of a live table"
    )
    demo.add_argument(
        "--http-port", type=int, default=0, help="side server port on 127.0.0.1 (default: any)"
    )
    demo.add_argument("--log-level", default="WARNING", help="default WARNING")
    demo.add_argument(
        "--transport",
        choices=("websocket", "webhook"),
        default="websocket",
        help="websocket (default: silent deaths of the gateway session) or webhook (signed "
        "callbacks through a chaos proxy: forged, stale, replayed, failing, slow)",
    )

    sim = sub.add_parser("simulate", help="run the embedded QQ gateway simulator alone")
    sim.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    sim.add_argument("--port", type=int, default=8765, help="port (0: any; default 8765)")
    sim.add_argument(
        "--heartbeat-interval",
        type=int,
        default=41_250,
        metavar="MS",
        help="heartbeat interval in Hello, in milliseconds (default 41250, as QQ)",
    )
    sim.add_argument("--app-id", default="1024", help="the AppID bots must present")
    sim.add_argument("--event-rate", type=float, default=1.0, help="events/s per session")
    sim.add_argument("--shards", type=int, default=1, help="recommended shard count")
    sim.add_argument(
        "--resume-window",
        type=float,
        default=300.0,
        metavar="S",
        help="seconds a session dropped without a 1000/1001 close stays resumable (default 300)",
    )
    sim.add_argument("--seed", type=int, default=None)
    sim.add_argument(
        "--webhook-url",
        metavar="URL",
        help="also play the platform's webhook side: validate URL (op 13), then post signed "
        "callbacks to it at --event-rate, retrying unacknowledged ones (for a `run` with "
        "QQBOT_TRANSPORT=webhook)",
    )
    sim.add_argument("--log-level", default="INFO")

    check = sub.add_parser(
        "check",
        help="verify credentials and connectivity: token, /gateway/bot, one session",
    )
    check.add_argument("--config", metavar="FILE", help="TOML settings (env vars override it)")
    check.add_argument(
        "--timeout",
        type=float,
        default=_CHECK_TIMEOUT,
        metavar="S",
        help=f"seconds to wait for READY (default {_CHECK_TIMEOUT:g})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": _cmd_run,
        "demo": _cmd_demo,
        "simulate": _cmd_simulate,
        "check": _cmd_check,
    }
    try:
        return commands[args.command](args)
    except CommandError as exc:
        _error_line(str(exc))
        return exc.status
    except ConfigError as exc:
        _error_line(str(exc))
        return EXIT_CONFIG
    except KeyboardInterrupt:
        _error_line("interrupted")
        return EXIT_SECOND_SIGNAL
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback; details at DEBUG
        _log.debug("unexpected error", exc_info=True)
        _error_line(
            f"unexpected {type(exc).__name__}: {exc} (QQBOT_LOG_LEVEL=DEBUG shows the traceback)"
        )
        return EXIT_RUNTIME


# --- shared helpers -----------------------------------------------------------------------


def _load_settings(path: str | None) -> Settings:
    return load_settings(path, warn=_warn_line)


def _configure_logging(settings: Settings) -> None:
    from qqbot_gateway.telemetry import add_secrets, configure_logging
    from qqbot_gateway.telemetry.logs import Format

    secret = settings.client_secret
    configure_logging(cast(Format, settings.log_format), settings.log_level)
    if secret is not None:
        add_secrets(secret.get())


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


def _bind_client(handler: Handler, client: Any) -> Handler:
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


def _cmd_run(args: argparse.Namespace) -> int:
    settings = _load_settings(args.config)
    settings.require_credentials()
    if settings.transport == "webhook" and importlib.util.find_spec("cryptography") is None:
        raise ConfigError(
            f"{settings.source('transport')}: the webhook transport needs Ed25519 from the "
            "'cryptography' package: pip install 'qqbot-gateway[webhook]'"
        )
    handlers = [load_handler(spec) for spec in args.handler]
    if args.print_events:
        handlers.append(print_event)
    _configure_logging(settings)
    return asyncio.run(_run_service(settings, handlers, end_session=args.end_session))


async def _run_service(
    settings: Settings, handlers: list[Handler], *, end_session: bool = False
) -> int:
    from qqbot_gateway.adapter.client import QQBotClient
    from qqbot_gateway.adapter.errors import AuthError, InvalidCredentialsError
    from qqbot_gateway.adapter.store import StoreError, StoreLockedError
    from qqbot_gateway.telemetry import Telemetry, TelemetryConfigError

    loop = asyncio.get_running_loop()
    client = QQBotClient(settings.client_config())
    for handler in handlers:
        client.add_handler(_bind_client(handler, client))
    try:
        telemetry = Telemetry(settings.telemetry_config())
    except TelemetryConfigError as exc:  # e.g. OTLP export asked for, exporter not installed
        raise CommandError(str(exc), EXIT_CONFIG) from None
    telemetry.attach(client)

    stop = asyncio.Event()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            _error_line(f"second {sig.name}: exiting at once")
            os._exit(EXIT_SECOND_SIGNAL)
        received.append(sig.name)
        telemetry.begin_shutdown()  # /readyz answers 503 from this moment
        stop.set()

    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)

    started = False
    receiver: Any = None
    try:
        try:
            await telemetry.start()
        except OSError as exc:
            host, port = settings.http_addr or ("", 0)
            raise CommandError(
                f"cannot listen on {host}:{port} ({settings.source('http_addr')}): "
                f"{exc.strerror or exc}"
            ) from None
        try:
            await client.start()
        except StoreLockedError as exc:
            holder = f"pid {exc.holder_pid}" if exc.holder_pid is not None else "another process"
            raise CommandError(
                f"{holder} already runs this shard ({exc}); stop it first, or set "
                "QQBOT_STATE_LOCK=wait to wait for it",
                EXIT_CONFIG,
            ) from None
        except StoreError as exc:
            raise CommandError(
                f"session store: {exc} ({settings.source('state_dir')}; a writable directory, "
                "or off)",
                EXIT_CONFIG,
            ) from None
        except InvalidCredentialsError as exc:
            raise CommandError(
                f"{exc}; check {settings.source('app_id')} and the client secret",
                EXIT_CONFIG,
            ) from None
        except AuthError as exc:
            raise CommandError(
                f"cannot get an access token from {settings.token_url} "
                f"({settings.source('token_url')}): {exc}"
            ) from None
        if client.webhook is not None:
            receiver = await _start_receiver(settings, client, telemetry)
        started = True
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
            received[0],
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
        if receiver is not None:
            await receiver.stop()
        await telemetry.stop()
        if started and stop.is_set():
            _log.info("stopped cleanly")
        for sig in installed:
            loop.remove_signal_handler(sig)


async def _start_receiver(settings: Settings, client: Any, telemetry: Any) -> Any:
    """The webhook receiver on QQBOT_WEBHOOK_ADDR, or a CommandError saying why not."""
    from qqbot_gateway.telemetry.webhook import WebhookReceiver

    receiver = WebhookReceiver(client.webhook, health=lambda: telemetry.evaluate().healthy)
    try:
        await receiver.start()
    except OSError as exc:
        host, port = settings.webhook_addr
        raise CommandError(
            f"cannot listen on {host}:{port} ({settings.source('webhook_addr')}): "
            f"{exc.strerror or exc}"
        ) from None
    except ssl.SSLError as exc:
        raise CommandError(
            f"cannot use the TLS certificate/key ({settings.source('webhook_tls_cert')}): {exc}",
            EXIT_CONFIG,
        ) from None
    return receiver


def _every_shard_stopped(client: Any) -> int:
    statuses = client.shard_status()
    reasons = [
        f"shard {st.shard}: {st.fatal_message or st.last_reason or st.state.value}"
        for st in statuses
    ]
    raise CommandError("every shard stopped for good: " + "; ".join(reasons))


# --- demo ---------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from qqbot_gateway import demo
    from qqbot_gateway.telemetry import configure_logging
    from qqbot_gateway.telemetry.logs import Format

    level = str(args.log_level).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"--log-level: expected DEBUG, INFO, WARNING or ERROR, got {level!r}")
    interactive = False if args.non_interactive else None
    # The demo is read by people: readable log lines (no colours off a terminal), unless
    # QQBOT_LOG_FORMAT asks for something else.
    fmt = os.environ.get("QQBOT_LOG_FORMAT", "console").strip().lower() or "console"
    if fmt not in ("auto", "json", "console"):
        raise ConfigError(f"QQBOT_LOG_FORMAT: expected auto, json or console, got {fmt!r}")
    configure_logging(cast(Format, fmt), level, stream=demo.log_stream())
    if args.transport == "webhook":
        return _webhook_demo(args)
    opts = demo.DemoOptions(
        duration=args.duration,
        interval=args.interval,
        event_rate=args.event_rate,
        interactive=interactive,
        http_port=args.http_port,
    )
    try:
        return asyncio.run(demo.run_demo(opts))
    except demo.DemoTooShortError as exc:
        raise ConfigError(str(exc)) from None
    except ValueError as exc:
        raise ConfigError(f"demo: {exc}") from None
    except OSError as exc:
        raise CommandError(f"demo: {exc.strerror or exc}") from None


def _webhook_demo(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("cryptography") is None:
        raise ConfigError(
            "--transport webhook: needs the 'cryptography' package: "
            "pip install 'qqbot-gateway[webhook]'"
        )
    from qqbot_gateway import webhook_demo

    duration = args.duration
    if duration < webhook_demo.MIN_DURATION:
        raise ConfigError(
            f"--duration: at least {webhook_demo.MIN_DURATION:g}s for the webhook demo"
        )
    try:
        return asyncio.run(
            webhook_demo.run_webhook_demo(
                duration=duration,
                event_rate=max(args.event_rate, 10.0),
                http_port=args.http_port,
                out=sys.stdout,
            )
        )
    except OSError as exc:
        raise CommandError(f"demo: {exc.strerror or exc}") from None


# --- simulate -----------------------------------------------------------------------------


def _cmd_simulate(args: argparse.Namespace) -> int:
    from qqbot_gateway.simulator import Simulator, SimulatorConfig, run_standalone
    from qqbot_gateway.simulator.standalone import SECRET_ENV
    from qqbot_gateway.telemetry import configure_logging

    try:
        configure_logging("auto", str(args.log_level).upper())
    except ValueError as exc:
        raise ConfigError(f"--log-level: {exc}") from None
    secret = os.environ.get(SECRET_ENV) or SimulatorConfig().client_secret
    try:
        config = SimulatorConfig(
            app_id=args.app_id,
            client_secret=secret,
            heartbeat_interval_ms=args.heartbeat_interval,
            event_rate=args.event_rate,
            shards=args.shards,
            seed=args.seed,
            resume_window=args.resume_window,
        )
    except ValueError as exc:
        raise ConfigError(f"simulate: {exc}") from None

    def announce(sim: Simulator) -> None:
        lines = [
            f"QQ gateway simulator listening on {sim.base_url} "
            f"(heartbeat interval {config.heartbeat_interval_ms} ms, "
            f"{config.event_rate:g} events/s per session)",
            f"  websocket:   {sim.ws_url}",
            f"  control API: {sim.control_url}/state, POST {sim.control_url}/faults",
            "A bot connects with these settings (the secret is the simulator's test value):",
            f"  export QQBOT_APP_ID={config.app_id}",
            f"  export QQBOT_CLIENT_SECRET={config.client_secret}",
            f"  export QQBOT_API_BASE={sim.base_url}",
            f"  export QQBOT_TOKEN_URL={sim.token_url}",
            f"  {PROG} run",
            "Press Ctrl+C to stop.",
        ]
        print("\n".join(lines), flush=True)
        if args.webhook_url:
            print(f"Posting webhooks to {args.webhook_url}", flush=True)
            asyncio.get_running_loop().create_task(
                _post_webhooks(args.webhook_url, config, max(args.event_rate, 0.1)),
                name="simulator webhook deliveries",
            )

    try:
        asyncio.run(run_standalone(config, args.host, args.port, ready_callback=announce))
    except OSError as exc:
        raise CommandError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
        ) from None
    return EXIT_OK


# --- check --------------------------------------------------------------------------------


async def _post_webhooks(url: str, config: Any, rate: float) -> None:
    """The platform's side for ``simulate --webhook-url``: runs until the simulator stops."""
    from qqbot_gateway.simulator.webhook import WebhookDeliverer

    log = logging.getLogger("qqbot_gateway.simulator.webhook")
    async with WebhookDeliverer(url, secret=config.client_secret, app_id=config.app_id) as hook:
        while not await hook.validate():
            log.warning("webhook validation of %s failed; retrying in 2s", url)
            await asyncio.sleep(2.0)
        log.info("webhook URL %s validated (op 13)", url)
        pending: set[asyncio.Task[bool]] = set()
        while True:
            task = asyncio.create_task(hook.deliver(hook.make_event()))
            pending.add(task)
            task.add_done_callback(pending.discard)
            await asyncio.sleep(1.0 / rate)


def _cmd_check(args: argparse.Namespace) -> int:
    settings = _load_settings(args.config)
    settings.require_credentials()
    if args.timeout <= 0:
        raise ConfigError("--timeout: expected a positive number of seconds")
    # Quiet by default: check prints its own findings; warnings still show.
    quiet = replace(settings, log_level="WARNING") if settings.log_level == "INFO" else settings
    _configure_logging(quiet)
    return asyncio.run(_check(settings, args.timeout))


def _say(text: str) -> None:
    print(text, flush=True)


def _check_webhook(settings: Settings) -> int:
    """``check`` with the webhook transport: there is no session to open; the platform calls us.
    Say what the receiver will do and prove the signing key works (a round trip)."""
    from qqbot_gateway.adapter.webhook import WebhookKey

    _app_id, secret = settings.require_credentials()
    if importlib.util.find_spec("cryptography") is None:
        raise CommandError(
            "webhook: the 'cryptography' package is missing: pip install 'qqbot-gateway[webhook]'",
            EXIT_CONFIG,
        )
    key = WebhookKey(secret.get())
    body = b'{"op":0,"d":{},"t":"CHECK"}'
    if not key.verify(bytes.fromhex(key.sign_hex("0", body)), b"0" + body):
        raise CommandError("webhook: the Ed25519 key derived from the secret does not verify")
    host, port = settings.webhook_addr
    scheme = "https" if settings.webhook_tls_cert else "http"
    _say("transport:      webhook (no WebSocket session is opened)")
    _say(f"receiver:       {scheme}://{host}:{port}{settings.webhook_path}")
    _say("signing key:    derived from the secret, sign/verify round trip ok")
    if port not in (80, 443, 8080, 8443) and scheme == "https":
        _say(f"note:           QQ accepts callback URLs on ports 80, 443, 8080, 8443 only ({port})")
    _say(
        "next:           enter https://<public host>"
        f"{settings.webhook_path} as the callback URL on the QQ open platform"
    )
    return EXIT_OK


async def _check(settings: Settings, timeout: float) -> int:
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
    _say(f"app id:         {app_id}")
    _say(f"token endpoint: {settings.token_url}")
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=cfg.request_timeout)
    ) as http:
        tokens = TokenManager(
            app_id, secret.get(), token_url=settings.token_url, http=http, startup_attempts=1
        )
        try:
            await tokens.start()
        except InvalidCredentialsError as exc:
            raise CommandError(f"bad credentials: {exc}", EXIT_CONFIG) from None
        except AuthError as exc:
            raise CommandError(f"access token: {exc} ({settings.token_url})") from None
        try:
            lifetime = tokens.expires_in or 0.0
            _say(f"access token:   ok (expires in {lifetime:.0f}s)")
            if cfg.mode == "webhook":
                return _check_webhook(settings)
            api = OpenAPIClient(
                base_url=settings.api_base,
                tokens=tokens,
                http=http,
                app_id=app_id,
                timeout=cfg.request_timeout,
                max_retries=1,
            )
            _say(f"OpenAPI:        {settings.api_base}")
            try:
                info = await api.get_gateway_bot()
            except APIConnectionError as exc:
                raise CommandError(f"GET /gateway/bot: unreachable: {exc}") from None
            except APIError as exc:
                raise CommandError(f"GET /gateway/bot: {exc}") from None
            limit = info.session_start_limit
            _say(f"gateway URL:    {info.url}")
            _say(f"shards:         {info.shards} recommended (configured: {settings.shard_count})")
            _say(
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
            outcome.set_exception(CommandError(f"gateway: {event.message}", EXIT_CONFIG))
        elif isinstance(event, ev.Disconnected):
            outcome.set_exception(
                CommandError(f"gateway: disconnected before READY: {event.reason}: {event.detail}")
            )

    client.events.subscribe(observe)
    _say(f"gateway:        connecting to {url} as shard {shard} of {settings.shard_count}")
    try:
        await client.start()
        try:
            async with asyncio.timeout(timeout):
                ready = await outcome
        except TimeoutError:
            raise CommandError(f"gateway: no READY within {timeout:g}s") from None
        hb = f", heartbeat interval {interval[0]:g}s" if interval else ""
        _say(f"session:        {ready}{hb}")
    except AuthError as exc:
        raise CommandError(f"access token: {exc}") from None
    finally:
        await client.close(drain_timeout=1.0)
    _say("session closed cleanly. All checks passed.")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
