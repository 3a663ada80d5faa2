"""Overview statistics over a real spool whose clock the test sets."""

from __future__ import annotations

from pathlib import Path

from admin.stats import HOURS, summary
from relay.config import SpoolSettings
from relay.model import AttemptStatus, RecipientStatus
from relay.store.spool import Finish, NewMessage, Spool, new_queue_id

NOW = 1_800_000_000.0 + 1800  # half past an hour, UTC


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


async def attempt(spool: Spool, clock: Clock, at: float, outcome: AttemptStatus) -> None:
    """One message, one real claim and finish at time ``at``."""
    clock.now = at
    await spool.enqueue(
        NewMessage(new_queue_id(at), "a@example.org", ["b@example.net"], b"x", "s", at)
    )
    (claim,) = await spool.claim_due(1, lease=60)
    ((rid, _rcpt),) = claim.recipients.items()
    status = {
        AttemptStatus.SUCCESS: RecipientStatus.SENT,
        AttemptStatus.FAIL: RecipientStatus.FAILED,
        AttemptStatus.DEFERRED: RecipientStatus.DEFERRED,
    }[outcome]
    await spool.finish(
        [Finish(rid, claim.attempt_ids[rid], status, outcome, at + 3600, 250, "r", "p")]
    )


async def test_summary_counts_and_hour_buckets(
    tmp_path: Path, spool_where: Path | SpoolSettings
) -> None:
    clock = Clock()
    async with await Spool.open(spool_where, clock=clock) as spool:
        await attempt(spool, clock, NOW - 10, AttemptStatus.SUCCESS)
        await attempt(spool, clock, NOW - 20, AttemptStatus.DEFERRED)
        await attempt(spool, clock, NOW - 2 * 3600, AttemptStatus.FAIL)
        # Inside the last 86400 s but before the oldest whole hour drawn.
        await attempt(spool, clock, NOW - 86400 + 600, AttemptStatus.SUCCESS)
        await attempt(spool, clock, NOW - 86400 - 600, AttemptStatus.FAIL)  # too old
        s = await summary(spool, NOW)
    # Every attempt status is counted, the two of #15 (bounced, suppressed) too.
    others = {"in_progress": 0, "bounced": 0, "suppressed": 0}
    assert s.last_hour == {**others, "success": 1, "fail": 0, "deferred": 1}
    assert s.last_day == {**others, "success": 2, "fail": 1, "deferred": 1}
    assert s.chart.total == {"success": 1, "deferred": 1, "fail": 1}
    assert s.chart.peak == 2
    by_hour = {(b.hour_start, b.status): b.count for b in s.chart.bars}
    this_hour = NOW - 1800
    assert by_hour == {
        (this_hour, "SUCCESS"): 1,
        (this_hour, "DEFERRED"): 1,
        (this_hour - 2 * 3600, "FAIL"): 1,
    }
    assert s.chart.start == this_hour - (HOURS - 1) * 3600
    # Stacked: the two bars of the current hour fill the plot height together.
    tall = [b for b in s.chart.bars if b.hour_start == this_hour]
    assert sum(b.height for b in tall) == s.chart.height - 20
    assert max(b.x for b in s.chart.bars) < s.chart.width
