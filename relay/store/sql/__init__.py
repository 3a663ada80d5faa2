"""Named SQL: ``schema.sql``, and the ``-- name:`` blocks of one file per job.

Every statement Sluice runs lives in a ``.sql`` file of this folder, named,
the way procrastinate keeps its queries: ``queue.sql``, ``controls.sql``,
``outbox.sql``, ``views.sql``, ``state.sql``, ``suppressions.sql``, and the
numbered migrations in ``migrations/``. Optional filters are written in static
SQL (``:x IS NULL OR ...``), never assembled in Python. (A query builder such
as SQLAlchemy Core would assemble them instead; named files keep each
statement readable, greppable and explainable as it runs.)

PostgreSQL (``spool.url``, issue #27) runs the same statements: ``pg/<file>.sql``
holds a block of the same name for each statement whose dialect differs
(``json_each``, ``INDEXED BY``, ``INSERT OR IGNORE``, ``COLLATE NOCASE``,
``FOR UPDATE SKIP LOCKED``...); every other one is the SQLite text with its
``:name`` parameters in psycopg's ``%(name)s`` style. ``PG_TWINS`` maps each
SQLite text to the PostgreSQL one, which is how the PostgreSQL connection
adapter (``relay/store/pg/``) runs the job modules' ``QUERIES[...]`` unchanged.
"""

from __future__ import annotations

import re
from importlib.resources import files

__all__ = [
    "PG_QUERIES",
    "PG_TWINS",
    "QUERIES",
    "QUERY_FILES",
    "SCHEMA",
    "like_escape",
    "load_queries",
    "to_psycopg",
]

#: the files of named blocks, one per job of the store
QUERY_FILES = ("queue", "controls", "outbox", "views", "state", "suppressions")


def load_queries(text: str) -> dict[str, str]:
    """The ``-- name: <name>`` blocks of ``text``, by name, without their comment lines."""
    queries: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        name, _, body = block.partition("\n")
        sql = "\n".join(line for line in body.splitlines() if not line.startswith("--"))
        queries[name.strip()] = sql.strip()
    return queries


def _load_all(folder: str = "") -> dict[str, str]:
    queries: dict[str, str] = {}
    root = files(__package__).joinpath(folder) if folder else files(__package__)
    for stem in QUERY_FILES:
        path = root.joinpath(f"{stem}.sql")
        if folder and not path.is_file():
            continue
        found = load_queries(path.read_text(encoding="utf-8"))
        twice = found.keys() & queries.keys()
        if twice:
            raise RuntimeError(f"{stem}.sql names {', '.join(sorted(twice))} again")
        queries.update(found)
    return queries


#: a quoted literal, a ``:name`` parameter (not a ``::type`` cast), or a bare ``%``
_PARAM = re.compile(r"'[^']*'|(?<![:\w]):([A-Za-z_]\w*)|%")


def to_psycopg(sql: str) -> str:
    """``sql`` with its ``:name`` parameters as psycopg's ``%(name)s``, and ``%`` doubled."""

    def swap(m: re.Match[str]) -> str:
        if m.group(1) is not None:
            return f"%({m.group(1)})s"
        return m.group(0).replace("%", "%%")

    return _PARAM.sub(swap, sql)


def _pg_queries(queries: dict[str, str]) -> dict[str, str]:
    twins = _load_all("pg")
    unknown = twins.keys() - queries.keys()
    if unknown:
        raise RuntimeError(f"pg/*.sql names {', '.join(sorted(unknown))}, which no SQLite file has")
    return {name: to_psycopg(twins.get(name, sql)) for name, sql in queries.items()}


SCHEMA: str = files(__package__).joinpath("schema.sql").read_text(encoding="utf-8")
QUERIES: dict[str, str] = _load_all()
#: the PostgreSQL text of every named statement, by name
PG_QUERIES: dict[str, str] = _pg_queries(QUERIES)
#: the SQLite text of every named statement -> its PostgreSQL text
PG_TWINS: dict[str, str] = {QUERIES[name]: pg for name, pg in PG_QUERIES.items()}


def like_escape(text: str) -> str:
    """``text`` as a literal inside a ``LIKE ... ESCAPE '\\'`` pattern (``%`` and ``_`` too)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
