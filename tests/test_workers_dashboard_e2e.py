"""The dashboard's Workers row and the workers' alert rules against real workers and Prometheus.

tests/test_prometheus_e2e.py checks every other panel query of the Grafana dashboard against
live data; the Workers row reads what only stream delivery (``QQBOT_DELIVERY=stream``) and
``qqbot-gateway worker`` export, so it is checked here, with the real thing:

* a real ``redis-server`` (the ``redis_server`` fixture), the simulator on 127.0.0.1, and
  ``qqbot-gateway run`` with stream delivery and ``qqbot-gateway worker`` as subprocesses with
  their side servers on free ports (tests/stream_harness.py, shared with
  tests/test_cluster_stream_e2e.py);
* the worker's handler fails the first delivery of every fifth event, so that failed outcomes
  and claims (the retries, which succeed) exist, and every delivery of one poison event, which
  reaches the dead-letter stream after ``QQBOT_STREAM_MAX_ATTEMPTS`` (2) deliveries;
* a real Prometheus scrapes both side servers every second and evaluates
  dashboards/prometheus/workers/rules.yml, which must load and evaluate without error.

Then every query of the Workers row (template variables as Grafana sends them, ``$instance``
the target that exports the metric, and the stream's state from each target alone) must return
data within a bounded time, and the counters the row plots must
show what was produced (failures, claims, a dead letter).

``qqbot_gateway_stream_append_blocked_total`` is on the row too: its rate is data (0) here. A
blocked append needs a stream at QQBOT_STREAM_MAX_LEN, i.e. the gateway pausing its intake;
tests/test_cluster_stream.py produces that in-process. Skipped when ``redis-server`` or
``prometheus`` is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from qqbot_gateway.simulator import Simulator

from .gateway_harness import sim_config
from .prometheus_harness import (
    JOB,
    WORKER_JOB,
    dashboard_queries,
    needs_prometheus,
    scraping,
    substitute,
    until,
)
from .redis_harness import RedisServer, needs_redis
from .stream_harness import Fleet
from .test_cli import APP_ID, SECRET
from .test_prometheus_e2e import _STREAM_METRIC

pytestmark = [
    needs_prometheus,
    needs_redis,
    pytest.mark.slow,
    pytest.mark.timeout(180),
]

ROOT = Path(__file__).resolve().parents[1]
WORKER_RULES = ROOT / "dashboards" / "prometheus" / "workers" / "rules.yml"
ROW = "Workers"
#: The stream's state, which the gateway and every worker export alike.
_SHARED_GAUGE = re.compile(r"qqbot_gateway_stream_(length|group_lag|group_pending|dead_letters)\b")
#: Generous for a loaded 2-core machine: data needs a few scrapes once events flow.
DATA_WITHIN = 45.0
#: $job as Grafana sends both selected: the gateway's job and the workers'.
JOBS = f"{JOB}|{WORKER_JOB}"


def _rule_names() -> set[str]:
    data = yaml.safe_load(WORKER_RULES.read_text(encoding="utf-8"))
    return {r.get("alert") or r["record"] for g in data["groups"] for r in g["rules"]}


def _variable_series(name: str, instance: str) -> str:
    """The series selector of the dashboard variable ``name``'s ``label_values`` query."""
    from .test_dashboard_lint import DASHBOARD

    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    (var,) = [v for v in dash["templating"]["list"] if v["name"] == name]
    m = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"]["query"])
    assert m, var["query"]
    return substitute(m.group(1), instance, JOBS)


def _row_for_worker(consumer: str, instance: str) -> str:
    """Every per-worker query of the Workers row with $worker = ``consumer``: each must return
    data (``and``-ed together, so one query string)."""
    exprs = [
        e.replace('consumer=~".*"', f'consumer=~"{consumer}"')
        for e in dashboard_queries(lambda e: instance, row=ROW, job=JOBS).values()
        if "qqbot_gateway_worker_" in e
    ]
    assert exprs and all(f'consumer=~"{consumer}"' in e for e in exprs), exprs
    return " and ".join(f"count({e}) > 0" for e in exprs)


async def _feed(sim: Simulator) -> None:
    """Ten events a second until cancelled: every rate() and histogram has something."""
    while True:
        await sim.emit_events(5, "C2C_MESSAGE_CREATE", shard=0)
        await asyncio.sleep(0.5)


