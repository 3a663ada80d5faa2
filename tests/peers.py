"""Real mail software nobody here wrote, run on loopback for a test.

Our aiosmtpd fakes (``tests/upstream.py``) share our own reading of the RFCs;
these do not. Each helper starts a private, unprivileged instance on a port
of the test's and stops it (by the PID it started) when the test ends.

Under CI (``CI`` set) a missing program fails the test: ``.ci/install-system-deps``
installs them, and a skip there would hide a broken install step. Elsewhere it
skips with the package to install.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = [
    "PostfixSasl",
    "SinkMessage",
    "SmtpSink",
    "exited",
    "free_port",
    "pid_in",
    "postfix_sasl",
    "require",
    "smtp_sink",
    "stop_dovecot",
    "wait_for_port",
]

#: program -> the Debian package that ships it
PACKAGES = {
    "smtp-sink": "postfix",
    "smtp-source": "postfix",
    "postfix": "postfix",
    "dovecot": "dovecot-core",
    "doveadm": "dovecot-core",
    "swaks": "swaks",
    "msmtp": "msmtp",
    "php": "php-cli",
    "fail2ban-regex": "fail2ban",
}


def require(program: str) -> str:
    """The path of ``program``; fail under CI, skip elsewhere, when it is missing."""
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin:/sbin")
    if path is not None:
        return path
    package = PACKAGES.get(program, program)
    message = f"{program} is not installed (apt-get install {package}; .ci/install-system-deps)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


async def run_peer(*argv: str, stdin: bytes = b"", within: float = 60) -> tuple[int, str]:
    """Run a peer program to its end (with a deadline): its exit code and its output.

    stdout and stderr together, decoded leniently: swaks and msmtp print the
    dialogue on one and their verdict on the other.
    """
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(stdin), within)
    assert process.returncode is not None
    return process.returncode, out.decode("utf-8", "replace")


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, for programs that cannot bind port 0 themselves."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


async def wait_for_port(host: str, port: int, *, within: float = 10.0) -> None:
    """Poll until ``host:port`` accepts a connection, with a deadline."""
    deadline = time.monotonic() + within
    while True:
        try:
            _reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {within}s") from None
            await asyncio.sleep(0.02)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


@dataclass(frozen=True)
class SinkMessage:
    """One transaction as ``smtp-sink -d`` dumped it."""

    helo: str
    sender: str
    recipients: list[str]
    #: what followed MAIL FROM:<...> (e.g. ``BODY=8BITMIME``, ``SMTPUTF8``)
    mail_args: str
    #: the message as received, without the Received header smtp-sink adds
    data: bytes


@dataclass
class SmtpSink:
    """A running ``smtp-sink`` (Postfix's test server) that dumps every message."""

    host: str
    port: int
    dump_dir: Path
    process: asyncio.subprocess.Process
    flags: tuple[str, ...] = field(default=())

    def messages(self) -> list[SinkMessage]:
        """Every complete transaction dumped so far, oldest first."""
        out = []
        for path in sorted(self.dump_dir.iterdir(), key=lambda p: p.stat().st_mtime_ns):
            out.append(_parse_dump(path.read_bytes()))
        return out

    async def wait_for(self, count: int, *, within: float = 20.0) -> list[SinkMessage]:
        """Poll until ``count`` messages were dumped (deadline ``within``)."""
        deadline = time.monotonic() + within
        while True:
            got = self.messages()
            if len(got) >= count:
                return got
            if time.monotonic() > deadline:
                raise TimeoutError(f"smtp-sink got {len(got)} of {count} messages")
            await asyncio.sleep(0.05)


def _parse_dump(raw: bytes) -> SinkMessage:
    """Split smtp-sink's ``X-*`` preamble and its own Received header from the message."""
    helo, sender, mail_args = "", "", ""
    recipients: list[str] = []
    lines = raw.split(b"\n")
    i = 0
    while i < len(lines) and lines[i].startswith(b"X-"):
        name, _, value = lines[i].decode("utf-8", "replace").partition(": ")
        value = value.rstrip("\r")
        if name == "X-Helo-Args":
            helo = value
        elif name == "X-Mail-Args":
            path, _, mail_args = value.partition(" ")
            sender = path.strip("<>")
        elif name == "X-Rcpt-Args":
            recipients.append(value.split(" ")[0].strip("<>"))
        i += 1
    # smtp-sink's own trace header: "Received:" and its continuation lines.
    if i < len(lines) and lines[i].startswith(b"Received: ") and b"smtp-sink" in raw:
        i += 1
        while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
            i += 1
    return SinkMessage(helo, sender, recipients, mail_args, b"\n".join(lines[i:]))


@contextlib.asynccontextmanager
async def smtp_sink(*flags: str, host: str = "127.0.0.1") -> AsyncIterator[SmtpSink]:
    """Run ``smtp-sink FLAGS`` on a free loopback port, dumping to a temp directory.

    Useful flags (``man smtp-sink``): ``-e`` no ESMTP (EHLO refused), ``-8`` no
    8BITMIME, ``-p`` no PIPELINING, ``-a`` no AUTH, ``-r CMDS`` answer those
    commands 4xx, ``-f CMDS`` 5xx, ``-q CMDS`` disconnect. It never offers SMTPUTF8.
    """
    program = require("smtp-sink")
    # smtp-sink drops privileges to nobody as root, so the dump directory must
    # be writable by it (pytest's tmp_path is 0700).
    dump_dir = Path(tempfile.mkdtemp(prefix="sluice-sink-"))
    os.chmod(dump_dir, 0o777)
    user: Sequence[str] = ("-u", "nobody") if os.geteuid() == 0 else ()
    process: asyncio.subprocess.Process | None = None
    try:
        for _ in range(5):  # another process may take the free port first
            port = free_port(host)
            process = await asyncio.create_subprocess_exec(
                program,
                *user,
                "-d",
                f"{dump_dir}/%Y%m%d%H%M%S.",
                *flags,
                f"{host}:{port}",
                "64",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                await wait_for_port(host, port, within=5.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGKILL)
                await process.wait()
                continue
            break
        else:
            raise RuntimeError("smtp-sink did not start")
        yield SmtpSink(host, port, dump_dir, process, tuple(flags))
    finally:
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(5):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        shutil.rmtree(dump_dir, ignore_errors=True)


# ------------------------------------------------------- Postfix with Dovecot SASL

_POSTFIX_MASTER_CF = """\
{submission} inet n - n - - smtpd
{smtps} inet n - n - - smtpd -o smtpd_tls_wrappermode=yes -o smtpd_tls_security_level=encrypt
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
postlog   unix-dgram n  -       n       -       1       postlogd
"""

_DOVECOT_CONF = """\
base_dir = {base}/dovecot/run
state_dir = {base}/dovecot/state
log_path = {base}/dovecot.log
protocols = none
ssl = no
disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
auth_verbose = yes
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {base}/dovecot/passwd
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={base}/home
}}
service auth {{
  unix_listener auth-client {{
    mode = 0666
  }}
}}
service anvil {{
  chroot =
}}
"""


@dataclass
class PostfixSasl:
    """A private Postfix (submission with STARTTLS, and implicit TLS) doing AUTH via Dovecot."""

    host: str
    #: STARTTLS (and plain) SMTP; AUTH offered after STARTTLS only
    port: int
    #: implicit TLS (``smtpd_tls_wrappermode = yes``)
    tls_port: int
    base: Path

    def postfix_log(self) -> str:
        path = self.base / "postfix.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def dovecot_log(self) -> str:
        path = self.base / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def disconnects(self) -> list[str]:
        """smtpd's per-connection summary lines (``... auth=0/1 quit=1 commands=...``)."""
        return [line for line in self.postfix_log().splitlines() if " disconnect from " in line]


def _run(*args: str, output: Path) -> None:
    """Run a program that may daemonize: its output goes to a file, never a pipe
    we would wait on (a daemon keeps it open)."""
    with output.open("ab") as out:
        done = subprocess.run(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=60, check=False
        )
    if done.returncode != 0:
        detail = output.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(args)} failed: {detail}")


def pid_in(path: Path) -> int | None:
    """The PID a daemon wrote in ``path`` (Postfix pads it with spaces), if any."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process: not gone, and not a zombie.

    A daemon that forked itself away has init for its parent; an init that
    reaps lazily (a container's, a VM's) leaves it a zombie for a second or
    more after it exited, and ``kill(pid, 0)`` still succeeds on a zombie.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone, and reaped
        return False
    # "pid (comm) S ...": the state follows the last ')' (comm may hold one).
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


async def exited(pid: int | None, *, within: float = 20.0) -> None:
    """Wait (bounded) until the daemon ``pid`` we started has exited."""
    if pid is None:
        return
    for _ in range(int(within / 0.05)):
        if not _running(pid):
            return
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def postfix_sasl(
    cert_file: Path,
    key_file: Path,
    users: dict[str, str],
    *,
    mechanisms: str = "plain login",
    host: str = "127.0.0.1",
) -> AsyncIterator[PostfixSasl]:
    """Run a private Postfix with SASL AUTH through a private Dovecot, on loopback.

    Everything Postfix accepts is discarded (``default_transport = discard``,
    no local domains): nothing leaves loopback. ``cert_file``/``key_file``
    (PEM) serve STARTTLS and the implicit-TLS port; ``users`` maps login to
    password (Dovecot passwd-file, ``{PLAIN}``); ``mechanisms`` is Dovecot's
    ``auth_mechanisms``, what AUTH offers (``cram-md5`` works with those
    plain passwords). Postfix logs to
    ``postfix.log`` and Dovecot to ``dovecot.log`` in ``base``; both are
    stopped (``postfix stop``, ``doveadm stop``) when the block ends.
    """
    postfix = require("postfix")
    dovecot = require("dovecot")
    doveadm = require("doveadm")
    # Postfix's daemons run as postfix and Dovecot's as dovecot/nobody: they must
    # reach these directories (pytest's tmp_path is 0700).
    base = Path(tempfile.mkdtemp(prefix="sluice-postfix-"))
    os.chmod(base, 0o755)
    etc, spool, data = base / "etc", base / "spool", base / "data"
    for d in (etc, spool, data, base / "dovecot", base / "home", base / "tls"):
        d.mkdir(mode=0o755)
    for src, name in ((cert_file, "cert.pem"), (key_file, "key.pem")):
        (base / "tls" / name).write_bytes(src.read_bytes())
        os.chmod(base / "tls" / name, 0o644)
    passwd = base / "dovecot" / "passwd"
    passwd.write_text("".join(f"{u}:{{PLAIN}}{p}::::::\n" for u, p in users.items()))
    os.chmod(passwd, 0o644)
    conf = base / "dovecot" / "dovecot.conf"
    conf.write_text(_DOVECOT_CONF.format(base=base, mechanisms=mechanisms))
    submission, smtps = free_port(host), free_port(host)
    main_cf = {
        "compatibility_level": "3.6",
        "config_directory": etc,
        "queue_directory": spool,
        "data_directory": data,
        "mail_owner": "postfix",
        "setgid_group": "postdrop",
        "myhostname": "postfix.sasl.invalid",
        "mydomain": "sasl.invalid",
        "myorigin": "$myhostname",
        # No local domains and every transport is discard: nothing is delivered.
        "mydestination": "",
        "local_transport": "discard",
        "default_transport": "discard",
        "relay_transport": "discard",
        "inet_interfaces": host,
        "inet_protocols": "ipv4",
        "mynetworks": "",
        "smtp_host_lookup": "native",
        "disable_dns_lookups": "yes",
        "smtpd_tls_security_level": "may",
        "smtpd_tls_auth_only": "yes",
        "smtpd_tls_cert_file": base / "tls" / "cert.pem",
        "smtpd_tls_key_file": base / "tls" / "key.pem",
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_sasl_type": "dovecot",
        "smtpd_sasl_path": base / "dovecot" / "run" / "auth-client",
        "smtpd_relay_restrictions": "permit_sasl_authenticated, reject",
        "smtpd_recipient_restrictions": "permit_sasl_authenticated, reject",
        "maillog_file": base / "postfix.log",
        "maillog_file_prefixes": base,
        "biff": "no",
        "alias_maps": "",
        "alias_database": "",
    }
    (etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main_cf.items()))
    (etc / "master.cf").write_text(
        _POSTFIX_MASTER_CF.format(submission=f"{host}:{submission}", smtps=f"{host}:{smtps}")
    )
    shutil.chown(data, "postfix")
    out = base / "start.log"
    dovecot_started = postfix_started = False
    try:
        await asyncio.to_thread(_run, dovecot, "-c", str(conf), output=out)
        dovecot_started = True
        socket_path = base / "dovecot" / "run" / "auth-client"
        deadline = time.monotonic() + 10
        while not socket_path.exists():  # bounded: 10 s
            if time.monotonic() > deadline:
                raise RuntimeError(f"dovecot did not create {socket_path}: {base}/dovecot.log")
            await asyncio.sleep(0.05)
        await asyncio.to_thread(_run, postfix, "-c", str(etc), "start", output=out)
        postfix_started = True
        await wait_for_port(host, submission, within=20)
        await wait_for_port(host, smtps, within=20)
        yield PostfixSasl(host, submission, smtps, base)
    finally:
        stops = []
        if postfix_started:
            stops.append(_stop_postfix(postfix, etc, spool, output=out))
        if dovecot_started:
            stops.append(stop_dovecot(doveadm, conf, base / "dovecot" / "run", output=out))
        # Independent: stopped together, each waited for until its master is gone.
        await asyncio.gather(*stops)
        shutil.rmtree(base, ignore_errors=True)


async def _stop_postfix(postfix: str, etc: Path, spool: Path, *, output: Path) -> None:
    """``postfix stop``, then wait for its master to exit (it leaves its pid file behind)."""
    master = pid_in(spool / "pid" / "master.pid")
    await asyncio.to_thread(_run, postfix, "-c", str(etc), "stop", output=output)
    await exited(master)


async def stop_dovecot(doveadm: str, conf: Path, run_dir: Path, *, output: Path) -> None:
    """Stop a private Dovecot: SIGTERM to its master, then wait for the master to exit.

    That is what ``doveadm stop`` does, but doveadm then waits while the master's
    pid answers ``kill(pid, 0)``, which a zombie does: under an init that reaps
    late, each stop took 2-3 s instead of about one. The master may write its
    pid file after its listeners answer, so a missing one is waited for (5 s);
    ``doveadm stop`` is the fallback if it never comes.
    """
    for _ in range(100):  # bounded: 5 s
        if (master := pid_in(run_dir / "master.pid")) is not None:
            break
        await asyncio.sleep(0.05)
    else:
        with contextlib.suppress(RuntimeError):
            await asyncio.to_thread(_run, doveadm, "-c", str(conf), "stop", output=output)
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(master, signal.SIGTERM)
    await exited(master)
