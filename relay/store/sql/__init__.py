"""Named SQL: ``schema.sql`` and the ``-- name:`` blocks of ``queries.sql``."""

from __future__ import annotations

import re
from importlib.resources import files

__all__ = ["QUERIES", "SCHEMA", "like_escape"]


def _load_queries(text: str) -> dict[str, str]:
    queries: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        name, _, body = block.partition("\n")
        sql = "\n".join(line for line in body.splitlines() if not line.startswith("--"))
        queries[name.strip()] = sql.strip()
    return queries


SCHEMA: str = files(__package__).joinpath("schema.sql").read_text(encoding="utf-8")
QUERIES: dict[str, str] = _load_queries(
    files(__package__).joinpath("queries.sql").read_text(encoding="utf-8")
)


def like_escape(text: str) -> str:
    """``text`` as a literal inside a ``LIKE ... ESCAPE '\\'`` pattern (``%`` and ``_`` too)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