async def test_the_workers_row_returns_data_off_real_workers(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    row = dashboard_queries(lambda e: ".*", row=ROW)
    # The row is exactly what tests/test_prometheus_e2e.py leaves to this test.
    everything = dashboard_queries(lambda e: ".*")
    assert row, f"no {ROW} row in the dashboard"
    assert set(row) == {k for k, e in everything.items() if _STREAM_METRIC.search(e)}

    config = sim_config(app_id=APP_ID, client_secret=SECRET, heartbeat_interval_ms=1000)
    feeder: asyncio.Task[None] | None = None
    async with Simulator(config) as sim:
        fleet = Fleet(sim, redis_server, tmp_path / "state")
        try:
            gateway = await fleet.gateway()
            await fleet.live_session(gateway, "a live session")
            worker = await fleet.worker(
                "w1", "--handler", "tests.stream_handlers:flaky", QQBOT_STREAM_MAX_ATTEMPTS="2"
            )
            targets = [p.env["QQBOT_HTTP_ADDR"] for p in (gateway, worker)]
            feeder = asyncio.create_task(_feed(sim))
            poison = await sim.emit_event("C2C_MESSAGE_CREATE", {"content": "poison", "id": "p"})
            assert poison
            # Dead-lettered before the first scrape: the alert below looks at the minimum over
            # 2 minutes, which a scrape from before the dead letter would hold at 0.
            await worker.wait(
                lambda: worker.logged("moved to the dead-letter stream"),
                "the poison event dead-lettered",
                60,
            )

            # Each query with $instance one target: the one that exports its metric (appends
            # and the bound: the gateway; worker_*: the worker). The stream's state is exported
            # by both (docs/workers.md), so those queries must return data from each alone.
            gw, wk = targets

            def exporter(expr: str) -> str:
                return wk if "qqbot_gateway_worker_" in expr else gw

            checks = {
                f"{k} @{'worker' if exporter(e) == wk else 'gateway'}": e
                for k, e in dashboard_queries(exporter, row=ROW, job=JOBS).items()
            }
            checks.update(
                {
                    f"{k} @worker": e
                    for k, e in dashboard_queries(lambda e: wk, row=ROW, job=JOBS).items()
                    if _SHARED_GAUGE.search(e)
                }
            )
            assert len(checks) > len(row)
            # What the panels must show, beyond "some series": the failures, the retries the
            # claims are, the dead letter, and the handled events.
            checks.update(
                {
                    "failed outcomes": 'qqbot_gateway_worker_events_total{outcome="failed"} > 0',
                    "handled outcomes": 'qqbot_gateway_worker_events_total{outcome="handled"} > 0',
                    "claims": "qqbot_gateway_worker_claims_total > 0",
                    "the dead letter (worker)": "qqbot_gateway_worker_dead_letters_total == 1",
                    "the dead letter (stream, both targets)": (
                        "count(qqbot_gateway_stream_dead_letters == 1) == 2"
                    ),
                    "appends": "qqbot_gateway_stream_appended_total > 0",
                    # The filters reach a worker: it exports build_info (the $job variable's
                    # source) and the $worker variable's series names it by its consumer name.
                    "build_info (worker)": (
                        f'qqbot_gateway_build_info{{job="{WORKER_JOB}", instance="{wk}"}} == 1'
                    ),
                    "worker target up": f'up{{job="{WORKER_JOB}", instance="{wk}"}} == 1',
                    "$worker lists w1": _variable_series("worker", wk).replace(
                        "}", ', consumer="w1"}', 1
                    ),
                    "the row narrowed to w1": _row_for_worker("w1", wk),
                }
            )

            # Each scraped under its documented job (deploy/prometheus/scrape-static.yml).
            async with scraping(
                tmp_path, gw, worker_targets=(wk,), rule_files=[WORKER_RULES]
            ) as prom:
                pending = await prom.without_data(checks, DATA_WITHIN)
                assert pending == {}, f"no data within {DATA_WITHIN:g}s"

                # The workers' alert rules loaded, and every one evaluates without error.
                rules: dict[str, dict[str, Any]] = {}

                async def rules_evaluated() -> bool:
                    loaded = await prom.rules()
                    rules.clear()
                    rules.update({r["name"]: r for r in loaded})
                    return set(rules) == _rule_names() and all(
                        r.get("health") == "ok" for r in rules.values()
                    )

                await until(rules_evaluated, 15, "the workers' rules to load and evaluate")
                assert not any(r.get("lastError") for r in rules.values()), rules
                # The dead letter sits in the stream: its alert's expression is already true
                # (it fires after `for: 1m`, longer than this test waits).
                dead = yaml.safe_load(WORKER_RULES.read_text(encoding="utf-8"))
                (expr,) = [
                    r["expr"]
                    for g in dead["groups"]
                    for r in g["rules"]
                    if r.get("alert") == "QQBotGatewayDeadLetters"
                ]
                assert await prom.query(expr)

            assert worker.logged("moved to the dead-letter stream")
        finally:
            if feeder is not None:
                feeder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feeder
            for p in fleet.procs:
                await p.cleanup()
