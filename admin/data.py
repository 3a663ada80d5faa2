"""What the pages and the API show, built once so both always agree.

Every function here reads; none writes. Secrets never enter these values: a
provider's password and OAuth2 secrets become ``MASK`` (or ``""`` when unset).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from enum import Enum
from typing import Any

from relay.config import ProviderSettings
from relay.model import (
    AttemptStatus,
    LogEntry,
    MessageDetail,
    ProviderHealth,
    QueueEntry,
    RecipientStatus,
)
from relay.outbound.providers import ProviderStatus
from relay.secrets import mask

__all__ = [
    "LogFilter",
    "QueueFilter",
    "header_list",
    "jsonable",
    "provider_view",
    "usage_text",
]

PAGE_SIZES = (25, 50, 100, 200)
_PREVIEW_MAX = 64 * 1024


def jsonable(value: Any) -> Any:
    """Dataclasses, enums and containers to JSON-ready values."""
    if hasattr(value, "__dataclass_fields__"):
        return jsonable(asdict(value))
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def usage_text(used: int, limit: int | None, unit: str, window: str) -> str:
    """Usage against the daily limit as the pages say it: "3 / 10 recipients, last 24 h"."""
    span = "last 24 h" if window == "rolling_24h" else "today (UTC)"
    if limit is None:
        return f"{used} {unit} {span}, no daily limit"
    return f"{used} / {limit} {unit}, {span}"


def provider_view(settings: ProviderSettings, status: ProviderStatus | None) -> dict[str, Any]:
    """One provider as the page and the API show it; never a secret."""
    o = settings.oauth2
    view: dict[str, Any] = {
        "id": settings.id,
        "caption": settings.caption,
        "driver": settings.driver,
        "host": settings.host,
        "port": settings.port,
        "username": settings.username or "",
        "password": mask(settings.password),
        "send_from": settings.send_from or "",
        "send_from_name": settings.send_from_name or "",
        "encryption": settings.encryption,
        "enabled": settings.enabled,
        "priority": settings.priority,
        "max_connections": settings.max_connections,
        "tls_verify": settings.tls_verify,
        "daily_limit": settings.daily_limit,
        "limit_unit": settings.limit_unit,
        "limit_window": settings.limit_window,
        "rate": (
            f"{settings.rate.count}/{settings.rate.per:g}s"
            + (" recipients" if settings.rate_unit == "recipients" else "")
            if settings.rate
            else None
        ),
        "rate_unit": settings.rate_unit,
        "oauth2": (
            {
                "token_url": o.token_url,
                "client_id": o.client_id,
                "client_secret": mask(o.client_secret),
                "refresh_token": mask(o.refresh_token),
            }
            if o is not None
            else None
        ),
        "health": ProviderHealth.UNKNOWN,
        #: why it is in that state, and since when (``relay.outbound.health``)
        "health_reason": "",
        "health_since": None,
        #: while in an automatic cool-down: when it will be tried again
        "cooldown_until": None,
        "last_error": "",
        "last_error_at": None,
        "last_ok_at": None,
        "sent_today": 0,
        "oauth_state": None,
        #: a device sign-in is configured (the Connect button)
        "sign_in": bool(o is not None and o.device_authorization_url),
        #: "needs sign-in" (grey), "connected" (green), "sign-in failed" (red), or None
        "oauth_sign_in": None,
    }
    if status is not None:
        view.update(
            health=status.health,
            health_reason=status.health_reason,
            health_since=status.health_since,
            cooldown_until=status.blocked_until,
            last_error=status.last_error,
            last_error_at=status.last_error_at,
            last_ok_at=status.last_ok_at,
            sent_today=status.sent_today,
            daily_limit=status.daily_limit,
            oauth_state=status.oauth_state,
            oauth_sign_in=status.oauth_sign_in,
        )
    limit = view["daily_limit"]
    view["usage_pct"] = min(100, round(100 * view["sent_today"] / limit)) if limit else None
    view["usage"] = usage_text(
        view["sent_today"], limit, settings.limit_unit, settings.limit_window
    )
    return view


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    try:
        number = float(value) if value not in (None, "") else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def _limit(params: Mapping[str, str]) -> int:
    n = _int(params.get("limit")) or 50
    return max(1, min(n, PAGE_SIZES[-1]))


@dataclass(frozen=True, slots=True)
class QueueFilter:
    """Queue page filters, from the query string (bad values are ignored, not errors)."""

    statuses: list[RecipientStatus] = field(default_factory=list)
    search: str = ""
    before_id: int | None = None
    limit: int = 50

    @classmethod
    def parse(cls, params: Any) -> QueueFilter:
        wanted = {s.value for s in RecipientStatus}
        statuses = [RecipientStatus(s) for s in params.getlist("status") if s in wanted]
        return cls(
            statuses=statuses,
            search=(params.get("search") or params.get("q") or "").strip()[:200],
            before_id=_int(params.get("before_id")),
            limit=_limit(params),
        )

    async def page(self, spool: Any) -> list[QueueEntry]:
        entries: list[QueueEntry] = await spool.list_queue(
            statuses=self.statuses or None,
            search=self.search or None,
            before_id=self.before_id,
            limit=self.limit,
        )
        return entries


@dataclass(frozen=True, slots=True)
class LogFilter:
    """Log page filters. ``date`` is a day in the viewer's zone (``tz`` = JS offset)."""

    statuses: list[AttemptStatus] = field(default_factory=list)
    search: str = ""
    since: float | None = None
    until: float | None = None
    date: str = ""
    tz: int = 0
    before_id: int | None = None
    limit: int = 50

    @classmethod
    def parse(cls, params: Any) -> LogFilter:
        # Values or labels, any case: bookmarks made with ?status=FAIL keep working.
        parsed = (AttemptStatus.parse(s) for s in params.getlist("status"))
        statuses = [s for s in parsed if s is not None]
        since = _float(params.get("since"))
        until = _float(params.get("until"))
        date = (params.get("date") or "").strip()
        # getTimezoneOffset(): minutes to add to local time to get UTC.
        tz = max(-24 * 60, min(24 * 60, _int(params.get("tz")) or 0))
        day = _day_start(date)
        if day is not None:
            since = day + tz * 60
            until = since + 86400
        else:
            date = ""
        return cls(
            statuses=statuses,
            search=(params.get("search") or params.get("q") or "").strip()[:200],
            since=since,
            until=until,
            date=date,
            tz=tz,
            before_id=_int(params.get("before_id")),
            limit=_limit(params),
        )

    async def page(self, spool: Any) -> list[LogEntry]:
        entries: list[LogEntry] = await spool.list_log(
            statuses=self.statuses or None,
            search=self.search or None,
            since=self.since,
            until=self.until,
            before_id=self.before_id,
            limit=self.limit,
        )
        return entries


