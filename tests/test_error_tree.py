"""One error tree: every exception the adapter raises on purpose is a ``QQBotError``, and the
tree drawn in ``adapter/errors.py`` is the tree the classes form."""

from __future__ import annotations

import inspect

from qqbot_gateway.adapter import connection, errors, store
from qqbot_gateway.adapter.errors import QQBotError


def test_every_adapter_error_is_a_qqbot_error() -> None:
    classes = [getattr(errors, name) for name in errors.__all__]
    exceptions = [c for c in classes if inspect.isclass(c) and issubclass(c, BaseException)]
    assert len(exceptions) >= 15
    assert all(issubclass(c, QQBotError) for c in exceptions)
    # Re-exported where they used to live: the same classes, not copies.
    assert store.StoreError is errors.StoreError
    assert store.StoreLockedError is errors.StoreLockedError
    assert connection.ConnectError is errors.ConnectError


def test_the_docstring_draws_every_class() -> None:
    doc = errors.__doc__ or ""
    for name in errors.__all__:
        if inspect.isclass(getattr(errors, name)):
            assert f" {name} " in doc or f" {name}\n" in doc, name
