"""The suppression list and the bounce threshold, on a real SQLite spool."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from relay.config import SpoolSettings, SuppressScope
from relay.events import EventType
from relay.model import Claim, suppressed_for
from relay.store.spool import NewMessage, Spool
from relay.store.suppressions import NewBounce, Threshold


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def hard(address: str, n: int = 0, **extra: object) -> NewBounce:
    return NewBounce(
        address, "hard", "dsn", status="5.1.1", diagnostic=f"user unknown #{n}",
        key=f"<bounce-{n}@mx>:{address}", **extra,  # type: ignore[arg-type]
    )  # fmt: skip


async def test_threshold_suppresses_with_the_last_diagnostic(
    tmp_path: Path, spool_where: Path | SpoolSettings
) -> None:
    clock = Clock(1_000_000.0)
    async with await Spool.open(spool_where, clock=clock) as spool:
        book = spool.suppressions
        rule = Threshold(hard=3)
        assert await book.record_bounce(hard("Gone@Example.net", 1), rule) is None
        assert await book.record_bounce(hard("gone@example.net", 2), rule) is None
        assert await book.active("gone@example.net") is None
        entry = await book.record_bounce(hard("gone@example.net", 3), rule)
        assert entry is not None
        assert entry.address == "gone@example.net" and entry.source == "bounce"
        assert "5.1.1 user unknown #3" in entry.reason
        assert await book.active("GONE@example.net") == entry
        # Each bounce that made it is there to see.
        bounces = await book.bounces_of("gone@example.net")
        assert [b.diagnostic for b in bounces] == [f"user unknown #{n}" for n in (3, 2, 1)]
        # Already suppressed: a fourth bounce makes no second entry.
        assert await book.record_bounce(hard("gone@example.net", 4), rule) is None


async def test_the_same_bounce_read_twice_counts_once(
    tmp_path: Path, spool_where: Path | SpoolSettings
) -> None:
    async with await Spool.open(spool_where) as spool:
        rule = Threshold(hard=2)
        assert await spool.suppressions.record_bounce(hard("a@x.example", 7), rule) is None
        assert await spool.suppressions.record_bounce(hard("a@x.example", 7), rule) is None
        assert len(await spool.suppressions.bounces_of("a@x.example")) == 1


async def test_only_bounces_inside_the_window_count(
    tmp_path: Path, spool_where: Path | SpoolSettings
) -> None:
    clock = Clock(1_000_000.0)
    async with await Spool.open(spool_where, clock=clock) as spool:
        rule = Threshold(hard=2, window=86400)
        await spool.suppressions.record_bounce(hard("a@x.example", 1), rule)
        clock.now += 2 * 86400
        assert await spool.suppressions.record_bounce(hard("a@x.example", 2), rule) is None
        clock.now += 3600
        assert await spool.suppressions.record_bounce(hard("a@x.example", 3), rule) is not None


async def test_soft_bounces_over_days_count_as_one_hard_when_asked(
    tmp_path: Path, spool_where: Path | SpoolSettings
) -> None:
    clock = Clock(1_000_000.0)
    async with await Spool.open(spool_where, clock=clock) as spool:
        rule = Threshold(hard=1, soft_as_hard_after=3 * 86400)

        def soft(n: int) -> NewBounce:
            return NewBounce("full@x.example", "soft", "dsn", status="4.2.2", key=f"s{n}")

        assert await spool.suppressions.record_bounce(soft(1), rule) is None
        clock.now += 86400
        assert await spool.suppressions.record_bounce(soft(2), rule) is None
        clock.now += 2 * 86400
        entry = await spool.suppressions.record_bounce(soft(3), rule)
        assert entry is not None and "4.2.2" in entry.reason
        # Off by default: the same soft bounces suppress nothing.
        off = Threshold(hard=1)
        for n in range(4, 8):
            clock.now += 86400
            assert (
                await spool.suppressions.record_bounce(
                    NewBounce("other@x.example", "soft", "dsn", key=f"o{n}"), off
                )
                is None
            )


async def test_scoped_and_expiring_entries(
    tmp_path: Path, spool_where: Path | SpoolSettings
) -> None:
    clock = Clock(1_000_000.0)
    async with await Spool.open(spool_where, clock=clock) as spool:
        book = spool.suppressions
        await book.add("reader@x.example", scope="newsletter", reason="unsubscribed", source="api")
        assert (await book.active("reader@x.example", "newsletter")) is not None
        assert await book.active("reader@x.example", "receipts") is None
        assert await book.active("reader@x.example") is None
        await book.add("temp@x.example", expires_at=clock.now + 60)
        assert await book.active("temp@x.example", "anything") is not None
        clock.now += 61
        assert await book.active("temp@x.example") is None
        assert await book.remove("reader@x.example", scope="receipts") == 0
        assert await book.remove("reader@x.example") == 1
        assert await book.active("reader@x.example", "newsletter") is None


async def test_a_dsn_bounce_of_a_relayed_message_is_in_its_log(
    tmp_path: Path, spool_where: Path | SpoolSettings
) -> None:
    async with await Spool.open(spool_where) as spool:
        qid = "0190F2A3B4C5D6E7"
        await spool.enqueue(
            NewMessage(qid, "app@x.example", ["To@Y.example"], b"Subject: s\r\n\r\nb\r\n", "s", 1.0)
        )
        detail = await spool.get(qid)
        (rcpt,) = detail.recipients
        await spool.suppressions.record_bounce(
            NewBounce(
                "whoever@y.example", "hard", "dsn", "5.1.1", "no such user",
                queue_id=qid, recipient_id=rcpt.id, key="k1",
            ),
            Threshold(hard=5),
        )  # fmt: skip
        detail = await spool.get(qid)
        (bounced,) = [a for a in detail.attempts if a.status.value == "bounced"]
        assert "hard bounce: 5.1.1 no such user" in bounced.reason
        # VERP named the recipient: the bounce counts for it, whatever the DSN said.
        (b,) = await spool.suppressions.bounces_of("to@y.example")
        assert b.queue_id == qid


async def test_per_stream_bounces_suppress_for_their_stream_only(
    tmp_path: Path, spool_where: Path | SpoolSettings
) -> None:
    """``bounces.suppress_scope: stream``: a newsletter's bounces spare password resets."""
    hooks = [Hook("http://127.0.0.1:9/all", list(EventType))]
    async with await Spool.open(spool_where) as spool:
        book = spool.suppressions
        rule = Threshold(hard=2, scope=SuppressScope.STREAM)

        async def bounce_of(n: int, headers: str) -> NewBounce:
            qid = f"0190F2A3B4C5D6{n:02X}"
            data = f"Subject: s\r\n{headers}\r\nb\r\n".encode()
            msg = NewMessage(qid, "app@x.example", ["reader@y.example"], data, "s", 1)
            await spool.enqueue(msg)
            (rcpt,) = (await spool.get(qid)).recipients
            return hard("reader@y.example", n, queue_id=qid, recipient_id=rcpt.id)

        news = "X-Sluice-Stream: News\r\n"
        assert await book.record_bounce(await bounce_of(1, news), rule) is None
        # A reset's bounce is not the newsletter's: neither reaches 2 on its own.
        assert await book.record_bounce(await bounce_of(2, ""), rule) is None
        entry = await book.record_bounce(await bounce_of(3, news), rule, endpoints=hooks)
        assert entry is not None and entry.scope == "news" and entry.source == "bounce"
        assert await book.active("reader@y.example", "news") == entry
        assert await book.active("reader@y.example") is None  # resets still go
        assert await book.active("reader@y.example", "receipts") is None
        (suppressed, _bounced) = await spool.outbox_recent(hooks[0].url)
        assert json.loads(suppressed.body)["data"]["scope"] == "news"
        # The bounce rows keep the stream they counted for.
        assert [b.stream for b in await book.bounces_of("reader@y.example")] == [
            "news",
            "",
            "news",
        ]
        # A second bounce of mail of no stream: suppressed everywhere, as always.
        entry = await book.record_bounce(await bounce_of(4, ""), rule)
        assert entry is not None and entry.scope == ""
        assert await book.active("reader@y.example") is not None
        # Already suppressed everywhere: a List-Id stream's bounces add nothing.
        listed = "List-Id: Offers <offers.x.example>\r\n"
        assert await book.record_bounce(await bounce_of(5, listed), rule) is None
        assert await book.record_bounce(await bounce_of(6, listed), rule) is None
        assert [e.scope for e in await book.entries_of("reader@y.example")] == ["", "news"]


