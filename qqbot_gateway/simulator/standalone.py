"""Run the simulator on its own until SIGINT/SIGTERM (``python -m qqbot_gateway.simulator``)."""

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

from qqbot_gateway.simulator.config import SimulatorConfig
from qqbot_gateway.simulator.server import Simulator

__all__ = ["build_parser", "config_from_args", "main", "run_standalone"]

ReadyCallback = Callable[[Simulator], Awaitable[None] | None]

#: Environment variable holding the simulator's client secret (kept out of argv if wanted).
SECRET_ENV = "QQBOT_SIM_CLIENT_SECRET"


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


CONTROL_API_HELP = """\
control API (on the simulator's port; bind it to 127.0.0.1, the default):
  GET  /_sim/state            sessions, connections, counters, active faults
  GET  /_sim/messages         messages the bot sent on the send endpoints
  POST /_sim/events           {"count": N, "type": T, "data": {...}, "shard": S}: emit now
  POST /_sim/events/pause     stop the background event generator (and /resume)
  POST /_sim/reset            every fault off
  POST /_sim/faults           {"fault": NAME, ...params}; NAME is one of
      stop_acks | resume_acks | blackhole {current, new} | heal | close {code, reason}
      ignore_pings {on} | latency {median, jitter, spike_rate, spike, seed} (op 11 and pong
      delays; median null: off)
      reconnect (op 7) | invalid_session {resumable, close_code} | delay {seconds}
      refuse {mode: "503"|"reset"} | accept | expire_tokens
      token {mode: "500"|"error_200"|"malformed", delay, expires_in}
      gateway {mode: "500"|"503"|"malformed", delay} | reject_resumes {count}
      withhold_hello {on} | withhold_ready {on} | hello_interval {value}
      clear_hello_interval | raw {kind, size} | event_rate {rate}
      pause_events | resume_events | reset
  example: curl -X POST localhost:8765/_sim/faults -d '{"fault": "blackhole"}'
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m qqbot_gateway.simulator",
        description="An embedded QQ Bot gateway (token, REST, WebSocket) with fault injection.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=CONTROL_API_HELP,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (0: ephemeral; default 8765)")
    p.add_argument("--app-id", default="1024")
    p.add_argument(
        "--client-secret",
        default=None,
        help=f"the secret bots must present (default: ${SECRET_ENV} or 's3cret')",
    )
    p.add_argument("--heartbeat-interval-ms", type=int, default=41_250)
    p.add_argument("--event-rate", type=float, default=0.0, help="events/s per session")
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--token-ttl", type=int, default=7200)
    p.add_argument("--resume-window", type=float, default=300.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--log-level", default="INFO")
    return p


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    secret = args.client_secret or os.environ.get(SECRET_ENV) or "s3cret"
    return SimulatorConfig(
        app_id=args.app_id,
        client_secret=secret,
        heartbeat_interval_ms=args.heartbeat_interval_ms,
        event_rate=args.event_rate,
        shards=args.shards,
        token_ttl=args.token_ttl,
        resume_window=args.resume_window,
        seed=args.seed,
    )


def _print_urls(sim: Simulator) -> None:
    print(f"QQ gateway simulator (app id {sim.config.app_id})", flush=True)
    print(f"  base (QQBOT_API_BASE):  {sim.base_url}", flush=True)
    print(f"  token (QQBOT_TOKEN_URL): {sim.token_url}", flush=True)
    print(f"  websocket:              {sim.ws_url}", flush=True)
    control = f"{sim.control_url}/state, {sim.control_url}/faults"
    print(f"  control API:            {control}", flush=True)
    print("Press Ctrl+C to stop.", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run_standalone(config, args.host, args.port, ready_callback=_print_urls))
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0
