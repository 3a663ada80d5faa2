"""Delivery status notifications (RFC 3464): who gets one, and the message itself.

Pure: no I/O, no clock. ``relay.notify.hook`` decides when a recipient has
failed, expired or waited long enough for a warning, asks ``dsn_refusal``
whether the sender may be told, and enqueues what ``build_dsn`` returns
like any other message (so a DSN is spooled, routed, retried and logged).

The message follows RFC 3464 and RFC 6522 (``multipart/report``) the way
Postfix's bounce daemon writes it: a human-readable part, the
``message/delivery-status`` part (one per-message block, then one block per
recipient) and the returned header (``text/rfc822-headers``), sent from the
null reverse-path (RFC 5321 § 4.5.5) with ``Auto-Submitted: auto-replied``
(RFC 3834 § 5) so that no mailbox answers it.

Never a DSN about a DSN (RFC 3464 § 2 and RFC 5321 § 4.5.5: mail from
``<>`` gets none), nor about a message that is itself a report or says it was
sent automatically (RFC 3834 § 2: "Auto-Submitted" other than "no").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.charset import QP, Charset
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import SMTP
from email.utils import format_datetime, formataddr
from enum import StrEnum
from typing import Literal

from relay.address import domain_of, normal_domain
from relay.enhanced_status import reply_status
from relay.message import HeaderBlock
from relay.received import received_header

__all__ = [
    "DsnKind",
    "DsnRecipient",
    "build_dsn",
    "dsn_refusal",
]


class DsnKind(StrEnum):
    """Why the sender is told: the recipients failed (or expired), or still wait."""

    FAILED = "failed"
    DELAYED = "delayed"


@dataclass(frozen=True, slots=True)
class DsnRecipient:
    """One recipient's lines in the report (RFC 3464 § 2.3)."""

    address: str
    action: Literal["failed", "delayed"]
    #: the SMTP reply code, when a server answered
    code: int | None
    #: the reply text (or Sluice's own reason)
    reply: str
    last_attempt_at: float | None = None
    #: for ``delayed``: when Sluice stops trying (RFC 3464 § 2.3.9)
    retry_until: float | None = None


def dsn_refusal(
    sender: str,
    head: HeaderBlock,
    *,
    enabled: bool,
    domains: Sequence[str],
    no_domains: Sequence[str],
) -> str | None:
    """Why no DSN may go to ``sender`` about this message, or ``None`` if one may.

    ``domains`` turns DSNs on for those sender domains whatever ``enabled`` says;
    ``no_domains`` turns them off. Apps that cannot read mail are the common
    sender of a local relay, hence off by default (``notify.dsn``).
    """
    if not sender or sender == "<>":
        return "the message has the null sender (it is itself a notification)"
    domain = domain_of(sender)
    if domain in {normal_domain(d) for d in no_domains}:
        return f"notify.no_dsn_domains lists {domain}"
    if not enabled and domain not in {normal_domain(d) for d in domains}:
        return "DSNs are off (notify.dsn) for this sender domain"
    ctype = (head.value("content-type") or "").lower()
    if ctype.startswith("multipart/report"):
        return "the message is itself a report (multipart/report)"
    auto = (head.value("auto-submitted") or "no").split(";")[0].strip().lower()
    if auto != "no":
        return f"the message says Auto-Submitted: {auto}"
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _date(ts: float) -> str:
    return format_datetime(datetime.fromtimestamp(ts, UTC))


def _diagnostic(rcpt: DsnRecipient) -> str:
    # RFC 3464 § 2.3.6: diagnostic-type ";" text; "smtp" when a server answered.
    if rcpt.code is not None:
        text = _one_line(rcpt.reply)
        if not text.startswith(str(rcpt.code)):
            text = f"{rcpt.code} {text}"
        return f"smtp; {text}"
    return f"X-Sluice; {_one_line(rcpt.reply)}"


def _human(kind: DsnKind, hostname: str, recipients: Sequence[DsnRecipient]) -> str:
    lines = [f"This is the mail system at host {hostname}.", ""]
    if kind is DsnKind.FAILED:
        lines += [
            "I'm sorry to have to inform you that your message could not",
            "be delivered to one or more recipients. It's attached below.",
        ]
    else:
        lines += [
            "####################################################################",
            "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #",
            "####################################################################",
            "",
            "Your message could not be delivered yet. The mail system will keep",
            "trying; you will be told if it gives up.",
        ]
    lines.append("")
    for r in recipients:
        lines.append(f"<{r.address}>: {_one_line(r.reply)}")
    lines.append("")
    return "\r\n".join(lines)


