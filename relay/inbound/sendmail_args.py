"""sendmail's command line and message preparation, as pure functions (no I/O).

``parse_args`` takes the argv that real callers pass (cron, PHP, mdadm,
busybox, git send-email); ``prepare`` turns stdin's bytes into the message
Sluice submits, and its recipients. ``relay.inbound.sendmail`` does the I/O.
"""

from __future__ import annotations

import email.utils
import getopt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from relay.errors import SluiceError
from relay.message import field_name, field_value

__all__ = ["USAGE", "Options", "Prepared", "UsageError", "parse_args", "prepare", "qualify"]

# -c FILE is every other `sluice` subcommand's config option, so that `sluice sendmail
# -c FILE` works like `sluice queue list -c FILE`. (sendmail 8's own -c, an obsolete
# flag without a value for HoldExpensive, is passed by none of the callers we know.)
_SHORT = "A:B:b:C:c:d:e:F:f:h:iL:mN:nO:o:p:q:R:r:tUV:vX:G"
_LONG = ["config=", "help"]

USAGE = """\
usage: sluice sendmail [-t] [-i] [-f FROM] [-F NAME] [-v] [-C FILE | -c FILE] [RCPT...]

Read one message on stdin and submit it to the local Sluice listener.

  -t           also send to the To:, Cc: and Bcc: recipients (Bcc: is removed)
  -i, -oi      a line with a single "." does not end the message
  -f, -r FROM  envelope sender (default: USER@smtp.hostname)
  -F NAME      display name for the From: header added when there is none
  -v           say what happened on stderr
  -C, -c FILE  config file (default: $SLUICE_CONFIG or /etc/sluice/config.yaml)
  --help       this text

Other sendmail options (-o*, -B, -N, -R, -bm...) are accepted and ignored.
Exit codes: 0 accepted, 64 usage, 65 message refused, 67 recipient refused,
75 try again later, 78 config error.
"""
_LINE = re.compile(rb"\r\n|\n|\r")
_BAD_CHARS = re.compile(r"[\r\n\0]")


class UsageError(SluiceError):
    """Bad command line; exits 64 (EX_USAGE)."""


@dataclass
class Options:
    recipients: list[str] = field(default_factory=list)
    sender: str | None = None
    full_name: str | None = None
    from_headers: bool = False  # -t
    ignore_dots: bool = False  # -i / -oi
    verbose: bool = False
    config: str | None = None
    mode: str = "m"  # -b<mode>
    queue_run: bool = False  # -q
    show_help: bool = False  # --help


def parse_args(argv: Sequence[str]) -> Options:
    """sendmail 8's command line, as cron, PHP, mdadm, busybox and git use it."""
    args = list(argv)
    # A bare "-q" (process the queue) takes no value; getopt would eat the next word.
    args = ["-q0" if a == "-q" else a for a in args]
    try:
        opts, operands = getopt.gnu_getopt(args, _SHORT, _LONG)
    except getopt.GetoptError as exc:
        raise UsageError(str(exc)) from None
    o = Options()
    for flag, value in opts:
        if flag == "-t":
            o.from_headers = True
        elif flag == "-i":
            o.ignore_dots = True
        elif flag in ("-f", "-r"):
            o.sender = value.strip()
        elif flag == "-F":
            o.full_name = value
        elif flag == "-v":
            o.verbose = True
        elif flag in ("-C", "-c", "--config"):
            o.config = value
        elif flag == "--help":
            o.show_help = True
        elif flag == "-b":
            o.mode = value
        elif flag == "-q":
            o.queue_run = True
        elif flag == "-o":
            # -oi is -i; -oem, -odi, -odb, -oQ... tune a real MTA: ignored.
            if value == "i":
                o.ignore_dots = True
        # Everything else (-B8BITMIME, -N never, -R hdrs, -V, -h, -L, -m,
        # -n, -U, -X, -d, -e, -p, -A, -G, -O) is harmless here and ignored.
    for value in (o.sender or "", o.full_name or "", *operands):
        if _BAD_CHARS.search(value):
            raise UsageError("a line break is not allowed in an address or name")
    for operand in operands:
        o.recipients.extend(a for _n, a in email.utils.getaddresses([operand]) if a)
    return o


@dataclass(frozen=True)
class Prepared:
    data: bytes
    recipients: list[str]


def _split_header(lines: list[bytes]) -> tuple[list[list[bytes]], list[bytes]]:
    """Header fields (each a list of physical lines) and the body lines."""
    fields: list[list[bytes]] = []
    for i, line in enumerate(lines):
        if line == b"":
            return fields, lines[i + 1 :]
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        elif field_name(line):
            fields.append([line])
        elif i == 0 and line.startswith(b"From "):
            continue  # an mbox separator line, not a header
        else:
            # Not a header line: everything from here on is body (no blank line given).
            return fields, lines[i:]
    return fields, []


def _value(fld: list[bytes]) -> str:
    return field_value(b" ".join(fld)).decode("utf-8", "surrogateescape")


def qualify(address: str, domain: str) -> str:
    """``root`` -> ``root@domain``; full addresses are left as they are."""
    return address if "@" in address or not address else f"{address}@{domain}"


def prepare(raw: bytes, opts: Options, *, sender: str, domain: str, now: float) -> Prepared:
    """The message as it will be submitted, and its recipients (pure; no I/O)."""
    lines = _LINE.split(raw)
    if lines and lines[-1] == b"":
        lines.pop()  # the final line ending
    if not opts.ignore_dots:
        for i, line in enumerate(lines):
            if line == b".":
                lines = lines[:i]
                break
    fields, body = _split_header(lines)
    recipients = [qualify(r, domain) for r in opts.recipients]
    if opts.from_headers:
        wanted = {"to", "cc", "bcc"}
        values = [_value(f) for f in fields if field_name(f[0]) in wanted]
        recipients += [qualify(a, domain) for _n, a in email.utils.getaddresses(values) if a]
        # Bcc recipients get the message, but nobody sees the Bcc list.
        fields = [f for f in fields if field_name(f[0]) not in ("bcc", "resent-bcc")]
    names = {field_name(f[0]) for f in fields}
    added: list[bytes] = []
    if "from" not in names:
        display = opts.full_name or ""
        added.append(b"From: " + email.utils.formataddr((display, sender), "utf-8").encode())
    if "date" not in names:
        added.append(b"Date: " + email.utils.formatdate(now, localtime=True).encode())
    if "message-id" not in names:
        added.append(b"Message-ID: " + email.utils.make_msgid(domain=domain).encode())
    header = [line for f in fields for line in f] + added
    data = b"\r\n".join([*header, b"", *body]) + b"\r\n"
    return Prepared(data, list(dict.fromkeys(recipients)))


# ---------------------------------------------------------------- submission
