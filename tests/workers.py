"""How the suite is shared between pytest-xdist's workers (``-n 2 --dist loadgroup``).

A pytest plugin, loaded by ``tests/conftest.py``. Most tests are independent
and go to whichever worker is free. A test that uses a module- or
class-scoped fixture (one installed venv, one Postfix, one browser per
module) is put in that module's ``xdist_group``, so that the fixture is built
once, on one worker, and not once per worker. This is read from the fixtures
themselves, so a new module-scoped fixture needs no marker.

A worker sends each test's report to the controller as UTF-8 (execnet). The
listener tests log what clients sent, and bytes that are not UTF-8 reach the
captured log as lone surrogates (``\\udcff``): such a report cannot be sent,
and the worker dies with an INTERNALERROR that ends the whole run. Reports
are made sendable here (``backslashreplace``), which a serial run never needs.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

#: fixture scopes wider than one test and narrower than a worker's session
_SHARED = frozenset({"module", "class", "package"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give each test that uses a module/class/package-scoped fixture its file's group."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None or item.get_closest_marker("xdist_group") is not None:
            continue
        scopes = {d.scope for defs in info.name2fixturedefs.values() for d in defs}
        if scopes & _SHARED:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


@pytest.hookimpl(wrapper=True)
def pytest_report_to_serializable(
    report: pytest.CollectReport | pytest.TestReport,
) -> Generator[None, dict[str, Any] | None, dict[str, Any] | None]:
    """Every string of a serialized report encodable as UTF-8 (lone surrogates escaped)."""
    data = yield
    return None if data is None else utf8_only(data)


def utf8_only(value: Any) -> Any:
    """``value`` with each string's unencodable characters written as ``\\udcff`` escapes."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {utf8_only(k): utf8_only(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(utf8_only(v) for v in value)
    return value
