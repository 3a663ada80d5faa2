"""The suppression list as the admin shows and edits it: filters, paging, input checks, CSV.

The Suppressions page and ``/api/suppressions`` share these, so both filter,
page, validate and read or write CSV the same way. The CSV columns are the
ones ``sluice suppression export`` writes (``address,scope,source,reason,
created_at,expires_at``, times as UTC ISO 8601); an import needs only the
``address`` column, and what it adds gets the source ``import``. Every value
here may come from a hostile bounce (an address or a diagnostic a remote
server wrote): templates escape it, and the raw bounce is only ever served
as ``text/plain``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from admin.data import PAGE_SIZES
from relay.config import parse_duration
from relay.errors import SluiceError
from relay.model import Suppression
from relay.store.spool import Spool
from relay.store.suppressions import SOURCES, BounceRecord, normalize

__all__ = [
    "ANY_SCOPE",
    "COLUMNS",
    "IMPORT_MAX",
    "InputError",
    "SuppressionFilter",
    "all_entries",
    "bounce_view",
    "check_address",
    "check_reason",
    "check_scope",
    "entry_view",
    "expiry",
    "export_csv",
    "parse_csv",
]

COLUMNS = ("address", "scope", "source", "reason", "created_at", "expires_at")
#: the filter value for "every scope" ('' is the global scope itself)
ANY_SCOPE = "*"
#: the largest CSV an import takes (about 50,000 rows of typical length)
IMPORT_MAX = 4 * 1024 * 1024
_EXPORT_PAGE = 1000
# RFC 5321 §4.5.3.1.3: a path is at most 256 octets; 320 leaves room for
# addresses some providers accept anyway.
_ADDRESS_MAX = 320
_SCOPE_MAX = 200
_REASON_MAX = 500


class InputError(SluiceError, ValueError):
    """Bad input from a form, a JSON body or a CSV file (answered 400 with the text)."""


def check_address(text: object) -> str:
    """The stored form of an address typed or posted, or ``InputError``."""
    if not isinstance(text, str):
        raise InputError("address: expected text")
    address = normalize(text)
    if not address:
        raise InputError("address: required")
    if len(address) > _ADDRESS_MAX:
        raise InputError(f"address: longer than {_ADDRESS_MAX} characters")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in address):
        raise InputError("address: no spaces or control characters")
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise InputError(f"address: {text.strip()!r} is not local-part@domain")
    return address


def check_scope(text: object) -> str:
    """A scope (a stream name; '' is global), or ``InputError``."""
    if text is None:
        return ""
    if not isinstance(text, str):
        raise InputError("scope: expected text")
    scope = text.strip()
    if len(scope) > _SCOPE_MAX or any(ord(c) < 32 or ord(c) == 127 for c in scope):
        raise InputError(f"scope: at most {_SCOPE_MAX} characters, no control characters")
    return scope


def check_reason(text: object) -> str:
    if text is None:
        return ""
    if not isinstance(text, str):
        raise InputError("reason: expected text")
    return " ".join(text.split())[:_REASON_MAX]


def _timestamp(text: str) -> float:
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise InputError(f"{text.strip()!r} is not an ISO 8601 time") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)  # CSV times are UTC (as exported)
    return when.timestamp()


def expiry(now: float, expires_at: object = None, expires_in: object = None) -> float | None:
    """When a new entry lifts itself: an absolute time or a duration from now (None: never).

    ``expires_at`` is a Unix time or ISO 8601 text; ``expires_in`` a duration
    such as ``30d`` (``relay.config.parse_duration``).
    """
    if expires_at not in (None, "") and expires_in not in (None, ""):
        raise InputError("give expires_at or expires_in, not both")
    if expires_in not in (None, ""):
        try:
            return now + parse_duration(expires_in)
        except ValueError as exc:
            raise InputError(f"expires_in: {exc}") from exc
    if expires_at in (None, ""):
        return None
    if isinstance(expires_at, bool):
        raise InputError("expires_at: expected a Unix time or ISO 8601 text")
    if isinstance(expires_at, int | float):
        if not math.isfinite(expires_at):
            raise InputError("expires_at: expected a Unix time or ISO 8601 text")
        return float(expires_at)
    if isinstance(expires_at, str):
        try:
            return _timestamp(expires_at)
        except InputError as exc:
            raise InputError(f"expires_at: {exc}") from exc
    raise InputError("expires_at: expected a Unix time or ISO 8601 text")


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        return default


@dataclass(frozen=True, slots=True)
class SuppressionFilter:
    """What the list shows: a search, a scope, a source, and where the page starts."""

    search: str = ""
    #: ``None``: every scope; ``''``: global entries only; else one stream
    scope: str | None = None
    source: str | None = None
    #: keyset paging: entries after this address
    after: str | None = None
    limit: int = 50

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> SuppressionFilter:
        """From query parameters; unknown values fall back to "all" rather than fail.

        ``scope`` absent or ``*`` is every scope, ``scope=`` (empty) the global one.
        """
        scope = params.get("scope")
        source = params.get("source") or None
        limit = max(1, min(_int(params.get("limit"), 50), PAGE_SIZES[-1]))
        return cls(
            search=(params.get("search") or "").strip()[:_ADDRESS_MAX],
            scope=None if scope is None or scope == ANY_SCOPE else scope.strip(),
            source=source if source in SOURCES else None,
            after=params.get("after") or None,
            limit=limit,
        )

    def query(self) -> list[tuple[str, str]]:
        """The filter as query parameters, without the page position."""
        q = [("scope", ANY_SCOPE if self.scope is None else self.scope)]
        if self.search:
            q.append(("search", self.search))
        if self.source:
            q.append(("source", self.source))
        q.append(("limit", str(self.limit)))
        return q

    async def page(self, spool: Spool) -> tuple[list[Suppression], str | None]:
        """One page, and the ``after`` of the next one (None on the last page).

        The store pages by address; an address can have an entry in several
        scopes, so a full page ends before its last address (whose entries
        then all start the next page) rather than split one address across two.
        """
        rows = await spool.suppressions.page(
            search=self.search or None,
            scope=self.scope,
            source=self.source,
            after=self.after,
            limit=self.limit,
        )
        if len(rows) < self.limit:
            return rows, None
        whole = [r for r in rows if r.address != rows[-1].address]
        if not whole:  # one address fills the page: show it and go on past it
            return rows, rows[-1].address
        return whole, whole[-1].address


async def all_entries(spool: Spool, f: SuppressionFilter) -> list[Suppression]:
    """Every entry the filter selects (for an export), read page by page."""
    out: list[Suppression] = []
    after: str | None = None
    while True:  # ends: each page moves ``after`` strictly forward in address order
        rows = await spool.suppressions.page(
            search=f.search or None,
            scope=f.scope,
            source=f.source,
            after=after,
            limit=_EXPORT_PAGE,
        )
        if len(rows) < _EXPORT_PAGE:
            return out + rows
        last = rows[-1].address
        whole = [r for r in rows if r.address != last]
        if whole:
            out.extend(whole)
            after = whole[-1].address
        else:
            out.extend(rows)
            after = last


def entry_view(e: Suppression, now: float) -> dict[str, Any]:
    """One entry as the page and the API show it."""
    return {
        "address": e.address,
        "scope": e.scope,
        "source": e.source,
        "reason": e.reason,
        "created_at": e.created_at,
        "expires_at": e.expires_at,
        "expired": e.expires_at is not None and e.expires_at <= now,
    }


def bounce_view(b: BounceRecord) -> dict[str, Any]:
    """One recorded bounce; ``raw_url`` when a bounce message was read (DSNs)."""
    return {
        "id": b.id,
        "address": b.address,
        "kind": b.kind,
        "status": b.status,
        "diagnostic": b.diagnostic,
        "source": b.source,
        "queue_id": b.queue_id,
        "stream": b.stream,
        "received_at": b.received_at,
        "raw_url": f"/api/bounces/{b.id}/raw" if b.source == "dsn" else None,
    }


def _iso(ts: float | None) -> str:
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def export_csv(entries: list[Suppression]) -> str:
    """The entries as ``sluice suppression export`` writes them."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for e in entries:
        writer.writerow(
            [e.address, e.scope, e.source, e.reason, _iso(e.created_at), _iso(e.expires_at)]
        )
    return buffer.getvalue()


