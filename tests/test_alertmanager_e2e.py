"""From a silent outage to a page: real Prometheus, real Alertmanager, a webhook receiver.

The adapter runs in-process against the embedded simulator (1 s heartbeats) with telemetry's
side server; Debian's ``prometheus`` scrapes it and evaluates the rules every second and sends
alerts to Debian's ``prometheus-alertmanager``, configured from the committed example
(dashboards/alertmanager/alertmanager.yml) with its receivers pointed at a small aiohttp
receiver in this test. Then:

1. **Inhibition**: a synthetic QQBotGatewayTargetDown and two per-shard alerts posted to
   Alertmanager's API: the shard on the down target is held back, the other one pages.
2. **Zombie fixed by the adapter**: the simulator blackholes the live connection; the adapter
   detects it and resumes; no page reaches the receiver, and Prometheus never has
   QQBotGatewayNoSession or the availability burn alert even pending.
3. **Outage**: the simulator closes the connection and refuses new ones until
   QQBotGatewayNoSession reaches the receiver, with ``shard`` and the runbook URL; the time
   from the outage's start is measured and bounded. The availability SLO's page arrives too.
4. **Recovery**: connections are accepted again; the resolved notification arrives.
5. **Watchdog**: it reaches the dead man's switch receiver on its own schedule throughout.

The rules are the committed ones with their time ranges and ``for:`` scaled by the heartbeat
interval (1 s here, 41.25 s on QQ), by scripts/gen_slo_rules.py's ``scale_rule_groups`` and
``--time-scale``: the test checks that the expressions are otherwise identical to the committed
ones. The availability SLI gets 40 minutes of healthy history, backfilled with ``promtool tsdb
create-blocks-from openmetrics`` before Prometheus starts, so that its long windows are full
as they are in production (a fresh Prometheus would judge a one-second blip against a few
seconds of history). Alertmanager's group_wait / group_interval / repeat_interval are shortened
in the copy the test runs; the routes, grouping, matchers and inhibitions are the committed ones.

A second, Alertmanager-only test posts QQBotGatewayTargetAbsent with a per-shard page, an SLO
burn and the Watchdog: only TargetAbsent pages, and the Watchdog still reaches the switch.

Skipped when ``prometheus``, ``prometheus-alertmanager`` or ``promtool`` is not installed.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

from qqbot_gateway.adapter.client import QQBotClient
from qqbot_gateway.simulator import Simulator
from qqbot_gateway.telemetry import Telemetry, TelemetryConfig
from tests.ports import free_port

from .gateway_harness import INTERVAL, client_config, sim_config
from .prometheus_harness import (
    ALERTMANAGER,
    JOB,
    PROMETHEUS,
    gen_slo_rules,
    query,
    ready,
    start_alertmanager,
    start_prometheus,
    stop,
    until,
)
from .test_prometheus_rules import RUNBOOK_URL

PROMTOOL = shutil.which("promtool")
pytestmark = [
    pytest.mark.skipif(
        PROMETHEUS is None or ALERTMANAGER is None or PROMTOOL is None,
        reason=(
            "prometheus, prometheus-alertmanager and promtool are needed "
            "(Debian: apt-get install prometheus prometheus-alertmanager)"
        ),
    ),
    pytest.mark.timeout(180),
    pytest.mark.slow,
]

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "dashboards" / "prometheus" / "rules.yml"
SLO_RULES = ROOT / "dashboards" / "slo" / "rules.yml"
AM_CONFIG = ROOT / "dashboards" / "alertmanager" / "alertmanager.yml"

#: Production windows are for QQ's 41.25 s heartbeat; the simulator's is INTERVAL.
SCALE = INTERVAL / 41.25
EVAL = 1.0  # scrape and rule evaluation interval
GROUP_WAIT = 1.0
GROUP_INTERVAL = 2.0
WATCHDOG_REPEAT = 4.0
#: What a loaded 2-core machine may add on top of a bound (scheduling, process start-up).
LOADED = 10.0
#: Seconds of healthy availability SLI backfilled before Prometheus starts: the scaled 1 d
#: window (35 min) is full, so even the ticket burns judge an outage against a full window.
HISTORY = 2400


def _seconds(duration: str) -> float:
    return float(gen_slo_rules().parse_duration(duration))


def _rule(groups: list[dict[str, Any]], name: str) -> dict[str, Any]:
    for group in groups:
        for rule in group["rules"]:
            if rule.get("alert") == name:
                return dict(rule)
    raise KeyError(name)


def _masked(expr: str) -> str:
    return re.sub(r"\[[0-9a-z:]+\]", "[]", expr)


def _scaled_rules(tmp: Path) -> tuple[list[Path], list[dict[str, Any]]]:
    """The committed rules with every range and ``for:`` times SCALE, written to ``tmp``."""
    gen = gen_slo_rules()
    committed = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    scaled = gen.scale_rule_groups(committed, SCALE)
    main = tmp / "rules.yml"
    main.write_text(yaml.safe_dump({"groups": scaled}), encoding="utf-8")
    slo = tmp / "slo_rules.yml"
    assert gen.main(["--time-scale", str(SCALE), "--output", str(slo)]) == 0
    slo_scaled = yaml.safe_load(slo.read_text(encoding="utf-8"))["groups"]
    slo_committed = yaml.safe_load(SLO_RULES.read_text(encoding="utf-8"))["groups"]
    # The expressions under test are the committed ones: only the ranges differ.
    for ours, theirs in ((scaled, committed), (slo_scaled, slo_committed)):
        a = [r for g in ours for r in g["rules"]]
        b = [r for g in theirs for r in g["rules"]]
        assert [_masked(r["expr"]) for r in a] == [_masked(r["expr"]) for r in b]
        assert [r.get("labels") for r in a] == [r.get("labels") for r in b]
    return [main, slo], scaled + slo_scaled


def _alertmanager_config(receiver_base: str) -> dict[str, Any]:
    """The committed configuration with the receivers pointed at the test and the timers short."""
    config = yaml.safe_load(AM_CONFIG.read_text(encoding="utf-8"))
    original = copy.deepcopy(config)
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = f"{receiver_base}/{receiver['name']}"
    routes = [config["route"], *config["route"]["routes"]]
    for route in routes:
        watchdog = route.get("receiver") == "deadmansswitch"
        route["group_wait"] = "0s" if watchdog else f"{GROUP_WAIT:g}s"
        route["group_interval"] = f"{GROUP_INTERVAL:g}s"
        route["repeat_interval"] = f"{WATCHDOG_REPEAT:g}s" if watchdog else "1h"
    # Nothing else differs from the committed file.
    strip = ("group_wait", "group_interval", "repeat_interval")
    for a, b in zip(routes, [original["route"], *original["route"]["routes"]], strict=True):
        assert {k: v for k, v in a.items() if k not in (*strip, "routes")} == {
            k: v for k, v in b.items() if k not in (*strip, "routes")
        }
    assert config["inhibit_rules"] == original["inhibit_rules"]
    return dict(config)


def _backfill(tmp: Path, now: float) -> None:
    """HISTORY seconds of a healthy shard 0 in the availability SLI's input series."""
    name = "qqbot_gateway:shard_available:bool"
    lines = [f"# TYPE {name} gauge"]
    start = int(now) - HISTORY
    lines += [f'{name}{{job="{JOB}",shard="0"}} 1 {t}' for t in range(start, int(now) - 5)]
    lines.append("# EOF")
    source = tmp / "history.om"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = tmp / "prometheus-data"
    data.mkdir()
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", str(source), str(data)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@dataclass
class Notification:
    at: float  # loop time of arrival
    receiver: str
    body: dict[str, Any]

    def alerts(self, name: str, status: str = "firing", **labels: str) -> list[dict[str, Any]]:
        return [
            a
            for a in self.body["alerts"]
            if a["labels"].get("alertname") == name
            and a["status"] == status
            and all(a["labels"].get(k) == v for k, v in labels.items())
        ]


