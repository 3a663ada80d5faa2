"""``smtp.policies`` through a real daemon (``sluice serve``, two accept workers) and real
clients (swaks, msmtp), delivering to two real upstreams.

One daemon for the module, with a plain listener on 127.0.0.1 and a STARTTLS one with
AUTH required on 127.0.0.4 (users alice and bob). Its policies, first match wins:

0. user alice: sender ``alice@example.org`` only;
1. clients on 127.0.0.2, 127.0.0.3 and 127.0.0.6: 3 messages an hour, counted per
   address (the rate tests bind there, each test to addresses of its own);
2. the rest of 127.0.0.0/8: sender ``app@example.org`` or ``@news.example.org``, From
   domain ``example.org``, 20 KiB, routed to ``bulk`` on stream ``newsletter``.

``smtp.max_connections: 1`` per worker: two sessions open at once are in two processes,
which is how the rate and failed-AUTH tests show the count is shared between them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
import trustme

from relay.config import Rate, SmtpSettings
from relay.inbound.listener import RelayHandler, start_listeners
from relay.store.spool import Spool
from tests.conftest import eventually, fast_config, provider_for, raw_session, write_config
from tests.daemon_proc import LISTENING, DaemonProcess, start_daemon
from tests.peers import require, run_peer
from tests.upstream import TestUpstream

pytestmark = pytest.mark.asyncio(loop_scope="module")

SIZE_LIMIT = 20 * 1024
PASSWORD = "policy-test-password"


@dataclass
class Relay:
    daemon: DaemonProcess
    #: the default provider (first by priority) and the policy's route
    up1: TestUpstream
    bulk: TestUpstream
    #: the STARTTLS listener with AUTH required
    auth_port: int

    @property
    def port(self) -> int:
        return self.daemon.port


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def relay(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> AsyncIterator[Relay]:
    up1 = await TestUpstream().start()
    bulk = await TestUpstream().start()
    tmp = tmp_path_factory.mktemp("policy")
    cert = ca.issue_cert("127.0.0.4")
    cert.cert_chain_pems[0].write_to_path(str(tmp / "smtp.crt"))
    cert.private_key_pem.write_to_path(str(tmp / "smtp.key"))
    submission = {
        "address": "127.0.0.4:0",
        "tls": "starttls",
        "cert_file": str(tmp / "smtp.crt"),
        "key_file": str(tmp / "smtp.key"),
        "auth": "required",
    }
    cfg = fast_config(
        tmp,
        [provider_for(up1, "up1", priority=1), provider_for(bulk, "bulk", priority=2)],
        smtp={
            "listen": ["127.0.0.1:0", submission],
            "users": [
                {"name": "alice", "password_env": "POLICY_TEST_PW"},
                {"name": "bob", "password_env": "POLICY_TEST_PW"},
            ],
            "workers": 2,
            "max_connections": 1,
            "auth_failure_delay": 0,  # the default 1 s would only slow the failed-AUTH test
            "max_message_size": "1MiB",
            "policies": [
                {"users": ["alice"], "allowed_senders": ["alice@example.org"]},
                {"networks": ["127.0.0.2/31", "127.0.0.6/32"], "rate": "3/h"},
                {
                    "networks": ["127.0.0.0/8"],
                    "allowed_senders": ["app@example.org", "@news.example.org"],
                    "allowed_from_domains": ["example.org"],
                    "max_message_size": SIZE_LIMIT,
                    "providers": ["bulk"],
                    "stream": "newsletter",
                },
            ],
        },
    )
    path = write_config(tmp / "sluice.yaml", cfg)
    daemon = await start_daemon(path, env={"POLICY_TEST_PW": PASSWORD})
    try:
        ports = [int(m.group(2)) for line in daemon.lines if (m := LISTENING.search(line))]
        assert ports[0] == daemon.port
        yield Relay(daemon, up1, bulk, ports[1])
    finally:
        await daemon.stop()
        await up1.stop()
        await bulk.stop()


async def _swaks(relay: Relay, *args: str, source: str = "127.0.0.1") -> tuple[int, str]:
    return await run_peer(
        require("swaks"),
        "--server",
        f"127.0.0.1:{relay.port}",
        "--local-interface",
        source,
        "--to",
        "rcpt@example.net",
        *args,
    )


def _message(tmp_path: Path, from_: str, body: str = "hello", *extra: str) -> str:
    """A message file for swaks --data (swaks adds the final dot)."""
    head = [f"From: {from_}", "To: rcpt@example.net", "Subject: policy", *extra]
    path = tmp_path / "msg.eml"
    path.write_bytes(("\r\n".join(head) + "\r\n\r\n" + body).encode())
    return str(path)


class Session:
    """A raw SMTP session from a chosen source address, one command at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, source: str, host: str = "127.0.0.1") -> tuple[Session, str]:
        reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
        session = cls(reader, writer)
        return session, await session.reply()

    async def reply(self) -> str:
        lines: list[str] = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 10)
            if not line:
                return "".join(lines) or "<closed>"
            lines.append(line.decode())
            if len(line) < 4 or line[3:4] == b" ":
                return "".join(lines).strip()

    async def send(self, line: bytes) -> str:
        self.writer.write(line)
        await self.writer.drain()
        return await self.reply()

    async def message(self, sender: str) -> str:
        """MAIL .. DATA; the reply to MAIL if it is not 250, else the reply to the dot."""
        mail = await self.send(f"MAIL FROM:<{sender}>\r\n".encode())
        if not mail.startswith("250"):
            return mail
        assert (await self.send(b"RCPT TO:<rcpt@example.net>\r\n")).startswith("250")
        assert (await self.send(b"DATA\r\n")).startswith("354")
        return await self.send(b"From: x@example.org\r\nSubject: r\r\n\r\nrate\r\n.\r\n")

    async def starttls(self, ca: trustme.CA, name: str) -> None:
        """STARTTLS, the handshake (trusting ``ca``) and EHLO again."""
        assert (await self.send(b"STARTTLS\r\n")).startswith("220")
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        await self.writer.start_tls(ctx, server_hostname=name)
        assert (await self.send(b"EHLO client.test\r\n")).startswith("250")

    async def auth_plain(self, user: str, password: str) -> str:
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return await self.send(f"AUTH PLAIN {token}\r\n".encode())

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


