"""Tencent's ``qqbot-agent-sdk`` (what hermes main's QQ platform runs on) against a QQ-like
gateway, for ``benchmarks/bench_hermes.py``. Not part of the package, and it imports nothing of
this project: it runs with the Python of a separate virtual environment that has the SDK::

    python3 -m venv /tmp/qqsdk && /tmp/qqsdk/bin/pip install 'qqbot-agent-sdk==1.2.2'
    /tmp/qqsdk/bin/python benchmarks/qqsdk_driver.py APP_ID SECRET

The endpoints come from the SDK's own variables ``QQ_API_BASE`` and ``QQ_TOKEN_URL``. It wires
the SDK the way an adapter does (``QQApiClient`` for tokens and discovery, ``QQWebSocket`` with
``WSCallbacks``, the session kept in memory), prints one JSON line per happening on stdout::

    {"t": <time.monotonic()>, "ev": "connected" | "disconnected" | "message" | "fatal", ...}

(``connected`` carries the session id, so the benchmark knows which connections are the SDK's).

and stops when its stdin closes. ``time.monotonic()`` is CLOCK_MONOTONIC, shared by every process
of the machine, so the benchmark compares these times with its own.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"t": time.monotonic(), "ev": event, **fields}), flush=True)


async def main(app_id: str, secret: str) -> None:
    from qqbot_agent_sdk import QQApiClient, QQWebSocket, WSCallbacks

    api = QQApiClient(app_id, secret, log_tag="bench")
    session: dict[str, Any] = {"id": None, "seq": None}

    def set_session(session_id: str | None, seq: int | None) -> None:
        session["id"], session["seq"] = session_id, seq

    async def on_message(event_type: str, data: dict[str, Any]) -> None:
        emit("message", type=event_type, id=data.get("id"))

    callbacks = WSCallbacks(
        on_message_event=on_message,
        on_connected=lambda: emit("connected", session=session["id"]),
        on_disconnected=lambda: emit("disconnected"),
        on_fatal_error=lambda code, message: emit("fatal", code=code, message=message),
        get_token=api.ensure_token_sync,
        get_session=lambda: (session["id"], session["seq"]),
        set_session=set_session,
        set_heartbeat_interval=lambda seconds: None,
        clear_token=api.clear_token,
        fail_pending=lambda reason: None,
        get_gateway_url=api.get_gateway_url_sync,
    )
    ws = QQWebSocket(callbacks, log_tag="bench")
    loop = asyncio.get_running_loop()
    url = await asyncio.to_thread(api.get_gateway_url_sync)
    ws.start(url, loop)
    await loop.run_in_executor(None, sys.stdin.read)  # until the benchmark closes stdin
    await ws.async_stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
