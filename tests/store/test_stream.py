"""The stream the spool stores is ``relay.message.stream_of``'s: the one suppressions match."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from relay.message import HeaderBlock, stream_of
from relay.model import Selection
from relay.store.spool import NewMessage, Spool


def _msg(queue_id: str, head: str) -> NewMessage:
    data = f"From: a@example.com\r\n{head}Subject: x\r\n\r\nbody\r\n".encode()
    return NewMessage(queue_id, "a@example.com", ["b@example.net"], data, "x", 1.0)


def _stored(path: Path) -> dict[str, str]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT queue_id, stream FROM messages"))
    finally:
        conn.close()


async def test_the_stored_stream_is_stream_of_the_headers(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    messages = [
        _msg("PLAIN", ""),
        _msg("MIXED", "X-Sluice-Stream: Weekly-News\r\n"),
        _msg("LIST", "List-Id: Our list <News.Example.com>\r\n"),
        _msg("CAMPAIGN", "X-Campaign: Spring\r\n"),
    ]
    async with await Spool.open(path, clock=lambda: 1.0) as spool:
        for m in messages[:3]:
            await spool.enqueue(m)
        spool.stream_headers = ["X-Campaign"]  # as the daemon sets suppression.stream_headers
        await spool.enqueue(messages[3])
        # operators select a stream in any case
        for typed, n in (("weekly-news", 1), ("WEEKLY-NEWS", 1), ("news.example.com", 1), ("x", 0)):
            assert (await spool.count_selected(Selection(stream=typed), "hold")).recipients == n
    assert _stored(path) == {
        "PLAIN": "",
        "MIXED": "weekly-news",
        "LIST": "news.example.com",
        "CAMPAIGN": "spring",
    }
    default = ["X-Sluice-Stream", "List-Id"]
    for m in messages[:3]:
        assert _stored(path)[m.queue_id] == stream_of(HeaderBlock(m.data), default)