async def test_a_network_policy_refuses_a_sender_with_550_and_takes_an_allowed_one(
    relay: Relay, tmp_path: Path
) -> None:
    code, out = await _swaks(relay, "--from", "someone@example.org")
    assert code != 0, out
    assert "<** 550 5.7.1 Sender address not allowed for this user/network" in out, out
    assert " -> DATA" not in out
    await relay.daemon.wait_line(
        "refused MAIL FROM:<someone@example.org> from 127.0.0.1: "
        "not allowed by smtp.policies[2].allowed_senders"
    )
    for sender in ("app@example.org", "Anyone@NEWS.example.org"):
        code, out = await _swaks(
            relay, "--from", sender, "--data", _message(tmp_path, "App <app@example.org>")
        )
        assert code == 0 and "queued as" in out, out


async def test_a_from_domain_the_policy_does_not_allow_is_refused_after_the_dot(
    relay: Relay,
) -> None:
    msmtp = require("msmtp")
    message = b"From: Boss <ceo@example.com>\r\nSubject: phish\r\n\r\nwire the money\r\n"
    code, out = await run_peer(
        msmtp,
        "--host=127.0.0.1",
        f"--port={relay.port}",
        "--auth=off",
        "--tls=off",
        "--from=app@example.org",
        "rcpt@example.net",
        stdin=message,
    )
    assert code != 0, out
    assert "550 5.7.1 From header domain example.com not allowed for this user/network" in out


async def test_the_policys_size_is_advertised_and_enforced_at_mail_and_after_data(
    relay: Relay, tmp_path: Path
) -> None:
    session, greeting = await Session.open(relay.port, "127.0.0.1")
    try:
        assert greeting.startswith("220")
        ehlo = await session.send(b"EHLO client.test\r\n")
        assert f"250-SIZE {SIZE_LIMIT}\r\n" in ehlo, ehlo
        declared = await session.send(b"MAIL FROM:<app@example.org> SIZE=30000\r\n")
        assert declared.startswith("552 5.3.4 Message size exceeds the limit"), declared
        assert str(SIZE_LIMIT) in declared
    finally:
        await session.close()
    # swaks declares no size: the body is read, then refused.
    body = "x" * 70 + "\r\n"
    data = _message(tmp_path, "app@example.org", body * 400)
    code, out = await _swaks(relay, "--from", "app@example.org", "--data", data)
    assert code != 0, out
    assert "<** 552 5.3.4" in out, out
    # Under the policy's size (and the listener's), the same client gets through.
    data = _message(tmp_path, "app@example.org", body * 200)
    code, out = await _swaks(relay, "--from", "app@example.org", "--data", data)
    assert code == 0 and "queued as" in out, out


