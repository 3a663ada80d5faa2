"""The bounce mailbox over IMAP, through ``imapclient`` (blocking: call it from a worker thread).

One ``Mailbox`` is one session: connect (implicit TLS, STARTTLS, or plain on
loopback only), log in (password, or XOAUTH2 with a token from the provider
OAuth code), select the folder. ``fetch_new`` returns the messages not yet
processed, skipping (but reporting) those over the size limit; ``done``
marks processed ones: moved to ``processed_folder`` when set (MOVE, or
COPY + delete where the server lacks MOVE), else flagged ``$SluiceProcessed``
(or ``\\Seen`` where the server takes no keywords), and deleted only when
``delete_processed`` says so. Messages the poller could not read at all are
flagged ``$SluiceUnreadable`` first (so the operator can find them) and moved
to ``quarantine_folder`` when one is set, else processed like the rest: never
deleted, since they are what someone will want to look at. Every network
call has the configured timeout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

import imapclient
from imapclient.exceptions import IMAPClientError

from relay.config import MailboxSettings
from relay.errors import SluiceError

# Re-exported: the mailbox's context is the one every TLS client of Sluice uses.
from relay.tls import settings_context as tls_context

__all__ = ["PROCESSED", "UNREADABLE", "Fetched", "Mailbox", "MailboxError", "tls_context"]

#: the keyword a processed bounce gets when it stays in the folder
PROCESSED = b"$SluiceProcessed"
#: the keyword of a message that could not be read (kept on a move to the quarantine)
UNREADABLE = b"$SluiceUnreadable"
_BATCH = 50


class MailboxError(SluiceError):
    """The bounce mailbox could not be reached, logged in to, or read."""


@dataclass(frozen=True, slots=True)
class Fetched:
    uid: int
    size: int
    #: the message; None when it is over the size limit (it is skipped, and marked)
    data: bytes | None = field(default=None, repr=False)


class Mailbox:
    """One IMAP session to the bounce mailbox. Blocking; use from a thread."""

    def __init__(
        self,
        settings: MailboxSettings,
        *,
        password: str | None = None,
        oauth_token: str | None = None,
    ) -> None:
        self.settings = settings
        self._password = password
        self._token = oauth_token
        self._client: imapclient.IMAPClient | None = None
        self._keywords = False

    def __enter__(self) -> Mailbox:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Connect and log in. Raises ``MailboxError`` with the reason."""
        s = self.settings
        ctx = tls_context(s)
        try:
            client = imapclient.IMAPClient(
                s.host,
                port=s.effective_port,
                ssl=s.encryption == "tls",
                ssl_context=ctx,
                timeout=s.timeout,
            )
        except (OSError, IMAPClientError) as exc:
            raise MailboxError(f"cannot connect to {s.host}:{s.effective_port}: {exc}") from exc
        self._client = client
        try:
            if s.encryption == "starttls":
                client.starttls(ctx)
            if self._token is not None:
                client.oauth2_login(s.username, self._token)
            else:
                client.login(s.username, self._password or "")
        except (OSError, IMAPClientError) as exc:
            self.close()
            raise MailboxError(f"{s.host}: login as {s.username} failed: {_text(exc)}") from exc

    def _c(self) -> imapclient.IMAPClient:
        if self._client is None:
            raise MailboxError("not connected")
        return self._client

    def folders(self) -> list[str]:
        """Every folder the server lists (the seed's "retrieve folders" step)."""
        try:
            return sorted(name for _flags, _delim, name in self._c().list_folders())
        except (OSError, IMAPClientError) as exc:
            raise MailboxError(f"listing folders failed: {_text(exc)}") from exc

    def fetch_new(self, limit: int = 200) -> list[Fetched]:
        """Up to ``limit`` messages of the folder not yet processed, oldest first."""
        c, s = self._c(), self.settings
        try:
            info = c.select_folder(s.folder)
            permanent = info.get(b"PERMANENTFLAGS", ())
            self._keywords = b"\\*" in permanent
            criteria: list[object] = (
                ["NOT", "KEYWORD", PROCESSED.decode()] if self._keywords else ["UNSEEN"]
            )
            uids = sorted(c.search(criteria))[:limit]
            if not uids:
                return []
            sizes = c.fetch(uids, ["RFC822.SIZE"])
            small = [
                u for u in uids if sizes.get(u, {}).get(b"RFC822.SIZE", 0) <= s.max_message_size
            ]
            out = [
                Fetched(u, int(sizes.get(u, {}).get(b"RFC822.SIZE", 0)))
                for u in uids
                if u not in small
            ]
            for start in range(0, len(small), _BATCH):
                chunk = small[start : start + _BATCH]
                # BODY.PEEK: reading must not mark the message \\Seen by itself.
                for uid, data in c.fetch(chunk, ["BODY.PEEK[]", "RFC822.SIZE"]).items():
                    body = data.get(b"BODY[]")
                    out.append(
                        Fetched(uid, int(data.get(b"RFC822.SIZE", 0)), bytes(body) if body else b"")
                    )
            return sorted(out, key=lambda f: f.uid)
        except (OSError, IMAPClientError) as exc:
            raise MailboxError(f"reading {s.folder} failed: {_text(exc)}") from exc

    def done(self, uids: Sequence[int], unreadable: Sequence[int] = ()) -> None:
        """Mark processed messages: move, flag, or delete, as configured.

        ``unreadable`` (a subset of ``uids``) are flagged as such, and moved to
        ``quarantine_folder`` when one is set instead of being processed.
        """
        if not uids:
            return
        c, s = self._c(), self.settings
        bad = [u for u in uids if u in set(unreadable)]
        try:
            if bad and self._keywords:
                c.add_flags(bad, [UNREADABLE])
            if bad and s.quarantine_folder:
                if not c.folder_exists(s.quarantine_folder):
                    c.create_folder(s.quarantine_folder)
                self._move(bad, s.quarantine_folder)
                uids = [u for u in uids if u not in set(bad)]
                if not uids:
                    return
            if s.processed_folder:
                self._move(uids, s.processed_folder)
                return
            if s.delete_processed:
                c.delete_messages(list(uids))
                c.expunge()
                return
            c.add_flags(list(uids), [PROCESSED] if self._keywords else [b"\\Seen"])
        except (OSError, IMAPClientError) as exc:
            raise MailboxError(f"marking processed messages failed: {_text(exc)}") from exc

    def _move(self, uids: Sequence[int], folder: str) -> None:
        """MOVE, or COPY + delete where the server lacks MOVE (RFC 6851)."""
        c = self._c()
        if c.has_capability("MOVE"):
            c.move(list(uids), folder)
            return
        c.copy(list(uids), folder)
        c.delete_messages(list(uids))
        c.expunge()

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.logout()
        except (OSError, IMAPClientError):
            try:
                client.shutdown()
            except (OSError, IMAPClientError):
                pass


def _text(exc: BaseException) -> str:
    text = str(exc)
    if text.startswith("b'") or text.startswith('b"'):
        text = text[2:-1]
    return " ".join(text.split())[:300] or type(exc).__name__
