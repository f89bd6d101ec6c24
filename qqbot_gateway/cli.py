"""The command line: ``qqbot-gateway run | worker | demo | simulate | check``.

* ``run``: the production service. Settings from ``QQBOT_*`` variables and/or ``--config``
  (see :mod:`qqbot_gateway.config`), handlers from ``--handler module:function``, the side
  server on ``QQBOT_HTTP_ADDR``. SIGTERM/SIGINT: ``/readyz`` turns 503 at once, the gateway
  closes with 4000 (the session stays resumable), handlers drain for ``QQBOT_DRAIN_TIMEOUT``,
  the final checkpoint is written to the session store (``QQBOT_STATE_DIR``), exit 0; the next
  ``run`` resumes the session. ``--end-session`` closes with 1000 instead and deletes the
  stored state. A second signal exits at once. A shard whose state another process holds:
  exit 2 naming that pid (or wait, ``QQBOT_STATE_LOCK=wait``).
* ``worker``: with ``QQBOT_DELIVERY=stream`` on the gateway, runs ``--handler`` on the events
  of the app's Redis stream (see :mod:`qqbot_gateway.cluster.worker`); the same settings, its
  own side server (``/healthz``, ``/readyz``, ``/metrics``) on ``QQBOT_HTTP_ADDR``.
* ``demo``: everything against the embedded simulator with injected faults (see
  :mod:`qqbot_gateway.demo`).
* ``simulate``: the simulator alone, for a ``run`` in another terminal; its flags are those of
  :mod:`qqbot_gateway.simulator.standalone` (also ``python -m qqbot_gateway.simulator``).
* ``check``: token, ``GET /gateway/bot`` and one session, then a clean close.

This module only parses arguments and loads settings and handlers; the service itself (its
composition root and shutdown contract) and ``check`` live in :mod:`qqbot_gateway.service`.

Exit codes: 0 success; 1 a runtime failure (unreachable endpoint, port in use, every shard
stopped for good, a failed demo); 2 a configuration error (bad setting, refused credentials,
a handler that cannot be loaded); 130 a second signal. Errors are one line on stderr, never a
traceback, never a secret.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Final, cast

from qqbot_gateway._version import __version__
from qqbot_gateway.adapter.protocol import missing_cryptography
from qqbot_gateway.cluster.connect import missing_redis
from qqbot_gateway.config import ConfigError, Settings, load_settings, settings_help
from qqbot_gateway.demo_defaults import DEFAULT_DURATION, DEFAULT_EVENT_RATE, DEFAULT_INTERVAL
from qqbot_gateway.service import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_RUNTIME,
    EXIT_SECOND_SIGNAL,
    PROG,
    ServiceError,
    check,
    error_line,
    load_handler,
    print_event,
    run_service,
)

__all__ = ["main"]

_log = logging.getLogger("qqbot_gateway.cli")

#: ``check`` waits this long for READY by default.
_CHECK_TIMEOUT: Final = 30.0


def _warn_line(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


# --- argument parsing ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="A QQ Bot gateway adapter that never dies silently.",
        epilog=(
            "Settings come from QQBOT_* environment variables or a TOML file; "
            "see docs/configuration.md."
        ),
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # (run's and worker's help: every setting, wrapped once)
    settings_epilog = (
        "settings (environment variables; in a TOML file the lowercase names without "
        "QQBOT_):\n" + settings_help()
    )

    run = sub.add_parser(
        "run",
        help="run the gateway service (side server with /healthz, /readyz, /metrics)",
        description="Run the gateway service. Secrets come from QQBOT_CLIENT_SECRET or "
        "QQBOT_CLIENT_SECRET_FILE, never from the command line.",
        epilog=settings_epilog,
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

    worker = sub.add_parser(
        "worker",
        help="run handlers on the events the gateway appends to Redis (QQBOT_DELIVERY=stream)",
        description="Run handlers on the app's Redis stream as one consumer of a consumer group "
        "(QQBOT_STREAM_GROUP). Needs QQBOT_REDIS_URL and the bot's credentials (handlers reply "
        "through client.api on this process's own token).",
        epilog=settings_epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    worker.add_argument("--config", metavar="FILE", help="TOML settings (env vars override it)")
    worker.add_argument(
        "--handler",
        metavar="MODULE:FUNCTION",
        action="append",
        default=[],
        help="event handler, called as f(event) or f(event, client); repeatable",
    )
    worker.add_argument(
        "--print-events",
        action="store_true",
        help="write every handled event as one JSON line to stdout (logs go to stderr)",
    )

    demo = sub.add_parser(
        "demo",
        help="watch detection and recovery of injected faults against the embedded simulator",
    )
    demo.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION,
        metavar="S",
        help=f"bound on the whole run in seconds (default {DEFAULT_DURATION:g})",
    )
    demo.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_INTERVAL,
        metavar="SECONDS",
        help="heartbeat interval the simulator sends (default "
        f"{DEFAULT_INTERVAL:g}; QQ sends 41.25)",
    )
    demo.add_argument(
        "--event-rate",
        type=float,
        default=DEFAULT_EVENT_RATE,
        metavar="N",
        help=f"events per second (default {DEFAULT_EVENT_RATE:g})",
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

    # The simulator's flags belong to its one entry point (qqbot_gateway.simulator.standalone,
    # also `python -m qqbot_gateway.simulator`); they are parsed there, so that building this
    # parser imports neither the simulator nor aiohttp.
    sub.add_parser(
        "simulate",
        help="run the embedded QQ gateway simulator alone (`simulate --help`: its flags and the "
        "fault-injection control API)",
        add_help=False,
        prefix_chars="\0",
    )
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
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "simulate":
        args.simulator_argv = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": _cmd_run,
        "worker": _cmd_worker,
        "demo": _cmd_demo,
        "simulate": _cmd_simulate,
        "check": _cmd_check,
    }
    try:
        return commands[args.command](args)
    except ServiceError as exc:
        error_line(str(exc))
        return exc.status
    except ConfigError as exc:
        error_line(str(exc))
        return EXIT_CONFIG
    except KeyboardInterrupt:
        error_line("interrupted")
        return EXIT_SECOND_SIGNAL
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback; details at DEBUG
        _log.debug("unexpected error", exc_info=True)
        error_line(
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


# --- run ----------------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    settings = _load_settings(args.config)
    settings.require_credentials()
    if settings.transport == "webhook" and (missing := missing_cryptography()):
        raise ConfigError(f"{settings.source('transport')}: {missing}")
    if settings.delivery == "stream" and (args.handler or args.print_events):
        raise ConfigError(
            f"{settings.source('delivery')} is stream: handlers run in `{PROG} worker "
            "--handler ...`, not in run; drop --handler/--print-events here"
        )
    handlers = [load_handler(spec) for spec in args.handler]
    if args.print_events:
        handlers.append(print_event)
    _configure_logging(settings)
    return asyncio.run(
        run_service(settings, handlers, end_session=args.end_session, freeze_gc=True)
    )


# --- worker -------------------------------------------------------------------------------


def _cmd_worker(args: argparse.Namespace) -> int:
    settings = _load_settings(args.config)
    settings.require_credentials()
    if settings.redis_url is None:
        raise ConfigError(
            "QQBOT_REDIS_URL: required by worker (it reads the app's event stream from Redis)"
        )
    if missing := missing_redis():
        raise ConfigError(f"{settings.source('redis_url')}: {missing}")
    if not args.handler and not args.print_events:
        raise ConfigError("worker: give at least one --handler MODULE:FUNCTION (or --print-events)")
    handlers = [load_handler(spec) for spec in args.handler]
    if args.print_events:
        handlers.append(print_event)
    _configure_logging(settings)
    from qqbot_gateway.cluster.worker_service import run_worker

    return asyncio.run(run_worker(settings, handlers))


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
        raise ServiceError(f"demo: {exc.strerror or exc}") from None


def _webhook_demo(args: argparse.Namespace) -> int:
    if missing := missing_cryptography():
        raise ConfigError(f"--transport webhook: {missing}")
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
        raise ServiceError(f"demo: {exc.strerror or exc}") from None


# --- simulate -----------------------------------------------------------------------------


def _cmd_simulate(args: argparse.Namespace) -> int:
    from qqbot_gateway.simulator import standalone
    from qqbot_gateway.telemetry import configure_logging

    sim_args = standalone.build_parser(prog=f"{PROG} simulate").parse_args(args.simulator_argv)
    try:
        configure_logging("auto", str(sim_args.log_level).upper())
    except ValueError as exc:
        raise ConfigError(f"--log-level: {exc}") from None
    try:
        config = standalone.config_from_args(sim_args)
    except ValueError as exc:
        raise ConfigError(f"simulate: {exc}") from None
    try:
        asyncio.run(standalone.serve(sim_args, config))
    except OSError as exc:
        raise ServiceError(
            f"cannot listen on {sim_args.host}:{sim_args.port}: {exc.strerror or exc}"
        ) from None
    return EXIT_OK


# --- check --------------------------------------------------------------------------------


def _cmd_check(args: argparse.Namespace) -> int:
    settings = _load_settings(args.config)
    settings.require_credentials()
    if args.timeout <= 0:
        raise ConfigError("--timeout: expected a positive number of seconds")
    # Quiet by default: check prints its own findings; warnings still show.
    quiet = replace(settings, log_level="WARNING") if settings.log_level == "INFO" else settings
    _configure_logging(quiet)
    return asyncio.run(check(settings, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
