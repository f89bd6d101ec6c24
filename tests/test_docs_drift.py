"""The README and docs/ against the code: a documented setting, metric, route, example or
command that drifts from what the code does fails here.

(The settings table itself is generated and checked in tests/test_config.py, the metric table in
tests/test_telemetry_metrics.py, the Kubernetes guide in tests/test_kubernetes_manifests.py.)
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import aiohttp
import pytest

from qqbot_gateway import config
from qqbot_gateway.telemetry import Telemetry, TelemetryConfig
from qqbot_gateway.telemetry.metric_spec import METRICS

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
FRONT = [
    ROOT / "README.md",
    ROOT / "CHANGELOG.md",
    ROOT / "SECURITY.md",
    ROOT / "examples" / "README.md",
]
PAGES = FRONT + DOCS
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
DEMO = "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/qqbot-gateway demo"
TESTS = "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && .venv/bin/pytest"
#: Pages that may name the removed settings: to say they are gone.
REMOVED_OK = {"CHANGELOG.md", "configuration.md", "troubleshooting.md"}


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _blocks(text: str, lang: str) -> list[str]:
    return [
        textwrap.dedent(block)
        for block in re.findall(rf"^ *```{lang}\n(.*?)^ *```", text, re.S | re.M)
    ]


# ------------------------------------------------------------------------------ examples


def _in_example(snippet: str) -> bool:
    """True if ``snippet`` is a run of consecutive lines of an example, up to indentation."""
    want = snippet.strip("\n").splitlines()
    for path in EXAMPLES:
        lines = _text(path).splitlines()
        for start in range(len(lines) - len(want) + 1):
            window = "\n".join(lines[start : start + len(want)])
            if textwrap.dedent(window).splitlines() == want:
                return True
    return False


def _python_snippets() -> list[tuple[str, str]]:
    return [
        (f"{page.name}#{i}", block)
        for page in PAGES
        for i, block in enumerate(_blocks(_text(page), "python"))
    ]


@pytest.mark.parametrize("name,snippet", _python_snippets(), ids=[n for n, _ in _python_snippets()])
def test_every_python_snippet_is_cut_from_a_runnable_example(name: str, snippet: str) -> None:
    assert _in_example(snippet), f"{name} is not in examples/ (tests/test_examples.py runs those)"


def test_the_snippet_check_can_fail() -> None:
    assert _python_snippets(), "no snippet found: the block pattern is broken"
    assert not _in_example("client = QQBotClient(ClientConfig(app_id='1'))\nawait client.run()")


def test_every_linked_example_exists() -> None:
    for page in PAGES:
        for link in re.findall(r"examples/([\w.]+\.py)", _text(page)):
            assert (ROOT / "examples" / link).is_file(), f"{page.name} links examples/{link}"


# ---------------------------------------------------------------------- settings


def _known_variable(name: str) -> bool:
    key = name.removeprefix(config.ENV_PREFIX).lower()
    return (
        key in config.SETTING_NAMES
        or name in config._OTHER_VARIABLES
        or name.startswith(config._OTHER_PREFIXES)
    )


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_documented_variable_exists(page: Path) -> None:
    removed = {config.ENV_PREFIX + k.upper() for k in config.REMOVED_SETTINGS}
    for name in sorted(set(re.findall(r"\bQQBOT_[A-Z0-9_]*[A-Z0-9]\b", _text(page)))):
        if name in removed:
            assert page.name in REMOVED_OK, f"{page.name} documents removed {name}"
            continue
        if page.name == "hermes.md" and name.startswith("QQBOT_HERMES_"):
            continue  # the hermes plugin's own variables (docs/hermes.md)
        assert _known_variable(name), f"{page.name}: {name} is not a setting"


def test_the_changelog_lists_every_removed_setting() -> None:
    changelog = _text(ROOT / "CHANGELOG.md")
    table = re.findall(r"^\s*\| `QQBOT_([A-Z_]+)` / `(\w+)` \| `QQBOT_([A-Z_]+)`", changelog, re.M)
    assert {old.lower() for old, _, _ in table} == set(config.REMOVED_SETTINGS)
    for old, key, new in table:
        assert key == old.lower()
        assert new.lower() in config.SETTING_NAMES
        assert new.lower() in config.REMOVED_SETTINGS[key]  # the replacement the error names


# ---------------------------------------------------------------------- metrics


def _metric_names() -> set[str]:
    return {f"qqbot_gateway_{m.name}" for m in METRICS}


#: docs/hermes.md also names the plugin's error codes (``qqbot_gateway_session_store``, some
#: built from a close reason at run time); there only names with a metric's unit suffix count.
METRIC_SUFFIX = re.compile(r"_(total|seconds|bytes|info|events|depth|seq|ratio|armed|listening)$")


def _is_metric(full: str) -> bool:
    known = _metric_names()
    if full.endswith("_"):  # a family written as a prefix: `qqbot_gateway_checkpoint_*`
        return any(name.startswith(full) for name in known)
    suffixes = ("_bucket", "_count", "_sum", "_created")
    return any(full.removesuffix(s) in known for s in ("", *suffixes))


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_documented_metric_exists(page: Path) -> None:
    for full in sorted(set(re.findall(r"\bqqbot_gateway_[a-z0-9_]+", _text(page)))):
        if page.name == "hermes.md" and not METRIC_SUFFIX.search(full):
            continue
        assert _is_metric(full), f"{page.name}: {full} is not a metric"


def test_the_metric_check_can_fail() -> None:
    assert _is_metric("qqbot_gateway_heartbeats_sent_total")
    assert _is_metric("qqbot_gateway_heartbeat_rtt_seconds_bucket")
    assert not _is_metric("qqbot_gateway_heartbeats_missed_total")
    assert not _is_metric("qqbot_gateway_nothing_")


# ---------------------------------------------------------------------- routes


def _documented_routes() -> set[str]:
    operations = _text(ROOT / "docs" / "operations.md")
    table = operations.split("| endpoint | meaning |", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"`GET (/[\w./]*)`", table)) | set(
        re.findall(r"\(alias `(/[\w./]*)`\)", table)
    )


async def test_every_documented_route_is_served_and_every_route_documented() -> None:
    documented = _documented_routes()
    assert {"/healthz", "/readyz", "/metrics", "/status.json"} <= documented
    telemetry = Telemetry(TelemetryConfig(http_host="127.0.0.1", http_port=0, tracing=False))
    await telemetry.start()
    try:
        assert telemetry.server is not None
        served = {
            info["path"]
            for resource in telemetry.server.app.router.resources()
            for info in [resource.get_info()]
            if "path" in info and not info["path"].startswith("/static/")
        }
        assert served == documented
        async with aiohttp.ClientSession() as http:
            for route in sorted(documented):
                async with http.get(f"{telemetry.http_url}{route}") as r:
                    assert r.status != 404, route
            async with http.get(f"{telemetry.http_url}/not-documented") as r:
                assert r.status == 404
    finally:
        await telemetry.stop()


# ---------------------------------------------------------------------- commands


def test_the_two_commands_are_exactly_the_ones_that_run() -> None:
    readme = _text(ROOT / "README.md")
    sh = _blocks(readme, "sh")
    assert [DEMO] == [b.strip() for b in sh if "demo" in b and "venv" in b]
    assert [TESTS] == [b.strip() for b in sh if "pytest" in b]
    ci = _text(ROOT / ".ci" / "run").strip().splitlines()
    assert ci[-1] == TESTS, "the README's test command is the last line of .ci/run"
    development = _text(ROOT / "docs" / "development.md")
    assert DEMO in development and TESTS in development


def test_the_quick_start_checks_before_it_runs() -> None:
    readme = _text(ROOT / "README.md")
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [line for b in _blocks(quick, "sh") for line in b.splitlines()]
    checks = [i for i, c in enumerate(commands) if "qqbot-gateway check" in c]
    runs = [i for i, c in enumerate(commands) if "qqbot-gateway run" in c]
    assert checks and runs and checks[0] < runs[0]
    assert any("QQBOT_CLIENT_SECRET_FILE" in c for c in commands), "the secret from a file"


def test_every_relative_link_resolves() -> None:
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", _text(page)):
            if re.match(r"[a-z]+:", target):
                continue
            assert (page.parent / target).exists(), f"{page.name} links {target}"


def test_the_core_metric_list_names_real_metrics() -> None:
    """docs/operations.md lists the core set without the prefix: each name (and label) exists."""
    section = _text(ROOT / "docs" / "operations.md").split("## Metrics and dashboards", 1)[1]
    (bullets,) = [b for b in section.split("\n\n") if b.startswith("* heartbeats")]
    # Parentheses hold remarks and label values ("the layer that fired: `ping_timeout`").
    listed = re.findall(r"`([a-z_]+)(?:\{(\w+)\})?`", re.sub(r"\([^)]*\)", "", bullets, flags=re.S))
    assert len(listed) > 30, listed
    by_name = {m.name: m for m in METRICS}
    for name, label in listed:
        assert name in by_name, f"docs/operations.md lists {name}, which is not a metric"
        if label:
            assert label in by_name[name].labels, f"{name} has no label {label}"
