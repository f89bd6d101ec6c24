"""End to end with a real Prometheus: the dashboard and the rules work against live metrics.

The adapter runs in-process against the embedded simulator (1 s heartbeats), with telemetry's
side server on 127.0.0.1. Debian's ``prometheus`` binary scrapes it every second and evaluates
dashboards/prometheus/rules.yml every second. The test then

* checks that every recording rule and every dashboard query (template variables replaced by
  the real job / instance / shard, ``$__rate_interval`` by 4 s) returns data (the SLO rules,
  dashboards/slo/rules.yml, are loaded too: the error-budget panels read them), and that every
  template variable's ``label_values`` selector finds its label;
* runs a webhook-transport client next to it (the simulator's platform side posting signed
  callbacks, some forged), scraped as a second target, so that the dashboard's Webhook row
  and the transport variable are checked against live data too;
* injects a silent death (the simulator blackholes the connection and every new one) and waits
  until the QQBotGatewaySilentDisconnect expression is true and Prometheus has the alert
  pending. The rule is scale-free (ACK age in heartbeat intervals, 4 of them), so it is the
  same expression that pages after ~3.8 minutes at QQ's 41.25 s.

Skipped only when the ``prometheus`` binary is not installed. Everything is bounded by timeouts;
Prometheus runs with a temporary storage directory and is always killed
(tests/prometheus_harness.py, shared with tests/test_alertmanager_e2e.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import CollectorRegistry

from qqbot_gateway.adapter.client import QQBotClient
from qqbot_gateway.adapter.protocol import GatewayEvent
from qqbot_gateway.simulator import Simulator
from qqbot_gateway.simulator.webhook import WebhookDeliverer, WebhookFaults
from qqbot_gateway.telemetry import Telemetry, TelemetryConfig
from qqbot_gateway.webhook_demo import webhook_stack

from .gateway_harness import INTERVAL, client_config, sim_config
from .prometheus_harness import (
    JOB,
    dashboard_queries,
    needs_prometheus,
    scraping,
    substitute,
    until,
)
from .test_dashboard_lint import DASHBOARD

pytestmark = [
    needs_prometheus,
    pytest.mark.timeout(150),
    pytest.mark.slow,
]

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "dashboards" / "prometheus" / "rules.yml"
SLO_RULES = ROOT / "dashboards" / "slo" / "rules.yml"


def _rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in (RULES, SLO_RULES)
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
        for rule in group["rules"]
    ]


def _variable_selectors(instance: str) -> dict[str, tuple[str, str]]:
    """Template variable -> (the label_values selector, the label it must find)."""
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    out: dict[str, tuple[str, str]] = {}
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", var["query"]["query"])
        assert m, var
        out[var["name"]] = (substitute(m.group(1), instance), m.group(2))
    return out


WEBHOOK_SECRET = "prometheus-e2e-webhook"
#: Metrics only stream delivery and workers export (the dashboard's Workers row).
_STREAM_METRIC = re.compile(r"qqbot_gateway_(stream|worker)_")


async def _feed_webhooks(url: str) -> None:
    """The platform side for the webhook target: signed callbacks, a fifth of them also forged."""
    faults = WebhookFaults(bad_signature=0.2)
    async with WebhookDeliverer(url, secret=WEBHOOK_SECRET, faults=faults, seed=1) as platform:
        while not await platform.validate():  # noqa: ASYNC110 - polls a remote endpoint
            await asyncio.sleep(0.5)
        while True:
            await platform.deliver(platform.make_event())
            await asyncio.sleep(0.1)


async def test_dashboard_and_rules_against_a_real_prometheus(tmp_path: Path) -> None:
    sim = Simulator(sim_config(event_rate=5.0))
    await sim.start("127.0.0.1", 0)
    client = QQBotClient(client_config(sim))

    async def ok_handler(event: GatewayEvent) -> None:
        await asyncio.sleep(0)

    async def failing_handler(event: GatewayEvent) -> None:
        raise RuntimeError("deliberate handler failure (handler_errors_total)")

    client.add_handler(ok_handler)
    client.add_handler(failing_handler, "READY")
    tel = Telemetry(
        TelemetryConfig(http_host="127.0.0.1", http_port=0, tracing=False, liveness_grace=30.0),
        registry=CollectorRegistry(),
    )
    tel.attach(client)
    # The intake journal on, as in the service: its panels need its series.
    hook_cm = webhook_stack(WEBHOOK_SECRET, path="/cb", state_dir=str(tmp_path / "state"))
    feeder: asyncio.Task[None] | None = None
    try:
        await tel.start()
        await client.start()
        hook = await hook_cm.__aenter__()
        feeder = asyncio.create_task(_feed_webhooks(hook.platform_url))
        target = str(urlsplit(str(tel.http_url)).netloc)
        hook_target = str(urlsplit(str(hook.telemetry.http_url)).netloc)
        async with scraping(tmp_path, target, hook_target, rule_files=[RULES, SLO_RULES]) as prom:
            query = prom.query

            async def rules_loaded() -> bool:
                names = {r.get("name") for r in await prom.rules()}
                return {r.get("alert") or r.get("record") for r in _rules()} <= names

            await until(rules_loaded, 15, "the rules to load", tmp_path)

            async def scraped_ready() -> bool:
                result = await query(f'qqbot_gateway_ready{{job="{JOB}", shard="0"}} == 1')
                return bool(result)

            await until(scraped_ready, 20 * INTERVAL, "a READY shard scraped by Prometheus")
            # A few heartbeats and scrapes so that every rate() has two samples.
            await asyncio.sleep(5 * INTERVAL)

            # ---- the silent death: current and new connections get nothing back
            sim.blackhole(current=True, new=True)
            silent = next(r for r in _rules() if r.get("alert") == "QQBotGatewaySilentDisconnect")

            async def silent_expr_true() -> bool:
                return bool(await query(silent["expr"]))

            await until(silent_expr_true, 30 * INTERVAL, "the silent-disconnect expression")
            (sample,) = await query(silent["expr"])
            assert sample["metric"]["shard"] == "0"
            assert sample["metric"]["job"] == JOB
            assert float(sample["value"][1]) >= 4  # ACK age >= 4 intervals

            async def alert_pending() -> bool:
                return bool(
                    await query('ALERTS{alertname="QQBotGatewaySilentDisconnect", shard="0"}')
                )

            await until(alert_pending, 10, "QQBotGatewaySilentDisconnect pending in Prometheus")

            # ---- every recording rule and every dashboard query returns data
            checks = {f"rule {r['record']}": r["record"] for r in _rules() if "record" in r}
            # The webhook panels against the webhook-transport target.
            checks.update(
                dashboard_queries(
                    lambda e: hook_target if "qqbot_gateway_webhook_" in e else target
                )
            )
            # The Workers row reads what `qqbot-gateway worker` and stream delivery export:
            # nothing here runs them (tests/test_workers_dashboard_e2e.py checks that they return
            # data off real workers). Here they must be valid PromQL that Prometheus accepts.
            stream_only = {k: e for k, e in checks.items() if _STREAM_METRIC.search(e)}
            for key, expr in stream_only.items():
                await query(expr)  # asserts status success
                del checks[key]
            missing = await prom.without_data(checks, 20)
            assert missing == {}, "queries without data"

            for name, (selector, label) in _variable_selectors(target).items():
                if name == "worker":  # workers only: tests/test_workers_dashboard_e2e.py
                    continue
                result = await query(selector)
                assert result, f"${name}: {selector} finds nothing"
                assert all(label in s["metric"] for s in result), name

            # The reconnects the silent death caused are visible by reason: the zombie verdict
            # (usually the ping layer's) and then the blackholed reconnects' missing Hello.
            # Polled: each reaches the recording rule a scrape and an evaluation later.
            silent_death = {"ping_timeout", "ack_timeout", "idle_timeout", "hello_timeout"}
            seen_reasons: set[str] = set()

            async def reasons_recorded() -> bool:
                reasons = await query(
                    f'sum by (reason) (qqbot_gateway:reconnects:rate5m{{job="{JOB}"}}) > 0'
                )
                seen_reasons.update(s["metric"]["reason"] for s in reasons)
                zombie = seen_reasons & {"ping_timeout", "ack_timeout", "idle_timeout"}
                return bool(zombie) and "hello_timeout" in seen_reasons

            await until(reasons_recorded, 20 * INTERVAL, "the zombie and Hello-timeout reasons")
            assert seen_reasons <= silent_death, seen_reasons
            sim.unblackhole()
    finally:
        if feeder is not None:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
        await hook_cm.__aexit__(None, None, None)
        tel.begin_shutdown()
        await client.close(drain_timeout=1.0)
        await tel.stop()
        await sim.stop()
