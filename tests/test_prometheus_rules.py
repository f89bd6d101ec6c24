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

from .prometheus_harness import gen_slo_rules
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


#: A bound against a hung promtool, not a speed check: the SLO unit tests evaluate days of
#: rules (about 40 s of CPU here) and took over 60 s with two suites on a 2-core machine.
PROMTOOL_TIMEOUT = 600


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args],
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT,
        cwd=ROOT,
        check=False,
    )


# ------------------------------------------------------------------------------ promtool


@needs_promtool
def test_promtool_check_rules() -> None:
    result = _run("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout


@needs_promtool
@pytest.mark.slow
@pytest.mark.timeout(PROMTOOL_TIMEOUT + 60)
def test_promtool_unit_tests_pass() -> None:
    assert RULE_TESTS, "no promtool unit tests found"
    result = _run("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout


@needs_promtool
@pytest.mark.slow
@pytest.mark.timeout(PROMTOOL_TIMEOUT + 60)
def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """A rules file with a wrong threshold makes the unit tests fail: they test something."""
    broken = RULES.read_text(encoding="utf-8").replace(
        "max_over_time(qqbot_gateway_ready[2m]) == 0", "max_over_time(qqbot_gateway_ready[2m]) > 5"
    )
    assert broken != RULES.read_text(encoding="utf-8")
    rules_dir = tmp_path / "prometheus"
    (rules_dir / "tests").mkdir(parents=True)
    (rules_dir / "rules.yml").write_text(broken, encoding="utf-8")
    # The test files that exercise the alert (all of them take about 20 s of promtool).
    covering = [t for t in RULE_TESTS if "QQBotGatewayNoSession" in t.read_text("utf-8")]
    assert covering, "no promtool test exercises QQBotGatewayNoSession"
    for test in covering:
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
    slo_recorded = {
        r["record"]
        for group in yaml.safe_load(
            (ROOT / "dashboards" / "slo" / "rules.yml").read_text(encoding="utf-8")
        )["groups"]
        for r in group["rules"]
        if "record" in r
    }
    undocumented = {n: w for n, w in undocumented.items() if n not in slo_recorded}
    assert undocumented == {}, "metrics not in docs/metrics.md"
    # Every recording rule the dashboard uses exists.
    assert {n for n in used if ":" in n} <= recorded | slo_recorded
    assert "qqbot_gateway_heartbeat_rtt_seconds_bucket" in used


# ----------------------------------------------------------------------- SLO rules (Sloth)

SLO_DIR = ROOT / "dashboards" / "slo"
SLO_RULES = SLO_DIR / "rules.yml"
SLO_TESTS = sorted((SLO_DIR / "tests").glob("*.yml"))
#: The windows and factors the runbook and the spec state, written here independently of the
#: generator: (short, long, factor) per severity.
STATED_WINDOWS = {
    "page": {("5m", "1h", 14.4), ("30m", "6h", 6.0)},
    "ticket": {("2h", "1d", 3.0), ("6h", "3d", 1.0)},
}
OBJECTIVES = {"availability": 99.5, "delivery": 99.9, "freshness": 99.5}


def _gen_slo() -> Any:
    return gen_slo_rules()


def slo_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(SLO_RULES.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def slo_alerts() -> list[dict[str, Any]]:
    return [r for r in slo_rules() if "alert" in r]


def test_slo_rules_are_generated_without_drift() -> None:
    gen = _gen_slo()
    assert gen.main(["--check"]) == 0, "run: python scripts/gen_slo_rules.py"


def test_slo_generator_detects_drift(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = _gen_slo()
    stale = tmp_path / "rules.yml"
    stale.write_text(SLO_RULES.read_text(encoding="utf-8").replace("14.4", "15"), "utf-8")
    monkeypatch.setattr(gen, "TARGET", stale)
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    assert gen.main(["--check"]) == 1


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.replace("objective: 99.9", "objective: 100"), "objective"),
        (lambda s: s.replace('version: "prometheus/v1"', 'version: "openslo/v1"'), "version"),
        (lambda s: s.replace("{{.window}}", "5m"), "no {{.window}} placeholder"),
        (lambda s: s.replace("#qqbotgatewaydeliverybudgetburn", "#delivery"), "runbook_url"),
        (
            lambda s: s.replace("          severity: critical", "          severity: page", 1),
            "severity",
        ),
    ],
)
def test_slo_generator_rejects_a_bad_spec_with_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: Any, message: str
) -> None:
    gen = _gen_slo()
    text = (SLO_DIR / "qqbot-gateway.yml").read_text(encoding="utf-8")
    bad = tmp_path / "spec.yml"
    bad.write_text(edit(text), encoding="utf-8")
    assert bad.read_text(encoding="utf-8") != text
    assert gen.main(["--spec", str(bad), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gen_slo_rules: ") and message in err, err


def test_slo_time_scale_scales_every_window_and_nothing_else(tmp_path: Path) -> None:
    gen = _gen_slo()
    assert gen.scale_ranges("rate(x[5m]) + y[1d:1m] + z[1h30m]", 0.5) == (
        "rate(x[2m30s]) + y[12h:30s] + z[45m]"
    )
    assert gen.format_duration(3600 / 41.25) == "1m27s273ms"
    out = tmp_path / "scaled.yml"
    assert gen.main(["--time-scale", "0.5", "--output", str(out)]) == 0
    scaled = yaml.safe_load(out.read_text(encoding="utf-8"))["groups"]
    committed = yaml.safe_load(SLO_RULES.read_text(encoding="utf-8"))["groups"]
    assert gen.scale_rule_groups(committed, 0.5) == scaled
    masked = re.compile(r"\[[0-9a-z:]+\]")
    for a, b in zip(
        (r for g in committed for r in g["rules"]),
        (r for g in scaled for r in g["rules"]),
        strict=True,
    ):
        assert masked.sub("[]", a["expr"]) == masked.sub("[]", b["expr"])
        assert {k: v for k, v in a.items() if k != "expr"} == {
            k: v for k, v in b.items() if k != "expr"
        }
    assert gen.main(["--time-scale", "0.5"]) == 2  # the committed files are never scaled


@needs_promtool
def test_promtool_check_slo_rules() -> None:
    result = _run("check", "rules", str(SLO_RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(slo_rules())} rules found" in result.stdout


@needs_promtool
@pytest.mark.slow
@pytest.mark.timeout(PROMTOOL_TIMEOUT + 60)
def test_promtool_slo_unit_tests_pass() -> None:
    assert len(SLO_TESTS) >= 3, SLO_TESTS
    result = _run("test", "rules", *map(str, SLO_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(SLO_TESTS)


@needs_promtool
@pytest.mark.slow
@pytest.mark.timeout(PROMTOOL_TIMEOUT + 60)
def test_promtool_burn_rate_tests_can_fail(tmp_path: Path) -> None:
    """A page alert at 16x instead of 14.4x fails the generated test of the 1 h pair."""
    text = SLO_RULES.read_text(encoding="utf-8")
    broken = text.replace("(14.4 * 0.005)", "(16 * 0.005)")
    assert broken != text
    (tmp_path / "tests").mkdir()
    (tmp_path / "rules.yml").write_text(broken, encoding="utf-8")
    tests = yaml.safe_load((SLO_DIR / "tests" / "burn_rate_page_test.yml").read_text("utf-8"))
    tests["tests"] = [
        t for t in tests["tests"] if t["name"].startswith("availability page") and "1h" in t["name"]
    ]
    assert len(tests["tests"]) == 1
    path = tmp_path / "tests" / "one.yml"
    path.write_text(yaml.safe_dump(tests), encoding="utf-8")
    result = _run("test", "rules", str(path))
    assert result.returncode != 0
    assert "QQBotGatewayAvailabilityBudgetBurn" in result.stdout + result.stderr


def _pairs(expr: str) -> set[tuple[str, str, float]]:
    """(short, long, factor) of every `short and long` condition of a Sloth alert expression."""
    found = re.findall(
        r"ratio_rate(\w+)\{[^}]*\} > \(([\d.]+) \* ([\d.e-]+)\)\) without \(sloth_window\)\s*"
        r"and\s*max\(slo:sli_error:ratio_rate(\w+)\{[^}]*\} > \(([\d.]+) \* ([\d.e-]+)\)\)",
        expr,
    )
    out = set()
    for short, f1, b1, long, f2, b2 in found:
        assert (f1, b1) == (f2, b2), expr
        out.add((short, long, float(f1)))
    return out


def test_slo_burn_rate_alerts_use_the_stated_windows_and_objectives() -> None:
    seen = set()
    for alert in slo_alerts():
        if alert["alert"] == "Watchdog":
            continue
        labels = alert["labels"]
        slo = labels["category"]
        severity = labels["sloth_severity"]
        assert labels["severity"] == {"page": "critical", "ticket": "warning"}[severity]
        assert labels["app"] == "qqbot-gateway"
        assert _pairs(alert["expr"]) == STATED_WINDOWS[severity], alert["alert"]
        budget = round(1 - OBJECTIVES[slo] / 100, 9)
        assert all(
            abs(float(b) - budget) < 1e-12
            for b in re.findall(r"> \([\d.]+ \* ([\d.e-]+)\)", alert["expr"])
        )
        assert "for" not in alert  # the short window does what for: would (Sloth's shape)
        seen.add((alert["alert"], severity))
    assert seen == {
        (f"QQBotGateway{slo.title()}BudgetBurn", sev)
        for slo in OBJECTIVES
        for sev in STATED_WINDOWS
    }


def test_every_burn_rate_alert_and_window_pair_is_promtool_tested() -> None:
    """Each (alert, severity, window pair) has a generated test that checks 1.05x fires,
    0.95x does not and a stopped burn resolves."""
    cases = set()
    for path in SLO_TESTS:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert data["rule_files"] == ["../rules.yml"], path
        if not path.name.startswith("burn_rate_"):
            continue
        for test in data["tests"]:
            for case in test.get("promql_expr_test", []):
                m = re.fullmatch(
                    r'ALERTS\{alertname="(\w+)",sloth_severity="(\w+)"\}', case["expr"]
                )
                if not m:
                    continue
                jobs = {
                    s["labels"].split('job="', 1)[1].split('"', 1)[0] for s in case["exp_samples"]
                }
                pair = re.search(r"over (\w+) and (\w+)", test["name"])
                assert pair, test["name"]
                cases.add((m.group(1), m.group(2), pair.group(2), pair.group(1), frozenset(jobs)))
    for alert in slo_alerts():
        if alert["alert"] == "Watchdog":
            continue
        severity = alert["labels"]["sloth_severity"]
        for short, long, _factor in STATED_WINDOWS[severity]:
            fired = frozenset({"above", "resolved"})
            assert (alert["alert"], severity, short, long, fired) in cases, (alert["alert"], short)
            assert (alert["alert"], severity, short, long, frozenset()) in cases


def test_slo_and_watchdog_alerts_have_runbook_sections() -> None:
    anchors = runbook_anchors()
    text = RUNBOOK.read_text(encoding="utf-8")
    names = {a["alert"] for a in slo_alerts()}
    assert "Watchdog" in names
    for alert in slo_alerts():
        annotations = alert["annotations"]
        for key in ("summary", "description", "runbook_url"):
            assert str(annotations.get(key, "")).strip(), f"{alert['alert']} lacks {key}"
        base, _, anchor = annotations["runbook_url"].partition("#")
        assert base == RUNBOOK_URL and anchor == alert["alert"].lower(), annotations["runbook_url"]
        assert anchor in anchors
        section = text.split(f"## {alert['alert']}\n", 1)[1].split("\n## ", 1)[0]
        for part in ("**Meaning.**", "**Likely causes", "**What to check.**", "**What to do.**"):
            assert part in section, f"{alert['alert']} section lacks {part}"


def test_watchdog_always_fires_and_every_alert_carries_the_app_label() -> None:
    (watchdog,) = [a for a in slo_alerts() if a["alert"] == "Watchdog"]
    assert watchdog["expr"].strip() == "vector(1)"
    assert "for" not in watchdog
    for alert in alerts() + slo_alerts():
        assert alert["labels"].get("app") == "qqbot-gateway", alert["alert"]


def test_availability_sli_counts_an_unscraped_process_as_down() -> None:
    (rule,) = [r for r in slo_rules() if r.get("record") == "qqbot_gateway:shard_available:bool"]
    expr = re.sub(r"\s+", " ", rule["expr"])
    assert "and on (job, instance) (up == 1)" in expr
    assert re.search(
        r"or max by \(job, shard\) \(last_over_time\(qqbot_gateway_ready\[1d\]\)\) \* 0", expr
    )


def test_every_metric_in_the_slo_rules_is_documented() -> None:
    documented = documented_metrics()
    recorded = {r["record"] for r in records()} | {
        r["record"] for r in slo_rules() if "record" in r
    }
    for rule in slo_rules():
        for name in metric_names(rule["expr"]):
            assert _allowed(name, documented, recorded), (
                name,
                rule.get("record") or rule.get("alert"),
            )
