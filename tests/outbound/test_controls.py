"""Operator controls in the scheduler: hold.rules, hold.expire_after, the held time, reroute."""

from __future__ import annotations

import time
from pathlib import Path

from relay.config import SpoolSettings
from relay.model import ClaimedRecipient, RecipientStatus, Selection
from relay.store.spool import Control, NewMessage, Spool
from tests.conftest import SluiceFactory, eventually, provider_for, smtp_send
from tests.outbound.helpers import SENDER, message, queue_id_of
from tests.upstream import TestUpstream


async def test_hold_rule_holds_outside_domains_until_released(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    rules = [{"recipient_domain_not": ["example.com"], "reason": "staging"}]
    async with sluice([provider_for(upstream)], hold={"rules": rules}) as s:
        _, reply = await smtp_send(
            s.port, SENDER, ["in@example.com", "out@outside.test"], message("staging")
        )
        qid = queue_id_of(reply)
        (got,) = await upstream.wait_for(1)
        assert got.recipients == ["in@example.com"]

        async def held() -> bool:
            entries = await s.spool.list_queue(statuses=[RecipientStatus.HELD])
            return [(e.email, e.reason) for e in entries] == [
                ("out@outside.test", "held by hold.rules: staging")
            ]

        await eventually(held)
        detail = await s.spool.get(qid)
        # A hold by rule is not an attempt: no delivery-log row for it.
        assert [a.email for a in detail.attempts] == ["in@example.com"]
        n = await s.spool.control(Selection(queue_ids=(qid,)), Control("release", "test"))
        assert n == 1
        # Released mail is not held again by the rule.
        (_, again) = await upstream.wait_for(2)
        assert again.recipients == ["out@outside.test"]


async def test_held_too_long_expires_with_the_reason(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    rules = [{"recipient_domain": ["example.net"]}]
    async with sluice([provider_for(upstream)], hold={"rules": rules, "expire_after": "1s"}) as s:
        _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message("old"))
        qid = queue_id_of(reply)

        async def expired() -> str | None:
            (entry,) = (await s.spool.get(qid)).recipients
            return entry.reason if entry.status is RecipientStatus.EXPIRED else None

        reason = await eventually(expired, within=30)
        assert "held longer than hold.expire_after (1s)" in reason
        assert upstream.messages == []
        assert (await s.spool.audit_log())[0].action == "expire-held"


async def test_release_moves_the_give_up_clock_by_the_time_held(
    tmp_path: Path, spool_where: Path | SpoolSettings
) -> None:
    now = [1000.0]
    async with await Spool.open(spool_where, clock=lambda: now[0]) as spool:
        for qid in ("A", "B"):
            await spool.enqueue(NewMessage(qid, SENDER, [f"{qid}@example.net"], b"\r\n", "", 1000))
        everything = Selection(everything=True)
        assert await spool.control(everything, Control("hold", "test")) == 2
        now[0] = 4600.0  # an hour held
        await spool.control(Selection(queue_ids=("A",)), Control("release", "test"))
        await spool.control(
            Selection(queue_ids=("B",)), Control("release", "test", age_while_held=True)
        )
        claims = {c.queue_id: c for c in await spool.claim_due(10, 60)}
    (a,) = claims["A"].recipients.values()
    (b,) = claims["B"].recipients.values()
    assert a == ClaimedRecipient("A@example.net", 0, 4600.0, None, was_held=True)
    assert b.since == 1000.0  # hold.age_while_held: the time held counted


async def test_an_empty_selection_does_nothing(
    tmp_path: Path, spool_where: Path | SpoolSettings
) -> None:
    async with await Spool.open(spool_where) as spool:
        await spool.enqueue(NewMessage("A", SENDER, ["a@example.net"], b"\r\n", "", time.time()))
        try:
            await spool.control(Selection(), Control("hold", "test"))
        except ValueError as exc:
            assert "choose queue IDs or a filter" in str(exc)
        else:
            raise AssertionError("an empty selection was accepted")
        assert [e.status for e in await spool.list_queue()] == [RecipientStatus.QUEUED]
