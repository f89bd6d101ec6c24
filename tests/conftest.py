"""Suite-wide options, and the suite's own state directory."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_STATE_HOME_KEY = pytest.StashKey[tuple[str, str | None]]()


def pytest_configure(config: pytest.Config) -> None:
    # The service keeps its session store under $XDG_STATE_HOME by default. A test (or a
    # subprocess it starts) that does not name its own QQBOT_STATE_DIR must neither write into
    # the developer's home nor resume a session a previous run left there.
    home = tempfile.mkdtemp(prefix="qqbot-test-state-")
    config.stash[_STATE_HOME_KEY] = (home, os.environ.get("XDG_STATE_HOME"))
    os.environ["XDG_STATE_HOME"] = home


def pytest_unconfigure(config: pytest.Config) -> None:
    home, before = config.stash.get(_STATE_HOME_KEY, ("", None))
    if not home:
        return
    if before is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = before
    shutil.rmtree(home, ignore_errors=True)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak-minutes",
        type=float,
        default=None,
        help="run the chaos soak (tests/reliability/test_soak.py) for this many minutes "
        "instead of the short CI version, and print its counts",
    )
    parser.addoption(
        "--update-report",
        action="store_true",
        default=False,
        help="write docs/reliability.md from the fault matrix's rows at the end of the run "
        "(only when every row of the matrix ran); a plain test run never writes it",
    )
