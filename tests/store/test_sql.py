"""All SQL lives in the named .sql files: none in Python, and none of it unused."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from relay.store.sql import QUERIES

ROOT = Path(__file__).resolve().parents[2]

#: the start of a statement that reads or changes data or schema (PRAGMA and
#: transaction control, BEGIN / COMMIT / SAVEPOINT, are the writer's business)
_STATEMENT = re.compile(
    r"\b(SELECT\s+(DISTINCT\s+)?[\w*(][^;]*\bFROM\b|INSERT\s+(OR\s+\w+\s+)?INTO\b"
    r"|REPLACE\s+INTO\b|UPDATE\s+\w+\s+SET\b|DELETE\s+FROM\b|CREATE\s+(TABLE|(UNIQUE\s+)?INDEX|VIEW|TRIGGER)\b"
    r"|ALTER\s+TABLE\b|DROP\s+(TABLE|INDEX|VIEW|TRIGGER)\b|WITH\s+\w+\s+AS\s*\()",
    re.IGNORECASE | re.DOTALL,
)


def _sources(*folders: str) -> Iterator[Path]:
    for folder in folders:
        yield from sorted((ROOT / folder).rglob("*.py"))


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes (prose about SQL is fine)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _strings(path: Path) -> Iterator[tuple[int, str]]:
    """Every string constant of a module but its docstrings, f-strings' parts joined."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(
                str(v.value) if isinstance(v, ast.Constant) else "{}" for v in node.values
            )
            yield node.lineno, text
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in skip:
                yield node.lineno, node.value


def test_no_python_module_holds_a_sql_statement() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text[:60]!r}"
        for path in _sources("relay", "admin")
        for line, text in _strings(path)
        if _STATEMENT.search(text)
    ]
    assert found == []


def test_the_check_finds_sql_where_there_is_some() -> None:
    """The regex is not blind: statements as the store once built them are caught."""
    for text in (
        "SELECT * FROM attempts WHERE {} ORDER BY id DESC",
        "WITH selected AS ({}) {}",
        "UPDATE attempts SET status = 'x'",
        "insert into meta (key, value) values ('a', 'b')",
        "ALTER TABLE {} ADD COLUMN {} {}",
    ):
        assert _STATEMENT.search(text), text
    for text in ("select a provider", "DELETE", "choose queue IDs or a filter"):
        assert not _STATEMENT.search(text), text


def test_every_named_query_is_used_and_every_use_is_named() -> None:
    store = list(_sources("relay/store"))
    constants = {text for path in store for _, text in _strings(path)}
    unused = sorted(name for name in QUERIES if name not in constants)
    assert unused == []
    asked: set[str] = set()
    for path in store:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Subscript)
                and isinstance(node.value, ast.Name)
                and node.value.id == "QUERIES"
                and isinstance(node.slice, ast.Constant)
                and isinstance(node.slice.value, str)
            ):
                asked.add(node.slice.value)
    assert sorted(asked - QUERIES.keys()) == []
