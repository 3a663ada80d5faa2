"""``sluice sendmail``: the /usr/sbin/sendmail interface for cron, PHP, git and friends.

Reads one message on stdin and hands it to the local Sluice listener over
SMTP (the first ``smtp.listen`` address; for port 0, the address the running
daemon recorded beside its lock). If the listener cannot be reached at all and
the caller can write the spool (root or the sluice user), the message is
written straight into the spool, where the daemon finds it when it (re)starts
or at its next poll; otherwise the exit code is 75 (EX_TEMPFAIL) so that the
caller keeps the message. Exit codes follow sysexits(3).

The options are sendmail 8's, parsed the way callers really pass them:
glued values (``-fuser@x``, ``-FCronDaemon``, ``-B8BITMIME``), grouped flags
(``-ti``), ``-oi``, operands before options and ``--``. Options that only
tune a real MTA (``-o*``, ``-B``, ``-N``, ``-R``, ``-V``, ``-h``, ``-L``,
``-m``, ``-n``, ``-U``, ``-X``, ``-d``, ``-e``, ``-p``, ``-A``, ``-G``) are
accepted and ignored.

Like sendmail, missing ``From:``, ``Date:`` and ``Message-ID:`` headers are
added, line endings become CRLF, and without ``-i``/``-oi`` a line holding a
single dot ends the input. Local names without a domain (cron mails ``root``)
are qualified with ``smtp.hostname`` (or this host's FQDN), and then go
through ``aliases:`` as any address at a local domain does: the listener
refuses one with no alias, and so does the spool path here
(``relay.address_rules``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import pwd
import smtplib
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from os import (
    EX_CONFIG,
    EX_DATAERR,
    EX_NOUSER,
    EX_OK,
    EX_SOFTWARE,
    EX_TEMPFAIL,
    EX_USAGE,
)
from pathlib import Path
from typing import BinaryIO

from relay.address_rules import AddressRules
from relay.config import Config, Endpoint, SmtpSettings, SpoolSettings, load_structure
from relay.errors import ConfigError, SluiceError, SpoolError
from relay.inbound.sendmail_args import (
    USAGE,
    Options,
    Prepared,
    UsageError,
    parse_args,
    prepare,
    qualify,
)
from relay.message import extract_subject
from relay.model import valid_address
from relay.received import received_header
from relay.store.node_status import read_status
from relay.store.spool import NewMessage, Spool, stored_under_fresh_id

__all__ = ["Options", "Prepared", "UsageError", "main", "parse_args", "prepare"]


DEFAULT_CONFIG = "/etc/sluice/config.yaml"
_TIMEOUT = 60.0  # per SMTP command; the listener answers the final dot after one commit


class _Fail(SluiceError):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


def _plain_listener(cfg: Config) -> int:
    """The first ``smtp.listen`` entry a local client may use without TLS or AUTH (else 0)."""
    loopback = ipaddress.ip_address("127.0.0.1")
    for i, entry in enumerate(cfg.smtp.listen):
        if entry.tls == "implicit":
            continue
        if entry.auth_mode != "required" or any(loopback in net for net in entry.no_auth_networks):
            return i
    return 0


def _connect_target(cfg: Config) -> Endpoint | None:
    """Where the daemon listens: the config's first plain address, or what it recorded."""
    index = _plain_listener(cfg)
    ep = cfg.smtp.endpoints[index]
    if ep.port == 0:
        recorded = _recorded_listen(cfg.spool.path, index)
        if recorded is None:
            return None
        ep = recorded
    if ep.host in ("0.0.0.0", ""):
        return Endpoint("127.0.0.1", ep.port)
    if ep.host == "::":
        return Endpoint("::1", ep.port)
    return ep


def _recorded_listen(spool: Path, index: int = 0) -> Endpoint | None:
    recorded = read_status(spool, "daemon.listen")
    if not recorded:
        return None
    addresses = recorded.split()
    host, _, port = addresses[min(index, len(addresses) - 1)].rpartition(":")
    return Endpoint(host.strip("[]"), int(port))


