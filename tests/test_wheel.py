"""What ships is what was tested: the wheel, built from the source files, installed (not
editable) into a fresh virtual environment, runs the demo.

The wheel is built from a copy of exactly what the build reads (pyproject.toml, README.md,
LICENSE, qqbot_gateway/), so the checkout is never written to. The fresh environment gets the
wheel with ``--no-deps``; its dependencies come from this environment's site-packages through a
``.pth`` line, which puts them on ``sys.path`` after the fresh environment's own site-packages
(the editable install of this checkout is not activated there: a ``.pth`` file inside a
directory added by a ``.pth`` line is not processed). The test then checks that the installed
package is the wheel's, not the checkout, and that the status page's files, the console script
and the hermes plugin entry point are in it and work.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from qqbot_gateway.demo import minimum_duration

ROOT = Path(__file__).resolve().parents[1]
SCALE = float(os.environ.get("QQBOT_TEST_TIME_SCALE", "1"))
INTERVAL = 0.5 * SCALE
DURATION = max(22.0, minimum_duration(INTERVAL) + 2)
STATIC = ("status.html", "status.css", "status.js")

#: Run by the fresh environment's interpreter: where the package comes from, its entry points,
#: and the status page served from the installed files.
PROBE = """
import asyncio, importlib.metadata as md, pathlib, sys, urllib.request

venv = pathlib.Path(sys.argv[1]).resolve()
import qqbot_gateway
from qqbot_gateway.telemetry import Telemetry, TelemetryConfig

package = pathlib.Path(qqbot_gateway.__file__).resolve()
assert venv in package.parents, f"imported {package}, not the wheel's copy"
dist = md.distribution("qqbot-gateway")
assert venv in pathlib.Path(str(dist.locate_file(""))).resolve().parents, dist
assert dist.metadata["License-Expression"] == "MIT", dist.metadata["License-Expression"]
eps = {(ep.group, ep.name): ep for ep in dist.entry_points}
assert eps["console_scripts", "qqbot-gateway"].value == "qqbot_gateway.cli:main"
plugin = eps["hermes_agent.plugins", "qqbot-gateway"].load()
assert venv in pathlib.Path(plugin.__file__).resolve().parents, plugin.__file__
assert callable(getattr(plugin, "register", None)), "the hermes plugin has no register()"
static = package.parent / "telemetry" / "static"

async def main() -> None:
    telemetry = Telemetry(TelemetryConfig(http_host="127.0.0.1", http_port=0, tracing=False))
    await telemetry.start()
    try:
        for path, name in (("/", "status.html"), ("/static/status.js", "status.js"),
                           ("/static/status.css", "status.css")):
            url = telemetry.http_url + path
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
            assert body == (static / name).read_bytes(), path
        url = telemetry.http_url + "/status.json"
        await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
    finally:
        await telemetry.stop()

asyncio.run(main())
print("probe ok")
"""


def _run(argv: list[str], timeout: float, **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )  # type: ignore[call-overload]
    assert result.returncode == 0, f"{argv}\n{result.stdout}\n{result.stderr}"
    return result  # type: ignore[no-any-return]


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_and_runs_the_demo(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "qqbot_gateway",
        src / "qqbot_gateway",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    dist = tmp_path / "dist"
    # pip builds in an isolated environment with the build-system requirements (setuptools 77+
    # for the SPDX license), as any user's pip does.
    build = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(dist), str(src)], 600
    )
    # The license is an SPDX expression (PEP 639): no deprecation warning from setuptools.
    assert "SetuptoolsDeprecationWarning" not in build.stdout + build.stderr
    (wheel,) = dist.glob("qqbot_gateway-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for asset in STATIC:
        assert f"qqbot_gateway/telemetry/static/{asset}" in names, asset
    assert "qqbot_gateway/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not any(n.startswith(("tests/", "examples/", "benchmarks/")) for n in names)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], 120)
    python = venv / "bin" / "python"
    _run(
        [
            *(sys.executable, "-m", "pip", "--python", str(python), "install", "-q"),
            *("--no-deps", "--no-index", str(wheel)),
        ],
        300,
    )
    purelib = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], 60
    )
    site = Path(purelib.stdout.strip())
    (site / "zz_test_dependencies.pth").write_text(
        sysconfig.get_path("purelib") + "\n", encoding="utf-8"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QQBOT_", "OTEL_"))}
    env.pop("PYTHONPATH", None)
    probe = _run([str(python), "-c", PROBE, str(venv)], 120, cwd=tmp_path, env=env)
    assert "probe ok" in probe.stdout

    script = venv / "bin" / "qqbot-gateway"
    assert script.is_file(), "the console script was not installed"
    demo = _run(
        [
            *(str(script), "demo", "--duration", f"{DURATION:g}"),
            *("--interval", f"{INTERVAL:g}", "--non-interactive"),
        ],
        DURATION + 90,
        cwd=tmp_path,
        env=env,
    )
    assert "PASS: 5/5 faults detected, 5/5 recovered, 0 events lost, 0 duplicated" in demo.stdout
    assert "Traceback" not in demo.stderr
