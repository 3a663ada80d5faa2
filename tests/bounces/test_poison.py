"""A poison message in the bounce mailbox (issue #23, point 2): skipped on its own, never the batch.

A real Dovecot holds a message nested 1,000 MIME levels deep between two
genuine DSNs. Reading it raises ``RecursionError`` in the email package; the
poller must count it unreadable, mark it so no later poll reads it again,
log it once without a traceback, show it on the status, and still record
both genuine bounces, in process and through ``sluice bounces poll``.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path

import pytest

from relay.bounces.mailbox import PROCESSED, UNREADABLE
from relay.bounces.poller import BouncePoller
from relay.store.spool import Spool
from tests.admin.conftest import AppClientFactory, app_client
from tests.bounces.genuine import about, delivered
from tests.bounces.mailhost import Dovecot
from tests.bounces.test_mailbox import (
    PASSWORD,
    append,
    config_with,
    fixture,
    flags_in,
    imap,
    mailbox_settings,
)
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

__all__ = ["app_client", "imap"]  # fixtures shared with test_mailbox and the admin tests

pytestmark = pytest.mark.slow

GMAIL = "nobody.here@gmail.com"  # the failed recipient of fixtures/gmail.eml
EXIM = "olduser@example.com"  # ... and of fixtures/exim.eml


async def genuine_around_poison(spool: Spool) -> tuple[bytes, bytes, bytes]:
    """The two sample DSNs made about mail ``spool`` delivered, and the poison between them."""
    gmail, _ = await delivered(spool, GMAIL)
    exim, _ = await delivered(spool, EXIM)
    return about(fixture("gmail.eml"), gmail), nested(), about(fixture("exim.eml"), exim)


def nested(depth: int = 1000) -> bytes:
    """A message of ``depth`` multiparts, each the only part of the one above."""
    head = b"From: mailer-daemon@example.net\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\n"
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (n, n)
        for n in range(depth)
    )
    closing = b"".join(b"\r\n--b%d--\r\n" % n for n in reversed(range(depth)))
    return head + opening + b"Content-Type: text/plain\r\n\r\nx\r\n" + closing


async def test_a_message_nested_1000_deep_is_skipped_and_the_genuine_ones_count(
    imap: Dovecot, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config_with(mailbox_settings(imap), tmp_path, threshold=1)
    caplog.set_level(logging.INFO, logger="sluice.bounces")
    async with await Spool.open(tmp_path / "s.sqlite3") as spool:
        await append(imap, *await genuine_around_poison(spool))
        poller = BouncePoller(spool.suppressions, lambda: cfg)
        result = await poller.poll_once()
        assert (result.fetched, result.bounces, result.unreadable) == (3, 2, 1)
        assert sorted(result.suppressed) == [GMAIL, EXIM]
        for address in (GMAIL, EXIM):
            assert len(await spool.suppressions.bounces_of(address)) == 1
            assert await spool.suppressions.active(address) is not None
        # On the status the admin card reads: which message, and why.
        assert poller.status.ok and poller.status.unreadable == 1
        assert poller.status.last_unreadable.startswith("UID 2: unreadable: RecursionError")
        assert poller.status.last_unreadable_at is not None
        # Marked like the others (and flagged as unreadable): the next polls do not read it again.
        flags = await flags_in(imap)
        assert all(PROCESSED in f for f in flags)
        assert [UNREADABLE in f for f in flags] == [False, True, False]
        for _ in range(2):
            again = await poller.poll_once()
            assert (again.fetched, again.unreadable) == (0, 0)
        assert poller.status.unreadable == 1
    skipped = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert [r.getMessage() for r in skipped] == [
        f"bounce mailbox: message 2 skipped: {poller.status.last_unreadable[len('UID 2: ') :]}"
    ]
    assert all(r.exc_info is None for r in caplog.records)


async def test_sluice_bounces_poll_reads_past_a_poison_message(
    imap: Dovecot, tmp_path: Path
) -> None:
    mailbox = {
        "host": "127.0.0.1",
        "port": imap.port,
        "encryption": "none",
        "username": "bounces",
        "password": PASSWORD,
    }
    providers = [{"id": "p", "host": "127.0.0.1", "port": 2525, "encryption": "none"}]
    cfg = write_config(
        tmp_path / "sluice.yaml",
        fast_config(tmp_path, providers, bounces={"threshold": 1, "mailbox": mailbox}),
    )
    async with await Spool.open(tmp_path / "spool.sqlite3") as spool:  # the config's spool
        await append(imap, *await genuine_around_poison(spool))
    rc, out, err = await run_cli("bounces", "poll", "-c", str(cfg))
    assert rc == 0, err
    assert "Traceback" not in out + err
    assert out.splitlines()[0] == (
        "read 3: 2 bounces, 0 not bounces, 1 unreadable, 0 too large, 0 unmatched"
    )
    assert {f"now suppressed: {a}" for a in (GMAIL, EXIM)} <= set(out.splitlines())
    assert out.splitlines()[-1].startswith("skipped UID 2: unreadable: RecursionError")
    # Not retried: the next poll finds nothing new.
    rc, out, err = await run_cli("bounces", "poll", "-c", str(cfg))
    assert rc == 0 and "Traceback" not in out + err
    assert out.splitlines()[0].startswith("read 0:")


async def test_the_daemon_shows_the_poison_on_the_bounce_mailbox_card_and_stays_ok(
    imap: Dovecot, sluice: SluiceFactory, app_client: AppClientFactory
) -> None:
    box = {
        "host": "127.0.0.1",
        "port": imap.port,
        "encryption": "none",
        "username": "bounces",
        "password": PASSWORD,
        "poll_interval": "200ms",
    }
    up = await TestUpstream().start()
    try:
        async with sluice([provider_for(up)], bounces={"threshold": 1, "mailbox": box}) as s:
            # Real mail to both addresses, taken by the upstream (250): their DSNs count.
            sent = {}
            for address in (GMAIL, EXIM):
                _refused, reply = await smtp_send(
                    s.port, "app@example.org", [address], b"Subject: hi\r\n\r\nhi\r\n"
                )
                sent[address] = reply.rsplit(" ", 1)[-1]
            await up.wait_for(2, within=20)
            await s.wait_idle()
            await append(
                imap,
                about(fixture("gmail.eml"), sent[GMAIL]),
                nested(),
                about(fixture("exim.eml"), sent[EXIM]),
            )
            async with app_client(s) as c:

                async def card() -> dict[str, object]:
                    data: dict[str, object] = (await c.get("/api/overview")).json()[
                        "bounce_mailbox"
                    ]
                    return data

                async def read() -> bool:
                    now = await card()
                    return now["state"] == "ok" and now["unreadable"] == 1

                await eventually(read, within=30)
                # The same poll records the third message just after it counts the second.
                for address in (GMAIL, EXIM):
                    await eventually(partial(s.spool.suppressions.active, address), within=10)
                first = await card()
                assert first["state"] == "ok" and first["error"] == ""
                assert str(first["last_unreadable"]).startswith("UID 2: unreadable: RecursionError")
                page = (await c.get("/")).text
                assert "1 message skipped as unreadable" in page
                assert "UID 2: unreadable: RecursionError" in page
                # Later polls stay ok and do not count it again.
                since = time.time()

                async def polled_again() -> bool:
                    last = (await card())["last_ok_at"]
                    return isinstance(last, float) and last > since

                await eventually(polled_again, within=30)
                again = await card()
                assert again["state"] == "ok" and again["unreadable"] == 1
    finally:
        await up.stop()


async def test_a_quarantine_folder_takes_the_poison_and_only_the_poison(
    imap: Dovecot, tmp_path: Path
) -> None:
    box = mailbox_settings(imap, quarantine_folder="Quarantine")
    cfg = config_with(box, tmp_path, threshold=1)
    async with await Spool.open(tmp_path / "s.sqlite3") as spool:
        await append(imap, *await genuine_around_poison(spool))
        poller = BouncePoller(spool.suppressions, lambda: cfg)
        result = await poller.poll_once()  # the folder does not exist yet: it is made
        assert (result.fetched, result.bounces, result.unreadable) == (3, 2, 1)
        assert sorted(result.suppressed) == [GMAIL, EXIM]
        assert (await poller.poll_once()).fetched == 0
    # The genuine ones stay, processed; the poison is in the quarantine, flagged.
    assert [PROCESSED in f for f in await flags_in(imap)] == [True, True]
    (moved,) = await flags_in(imap, "Quarantine")
    assert UNREADABLE in moved and PROCESSED not in moved
