"""What pytest-xdist's workers need from the suite (``.ci/run``: ``-n 2 --dist loadfile``).

A pytest plugin, loaded by ``tests/conftest.py``. Each test file runs whole on
one worker (``loadfile``), so a module-scoped fixture (one install, one
Postfix, one browser per module) is built once, as in a serial run.

A worker sends each test's report to the controller as UTF-8 (execnet). The
listener tests log what clients sent, and bytes that are not UTF-8 reach the
captured log as lone surrogates (``\\udcff``): such a report cannot be sent,
and the worker dies with an INTERNALERROR, after which pytest-xdist exits 0
with the rest of that worker's tests never run. Reports are made sendable
here (``backslashreplace``), which a serial run never needs.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest


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
