"""Real Prometheus and Alertmanager processes on free loopback ports, for the end-to-end tests.

Debian's ``prometheus`` and ``prometheus-alertmanager`` binaries (or upstream's, on PATH). Each
process gets a temporary data directory, logs to a file in it (shown when a wait times out)
and is always stopped by :func:`stop` (:func:`scraping` does all of it for one Prometheus,
waiting until it is ready, with a session to query it). Shared by tests/test_prometheus_e2e.py,
tests/test_workers_dashboard_e2e.py and tests/test_alertmanager_e2e.py; so are the dashboard's
queries with their template variables replaced (:func:`dashboard_queries`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import shutil
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
JOB = "qqbot-gateway"
#: The workers' job (deploy/prometheus/scrape-static.yml, the PodMonitor of
#: deploy/kubernetes/workers/prometheus-operator).
WORKER_JOB = "qqbot-gateway-worker"
RATE_INTERVAL = "4s"  # Grafana's $__rate_interval floor: 4 x the 1 s scrape interval


#: Skips a test where the ``prometheus`` binary is not installed.
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="the prometheus binary is not installed (Debian: apt-get install prometheus)",
)


def gen_slo_rules() -> Any:
    """scripts/gen_slo_rules.py as a module (the SLO rule generator and its time scaling)."""
    name = "gen_slo_rules"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


async def _spawn(binary: str, log_path: Path, *args: str) -> asyncio.subprocess.Process:
    log = log_path.open("wb")
    try:
        return await asyncio.create_subprocess_exec(
            binary, *args, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
        )
    finally:
        log.close()


def documented_job(name: str = JOB) -> dict[str, Any]:
    """The scrape job ``name`` of deploy/prometheus/scrape-static.yml (it yields ``job=name``)."""
    path = ROOT / "deploy" / "prometheus" / "scrape-static.yml"
    (job,) = [
        j
        for j in yaml.safe_load(path.read_text(encoding="utf-8"))["scrape_configs"]
        if j["job_name"] == name
    ]
    return job  # type: ignore[no-any-return]


async def start_prometheus(
    tmp: Path,
    *targets: str,
    rule_files: list[Path],
    alertmanager: str | None = None,
    interval: str = "1s",
    extra_args: tuple[str, ...] = (),
    worker_targets: tuple[str, ...] = (),
) -> tuple[asyncio.subprocess.Process, str]:
    """Prometheus scraping ``targets`` (job ``qqbot-gateway``) and ``worker_targets`` (job
    ``qqbot-gateway-worker``) and evaluating ``rule_files`` every ``interval``, sending alerts
    to ``alertmanager`` (``host:port``) if given. Returns the process and its base URL; the log
    is ``tmp/prometheus.log``."""
    assert PROMETHEUS is not None
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": interval,
            "evaluation_interval": interval,
            "scrape_timeout": interval,
        },
        "rule_files": [str(p) for p in rule_files],
        # The jobs a plain-Prometheus user merges in (deploy/prometheus/scrape-static.yml),
        # pointed at this run's targets and scraped every ``interval``.
        "scrape_configs": [
            {
                **documented_job(name),
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "static_configs": [{"targets": list(jobs_targets)}],
            }
            for name, jobs_targets in ((JOB, targets), (WORKER_JOB, worker_targets))
            if jobs_targets
        ],
    }
    if alertmanager is not None:
        config["alerting"] = {
            "alertmanagers": [
                {"api_version": "v2", "static_configs": [{"targets": [alertmanager]}]}
            ]
        }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (tmp / "prometheus-data").mkdir(exist_ok=True)  # may hold backfilled blocks
    port = free_port()
    proc = await _spawn(
        PROMETHEUS,
        tmp / "prometheus.log",
        f"--config.file={tmp / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1h",
        "--log.level=warn",
        *extra_args,
    )
    return proc, f"http://127.0.0.1:{port}"


async def start_alertmanager(
    tmp: Path, config: dict[str, Any]
) -> tuple[asyncio.subprocess.Process, str]:
    """Alertmanager with ``config``, clustering off. Returns the process and its base URL; the
    log is ``tmp/alertmanager.log``."""
    assert ALERTMANAGER is not None
    (tmp / "alertmanager.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (tmp / "alertmanager-data").mkdir()
    port = free_port()
    proc = await _spawn(
        ALERTMANAGER,
        tmp / "alertmanager.log",
        f"--config.file={tmp / 'alertmanager.yml'}",
        f"--storage.path={tmp / 'alertmanager-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # no gossip port: one instance, nothing else opened
        "--log.level=warn",
    )
    return proc, f"http://127.0.0.1:{port}"


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


def logs(tmp: Path | None) -> str:
    if tmp is None:
        return ""
    out = []
    for name in ("prometheus.log", "alertmanager.log"):
        path = tmp / name
        if path.exists():
            out.append(f"--- {name}\n" + path.read_text(errors="replace")[-3000:])
    return "\n".join(out)


async def until(
    check: Callable[[], Awaitable[bool]], within: float, what: str, tmp: Path | None = None
) -> None:
    """Poll ``check`` every 0.25 s; fail the test with the processes' logs after ``within``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {within:g}s waiting for {what}\n{logs(tmp)}")
        await asyncio.sleep(0.25)


