"""Clients beyond loopback (issue #26, section 1): TLS listeners, AUTH, back-off, open relay.

One daemon process for the module (``smtp.workers: 1``: the accept worker
does the TLS and AUTH), with three listeners on loopback addresses:

* ``starttls``: STARTTLS, AUTH required except from 127.0.0.1/32 (the
  "no-AUTH network"); a client bound to 127.0.0.2 stands for one from a
  network beyond it;
* ``implicit``: TLS from the first byte (port 465 style), AUTH required;
* ``clear``: no TLS, AUTH allowed in clear by the explicit key (loopback only),
  and only 127.0.0.2 may connect (the listener's own ``networks``).

Real clients for what users run: swaks and msmtp. A small raw client (plain
asyncio streams) where a test must look at single replies or the certificate.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import re
import signal
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
import trustme
from argon2 import PasswordHasher

from relay.config import SmtpSettings, SmtpUser, load
from relay.errors import ConfigError
from relay.inbound import auth as auth_module
from relay.inbound.auth import VERIFY_AT_ONCE, SmtpAuth, failure_line
from relay.tls import server_context
from tests.conftest import SluiceFactory, eventually, fast_config, provider_for, write_config
from tests.daemon_proc import LISTENING, DaemonProcess, run_cli
from tests.peers import require, run_peer
from tests.upstream import TestUpstream

pytestmark = pytest.mark.asyncio(loop_scope="module")

HASHED_USER, HASHED_PW = "app1", "correct horse battery"
ENV_USER, ENV_PW = "app2", "s3cret-from-env"
FAILURE_DELAY = 0.3
FAILURE_LIMIT = 3
#: README's fail2ban filter, as written there
FAIL2BAN_REGEX = re.search(
    r"^failregex = (.+)$", (Path(__file__).parents[2] / "README.md").read_text(), re.MULTILINE
).group(1)  # type: ignore[union-attr]


@dataclass
class Relay:
    daemon: DaemonProcess
    upstream: TestUpstream
    config: Path
    ca: trustme.CA
    ca_file: Path
    cert_file: Path
    key_file: Path
    ports: dict[str, int]
    admin_port: int
    tmp: Path


def _issue(ca: trustme.CA, cert_file: Path, key_file: Path) -> None:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def relay(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Relay]:
    tmp = tmp_path_factory.mktemp("auth")
    ca = trustme.CA()
    ca_file = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert_file, key_file = tmp / "smtp.crt", tmp / "smtp.key"
    _issue(ca, cert_file, key_file)
    tls = {"cert_file": str(cert_file), "key_file": str(key_file)}
    upstream = await TestUpstream().start()
    cfg = fast_config(
        tmp,
        [provider_for(upstream)],
        smtp={
            "listen": [
                {
                    "address": "127.0.0.1:0",
                    "tls": "starttls",
                    **tls,
                    "auth": "required",
                    "no_auth_networks": ["127.0.0.1/32"],
                },
                {"address": "127.0.0.6:0", "tls": "implicit", **tls, "auth": "required"},
                {
                    "address": "127.0.0.7:0",
                    "auth": "required",
                    "allow_auth_without_tls": True,
                    "networks": ["127.0.0.2/32"],
                },
            ],
            "users": [
                {"name": HASHED_USER, "password_hash": PasswordHasher().hash(HASHED_PW)},
                {"name": ENV_USER, "password_env": "SLUICE_TEST_SMTP_PW"},
            ],
            "auth_failure_delay": f"{FAILURE_DELAY}s",
            "auth_failure_limit": FAILURE_LIMIT,
            "auth_lockout": "10m",
            "hostname": "sluice.test",
            "workers": 1,
        },
        admin={"enabled": True, "listen": "127.0.0.1:0"},
    )
    path = write_config(tmp / "sluice.yaml", cfg)
    daemon = DaemonProcess(path, {"SLUICE_TEST_SMTP_PW": ENV_PW})
    try:
        await daemon.start()
        await daemon.wait_line("accept worker 0 started")
        ports = [int(m.group(2)) for line in daemon.lines if (m := LISTENING.search(line))]
        admin = await daemon.wait_line(re.compile(r"listening admin=\S*:(\d+)"))
        yield Relay(
            daemon,
            upstream,
            path,
            ca,
            ca_file,
            cert_file,
            key_file,
            dict(zip(["starttls", "implicit", "clear"], ports, strict=True)),
            int(admin.group(1)),
            tmp,
        )
    finally:
        await daemon.kill()
        await upstream.stop()


async def _delivered(up: TestUpstream, subject: str, within: float = 15.0) -> bytes:
    """The message with ``subject`` once the upstream has it (polled, with a deadline)."""
    needle = f"Subject: {subject}\r\n".encode()
    async with asyncio.timeout(within):
        while True:
            for message in up.messages:
                if needle in message.data:
                    return message.data
            await asyncio.sleep(0.05)


def _swaks(r: Relay, listener: str, subject: str, *extra: str) -> list[str]:
    return [
        require("swaks"),
        "--server",
        f"127.0.0.{ {'starttls': 1, 'implicit': 6, 'clear': 7}[listener] }:{r.ports[listener]}",
        "--from",
        "app@example.org",
        "--to",
        "someone@example.net",
        "--header",
        f"Subject: {subject}",
        "--ehlo",
        "client.test",
        *extra,
    ]


class Raw:
    """A plain SMTP client on asyncio streams: one command, one reply, STARTTLS by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, *, source: str = "127.0.0.1") -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        raw = cls(reader, writer)
        assert (await raw.reply()).startswith("220")
        return raw

    async def reply(self) -> str:
        lines = []
        async with asyncio.timeout(15):
            while True:
                line = (await self.reader.readline()).decode()
                assert line, "connection closed"
                lines.append(line.rstrip("\r\n"))
                if line[3:4] != "-":
                    return "\n".join(lines)

    async def send(self, line: str) -> str:
        self.writer.write(line.encode() + b"\r\n")
        return await self.reply()

    async def starttls(self, ca_file: Path) -> bytes:
        """STARTTLS and the handshake; the server certificate (DER)."""
        assert (await self.send("STARTTLS")).startswith("220")
        ctx = ssl.create_default_context(cafile=str(ca_file))
        await self.writer.start_tls(ctx, server_hostname="127.0.0.1")
        der = self.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert der is not None
        return bytes(der)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


