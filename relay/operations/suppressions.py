"""Suppress and unsuppress addresses, and the suppression list's one CSV codec.

The input checks (``check_address``, ``check_scope``, ``check_reason``,
``expiry``) and the CSV reader and writer are the ones every front-end uses:
``sluice suppression add|import|export``, the admin's Suppressions page and
``/api/suppressions``. An address is checked by ``relay.address`` (the syntax
Sluice accepts at RCPT), so "not an address" is refused with one message
wherever it is typed, posted or imported.

CSV is ``address,scope,source,reason,created_at,expires_at`` with a header
row, times as UTC ISO 8601 (what ``export`` writes); an import needs only the
``address`` column, takes a UTF-8 file with or without a byte-order mark, is
all or nothing, and names a bad row by the line it starts on. The stdlib
``csv`` module reads and writes it: no library is needed beyond that.

Spreadsheet formulas (CSV injection): a cell that starts with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return is run as a formula by Excel and
LibreOffice when the export is opened there, and addresses (``=x@example.org``
is a valid one), scopes and reasons come from outside (an app, a bounce). So
``write_csv`` writes such a cell with a single quote in front (OWASP's
advice: the spreadsheet shows the text, runs nothing), and ``parse_csv``
takes that quote off again. For the round trip to be lossless, a value that
already starts with quotes followed by such a character gets one more quote
too. The rule, on every cell:

* a value *needs* the prefix when, with its leading ``'`` removed, it starts
  with one of ``= + - @ TAB CR``;
* export writes ``'`` + value when the value needs it, else the value;
* import removes one leading ``'`` when what follows needs it, else keeps the
  cell as it is.

So ``=1+1`` is written ``'=1+1``, ``'=1+1`` is written ``''=1+1``, and
``'quoted`` (nothing to run after the quote) is written as it is; each reads
back as it was. A file written before this rule by hand or by an older Sluice
reads as before, except a cell starting with a quote then one of those
characters, which loses that quote.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
from dataclasses import dataclass

from relay.address import address_problem
from relay.config import parse_duration
from relay.message import stream_name
from relay.model import Suppression
from relay.operations.actor import Actor, ActorKind, Refused
from relay.store.spool import Spool
from relay.store.suppressions import normalize

__all__ = [
    "COLUMNS",
    "Imported",
    "RowRefused",
    "Suppressed",
    "Unsuppressed",
    "all_entries",
    "check_address",
    "check_reason",
    "check_scope",
    "expiry",
    "export_csv",
    "import_csv",
    "lookup_key",
    "neutralize",
    "parse_csv",
    "restore",
    "suppress",
    "unsuppress",
    "write_csv",
]

COLUMNS = ("address", "scope", "source", "reason", "created_at", "expires_at")
# RFC 5321 § 4.5.3.1.3: a path is at most 256 octets; 320 leaves room for
# what a bounce may have recorded anyway.
_LOOKUP_MAX = 320
_SCOPE_MAX = 200
_REASON_MAX = 500
_PAGE = 1000
#: what a spreadsheet runs as a formula at the start of a cell (OWASP: CSV injection)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_QUOTE = "'"


# ------------------------------------------------------------------ input checks


def check_address(text: object) -> str:
    """The stored form of an address typed, posted or imported.

    Raises:
        Refused: "not an address: 'x' (why)", the one message of every front-end.
    """
    if not isinstance(text, str):
        raise Refused("not an address: expected text")
    address = normalize(text)
    problem = address_problem(address)
    if problem is not None:
        raise Refused(f"not an address: {text.strip()!r} ({problem})")
    return address


def lookup_key(text: object) -> str:
    """The stored form of an address to look up or remove, which need not be a valid one.

    A bounce may have recorded an address no front-end would take (a remote
    server wrote it), and the operator must still be able to see and remove
    it: only what cannot be a stored address is refused here.

    Raises:
        Refused: not text, empty, too long, or with control characters.
    """
    if not isinstance(text, str):
        raise Refused("address: expected text")
    address = normalize(text)
    if not address:
        raise Refused("address: required")
    if len(address) > _LOOKUP_MAX or any(ord(c) < 32 or ord(c) == 127 for c in address):
        raise Refused(f"address: at most {_LOOKUP_MAX} characters, no control characters")
    return address


def check_scope(text: object) -> str:
    """A scope (a stream name; '' is global), as streams are named (``stream_name``).

    Raises:
        Refused: not text, too long, or with control characters.
    """
    if text is None:
        return ""
    if not isinstance(text, str):
        raise Refused("scope: expected text")
    scope = text.strip()
    if len(scope) > _SCOPE_MAX or any(ord(c) < 32 or ord(c) == 127 for c in scope):
        raise Refused(f"scope: at most {_SCOPE_MAX} characters, no control characters")
    return stream_name(scope)


def check_reason(text: object) -> str:
    """A reason on one line, cut to 500 characters.

    Raises:
        Refused: not text.
    """
    if text is None:
        return ""
    if not isinstance(text, str):
        raise Refused("reason: expected text")
    return " ".join(text.split())[:_REASON_MAX]


def _timestamp(text: str) -> float:
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise Refused(f"{text.strip()!r} is not an ISO 8601 time") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)  # CSV times are UTC (as exported)
    return when.timestamp()


def expiry(now: float, expires_at: object = None, expires_in: object = None) -> float | None:
    """When a new entry lifts itself: an absolute time or a duration from now (None: never).

    ``expires_at`` is a Unix time or ISO 8601 text; ``expires_in`` a duration
    such as ``30d`` (``relay.config.parse_duration``).

    Raises:
        Refused: both given, or one that is not a time or a duration.
    """
    if expires_at not in (None, "") and expires_in not in (None, ""):
        raise Refused("give expires_at or expires_in, not both")
    if expires_in not in (None, ""):
        try:
            return now + parse_duration(expires_in)
        except ValueError as exc:
            raise Refused(f"expires_in: {exc}") from exc
    if expires_at in (None, ""):
        return None
    if isinstance(expires_at, int | float) and not isinstance(expires_at, bool):
        if math.isfinite(expires_at):
            return float(expires_at)
    elif isinstance(expires_at, str):
        try:
            return _timestamp(expires_at)
        except Refused as exc:
            raise Refused(f"expires_at: {exc}") from exc
    raise Refused("expires_at: expected a Unix time or ISO 8601 text")


# ------------------------------------------------------------------ the CSV codec


class RowRefused(Refused):
    """A bad row of a CSV file: ``line`` (where the row starts) and ``problem``.

    ``str()`` is "line N: problem"; the CLI writes "FILE:N: problem" instead,
    as compilers and ``sluice check`` name a place in a file.
    """

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.problem = problem


def _iso(ts: float | None) -> str:
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def _needs_quote(value: str) -> bool:
    """Whether a spreadsheet would run ``value`` once its leading quotes are taken off."""
    return value.lstrip(_QUOTE).startswith(_FORMULA_START)


def neutralize(value: str) -> str:
    """A cell as exported: a quote in front of what a spreadsheet would run (module doc)."""
    return _QUOTE + value if _needs_quote(value) else value


def restore(cell: str) -> str:
    """A cell as imported: ``neutralize`` undone, any other cell kept as it is."""
    if cell.startswith(_QUOTE) and _needs_quote(cell[1:]):
        return cell[1:]
    return cell


def write_csv(entries: list[Suppression]) -> str:
    """The entries as CSV, header first, formula-looking cells neutralized (module doc)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for e in entries:
        row = [e.address, e.scope, e.source, e.reason, _iso(e.created_at), _iso(e.expires_at)]
        writer.writerow([neutralize(cell) for cell in row])
    return buffer.getvalue()


