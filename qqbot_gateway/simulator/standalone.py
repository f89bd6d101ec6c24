"""The simulator on its own until SIGINT/SIGTERM: the one entry point behind both
``qqbot-gateway simulate`` and ``python -m qqbot_gateway.simulator`` (same flags, same output;
only the logging setup differs, the command line's being structlog's)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Final

from qqbot_gateway.simulator.config import SimulatorConfig
from qqbot_gateway.simulator.control import control_help
from qqbot_gateway.simulator.server import Simulator

__all__ = ["add_arguments", "build_parser", "config_from_args", "main", "run_standalone", "serve"]

ReadyCallback = Callable[[Simulator], Awaitable[None] | None]

#: Environment variable holding the simulator's client secret (kept out of argv if wanted).
SECRET_ENV: Final = "QQBOT_SIM_CLIENT_SECRET"
#: The port the docs and examples use.
DEFAULT_PORT: Final = 8765
#: The command a bot runs against it (printed in the announcement).
_RUN_COMMAND: Final = "qqbot-gateway run"


async def run_standalone(
    config: SimulatorConfig,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    ready_callback: ReadyCallback | None = None,
    stop_event: asyncio.Event | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (or ``stop_event`` is set), then stop cleanly.

    ``ready_callback(sim)`` (sync or async) runs once the simulator listens.
    """
    stop = stop_event if stop_event is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Not available on every platform or outside the main thread: then rely on stop_event.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    sim = Simulator(config)
    try:
        await sim.start(host=host, port=port)
        if ready_callback is not None:
            result = ready_callback(sim)
            if inspect.isawaitable(result):
                await result
        await stop.wait()
    finally:
        await sim.stop()
        for sig in installed:
            loop.remove_signal_handler(sig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The simulator's flags, on the parser of either entry point."""
    defaults = SimulatorConfig()
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (0: any; default {DEFAULT_PORT})"
    )
    p.add_argument(
        "--heartbeat-interval",
        "--heartbeat-interval-ms",
        dest="heartbeat_interval",
        type=int,
        default=defaults.heartbeat_interval_ms,
        metavar="MS",
        help="heartbeat interval in Hello, in milliseconds "
        f"(default {defaults.heartbeat_interval_ms}, as QQ)",
    )
    p.add_argument("--app-id", default=defaults.app_id, help="the AppID bots must present")
    p.add_argument(
        "--client-secret",
        default=None,
        help=f"the secret bots must present (better: ${SECRET_ENV}; default "
        f"{defaults.client_secret!r}, a test value)",
    )
    p.add_argument(
        "--event-rate",
        type=float,
        default=1.0,
        metavar="N",
        help="background events per second per session (0: none; default 1)",
    )
    p.add_argument(
        "--shards",
        type=int,
        default=defaults.shards,
        metavar="N",
        help="recommended shard count in GET /gateway/bot (default 1; no upper cap)",
    )
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=defaults.session_start_limit.max_concurrency,
        metavar="N",
        help="session_start_limit.max_concurrency: sessions a bot may start per 5 s "
        f"(default {defaults.session_start_limit.max_concurrency}, as QQ; raise it to start "
        "many shards quickly)",
    )
    p.add_argument(
        "--token-ttl",
        type=int,
        default=defaults.token_ttl,
        metavar="S",
        help=f"access token lifetime in seconds (default {defaults.token_ttl})",
    )
    p.add_argument(
        "--resume-window",
        type=float,
        default=defaults.resume_window,
        metavar="S",
        help="seconds a session dropped without a 1000/1001 close stays resumable "
        f"(default {defaults.resume_window:g})",
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (event contents, ids)")
    p.add_argument(
        "--webhook-url",
        metavar="URL",
        help="also play the platform's webhook side: validate URL (op 13), then post signed "
        "callbacks to it at --event-rate, retrying unacknowledged ones (for a `run` with "
        "QQBOT_TRANSPORT=webhook)",
    )
    p.add_argument("--log-level", default="INFO", help="default INFO")


def build_parser(prog: str = "python -m qqbot_gateway.simulator") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="An embedded QQ Bot gateway (token, REST, WebSocket) with fault injection.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=control_help(),
    )
    add_arguments(p)
    return p


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """ValueError (one line) for a bad combination."""
    secret = args.client_secret or os.environ.get(SECRET_ENV) or SimulatorConfig().client_secret
    if args.max_concurrency < 1:
        raise ValueError("--max-concurrency must be >= 1")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be within 0-65535, got {args.port}")
    limit = replace(SimulatorConfig().session_start_limit, max_concurrency=args.max_concurrency)
    return SimulatorConfig(
        app_id=args.app_id,
        client_secret=secret,
        heartbeat_interval_ms=args.heartbeat_interval,
        event_rate=args.event_rate,
        shards=args.shards,
        # Identify may ask for any count up to what the simulator recommends (QQ's limit is
        # per bot, not a constant).
        max_shards=max(SimulatorConfig().max_shards, args.shards),
        session_start_limit=limit,
        token_ttl=args.token_ttl,
        resume_window=args.resume_window,
        seed=args.seed,
    )


def _announce(sim: Simulator) -> None:
    config = sim.config
    lines = [
        f"QQ gateway simulator listening on {sim.base_url} "
        f"(heartbeat interval {config.heartbeat_interval_ms} ms, "
        f"{config.event_rate:g} events/s per session, {config.shards} shard(s), "
        f"max concurrency {config.session_start_limit.max_concurrency})",
        f"  websocket:   {sim.ws_url}",
        f"  control API: {sim.control_url}/state, POST {sim.control_url}/faults",
        "A bot connects with these settings (the secret is the simulator's test value):",
        f"  export QQBOT_APP_ID={config.app_id}",
        f"  export QQBOT_CLIENT_SECRET={config.client_secret}",
        f"  export QQBOT_API_BASE={sim.base_url}",
        f"  export QQBOT_TOKEN_URL={sim.token_url}",
    ]
    if config.shards > 1:
        lines.append(f"  export QQBOT_SHARD_COUNT={config.shards}")
    lines += [f"  {_RUN_COMMAND}", "Press Ctrl+C to stop."]
    print("\n".join(lines), flush=True)


async def _post_webhooks(url: str, config: SimulatorConfig, rate: float) -> None:
    """The platform's side for ``--webhook-url``: runs until the simulator stops."""
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


async def serve(args: argparse.Namespace, config: SimulatorConfig) -> None:
    """Serve ``config`` on ``--host``/``--port`` until a signal: announce the settings a bot
    needs, post webhooks if asked. OSError if the port cannot be bound."""
    tasks: list[asyncio.Task[None]] = []

    def ready(sim: Simulator) -> None:
        _announce(sim)
        if args.webhook_url:
            print(f"Posting webhooks to {args.webhook_url}", flush=True)
            tasks.append(
                asyncio.get_running_loop().create_task(
                    _post_webhooks(args.webhook_url, config, max(args.event_rate, 0.1)),
                    name="simulator webhook deliveries",
                )
            )

    try:
        await run_standalone(config, args.host, args.port, ready_callback=ready)
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(args, config))
    except OSError as exc:
        print(
            f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    return 0