def _plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


# ------------------------------------------------------------- real clients


async def test_swaks_starttls_auth_plain_is_accepted_and_delivered(relay: Relay) -> None:
    code, out = await run_peer(
        *_swaks(
            relay,
            "starttls",
            "swaks starttls",
            "--tls",
            "--tls-verify",
            "--tls-ca-path",
            str(relay.ca_file),
            "--auth",
            "PLAIN",
            "--auth-user",
            HASHED_USER,
            "--auth-password",
            HASHED_PW,
            "--local-interface",
            "127.0.0.2",
        )
    )
    assert code == 0, out
    assert "235 2.7.0 Authentication successful" in out
    # RFC 3848: the trace line says the mail came over TLS, authenticated.
    assert b"(Sluice) with ESMTPSA id" in await _delivered(relay.upstream, "swaks starttls")


async def test_msmtp_starttls_auth_is_accepted_and_delivered(relay: Relay) -> None:
    msmtp = require("msmtp")
    rc = relay.tmp / "msmtprc"
    rc.write_text(
        "account default\n"
        "host 127.0.0.1\n"
        f"port {relay.ports['starttls']}\n"
        "tls on\n"
        "tls_starttls on\n"
        f"tls_trust_file {relay.ca_file}\n"
        "auth on\n"
        f"user {ENV_USER}\n"
        f"password {ENV_PW}\n"
        "from app@example.org\n"
    )
    rc.chmod(0o600)
    message = b"From: app@example.org\r\nSubject: msmtp starttls\r\n\r\nover TLS with AUTH\r\n"
    code, out = await run_peer(msmtp, "-C", str(rc), "someone@example.net", stdin=message)
    assert code == 0, out
    assert b"over TLS with AUTH" in await _delivered(relay.upstream, "msmtp starttls")


async def test_swaks_implicit_tls_auth_login_is_delivered(relay: Relay) -> None:
    code, out = await run_peer(
        *_swaks(
            relay,
            "implicit",
            "swaks implicit",
            "--tlsc",
            "--tls-verify",
            "--tls-ca-path",
            str(relay.ca_file),
            "--auth",
            "LOGIN",
            "--auth-user",
            HASHED_USER,
            "--auth-password",
            HASHED_PW,
        )
    )
    assert code == 0, out
    assert b"(Sluice) with ESMTPSA id" in await _delivered(relay.upstream, "swaks implicit")


