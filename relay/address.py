"""Mailbox and path syntax: what Sluice accepts at MAIL and RCPT, and puts on its own.

An SMTP path (RFC 5321 § 4.1.2) is ``"<" [ A-d-l ":" ] Mailbox ">"``; the
mailbox is a dot-atom or quoted local part, ``@``, and a domain or an address
literal (§ 4.1.3: ``[1.2.3.4]``, ``[IPv6:::1]``). What we accept we must be
able to send on, and a message whose address a provider refuses fails for
every recipient, so a bad address is refused at once with a 5xx, never
accepted to fail later.

``split_path`` only finds where the path ends (it never raises, whatever the
client sends); the mailbox is checked by ``email-validator`` in syntax-only
mode (no DNS), a parser with its own test suite, with Sluice's choices:

* the local part is at most 64 octets (§ 4.5.3.1.1) and the whole address at
  most 254 (the 256-octet path less its brackets), so it fits any MTA;
* quoted local parts and address literals are allowed (§ 4.1.2, § 4.1.3);
* a non-ASCII address needs ``SMTPUTF8`` (RFC 6531 § 3.3);
* special-use domains (``localhost``, ``.local``, ``.test``...) are
  syntactically fine: an internal relay sends to them (e.g. an Exchange
  server for ``corp.local``), and this is a syntax check, not a policy.

This module is also the one home of two words about domains, so that every
side compares and writes them the same way:

* ``domain_of`` / ``normal_domain``: the domain of an address as Sluice
  compares it (routes, hold rules, DSN sender domains, VERP, the queue
  filter): lower-cased, a trailing dot dropped;
* ``domain_to_ascii``: a domain as its IDNA 2008 A-label (UTS #46 mapping),
  through the ``idna`` package only, never the stdlib's IDNA 2003 codec
  (``"faß.de"`` is ``xn--fa-hia.de`` under 2008, ``fass.de`` under 2003:
  another domain).
"""

from __future__ import annotations

import re

import idna
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

__all__ = [
    "NULL_PATH",
    "address_problem",
    "domain_of",
    "domain_to_ascii",
    "needs_smtputf8",
    "normal_domain",
    "split_path",
    "valid_address",
]

#: The null reverse-path of bounces (RFC 5321 § 4.5.5), as ``split_path`` returns it.
NULL_PATH = "<>"

_SPECIAL_USE = frozenset(SPECIAL_USE_DOMAIN_NAMES)

# The common case, an ASCII dot-atom at a host name, checked in one regex
# match instead of email-validator's 20-40 us (two per message on the
# accept path). Only a shortcut to "valid": tests/unit/test_address.py has
# Hypothesis check that everything it matches email-validator accepts too;
# everything else goes to email-validator.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_COMMON = re.compile(rf"(?:{_ATEXT}+\.)*{_ATEXT}+@{_LABEL}(?:\.{_LABEL})*")


def split_path(arg: str) -> tuple[str, str]:
    """Split the argument of ``MAIL FROM:`` or ``RCPT TO:`` into ``(path, parameters)``.

    ``path`` is the mailbox between the brackets, with any source route
    dropped (RFC 5321 § 4.1.2 and § C: accepted and ignored), ``NULL_PATH``
    for ``<>``, or ``""`` for no argument. A path without its closing ``>``
    comes back whole, starting with ``<``, which no mailbox does, so
    ``address_problem`` names it. A bare address (no brackets, which Postfix
    and aiosmtpd also take) ends at the first space outside quotes.

    Never raises: it runs on whatever a client sends.
    """
    arg = arg.strip(" \t")
    if not arg:
        return "", ""
    if not arg.startswith("<"):
        end = _find_unquoted(arg, " \t", 0)
        return (arg, "") if end < 0 else (arg[:end], arg[end:].strip(" \t"))
    end = _find_unquoted(arg, ">", 1)
    if end < 0:
        return arg, ""
    inner, rest = arg[1:end], arg[end + 1 :]
    if inner.startswith("@"):
        # A-d-l, a source route: "@relay1,@relay2:user@domain".
        colon = _find_unquoted(inner, ":", 0)
        if colon >= 0:
            inner = inner[colon + 1 :]
    return inner or NULL_PATH, rest.strip(" \t")


def _find_unquoted(text: str, chars: str, start: int) -> int:
    """Index of the first of ``chars`` at or after ``start`` outside a quoted string, or -1."""
    quoted = False
    i = start
    while i < len(text):
        c = text[i]
        if quoted and c == "\\":
            i += 2  # quoted-pair (RFC 5321 § 4.1.2)
            continue
        if c == '"':
            quoted = not quoted
        elif not quoted and c in chars:
            return i
        i += 1
    return -1