def parse_csv(data: bytes) -> list[Suppression]:
    """Entries from an uploaded CSV (source ``import``); ``InputError`` names the line."""
    if len(data) > IMPORT_MAX:
        raise InputError(f"the file is larger than {IMPORT_MAX // (1024 * 1024)} MiB")
    try:
        text = data.decode("utf-8-sig")  # a spreadsheet's export may start with a BOM
    except UnicodeDecodeError as exc:
        raise InputError(f"the file is not UTF-8 text (byte {exc.start})") from exc
    entries: list[Suppression] = []
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if reader.fieldnames is None or "address" not in reader.fieldnames:
            raise InputError("the CSV needs a header row with an 'address' column")
        for row in reader:
            line = reader.line_num
            try:
                created = row.get("created_at") or ""
                entries.append(
                    Suppression(
                        address=check_address(row.get("address") or ""),
                        scope=check_scope(row.get("scope") or ""),
                        source="import",
                        reason=check_reason(row.get("reason") or "") or "imported",
                        created_at=_timestamp(created) if created.strip() else 0.0,
                        expires_at=_timestamp(row["expires_at"])
                        if (row.get("expires_at") or "").strip()
                        else None,
                    )
                )
            except InputError as exc:
                raise InputError(f"line {line}: {exc}") from exc
    except csv.Error as exc:
        raise InputError(f"not CSV: {exc}") from exc
    return entries
