"""Reliability suite hooks: ``--update-report`` writes ``docs/reliability.md`` from the fault
matrix's rows. A plain test run leaves the tracked file alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import report

#: The generated report (repository root / docs).
REPORT_PATH = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    if not config.getoption("--update-report"):
        return
    missing = report.missing()
    if not report.rows():
        hint = (
            " (the rows ran in xdist workers: add -n 0)"
            if config.getoption("numprocesses", None)
            else ""
        )
        terminalreporter.write_line(
            f"--update-report: no fault-matrix row ran{hint}, {REPORT_PATH} left alone"
        )
        return
    if missing:
        # A partial run (``-k``, ``-x``, a deselected row) would drop rows from the table.
        terminalreporter.write_line(
            f"--update-report: {REPORT_PATH} not written, {len(missing)} fault-matrix rows "
            f"did not run: {', '.join(missing)}",
            red=True,
        )
        return
    report.write(REPORT_PATH)
    terminalreporter.write_line(f"--update-report: wrote {REPORT_PATH}")