async def test_global_is_the_default_and_counts_every_stream(
    tmp_path: Path, spool_where: Path | SpoolSettings
) -> None:
    async with await Spool.open(spool_where) as spool:
        rule = Threshold(hard=2)
        assert rule.scope is SuppressScope.GLOBAL
        for n, headers in enumerate(("X-Sluice-Stream: news\r\n", "")):
            qid = f"0190F2A3B4C5D7{n:02X}"
            data = f"Subject: s\r\n{headers}\r\nb\r\n".encode()
            await spool.enqueue(NewMessage(qid, "app@x.example", ["r@y.example"], data, "s", 1))
            (rcpt,) = (await spool.get(qid)).recipients
            bounce = hard("r@y.example", n, queue_id=qid, recipient_id=rcpt.id)
            entry = await spool.suppressions.record_bounce(bounce, rule)
        assert entry is not None and entry.scope == ""


async def test_pages_never_split_an_address_with_several_scopes(
    tmp_path: Path, spool_where: Path | SpoolSettings
) -> None:
    async with await Spool.open(spool_where) as spool:
        book = spool.suppressions
        for scope in ("", "a", "b"):
            await book.add("x@example.net", scope=scope)
        await book.add("y@example.net")
        first = await book.page(limit=2)
        assert [(e.address, e.scope) for e in first] == [
            ("x@example.net", ""),
            ("x@example.net", "a"),
        ]
        rest = await book.page(after=first[-1].address, after_scope=first[-1].scope, limit=10)
        assert [(e.address, e.scope) for e in rest] == [
            ("x@example.net", "b"),
            ("y@example.net", ""),
        ]
        # ``after`` alone goes on after the whole address.
        assert [e.address for e in await book.page(after="x@example.net")] == ["y@example.net"]


