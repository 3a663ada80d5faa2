"""Delivery statistics for the overview: read-only queries over the delivery log.

Every query is bounded by ``started_at`` (indexed), so the cost follows the
last day's traffic, not the size of the log. The 24-hour chart is drawn here
as plain numbers; the template turns them into SVG, so no script and no CDN
is needed to see it.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.model import AttemptStatus
from relay.spool import Spool

__all__ = ["Bar", "Chart", "chart", "outcomes_since"]

HOURS = 24
_OUTCOMES = (AttemptStatus.SUCCESS, AttemptStatus.DEFERRED, AttemptStatus.FAIL)

_SQL_OUTCOMES = (
    "SELECT status, count(*) AS n FROM attempts WHERE started_at >= :since GROUP BY status"
)
_SQL_HOURLY = (
    "SELECT CAST((started_at - :since) / 3600 AS INTEGER) AS hour, status, count(*) AS n"
    " FROM attempts WHERE started_at >= :since AND status != 'IN PROGRESS'"
    " GROUP BY hour, status"
)


async def outcomes_since(spool: Spool, since: float) -> dict[str, int]:
    """Delivery-log rows since ``since`` by status (every status present, 0 if none)."""
    counts = {s.value: 0 for s in AttemptStatus}
    for row in await spool.fetchall(_SQL_OUTCOMES, {"since": since}):
        counts[row["status"]] = row["n"]
    return counts


@dataclass(frozen=True, slots=True)
class Bar:
    """One stacked segment of the chart, in SVG user units."""

    x: float
    y: float
    width: float
    height: float
    status: str
    count: int
    hour_start: float


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    peak: int
    total: dict[str, int]
    start: float
    #: x positions and epoch times of the hour ticks to label
    ticks: list[tuple[float, float]]


async def chart(spool: Spool, now: float, *, width: int = 960, height: int = 180) -> Chart:
    """Deliveries per hour by outcome over the last 24 hours, as stacked bars."""
    start = (now // 3600 + 1) * 3600 - HOURS * 3600  # the oldest of 24 whole-hour slots
    grid: dict[int, dict[str, int]] = {h: {} for h in range(HOURS)}
    for row in await spool.fetchall(_SQL_HOURLY, {"since": start}):
        hour = int(row["hour"])
        if 0 <= hour < HOURS:
            grid[hour][row["status"]] = row["n"]
    peak = max((sum(v.values()) for v in grid.values()), default=0)
    plot_h = height - 20  # room for the hour labels underneath
    slot = width / HOURS
    bars: list[Bar] = []
    total = {s.value: 0 for s in _OUTCOMES}
    for hour, counts in grid.items():
        y = float(plot_h)
        for status in _OUTCOMES:
            n = counts.get(status.value, 0)
            if not n:
                continue
            total[status.value] += n
            h = plot_h * n / peak
            y -= h
            bars.append(
                Bar(
                    x=round(hour * slot + 2, 2),
                    y=round(y, 2),
                    width=round(slot - 4, 2),
                    height=round(h, 2),
                    status=status.value,
                    count=n,
                    hour_start=start + hour * 3600,
                )
            )
    ticks = [(round(h * slot + slot / 2, 2), start + h * 3600) for h in range(0, HOURS, 3)]
    return Chart(width, height, bars, peak, total, start, ticks)
