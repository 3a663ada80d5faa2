"""All SQL lives in the named .sql files: none in Python, none of it unused, no stray words.

Every status word the SQL spells must be a value of the enum it stands for
(``RecipientStatus``, ``AttemptStatus``, ``EventType``), so a typo in a
query fails here rather than matching nothing in production.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from relay.events import EventType
from relay.model import AttemptStatus, RecipientStatus
from relay.store.migrations import MIGRATIONS
from relay.store.sql import QUERIES, SCHEMA

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


# ----------------------------------------------- status words against the enums

#: the enum whose values a table's status column holds
_STATUS_ENUMS: dict[str, frozenset[str]] = {
    "recipients": frozenset(s.value for s in RecipientStatus),
    "attempts": frozenset(s.value for s in AttemptStatus),
}
_EVENTS = frozenset(e.value for e in EventType)
_LITERAL = re.compile(r"'([^']*)'")
_TABLE = re.compile(
    r"\b(?:FROM|INTO|UPDATE|JOIN|ON|TABLE(?:\s+IF\s+NOT\s+EXISTS)?)\s+(\w+)", re.IGNORECASE
)
#: where a status word stands in SQL: compared, listed, set, defaulted, chosen by CASE
_STATUS_SPOTS = (
    re.compile(r"\bstatus\s*(?:=|!=|<>)\s*('[^']*')", re.IGNORECASE),
    re.compile(r"\bstatus\s+(?:NOT\s+)?IN\s*\(\s*('[^)]*)\)", re.IGNORECASE),
    re.compile(r"\bstatus\s*=\s*CASE\b(.*?)\bEND\b", re.IGNORECASE | re.DOTALL),
    re.compile(r"\bstatus\s+TEXT\b[^,]*?\bDEFAULT\s+('[^']*')", re.IGNORECASE),
)
_EVENT_SPOTS = (
    re.compile(r"\bevent\s*(?:=|!=|<>)\s*('[^']*')", re.IGNORECASE),
    re.compile(r"\bevent\s+(?:NOT\s+)?IN\s*\(\s*('[^)]*)\)", re.IGNORECASE),
)


def _status_words(statement: str) -> Iterator[tuple[str, frozenset[str]]]:
    """Each status (or event) literal of ``statement`` and the words allowed there."""
    # (a table rebuilt by a migration is made as <name>_new)
    named = {t.lower().removesuffix("_new") for t in _TABLE.findall(statement)}
    tables = named & _STATUS_ENUMS.keys()
    # A statement over both tables (a subquery of one in the other) may use either's words.
    allowed = frozenset().union(*(_STATUS_ENUMS[t] for t in tables))
    for spot in _STATUS_SPOTS if tables else ():  # bounces.status is a DSN's code, not a word
        for found in spot.findall(statement):
            for word in _LITERAL.findall(found):
                yield word, allowed
    insert = re.search(
        r"INSERT\s+(?:OR\s+\w+\s+)?INTO\s+\w+\s*\(([^)]*)\)\s*VALUES\s*\((.*)\)",
        statement,
        re.IGNORECASE | re.DOTALL,
    )
    if insert:
        columns = [c.strip() for c in insert.group(1).split(",")]
        values = [v.strip() for v in insert.group(2).split(",")]
        for column, value in zip(columns, values, strict=False):
            if column in ("status", "event") and value.startswith("'"):
                yield value.strip("'"), allowed if column == "status" else _EVENTS
    for spot in _EVENT_SPOTS:
        for found in spot.findall(statement):
            for word in _LITERAL.findall(found):
                yield word, _EVENTS


def _sql_statements() -> Iterator[tuple[str, str]]:
    """(where, statement) for every named query, schema.sql, and each migration from 4 on.

    Migrations 1-3 are history: they hold the words of their day (version 3
    rewrites the log's IN PROGRESS / SUCCESS / FAIL), and never run again on
    a spool that has passed them.
    """
    yield from QUERIES.items()
    for statement in _split(re.sub(r"--[^\n]*", "", SCHEMA)):
        yield "schema.sql", statement
    for step in MIGRATIONS[3:]:
        for statement in step.statements:
            yield f"migration {step.version}", re.sub(r"--[^\n]*", "", statement)


def _split(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _unknown_words(statements: Iterable[tuple[str, str]]) -> list[str]:
    return [
        f"{where}: {word!r}"
        for where, statement in statements
        for word, allowed in _status_words(statement)
        if word not in allowed
    ]


def test_every_status_word_in_the_sql_is_a_value_of_its_enum() -> None:
    statements = list(_sql_statements())
    assert _unknown_words(statements) == []
    # ... and the check looks where the words are:
    words = {word for _, s in statements for word, _ in _status_words(s)}
    assert {"queued", "sending", "held", "in_progress", "bounced", "fail"} <= words


def test_a_misspelt_status_word_fails_the_check() -> None:
    typos = [
        ("a", "UPDATE recipients SET status = 'deffered' WHERE id = :id"),
        ("b", "SELECT 1 FROM attempts WHERE status IN ('FAIL', 'deferred')"),
        ("c", "INSERT INTO attempts (id, status) VALUES (:id, 'in progress')"),
        ("d", "UPDATE recipients SET status = CASE WHEN 1 THEN 'hold' ELSE 'queued' END"),
        ("e", "SELECT 1 FROM recipients WHERE status = 'success'"),  # the log's word
        ("f", "SELECT 1 FROM webhook_outbox WHERE event = 'bounce'"),
    ]
    assert [u.split(":")[0] for u in _unknown_words(typos)] == ["a", "b", "c", "d", "e", "f"]


def test_the_status_checks_list_every_value_of_the_enums() -> None:
    """The CHECK constraints and the enums name the same words: a new one needs a migration."""
    for table, values in _STATUS_ENUMS.items():
        create = next(
            s
            for s in _split(re.sub(r"--[^\n]*", "", SCHEMA))
            if f"TABLE IF NOT EXISTS {table} " in s
        )
        check = re.search(r"CHECK\s*\(\s*status\s+IN\s*\(([^)]*)\)\s*\)", create)
        assert check is not None, table
        assert frozenset(_LITERAL.findall(check.group(1))) == values, table