@dataclass(frozen=True)
class Hook:
    """An endpoint as ``notify.webhooks`` gives it (``relay.events.Endpoint``)."""

    url: str
    events: Sequence[EventType]


async def test_a_bounce_is_reported_once_with_its_suppression_and_only_where_wanted(
    tmp_path: Path, spool_where: Path | SpoolSettings
) -> None:
    """The outbox rows are written with the bounce: none for a bounce read before."""
    everything = Hook("http://127.0.0.1:9/all", list(EventType))
    sent_only = Hook("http://127.0.0.1:9/sent", [EventType.SENT])
    bounced_only = Hook("http://127.0.0.1:9/bounced", [EventType.BOUNCED])
    hooks = [everything, sent_only, bounced_only]
    async with await Spool.open(spool_where) as spool:
        qid = "0190F2A3B4C5D6E7"
        await spool.enqueue(
            NewMessage(qid, "app@x.example", ["To@Y.example"], b"Subject: s\r\n\r\nb\r\n", "s", 1.0)
        )
        (rcpt,) = (await spool.get(qid)).recipients
        bounce = hard("whoever@y.example", 1, queue_id=qid, recipient_id=rcpt.id)
        rule = Threshold(hard=1)
        spool.outbox_wake.clear()
        assert await spool.suppressions.record_bounce(bounce, rule, endpoints=hooks) is not None
        assert spool.outbox_wake.is_set()  # the sender posts them at once
        # Read again (a poll that died before marking it): nothing new to report.
        assert await spool.suppressions.record_bounce(bounce, rule, endpoints=hooks) is None
        rows = {h.url: await spool.outbox_recent(h.url) for h in hooks}
    assert rows[sent_only.url] == []
    assert [r.event for r in rows[bounced_only.url]] == ["bounced"]
    suppressed, bounced = rows[everything.url]  # newest first
    assert (bounced.event, suppressed.event) == ("bounced", "suppressed")
    assert bounced.queue_id == suppressed.queue_id == qid
    data = json.loads(bounced.body)["data"]
    # VERP named the recipient: the event names it as the message had it.
    assert data == {
        "queue_id": qid,
        "recipient": "to@y.example",
        "kind": "hard",
        "status": "5.1.1",
        "diagnostic": "user unknown #1",
        "source": "dsn",
    }
    entry = json.loads(suppressed.body)["data"]
    assert (entry["source"], entry["recipient"], entry["scope"]) == ("bounce", "to@y.example", "")
    assert "5.1.1 user unknown #1" in entry["reason"]


