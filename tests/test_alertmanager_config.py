"""The example Alertmanager configuration: `amtool check-config`, `amtool config routes test`.

``amtool`` (Debian's ``prometheus-alertmanager`` package) is required; the tests are skipped with
that reason only when it is not on PATH. What the routes and inhibitions do with real alerts is
shown end to end in tests/test_alertmanager_e2e.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "dashboards" / "alertmanager" / "alertmanager.yml"
AMTOOL = shutil.which("amtool")
needs_amtool = pytest.mark.skipif(
    AMTOOL is None,
    reason="amtool is not installed (Debian: apt-get install prometheus-alertmanager)",
)


def _amtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert AMTOOL is not None
    return subprocess.run(
        [AMTOOL, *args], capture_output=True, text=True, timeout=30, cwd=ROOT, check=False
    )


def _config() -> dict[str, Any]:
    data = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@needs_amtool
def test_amtool_check_config() -> None:
    result = _amtool("check-config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert "2 inhibit rules" in result.stdout
    assert "4 receivers" in result.stdout


@needs_amtool
def test_amtool_check_config_fails_on_a_broken_config(tmp_path: Path) -> None:
    broken = tmp_path / "alertmanager.yml"
    broken.write_text(
        CONFIG.read_text(encoding="utf-8").replace("receiver: pager", "receiver: pagr"), "utf-8"
    )
    result = _amtool("check-config", str(broken))
    assert result.returncode != 0
    assert "pagr" in result.stdout + result.stderr


#: labels -> the receiver the alert must reach (and no other).
ROUTES = [
    ({"alertname": "Watchdog", "severity": "none", "app": "qqbot-gateway"}, "deadmansswitch"),
    (
        {
            "alertname": "QQBotGatewayNoSession",
            "severity": "critical",
            "app": "qqbot-gateway",
            "shard": "0",
        },
        "pager",
    ),
    (
        {
            "alertname": "QQBotGatewayAvailabilityBudgetBurn",
            "severity": "critical",
            "sloth_severity": "page",
            "app": "qqbot-gateway",
            "shard": "3",
        },
        "pager",
    ),
    (
        {
            "alertname": "QQBotGatewayAvailabilityBudgetBurn",
            "severity": "warning",
            "sloth_severity": "ticket",
            "app": "qqbot-gateway",
            "shard": "3",
        },
        "ticket",
    ),
    ({"alertname": "QQBotGatewayTargetDown", "severity": "warning"}, "ticket"),
    ({"alertname": "QQBotGatewayPingLayerDisabled", "severity": "info"}, "chat"),
    # A severity nobody routes falls back to the default receiver: tickets, never silence.
    ({"alertname": "SomethingElse", "severity": "unknown"}, "ticket"),
    # Watchdog goes to the switch only, whatever its severity says.
    ({"alertname": "Watchdog", "severity": "critical"}, "deadmansswitch"),
]


@needs_amtool
@pytest.mark.parametrize(("labels", "receiver"), ROUTES, ids=[r for _, r in ROUTES])
def test_amtool_routes(labels: dict[str, str], receiver: str) -> None:
    args = [f"{k}={v}" for k, v in labels.items()]
    result = _amtool(
        "config",
        "routes",
        "test",
        f"--config.file={CONFIG}",
        f"--verify.receivers={receiver}",
        *args,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


@needs_amtool
def test_amtool_routes_test_can_fail() -> None:
    result = _amtool(
        "config",
        "routes",
        "test",
        f"--config.file={CONFIG}",
        "--verify.receivers=pager",
        "alertname=QQBotGatewayReconnectFlapping",
        "severity=warning",
    )
    assert result.returncode != 0
    assert result.stdout.splitlines()[0] == "ticket"
    assert "did not match" in result.stdout


def test_grouping_inhibition_and_receivers() -> None:
    config = _config()
    route = config["route"]
    assert route["group_by"] == ["app", "shard"]
    by_receiver = {r["receiver"]: r for r in route["routes"]}
    watchdog = by_receiver["deadmansswitch"]
    assert watchdog["matchers"] == ['alertname = "Watchdog"']
    assert not watchdog.get("continue", False)
    # Re-sent often enough for a switch with a period of a few minutes.
    assert watchdog["repeat_interval"] == "1m"
    inhibit = {tuple(r["source_matchers"]): r for r in config["inhibit_rules"]}
    absent = inhibit[('alertname = "QQBotGatewayTargetAbsent"',)]
    assert absent["equal"] == ["app"]
    down = inhibit[('alertname = "QQBotGatewayTargetDown"',)]
    assert 'shard =~ ".+"' in down["target_matchers"]
    assert down["equal"] == ["app", "job", "instance"]
    for receiver in config["receivers"]:
        (hook,) = receiver["webhook_configs"]
        assert hook["url"].startswith("https://")
        assert hook["send_resolved"] == (receiver["name"] in {"pager", "ticket"})
