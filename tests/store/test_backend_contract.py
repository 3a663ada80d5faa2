"""What leaves the store is backend-neutral: no sqlite3 or aiosqlite type in any result.

``Spool``'s public methods (and ``Spool.suppressions``') are the contract a
PostgreSQL backend will implement (issue #27); their results are plain
values and frozen dataclasses, walked here down to the leaves.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sqlite3
import typing
from collections.abc import Iterator
from types import UnionType
from typing import Any

from relay.store.spool import Spool
from relay.store.suppressions import Suppressions


def _leaves(tp: Any, seen: set[int]) -> Iterator[Any]:
    """Every type a value of ``tp`` can hold, through generics, unions and dataclass fields."""
    if id(tp) in seen:
        return
    seen.add(id(tp))
    origin = typing.get_origin(tp)
    if origin is not None or isinstance(tp, UnionType):
        if origin is not None:
            yield origin
        for arg in typing.get_args(tp):
            yield from _leaves(arg, seen)
        return
    yield tp
    if inspect.isclass(tp) and (
        dataclasses.is_dataclass(tp) or (issubclass(tp, tuple) and hasattr(tp, "_fields"))
    ):
        for hint in typing.get_type_hints(tp).values():
            yield from _leaves(hint, seen)


def _results(cls: type) -> dict[str, set[Any]]:
    out = {}
    for name, fn in inspect.getmembers(cls, inspect.isfunction):
        if name.startswith("_") or name == "open":
            continue
        hints = typing.get_type_hints(fn)
        out[name] = set(_leaves(hints.get("return"), set()))
    return out


def _sqlite_types(types: set[Any]) -> list[str]:
    return sorted(
        f"{getattr(t, '__module__', '')}.{getattr(t, '__qualname__', t)}"
        for t in types
        if getattr(t, "__module__", "").split(".")[0] in ("sqlite3", "aiosqlite", "_sqlite3")
    )


def test_no_result_of_the_store_is_a_sqlite_type() -> None:
    results = _results(Spool) | {f"suppressions.{k}": v for k, v in _results(Suppressions).items()}
    assert len(results) > 50  # the walk found the contract
    leaked = {name: _sqlite_types(types) for name, types in results.items()}
    assert {name: found for name, found in leaked.items() if found} == {}


@dataclasses.dataclass
class _LeakyPage:
    rows: list[sqlite3.Row]


def test_the_walk_would_see_a_leak() -> None:
    found = _sqlite_types(set(_leaves(dict[str, _LeakyPage | None], set())))
    assert found == ["sqlite3.Row"]


def test_no_result_names_a_rowid() -> None:
    """Internal row ids leave as plain ints named for what they are, never ``rowid``."""
    for name, types in _results(Spool).items():
        for t in types:
            if dataclasses.is_dataclass(t):
                assert "rowid" not in {f.name for f in dataclasses.fields(t)}, name


def test_the_facade_docstring_lists_every_public_method() -> None:
    """The contract written at the top of relay/store/spool.py is the one the class has."""
    import relay.store.spool as module

    assert module.__doc__ is not None
    contract = module.__doc__.split("**The backend contract.**", 1)[1].split("Results are", 1)[0]
    named = set(re.findall(r"``(\w+)``", contract))
    methods = {n for n, _ in inspect.getmembers(Spool, inspect.isfunction) if not n.startswith("_")}
    assert methods - named == set()
    assert named - methods == {"wake", "outbox_wake", "stream_headers", "suppressions"}
