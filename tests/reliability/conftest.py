"""Reliability suite hooks: write ``docs/reliability.md`` from the fault matrix's rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import report

#: The generated report (repository root / docs).
REPORT_PATH = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Only when fault-matrix rows were recorded: running other tests leaves the file alone.
    report.write(REPORT_PATH)
