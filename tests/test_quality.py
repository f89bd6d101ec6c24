"""The project's own static checks run as part of the suite, so CI enforces them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return found


PYTHON_DIRS = [
    d
    for d in ("qqbot_gateway", "tests", "benchmarks", "scripts", "examples")
    if (ROOT / d).is_dir()
]


def _assert_clean(*argv: str, timeout: float) -> None:
    result = subprocess.run(
        list(argv), cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_is_clean() -> None:
    _assert_clean(_tool("ruff"), "check", *PYTHON_DIRS, timeout=120)


def test_ruff_format_is_clean() -> None:
    _assert_clean(_tool("ruff"), "format", "--check", *PYTHON_DIRS, timeout=120)


def test_mypy_strict_is_clean() -> None:
    # One run over the package and its tests: the tests are typed like the code they check (a
    # fake that drifts from the protocol it stands in for is a type error, not a surprise).
    # examples/ too: what users copy must type-check.
    _assert_clean(_tool("mypy"), "--strict", "qqbot_gateway", "tests", "examples", timeout=300)
