"""Forged bounces (issue #23, point 1): only a DSN about mail Sluice sent to an address counts.

The bounce address is the return path of every relayed message, so anyone
who got mail from Sluice can send it well-formed DSNs. Here a real Dovecot
holds such forgeries about ``ceo@`` and ``cfo@`` (addresses Sluice never
mailed), several per address and each of a different kind: no queue ID at
all, a made-up ``Received:`` id, the real id of a message sent to someone
else, a VERP token with a forged MAC, one of before signed tokens, and the
genuine token of another recipient. With a threshold of 1, any one of them
counted would suppress. They must all be kept as unmatched, and genuine DSNs
about delivered mail must still suppress, with VERP and without.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from relay.bounces.mailbox import PROCESSED
from relay.bounces.poller import BouncePoller
from relay.store.spool import Spool
from relay.verp import verp_address
from tests.admin.conftest import AppClientFactory, app_client
from tests.bounces.genuine import delivered
from tests.bounces.mailhost import Dovecot
from tests.bounces.test_end_to_end import GONE, OK, Peers, peers, sections, send
from tests.bounces.test_mailbox import (
    PASSWORD,
    append,
    config_with,
    flags_in,
    imap,
    mailbox_settings,
)
from tests.conftest import SluiceFactory, eventually, fast_config, smtp_send, write_config
from tests.daemon_proc import run_cli

__all__ = ["app_client", "imap", "peers"]  # fixtures shared with the other bounce tests

pytestmark = pytest.mark.slow

BOUNCES = "bounces@sluice.example"
CEO = "ceo@corp.example"
CFO = "cfo@corp.example"
READER = "reader@example.net"  # got real mail from Sluice: knows a queue ID and its own token


def dsn(rcpt: str, *, to: str = BOUNCES, received_id: str | None = None) -> bytes:
    """A well-formed RFC 3464 report that ``rcpt`` failed (5.1.1), as anyone can write one."""
    trace = (
        "Received: from app.example.org ([127.0.0.1])\r\n"
        f"\tby relay.example.org (Sluice) with ESMTP id {received_id};\r\n"
        "\tMon, 7 Dec 2026 10:00:00 +0000\r\n"
        if received_id is not None
        else ""
    )
    return (
        "From: MAILER-DAEMON@mx.corp.example\r\n"
        f"To: {to}\r\n"
        f"Delivered-To: {to}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: <{secrets.token_hex(8)}@mx.corp.example>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n'
        "\r\n"
        "--B\r\n"
        "Content-Type: text/plain\r\n"
        "\r\n"
        "Your message could not be delivered.\r\n"
        "--B\r\n"
        "Content-Type: message/delivery-status\r\n"
        "\r\n"
        "Reporting-MTA: dns; mx.corp.example\r\n"
        "\r\n"
        f"Final-Recipient: rfc822; {rcpt}\r\n"
        "Action: failed\r\n"
        "Status: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n"
        "\r\n"
        "--B\r\n"
        "Content-Type: text/rfc822-headers\r\n"
        "\r\n"
        f"{trace}"
        "From: app@example.org\r\n"
        f"To: {rcpt}\r\n"
        "Subject: hello\r\n"
        "\r\n"
        "--B--\r\n"
    ).encode()


def forged(
    rcpt: str, real_qid: str, real_rid: int, bounces: str = BOUNCES
) -> list[tuple[str, bytes]]:
    """(where it is sent, the DSN) of every kind of forgery about ``rcpt`` needing no secret."""
    local, _, domain = bounces.partition("@")
    made_up = secrets.token_hex(8).upper()
    forged_mac = secrets.token_hex(8)
    tokens = (
        # a VERP token with a forged MAC
        f"{local}+{real_qid.lower()}-{real_rid}-{forged_mac}@{domain}",
        # a token of before signed tokens (as mail in flight at the upgrade carries)
        f"{local}+{real_qid}-{real_rid}@{domain}",
    )
    return [
        (bounces, dsn(rcpt, to=bounces)),  # no queue ID at all
        (bounces, dsn(rcpt, to=bounces, received_id=made_up)),  # a made-up Received id
        (bounces, dsn(rcpt, to=bounces, received_id=real_qid)),  # a real one, not to rcpt
        *((to, dsn(rcpt, to=to)) for to in tokens),
    ]


def forgeries(rcpt: str, real_qid: str, real_rid: int) -> list[bytes]:
    """The DSNs of ``forged``, to append to the mailbox."""
    return [data for _to, data in forged(rcpt, real_qid, real_rid)]


async def test_forged_dsns_leave_the_address_off_the_list_and_are_kept_as_unmatched(
    imap: Dovecot, tmp_path: Path
) -> None:
    cfg = config_with(mailbox_settings(imap), tmp_path, address=BOUNCES, verp=True, threshold=1)
    async with await Spool.open(tmp_path / "s.sqlite3") as spool:
        book = spool.suppressions
        qid, rid = await delivered(spool, READER)
        await append(imap, *forgeries(CEO, qid, rid), *forgeries(CFO, qid, rid))
        poller = BouncePoller(book, lambda: cfg)
        result = await poller.poll_once()
        assert (result.fetched, result.bounces) == (10, 10)
        assert result.suppressed == []
        for address in (CEO, CFO):
            assert await book.active(address) is None
            assert await book.bounces_of(address) == []
        assert await book.bounces_of(READER) == []  # its message was not bounced either
        assert result.unmatched == 10
        assert await book.unmatched_count() == 10
        latest = await book.unmatched(limit=20)
        assert {u.address for u in latest} == {CEO, CFO}
        assert {u.sender for u in latest} == {"MAILER-DAEMON@mx.corp.example"}
        reasons = [u.reason for u in latest]
        assert (
            reasons.count("no VERP token and no queue ID of Sluice's in the returned header") == 2
        )
        assert sum(r.startswith("queue ID ") and "names no message" in r for r in reasons) == 2
        assert reasons.count(f"{qid} was not delivered to this address through a provider") == 2
        assert sum(r.startswith("a VERP token that does not verify") for r in reasons) == 4

        # The genuine token of another recipient: signed by Sluice, but not about CEO.
        key = await book.verp_key()
        reader_verp = verp_address(BOUNCES, qid, rid, key)
        await append(imap, dsn(CEO, to=reader_verp))
        again = await poller.poll_once()
        assert (again.unmatched, again.suppressed) == (1, [])
        assert await book.active(CEO) is None
        (other,) = await book.unmatched(limit=1)
        assert other.reason == f"the VERP token is for another recipient of {qid}"

        # A genuine DSN, to the reader's own signed token: it counts (threshold 1).
        await append(imap, dsn(READER, to=reader_verp.upper()))  # some MTAs fold case
        genuine = await poller.poll_once()
        assert (genuine.unmatched, genuine.suppressed) == (0, [READER])
        (bounce,) = await book.bounces_of(READER)
        assert bounce.queue_id == qid and bounce.source == "dsn"
        assert await book.unmatched_count() == 11


async def test_without_verp_a_dsn_counts_for_a_recipient_the_message_was_delivered_to(
    imap: Dovecot, tmp_path: Path
) -> None:
    cfg = config_with(mailbox_settings(imap), tmp_path, address=BOUNCES, threshold=1)
    async with await Spool.open(tmp_path / "s.sqlite3") as spool:
        book = spool.suppressions
        qid, _rid = await delivered(spool, READER)
        await append(imap, dsn(CEO, received_id=qid), dsn(READER, received_id=qid))
        result = await BouncePoller(book, lambda: cfg).poll_once()
        assert await book.active(CEO) is None
        assert await book.active(READER) is not None
        assert (result.unmatched, result.suppressed) == (1, [READER])


async def test_sluice_bounces_poll_prints_the_unmatched_count(
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
        fast_config(
            tmp_path,
            providers,
            bounces={"address": BOUNCES, "verp": True, "threshold": 1, "mailbox": mailbox},
        ),
    )
    async with await Spool.open(tmp_path / "spool.sqlite3") as spool:  # the config's spool
        qid, rid = await delivered(spool, READER)
        await append(imap, *forgeries(CEO, qid, rid))
    rc, out, err = await run_cli("bounces", "poll", "-c", str(cfg))
    assert rc == 0, err
    assert "now suppressed" not in out
    assert out.splitlines()[0] == (
        "read 5: 5 bounces, 0 not bounces, 0 unreadable, 0 too large, 5 unmatched"
    )
    assert "5 unmatched bounces (about no mail Sluice sent them): not counted" in out
    async with await Spool.open(tmp_path / "spool.sqlite3") as spool:
        assert await spool.suppressions.active(CEO) is None
        assert await spool.suppressions.unmatched_count() == 5


async def test_the_daemon_counts_postfixs_real_dsn_and_shows_the_forgeries_apart(
    sluice: SluiceFactory, peers: Peers, app_client: AppClientFactory
) -> None:
    """End to end: Postfix bounces real VERP mail; forgeries come in over SMTP beside it."""
    provider = {"id": "mx", "host": "127.0.0.1", "port": peers.mx.port, "encryption": "none"}
    async with sluice([provider], **sections(peers, threshold=1)) as s:
        book = s.spool.suppressions
        qid = await send(s, [GONE, OK], "real mail")
        await eventually(lambda: peers.delivered_to("ok") == 1, within=30)
        # OK got the message: its reader knows the queue ID and its own recipient id.
        (ok_rid,) = [r.id for r in (await s.spool.get(qid)).recipients if r.email == OK]
        for rcpt in (CEO, CFO):
            for to, data in forged(rcpt, qid, ok_rid, "bounces@bounce.test"):
                refused, _ = await smtp_send(
                    peers.mx.port, "mailer-daemon@corp.example", [to], data
                )
                assert refused == {}
        await eventually(lambda: book.active(GONE), within=30)  # Postfix's DSN counts
        await eventually(_all_read(peers, 11), within=30)
        for address in (CEO, CFO):
            assert await book.active(address) is None
            assert await book.bounces_of(address) == []
        assert await book.active(OK) is None
        assert await book.unmatched_count() == 10
        async with app_client(s) as c:
            card = (await c.get("/api/overview")).json()["bounce_mailbox"]
            assert card["unmatched"] == 10
            assert {u["address"] for u in card["unmatched_latest"]} <= {CEO, CFO}
            assert len(card["unmatched_latest"]) == 5
            page = (await c.get("/")).text
            assert "10 bounces not matched to mail Sluice sent" in page
            assert "cfo@corp.example" in page


def _all_read(peers: Peers, n: int) -> Callable[[], Awaitable[bool]]:
    """Whether the poller has read (and marked) all ``n`` messages in the bounce mailbox."""

    async def check() -> bool:
        flags = await flags_in(peers.imap)
        return len(flags) == n and all(PROCESSED in f for f in flags)

    return check