async def test_a_bounce_without_endpoints_stores_no_event(
    tmp_path: Path, spool_where: Path | SpoolSettings
) -> None:
    async with await Spool.open(spool_where) as spool:
        await spool.suppressions.record_bounce(hard("a@x.example", 1), Threshold(hard=1))
        assert await spool.outbox_counts() == {}


async def test_a_claim_brings_its_recipients_entries_and_the_pauses_in_force(
    tmp_path: Path, spool_where: Path | SpoolSettings
) -> None:
    """What an attempt reads comes with its claim, in the claiming transaction."""
    clock = Clock(1_000_000.0)
    async with await Spool.open(spool_where, clock=clock) as spool:
        book = spool.suppressions
        await book.add("every@x.example", reason="complained", source="manual")
        await book.add("News@X.example", scope="newsletter", reason="unsubscribed", source="api")
        await book.add("news@x.example", reason="bounced", source="bounce")
        await book.add("gone@x.example", expires_at=clock.now - 1)  # no longer in force
        await book.add("other@x.example")  # not a recipient of this message
        await spool.pause_provider("sink", reason="maintenance", until=None, actor="test")
        await spool.enqueue(
            NewMessage(
                "q1", "app@x.example",
                ["every@x.example", "NEWS@x.example", "gone@x.example", "fine@x.example"],
                b"Subject: s\r\n\r\nbody\r\n", "s", clock.now, crlf_only=True,
            )
        )  # fmt: skip
        claimed = await spool.claim(10, lease=60)
        (claim,) = claimed.claims
        assert claim.suppressions is not None
        assert sorted((e.address, e.scope) for e in claim.suppressions) == [
            ("every@x.example", ""),
            ("news@x.example", ""),
            ("news@x.example", "newsletter"),
        ]
        assert set(claimed.pauses) == {"sink"} and claimed.pauses["sink"].reason == "maintenance"
        # The stream picks: its own entry is the one shown, one for every stream applies too.
        newsletter = suppressed_for(claim.suppressions, "newsletter")
        assert {a: e.reason for a, e in newsletter.items()} == {
            "every@x.example": "complained",
            "news@x.example": "unsubscribed",
        }
        receipts = suppressed_for(claim.suppressions, "receipts")
        assert {a: e.reason for a, e in receipts.items()} == {
            "every@x.example": "complained",
            "news@x.example": "bounced",
        }
        # The same answer as the list's own read at the same moment.
        for stream in ("newsletter", "receipts", ""):
            direct = await book.active_many(claim_addresses(claim), stream)
            assert direct == suppressed_for(claim.suppressions, stream)


def claim_addresses(claim: Claim) -> list[str]:
    return [r.address for r in claim.recipients.values()]