async def ready(
    http: aiohttp.ClientSession, proc: asyncio.subprocess.Process, url: str, tmp: Path
) -> bool:
    """True once ``url``/-/ready answers 200; fails the test if the process exited."""
    if proc.returncode is not None:
        pytest.fail(f"{url} exited with {proc.returncode}\n{logs(tmp)}")
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with http.get(f"{url}/-/ready") as resp:
            return resp.status == 200
    return False


async def query(http: aiohttp.ClientSession, prom: str, expr: str) -> list[dict[str, Any]]:
    """An instant query's result vector."""
    async with http.get(f"{prom}/api/v1/query", params={"query": expr}) as resp:
        body = await resp.json()
    assert body["status"] == "success", (expr, body)
    result = body["data"]["result"]
    assert isinstance(result, list)
    return result


class Prometheus:
    """A running Prometheus (see :func:`scraping`) and an HTTP session to query it."""

    def __init__(
        self, http: aiohttp.ClientSession, proc: asyncio.subprocess.Process, url: str, tmp: Path
    ) -> None:
        self.http = http
        self.proc = proc
        self.url = url
        self.tmp = tmp

    async def query(self, expr: str) -> list[dict[str, Any]]:
        return await query(self.http, self.url, expr)

    async def ready(self) -> bool:
        return await ready(self.http, self.proc, self.url, self.tmp)

    async def rules(self) -> list[dict[str, Any]]:
        """Every rule of every loaded group, as /api/v1/rules reports it (health, lastError)."""
        async with self.http.get(f"{self.url}/api/v1/rules") as resp:
            body = await resp.json()
        return [r for g in body["data"]["groups"] for r in g["rules"]]

    async def without_data(self, checks: dict[str, str], within: float) -> dict[str, str]:
        """The ``checks`` (name -> expression) whose query still returns nothing after
        ``within`` seconds of polling them all every 0.5 s (empty when all returned data)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        pending = dict(checks)
        while pending and loop.time() < deadline:
            for key, expr in list(pending.items()):
                if await self.query(expr):
                    del pending[key]
            if pending:
                await asyncio.sleep(0.5)
        return pending


@contextlib.asynccontextmanager
async def scraping(
    tmp: Path,
    *targets: str,
    rule_files: list[Path],
    worker_targets: tuple[str, ...] = (),
) -> AsyncIterator[Prometheus]:
    """:func:`start_prometheus` with these arguments, ready (``/-/ready`` within 30 s) when it is
    entered, stopped when it is left."""
    proc, url = await start_prometheus(
        tmp, *targets, rule_files=rule_files, worker_targets=worker_targets
    )
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            prom = Prometheus(http, proc, url, tmp)
            await until(prom.ready, 30, "Prometheus /-/ready", tmp)
            yield prom
    finally:
        await stop(proc)


def substitute(expr: str, instance: str, job: str = JOB) -> str:
    """A dashboard query as Grafana sends it: ``$job`` is ``job`` and ``$instance`` is
    ``instance`` (regexes: several targets are ``a|b``, as a multi-value selection),
    ``$shard`` 0, every transport and every worker, ``$__rate_interval`` RATE_INTERVAL."""
    out = expr.replace("$__rate_interval", RATE_INTERVAL)
    values = (
        ("job", job),
        ("instance", instance),
        ("shard", "0"),
        ("transport", ".*"),
        ("worker", ".*"),
    )
    for name, value in values:
        out = out.replace(f"${{{name}}}", value).replace(f"${name}", value)
    assert "$" not in out, out
    return out


def dashboard_queries(
    instance_for: Callable[[str], str], *, row: str | None = None, job: str = JOB
) -> dict[str, str]:
    """Every panel query of the Grafana dashboard (only the panels of ``row``, if given), keyed
    ``"panel title [refId]"``, substituted with the instance ``instance_for(expr)`` returns."""
    from .test_dashboard_lint import DASHBOARD

    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries: dict[str, str] = {}
    current: str | None = None
    for top in dash["panels"]:
        if top["type"] == "row":
            current = top["title"]
        # A collapsed row keeps its panels inside; an open one is followed by them.
        for panel in (top, *top.get("panels", [])):
            if row is not None and current != row:
                continue
            for target in panel.get("targets", []):
                key = f"{panel['title']} [{target['refId']}]"
                queries[key] = substitute(target["expr"], instance_for(target["expr"]), job)
    return queries