def _day_start(date: str) -> float | None:
    """Epoch of 00:00 UTC on ``YYYY-MM-DD``, or None if it is not such a date."""
    try:
        day = dt.date.fromisoformat(date)
    except ValueError:
        return None
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()


def header_list(raw: bytes) -> list[tuple[str, str]]:
    """The message's header fields, decoded for display (the stored bytes stay as they are)."""
    msg = BytesHeaderParser(policy=default_policy).parsebytes(raw[:_PREVIEW_MAX])
    out = []
    for name, value in msg.items():
        try:
            text = str(value)
        except Exception:  # a malformed encoded-word must not break the page
            text = repr(value)
        out.append((name, text))
    return out


def body_preview(raw: bytes) -> tuple[str, bool]:
    """The first part of the raw message as text, and whether it was cut."""
    return raw[:_PREVIEW_MAX].decode("utf-8", errors="replace"), len(raw) > _PREVIEW_MAX


def message_view(detail: MessageDetail, raw: bytes) -> dict[str, Any]:
    preview, cut = body_preview(raw)
    view = jsonable(detail)
    for row, attempt in zip(view["attempts"], detail.attempts, strict=True):
        row["status_label"] = attempt.status.label  # what the page shows (SUCCESS, FAIL)
    for row, rcpt in zip(view["recipients"], detail.recipients, strict=True):
        row["origin"] = rcpt.origin  # what an address rule did ("alias of root@web1")
    return {
        **view,
        "headers": header_list(raw),
        "preview": preview,
        "preview_cut": cut,
    }
