"""The package version, in a module of its own: telemetry (``build_info``, the OpenTelemetry
resource, the status page) and the CLI read it without importing the package root, which
imports the whole library and the settings loader (an import cycle before this module)."""

from __future__ import annotations

__all__ = ["__version__"]

#: Kept equal to ``version`` in pyproject.toml (tests/test_exports.py checks it).
__version__ = "0.1.0"