def _smtp_submit(
    ep: Endpoint, sender: str, recipients: list[str], data: bytes, helo: str, verbose: bool
) -> None:
    """Submit over SMTP; raises ``_Fail`` with a sysexits code, or OSError if unreachable."""
    smtp = smtplib.SMTP(timeout=_TIMEOUT, local_hostname=helo)
    try:
        smtp.connect(ep.host, ep.port)
    except OSError:
        # Nobody listening, or no greeting (smtplib's errors are OSErrors too):
        # the message was not taken, so the caller may fall back to the spool.
        smtp.close()
        raise
    try:
        smtp.ehlo()
        options: list[str] = []
        if not data.isascii() and smtp.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        if not all(a.isascii() for a in (sender, *recipients)):
            if not smtp.has_extn("smtputf8"):
                raise _Fail(EX_DATAERR, "the listener does not accept non-ASCII addresses")
            options.append("SMTPUTF8")
        pending = list(recipients)
        permanent: dict[str, str] = {}
        while pending:
            try:
                refused = smtp.sendmail(sender, pending, data, mail_options=options)
            except smtplib.SMTPRecipientsRefused as exc:
                refused = exc.recipients
                if all(code >= 500 for code, _ in refused.values()):
                    permanent.update(
                        {r: f"{c} {t.decode(errors='replace')}" for r, (c, t) in refused.items()}
                    )
                    break
                raise _Fail(EX_TEMPFAIL, _describe(refused)) from None
            accepted = [r for r in pending if r not in refused]
            if verbose:
                print(f"sendmail: accepted for {', '.join(accepted)}", file=sys.stderr)
            for r, (code, text) in refused.items():
                if code >= 500:
                    permanent[r] = f"{code} {text.decode(errors='replace')}"
            # 452 "too many recipients": send the rest in another transaction.
            pending = [r for r in pending if r in refused and r not in permanent]
        if permanent:
            lines = "; ".join(f"<{r}>: {t}" for r, t in permanent.items())
            others = len(recipients) - len(permanent)
            note = f" (queued for the other {others})" if others else ""
            raise _Fail(EX_NOUSER, f"refused {lines}{note}")
    except smtplib.SMTPSenderRefused as exc:
        code = EX_TEMPFAIL if exc.smtp_code < 500 else EX_DATAERR
        why = f"sender <{_txt(exc.sender)}> refused: {exc.smtp_code} {_txt(exc.smtp_error)}"
        raise _Fail(code, why) from None
    except smtplib.SMTPDataError as exc:
        code = EX_TEMPFAIL if exc.smtp_code < 500 else EX_DATAERR
        raise _Fail(code, f"message refused: {exc.smtp_code} {_txt(exc.smtp_error)}") from None
    except smtplib.SMTPResponseException as exc:
        code = EX_TEMPFAIL if exc.smtp_code < 500 else EX_SOFTWARE
        raise _Fail(code, f"{exc.smtp_code} {_txt(exc.smtp_error)}") from None
    except (smtplib.SMTPException, OSError) as exc:
        # Broken off mid-transaction: not accepted; the caller must keep it.
        raise _Fail(EX_TEMPFAIL, f"connection to {ep} failed: {exc}") from None
    finally:
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()


def _txt(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _describe(refused: Mapping[str, tuple[int, bytes]]) -> str:
    return "; ".join(f"<{r}>: {c} {_txt(t)}" for r, (c, t) in refused.items())


def _spool_writable(spool: SpoolSettings) -> bool:
    """Whether this caller may write the store itself when the daemon does not answer.

    A SQLite spool: the file and its directory are writable (root or the
    sluice user). A PostgreSQL store: whoever can read its password may
    (opening it says; a caller without it gets exit 75).
    """
    if spool.url is not None:
        return True
    path = spool.path
    return path.is_file() and os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)


async def _enqueue(
    where: Path | SpoolSettings,
    make: Callable[[str], NewMessage],
    now: float,
    stream_headers: list[str],
) -> str:
    async with await Spool.open(where) as spool:
        spool.stream_headers = stream_headers  # as the daemon's spool has them
        _, queue_id = await stored_under_fresh_id(make, spool.enqueue, now)
        return queue_id


def _spool_directly(
    cfg: Config, sender: str, recipients: list[str], data: bytes, hostname: str
) -> str:
    path = cfg.spool.path
    if len(data) > cfg.smtp.max_message_size:
        raise _Fail(EX_DATAERR, f"message is larger than smtp.max_message_size ({len(data)} bytes)")
    now = time.time()
    # The listener's address rules, applied here as there (relay.address_rules).
    rules = AddressRules.from_config(cfg, hostname)
    refused = {r: why for r in recipients if (why := rules.refusal(r)) is not None}
    if refused:
        lines = "; ".join(f"<{r}>: {why}" for r, why in refused.items())
        raise _Fail(EX_NOUSER, f"refused {lines} (nothing was queued)")
    resolved = rules.resolve(sender, recipients)
    subject = extract_subject(data)
    utf8 = not all(a.isascii() for a in (sender, *recipients))

    def make(queue_id: str) -> NewMessage:
        # The listener's line, in its local form: the bounce reader finds this
        # message by it as it finds any other (relay.received).
        received = received_header(
            hostname=hostname,
            queue_id=queue_id,
            protocol="local",
            recipients=recipients,
            now=now,
            local_uid=os.getuid(),
            utf8=utf8,
        )
        return NewMessage(
            queue_id=queue_id,
            sender=sender,
            recipients=resolved.recipients,
            notes=resolved.notes,
            data=received + resolved.header + data,
            subject=subject,
            received_at=now,
            client="sendmail",
            helo=f"uid {os.getuid()}",
        )

    headers = cfg.suppression.stream_headers
    if cfg.spool.url is not None:
        return asyncio.run(_enqueue(cfg.spool, make, now, headers))
    owner = path.stat()
    try:
        queue_id = asyncio.run(_enqueue(path, make, now, headers))
    finally:
        if os.geteuid() == 0 and owner.st_uid != 0:
            # root wrote as itself: give SQLite's side files back to the daemon's user.
            for suffix in ("-wal", "-shm", "-journal"):
                side = path.with_name(path.name + suffix)
                if side.exists():
                    os.chown(side, owner.st_uid, owner.st_gid)
    return queue_id


