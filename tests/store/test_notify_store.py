"""The spool's side of notifications, on a real SQLite file: DSN marks and the
loop guard are one transaction with the DSN; provider state events reach the outbox."""

from __future__ import annotations

import json
from pathlib import Path

from relay.config import SpoolSettings, loads
from relay.notify.hook import Notifications
from relay.store.spool import DsnVerdict, NewMessage, Spool


def _dsn(queue_id: str) -> NewMessage:
    return NewMessage(
        queue_id=queue_id,
        sender="",
        recipients=["app@sender.test"],
        data=b"Subject: dsn\r\n\r\nx\r\n",
        subject="dsn",
        received_at=1.0,
    )


async def test_one_dsn_per_recipient_and_kind_and_a_limit_per_hour(
    tmp_path: Path, spool_where: Path | SpoolSettings
) -> None:
    now = [1000.0]
    async with await Spool.open(spool_where, clock=lambda: now[0]) as spool:

        async def send(qid: str, rids: list[int], kind: str = "failed") -> DsnVerdict:
            return await spool.enqueue_dsn(
                _dsn(qid), recipient_ids=rids, kind=kind, sender="app@sender.test", per_hour=2
            )

        assert await send("A", [1, 2]) is DsnVerdict.QUEUED
        assert await send("B", [2]) is DsnVerdict.ALREADY_SENT  # told already
        assert await send("C", [2], kind="delayed") is DsnVerdict.QUEUED  # another kind
        assert await send("D", [3]) is DsnVerdict.RATE_LIMITED  # third in the hour
        assert await send("E", [3]) is DsnVerdict.ALREADY_SENT  # withheld is not retried
        now[0] += 3601  # an hour later the guard opens again
        assert await send("F", [4]) is DsnVerdict.QUEUED
        queued = {e.queue_id for e in await spool.list_queue()}
    assert queued == {"A", "C", "F"}


async def test_provider_state_changes_become_events(
    tmp_path: Path, spool_where: Path | SpoolSettings
) -> None:
    cfg = loads(
        "providers: [{id: main, host: h}]\n"
        "notify:\n"
        "  webhooks:\n"
        "    - {url: 'http://127.0.0.1:9/a', secret: s, events: [provider_state]}\n"
        "    - {url: 'http://127.0.0.1:9/b', secret: s, events: [failed]}\n"
    )
    states = {"main": "ok"}

    async def provider_states() -> dict[str, str]:
        return dict(states)

    async with await Spool.open(spool_where) as spool:
        notes = Notifications(
            spool, lambda: cfg, hostname="sluice.test", provider_states=provider_states
        )
        await notes.provider_changes()  # the baseline: no event
        await notes.provider_changes()  # nothing changed: no event
        states["main"] = "cooldown"
        await notes.provider_changes()
        states["main"] = "ok"
        await notes.provider_changes()
        rows = await spool.outbox_recent("http://127.0.0.1:9/a")
        assert await spool.outbox_recent("http://127.0.0.1:9/b") == []  # filtered out
    bodies = [json.loads(r.body) for r in reversed(rows)]
    assert [(b["type"], b["data"]["previous"], b["data"]["state"]) for b in bodies] == [
        ("provider_state", "ok", "cooldown"),
        ("provider_state", "cooldown", "ok"),
    ]
