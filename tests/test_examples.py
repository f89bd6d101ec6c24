"""Every file in examples/ runs against the simulator over real sockets, as a user runs it.

Each example is started as its own process (``python examples/X.py``, or ``qqbot-gateway run
--handler handlers:echo`` from examples/ for the handler module) with the settings a user would
export, pointed at an in-process simulator. The test sends it a real C2C message (over the
gateway, or as a signed callback for the webhook examples), waits for the bot's reply to reach
the simulator's send endpoint, then stops it with SIGTERM, as Ctrl-C or an orchestrator would,
and expects exit 0. tests/test_docs_drift.py keeps the README's and docs' snippets equal to
these files.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import sys
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from qqbot_gateway.simulator import Simulator
from qqbot_gateway.simulator.records import DispatchRecord
from qqbot_gateway.simulator.webhook import WebhookDeliverer
from tests import nonebot_harness
from tests.gateway_harness import APP_ID, INTERVAL, SECRET, poll_until, sim_config
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
#: example -> how it receives events
CASES = {
    "echo_bot.py": "websocket",
    "telemetry_bot.py": "websocket",
    "webhook_bot.py": "webhook",
    "webhook_own_server.py": "webhook",
    "handlers.py": "websocket",
    "nonebot_bot.py": "nonebot",
}
STARTUP = 60.0  # seconds: an interpreter start and a first session on a loaded machine
STOP = 30.0


def test_every_example_is_run() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(CASES)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator(sim_config())
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


async def _emit_nonebot(sim: Simulator) -> list[DispatchRecord]:
    event_type, data = nonebot_harness.message("c2c", 1, prefix="EX")
    return await sim.emit_event(event_type, data, event_id=f"{event_type}:{data['id']}")


def _replies(sim: Simulator) -> list[str]:
    out = []
    for m in sim.messages:
        body = m.body if isinstance(m.body, dict) else {}
        content = body.get("content")
        if isinstance(content, str):
            out.append(content)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
async def test_example_runs_against_the_simulator(
    name: str, sim: Simulator, tmp_path: Path
) -> None:
    transport = CASES[name]
    http_port, webhook_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QQBOT_", "OTEL_"))} | {
        "QQBOT_APP_ID": APP_ID,
        "QQBOT_CLIENT_SECRET": SECRET,
        "QQBOT_API_BASE": sim.base_url,
        "QQBOT_TOKEN_URL": sim.token_url,
        "QQBOT_STATE_DIR": str(tmp_path / "state"),
        "QQBOT_HTTP_ADDR": f"127.0.0.1:{http_port}",
        "QQBOT_LOG_FORMAT": "json",
        "PYTHONPATH": str(ROOT),
    }
    if transport == "webhook":
        env |= {"QQBOT_TRANSPORT": "webhook", "QQBOT_WEBHOOK_ADDR": f"127.0.0.1:{webhook_port}"}
    if transport == "nonebot":
        # NoneBot's own configuration keys, as a NoneBot user has them in .env; the session
        # store and the side server through QQBOT_* as for every example.
        env = nonebot_harness.bot_env(sim, state_dir=tmp_path / "state") | {
            "QQBOT_HTTP_ADDR": f"127.0.0.1:{http_port}",
            "PYTHONPATH": str(ROOT),
        }
    if name == "handlers.py":
        argv = [sys.executable, "-m", "qqbot_gateway", "run", "--handler", "handlers:echo"]
        argv.append("--print-events")
    else:
        argv = [sys.executable, str(EXAMPLES / name)]
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=EXAMPLES, env=env, stdout=out, stderr=err
        )

    def output() -> str:
        return f"stdout:\n{stdout.read_text()}\nstderr:\n{stderr.read_text()[-3000:]}"

    try:
        records: list[DispatchRecord] = []
        if transport == "nonebot":
            # A message shaped as QQ sends it (nonebot-adapter-qq's models need every field).
            async with asyncio.timeout(STARTUP):
                while not (records := await _emit_nonebot(sim)):
                    assert proc.returncode is None, output()
                    await asyncio.sleep(0.05)
            content = None
        elif transport == "websocket":
            async with asyncio.timeout(STARTUP):
                while not records:  # emits only once a live (READY) session exists
                    assert proc.returncode is None, output()
                    records = await sim.emit_event("C2C_MESSAGE_CREATE")
                    await asyncio.sleep(0.05)
            (record,) = records
            assert record.type == "C2C_MESSAGE_CREATE"
            content = None  # the simulator picks the text
        else:
            url = f"http://127.0.0.1:{webhook_port}/qqbot/callback"
            await poll_until(
                lambda: "receiving callbacks on" in stdout.read_text(),
                STARTUP,
                lambda: f"the receiver\n{output()}",
            )
            async with WebhookDeliverer(url, secret=SECRET, app_id=APP_ID, seed=3) as platform:
                payload = platform.make_event("C2C_MESSAGE_CREATE")
                assert await platform.deliver(payload), output()
            content = payload["d"]["content"]
        reply = await poll_until(
            lambda: [r for r in _replies(sim) if r.startswith("you said: ")],
            20 * INTERVAL + 10,
            lambda: f"a reply; the simulator got {_replies(sim)}\n{output()}",
        )
        assert len(reply) == 1, reply
        if content is not None:
            assert reply == [f"you said: {content}"]
        if name == "telemetry_bot.py":
            async with aiohttp.ClientSession() as http:
                base = f"http://127.0.0.1:{http_port}"
                async with http.get(f"{base}/metrics") as r:
                    assert r.status == 200
                    assert "qqbot_gateway_heartbeats_sent_total" in await r.text()
                async with http.get(f"{base}/healthz") as r:
                    assert r.status == 200, await r.text()
        if name == "handlers.py":
            lines = [json.loads(line) for line in stdout.read_text().splitlines() if line]
            assert any(e["type"] == "C2C_MESSAGE_CREATE" for e in lines), output()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(STOP):
            code = await proc.wait()
        assert code == 0, output()
        assert "Traceback" not in stderr.read_text(), output()
        # The session store was on (load_settings() turns it on): the state is kept.
        state = tmp_path / "state" / APP_ID
        kept = {p.name for p in state.glob("*.json")}
        assert kept == ({"webhook.json"} if transport == "webhook" else {"shard-0.json"}), kept
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _quick_start() -> list[list[str]]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line.split("#", 1)[0]) for line in block.splitlines() if line.strip()]


@pytest.mark.slow
async def test_the_readme_quick_start_against_the_simulator(sim: Simulator, tmp_path: Path) -> None:
    """The README's quick start, typed as it stands, with the simulator in QQ's place (the
    simulator's app id is the README's, the secret file holds the simulator's secret, and
    QQBOT_API_BASE / QQBOT_TOKEN_URL point at it): `check` exits 0, then `run --print-events`
    prints a dispatched event and stops cleanly on SIGTERM."""
    export, check, run = _quick_start()
    assert export[0] == "export" and check[1:] == ["check"] and run[1] == "run", (export, check)
    (tmp_path / "client-secret").write_text(SECRET + "\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QQBOT_", "OTEL_"))}
    for assignment in export[1:]:
        name, value = assignment.split("=", 1)
        env[name] = value.replace("$PWD", str(tmp_path))
    assert set(env) >= {"QQBOT_APP_ID", "QQBOT_CLIENT_SECRET_FILE"}
    qq = Simulator(sim_config(app_id=env["QQBOT_APP_ID"]))
    await qq.start()
    try:
        env |= {
            "QQBOT_API_BASE": qq.base_url,
            "QQBOT_TOKEN_URL": qq.token_url,
            "QQBOT_STATE_DIR": str(tmp_path / "state"),
            "QQBOT_HTTP_ADDR": f"127.0.0.1:{free_port()}",
        }
        cli = [sys.executable, "-m", "qqbot_gateway"]
        proc = await asyncio.create_subprocess_exec(
            *cli, *check[1:], cwd=tmp_path, env=env, stdout=PIPE, stderr=PIPE
        )
        async with asyncio.timeout(STARTUP):
            out, err = await proc.communicate()
        assert proc.returncode == 0, (out + err).decode()
        assert SECRET not in (out + err).decode()
        stdout = tmp_path / "stdout"
        with stdout.open("wb") as sink:
            proc = await asyncio.create_subprocess_exec(
                *cli, *run[1:], cwd=tmp_path, env=env, stdout=sink, stderr=PIPE
            )
        try:
            async with asyncio.timeout(STARTUP):
                while not await qq.emit_event("C2C_MESSAGE_CREATE"):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # emits once the session is live
            await poll_until(
                lambda: '"C2C_MESSAGE_CREATE"' in stdout.read_text(), STARTUP, "an event line"
            )
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(STOP):
                _, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    finally:
        await qq.stop()
