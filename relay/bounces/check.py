"""The bounce mailbox check Save runs before writing the bounce settings: log in, find the folder.

The admin's bounce form and ``relay.operations.config_edits.save_bounces``
refuse a mailbox that does not answer as the poller will need it: a wrong
password ("login: ...") or a folder the server does not have ("folder: ...").
"""

from __future__ import annotations

import asyncio

from relay.bounces.mailbox import Mailbox, MailboxError
from relay.config import MailboxSettings
from relay.secrets import SecretError

__all__ = ["check_mailbox"]


async def check_mailbox(box: MailboxSettings) -> str | None:
    """Log in to the mailbox and look for its folder: the answer on failure ("STEP: ..."), or None.

    An XOAUTH2 mailbox is not checked here (its token comes from the
    daemon's sign-in): None.
    """
    if box.oauth2 is not None:
        return None
    try:
        secret = box.password.resolve() if box.password is not None else None
    except SecretError as exc:
        return f"login: the password is not available: {exc.message}"
    password = secret.get_secret_value() if secret is not None else None

    def probe() -> str | None:
        try:
            with Mailbox(box, password=password) as mb:
                folders = mb.folders()
        except MailboxError as exc:
            text = str(exc)
            return f"{'connect' if 'cannot connect' in text else 'login'}: {text}"
        if box.folder not in folders:
            shown = ", ".join(folders[:20])
            return f"folder: the server has no folder {box.folder!r} (it has: {shown})"
        return None

    return await asyncio.to_thread(probe)