def _headers_part(original: bytes) -> MIMEBase:
    # RFC 6522 § 3: "text/rfc822-headers" returns the header only (RFC 6522
    # allows it in place of the whole message; it also keeps the DSN small).
    head = HeaderBlock(original)
    text = original[: head.end].decode("utf-8", "replace").replace("\r\n", "\n").rstrip("\n")
    part: MIMEBase
    if text.isascii():
        part = MIMEText(text + "\n", "rfc822-headers", "us-ascii")
    else:
        charset = Charset("utf-8")
        charset.body_encoding = QP  # readable, and 7-bit clean for any provider
        part = MIMEBase("text", "rfc822-headers")
        part.set_payload(text + "\n", charset)
    return part


def build_dsn(
    *,
    kind: DsnKind,
    original: bytes,
    sender: str,
    recipients: Sequence[DsnRecipient],
    hostname: str,
    queue_id: str,
    dsn_queue_id: str,
    arrival: float,
    now: float,
) -> bytes:
    """The DSN about ``recipients`` of one message, as CRLF wire bytes.

    Args:
        kind: failed (the recipients are given up) or delayed (a warning).
        original: the stored message (its header block is returned).
        sender: the original envelope sender: the DSN's only recipient.
        recipients: one entry per recipient reported.
        hostname: this relay's name (Reporting-MTA, the From: address domain).
        queue_id: the original message's queue ID (for the operator's search).
        dsn_queue_id: the DSN's own queue ID, for its ``Received:`` line: a
            DSN is spooled like any message, and carries Sluice's trace line
            like any other (``relay.received``), as Postfix's bounces do.
        arrival: when Sluice accepted the original (Arrival-Date).
        now: the DSN's Date.
    """
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = formataddr(("Mail Delivery System", f"MAILER-DAEMON@{hostname}"))
    report["To"] = sender
    report["Subject"] = (
        "Undelivered Mail Returned to Sender"
        if kind is DsnKind.FAILED
        else "Delayed Mail (still being retried)"
    )
    report["Date"] = _date(now)
    # Unique per report: one message may get a delay warning, then a failure.
    report["Message-ID"] = f"<{queue_id}.{kind.value}.{int(now * 1000)}@{hostname}>"
    report["Auto-Submitted"] = "auto-replied"
    report.preamble = "This is a MIME-encapsulated message."

    human = MIMEText(_human(kind, hostname, recipients), "plain", "us-ascii")
    human["Content-Description"] = "Notification"
    report.attach(human)

    status = MIMEBase("message", "delivery-status")
    status["Content-Description"] = "Delivery report" if kind is DsnKind.FAILED else "Delay report"
    blocks: list[Message | str] = []
    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {hostname}"
    per_message["X-Sluice-Queue-ID"] = queue_id
    per_message["Arrival-Date"] = _date(arrival)
    blocks.append(per_message)
    for r in recipients:
        block = Message()
        block["Final-Recipient"] = f"rfc822; {r.address}"
        block["Action"] = r.action
        status_code = reply_status(r.code, r.reply)
        if r.action == "failed" and status_code.startswith("2"):
            status_code = "5.0.0"  # cannot happen for a failure; keep the class honest
        block["Status"] = status_code
        block["Diagnostic-Code"] = _diagnostic(r)
        if r.last_attempt_at is not None:
            block["Last-Attempt-Date"] = _date(r.last_attempt_at)
        if r.retry_until is not None:
            block["Will-Retry-Until"] = _date(r.retry_until)
        blocks.append(block)
    status.set_payload(blocks)
    report.attach(status)

    returned = _headers_part(original)
    returned["Content-Description"] = "Undelivered Message Headers"
    report.attach(returned)
    received = received_header(
        hostname=hostname,
        queue_id=dsn_queue_id,
        protocol="local",
        recipients=[sender],
        now=now,
        utf8=not sender.isascii(),
    )
    # policy=SMTP: CRLF line ends, as the spool stores and providers expect.
    return received + report.as_bytes(policy=SMTP)
