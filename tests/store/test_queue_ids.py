"""Two messages drawing one queue ID: the second gets another, never a ``451``.

A queue ID is 11 hex digits of milliseconds and 20 random bits. At a few
thousand messages a second, messages of the same millisecond drew the same bits
about once per 200,000 (``python -m bench scale`` saw it twice in four runs of
100,000): the insert broke the ``UNIQUE`` constraint and the client was told
``451 4.3.0 ... (local spool error)`` for a spool that was fine. Every producer
(the listener, ``sluice sendmail``, a DSN, a provider's test message) stores
through ``stored_under_fresh_id``, which makes the message anew under another ID.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from relay.config import SmtpSettings, SpoolSettings
from relay.errors import QueueIdTaken
from relay.inbound.listener import RelayHandler, start_listeners
from relay.store.queue import QUEUE_ID_DRAWS, new_queue_id
from relay.store.spool import DsnVerdict, NewMessage, Spool, stored_under_fresh_id
from tests.conftest import raw_session

NOW = 1_800_000_000.0


def _msg(queue_id: str, rcpt: str) -> NewMessage:
    return NewMessage(
        queue_id=queue_id,
        sender="app@example.com",
        recipients=[rcpt],
        data=b"Subject: x\r\n\r\nx\r\n",
        subject="x",
        received_at=NOW,
    )


async def test_a_taken_queue_id_stores_nothing_and_says_so(
    spool_where: Path | SpoolSettings,
) -> None:
    async with await Spool.open(spool_where, clock=lambda: NOW) as spool:
        await spool.enqueue(_msg("0000000000AAAAA", "first@example.net"))
        with pytest.raises(QueueIdTaken):
            await spool.enqueue(_msg("0000000000AAAAA", "second@example.net"))
        # Nothing of the second is kept, and the spool goes on.
        await spool.enqueue(_msg("0000000000BBBBB", "third@example.net"))
        listed = await spool.list_queue(limit=10)
        assert sorted(row.queue_id for row in listed) == ["0000000000AAAAA", "0000000000BBBBB"]
        detail = await spool.get("0000000000AAAAA")
        assert [r.email for r in detail.recipients] == ["first@example.net"]


async def test_the_listener_draws_another_queue_id_when_its_first_is_taken(
    tmp_path: Path,
) -> None:
    settings = SmtpSettings.model_validate({"listen": ["127.0.0.1:0"]})
    # The listener's next draw, made taken beforehand by another message.
    taken = new_queue_id(NOW, random.Random(28))
    async with await Spool.open(tmp_path / "spool.sqlite3", clock=lambda: NOW) as spool:
        await spool.enqueue(_msg(taken, "first@example.net"))
        handler = RelayHandler(
            spool, lambda: settings, hostname="t.test", clock=lambda: NOW, rng=random.Random(28)
        )
        listener = await start_listeners(lambda: settings, handler, hostname="t.test")
        try:
            (port,) = {ep.port for ep in listener.addresses}
            replies = await raw_session(
                port,
                [
                    b"EHLO x\r\n",
                    b"MAIL FROM:<app@example.com>\r\n",
                    b"RCPT TO:<second@example.net>\r\n",
                    b"DATA\r\n",
                    b"Subject: y\r\n\r\ny\r\n.\r\n",
                ],
            )
        finally:
            await listener.aclose(grace=0)
        assert replies[-1].startswith("250 "), replies
        (queue_id,) = [w for w in replies[-1].split() if len(w) == 16 and w != taken]
        assert queue_id[:11] == taken[:11]  # the same millisecond, other random bits
        raw = await spool.raw(queue_id)
        assert f"id {queue_id}".encode() in raw.split(b"\r\n\r\n")[0]  # its Received header
        assert taken.encode() not in raw
        assert [r.email for r in (await spool.get(taken)).recipients] == ["first@example.net"]


class _Stuck(random.Random):
    """A random source that draws the same bits every time (a broken one)."""

    def getrandbits(self, k: int) -> int:
        return 0xAAAAA & ((1 << k) - 1)


async def test_every_producer_s_helper_makes_the_message_anew_under_another_id(
    spool_where: Path | SpoolSettings,
) -> None:
    taken = new_queue_id(NOW, random.Random(7))
    made: list[str] = []

    def make(queue_id: str) -> NewMessage:
        made.append(queue_id)
        return _msg(queue_id, "second@example.net")

    async with await Spool.open(spool_where, clock=lambda: NOW) as spool:
        await spool.enqueue(_msg(taken, "first@example.net"))
        msg, stored = await stored_under_fresh_id(make, spool.enqueue, NOW, random.Random(7))
        assert made[0] == taken and len(made) == 2  # the first draw clashed, the second did not
        assert stored == msg.queue_id == made[1] != taken
        assert [r.email for r in (await spool.get(stored)).recipients] == ["second@example.net"]
        # A source that keeps drawing taken IDs is given up on, and nothing is stored.
        made.clear()
        stuck = new_queue_id(NOW, _Stuck())
        await spool.enqueue(_msg(stuck, "third@example.net"))
        with pytest.raises(QueueIdTaken):
            await stored_under_fresh_id(make, spool.enqueue, NOW, _Stuck())
        assert made == [stuck] * QUEUE_ID_DRAWS
        assert len(await spool.list_queue(limit=10)) == 3


async def test_a_dsn_whose_id_is_taken_marks_nothing_and_is_queued_under_another(
    spool_where: Path | SpoolSettings,
) -> None:
    """The notice of a final failure is not lost to a clash: its marks roll back with it."""
    taken = new_queue_id(NOW, random.Random(9))
    async with await Spool.open(spool_where, clock=lambda: NOW) as spool:
        await spool.enqueue(_msg(taken, "first@example.net"))

        def make(queue_id: str) -> NewMessage:
            return NewMessage(
                queue_id=queue_id,
                sender="",
                recipients=["app@example.com"],
                data=b"Subject: dsn\r\n\r\nx\r\n",
                subject="dsn",
                received_at=NOW,
            )

        async def store(msg: NewMessage) -> DsnVerdict:
            return await spool.enqueue_dsn(
                msg, recipient_ids=[1], kind="failed", sender="app@example.com", per_hour=10
            )

        with pytest.raises(QueueIdTaken):
            await store(make(taken))
        # Recipient 1 was not marked as told: the same DSN can still be queued.
        msg, verdict = await stored_under_fresh_id(make, store, NOW, random.Random(9))
        assert verdict is DsnVerdict.QUEUED and msg.queue_id != taken
        assert [r.email for r in (await spool.get(msg.queue_id)).recipients] == ["app@example.com"]
        assert await store(make("0000000000CCCCC")) is DsnVerdict.ALREADY_SENT
