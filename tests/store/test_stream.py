"""The stream the spool stores is ``relay.message.stream_of``'s: the one suppressions match."""

from __future__ import annotations

import sqlite3
from functools import partial
from pathlib import Path

import pytest
import yaml

from relay.message import HeaderBlock, stream_of
from relay.model import RecipientStatus, Selection
from relay.store.spool import NewMessage, Spool
from tests.conftest import (
    SluiceFactory,
    eventually,
    fast_config,
    provider_for,
    smtp_send,
    write_config,
)
from tests.daemon_proc import run_cli
from tests.upstream import TestUpstream


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


def _mail(head: str) -> bytes:
    return f"From: a@example.org\r\n{head}Subject: s\r\n\r\nhello\r\n".encode()


async def _status_is(spool: Spool, queue_id: str, rcpt: str, status: RecipientStatus) -> bool:
    detail = await spool.get(queue_id)
    return any(r.email == rcpt and r.status is status for r in detail.recipients)


@pytest.mark.parametrize("workers", [0, 1], ids=["in-daemon", "accept-worker"])
async def test_the_daemon_stores_and_suppresses_by_its_configured_headers(
    sluice: SluiceFactory, upstream: TestUpstream, workers: int
) -> None:
    """suppression.stream_headers names the stream stored and the one matched, on reload too.

    With an accept worker the message is stored by the worker's own spool,
    which the daemon's settings (and their reload) reach through its channel.
    """
    sections = {"suppression": {"stream_headers": ["X-Campaign"]}, "smtp": {"workers": workers}}
    async with sluice([provider_for(upstream)], **sections) as s:
        stored = partial(_stored, s.config_path.parent / "spool.sqlite3")
        await s.spool.suppressions.add("gone@example.net", scope="spring", source="api")
        rcpts = ["gone@example.net", "ok@example.net"]
        _, reply = await smtp_send(s.port, "a@example.org", rcpts, _mail("X-Campaign: Spring\r\n"))
        queue_id = reply.split()[-1]
        assert stored()[queue_id] == "spring"
        for rcpt, status in zip(
            rcpts, (RecipientStatus.SUPPRESSED, RecipientStatus.SENT), strict=True
        ):
            await eventually(partial(_status_is, s.spool, queue_id, rcpt, status))

        cfg = yaml.safe_load(s.config_path.read_text())
        cfg["suppression"]["stream_headers"] = ["X-Other"]
        write_config(s.config_path, cfg)
        assert await s.daemon.reload() is True, s.daemon.last_reload_error
        both = _mail("X-Campaign: Spring\r\nX-Other: Fall\r\n")

        async def stored_under_the_new_headers() -> bool:
            # a worker takes the new settings from its channel, a moment after the reload
            _, reply = await smtp_send(s.port, "a@example.org", ["b@example.net"], both)
            return stored()[reply.split()[-1]] == "fall"

        await eventually(stored_under_the_new_headers, interval=0.1)


async def test_sendmail_with_the_daemon_down_stores_the_stream_by_the_config(
    tmp_path: Path,
) -> None:
    """``sluice sendmail`` writing the spool itself names the stream as the daemon would."""
    cfg = fast_config(
        tmp_path,
        [{"id": "x", "host": "127.0.0.1", "port": 9, "encryption": "none"}],
        suppression={"stream_headers": ["X-Campaign"]},
    )
    path = write_config(tmp_path / "sluice.yaml", cfg)
    spool = tmp_path / "spool.sqlite3"
    async with await Spool.open(spool):  # installed, daemon not running
        pass
    message = b"To: to@example.net\nSubject: s\nX-Campaign: Spring\n\nhello\n"
    rc, _out, err = await run_cli(
        "sendmail", "-t", "-i", stdin=message, env={"SLUICE_CONFIG": str(path)}
    )
    assert rc == 0, err
    assert list(_stored(spool).values()) == ["spring"]
