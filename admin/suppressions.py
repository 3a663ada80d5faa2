"""The suppression list as the admin shows it: filters, paging and the views of entries and bounces.

The Suppressions page and ``/api/suppressions`` share these, so both filter
and page the same way. What they change goes through
``relay.operations.suppressions``, which also has the input checks and the
CSV codec ``sluice suppression`` uses. Every value here may come from a
hostile bounce (an address or a diagnostic a remote server wrote):
templates escape it, and the raw bounce is only ever served as ``text/plain``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from admin.data import PAGE_SIZES
from relay.model import Suppression
from relay.store.spool import Spool
from relay.store.suppressions import SOURCES, BounceRecord

__all__ = ["ANY_SCOPE", "IMPORT_MAX", "SuppressionFilter", "bounce_view", "entry_view"]

#: the filter value for "every scope" ('' is the global scope itself)
ANY_SCOPE = "*"
#: the largest CSV an import takes (about 50,000 rows of typical length)
IMPORT_MAX = 4 * 1024 * 1024
# RFC 5321 §4.5.3.1.3: a path is at most 256 octets; a search longer than
# this finds nothing.
_SEARCH_MAX = 320


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
            search=(params.get("search") or "").strip()[:_SEARCH_MAX],
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