async def test_auth_in_clear_is_neither_offered_nor_taken(relay: Relay) -> None:
    # swaks asked for AUTH without TLS: the server does not offer it.
    code, out = await run_peer(
        *_swaks(
            relay,
            "starttls",
            "never",
            "--auth",
            "PLAIN",
            "--auth-user",
            HASHED_USER,
            "--auth-password",
            HASHED_PW,
        )
    )
    assert code != 0, out
    assert "250-AUTH" not in out
    # A client that sends it anyway is refused before any password is read.
    raw = await Raw.open(relay.ports["starttls"])
    ehlo = await raw.send("EHLO client.test")
    assert "STARTTLS" in ehlo and "AUTH" not in ehlo
    assert (await raw.send(f"AUTH PLAIN {_plain(HASHED_USER, HASHED_PW)}")).startswith("538 5.7.11")
    # After STARTTLS it is offered (and only PLAIN and LOGIN).
    await raw.starttls(relay.ca_file)
    assert "250-AUTH LOGIN PLAIN" in await raw.send("EHLO client.test")
    await raw.close()


async def test_a_client_beyond_the_no_auth_network_gets_530(relay: Relay) -> None:
    code, out = await run_peer(
        *_swaks(relay, "starttls", "no auth from .2", "--local-interface", "127.0.0.2", "--tls")
    )
    assert code != 0, out
    assert "530 5.7.0 Authentication required" in out
    # From the no-AUTH network (127.0.0.1/32) the same mail is taken without AUTH.
    code, out = await run_peer(*_swaks(relay, "starttls", "no auth from .1"))
    assert code == 0, out
    assert b"(Sluice) with ESMTP id" in await _delivered(relay.upstream, "no auth from .1")


async def test_clear_auth_only_where_the_key_allows_it_on_loopback(relay: Relay) -> None:
    code, out = await run_peer(
        *_swaks(
            relay,
            "clear",
            "clear auth",
            "--auth",
            "PLAIN",
            "--auth-user",
            ENV_USER,
            "--auth-password",
            ENV_PW,
            "--local-interface",
            "127.0.0.2",
        )
    )
    assert code == 0, out
    assert b"(Sluice) with ESMTPA id" in await _delivered(relay.upstream, "clear auth")
    # Outside that listener's networks (127.0.0.1 is in smtp.allowed_networks): refused.
    reader, writer = await asyncio.open_connection("127.0.0.7", relay.ports["clear"])
    greeting = (await asyncio.wait_for(reader.readline(), 10)).decode()
    assert greeting.startswith("554 5.7.1 Access denied: 127.0.0.1 is not in this listener's")
    writer.close()


async def test_tls_13_or_12_with_aead_suites_only(relay: Relay) -> None:
    async def handshake(**options: object) -> str:
        ctx = ssl.create_default_context(cafile=str(relay.ca_file))
        for name, value in options.items():
            if name == "ciphers":
                ctx.set_ciphers(str(value))
            else:
                setattr(ctx, name, value)
        reader, writer = await asyncio.open_connection(
            "127.0.0.6", relay.ports["implicit"], ssl=ctx, server_hostname="127.0.0.1"
        )
        greeting = (await asyncio.wait_for(reader.readline(), 10)).decode()
        version = writer.get_extra_info("ssl_object").version()
        writer.close()
        assert greeting.startswith("220")
        return str(version)

    assert await handshake() == "TLSv1.3"
    tls12 = ssl.TLSVersion.TLSv1_2
    assert await handshake(maximum_version=tls12, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256") == (
        "TLSv1.2"
    )
    # A CBC suite (no AEAD) is refused. (TLS 1.1 cannot be offered by this Python without a
    # DeprecationWarning; the floor is server_context's minimum_version, checked below.)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await handshake(maximum_version=tls12, ciphers="ECDHE-ECDSA-AES128-SHA")


# ------------------------------------------------------------ failed AUTH