class Receiver:
    """The webhook end of every receiver: records each notification with its arrival time."""

    def __init__(self) -> None:
        self.got: list[Notification] = []
        self.runner: web.AppRunner | None = None
        self.base = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{receiver}", self._post)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.base = f"http://127.0.0.1:{port}"

    async def _post(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.got.append(
            Notification(asyncio.get_running_loop().time(), request.match_info["receiver"], body)
        )
        return web.Response(text="ok")

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def find(
        self, receiver: str, name: str, status: str = "firing", *, after: float = 0.0, **labels: str
    ) -> list[tuple[Notification, dict[str, Any]]]:
        return [
            (n, a)
            for n in self.got
            if n.receiver == receiver and n.at >= after
            for a in n.alerts(name, status, **labels)
        ]


async def _post_alerts(http: aiohttp.ClientSession, am: str, alerts: list[dict[str, str]]) -> None:
    now = datetime.now(UTC)
    body = [
        {
            "labels": labels,
            "annotations": {"summary": "synthetic"},
            "startsAt": now.isoformat(),
            # Firing for longer than the test: their resolved notifications never mix in.
            "endsAt": (now + timedelta(minutes=10)).isoformat(),
        }
        for labels in alerts
    ]
    async with http.post(f"{am}/api/v2/alerts", json=body) as resp:
        assert resp.status == 200, await resp.text()


async def test_outage_pages_through_alertmanager_and_resolves(tmp_path: Path) -> None:
    rule_files, groups = _scaled_rules(tmp_path)
    no_session = _rule(groups, "QQBotGatewayNoSession")
    window = max(_seconds(d) for d in re.findall(r"\[(\w+)\]", no_session["expr"]))
    for_ = _seconds(no_session["for"])
    _backfill(tmp_path, time.time())

    sim = Simulator(sim_config(event_rate=2.0))
    await sim.start("127.0.0.1", 0)
    client = QQBotClient(client_config(sim))
    registry = CollectorRegistry()
    tel = Telemetry(
        TelemetryConfig(http_host="127.0.0.1", http_port=0, tracing=False, liveness_grace=30.0),
        registry=registry,
    )
    tel.attach(client)
    receiver = Receiver()
    procs: list[asyncio.subprocess.Process] = []
    loop = asyncio.get_running_loop()
    try:
        await tel.start()
        await client.start()
        await receiver.start()
        am_proc, am = await start_alertmanager(tmp_path, _alertmanager_config(receiver.base))
        procs.append(am_proc)
        target = str(urlsplit(str(tel.http_url)).netloc)

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:

            async def am_ready() -> bool:
                return await ready(http, am_proc, am, tmp_path)

            # Alertmanager first: Prometheus sends the Watchdog at its first evaluation.
            await until(am_ready, 30, "Alertmanager /-/ready", tmp_path)
            prom_proc, prom = await start_prometheus(
                tmp_path,
                target,
                rule_files=rule_files,
                alertmanager=urlsplit(am).netloc,
                # Re-send firing alerts every 2 s (production: 1 min), so that one send lost on
                # a loaded machine costs seconds, not the test.
                extra_args=("--rules.alert.resend-delay=2s",),
            )
            procs.append(prom_proc)

            async def prom_ready() -> bool:
                return await ready(http, prom_proc, prom, tmp_path)

            await until(prom_ready, 30, "Prometheus /-/ready", tmp_path)

            async def shard_available() -> bool:
                return bool(
                    await query(http, prom, 'qqbot_gateway:shard_available:bool{shard="0"} == 1')
                )

            await until(shard_available, 20, "shard 0 available in Prometheus", tmp_path)
            history = await query(
                http, prom, 'count_over_time(qqbot_gateway:shard_available:bool{shard="0"}[1h])'
            )
            assert float(history[0]["value"][1]) >= HISTORY - 10, history

            # ---- 1. inhibition: a target down holds back the per-shard alerts on it
            synthetic = {"app": "qqbot-gateway", "job": "synthetic"}
            await _post_alerts(
                http,
                am,
                [
                    {
                        **synthetic,
                        "alertname": "QQBotGatewayTargetDown",
                        "instance": "down:8080",
                        "severity": "warning",
                    },
                    {
                        **synthetic,
                        "alertname": "QQBotGatewayNoSession",
                        "instance": "down:8080",
                        "shard": "90",
                        "severity": "critical",
                    },
                    {
                        **synthetic,
                        "alertname": "QQBotGatewayNoSession",
                        "instance": "up:8080",
                        "shard": "91",
                        "severity": "critical",
                    },
                ],
            )

            async def synthetic_routed() -> bool:
                return bool(
                    receiver.find("pager", "QQBotGatewayNoSession", shard="91")
                    and receiver.find("ticket", "QQBotGatewayTargetDown", instance="down:8080")
                )

            await until(synthetic_routed, 20, "the synthetic page and ticket", tmp_path)
            await asyncio.sleep(2 * GROUP_INTERVAL)  # a held-back alert would be out by now
            assert receiver.find("pager", "QQBotGatewayNoSession", shard="90") == []
            assert not any(
                a["labels"].get("alertname") == "QQBotGatewayTargetDown"
                for n in receiver.got
                if n.receiver == "pager"
                for a in n.body["alerts"]
            )

            # ---- 2. a zombie the adapter fixes by itself pages nobody
            def zombies() -> float:
                return sum(
                    registry.get_sample_value(
                        "qqbot_gateway_reconnects_total", {"shard": "0", "reason": reason}
                    )
                    or 0.0
                    for reason in ("ping_timeout", "ack_timeout", "idle_timeout")
                )

            before = zombies()
            zombie_at = loop.time()
            assert sim.blackhole(current=True) == 1

            async def recovered() -> bool:
                return zombies() > before and (
                    registry.get_sample_value("qqbot_gateway_ready", {"shard": "0"}) == 1
                )

            await until(recovered, 10 * INTERVAL, "the adapter to detect and resume the zombie")
            # Long enough for NoSession to have fired and been notified, had it held.
            quiet_until = loop.time() + window + for_ + 2 * EVAL + GROUP_WAIT + 3
            watched = (
                'ALERTS{alertname=~"QQBotGatewayNoSession|'
                'QQBotGatewayAvailabilityBudgetBurn", shard="0"}'
            )
            while loop.time() < quiet_until:
                assert await query(http, prom, watched) == []
                await asyncio.sleep(0.5)
            pages = [
                n
                for n in receiver.got
                if n.receiver == "pager"
                and n.at >= zombie_at
                and any(a["labels"].get("job") == JOB for a in n.body["alerts"])
            ]
            assert pages == [], [n.body for n in pages]

            # ---- 3. an outage: close and refuse until the page arrives
            outage_at = loop.time()
            sim.refuse_connections("503")
            await sim.close_connections(4009)

            async def paged() -> bool:
                return bool(receiver.find("pager", "QQBotGatewayNoSession", shard="0"))

            # The bound: the expression is true `window` after the last ready scrape, then `for:`,
            # one scrape and one evaluation, then Alertmanager's wait. That wait is
            # group_interval, not group_wait: the shard's group (app, shard) is usually opened
            # a moment earlier by QQBotGatewaySilentDisconnect or the availability burn, and an
            # alert joining an open group goes out at its next group_interval tick. Plus 10 s
            # (the goal's slack) and LOADED for a busy 2-core machine.
            bound = window + for_ + EVAL + EVAL + GROUP_INTERVAL + 10 + LOADED
            await until(paged, bound + 10, "the QQBotGatewayNoSession page", tmp_path)
            note, alert = receiver.find("pager", "QQBotGatewayNoSession", shard="0")[0]
            elapsed = note.at - outage_at
            print(
                f"\noutage -> QQBotGatewayNoSession notification: {elapsed:.1f} s "
                f"(expression true after {window:.1f} s, for: {for_:.1f} s, bound {bound:.1f} s)"
            )
            assert elapsed <= bound
            assert elapsed >= window + for_ - 2 * EVAL  # not sooner than the rule allows
            assert alert["labels"]["job"] == JOB
            assert alert["labels"]["severity"] == "critical"
            assert alert["annotations"]["runbook_url"] == f"{RUNBOOK_URL}#qqbotgatewaynosession"
            assert note.body["groupLabels"] == {"app": "qqbot-gateway", "shard": "0"}

            # The availability SLO pages too: 7.2% of the (scaled) hour down, 14.4 x 0.5%.
            long_window = 3600 * SCALE
            slo_bound = 0.072 * long_window + 2 * EVAL + GROUP_INTERVAL + 10 + LOADED

            async def slo_paged() -> bool:
                return bool(
                    receiver.find(
                        "pager",
                        "QQBotGatewayAvailabilityBudgetBurn",
                        shard="0",
                        sloth_severity="page",
                    )
                )

            await until(slo_paged, slo_bound + 10, "the availability SLO page", tmp_path)
            slo_note, slo_alert = receiver.find(
                "pager", "QQBotGatewayAvailabilityBudgetBurn", shard="0", sloth_severity="page"
            )[0]
            print(
                f"outage -> availability burn page: {slo_note.at - outage_at:.1f} s "
                f"(bound {slo_bound:.1f} s)"
            )
            assert slo_note.at - outage_at <= slo_bound
            assert slo_alert["annotations"]["runbook_url"] == (
                f"{RUNBOOK_URL}#qqbotgatewayavailabilitybudgetburn"
            )

            # ---- 4. recovery: the resolved notification
            lifted_at = loop.time()
            sim.accept_connections()

            async def resolved() -> bool:
                return bool(
                    receiver.find(
                        "pager", "QQBotGatewayNoSession", "resolved", after=lifted_at, shard="0"
                    )
                )

            resolve_bound = 1.0 + 2 * EVAL + GROUP_INTERVAL + 10 + LOADED  # backoff cap 0.5 s
            await until(resolved, resolve_bound + 10, "the resolved notification", tmp_path)
            (done, _), *_ = receiver.find(
                "pager", "QQBotGatewayNoSession", "resolved", after=lifted_at, shard="0"
            )
            print(f"recovery -> resolved notification: {done.at - lifted_at:.1f} s")
            assert done.at - lifted_at <= resolve_bound

            # ---- 5. the Watchdog reached the dead man's switch on its own schedule
            dms = [n for n in receiver.got if n.receiver == "deadmansswitch"]
            assert len(dms) >= 3, [n.receiver for n in receiver.got]
            assert all(
                [a["labels"]["alertname"] for a in n.body["alerts"]] == ["Watchdog"] for n in dms
            )
            gaps = [b.at - a.at for a, b in itertools.pairwise(dms)]
            # Re-sent every repeat_interval (ticks of group_interval), not at every change.
            assert min(gaps) >= WATCHDOG_REPEAT - 1.0, gaps
            assert not any(
                a["labels"].get("alertname") == "Watchdog"
                for n in receiver.got
                if n.receiver != "deadmansswitch"
                for a in n.body["alerts"]
            )
    finally:
        for proc in procs:
            await stop(proc)
        await receiver.stop()
        tel.begin_shutdown()
        await client.close(drain_timeout=1.0)
        await tel.stop()
        await sim.stop()


async def test_target_absent_holds_back_every_other_alert_but_the_watchdog(tmp_path: Path) -> None:
    """No target scraped at all: QQBotGatewayTargetAbsent pages alone; the per-shard page and
    the SLO burn are held back; the Watchdog still reaches the dead man's switch."""
    receiver = Receiver()
    procs: list[asyncio.subprocess.Process] = []
    try:
        await receiver.start()
        am_proc, am = await start_alertmanager(tmp_path, _alertmanager_config(receiver.base))
        procs.append(am_proc)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:

            async def am_ready() -> bool:
                return await ready(http, am_proc, am, tmp_path)

            await until(am_ready, 30, "Alertmanager /-/ready", tmp_path)
            app = {"app": "qqbot-gateway"}
            await _post_alerts(
                http,
                am,
                [
                    # absent() leaves no job label: only app and severity.
                    {**app, "alertname": "QQBotGatewayTargetAbsent", "severity": "critical"},
                    {
                        **app,
                        "alertname": "QQBotGatewayNoSession",
                        "job": JOB,
                        "instance": "gw-0:8080",
                        "shard": "0",
                        "severity": "critical",
                    },
                    {
                        **app,
                        "alertname": "QQBotGatewayAvailabilityBudgetBurn",
                        "job": JOB,
                        "shard": "0",
                        "severity": "critical",
                        "sloth_severity": "page",
                    },
                    {**app, "alertname": "Watchdog", "severity": "none"},
                ],
            )

            async def routed() -> bool:
                return bool(
                    receiver.find("pager", "QQBotGatewayTargetAbsent")
                    and receiver.find("deadmansswitch", "Watchdog")
                )

            await until(routed, 20, "TargetAbsent paged and Watchdog at the switch", tmp_path)
            await asyncio.sleep(2 * GROUP_INTERVAL)  # a held-back alert would be out by now
            sent = {
                (n.receiver, a["labels"]["alertname"])
                for n in receiver.got
                for a in n.body["alerts"]
            }
            assert sent == {
                ("pager", "QQBotGatewayTargetAbsent"),
                ("deadmansswitch", "Watchdog"),
            }
    finally:
        for proc in procs:
            await stop(proc)
        await receiver.stop()
