"""Two messages drawing one queue ID: the second gets another, never a ``451``.

A queue ID is 11 hex digits of milliseconds and 20 random bits. At a few
thousand messages a second, messages of the same millisecond drew the same bits
about once per 200,000 (``python -m bench scale`` saw it twice in four runs of
100,000): the insert broke the ``UNIQUE`` constraint and the client was told
``451 4.3.0 ... (local spool error)`` for a spool that was fine.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from relay.config import SmtpSettings, SpoolSettings
from relay.errors import QueueIdTaken
from relay.inbound.listener import RelayHandler, start_listeners
from relay.store.queue import new_queue_id
from relay.store.spool import NewMessage, Spool
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
