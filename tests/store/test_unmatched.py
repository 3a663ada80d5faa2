"""Which bounces from the mailbox count (``Suppressions.record_dsn``), on a real SQLite spool.

Only one about mail Sluice sent to the address: a verified VERP token naming
that recipient, or a queue ID whose message a provider took for it. The
rest are kept apart, bounded, each once, and never counted.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from relay.config import SpoolSettings
from relay.store.spool import NewMessage, Spool, new_queue_id
from relay.store.suppressions import UNMATCHED_KEPT, NewBounce, Threshold
from tests.bounces.genuine import delivered

ONE = Threshold(hard=1)


def report(address: str, key: str, **where: object) -> NewBounce:
    return NewBounce(
        address, "hard", "dsn", status="5.1.1", diagnostic="user unknown",
        key=f"<{key}@mx>:{address}", **where,  # type: ignore[arg-type]
    )  # fmt: skip


async def test_each_rule_on_its_own(tmp_path: Path, spool_where: Path | SpoolSettings) -> None:
    async with await Spool.open(spool_where) as spool:
        book = spool.suppressions
        qid, rid = await delivered(spool, "Reader@Example.net")
        # Queued, never delivered: its queue ID is real, but nothing was sent yet.
        waiting = new_queue_id(1.0)
        await spool.enqueue(
            NewMessage(waiting, "a@example.org", ["late@example.net"], b"x", "s", 1.0)
        )
        cases = [
            (report("ceo@corp.example", "a"), "no VERP token and no queue ID"),
            (report("ceo@corp.example", "b", queue_id="0" * 16), "names no message"),
            (report("ceo@corp.example", "c", queue_id=qid), "was not delivered"),
            (report("late@example.net", "d", queue_id=waiting), "was not delivered"),
            (
                report("ceo@corp.example", "e", queue_id=qid, recipient_id=rid),
                "for another recipient",
            ),
            (
                report("ceo@corp.example", "f", queue_id=qid, recipient_id=rid + 99),
                "names no recipient",
            ),
        ]
        for bounce, why in cases:
            outcome = await book.record_dsn(bounce, ONE, sender="x@mx.example")
            assert not outcome.matched and why in outcome.reason, (bounce, outcome)
            assert await book.active(bounce.address) is None
            assert await book.bounces_of(bounce.address) == []
        # A problem the poller found (a token that did not verify) is never looked past.
        forged = report("reader@example.net", "g", queue_id=qid)
        outcome = await book.record_dsn(forged, ONE, problem="a VERP token that does not verify")
        assert not outcome.matched and await book.active("reader@example.net") is None
        assert await book.unmatched_count() == len(cases) + 1
        # Genuine: by Received id (address in any case), then by token.
        by_id = await book.record_dsn(report("READER@example.net", "h", queue_id=qid), ONE)
        assert by_id.matched and by_id.entry is not None
        assert by_id.entry.address == "reader@example.net"
        by_token = await book.record_dsn(
            report("reader@example.net", "i", queue_id=qid, recipient_id=rid), ONE
        )
        assert by_token.matched
        assert len(await book.bounces_of("reader@example.net")) == 2


async def test_unmatched_bounces_are_kept_once_and_bounded(
    tmp_path: Path, spool_where: Path | SpoolSettings
) -> None:
    async with await Spool.open(spool_where) as spool:
        book = spool.suppressions
        for n in range(UNMATCHED_KEPT + 5):
            await book.record_dsn(report(f"u{n}@corp.example", f"k{n}"), ONE, sender="f@x")
        # Read again (a poll that died before marking): kept once.
        last = UNMATCHED_KEPT + 4
        await book.record_dsn(report(f"u{last}@corp.example", f"k{last}"), ONE)
        assert await book.unmatched_count() == UNMATCHED_KEPT
        latest = await book.unmatched(limit=3)
        assert [u.address for u in latest] == [
            f"u{n}@corp.example" for n in range(UNMATCHED_KEPT + 4, UNMATCHED_KEPT + 1, -1)
        ]
        assert latest[0].sender == "f@x"


async def test_the_verp_key_is_made_once_and_kept_in_the_spool(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    async with await Spool.open(path) as spool:
        key = await spool.suppressions.verp_key()
        assert len(key) == 32 and await spool.suppressions.verp_key() == key
    async with await Spool.open(path) as again:  # another process, a restart
        assert await again.suppressions.verp_key() == key
    other = tmp_path / "other.sqlite3"
    async with await Spool.open(other) as spool:
        assert await spool.suppressions.verp_key() != key
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT count(*) FROM spool_keys").fetchone() == (1,)
    finally:
        conn.close()
