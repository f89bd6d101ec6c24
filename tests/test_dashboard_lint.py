"""The Grafana dashboard, checked by a Python implementation of Grafana's dashboard-linter rules.

Rules (named after grafana/dashboard-linter where one exists):

* ``template-datasource-rule``: a ``datasource`` variable of type datasource for Prometheus.
* ``panel-datasource-rule`` / ``target-datasource``: every panel and target uses ``${datasource}``.
* ``template-job-rule`` / ``template-instance-rule``: ``job`` and ``instance`` query variables
  (``label_values``) on ``${datasource}``; ``shard`` too, this dashboard being per shard.
* ``target-job-rule`` / ``target-instance-rule``: every metric selector of every expression
  filters on ``job=~"$job"`` and ``instance=~"$instance"``; selectors of metrics that carry a
  ``shard`` label (docs/metrics.md) also on ``shard=~"$shard"``.
* ``target-rate-interval-rule``: every ``rate``/``irate``/``increase`` uses ``$__rate_interval``.
* ``panel-title-description-rule`` / ``panel-units-rule``: title, description and a unit
  (``fieldConfig.defaults.unit``) on every panel; rows have titles.
* ``uid-rule``: the uid is the stable, well-formed one (links and provisioning depend on it).
* unique panel ids, no panel without targets, no target with an empty ``expr``.

The linter is tested against deliberately broken copies of the dashboard, so each rule is
shown to be able to fail.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "dashboards" / "grafana" / "qqbot-gateway.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"
RULES = ROOT / "dashboards" / "prometheus" / "rules.yml"

STABLE_UID = "qqbot-gateway-overview"
DATASOURCE_REF = "${datasource}"
UID_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")

# PromQL words that look like identifiers but are not metric names.
_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
        "atan2",
    }
)
_GROUPING = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*')


def selectors(expr: str) -> Iterator[tuple[str, dict[str, tuple[str, str]]]]:
    """Every vector/matrix selector in ``expr``: (metric name, {label: (op, value)}).

    A small PromQL scanner, enough for dashboards and rules: drops grouping clauses
    (``by (...)``, ``on (...)``), durations (``[5m]``), numbers and function calls, and reads
    the label matchers that follow each metric name.
    """
    text = _GROUPING.sub(" ", expr)
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == '"' or ch == "'":
            m = _STRING.match(text, i)
            i = m.end() if m else len(text)
            continue
        if ch == "[":
            i = text.index("]", i) + 1
            continue
        if ch == "{":  # a selector without a metric name: {__name__=...}
            end = _matcher_end(text, i)
            yield "", _parse_matchers(text[i + 1 : end])
            i = end + 1
            continue
        if ch.isdigit() or (ch == "." and i + 1 < len(text) and text[i + 1].isdigit()):
            m = re.compile(r"[0-9.eE+\-xXa-fA-F]+").match(text, i)
            i = m.end() if m else i + 1
            continue
        m = _IDENT.match(text, i)
        if m is None:
            i += 1
            continue
        name = m.group(0)
        j = m.end()
        while j < len(text) and text[j].isspace():
            j += 1
        if j < len(text) and text[j] == "(":  # a function call
            i = j
            continue
        if name.lower() in _KEYWORDS or name.startswith("$"):
            i = m.end()
            continue
        matchers: dict[str, tuple[str, str]] = {}
        if j < len(text) and text[j] == "{":
            end = _matcher_end(text, j)
            matchers = _parse_matchers(text[j + 1 : end])
            i = end + 1
        else:
            i = m.end()
        yield name, matchers


def _matcher_end(text: str, start: int) -> int:
    i = start + 1
    while i < len(text):
        if text[i] == '"':
            m = _STRING.match(text, i)
            assert m is not None, f"unterminated string in {text!r}"
            i = m.end()
            continue
        if text[i] == "}":
            return i
        i += 1
    raise AssertionError(f"unterminated selector in {text!r}")


def _parse_matchers(body: str) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    pos = 0
    body = body.strip()
    while pos < len(body):
        m = _MATCHER.match(body, pos)
        if m is None:
            raise AssertionError(f"cannot parse label matchers {body!r}")
        out[m.group(1)] = (m.group(2), m.group(3))
        pos = m.end()
        if pos < len(body) and body[pos] == ",":
            pos += 1
    return out


def metric_names(expr: str) -> set[str]:
    return {name for name, _ in selectors(expr) if name}


def _calls(expr: str, functions: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """(function, argument text) for every call of one of ``functions``."""
    for m in re.finditer(r"\b(" + "|".join(functions) + r")\s*\(", expr):
        depth = 0
        for k in range(m.end() - 1, len(expr)):
            if expr[k] == "(":
                depth += 1
            elif expr[k] == ")":
                depth -= 1
                if depth == 0:
                    yield m.group(1), expr[m.end() : k]
                    break


def shard_metrics(doc: str | None = None) -> set[str]:
    """Metrics whose ``labels`` column in docs/metrics.md includes ``shard``."""
    text = doc if doc is not None else METRICS_DOC.read_text(encoding="utf-8")
    names: set[str] = set()
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`qqbot_gateway_"):
            name = cells[0].strip("`")
            if "shard" in [label.strip() for label in cells[2].split(",")]:
                names.add(name)
    return names


def all_panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dash.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep their panels inside


def _base_name(metric: str, known: set[str]) -> str:
    for suffix in ("_bucket", "_count", "_sum"):
        if metric.endswith(suffix) and metric[: -len(suffix)] in known:
            return metric[: -len(suffix)]
    return metric


def recorded_with_shard(rules: dict[str, Any] | None = None) -> set[str]:
    """Recording rules of dashboards/prometheus/rules.yml whose series keep the ``shard`` label."""
    data = rules if rules is not None else yaml.safe_load(RULES.read_text(encoding="utf-8"))
    sharded = shard_metrics()
    out: set[str] = set()
    for group in data["groups"]:
        for rule in group["rules"]:
            if "record" not in rule:
                continue
            expr = rule["expr"]
            clauses = re.findall(r"\bby\s*\(([^()]*)\)", expr)
            if clauses:
                keeps = all("shard" in [x.strip() for x in c.split(",")] for c in clauses)
            else:
                keeps = any(_base_name(n, sharded) in sharded for n in metric_names(expr))
            if keeps:
                out.add(rule["record"])
    return out


def lint_dashboard(dash: dict[str, Any], *, shard_labelled: set[str] | None = None) -> list[str]:
    """Problems found in ``dash`` (empty when it passes every rule)."""
    problems: list[str] = []
    if shard_labelled is None:
        shard_labelled = shard_metrics() | recorded_with_shard()

    uid = dash.get("uid")
    if not isinstance(uid, str) or not UID_RE.match(uid):
        problems.append(f"uid-rule: uid {uid!r} is not a well-formed Grafana uid")
    elif uid != STABLE_UID:
        problems.append(f"uid-rule: uid {uid!r} changed (expected the stable {STABLE_UID!r})")
    if not dash.get("title"):
        problems.append("dashboard has no title")

    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if ds is None or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append(
            "template-datasource-rule: no 'datasource' variable of type datasource for prometheus"
        )
    for name in ("job", "instance", "shard"):
        var = variables.get(name)
        if var is None or var.get("type") != "query":
            problems.append(f"template-{name}-rule: no '{name}' query variable")
            continue
        query = var.get("query")
        query_text = query.get("query", "") if isinstance(query, dict) else str(query)
        if not query_text.startswith("label_values(") or not query_text.rstrip(" )").endswith(name):
            problems.append(f"template-{name}-rule: '{name}' is not label_values(..., {name})")
        if (var.get("datasource") or {}).get("uid") != DATASOURCE_REF:
            problems.append(f"template-{name}-rule: '{name}' does not use {DATASOURCE_REF}")
        if name != "job" and 'job=~"$job"' not in query_text:
            problems.append(f"template-{name}-rule: '{name}' is not filtered by $job")

    seen: set[int] = set()
    for panel in all_panels(dash):
        pid = panel.get("id")
        where = f"panel {pid} {panel.get('title')!r}"
        if not isinstance(pid, int):
            problems.append(f"{where}: id is not an integer")
        elif pid in seen:
            problems.append(f"{where}: duplicate panel id {pid}")
        else:
            seen.add(pid)
        if not panel.get("title"):
            problems.append(f"panel-title-description-rule: {where} has no title")
        if panel.get("type") == "row":
            continue
        if not panel.get("description"):
            problems.append(f"panel-title-description-rule: {where} has no description")
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if not unit:
            problems.append(f"panel-units-rule: {where} has no unit")
        if (panel.get("datasource") or {}).get("uid") != DATASOURCE_REF:
            problems.append(f"panel-datasource-rule: {where} does not use {DATASOURCE_REF}")
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{where}: no targets")
        for target in targets:
            problems.extend(_lint_target(where, target, shard_labelled))
    return problems


def _lint_target(where: str, target: dict[str, Any], shard_labelled: set[str]) -> list[str]:
    problems: list[str] = []
    ref = f"{where} target {target.get('refId')}"
    if (target.get("datasource") or {}).get("uid") != DATASOURCE_REF:
        problems.append(f"target-datasource: {ref} does not use {DATASOURCE_REF}")
    expr = target.get("expr")
    if not isinstance(expr, str) or not expr.strip():
        problems.append(f"{ref}: empty expr")
        return problems
    for fn, args in _calls(expr, ("rate", "irate", "increase")):
        ranges = re.findall(r"\[([^\]]*)\]", args)
        if not ranges or any(r != "$__rate_interval" for r in ranges):
            problems.append(f"target-rate-interval-rule: {ref}: {fn}() without $__rate_interval")
    found = False
    for name, matchers in selectors(expr):
        found = True
        # The SLO series (Sloth's slo:* rules, dashboards/slo/rules.yml) are aggregated over the
        # processes of a job on purpose (a shard may move between them): no instance label.
        labels = ("job",) if name.startswith("slo:") else ("job", "instance")
        for label in labels:
            if matchers.get(label) != ("=~", f"${label}"):
                problems.append(
                    f'target-{label}-rule: {ref}: {name or "{...}"} lacks {label}=~"${label}"'
                )
        if _base_name(name, shard_labelled) in shard_labelled and matchers.get("shard") != (
            "=~",
            "$shard",
        ):
            problems.append(f'target-shard-rule: {ref}: {name} lacks shard=~"$shard"')
    if not found:
        problems.append(f"{ref}: no metric selector in {expr!r}")
    return problems


# --------------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_dashboard_passes_the_linter(dashboard: dict[str, Any]) -> None:
    assert lint_dashboard(dashboard) == []


def test_dashboard_has_the_promised_rows_and_panels(dashboard: dict[str, Any]) -> None:
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == [
        "Fleet overview",
        "Heartbeat",
        "Liveness",
        "Events",
        "Process",
        "Webhook",
        "Error budgets",
        "Workers",
    ]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert "qqbot_gateway_transport_info" in variables["transport"]["definition"]
    assert 'transport=~"$transport"' in variables["instance"]["definition"]
    exprs = "\n".join(
        t["expr"] for p in all_panels(dashboard) for t in p.get("targets", []) if "expr" in t
    )
    for needle in (
        "qqbot_gateway_ready",
        "qqbot_gateway_healthy",
        "qqbot_gateway:reconnects:rate5m",
        "qqbot_gateway_heartbeats_sent_total",
        "qqbot_gateway_heartbeat_acks_total",
        "histogram_quantile(0.99, sum by (le) (rate(qqbot_gateway_heartbeat_rtt_seconds_bucket",
        "qqbot_gateway_heartbeat_unacked{",
        "qqbot_gateway_heartbeat_unacked_threshold",
        "qqbot_gateway_last_frame_age_seconds",
        "qqbot_gateway_last_heartbeat_ack_age_seconds",
        "qqbot_gateway_events_dispatched_total",
        "qqbot_gateway_handler_queue_depth",
        "qqbot_gateway_handler_errors_total",
        "qqbot_gateway_event_loop_lag_seconds",
        "process_resident_memory_bytes",
        "qqbot_gateway_webhook_requests_total",
        "histogram_quantile(0.99, sum by (le) (rate(qqbot_gateway_webhook_ack_seconds_bucket",
        "qqbot_gateway_webhook_last_callback_age_seconds",
        "qqbot_gateway_webhook_listening",
        'slo:period_error_budget_remaining:ratio{sloth_slo="availability"',
        'slo:period_error_budget_remaining:ratio{sloth_slo="delivery"',
        'slo:period_error_budget_remaining:ratio{sloth_slo="freshness"',
        'slo:current_burn_rate:ratio{sloth_slo="availability"',
        "qqbot_gateway_stream_group_lag",
        "qqbot_gateway_worker_events_total",
        "qqbot_gateway_stream_dead_letters",
    ):
        assert needle in exprs, needle


def test_grid_positions_do_not_overlap(dashboard: dict[str, Any]) -> None:
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps at {(x, y)}"
                cells.add((x, y))


def test_selector_scanner() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (le, shard) (rate(a_bucket{job=~"$job", le!="x{y}"}'
        '[$__rate_interval]))) / on (job) group_left (instance) b{instance=~"$instance"} > 0.5'
        ' and c or {__name__="d"} + 1e3'
    )
    found = list(selectors(expr))
    assert found == [
        ("a_bucket", {"job": ("=~", "$job"), "le": ("!=", "x{y}")}),
        ("b", {"instance": ("=~", "$instance")}),
        ("c", {}),
        ("", {"__name__": ("=", "d")}),
    ]
    assert metric_names("sum without (reason) (rate(x_total[5m])) * 60") == {"x_total"}
    assert shard_metrics() >= {"qqbot_gateway_ready", "qqbot_gateway_heartbeat_rtt_seconds"}
    assert "qqbot_gateway_healthy" not in shard_metrics()
    recorded = recorded_with_shard()
    assert "qqbot_gateway:reconnects:rate5m" in recorded
    assert "qqbot_gateway:heartbeat_ack_age_intervals:max1m" in recorded
    assert "qqbot_gateway:event_loop_lag_seconds:max1m" not in recorded


def _first_target(d: dict[str, Any]) -> dict[str, Any]:
    target: dict[str, Any] = next(p for p in all_panels(d) if p.get("targets"))["targets"][0]
    return target


def _first_panel(d: dict[str, Any]) -> dict[str, Any]:
    return next(p for p in all_panels(d) if p.get("type") != "row")


def _rate_panel_target(d: dict[str, Any]) -> dict[str, Any]:
    return next(
        t for p in all_panels(d) for t in p.get("targets", []) if "$__rate_interval" in t["expr"]
    )


def _shard_target(d: dict[str, Any]) -> dict[str, Any]:
    return next(
        t
        for p in all_panels(d)
        for t in p.get("targets", [])
        if "qqbot_gateway_heartbeats_sent_total" in t["expr"]
    )


def _drop_var(name: str) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        d["templating"]["list"] = [v for v in d["templating"]["list"] if v["name"] != name]

    return mutate


def _set(getter: Callable[[dict[str, Any]], dict[str, Any]], key: str, value: Any) -> Any:
    def mutate(d: dict[str, Any]) -> None:
        getter(d)[key] = value

    return mutate


def _replace_expr(
    getter: Callable[[dict[str, Any]], dict[str, Any]], old: str, new: str
) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        target = getter(d)
        assert old in target["expr"]
        target["expr"] = target["expr"].replace(old, new)

    return mutate


def _duplicate_id(d: dict[str, Any]) -> None:
    panels = [p for p in all_panels(d) if p.get("type") != "row"]
    panels[1]["id"] = panels[0]["id"]


def _drop_unit(d: dict[str, Any]) -> None:
    del _first_panel(d)["fieldConfig"]["defaults"]["unit"]


BROKEN: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "no datasource variable": (_drop_var("datasource"), "template-datasource-rule"),
    "no job variable": (_drop_var("job"), "template-job-rule"),
    "no instance variable": (_drop_var("instance"), "template-instance-rule"),
    "hard-coded panel datasource": (
        _set(_first_panel, "datasource", {"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}),
        "panel-datasource-rule",
    ),
    "hard-coded target datasource": (
        _set(_first_target, "datasource", {"type": "prometheus", "uid": "prom"}),
        "target-datasource",
    ),
    "no job filter": (_replace_expr(_first_target, 'job=~"$job", ', ""), "target-job-rule"),
    "no instance filter": (
        _replace_expr(_first_target, 'instance=~"$instance"', 'instance=~".*"'),
        "target-instance-rule",
    ),
    "no shard filter": (
        _replace_expr(_shard_target, ', shard=~"$shard"', ""),
        "target-shard-rule",
    ),
    "fixed rate window": (
        _replace_expr(_rate_panel_target, "[$__rate_interval]", "[5m]"),
        "target-rate-interval-rule",
    ),
    "no title": (_set(_first_panel, "title", ""), "panel-title-description-rule"),
    "no description": (_set(_first_panel, "description", ""), "panel-title-description-rule"),
    "no unit": (_drop_unit, "panel-units-rule"),
    "changed uid": (lambda d: d.update(uid="abc123"), "uid-rule"),
    "malformed uid": (
        lambda d: d.update(uid="has spaces and is far too long for a grafana uid"),
        "uid-rule",
    ),
    "duplicate panel id": (_duplicate_id, "duplicate panel id"),
    "empty expr": (_set(_first_target, "expr", "  "), "empty expr"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_linter_rejects_a_broken_copy(dashboard: dict[str, Any], case: str) -> None:
    mutate, rule = BROKEN[case]
    broken = copy.deepcopy(dashboard)
    mutate(broken)
    problems = lint_dashboard(broken)
    assert any(rule in p for p in problems), (case, problems)
