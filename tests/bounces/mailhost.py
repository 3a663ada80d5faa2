"""A real bounce mailbox for tests: a private Dovecot (IMAP) and a private Postfix in front of it.

Dovecot serves ``BASE/mail/<user>/`` (Maildir) over IMAP on a loopback port,
plain or with implicit TLS (trustme certificates), for users with ``{PLAIN}``
passwords. Postfix accepts mail on a loopback port for ``bounce.test`` and
``undeliverable.test``: ``bounces@bounce.test`` (and ``bounces+anything@``,
``recipient_delimiter = +``) is delivered into that Maildir, and any other
address is accepted at SMTP time and then bounced, so Postfix writes a
genuine DSN back to the envelope sender. Nothing leaves loopback: there is no
relayhost, no DNS, and local delivery is off.

Both run unprivileged where they can (mail is owned by ``nobody``); they are
started by the test and stopped by the PID they wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import trustme

from bench.postfix import _MASTER_CF
from tests.peers import exited, free_port, pid_in, require, stop_dovecot, wait_for_port

__all__ = ["Dovecot", "Mailhost", "dovecot", "mailhost"]

MAIL_UID = 65534  # nobody: Dovecot refuses uid 0 for mail


@dataclass
class Dovecot:
    base: Path
    port: int
    conf: Path
    users: dict[str, str]
    ca: trustme.CA | None = None

    @property
    def mail_dir(self) -> Path:
        return self.base / "mail"

    def log(self) -> str:
        path = self.base / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _dovecot_conf(base: Path, port: int, tls: tuple[Path, Path] | None) -> str:
    ssl = (
        f"ssl = required\nssl_cert = <{tls[0]}\nssl_key = <{tls[1]}\n"
        if tls is not None
        else "ssl = no\n"
    )
    listener = (
        f"  inet_listener imap {{\n    port = 0\n  }}\n"
        f"  inet_listener imaps {{\n    address = 127.0.0.1\n"
        f"    port = {port}\n    ssl = yes\n  }}\n"
        if tls is not None
        else f"  inet_listener imap {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n"
        f"  inet_listener imaps {{\n    port = 0\n  }}\n"
    )
    return f"""\
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
info_log_path = {base}/dovecot.log
protocols = imap
listen = 127.0.0.1
{ssl}disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{base}/mail/%n
first_valid_uid = {MAIL_UID}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {base}/users
}}
userdb {{
  driver = static
  args = uid={MAIL_UID} gid={MAIL_UID} home={base}/mail/%n
}}
service imap-login {{
{listener}  chroot =
}}
service anvil {{
  chroot =
}}
service auth {{
  unix_listener auth-userdb {{
    mode = 0666
  }}
}}
"""


@contextlib.asynccontextmanager
async def dovecot(
    users: dict[str, str], *, tls: trustme.CA | None = None
) -> AsyncIterator[Dovecot]:
    """A private Dovecot serving ``users`` ({name: password}) on a free loopback port."""
    program = require("dovecot")
    doveadm = require("doveadm")
    base = Path(tempfile.mkdtemp(prefix="sluice-dovecot-"))
    os.chmod(base, 0o755)
    for d in ("run", "state", "mail"):
        (base / d).mkdir()
    os.chown(base / "mail", MAIL_UID, MAIL_UID)
    (base / "users").write_text("".join(f"{u}:{{PLAIN}}{p}::::::\n" for u, p in users.items()))
    pair = None
    if tls is not None:
        cert = tls.issue_cert("127.0.0.1", "localhost")
        cert.private_key_and_cert_chain_pem.write_to_path(str(base / "server.pem"))
        pair = (base / "server.pem", base / "server.pem")
    conf = base / "dovecot.conf"
    port = free_port()
    conf.write_text(_dovecot_conf(base, port, pair))
    errors = base / "start.err"

    def start() -> int:
        # Dovecot daemonizes and keeps its stdout/stderr open: never a pipe we wait on.
        with errors.open("wb") as err:
            return subprocess.run(
                [program, "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                timeout=30,
            ).returncode

    if await asyncio.to_thread(start) != 0:
        detail = errors.read_text(errors="replace")
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"dovecot did not start: {detail}")
    try:
        await wait_for_port("127.0.0.1", port, within=15)
        yield Dovecot(base, port, conf, dict(users), tls)
    finally:
        await stop_dovecot(doveadm, conf, base / "run", output=base / "stop.log")
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Mailhost:
    """A private Postfix that delivers ``bounces@bounce.test`` into a Dovecot Maildir."""

    base: Path
    port: int
    config_dir: Path

    def log(self) -> str:
        path = self.base / "postfix.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextlib.asynccontextmanager
async def mailhost(
    mail_dir: Path, *, mailboxes: tuple[str, ...] = ("bounces",)
) -> AsyncIterator[Mailhost]:
    """Postfix on a free loopback port, delivering into ``mail_dir/<user>/`` (Maildir)."""
    postfix = require("postfix")
    base = Path(tempfile.mkdtemp(prefix="sluice-mailhost-"))
    os.chmod(base, 0o755)
    config_dir, queue_dir, data_dir = base / "etc", base / "spool", base / "data"
    for d in (config_dir, queue_dir, data_dir):
        d.mkdir()
    shutil.chown(data_dir, "postfix")
    (config_dir / "vmailbox").write_text("".join(f"{m}@bounce.test {m}/\n" for m in mailboxes))
    port = free_port()
    settings = {
        "compatibility_level": "3.6",
        "config_directory": config_dir,
        "queue_directory": queue_dir,
        "data_directory": data_dir,
        "mail_owner": "postfix",
        "setgid_group": "postdrop",
        "myhostname": "mx.bounce.test",
        "mydomain": "bounce.test",
        "myorigin": "$myhostname",
        "mydestination": "",
        "local_transport": "error:local delivery is disabled",
        "default_transport": "error:nothing leaves this test",
        "relay_transport": "error:nothing leaves this test",
        "virtual_mailbox_domains": "bounce.test, undeliverable.test",
        "virtual_mailbox_base": mail_dir,
        "virtual_mailbox_maps": f"texthash:{config_dir}/vmailbox",
        "virtual_uid_maps": f"static:{MAIL_UID}",
        "virtual_gid_maps": f"static:{MAIL_UID}",
        "virtual_minimum_uid": str(MAIL_UID),
        "recipient_delimiter": "+",
        # Accept unknown users at SMTP time, so that the bounce is a DSN.
        "smtpd_reject_unlisted_recipient": "no",
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.0.0/8",
        "disable_dns_lookups": "yes",
        "smtp_host_lookup": "native",
        "smtpd_tls_security_level": "none",
        "smtpd_relay_restrictions": "permit_mynetworks, reject",
        "smtpd_recipient_restrictions": "permit_mynetworks, reject",
        "maillog_file": base / "postfix.log",
        "maillog_file_prefixes": base,
        "alias_maps": "",
        "alias_database": "",
        "biff": "no",
        "smtputf8_enable": "no",
        "queue_run_delay": "1s",
        "minimal_backoff_time": "1s",
        "maximal_backoff_time": "2s",
    }
    (config_dir / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
    master = _MASTER_CF.format(port=f"127.0.0.1:{port}") + (
        "virtual   unix  -       n       n       -       -       virtual\n"
    )
    (config_dir / "master.cf").write_text(master)

    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [postfix, "-c", str(config_dir), *args], capture_output=True, timeout=60
        )

    started = await asyncio.to_thread(run, "start")
    if started.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(
            f"postfix did not start: {(started.stdout + started.stderr).decode(errors='replace')}"
        )
    try:
        await wait_for_port("127.0.0.1", port, within=20)
        yield Mailhost(base, port, config_dir)
    finally:
        master_pid = pid_in(queue_dir / "pid" / "master.pid")
        await asyncio.to_thread(run, "stop")
        # Postfix's master leaves its pid file behind: wait for the process.
        await exited(master_pid)
        shutil.rmtree(base, ignore_errors=True)
