"""The stream and worker alerts (dashboards/prometheus/workers/): promtool check and unit tests,
annotations, runbook sections, metric names. The gateway's own rules: test_prometheus_rules.py.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from .test_dashboard_lint import ROOT, metric_names
from .test_prometheus_rules import (
    ALERT_NAME,
    RUNBOOK,
    RUNBOOK_URL,
    SEVERITIES,
    _run,
    documented_metrics,
    needs_promtool,
    runbook_anchors,
)

DIR = ROOT / "dashboards" / "prometheus" / "workers"
RULES = DIR / "rules.yml"
RULE_TESTS = sorted((DIR / "tests").glob("*.yml"))


def alerts() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [r for group in data["groups"] for r in group["rules"] if "alert" in r]


@needs_promtool
def test_promtool_check_and_unit_tests() -> None:
    result = _run("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert RULE_TESTS
    result = _run("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_the_unit_tests_can_fail(tmp_path: Path) -> None:
    broken = RULES.read_text(encoding="utf-8").replace(
        "> 0\n        for: 1m", "> 5\n        for: 1m"
    )
    assert broken != RULES.read_text(encoding="utf-8")
    (tmp_path / "tests").mkdir()
    (tmp_path / "rules.yml").write_text(broken, encoding="utf-8")
    for test in RULE_TESTS:
        shutil.copy(test, tmp_path / "tests" / test.name)
    result = _run("test", "rules", *map(str, sorted((tmp_path / "tests").glob("*.yml"))))
    assert result.returncode != 0
    assert "QQBotGatewayDeadLetters" in result.stdout + result.stderr


def test_the_alerts_exist_with_annotations_and_runbook_sections() -> None:
    by_name = {a["alert"]: a for a in alerts()}
    assert set(by_name) == {
        "QQBotGatewayStreamLagGrowing",
        "QQBotGatewayStreamFull",
        "QQBotGatewayDeadLetters",
    }
    anchors = runbook_anchors()
    text = RUNBOOK.read_text(encoding="utf-8")
    for name, alert in by_name.items():
        assert ALERT_NAME.match(name)
        assert alert["labels"]["severity"] in SEVERITIES
        assert alert.get("for"), name
        annotations = alert["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip()
        assert annotations["runbook_url"] == f"{RUNBOOK_URL}#{name.lower()}"
        assert name.lower() in anchors
        section = text.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        for part in ("**Meaning.**", "**Likely causes", "**What to check.**", "**What to do.**"):
            assert part in section, f"{name} section lacks {part}"


def test_every_alert_is_unit_tested_firing_not_firing_and_pending() -> None:
    firing: set[str] = set()
    not_firing: set[str] = set()
    pending: set[str] = set()
    for path in RULE_TESTS:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert data["rule_files"] == ["../rules.yml"], path
        for group in data["tests"]:
            for case in group.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else not_firing).add(case["alertname"])
            for case in group.get("promql_expr_test", []):
                for sample in case.get("exp_samples") or []:
                    m = re.search(r'alertname="([^"]+)",alertstate="pending"', sample["labels"])
                    if m:
                        pending.add(m.group(1))
    names = {a["alert"] for a in alerts()}
    assert names <= firing and names <= not_firing and names <= pending


def test_every_metric_in_the_rules_is_documented() -> None:
    documented = documented_metrics()
    for alert in alerts():
        for name in metric_names(alert["expr"]):
            assert name in documented, f"{alert['alert']}: {name} is not in docs/metrics.md"


@pytest.mark.parametrize("gauge", ["qqbot_gateway_stream_group_lag"])
def test_gauges_are_read_through_over_time_functions(gauge: str) -> None:
    for alert in alerts():
        expr = re.sub(r"\s+", " ", alert["expr"])
        for m in re.finditer(re.escape(gauge) + r"(?![a-z_])", expr):
            assert re.search(r"(max|min)_over_time\($|deriv\($", expr[: m.start()]), alert
