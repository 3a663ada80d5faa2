"""Named SQL: ``schema.sql``, and the ``-- name:`` blocks of one file per job.

Every statement Sluice runs lives in a ``.sql`` file of this folder, named,
the way procrastinate keeps its queries: ``queue.sql``, ``controls.sql``,
``outbox.sql``, ``views.sql``, ``state.sql``, ``suppressions.sql``, ``limits.sql``, and the
numbered migrations in ``migrations/``. Optional filters are written in static
SQL (``:x IS NULL OR ...``), never assembled in Python. (A query builder such
as SQLAlchemy Core would assemble them instead; named files keep each
statement readable, greppable and explainable as it runs.)
"""

from __future__ import annotations

import re
from importlib.resources import files

__all__ = ["QUERIES", "QUERY_FILES", "SCHEMA", "like_escape", "load_queries"]

#: the files of named blocks, one per job of the store
QUERY_FILES = ("queue", "controls", "outbox", "views", "state", "suppressions", "limits")


def load_queries(text: str) -> dict[str, str]:
    """The ``-- name: <name>`` blocks of ``text``, by name, without their comment lines."""
    queries: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        name, _, body = block.partition("\n")
        sql = "\n".join(line for line in body.splitlines() if not line.startswith("--"))
        queries[name.strip()] = sql.strip()
    return queries


def _load_all() -> dict[str, str]:
    queries: dict[str, str] = {}
    for stem in QUERY_FILES:
        found = load_queries(files(__package__).joinpath(f"{stem}.sql").read_text(encoding="utf-8"))
        twice = found.keys() & queries.keys()
        if twice:
            raise RuntimeError(f"{stem}.sql names {', '.join(sorted(twice))} again")
        queries.update(found)
    return queries


SCHEMA: str = files(__package__).joinpath("schema.sql").read_text(encoding="utf-8")
QUERIES: dict[str, str] = _load_all()


def like_escape(text: str) -> str:
    """``text`` as a literal inside a ``LIKE ... ESCAPE '\\'`` pattern (``%`` and ``_`` too)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
