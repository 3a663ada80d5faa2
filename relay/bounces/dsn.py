"""Reading a bounce: which recipients failed, how (hard or soft), and which message it answers.

RFC 3464 delivery status notifications (``multipart/report;
report-type=delivery-status``) are read field by field: ``Final-Recipient``,
``Action``, ``Status``, ``Diagnostic-Code``. Everything else real MTAs still
send (Exim, qmail, older Exchange, Yahoo...) goes to Mailman's detectors
(``flufl.bounce``), which name the failed addresses as permanent or temporary.

Hard means permanent: ``Action: failed`` with a ``5.x.x`` status, or a
detector's permanent failure. Soft means temporary: ``Action: delayed`` or a
``4.x.x`` status. Auto-replies (RFC 3834 ``Auto-Submitted``, out-of-office
notices) are not bounces, unless they carry a delivery-status report.

Which message a bounce answers: the VERP token in the address it was sent to
(``relay.verp``), else Sluice's own ``Received:`` line in the returned
headers, which every message Sluice spools carries, however it came in
(``relay.received`` writes it and reads it back). What is read here is only
what the bounce claims: the poller checks the token's MAC and the store
whether the message was delivered to the address (``record_dsn``).

Hostile input is bounded: a bounce over ``max_size`` or nested deeper than
``_MAX_DEPTH`` raises ``UnreadableBounce``; undecodable text is replaced, never
fatal.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import email.utils
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from flufl.bounce import all_failures

from relay.enhanced_status import enhanced_status
from relay.errors import SluiceError
from relay.received import queue_id_from_received

__all__ = ["BounceReport", "Failure", "UnreadableBounce", "read_bounce"]

log = logging.getLogger("sluice.bounces")

_MAX_DEPTH = 16
_MAX_PARTS = 200
_AUTO_SUBJECT = re.compile(
    r"^\s*(?:auto(?:matic)?[ -]?(?:reply|response)|out of (?:the )?office|"
    r"abwesenheit|absence|vacation)\b",
    re.IGNORECASE,
)


class UnreadableBounce(SluiceError, ValueError):
    """A message too large, too deeply nested or too broken to read as a bounce."""


@dataclass(frozen=True, slots=True)
class Failure:
    """One recipient a bounce reports as failed."""

    address: str
    kind: Literal["hard", "soft"]
    #: the enhanced status code (RFC 3463), e.g. ``5.1.1``; '' if the bounce gave none
    status: str = ""
    #: the remote server's words (``Diagnostic-Code``), or the detector's
    diagnostic: str = ""


@dataclass(frozen=True, slots=True)
class BounceReport:
    failures: list[Failure]
    #: the Sluice queue ID of the bounced message, when the returned headers name it
    queue_id: str | None = None
    #: the addresses the bounce was delivered to (for VERP), as found in its headers
    delivered_to: list[str] = field(default_factory=list)
    #: "dsn" (RFC 3464) or "heuristic" (flufl.bounce)
    format: str = "dsn"
    #: who the bounce says it is from (its ``From:`` address), for unmatched bounces
    sender: str = ""


def read_bounce(raw: bytes, *, max_size: int = 10 * 1024 * 1024) -> BounceReport | None:
    """The failures a bounce reports, or ``None`` when ``raw`` is not a bounce.

    Raises:
        UnreadableBounce: over ``max_size``, nested too deep, or with too many parts.
    """
    if len(raw) > max_size:
        raise UnreadableBounce(f"{len(raw)} bytes is over the {max_size}-byte limit")
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    parts = list(_walk(msg))
    delivered_to = _delivered_to(msg)
    queue_id = _queue_id(parts, raw)
    report = _delivery_status(parts)
    sender = email.utils.parseaddr(_header(msg, "From"))[1]
    if report is not None:
        return BounceReport(report, queue_id, delivered_to, "dsn", sender)
    if _auto_reply(msg) and not _from_mail_system(msg):
        return None
    try:
        temporary, permanent = all_failures(msg)
    except Exception as exc:  # a third-party heuristic; a hostile message must not stop us
        log.warning("bounce detectors failed on a message: %s: %s", type(exc).__name__, exc)
        return None
    failures = [_found(parts, _text(a), "hard") for a in sorted(permanent)]
    failures += [_found(parts, _text(a), "soft") for a in sorted(temporary) if a not in permanent]
    if not failures:
        return None
    return BounceReport(failures, queue_id, delivered_to, "heuristic", sender)


def _walk(msg: email.message.Message) -> Iterator[email.message.Message]:
    """Every part, depth first, bounded in depth and count."""
    count = 0
    stack = [(msg, 0)]
    while stack:
        part, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise UnreadableBounce(f"MIME parts nested deeper than {_MAX_DEPTH}")
        count += 1
        if count > _MAX_PARTS:
            raise UnreadableBounce(f"more than {_MAX_PARTS} MIME parts")
        yield part
        payload = part.get_payload()
        if isinstance(payload, list):
            stack.extend(
                (p, depth + 1) for p in reversed(payload) if isinstance(p, email.message.Message)
            )


def _delivery_status(parts: list[email.message.Message]) -> list[Failure] | None:
    """The failed recipients of an RFC 3464 report, or None if there is no report."""
    for part in parts:
        if part.get_content_type() != "message/delivery-status":
            continue
        payload = part.get_payload()
        if not isinstance(payload, list):
            # Some MTAs send the status fields as plain text: parse them as headers.
            decoded = part.get_payload(decode=True)
            text = decoded if isinstance(decoded, bytes) else b""
            payload = [
                email.message_from_bytes(block, policy=email.policy.compat32)
                for block in re.split(rb"\r?\n\r?\n", text)
                if block.strip()
            ]
        failures = []
        for fields in payload[1:] if len(payload) > 1 else payload:
            if not isinstance(fields, email.message.Message):
                continue
            failure = _recipient_fields(fields)
            if failure is not None:
                failures.append(failure)
        return failures
    return None


def _recipient_fields(fields: email.message.Message) -> Failure | None:
    recipient = _header(fields, "Final-Recipient") or _header(fields, "Original-Recipient")
    if not recipient:
        return None
    address = recipient.split(";", 1)[-1].strip().strip("<>")
    action = _header(fields, "Action").lower()
    status = _header(fields, "Status")
    status = enhanced_status(status)
    diagnostic = _header(fields, "Diagnostic-Code")
    diagnostic = diagnostic.split(";", 1)[-1].strip() if ";" in diagnostic else diagnostic
    if action in ("delivered", "relayed", "expanded"):
        return None
    if action == "failed" or status.startswith("5"):
        kind: Literal["hard", "soft"] = "hard" if not status.startswith("4") else "soft"
    elif action == "delayed" or status.startswith("4"):
        kind = "soft"
    else:
        return None
    return Failure(address, kind, status, " ".join(diagnostic.split())[:500])


def _auto_reply(msg: email.message.Message) -> bool:
    """RFC 3834 auto-replies and the vacation notices that predate it."""
    auto = _header(msg, "Auto-Submitted").lower()
    if auto and auto != "no":
        return True
    if _header(msg, "X-Autoreply") or _header(msg, "X-Autorespond"):
        return True
    if _header(msg, "Precedence").lower() == "auto_reply":
        return True
    return bool(_AUTO_SUBJECT.search(_header(msg, "Subject")))


def _from_mail_system(msg: email.message.Message) -> bool:
    """A bounce comes from the null sender or a mailer daemon; a vacation notice does not."""
    if _header(msg, "Return-Path").strip() == "<>" or _header(msg, "X-Failed-Recipients"):
        return True
    _name, addr = email.utils.parseaddr(_header(msg, "From"))
    return addr.partition("@")[0].lower() in {"mailer-daemon", "postmaster", "mail-daemon"}


def _found(
    parts: list[email.message.Message], address: str, kind: Literal["hard", "soft"]
) -> Failure:
    diagnostic = _diagnostic(parts, address)
    return Failure(address, kind, enhanced_status(diagnostic), diagnostic)


def _delivered_to(msg: email.message.Message) -> list[str]:
    found: list[str] = []
    for name in ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To"):
        for value in msg.get_all(name, []):
            for _display, addr in email.utils.getaddresses([_text(value)]):
                if addr and addr not in found:
                    found.append(addr)
    return found


#: the parts a bounce returns the original's header in (RFC 6522, RFC 6533)
_RETURNED = frozenset({"text/rfc822-headers", "message/global-headers"})


def _queue_id(parts: list[email.message.Message], raw: bytes) -> str | None:
    """The queue ID in Sluice's ``Received:`` line of the returned header (``relay.received``).

    The returned header part is read decoded first (a report may send it
    quoted-printable or base64); then the whole bounce as bytes, which also
    covers a ``message/rfc822`` part and a bounce that quotes the header in
    its text.
    """
    for part in parts:
        if part.get_content_type() in _RETURNED:
            decoded = part.get_payload(decode=True)
            if isinstance(decoded, bytes) and (found := queue_id_from_received(decoded)):
                return found
    return queue_id_from_received(raw)


def _diagnostic(parts: list[email.message.Message], address: str) -> str:
    """The first line of the bounce's text that names the address (for a heuristic find)."""
    for part in parts:
        if part.get_content_maintype() != "text":
            continue
        body = part.get_payload(decode=True)
        if not isinstance(body, bytes):
            continue
        lines = [" ".join(line.split()) for line in body.decode("utf-8", "replace").splitlines()]
        for i, line in enumerate(lines):
            if address.lower() not in line.lower():
                continue
            # "<addr>:" alone (qmail) or "  addr" (Exim): the reason is on the lines after.
            said = line.lower().replace(address.lower(), "").strip(" <>:")
            if len(said) >= 10:
                return line[:500]
            after: list[str] = []
            for x in lines[i + 1 : i + 5]:
                if x:
                    after.append(x)
                elif after:
                    break
            if after:
                return " ".join(after)[:500]
    return ""


def _header(msg: email.message.Message, name: str) -> str:
    value = msg.get(name)
    return " ".join(_text(value).split()) if value is not None else ""


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