def parse_csv(
    data: bytes, *, default_scope: str = "", max_bytes: int | None = None
) -> list[Suppression]:
    """Entries from CSV (source ``import``); all are checked before any is returned.

    Args:
        data: the file's bytes (UTF-8, a byte-order mark allowed).
        default_scope: the scope of rows without one.
        max_bytes: refuse a larger file (an upload); None: any size.

    Raises:
        RowRefused: the first bad row ("line N: why", N the line it starts on).
        Refused: why the file as a whole is not CSV.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise Refused(f"the file is larger than {max_bytes // (1024 * 1024)} MiB")
    try:
        text = data.decode("utf-8-sig")  # a spreadsheet's export may start with a BOM
    except UnicodeDecodeError as exc:
        raise Refused(f"the file is not UTF-8 text (byte {exc.start})") from exc
    entries: list[Suppression] = []
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if reader.fieldnames is None or "address" not in reader.fieldnames:
            raise Refused("the CSV needs a header row with an 'address' column")
        start = reader.line_num + 1
        for raw in reader:
            row = {k: restore(v) for k, v in raw.items() if isinstance(v, str)}
            try:
                created = (row.get("created_at") or "").strip()
                expires = (row.get("expires_at") or "").strip()
                entries.append(
                    Suppression(
                        address=check_address(row.get("address") or ""),
                        scope=check_scope(row.get("scope") or default_scope),
                        source="import",
                        reason=check_reason(row.get("reason") or "") or "imported",
                        created_at=_timestamp(created) if created else 0.0,
                        expires_at=_timestamp(expires) if expires else None,
                    )
                )
            except Refused as exc:
                raise RowRefused(start, str(exc)) from exc
            start = reader.line_num + 1
    except csv.Error as exc:
        raise Refused(f"not CSV: {exc}") from exc
    return entries


# -------------------------------------------------------------------- operations


@dataclass(frozen=True, slots=True)
class Suppressed:
    """The entry as stored (the address normalized, the source from the actor)."""

    entry: Suppression


@dataclass(frozen=True, slots=True)
class Unsuppressed:
    """What an unsuppress removed."""

    address: str
    #: entries removed (0: the address had none in that scope)
    removed: int


@dataclass(frozen=True, slots=True)
class Imported:
    """What an import added (all rows of the file: it is all or nothing)."""

    count: int


def _source(actor: Actor) -> str:
    """An app pushing through the API is ``api``; an operator typing, ``manual``."""
    return "api" if actor.kind is ActorKind.API else "manual"


async def suppress(
    spool: Spool,
    address: object,
    actor: Actor,
    *,
    scope: object = "",
    reason: object = "",
    expires_at: float | None = None,
) -> Suppressed:
    """Add (or replace) one entry; its source follows from the actor (``api``, ``manual``).

    Raises:
        Refused: not an address, or a bad scope.
    """
    entry = await spool.suppressions.add(
        check_address(address),
        scope=check_scope(scope),
        source=_source(actor),
        reason=check_reason(reason) or "added by hand",
        expires_at=expires_at,
    )
    return Suppressed(entry)


async def unsuppress(
    spool: Spool, address: object, actor: Actor, *, scope: object = None
) -> Unsuppressed:
    """Remove an address's entry in ``scope`` (every scope when None): mail to it goes again.

    Raises:
        Refused: no address (see ``lookup_key``), or a bad scope.
    """
    del actor  # the list keeps entries, not their history
    checked = lookup_key(address)
    in_scope = check_scope(scope) if scope is not None else None
    return Unsuppressed(checked, await spool.suppressions.remove(checked, scope=in_scope))


async def import_csv(
    spool: Spool,
    data: bytes,
    actor: Actor,
    *,
    default_scope: str = "",
    max_bytes: int | None = None,
) -> Imported:
    """Add every entry of a CSV file, or none (see ``parse_csv``).

    Raises:
        Refused: the first bad row, by line, or a file that is not CSV.
    """
    del actor  # every imported entry has the source ``import``
    entries = parse_csv(data, default_scope=check_scope(default_scope), max_bytes=max_bytes)
    return Imported(await spool.suppressions.add_many(entries))


async def all_entries(
    spool: Spool,
    *,
    search: str | None = None,
    scope: str | None = None,
    source: str | None = None,
) -> list[Suppression]:
    """Every entry a filter selects, read page by page in (address, scope) order."""
    out: list[Suppression] = []
    after: Suppression | None = None
    while True:  # ends: each page moves the keyset strictly forward
        page = await spool.suppressions.page(
            search=search,
            scope=scope,
            source=source,
            after=after.address if after else None,
            after_scope=after.scope if after else None,
            limit=_PAGE,
        )
        out.extend(page)
        if len(page) < _PAGE:
            return out
        after = page[-1]


async def export_csv(
    spool: Spool,
    *,
    search: str | None = None,
    scope: str | None = None,
    source: str | None = None,
) -> tuple[str, int]:
    """The entries a filter selects as CSV, and how many there are."""
    entries = await all_entries(spool, search=search, scope=scope, source=source)
    return write_csv(entries), len(entries)