def needs_smtputf8(address: str) -> bool:
    """Whether ``address`` may only be sent with ``SMTPUTF8`` (RFC 6531): it is not ASCII."""
    return not address.isascii()


def address_problem(address: str, *, smtputf8: bool = True) -> str | None:
    """Why ``address`` is not a mailbox Sluice accepts, in ASCII; ``None`` if it is one.

    ``smtputf8``: the transaction declared SMTPUTF8, so a UTF-8 mailbox is allowed.
    Never raises.
    """
    if (
        len(address) <= 254
        and _COMMON.fullmatch(address)
        and address.index("@") <= 64
        and "--" not in address  # an "xn--" label is for IDNA to judge
    ):
        return None
    if address == NULL_PATH:
        return "the null path <> is only allowed as a sender"
    if address.startswith("<"):
        return "'<' without a closing '>'"
    if not address:
        return "empty address"
    if needs_smtputf8(address) and not smtputf8:
        return "a non-ASCII address needs the SMTPUTF8 parameter on MAIL FROM"
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:
        return "the address is not valid UTF-8"
    local, at, domain = address.rpartition("@")
    if not at:
        return "a full user@domain address is needed"
    try:
        validate_email(
            f"{local}@{_unreserved(domain)}",
            allow_smtputf8=smtputf8,
            allow_empty_local=False,
            allow_quoted_local=True,
            allow_domain_literal=True,
            allow_display_name=False,
            strict=True,  # the 64-octet local part of RFC 5321 § 4.5.3.1.1
            check_deliverability=False,
            globally_deliverable=False,
            test_environment=True,
        )
    except EmailNotValidError as exc:
        return _ascii(str(exc))
    return None


def valid_address(address: str, *, smtputf8: bool = True) -> bool:
    """Whether ``address`` is a mailbox Sluice accepts and can put on a MAIL or RCPT line."""
    return address_problem(address, smtputf8=smtputf8) is None


def _unreserved(domain: str) -> str:
    """``domain`` with a special-use top label (``local``, ``localhost``...) swapped for letters.

    email-validator refuses those domains as not globally deliverable, which
    is a policy, not syntax; a same-length label of letters keeps every
    syntax and length rule the same.
    """
    head, dot, top = domain.rpartition(".")
    if top.lower() in _SPECIAL_USE:
        return f"{head}{dot}{'x' * len(top)}"
    return domain


def _ascii(text: str) -> str:
    """``text`` for an SMTP reply: printable ASCII, anything else escaped (``\\xf6``)."""
    out = text.encode("ascii", "backslashreplace").decode("ascii")
    return "".join(c if " " <= c <= "~" else f"\\x{ord(c):02x}" for c in out)


# ------------------------------------------------------------------ domains


def normal_domain(domain: str) -> str:
    """``domain`` as Sluice compares domains: lower case, without a trailing dot or blanks.

    A trailing dot is the same domain: ``example.org.`` is the fully
    qualified spelling of ``example.org`` (RFC 1034 § 3.1), so a route for
    one matches mail for the other. Domains compare without regard to case
    (RFC 4343); ``str.lower`` also covers a U-label's letters. An address
    literal (``[192.0.2.1]``) has no dot to drop and stays as written.
    """
    domain = domain.strip().lower()
    return domain[:-1] if domain.endswith(".") else domain


def domain_of(address: str) -> str:
    """The domain of ``address`` (after its last ``@``) as ``normal_domain`` writes it.

    ``""`` when there is none: the null sender (``""`` or ``<>``), or a local
    name without ``@``. The last ``@`` is the one that counts: a quoted local
    part may hold one (``"a@b"@example.org``), a domain never does.
    """
    _local, at, domain = address.strip().strip("<>").rpartition("@")
    return normal_domain(domain) if at else ""


def domain_to_ascii(domain: str) -> str | None:
    """``domain`` as its IDNA 2008 A-label form, or ``None`` when it is not a valid IDN.

    UTS #46 mapping (case folding, full-width dots) is applied first, as
    browsers and mail clients do, in non-transitional mode, so ``ß`` stays
    a letter of its own (``faß.de`` is ``xn--fa-hia.de``; the stdlib codec,
    IDNA 2003, would make it ``fass.de``). An ASCII domain comes back as it
    is, its case and any trailing dot kept: it is already what goes on the wire.
    """
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError:
        return None
