"""Counts every statement a Sluice process sends PostgreSQL: ``bench run --spool postgresql``.

Not part of Sluice. The bench puts this folder on ``PYTHONPATH`` of the
Sluice it starts on PostgreSQL (and so of its accept workers), with
``BENCH_PG_COUNTS`` naming a folder; Python imports ``sitecustomize`` at
start, and this one wraps psycopg's ``execute`` and ``executemany`` to count
calls by statement, writing the totals to ``<folder>/<pid>.json`` every
100 ms (and at exit). Each call is one round trip to the server: psycopg
sends a statement and waits for its result (``executemany`` sends its rows
in one pipeline, so it counts once). What ``pg_stat_statements`` cannot
tell, it can: the statements the server skips counting once psycopg has
prepared them (``BEGIN``, ``SAVEPOINT``, ``COMMIT``), and which connection
(the writer thread's or the readers') sent them.

The cost is a lock and a dictionary increment per statement, about a
microsecond against the hundreds each round trip takes.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _key(query: Any) -> str:
    """``<connection>\t<statement>``: the writer's thread, the readers' (the loop's), other."""
    thread = threading.current_thread().name
    who = {"sluice-pg-writer": "writer", "MainThread": "reader"}.get(thread, "other")
    text = query.decode() if isinstance(query, bytes) else str(query)
    return f"{who}\t{' '.join(text.split())[:200]}"


def _install(folder: Path) -> None:
    import psycopg

    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def count(query: Any) -> None:
        key = _key(query)
        with lock:
            counts[key] += 1

    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        def counted(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            count(query)
            return method(self, query, *args, **kwargs)

        return counted

    for cls in (psycopg.Cursor, psycopg.AsyncCursor):
        cls.execute = wrap(cls.execute)  # type: ignore[method-assign]
        cls.executemany = wrap(cls.executemany)  # type: ignore[method-assign]

    target = folder / f"{os.getpid()}.json"

    def dump() -> None:
        with lock:
            text = json.dumps(dict(counts))
        tmp = target.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, target)

    def every_100ms() -> None:
        while not stop.wait(0.1):
            dump()

    stop = threading.Event()
    threading.Thread(target=every_100ms, name="bench-pg-counts", daemon=True).start()
    atexit.register(dump)


if folder := os.environ.get("BENCH_PG_COUNTS"):
    _install(Path(folder))