async def test_a_size_over_the_limit_is_refused_in_sluices_words_in_every_transaction(
    relay: Relay,
) -> None:
    """Not aiosmtpd's ``552 Error: message size exceeds ...`` from the second MAIL on."""
    session, greeting = await Session.open(relay.port, "127.0.0.1")
    try:
        assert greeting.startswith("220")
        assert (await session.send(b"EHLO client.test\r\n")).startswith("250")
        assert "queued as" in await session.message("app@example.org")
        for _ in range(2):
            declared = await session.send(b"MAIL FROM:<app@example.org> SIZE=30000\r\n")
            assert declared.startswith("552 5.3.4 Message size exceeds the limit"), declared
        under = await session.send(b"MAIL FROM:<app@example.org> SIZE=1000\r\n")
        assert under.startswith("250"), under
        assert (await session.send(b"RSET\r\n")).startswith("250")
    finally:
        await session.close()
    # A policy without a size: smtp.max_message_size (1 MiB), in Sluice's words too.
    session, _ = await Session.open(relay.port, "127.0.0.2")
    try:
        assert (await session.send(b"EHLO client.test\r\n")).startswith("250")
        for _ in range(2):
            declared = await session.send(b"MAIL FROM:<a@example.org> SIZE=2000000\r\n")
            assert declared == (
                "552 5.3.4 Message size exceeds fixed maximum message size (1048576 bytes)"
            ), declared
    finally:
        await session.close()


async def _arrived(upstream: TestUpstream, token: bytes) -> bytes:
    """The data of the message carrying ``token`` once ``upstream`` has it (others come too:
    every message of policy 1 goes to ``bulk``)."""

    def find() -> bytes | None:
        return next((m.data for m in upstream.messages if token in m.data), None)

    data: bytes = await eventually(find)
    return data


async def test_the_default_route_sends_through_the_policys_provider(
    relay: Relay, tmp_path: Path
) -> None:
    data = _message(tmp_path, "app@example.org", "routed", "X-Token: default-route")
    code, out = await _swaks(relay, "--from", "app@example.org", "--data", data)
    assert code == 0, out
    got = await _arrived(relay.bulk, b"X-Token: default-route")
    assert b"X-Sluice-Stream: newsletter\r\n" in got
    assert b"X-Sluice-Provider" not in got  # always removed before sending
    # The application's own choice wins over the policy's default.
    data = _message(
        tmp_path, "app@example.org", "named", "X-Token: named", "X-Sluice-Provider: up1"
    )
    code, out = await _swaks(relay, "--from", "app@example.org", "--data", data)
    assert code == 0, out
    got = await _arrived(relay.up1, b"X-Token: named")
    assert b"X-Sluice-Provider" not in got
    assert not any(b"X-Token: named" in m.data for m in relay.bulk.messages)
    assert not any(b"X-Token: default-route" in m.data for m in relay.up1.messages)


async def test_the_message_over_the_rate_gets_450(relay: Relay) -> None:
    for _ in range(3):
        code, out = await _swaks(relay, "--from", "any@example.net", source="127.0.0.2")
        assert code == 0 and "queued as" in out, out
    code, out = await _swaks(relay, "--from", "any@example.net", source="127.0.0.2")
    assert code != 0, out
    assert "<** 450 4.7.1 Message rate limit exceeded for this user/network (3 per hour)" in out
    assert " -> DATA" not in out
    # Counted per client address: a neighbour in the same policy has its own three.
    code, out = await _swaks(relay, "--from", "any@example.net", source="127.0.0.3")
    assert code == 0 and "queued as" in out, out


async def test_the_rate_is_one_count_across_accept_workers(relay: Relay) -> None:
    """Two sessions from 127.0.0.6 open at once, one per worker (each takes one at a
    time): three messages fit between them, then none in either. Counted per process,
    each worker would take three."""
    first, greeting = await Session.open(relay.port, "127.0.0.6")
    assert greeting.startswith("220"), greeting
    try:
        second, greeting = await Session.open(relay.port, "127.0.0.6")
        assert greeting.startswith("220"), greeting  # greeted: the other worker
        try:
            for s in (first, second):
                assert (await s.send(b"EHLO client.test\r\n")).startswith("250")
            assert "queued as" in await first.message("a@example.net")
            assert "queued as" in await second.message("a@example.net")
            assert "queued as" in await first.message("a@example.net")
            for s in (first, second):
                assert (await s.message("a@example.net")).startswith("450 4.7.1")
        finally:
            await second.close()
    finally:
        await first.close()
    await eventually(lambda: re.search(r"over smtp.policies\[1\].rate", relay.daemon.output))


