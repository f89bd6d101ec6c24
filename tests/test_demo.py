"""``qqbot-gateway demo`` end to end: every fault detected and recovered, nothing lost."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qqbot_gateway.demo import DemoOptions, DemoTooShortError, minimum_duration, run_demo

ROOT = Path(__file__).resolve().parent.parent
#: A short interval keeps the run near 22 s; scaled up on slow machines.
SCALE = float(os.environ.get("QQBOT_TEST_TIME_SCALE", "1"))
INTERVAL = 0.5 * SCALE
DURATION = max(22.0, minimum_duration(INTERVAL) + 2)


@pytest.mark.slow
def test_demo_passes_non_interactive() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QQBOT_", "OTEL_"))}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "qqbot_gateway.cli",
            "demo",
            "--duration",
            f"{DURATION:g}",
            "--interval",
            f"{INTERVAL:g}",
            "--non-interactive",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=DURATION + 60,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Traceback" not in result.stderr
    # The URLs of the side server are printed first.
    for path in ("/healthz", "/readyz", "/metrics"):
        assert re.search(rf"http://127\.0\.0\.1:\d+{path}", out), path
    # Each fault was injected, detected and recovered from.
    for fault in ("blackhole", "op 7", "stopped ACKs", "server close 4009", "process restart"):
        assert f"injecting fault: {fault}" in out
        row = next(line for line in out.splitlines() if line.startswith(f"│ {fault} "))
        assert row.rstrip().endswith("│ ok     │"), row
    assert "detected: shard 0 disconnected (reconnect_requested)" in out
    assert "detected: shard 0 disconnected (server_close:4009)" in out
    totals = re.search(r"events: emitted (\d+), delivered (\d+), lost (\d+), duplicated (\d+)", out)
    assert totals is not None, out
    emitted, delivered, lost, duplicated = map(int, totals.groups())
    assert emitted > 0 and delivered == emitted
    assert lost == 0 and duplicated == 0
    # The adapter was replaced mid-stream and the new one resumed from the session store.
    assert "starting a new adapter from the session store" in out
    row = next(line for line in out.splitlines() if line.startswith("│ process restart "))
    assert "resumed" in row, row
    assert "PASS: 5/5 faults detected, 5/5 recovered, 0 events lost, 0 duplicated" in out


async def test_demo_refuses_a_duration_that_cannot_fit() -> None:
    with pytest.raises(DemoTooShortError, match="too short"):
        await run_demo(DemoOptions(duration=5.0, interval=1.0))


@pytest.mark.slow
def test_webhook_demo_passes() -> None:
    from qqbot_gateway.webhook_demo import MIN_DURATION

    env = {k: v for k, v in os.environ.items() if not k.startswith(("QQBOT_", "OTEL_"))}
    duration = f"{MIN_DURATION * SCALE:g}"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "qqbot_gateway.cli",
            "demo",
            "--transport",
            "webhook",
            "--duration",
            duration,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=MIN_DURATION * SCALE + 90,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Traceback" not in result.stderr
    assert "op 13 validation:  answered with a valid signature" in out
    for phase in ("forged and stale", "replays and duplicate storms", "failing receiver"):
        assert f"fault: {phase}" in out
    assert re.search(r"lost 0, duplicated 0, forged accepted 0", out), out
    assert out.rstrip().endswith("RESULT: ok")
