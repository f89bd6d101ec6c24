"""The package exports what it says, each name importable and documented."""

from __future__ import annotations

import importlib
import inspect

import pytest

import qqbot_gateway

PUBLIC_MODULES = (
    "qqbot_gateway",
    "qqbot_gateway.config",
    "qqbot_gateway.adapter.events",
    "qqbot_gateway.telemetry",
    "qqbot_gateway.simulator",
)


def _auto_dataclass_doc(name: str, obj: object) -> bool:
    """dataclasses write ``Name(field: type, ...)`` as the docstring when there is none."""
    doc = getattr(obj, "__doc__", None) or ""
    return inspect.isclass(obj) and doc.startswith(f"{obj.__name__}(")


def test_all_is_sorted_and_unique() -> None:
    names = qqbot_gateway.__all__
    assert len(names) == len(set(names))
    assert names == sorted(names)


@pytest.mark.parametrize("name", qqbot_gateway.__all__)
def test_name_is_importable_and_documented(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from qqbot_gateway import {name}", namespace)  # noqa: S102 - the import is the test
    obj = namespace[name]
    if name == "__version__":
        assert isinstance(obj, str) and obj.count(".") >= 2
        return
    doc = inspect.getdoc(obj)
    assert doc and doc.strip(), f"{name} has no docstring"
    assert not _auto_dataclass_doc(name, obj), f"{name} has only dataclass's generated docstring"


def test_library_surface() -> None:
    from qqbot_gateway import (
        ClientConfig,
        ConfigError,
        InvalidCredentialsError,
        QQBotClient,
        QQBotError,
        Secret,
        events,
    )

    assert issubclass(InvalidCredentialsError, QQBotError)
    assert issubclass(ConfigError, ValueError)
    assert hasattr(events, "Disconnected") and hasattr(events, "SessionResumed")
    config = ClientConfig(app_id="1", client_secret=Secret("abcdef"))
    assert "abcdef" not in repr(config)
    assert callable(QQBotClient)


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_public_modules_export_existing_names(module_name: str) -> None:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    assert names is not None, f"{module_name} has no __all__"
    assert len(names) == len(set(names)), f"{module_name}.__all__ repeats a name"
    for name in names:
        assert hasattr(module, name), f"{module_name}.__all__ names {name}, which is missing"


def test_version_matches_the_distribution() -> None:
    from importlib.metadata import version

    assert version("qqbot-gateway") == qqbot_gateway.__version__