async def test_failed_auths_are_one_count_across_accept_workers(
    relay: Relay, ca: trustme.CA
) -> None:
    """Two sessions from 127.0.0.5 open at once, one per worker: 3 failures in one and 2
    in the other make the limit (5), and then AUTH is refused in both, even with the right
    password. Counted per process, each worker would be under the limit and answer 235."""
    opened: list[Session] = []
    try:
        for _ in range(2):  # the second is greeted by the other worker (one session each)
            session, greeting = await Session.open(relay.auth_port, "127.0.0.5", "127.0.0.4")
            opened.append(session)
            assert greeting.startswith("220"), greeting
        for session in opened:
            assert (await session.send(b"EHLO client.test\r\n")).startswith("250")
            await session.starttls(ca, "127.0.0.4")
        first, second = opened
        for session, failures in ((first, 3), (second, 2)):
            for _ in range(failures):
                reply = await session.auth_plain("alice", "wrong")
                assert reply.startswith("535 5.7.8"), reply
        for session in opened:
            reply = await session.auth_plain("alice", PASSWORD)
            assert reply.startswith("421 4.7.0 Too many failed authentications from 127.0.0.5"), (
                reply
            )
    finally:
        for session in opened:
            await session.close()
    assert len(re.findall(r"auth failed client=127\.0\.0\.5 ", relay.daemon.output)) == 5


async def test_a_user_sending_as_a_sender_it_may_not_use_gets_550(relay: Relay) -> None:
    """swaks over STARTTLS with AUTH PLAIN: alice may send as alice@, not as bob@."""
    swaks = require("swaks")
    auth = ["--tls", "--auth", "PLAIN", "--auth-password", PASSWORD, "--to", "r@example.net"]
    server = ["--server", f"127.0.0.4:{relay.auth_port}"]
    code, out = await run_peer(
        swaks, *server, *auth, "--auth-user", "alice", "--from", "bob@example.org"
    )
    assert "<~  235 2.7.0" in out, out  # authenticated over TLS
    assert code != 0, out
    assert "<~* 550 5.7.1 Sender address not allowed for this user/network" in out, out
    await relay.daemon.wait_line(
        re.compile(
            r"refused MAIL FROM:<bob@example.org> from \S+ \(user alice\): "
            r"not allowed by smtp.policies\[0\].allowed_senders"
        )
    )
    code, out = await run_peer(
        swaks, *server, *auth, "--auth-user", "alice", "--from", "alice@example.org"
    )
    assert code == 0 and "queued as" in out, out
    # bob has no policy of his own: the network's (policy 2) applies to him.
    code, out = await run_peer(
        swaks, *server, *auth, "--auth-user", "bob", "--from", "b@example.org"
    )
    assert "<~* 550 5.7.1" in out and code != 0, out
    code, out = await run_peer(
        swaks, *server, *auth, "--auth-user", "bob", "--from", "app@example.org"
    )
    assert code == 0 and "queued as" in out, out


class _Unanswered:
    """A rate count that never answers in time (an accept worker's daemon stuck or gone)."""

    async def take(self, key: str, rate: Rate) -> bool:
        raise TimeoutError


async def test_a_rate_count_that_does_not_answer_gets_451_and_the_session_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = SmtpSettings.model_validate(
        {"listen": ["127.0.0.1:0"], "policies": [{"networks": ["127.0.0.0/8"], "rate": "9/s"}]}
    )
    async with await Spool.open(tmp_path / "spool.sqlite3") as spool:
        handler = RelayHandler(spool, lambda: settings, hostname="t.test", rates=_Unanswered())
        listener = await start_listeners(lambda: settings, handler, hostname="t.test")
        try:
            (port,) = {ep.port for ep in listener.addresses}
            replies = await raw_session(
                port, [b"EHLO x\r\n", b"MAIL FROM:<a@example.org>\r\n", b"NOOP\r\n"]
            )
        finally:
            await listener.aclose(grace=0)
    assert replies[2].startswith("451 4.3.0"), replies
    assert replies[3].startswith("250"), replies  # the session is still served
    # Said as what it is, not as a traceback of an "error in SMTP session".
    assert "no answer from the daemon's rate count: MAIL from 127.0.0.1 answered 451" in (
        caplog.text
    )
    assert "error in SMTP session" not in caplog.text