def _unreadable(path: Path) -> bool:
    """The file exists, but this user may not read it (or even reach it)."""
    try:
        os.stat(path)
    except PermissionError:
        return True
    except OSError:
        return False
    return not os.access(path, os.R_OK)


def _default_sender(domain: str) -> str:
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = f"uid{os.getuid()}"
    return f"{user}@{domain}"


def run(
    argv: Sequence[str],
    stdin: BinaryIO,
    *,
    environ: Mapping[str, str] | None = None,
) -> int:
    """The whole command; returns a sysexits code. Messages go to stderr."""
    env = os.environ if environ is None else environ
    try:
        opts = parse_args(argv)
    except UsageError as exc:
        print(f"sendmail: {exc}\n(`sluice sendmail --help` lists the options)", file=sys.stderr)
        return EX_USAGE
    if opts.show_help:
        sys.stdout.write(USAGE)
        return EX_OK
    if opts.queue_run or opts.mode == "i":
        return EX_OK  # -q / newaliases: the daemon runs its own queue; no aliases here
    if opts.mode == "p":
        return _err(EX_USAGE, "-bp is not supported; use `sluice queue list`")
    if opts.mode != "m":
        return _err(EX_USAGE, f"-b{opts.mode} is not supported (only -bm, the default)")
    config_path = Path(opts.config or env.get("SLUICE_CONFIG") or DEFAULT_CONFIG)
    try:
        cfg = load_structure(config_path, env=env)
    except ConfigError as exc:
        if not _unreadable(config_path):
            for issue in exc.issues:
                print(f"sendmail: {issue}", file=sys.stderr)
            return EX_CONFIG
        # A caller such as PHP running as www-data may not read /etc/sluice, and
        # needs nothing secret from it: use the default listener and spool.
        cfg = Config.model_construct(smtp=SmtpSettings(), spool=SpoolSettings())
        if opts.verbose:
            print(f"sendmail: cannot read {config_path}; using the defaults", file=sys.stderr)
    domain = cfg.smtp.hostname or socket.getfqdn()
    sender = opts.sender if opts.sender is not None else _default_sender(domain)
    sender = qualify(sender.strip("<>"), domain)
    raw = stdin.read()
    prepared = prepare(raw, opts, sender=sender, domain=domain, now=time.time())
    if not prepared.recipients:
        return _err(EX_USAGE, "no recipients given (name them, or use -t with To/Cc/Bcc)")
    # The same rule as the listener's, so that the spool path stores nothing it would refuse.
    bad = [a for a in prepared.recipients if not valid_address(a)]
    if bad:
        return _err(EX_NOUSER, f"bad recipient address: {', '.join(bad)}")
    if sender and not valid_address(sender):
        return _err(EX_DATAERR, f"bad sender address: {sender}")
    target = _connect_target(cfg)
    reason = "the daemon has not recorded where it listens"
    if target is not None:
        try:
            _smtp_submit(target, sender, prepared.recipients, prepared.data, domain, opts.verbose)
            return EX_OK
        except _Fail as exc:
            return _err(exc.code, str(exc))
        except OSError as exc:
            reason = f"cannot connect to {target}: {exc.strerror or exc}"
    if not _spool_writable(cfg.spool):
        return _err(
            EX_TEMPFAIL,
            f"sluice is not reachable ({reason}) and the spool {cfg.spool.path} is not "
            f"writable by uid {os.getuid()}; the message was NOT sent, try again later",
        )
    try:
        queue_id = _spool_directly(cfg, sender, prepared.recipients, prepared.data, domain)
    except _Fail as exc:
        return _err(exc.code, str(exc))
    except (SpoolError, OSError) as exc:
        return _err(EX_TEMPFAIL, f"{reason}; writing the spool failed too: {exc}")
    if opts.verbose:
        print(
            f"sendmail: {reason}; queued as {queue_id} in {cfg.spool.where} "
            "(sent when sluice runs)",
            file=sys.stderr,
        )
    return EX_OK


def _err(code: int, text: str) -> int:
    print(f"sendmail: {text}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    return run(args, sys.stdin.buffer)
