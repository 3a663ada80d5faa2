"""What an address rule did to a recipient, stored beside it in a real spool (schema 6).

The note is written in the enqueue transaction and read back by the message
view (``sluice queue show``, the admin's message page); a redirect with
``action: hold`` stores its recipient held from the start; an archive copy is
marked in its claim, so that its failure sends the sender no DSN.
"""

from __future__ import annotations

from pathlib import Path

from relay.config import SpoolSettings
from relay.model import AddressRule, RcptNote, RecipientStatus
from relay.store.spool import NewMessage, Spool


async def test_notes_are_stored_shown_and_held_recipients_never_claimed(
    tmp_path: Path, spool_where: Path | SpoolSettings
) -> None:
    msg = NewMessage(
        queue_id="R1",
        sender="app@example.com",
        recipients=[
            "ops@example.com",
            "qa@example.com",
            "cust@gmail.com",
            "arch@example.com",
            "plain@example.net",
        ],
        data=b"Subject: x\r\n\r\nx\r\n",
        subject="x",
        received_at=100.0,
        notes={
            "ops@example.com": RcptNote(AddressRule.ALIAS, "root@web1"),
            "qa@example.com": RcptNote(AddressRule.REDIRECT, "a@gmail.com, b@gmail.com"),
            "cust@gmail.com": RcptNote(AddressRule.REDIRECT, "cust@gmail.com", "held by redirect"),
            "arch@example.com": RcptNote(AddressRule.ARCHIVE),
        },
    )
    async with await Spool.open(spool_where, clock=lambda: 100.0) as spool:
        await spool.enqueue(msg)
        detail = await spool.get("R1")
        shown = {r.email: (r.status, r.rule, r.original, r.origin) for r in detail.recipients}
        assert shown == {
            "ops@example.com": (
                RecipientStatus.QUEUED,
                AddressRule.ALIAS,
                "root@web1",
                "alias of root@web1",
            ),
            "qa@example.com": (
                RecipientStatus.QUEUED,
                AddressRule.REDIRECT,
                "a@gmail.com, b@gmail.com",
                "redirected from a@gmail.com, b@gmail.com",
            ),
            "cust@gmail.com": (
                RecipientStatus.HELD,
                AddressRule.REDIRECT,
                "cust@gmail.com",
                "outside redirect.allow",
            ),
            "arch@example.com": (
                RecipientStatus.QUEUED,
                AddressRule.ARCHIVE,
                "",
                "archive copy (archive_bcc)",
            ),
            "plain@example.net": (RecipientStatus.QUEUED, None, "", ""),
        }
        held = next(r for r in detail.recipients if r.email == "cust@gmail.com")
        assert held.reason == "held by redirect"
        (claim,) = await spool.claim_due(10, lease=60)
        claimed = {r.address: r.archive for r in claim.recipients.values()}
        assert claimed == {
            "ops@example.com": False,
            "qa@example.com": False,
            "arch@example.com": True,
            "plain@example.net": False,
        }