def _metric(relay: Relay, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{relay.admin_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_failed_auth_is_slowed_then_refused_logged_and_counted(relay: Relay) -> None:
    failed = 'sluice_smtp_auth_total{result="failed"}'
    before = await asyncio.to_thread(_metric, relay, failed)
    raw = await Raw.open(relay.ports["starttls"], source="127.0.0.3")
    await raw.send("EHLO client.test")
    await raw.starttls(relay.ca_file)
    await raw.send("EHLO client.test")
    for _ in range(FAILURE_LIMIT):
        started = time.monotonic()
        reply = await raw.send(f"AUTH PLAIN {_plain(HASHED_USER, 'wrong')}")
        assert reply.startswith("535 5.7.8"), reply
        assert time.monotonic() - started >= FAILURE_DELAY
    # Over the limit: refused at once, even with the right password, and disconnected.
    reply = await raw.send(f"AUTH PLAIN {_plain(HASHED_USER, HASHED_PW)}")
    assert reply.startswith("421 4.7.0 Too many failed authentications from 127.0.0.3"), reply
    assert await asyncio.wait_for(raw.reader.read(), 10) == b""
    await raw.close()
    # A new connection from there is served, but AUTH is not (no password checked).
    again = await Raw.open(relay.ports["starttls"], source="127.0.0.3")
    await again.send("EHLO client.test")
    await again.starttls(relay.ca_file)
    await again.send("EHLO client.test")
    reply = await again.send(f"AUTH PLAIN {_plain(HASHED_USER, HASHED_PW)}")
    assert reply.startswith("421 4.7.0"), reply
    await again.close()
    # Another address is not locked out.
    other = await Raw.open(relay.ports["starttls"], source="127.0.0.4")
    await other.send("EHLO client.test")
    await other.starttls(relay.ca_file)
    await other.send("EHLO client.test")
    assert (await other.send(f"AUTH PLAIN {_plain(HASHED_USER, HASHED_PW)}")).startswith("235")
    await other.close()

    line = await relay.daemon.wait_line("auth failed client=127.0.0.3")
    assert "user=app1 mechanism=PLAIN reason=bad-password" in line.string
    assert "wrong" not in line.string
    await _fail2ban_matches(relay, line.string, "127.0.0.3")

    async def counted() -> bool:
        return await asyncio.to_thread(_metric, relay, failed) == before + FAILURE_LIMIT

    await eventually(counted, within=10, interval=0.1)
    assert await asyncio.to_thread(_metric, relay, 'sluice_smtp_auth_total{result="locked"}') >= 1


async def _fail2ban_matches(relay: Relay, line: str, ip: str) -> None:
    """README's filter, run by fail2ban itself against the daemon's real log line."""
    log = relay.tmp / "sluice.log"
    log.write_text(line + "\n")
    fail2ban_regex = require("fail2ban-regex")
    code, out = await run_peer(
        fail2ban_regex, "-v", "--print-all-matched", str(log), FAIL2BAN_REGEX
    )
    assert code == 0, out
    assert re.search(r"Lines: 1 lines, 0 ignored, 1 matched", out), out
    assert ip in out


# ------------------------------------------------------------ certificate reload


async def test_sighup_serves_a_new_certificate_and_keeps_open_sessions(relay: Relay) -> None:
    port = relay.ports["starttls"]
    old_session = await Raw.open(port, source="127.0.0.2")
    await old_session.send("EHLO client.test")
    old_cert = await old_session.starttls(relay.ca_file)

    _issue(relay.ca, relay.cert_file, relay.key_file)
    mark = len(relay.daemon.lines)
    relay.daemon.send_signal(signal.SIGHUP)
    await relay.daemon.wait_line("configuration reloaded", start=mark)

    async def new_cert() -> bytes:
        raw = await Raw.open(port)
        await raw.send("EHLO client.test")
        cert = await raw.starttls(relay.ca_file)
        await raw.close()
        return cert

    async def changed() -> bytes | None:
        cert = await new_cert()
        return cert if cert != old_cert else None

    # The worker takes the new settings when it next reads its channel.
    cert = await eventually(changed, within=10, interval=0.1)
    assert cert != old_cert

    # The session opened before the reload goes on, on its old certificate.
    assert (await old_session.send("EHLO client.test")).startswith("250")
    assert (await old_session.send(f"AUTH PLAIN {_plain(ENV_USER, ENV_PW)}")).startswith("235")
    assert (await old_session.send("MAIL FROM:<app@example.org>")).startswith("250")
    assert (await old_session.send("RCPT TO:<someone@example.net>")).startswith("250")
    assert (await old_session.send("DATA")).startswith("354")
    reply = await old_session.send("Subject: across the reload\r\n\r\nstill here\r\n.")
    assert reply.startswith("250 2.0.0"), reply
    await old_session.close()
    await _delivered(relay.upstream, "across the reload")


# ------------------------------------------------------------ configuration


BASE = """\
smtp:
  listen: {listen}
  allowed_networks: {networks}
{extra}spool:
  path: {spool}
providers:
  - id: main
    host: 127.0.0.1
    port: 2526
    encryption: none
"""


def _config(tmp: Path, listen: str, networks: str = "[127.0.0.0/8]", extra: str = "") -> Path:
    path = tmp / "open.yaml"
    path.write_text(
        BASE.format(listen=listen, networks=networks, extra=extra, spool=tmp / "s.sqlite3")
    )
    return path


async def test_sluice_check_refuses_an_open_relay_unless_acknowledged(tmp_path: Path) -> None:
    path = _config(tmp_path, '["0.0.0.0:2525"]', "[127.0.0.0/8, 172.17.0.0/16]")
    code, out, err = await run_cli("check", "-c", str(path))
    assert code != 0, (out, err)
    assert f"{path}:2: smtp.listen.0: open relay: 0.0.0.0:2525" in err, err
    assert "172.17.0.0/16" in err and "allow_unauthenticated_relay_from_networks" in err
    # Acknowledged by the key that says what it does: accepted.
    path = _config(
        tmp_path,
        '["0.0.0.0:2525"]',
        "[127.0.0.0/8, 172.17.0.0/16]",
        "  allow_unauthenticated_relay_from_networks: true\n",
    )
    code, out, err = await run_cli("check", "-c", str(path))
    assert code == 0, (out, err)
    # The same networks, but AUTH required beyond loopback: not an open relay.
    path = _config(tmp_path, '["0.0.0.0:2525"]')
    code, out, err = await run_cli("check", "-c", str(path))
    assert code == 0, (out, err)


@pytest.mark.parametrize(
    ("listen", "key", "message"),
    [
        ('[{address: "0.0.0.0:587", tls: none}]', "smtp.listen.0.auth", "needs tls"),
        (
            '[{address: "0.0.0.0:587", tls: none, auth: required, allow_auth_without_tls: true}]',
            "smtp.listen.0.allow_auth_without_tls",
            "not a loopback address",
        ),
        ('[{address: "0.0.0.0:587", tls: starttls}]', "smtp.listen.0.tls", "needs cert_file"),
        (
            '[{address: "127.0.0.1:587", auth: required, allow_auth_without_tls: true}]',
            "smtp.listen.0.auth",
            "smtp.users is empty",
        ),
    ],
)
async def test_listener_mistakes_are_config_errors(
    tmp_path: Path, listen: str, key: str, message: str
) -> None:
    path = _config(tmp_path, listen)
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert any(key in issue and message in issue for issue in caught.value.issues), (
        caught.value.issues
    )


# ------------------------------------------------------------ the checker, in process


@functools.cache
def _heavy_hash() -> str:
    """argon2 with twice the default work: long enough to see the loop go on meanwhile."""
    return PasswordHasher(time_cost=6).hash(HASHED_PW)


def _settings(**smtp: object) -> SmtpSettings:
    return SmtpSettings.model_validate(
        {"users": [{"name": HASHED_USER, "password_hash": _heavy_hash()}], **smtp}
    )


async def test_argon2_runs_off_the_loop_two_at_a_time() -> None:
    settings = _settings()
    auth = SmtpAuth(lambda: settings, lambda result: None)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    running = 0
    peak = 0
    real = auth_module._check

    def counting(user: SmtpUser, password: bytes) -> bool:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            return real(user, password)
        finally:
            running -= 1

    tick = asyncio.create_task(ticker())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(auth_module, "_check", counting)
        started = time.monotonic()
        results = await asyncio.gather(
            *(
                auth.authenticate(f"10.0.0.{i}", "PLAIN", HASHED_USER.encode(), HASHED_PW.encode())
                for i in range(3)
            )
        )
        took = time.monotonic() - started
    tick.cancel()
    assert [name for name, _ in results] == [HASHED_USER] * 3
    assert peak == VERIFY_AT_ONCE
    # The loop kept turning while argon2 ran: a tick every 5 ms, most of them on time.
    assert ticks >= took / 0.005 / 4, (ticks, took)
    # Remembered: the same user and password again costs no argon2.
    calls_before = peak
    name, reply = await auth.authenticate("10.0.0.9", "LOGIN", b"app1", HASHED_PW.encode())
    assert (name, reply) == (HASHED_USER, "235 2.7.0 Authentication successful")
    assert peak == calls_before and running == 0


async def test_the_lockout_ends_auth_lockout_after_the_last_failure() -> None:
    now = 1000.0
    settings = _settings(auth_failure_delay=0, auth_failure_limit=2, auth_lockout="60s")
    auth = SmtpAuth(lambda: settings, lambda result: None, clock=lambda: now)
    for _ in range(2):
        assert (await auth.authenticate("10.1.1.1", "PLAIN", b"nobody", b"x"))[0] is None
    assert await auth.locked_for("10.1.1.1") == 60
    name, reply = await auth.authenticate("10.1.1.1", "PLAIN", b"app1", HASHED_PW.encode())
    assert name is None and reply.startswith("421 4.7.0")
    assert await auth.locked_for("10.1.1.2") == 0
    now += 61
    assert await auth.locked_for("10.1.1.1") == 0
    name, _ = await auth.authenticate("10.1.1.1", "PLAIN", b"app1", HASHED_PW.encode())
    assert name == HASHED_USER


class _Unanswered:
    """A failure count that never answers in time (an accept worker's daemon stuck or gone)."""

    async def failures(self, ip: str, limit: int, lockout: float, *, failed: bool) -> float:
        raise TimeoutError


async def test_a_failure_count_that_does_not_answer_gets_454_without_a_check(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Like a MAIL whose rate question goes unanswered (451): a temporary refusal, said as
    what it is; not a traceback, and not a password check that no lockout would limit."""
    settings = _settings(auth_failure_delay=0)
    results: list[str] = []
    auth = SmtpAuth(lambda: settings, results.append, failures=_Unanswered())
    checked: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(auth_module, "_check", lambda user, password: checked.append(user.name))
        name, reply = await auth.authenticate("10.3.3.3", "PLAIN", b"app1", HASHED_PW.encode())
    assert name is None
    assert reply == "454 4.7.0 Temporary authentication failure; try again later"
    assert checked == [] and results == ["unavailable"]
    assert "client=10.3.3.3 mechanism=PLAIN reason=no-failure-count" in caplog.text
    assert "Traceback" not in caplog.text


async def test_an_unknown_user_waits_as_long_as_a_wrong_password() -> None:
    settings = _settings(auth_failure_delay=f"{FAILURE_DELAY}s")
    auth = SmtpAuth(lambda: settings, lambda result: None)
    for user in (b"nobody", HASHED_USER.encode()):
        started = time.monotonic()
        name, reply = await auth.authenticate("10.2.2.2", "PLAIN", user, b"wrong")
        assert name is None and reply.startswith("535 5.7.8")
        assert time.monotonic() - started >= FAILURE_DELAY


async def test_the_failure_line_never_shows_what_would_break_it() -> None:
    line = failure_line("192.0.2.1", 'a b"c\n=d', "LOGIN", "unknown-user")
    assert line == "auth failed client=192.0.2.1 user=a?b?c??d mechanism=LOGIN reason=unknown-user"


async def test_a_relative_cert_file_is_read_from_the_systemd_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert = trustme.CA().issue_cert("127.0.0.1")
    creds = tmp_path / "credentials"
    creds.mkdir()
    cert.private_key_and_cert_chain_pem.write_to_path(str(creds / "smtp-pem"))
    monkeypatch.chdir(tmp_path)  # no file of that name here
    path = _config(
        tmp_path,
        '[{address: "127.0.0.1:587", tls: starttls, cert_file: smtp-pem, key_file: smtp-pem}]',
    )
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    entry = load(path).smtp.listen[0]
    assert entry.cert_file is not None and entry.key_file is not None
    assert server_context(entry.cert_file, entry.key_file).minimum_version == ssl.TLSVersion.TLSv1_2
    # Without the credential, the same config is refused with its line.
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert any(
        "smtp.listen.0.cert_file: cannot load the certificate" in issue
        for issue in caught.value.issues
    ), caught.value.issues


@pytest.mark.asyncio(loop_scope="function")
async def test_auth_optional_in_process_takes_mail_with_or_without_it(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    """``auth: optional``, accepting in the daemon's own process (``smtp.workers: 0``)."""
    listen = [{"address": "127.0.0.1:0", "auth": "optional", "allow_auth_without_tls": True}]
    users = [{"name": ENV_USER, "password": ENV_PW}]
    async with sluice([provider_for(upstream)], smtp={"listen": listen, "users": users}) as s:
        raw = await Raw.open(s.port)
        assert "250-AUTH LOGIN PLAIN" in await raw.send("EHLO client.test")
        assert (await raw.send("MAIL FROM:<app@example.org>")).startswith("250")
        assert (await raw.send("RSET")).startswith("250")
        assert (await raw.send(f"AUTH PLAIN {_plain(ENV_USER, ENV_PW)}")).startswith("235")
        assert (await raw.send("MAIL FROM:<app@example.org>")).startswith("250")
        await raw.close()
