"""Suite-wide options."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak-minutes",
        type=float,
        default=None,
        help="run the chaos soak (tests/reliability/test_soak.py) for this many minutes "
        "instead of the short CI version, and print its counts",
    )
