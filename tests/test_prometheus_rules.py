"""Prometheus rules: promtool check and unit tests, annotations, runbook anchors, metric names.

``promtool`` (Debian's ``prometheus`` package, or the upstream tarball) is required for the
promtool tests; they are skipped with that reason only when it is not on PATH. The other checks
(annotations, runbook anchors, unit-test coverage, metric names) need only PyYAML.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .test_dashboard_lint import DASHBOARD, METRICS_DOC, ROOT, all_panels, metric_names

RULES = ROOT / "dashboards" / "prometheus" / "rules.yml"
RULE_TESTS = sorted((ROOT / "dashboards" / "prometheus" / "tests").glob("*.yml"))
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_URL = "https://github.com/qqbot-gateway/qqbot-gateway/blob/main/docs/runbook.md"
SEVERITIES = {"critical", "warning", "info"}
RECORD_NAME = re.compile(r"^qqbot_gateway:[a-z0-9_]+:[a-z0-9_]+$")
ALERT_NAME = re.compile(r"^QQBotGateway[A-Z][A-Za-z]+$")

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)"
)


def load_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [r for r in load_rules() if "alert" in r]


def records() -> list[dict[str, Any]]:
    return [r for r in load_rules() if "record" in r]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def runbook_anchors() -> set[str]:
    anchors: set[str] = set()
    for line in RUNBOOK.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^#{1,6}\s+(.*)$", line)
        if m:
            anchors.add(github_anchor(m.group(1)))
    return anchors


def documented_metrics() -> set[str]:
    text = METRICS_DOC.read_text(encoding="utf-8")
    return set(re.findall(r"`(qqbot_gateway_[a-z0-9_]+)`", text))


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )


# ------------------------------------------------------------------------------ promtool


@needs_promtool
def test_promtool_check_rules() -> None:
    result = _run("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout


@needs_promtool
@pytest.mark.slow
def test_promtool_unit_tests_pass() -> None:
    assert RULE_TESTS, "no promtool unit tests found"
    result = _run("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout


@needs_promtool
@pytest.mark.slow
def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """A rules file with a wrong threshold makes the unit tests fail: they test something."""
    broken = RULES.read_text(encoding="utf-8").replace(
        "max_over_time(qqbot_gateway_ready[2m]) == 0", "max_over_time(qqbot_gateway_ready[2m]) > 5"
    )
    assert broken != RULES.read_text(encoding="utf-8")
    rules_dir = tmp_path / "prometheus"
    (rules_dir / "tests").mkdir(parents=True)
    (rules_dir / "rules.yml").write_text(broken, encoding="utf-8")
    for test in RULE_TESTS:
        shutil.copy(test, rules_dir / "tests" / test.name)
    result = _run("test", "rules", *map(str, sorted((rules_dir / "tests").glob("*.yml"))))
    assert result.returncode != 0
    assert "QQBotGatewayNoSession" in result.stdout + result.stderr


# ----------------------------------------------------------------------- rule structure


def test_recording_rule_names_follow_the_convention() -> None:
    names = [r["record"] for r in records()]
    assert names, "no recording rules"
    assert len(names) == len(set(names))
    for name in names:
        assert RECORD_NAME.match(name), f"{name} is not qqbot_gateway:<metric>:<operations>"


def test_alerts_have_severity_annotations_and_for() -> None:
    names = [a["alert"] for a in alerts()]
    assert len(names) == len(set(names))
    for alert in alerts():
        name = alert["alert"]
        assert ALERT_NAME.match(name), name
        assert alert.get("labels", {}).get("severity") in SEVERITIES, name
        annotations = alert.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            assert str(annotations.get(key, "")).strip(), f"{name} lacks {key}"
        assert alert.get("for"), f"{name} has no for: (a single bad scrape would page)"


def test_every_runbook_url_points_at_an_existing_section() -> None:
    anchors = runbook_anchors()
    for alert in alerts():
        url = alert["annotations"]["runbook_url"]
        base, _, anchor = url.partition("#")
        assert base == RUNBOOK_URL, url
        assert anchor == alert["alert"].lower(), url
        assert anchor in anchors, f"docs/runbook.md has no section for #{anchor}"


def test_runbook_sections_explain_each_alert() -> None:
    text = RUNBOOK.read_text(encoding="utf-8")
    for alert in alerts():
        section = text.split(f"## {alert['alert']}\n", 1)[1].split("\n## ", 1)[0]
        for part in ("**Meaning.**", "**Likely causes", "**What to check.**", "**What to do.**"):
            assert part in section, f"{alert['alert']} section lacks {part}"


def test_the_expected_alerts_exist() -> None:
    assert {a["alert"] for a in alerts()} >= {
        "QQBotGatewaySilentDisconnect",
        "QQBotGatewayNoSession",
        "QQBotGatewayReconnectFlapping",
        "QQBotGatewayTargetAbsent",
        "QQBotGatewayLivenessFailing",
        "QQBotGatewayFatalClose",
        "QQBotGatewayEventLoopLag",
        "QQBotGatewayPingLayerDisabled",
    }
    by_name = {a["alert"]: a for a in alerts()}
    assert 'absent(up{job="qqbot-gateway"} == 1)' in by_name["QQBotGatewayTargetAbsent"]["expr"]
    # Scale-free: the silent-disconnect rule compares against the exported gauges.
    silent = by_name["QQBotGatewaySilentDisconnect"]["expr"]
    assert "qqbot_gateway:heartbeat_ack_age_intervals:max1m" in silent
    assert re.search(r">=\s*4\b", silent), "the threshold is 4 heartbeat intervals"
    assert not re.search(r"[<>]=?\s*\d{2,}", silent), "absolute seconds in a scale-free rule"


def test_gauges_are_read_through_over_time_functions() -> None:
    """A failed scrape must not hide a problem: alerts read gauges via *_over_time."""
    gauges = {
        "qqbot_gateway_ready",
        "qqbot_gateway_healthy",
        "qqbot_gateway_connection_state",
        "qqbot_gateway_heartbeat_unacked_threshold",
        "qqbot_gateway_event_loop_lag_seconds",
        "qqbot_gateway_last_heartbeat_ack_age_seconds",
        "qqbot_gateway_heartbeat_interval_seconds",
    }
    for rule in load_rules():
        expr = re.sub(r"\s+", " ", rule["expr"])
        for gauge in gauges & metric_names(expr):
            for m in re.finditer(re.escape(gauge) + r"(?![a-z_])", expr):
                before = expr[: m.start()]
                assert re.search(r"(max|min)_over_time\($", before), (
                    f"{rule.get('alert') or rule.get('record')}: {gauge} read without "
                    "max_over_time/min_over_time"
                )


# --------------------------------------------------------------- unit-test coverage


def _unit_tests() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for path in RULE_TESTS:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert data["rule_files"] == ["../rules.yml"], path
        groups.extend(data["tests"])
    return groups


def test_every_alert_is_unit_tested_firing_not_firing_and_pending() -> None:
    firing: set[str] = set()
    not_firing: set[str] = set()
    pending: set[str] = set()
    for group in _unit_tests():
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else not_firing).add(case["alertname"])
        for case in group.get("promql_expr_test", []):
            for sample in case.get("exp_samples") or []:
                m = re.search(r'alertname="([^"]+)",alertstate="pending"', sample["labels"])
                if case["expr"].startswith("ALERTS") and m:
                    pending.add(m.group(1))
    names = {a["alert"] for a in alerts()}
    assert names - firing == set(), "alerts without a firing test"
    assert names - not_firing == set(), "alerts without a not-firing test"
    assert names - pending == set(), "alerts without a pending (for:) test"


def test_every_recording_rule_is_unit_tested() -> None:
    tested = {
        case["expr"].strip()
        for group in _unit_tests()
        for case in group.get("promql_expr_test", [])
        if case.get("exp_samples")
    }
    for rule in records():
        assert rule["record"] in tested, f"{rule['record']} has no promql_expr_test"


# ------------------------------------------------------------------------ metric names


def _allowed(name: str, documented: set[str], recorded: set[str]) -> bool:
    if name in documented or name in recorded or name in {"up", "ALERTS"}:
        return True
    if name.startswith("process_"):
        return True
    for suffix in ("_bucket", "_count", "_sum", "_created"):
        if name.endswith(suffix) and name[: -len(suffix)] in documented:
            return True
    return False


def test_every_metric_in_rules_and_dashboard_is_documented() -> None:
    documented = documented_metrics()
    assert "qqbot_gateway_heartbeat_rtt_seconds" in documented
    recorded = {r["record"] for r in records()}
    used: dict[str, str] = {}
    for rule in load_rules():
        for name in metric_names(rule["expr"]):
            used[name] = rule.get("alert") or rule["record"]
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            for name in metric_names(target["expr"]):
                used[name] = f"panel {panel['title']!r}"
    for var in dashboard["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", query["query"])
            assert m, query
            for name in metric_names(m.group(1)):
                used[name] = f"variable {var['name']}"
    undocumented = {n: w for n, w in used.items() if not _allowed(n, documented, recorded)}
    assert undocumented == {}, "metrics not in docs/metrics.md"
    # Every recording rule the dashboard uses exists.
    assert {n for n in used if ":" in n} <= recorded
    assert "qqbot_gateway_heartbeat_rtt_seconds_bucket" in used
