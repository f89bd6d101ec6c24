"""The import contract: which part of the package may import which, read with ``ast``.

* **core** (an ``adapter`` module that imports no I/O library: protocol, session, events, types,
  errors, ...) imports no **driver** (an ``adapter`` module that does: connection, supervisor,
  client, api, auth, dispatch, store, ...);
* ``adapter`` imports nothing of the package outside ``adapter`` (no telemetry, simulator,
  config, CLI) but ``_version``;
* ``telemetry`` imports no driver, and neither the settings loader nor the CLI (the cycle
  metrics -> package root -> config -> telemetry);
* the simulator imports of the adapter only the protocol tables (``adapter.protocol``): it plays
  the platform, so it must not borrow the code it is there to test;
* no module imports the package root (``import qqbot_gateway``, ``from qqbot_gateway import X``
  for a name that is not a submodule): the root imports everything;
* the **state machines** (``adapter.session``, ``adapter.reconnect``) are imported by no value
  or pure-layer module (``types``, ``actions``, ``liveness``, ``callbacks``), by no telemetry
  module and not by the settings loader: a config type lives in ``adapter.types``, so importing
  it never pulls in a state machine (and ``types`` can never form a cycle with one);
* ``adapter.liveness`` (the pure liveness layers), ``adapter.actions`` and
  ``adapter.callbacks`` are core: no I/O library.

Every import counts, also inside functions and ``if TYPE_CHECKING:`` blocks: a lazy import is
still a dependency. The last tests build a small package that breaks each rule and check that
the checker reports it, so this test cannot pass by checking nothing.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "qqbot_gateway"
SOURCE_ROOT = Path(__file__).resolve().parent.parent

#: Importing one of these directly makes an adapter module a driver (it does I/O or runs tasks).
IO_LIBRARIES = frozenset({"aiohttp", "aiohappyeyeballs", "asyncio", "fcntl", "socket", "ssl"})
#: The sans-I/O core by name: these must stay free of I/O libraries, whatever else changes.
REQUIRED_CORE = (
    "adapter.protocol",
    "adapter.session",
    "adapter.events",
    "adapter.types",
    "adapter.liveness",
    "adapter.actions",
    "adapter.callbacks",
)
#: The state machines, and the modules that must not import them (whole packages end in "*").
STATE_MACHINES = frozenset({"adapter.session", "adapter.reconnect"})
NO_STATE_MACHINE = (
    "adapter.types",
    "adapter.actions",
    "adapter.liveness",
    "adapter.callbacks",
    "config",
    "telemetry*",
)
#: What the simulator may import from outside its own package.
SIMULATOR_MAY_IMPORT = frozenset({"adapter.protocol", "_version"})


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, relative to the package ("adapter.session")
    target: str  # the imported module: relative to the package, "" for the root, else absolute
    internal: bool
    line: int

    def __str__(self) -> str:
        shown = f"{PACKAGE}.{self.target}" if self.target else PACKAGE
        if not self.internal:
            shown = self.target
        return f"{PACKAGE}.{self.module}:{self.line} imports {shown}"


def _module_name(path: Path, package_dir: Path) -> str:
    parts = list(path.relative_to(package_dir).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def collect_imports(package_dir: Path) -> tuple[dict[str, Path], list[Import]]:
    """Every module of the package and every import in it (resolved, relative made absolute)."""
    modules = {_module_name(p, package_dir): p for p in sorted(package_dir.rglob("*.py"))}
    found: list[Import] = []
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        here = name.split(".") if name else []
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found.append(_resolve(name, alias.name, node.lineno, modules))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = here if is_package else here[:-1]
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join([PACKAGE, *base_parts, *([node.module] if node.module else [])])
                else:
                    base = node.module or ""
                for alias in node.names:
                    # ``from pkg import sub`` imports the submodule when there is one.
                    sub = f"{base}.{alias.name}"
                    target = sub if _relative(sub) in modules else base
                    found.append(_resolve(name, target, node.lineno, modules))
    return modules, found


def _relative(absolute: str) -> str:
    if absolute == PACKAGE:
        return ""
    return absolute.removeprefix(PACKAGE + ".")


def _resolve(module: str, absolute: str, line: int, modules: dict[str, Path]) -> Import:
    if absolute == PACKAGE or absolute.startswith(PACKAGE + "."):
        return Import(module, _relative(absolute), True, line)
    return Import(module, absolute.split(".")[0], False, line)


def _in(name: str, part: str) -> bool:
    return name == part or name.startswith(part + ".")


def _forbids_state_machines(module: str) -> bool:
    return any(
        _in(module, rule[:-1]) if rule.endswith("*") else module == rule
        for rule in NO_STATE_MACHINE
    )


def violations(package_dir: Path) -> list[str]:
    """Every broken rule, one line each (empty when the contract holds)."""
    _, imports = collect_imports(package_dir)
    drivers = {
        i.module
        for i in imports
        if _in(i.module, "adapter") and not i.internal and i.target in IO_LIBRARIES
    }
    out: list[str] = []
    for name in REQUIRED_CORE:
        if name in drivers:
            out.append(f"{PACKAGE}.{name} is core but imports an I/O library")
    for i in imports:
        if not i.internal:
            continue
        m, t = i.module, i.target
        if t == "" and m != "":
            out.append(f"{i}: the package root imports everything; import the module")
        if _in(m, "adapter") and m not in drivers and t in drivers:
            out.append(f"{i}: the core imports a driver")
        if _in(m, "adapter") and not (_in(t, "adapter") or t in ("", "_version")):
            out.append(f"{i}: adapter imports only adapter modules")
        if _in(m, "telemetry"):
            if t in drivers:
                out.append(f"{i}: telemetry imports a driver (use adapter.types)")
            if _in(t, "config") or _in(t, "cli") or _in(t, "simulator"):
                out.append(f"{i}: telemetry imports {t}")
        if t in STATE_MACHINES and _forbids_state_machines(m):
            out.append(f"{i}: imports a state machine (take config types from adapter.types)")
        if _in(m, "simulator") and not _in(t, "simulator") and t not in SIMULATOR_MAY_IMPORT:
            out.append(f"{i}: the simulator imports more than the protocol tables")
    return list(dict.fromkeys(out))  # one line per import statement, not per imported name


def test_the_package_keeps_its_import_contract() -> None:
    broken = violations(SOURCE_ROOT / PACKAGE)
    assert not broken, "\n".join(broken)


def test_the_layers_are_what_the_contract_says() -> None:
    """The driver set is computed; pin the obvious members so the rule cannot silently empty."""
    modules, imports = collect_imports(SOURCE_ROOT / PACKAGE)
    drivers = {i.module for i in imports if not i.internal and i.target in IO_LIBRARIES}
    for name in ("adapter.connection", "adapter.supervisor", "adapter.client", "adapter.api"):
        assert name in modules and name in drivers, name
    for name in REQUIRED_CORE:
        assert name in modules and name not in drivers, name


def _write(root: Path, files: dict[str, str]) -> Path:
    package = root / PACKAGE
    for rel, text in files.items():
        path = package / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for sub in ("", "adapter", "telemetry", "simulator"):
        init = package / sub / "__init__.py"
        init.parent.mkdir(parents=True, exist_ok=True)
        if not init.exists():
            init.write_text("", encoding="utf-8")
    return package


_CLEAN = {
    "_version.py": "__version__ = '0'\n",
    "config.py": "from qqbot_gateway.adapter.types import Secret\n",
    "adapter/protocol.py": "import enum\n",
    "adapter/session.py": "from . import protocol as p\n",
    "adapter/events.py": "import logging\n",
    "adapter/types.py": "from .protocol import Op\n",
    "adapter/connection.py": "import aiohttp\nfrom .session import X\n",
    "telemetry/metrics.py": "from qqbot_gateway._version import __version__\n",
    "simulator/server.py": "from qqbot_gateway.adapter.protocol import Op\n",
}


def test_a_clean_package_passes(tmp_path: Path) -> None:
    assert violations(_write(tmp_path, _CLEAN)) == []


@pytest.mark.parametrize(
    ("rel", "source", "expected"),
    [
        ("adapter/session.py", "from .connection import X\n", "the core imports a driver"),
        ("adapter/types.py", "def f():\n    from . import connection\n", "core imports a driver"),
        ("adapter/session.py", "import asyncio\n", "adapter.session is core but imports an I/O"),
        ("adapter/events.py", "from qqbot_gateway import telemetry\n", "adapter imports only"),
        ("adapter/connection.py", "import qqbot_gateway.config\n", "adapter imports only"),
        ("adapter/protocol.py", "from ..simulator import server\n", "adapter imports only"),
        ("telemetry/metrics.py", "import qqbot_gateway\n", "the package root imports"),
        (
            "telemetry/metrics.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from qqbot_gateway.adapter.connection import T\n",
            "telemetry imports a driver",
        ),
        (
            "telemetry/metrics.py",
            "from qqbot_gateway.config import S\n",
            "telemetry imports config",
        ),
        ("simulator/server.py", "from qqbot_gateway.adapter.session import S\n", "simulator"),
        ("adapter/types.py", "from .session import LivenessConfig\n", "imports a state machine"),
        ("adapter/types.py", "from .reconnect import Policy\n", "imports a state machine"),
        (
            "telemetry/health.py",
            "from qqbot_gateway.adapter.session import LivenessConfig\n",
            "imports a state machine",
        ),
        ("config.py", "from qqbot_gateway.adapter import session\n", "imports a state machine"),
        ("adapter/liveness.py", "import asyncio\n", "adapter.liveness is core but imports"),
        ("adapter/liveness.py", "from .session import X\n", "imports a state machine"),
        ("simulator/server.py", "from qqbot_gateway.telemetry import metrics\n", "simulator"),
    ],
)
def test_each_rule_catches_its_violation(
    tmp_path: Path, rel: str, source: str, expected: str
) -> None:
    broken = violations(_write(tmp_path, {**_CLEAN, rel: source}))
    assert any(expected in line for line in broken), broken


# --- module size ---------------------------------------------------------------------------
#: A module's code (its lines less its declarative tables) stays under this: past it, a module
#: holds several things, each of which deserves its own name and tests.
MAX_MODULE_LINES = 900
#: Modules over the limit for now, with the reason (a module that shrinks may leave the list).
OVERSIZE_FOR_NOW = {
    "integrations/hermes.py": "being split into a package on its own branch",
}


def code_lines(path: Path) -> int:
    """Lines of ``path`` outside its declarative tables: top-level assignments of a literal
    tuple, list, dict or set (``config.SETTINGS``, ``events`` kinds), which read as data."""
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text, filename=str(path))
    tables = 0
    for node in tree.body:
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if isinstance(value, ast.Tuple | ast.List | ast.Dict | ast.Set):
            assert node.end_lineno is not None
            tables += node.end_lineno - node.lineno + 1
    return len(text.splitlines()) - tables


def test_no_module_is_over_the_size_limit() -> None:
    package = SOURCE_ROOT / PACKAGE
    over = {
        str(path.relative_to(package)): n
        for path in sorted(package.rglob("*.py"))
        if (n := code_lines(path)) > MAX_MODULE_LINES
    }
    unexplained = {name: n for name, n in over.items() if name not in OVERSIZE_FOR_NOW}
    assert not unexplained, f"over {MAX_MODULE_LINES} lines of code: {unexplained}"


def test_declarative_tables_are_what_the_size_rule_leaves_out(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    table = "TABLE = (\n" + "    1,\n" * 50 + ")\n"
    module.write_text("import os\n" + table + "def f():\n    return [\n        1,\n    ]\n")
    assert code_lines(module) == 1 + 4  # the import and f; the 52-line table is data
