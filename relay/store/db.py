"""What the job modules need of a database connection, whichever the backend.

The job modules (``queue``, ``controls``, ``outbox``, ``views``, ``state``,
``suppressions``) are the one implementation of the store: their writer
functions take a ``Conn`` and their readers a ``Reader``. On SQLite these are
``sqlite3.Connection`` (the writer thread's) and ``aiosqlite.Connection``
themselves; on PostgreSQL, the adapters of ``relay/store/pg/`` with the same
shape, which run each named statement's PostgreSQL twin. These protocols are
the part of that shape the modules use, and no more.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar

__all__ = ["Conn", "Cursor", "Jobs", "Params", "Reader", "ReaderCursor", "ReaderResult", "Row"]

T = TypeVar("T")

#: named parameters (``:name``), or positional ones
Params = Mapping[str, Any] | Sequence[Any]


class Row(Protocol):
    """A result row: by column name or by index (``sqlite3.Row``'s two ways)."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def keys(self) -> list[str]: ...


class Cursor(Protocol):
    """A statement's results (a synchronous connection's)."""

    @property
    def lastrowid(self) -> int | None: ...

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Conn(Protocol):
    """The writer's connection: statements run inside the writer's transaction."""

    def execute(self, sql: str, parameters: Params = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Params], /) -> Cursor: ...


class ReaderCursor(Protocol):
    """A reader statement's results, read asynchronously."""

    async def fetchone(self) -> Any: ...

    async def fetchall(self) -> Iterable[Any]: ...

    def __aiter__(self) -> AsyncIterator[Any]: ...


class ReaderResult(Protocol):
    """What ``Reader.execute`` returns: entered with ``async with`` for its cursor."""

    async def __aenter__(self) -> ReaderCursor: ...

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any, /) -> Any: ...


class Reader(Protocol):
    """The readers' connection: every statement sees what is committed when it starts."""

    def execute(self, sql: str, parameters: Params = ..., /) -> ReaderResult: ...

    async def execute_fetchall(self, sql: str, parameters: Params = ..., /) -> Iterable[Any]: ...


class Jobs(Protocol):
    """The writer: runs a job of a ``Conn`` in its next transaction, answers after the commit."""

    async def submit(self, job: Callable[[Conn], T], *, durable: bool = True) -> T: ...
