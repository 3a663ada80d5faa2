"""The error tree has one root: every exception Sluice defines derives from SluiceError."""

from __future__ import annotations

import importlib
import inspect

from relay.errors import SluiceError
from tests.layers import import_graph


def test_every_project_exception_derives_from_sluice_error() -> None:
    # A __main__ module runs its command when imported: nothing to look at there.
    modules = sorted(m for m in import_graph() if not m.endswith("__main__"))
    assert "relay.errors" in modules and "admin.app" in modules
    found: dict[str, type[BaseException]] = {}
    for name in modules:
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == name:
                found[f"{name}.{obj.__qualname__}"] = obj
    # The checker sees the exceptions spread over the wings, not only errors.py.
    assert {"relay.outbound.session.ProviderError", "relay.bounces.dsn.UnreadableBounce"} <= set(
        found
    )
    strays = sorted(n for n, cls in found.items() if not issubclass(cls, SluiceError))
    assert strays == []
