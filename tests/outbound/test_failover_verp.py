"""Failover when a provider temp-fails everyone, with VERP on (one transaction per recipient).

With ``bounces.verp`` each recipient is its own transaction, so "the same
4xx to every recipient of a transaction" never sees two recipients; the
same 4xx to recipients of distinct domains across transactions must speak
for the provider just as well (``relay.outbound.replies.AcrossTransactions``).
"""

from __future__ import annotations

import pytest

from relay.model import QueueEntry
from tests.conftest import SluiceFactory, eventually, provider_for, smtp_send
from tests.outbound.helpers import SENDER, message, queue_id_of, sent
from tests.upstream import TestUpstream

REFUSAL = "451 4.3.0 Temporary system problem, please retry"
DOMAINS = ("one.example", "two.example", "three.example")


@pytest.mark.parametrize("verp", [True, False], ids=["verp", "no-verp"])
async def test_a_provider_that_defers_everyone_fails_over_for_every_recipient(
    sluice: SluiceFactory, upstream: TestUpstream, upstream2: TestUpstream, verp: bool
) -> None:
    upstream.reply["RCPT"] = REFUSAL
    providers = [
        provider_for(upstream, "primary", priority=1, cooldown="60s"),
        provider_for(upstream2, "backup", priority=2),
    ]
    bounces = {"address": "bounces@example.org", "verp": verp}
    async with sluice(providers, bounces=bounces) as s:
        qids = []
        for i in range(3):
            rcpts = [f"user{i}@{d}" for d in DOMAINS]
            _, reply = await smtp_send(s.port, SENDER, rcpts, message(f"m{i}"))
            qids.append(queue_id_of(reply))

        async def all_sent() -> list[QueueEntry]:
            found = [await sent(s.spool, q) for q in qids]
            return [e for f in found for e in f] if all(found) else []

        # Bounded: the retry back-off (1 s in tests) is not what gets them out;
        # every recipient goes to the backup in its first attempt.
        done = await eventually(all_sent, within=20)
        # The provider is paused now: later mail goes to the backup without asking it.
        _, reply = await smtp_send(
            s.port, SENDER, ["late@one.example", "late@two.example"], message()
        )
        later = await eventually(lambda: sent(s.spool, queue_id_of(reply)), within=20)
    assert [e.reason for e in later if "primary" in e.reason] == []
    assert {e.provider for e in later} == {"backup"}
    assert upstream.messages == []
    assert len(done) == 9
    assert {e.provider for e in done} == {"backup"}
    assert all(e.attempts == 1 for e in done), [(e.email, e.attempts) for e in done]
    got = {r for m in upstream2.messages for r in m.recipients}
    assert got == {f"user{i}@{d}" for i in range(3) for d in DOMAINS} | {e.email for e in later}
    if verp:
        assert all(len(m.recipients) == 1 for m in upstream2.messages)
        assert all(m.sender.startswith("bounces+") for m in upstream2.messages)
    # Point 11: the recorded reply starts with the code that stands, on one line.
    told = [e for e in done if "primary said" in e.reason]
    assert told, [e.reason for e in done]
    for e in told:
        assert e.reason.startswith("250 "), e.reason
        assert f"(via backup; primary said {REFUSAL})" in e.reason, e.reason
        assert "\n" not in e.reason
