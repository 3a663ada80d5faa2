"""Read-only views on a real spool: filters written in static SQL still filter."""

from __future__ import annotations

from pathlib import Path

from relay.config import SpoolSettings
from relay.model import AttemptStatus, RecipientStatus
from relay.store.spool import Finish, NewMessage, Spool
from relay.store.suppressions import NewBounce, Threshold


def _msg(queue_id: str, *rcpts: str, subject: str = "hello") -> NewMessage:
    return NewMessage(
        queue_id=queue_id,
        sender="app@example.com",
        recipients=list(rcpts),
        data=b"Subject: x\r\n\r\nx\r\n",
        subject=subject,
        received_at=100.0,
    )


async def _attempt(spool: Spool, status: AttemptStatus, rstatus: RecipientStatus) -> None:
    (claim,) = await spool.claim_due(1, lease=60)
    await spool.finish(
        Finish(
            recipient_id=rid,
            attempt_id=claim.attempt_ids[rid],
            status=rstatus,
            attempt_status=status,
            next_attempt_at=None,
            code=550,
            reply="no",
            provider="mx1",
        )
        for rid in claim.recipients
    )


async def test_provider_failures_count_failed_and_deferred_attempts(
    tmp_path: Path, spool_where: Path | SpoolSettings
) -> None:
    """The query once looked for 'FAIL', a spelling the log no longer stores."""
    now = [1000.0]
    async with await Spool.open(spool_where, clock=lambda: now[0]) as spool:
        await spool.enqueue(_msg("A", "a@example.net"))
        await _attempt(spool, AttemptStatus.FAIL, RecipientStatus.FAILED)
        await spool.enqueue(_msg("B", "b@example.net"))
        await _attempt(spool, AttemptStatus.DEFERRED, RecipientStatus.FAILED)
        await spool.enqueue(_msg("C", "c@example.net"))
        await _attempt(spool, AttemptStatus.SUCCESS, RecipientStatus.SENT)
        assert await spool.provider_failures(since=0) == {"mx1": 2}
        assert await spool.provider_failures(since=now[0] + 1) == {}


async def test_queue_and_log_pages_filter_search_and_page(
    tmp_path: Path, spool_where: Path | SpoolSettings
) -> None:
    async with await Spool.open(spool_where, clock=lambda: 1000.0) as spool:
        for i in range(5):
            await spool.enqueue(_msg(f"Q{i}", f"r{i}@example.net", subject=f"s_{i}%"))
        await _attempt(spool, AttemptStatus.FAIL, RecipientStatus.FAILED)  # Q0
        everything = await spool.list_queue()
        assert [e.queue_id for e in everything] == ["Q4", "Q3", "Q2", "Q1", "Q0"]
        page = await spool.list_queue(limit=2, before_id=everything[1].id)
        assert [e.queue_id for e in page] == ["Q2", "Q1"]
        failed = await spool.list_queue(statuses=[RecipientStatus.FAILED])
        assert [e.queue_id for e in failed] == ["Q0"]
        assert await spool.list_queue(statuses=[]) == []
        # LIKE wildcards in a search are literal; a queue ID matches exactly
        assert [e.queue_id for e in await spool.list_queue(search="s_3%")] == ["Q3"]
        assert [e.queue_id for e in await spool.list_queue(search="Q4")] == ["Q4"]
        assert await spool.list_queue(search="s_9") == []
        log = await spool.list_log()
        assert [e.queue_id for e in log] == ["Q0"]
        assert await spool.list_log(statuses=[AttemptStatus.SUCCESS]) == []
        assert len(await spool.list_log(statuses=[AttemptStatus.FAIL], since=999, until=1001)) == 1
        assert await spool.list_log(since=1001) == []
        assert await spool.list_log(until=1000) == []
        assert await spool.list_log(before_id=log[0].id) == []


async def test_queue_marks_count_recipients_and_find_bounces_after_delivery(
    tmp_path: Path, spool_where: Path | SpoolSettings
) -> None:
    """The queue page's extras: a sent recipient that bounced later, and per-message counts.

    The recipient's own status stays ``sent``; only the delivery log's BOUNCED
    row (linked by recipient id) tells, so the view must find that row.
    """
    async with await Spool.open(spool_where, clock=lambda: 1000.0) as spool:
        await spool.enqueue(_msg("A", "a@example.net", "b@example.net"))
        await _attempt(spool, AttemptStatus.SUCCESS, RecipientStatus.SENT)
        await spool.enqueue(_msg("B", "c@example.net"))
        bounce = NewBounce(
            address="b@example.net",
            kind="hard",
            source="dsn",
            status="5.1.1",
            diagnostic="smtp; 550 5.1.1 user unknown",
            queue_id="A",
            key="dsn-b",
        )
        await spool.suppressions.record_bounce(bounce, Threshold(hard=5))
        (a,) = await spool.list_queue(search="a@")
        (b,) = await spool.list_queue(search="b@")
        assert (a.status, b.status) == (RecipientStatus.SENT, RecipientStatus.SENT)
        marks = await spool.queue_marks(["A", "B", "nope"])
        assert marks.recipients == {"A": 2, "B": 1}
        assert list(marks.bounced) == [b.id]
        assert "550 5.1.1 user unknown" in marks.bounced[b.id]
        assert (await spool.queue_marks([])).recipients == {}


async def test_waiting_via_counts_unsent_recipients_last_tried_through_a_provider(
    tmp_path: Path, spool_where: Path | SpoolSettings
) -> None:
    """A provider's Delete confirmation: recipients still waiting whose last try was it."""
    async with await Spool.open(spool_where, clock=lambda: 1000.0) as spool:
        await spool.enqueue(_msg("A", "a1@example.net", "a2@example.net"))
        await _attempt(spool, AttemptStatus.DEFERRED, RecipientStatus.DEFERRED)  # 2 waiting
        await spool.enqueue(_msg("B", "b@example.net"))
        await _attempt(spool, AttemptStatus.SUCCESS, RecipientStatus.SENT)  # sent: not counted
        await spool.enqueue(_msg("C", "c@example.net"))  # never tried: no provider yet
        assert await spool.waiting_via("mx1") == 2
        assert await spool.waiting_via("mx2") == 0
