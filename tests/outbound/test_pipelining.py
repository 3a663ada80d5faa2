"""RFC 2920 PIPELINING in the outbound session: one write for MAIL, RCPT... and DATA.

The pipelined runs use an upstream that holds its MAIL and RCPT replies back
until DATA has arrived and then sends them all in one write, as Postfix does
(``hold_replies_until_data``): a client that waited for MAIL's reply would
time out, so a completed transaction shows that it pipelined, and the
client had to split one segment into several replies.

Each failure case runs twice, against a server with PIPELINING and one
without, and the outcomes must be the same: pipelining changes the round
trips, never what a reply means.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import trustme

from relay.config import load
from relay.errors import ConfigError
from relay.model import Delivered, Outcome, PermFailure, RecipientStatus, Scope, TempFailure
from relay.outbound.session import Session, StaleSession, Upstream
from tests.conftest import SluiceFactory, eventually, provider_for, smtp_send
from tests.outbound.helpers import SENDER, entries, message, queue_id_of, sent
from tests.peers import smtp_sink
from tests.upstream import TestUpstream

BODY = (
    b"From: App <app@example.org>\r\nTo: someone@example.net\r\nSubject: pipelined\r\n"
    b"Message-ID: <p1@example.org>\r\n\r\nline one\r\n.leading dot\r\n..two dots\r\nend\r\n"
)
THREE = ["a@example.net", "b@example.net", "c@example.net"]


def _settings(up: TestUpstream, *, timeout: float = 10.0, pipelining: bool = True) -> Upstream:
    return Upstream(
        id="up",
        host=up.host,
        port=up.port,
        encryption="none",
        connect_timeout=timeout,
        command_timeout=timeout,
        data_timeout=timeout,
        pipelining=pipelining,
    )


@asynccontextmanager
async def _session(
    up: TestUpstream, *, wait: float = 10.0, pipelining: bool = True
) -> AsyncIterator[Session]:
    session = Session(_settings(up, timeout=wait, pipelining=pipelining), local_hostname="t")
    await session.open()
    try:
        yield session
    finally:
        session.close()


@asynccontextmanager
async def _upstream(
    *, pipelined: bool, hold: bool | None = None, data_without_rcpt: bool = False
) -> AsyncIterator[TestUpstream]:
    """A server that offers PIPELINING (and then holds its replies back) or does not."""
    up = await TestUpstream(
        pipelining=pipelined,
        hold_replies_until_data=pipelined if hold is None else hold,
        data_without_rcpt=data_without_rcpt,
    ).start()
    try:
        yield up
    finally:
        await up.stop()


async def _both(
    script: Callable[[TestUpstream], None],
    recipients: Sequence[str],
    *,
    wait: float = 10.0,
    data_without_rcpt: bool = False,
) -> tuple[list[Outcome], list[Outcome]]:
    """(pipelined outcomes, one-command-at-a-time outcomes) for the same scripted replies."""
    results = []
    for pipelined in (True, False):
        async with _upstream(pipelined=pipelined, data_without_rcpt=data_without_rcpt) as up:
            script(up)
            async with _session(up, wait=wait) as session:
                results.append(await session.send(SENDER, recipients, BODY))
    return results[0], results[1]


def _temporary(outcomes: Sequence[Outcome]) -> list[TempFailure]:
    assert all(isinstance(o, TempFailure) for o in outcomes), outcomes
    return [o for o in outcomes if isinstance(o, TempFailure)]


# ------------------------------------------------------------------ happy path


@pytest.mark.parametrize("recipients", [THREE[:1], THREE], ids=["one", "three"])
async def test_a_pipelined_transaction_delivers_the_bytes_intact(recipients: list[str]) -> None:
    async with _upstream(pipelined=True) as up, _session(up) as session:
        outcomes = await session.send(SENDER, recipients, BODY)
        assert [type(o) for o in outcomes] == [Delivered] * len(recipients)
        assert [o.recipient for o in outcomes] == recipients
        (got,) = up.messages
        assert session.usable
    assert got.sender == SENDER
    assert got.recipients == recipients
    assert got.data == BODY  # dot-stuffed on the wire, unstuffed by the server


async def test_a_pipelined_session_carries_several_transactions() -> None:
    async with _upstream(pipelined=True) as up, _session(up) as session:
        for i in range(3):
            outcomes = await session.send(SENDER, [f"r{i}@example.net"], BODY)
            assert [type(o) for o in outcomes] == [Delivered]
        assert [m.recipients for m in up.messages] == [[f"r{i}@example.net"] for i in range(3)]
        assert up.connections == 1


# --------------------------------------------------------------- MAIL refused


async def test_mail_refused_550_fails_every_recipient_with_the_mail_reply() -> None:
    def script(up: TestUpstream) -> None:
        up.reply["MAIL"] = "550 5.7.1 sender not allowed"

    piped, stepwise = await _both(script, THREE)
    assert piped == stepwise
    assert all(isinstance(o, PermFailure) and o.code == 550 for o in piped)
    # The reason is MAIL's reply, not the 503s that followed it.
    assert all("sender not allowed" in o.text and "503" not in o.text for o in piped)


async def test_mail_refused_451_defers_every_recipient_and_the_session_stays_in_step() -> None:
    def script(up: TestUpstream) -> None:
        up.reply["MAIL"] = "451 4.3.0 try later"

    piped, stepwise = await _both(script, THREE)
    assert piped == stepwise
    assert all(isinstance(o, TempFailure) and o.code == 451 for o in piped)

    # The discarded RCPT and DATA replies were all read: the next transaction pairs
    # its replies with its own commands.
    async with _upstream(pipelined=True) as up, _session(up) as session:
        up.reply["MAIL"] = "451 4.3.0 try later"
        first = await session.send(SENDER, THREE, BODY)
        assert [o.code for o in first] == [451] * 3
        del up.reply["MAIL"]
        second = await session.send(SENDER, THREE, BODY)
        assert [type(o) for o in second] == [Delivered] * 3
        assert [m.recipients for m in up.messages] == [THREE]
        assert up.connections == 1


# --------------------------------------------------------------- RCPT refused


async def test_one_refused_recipient_of_three_the_others_are_delivered() -> None:
    def script(up: TestUpstream) -> None:
        up.reply["RCPT:b@example.net"] = "550 5.1.1 no such user"

    piped, stepwise = await _both(script, THREE)
    assert piped == stepwise
    a, b, c = piped
    assert isinstance(a, Delivered) and isinstance(c, Delivered)
    assert isinstance(b, PermFailure) and b.code == 550 and "no such user" in b.text


async def test_the_same_4xx_to_every_recipient_speaks_for_the_provider() -> None:
    def script(up: TestUpstream) -> None:
        for r in THREE:
            up.reply[f"RCPT:{r}"] = "451 4.7.1 please slow down"

    piped, stepwise = await _both(script, THREE)
    assert piped == stepwise
    assert {o.scope for o in _temporary(piped)} == {Scope.PAUSE}


@pytest.mark.parametrize("data_without_rcpt", [True, False], ids=["354-anyway", "503"])
async def test_every_recipient_refused_sends_no_body_and_keeps_the_session(
    data_without_rcpt: bool,
) -> None:
    def script(up: TestUpstream) -> None:
        for r in THREE:
            up.reply[f"RCPT:{r}"] = "550 5.1.1 no such user"

    piped, stepwise = await _both(script, THREE, data_without_rcpt=data_without_rcpt)
    assert piped == stepwise
    assert all(isinstance(o, PermFailure) and o.code == 550 for o in piped)

    async with (
        _upstream(pipelined=True, data_without_rcpt=data_without_rcpt) as up,
        _session(up) as session,
    ):
        script(up)
        await session.send(SENDER, THREE, BODY)
        # RFC 2920 § 3.1: after a 354 with no recipient, the final dot alone.
        assert up.orphan_bodies == ([b""] if data_without_rcpt else [])
        assert up.messages == []
        up.reply.clear()
        outcomes = await session.send(SENDER, ["d@example.net"], BODY)
        assert [type(o) for o in outcomes] == [Delivered]
        (got,) = up.messages
        assert got.recipients == ["d@example.net"] and got.data == BODY
        assert up.connections == 1


# --------------------------------------------------------------- DATA refused


async def test_data_refused_554_fails_the_accepted_recipients_at_data() -> None:
    def script(up: TestUpstream) -> None:
        up.reply["RCPT:b@example.net"] = "550 5.1.1 no such user"
        up.reply["DATA:start"] = "554 5.7.1 message refused"

    piped, stepwise = await _both(script, THREE)
    assert piped == stepwise
    a, b, c = piped
    assert "no such user" in b.text
    assert all(isinstance(o, PermFailure) and o.code == 554 for o in (a, c))


async def test_a_refusal_after_the_body_is_the_reason() -> None:
    def script(up: TestUpstream) -> None:
        up.reply["DATA"] = "452 4.3.1 insufficient storage"

    piped, stepwise = await _both(script, THREE)
    assert piped == stepwise
    assert all(isinstance(o, TempFailure) and o.code == 452 for o in piped)


# -------------------------------------------------- closing, dropping, timing out


async def test_421_at_rcpt_closes_the_session_and_defers_everyone() -> None:
    def script(up: TestUpstream) -> None:
        up.reply["RCPT:b@example.net"] = "421 4.3.2 shutting down"

    piped, stepwise = await _both(script, THREE)
    assert piped == stepwise
    assert all(isinstance(o, TempFailure) and o.code == 421 for o in piped)
    async with _upstream(pipelined=True) as up, _session(up) as session:
        script(up)
        await session.send(SENDER, THREE, BODY)
        assert not session.usable
        assert up.messages == []


async def test_a_disconnect_after_mail_defers_everyone() -> None:
    """The server answers MAIL at once (no holding back), then drops the connection."""
    results = []
    for pipelined in (True, False):
        up = await TestUpstream(pipelining=pipelined).start()
        try:
            up.drop.add("RCPT")
            async with _session(up) as session:
                results.append(await session.send(SENDER, THREE, BODY))
                assert not session.usable
            assert up.messages == []
        finally:
            await up.stop()
    piped, stepwise = (_temporary(outcomes) for outcomes in results)
    for failures in (piped, stepwise):
        assert all(o.scope is Scope.PROVIDER and "connection lost" in o.text for o in failures)
    assert [(o.code, o.scope) for o in piped] == [(o.code, o.scope) for o in stepwise]


async def test_a_reply_that_never_comes_times_out_and_defers_everyone() -> None:
    def script(up: TestUpstream) -> None:
        up.hang.add("RCPT:b@example.net")

    piped, stepwise = await _both(script, THREE, wait=1.0)
    assert piped == stepwise
    assert all(isinstance(o, TempFailure) and "timeout" in o.text for o in piped)


async def test_a_reused_session_closed_by_the_server_is_stale() -> None:
    async with _upstream(pipelined=True) as up, _session(up) as session:
        assert [type(o) for o in await session.send(SENDER, THREE, BODY)] == [Delivered] * 3
        up.drop_once.add("MAIL")  # as an idle cut looks at the next use
        with pytest.raises(StaleSession):
            await session.send(SENDER, THREE, BODY)
        assert not session.usable
        assert len(up.messages) == 1
    # A fresh connection takes it.
    async with _upstream(pipelined=True) as up, _session(up) as session:
        await session.send(SENDER, ["x@example.net"], BODY)
        await up.stop()  # cuts the idle connection
        await up.restart()
        with pytest.raises(StaleSession):
            await session.send(SENDER, THREE, BODY)


async def test_the_first_transaction_on_a_connection_is_never_stale() -> None:
    async with _upstream(pipelined=True) as up, _session(up) as session:
        up.drop_once.add("MAIL")
        outcomes = await session.send(SENDER, THREE, BODY)
    assert all(isinstance(o, TempFailure) and "connection lost" in o.text for o in outcomes)


# -------------------------------------------------------- when not to pipeline


async def test_a_server_without_pipelining_gets_one_command_at_a_time() -> None:
    async with _upstream(pipelined=False) as up, _session(up) as session:
        outcomes = await session.send(SENDER, THREE, BODY)
        assert [type(o) for o in outcomes] == [Delivered] * 3
        assert up.messages[0].data == BODY
    # A server that holds its replies back (and does not offer PIPELINING):
    # Sluice waits for MAIL's reply before it sends RCPT, so it never comes.
    async with (
        _upstream(pipelined=False, hold=True) as up,
        _session(up, wait=1.0) as session,
    ):
        outcomes = await session.send(SENDER, THREE, BODY)
    assert all(isinstance(o, TempFailure) and "timeout" in o.text for o in outcomes)


async def test_pipelining_switched_off_for_a_provider_sends_one_command_at_a_time() -> None:
    async with (
        _upstream(pipelined=True) as up,
        _session(up, wait=1.0, pipelining=False) as session,
    ):
        outcomes = await session.send(SENDER, THREE, BODY)
        assert up.messages == []
    assert all(isinstance(o, TempFailure) and "timeout" in o.text for o in outcomes)


# ------------------------------------------------------ the daemon and its config


async def test_the_daemon_pipelines_by_default(sluice: SluiceFactory) -> None:
    async with _upstream(pipelined=True) as up:
        async with sluice([provider_for(up)]) as s:
            _, reply = await smtp_send(s.port, SENDER, THREE, message("piped"))
            await up.wait_for(1)
            await eventually(lambda: sent(s.spool, queue_id_of(reply)))
        assert up.messages[0].recipients == THREE


async def test_the_daemon_honours_pipelining_false(sluice: SluiceFactory) -> None:
    async with _upstream(pipelined=True) as up:
        async with sluice([provider_for(up, pipelining=False)]) as s:
            _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message("stepwise"))
            qid = queue_id_of(reply)

            async def deferred() -> bool:
                found = await entries(s.spool, qid)
                return bool(found) and found[0].status is RecipientStatus.DEFERRED

            await eventually(deferred, within=30)
            (entry,) = await entries(s.spool, qid)
        assert "timeout" in entry.reason
        assert up.messages == []


def test_pipelining_is_a_boolean_provider_setting(tmp_path: Path) -> None:
    base = (
        'smtp:\n  listen: ["127.0.0.1:2525"]\nspool:\n  path: spool.sqlite3\n'
        "admin:\n  enabled: false\nproviders:\n  - id: main\n    host: smtp.example.com\n"
    )
    path = tmp_path / "config.yaml"
    path.write_text(base, encoding="utf-8")
    assert load(path).providers[0].pipelining is True
    path.write_text(base + "    pipelining: false\n", encoding="utf-8")
    assert load(path).providers[0].pipelining is False
    path.write_text(base + "    pipelining: sometimes\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert f"{path}:10: providers.0.pipelining:" in str(caught.value)


# ------------------------------------------------- replies split and joined oddly


@asynccontextmanager
async def _raw_server(group_reply: bytes, got: list[bytes]) -> AsyncIterator[int]:
    """A hand-written server offering PIPELINING that answers one group with ``group_reply``,
    written one byte at a time (each byte its own write), then takes the body."""

    served = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await talk(reader, writer)
        finally:
            writer.close()
            served.set()

    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 raw.test ESMTP\r\n")
        await reader.readline()  # EHLO
        writer.write(b"250-raw.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
        for _ in range(100):
            line = await reader.readline()
            got.append(line)
            if line in (b"DATA\r\n", b""):
                break
        for byte in group_reply:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0)  # let each byte go out on its own
        if group_reply.endswith(b"354 go ahead\r\n"):
            body = await reader.readuntil(b"\r\n.\r\n")
            got.append(body)
            writer.write(b"250-2.0.0 queued\r\n250 2.0.0 as RAW1\r\n")
        await reader.read(1)  # until the client closes

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
        async with asyncio.timeout(10):
            await served.wait()  # the client has closed: the conversation is over
    finally:
        server.close()
        await server.wait_closed()


async def test_multiline_replies_trickling_in_byte_by_byte_are_paired_in_order() -> None:
    group = (
        b"250-2.1.0 sender\r\n250 2.1.0 ok\r\n"  # MAIL: two lines
        b"250 2.1.5 a ok\r\n"
        b"550-5.1.1 no such\r\n550-5.1.1 user here\r\n550 5.1.1 at all\r\n"  # b
        b"250 2.1.5 c ok\r\n"
        b"354 go ahead\r\n"
    )
    got: list[bytes] = []
    async with _raw_server(group, got) as port:
        up = Upstream(id="raw", host="127.0.0.1", port=port, encryption="none")
        session = Session(replace(up, command_timeout=10, data_timeout=10), local_hostname="t")
        await session.open()
        try:
            a, b, c = await session.send(SENDER, THREE, BODY)
        finally:
            session.close()
    assert isinstance(a, Delivered) and isinstance(c, Delivered)
    assert "as RAW1" in a.text
    assert isinstance(b, PermFailure) and b.code == 550
    assert "no such" in b.text and "at all" in b.text
    # One group: MAIL, three RCPTs, DATA; then the dot-stuffed body.
    assert [line.split(b":")[0] for line in got[:4]] == [b"MAIL FROM", *[b"RCPT TO"] * 3]
    assert got[4] == b"DATA\r\n"
    assert got[5] == BODY.replace(b"\r\n.", b"\r\n..") + b".\r\n"


async def test_an_unreadable_reply_in_the_group_defers_and_closes() -> None:
    got: list[bytes] = []
    async with _raw_server(b"250 ok\r\nthis is no reply\r\n", got) as port:
        up = Upstream(id="raw", host="127.0.0.1", port=port, encryption="none")
        session = Session(replace(up, command_timeout=10, data_timeout=10), local_hostname="t")
        await session.open()
        try:
            outcomes = await session.send(SENDER, THREE, BODY)
            assert not session.usable
        finally:
            session.close()
    assert all(isinstance(o, TempFailure) for o in outcomes), outcomes
    assert all("Malformed SMTP response line" in o.text for o in outcomes)


# ------------------------------------------------ TLS, and the daemon's event loop


async def _over(encryption: str, server_tls: ssl.SSLContext, ca: trustme.CA) -> None:
    up = await TestUpstream(
        pipelining=True,
        hold_replies_until_data=True,
        tls_context=server_tls if encryption == "tls" else None,
        starttls_context=server_tls if encryption == "starttls" else None,
    ).start()
    client = ssl.create_default_context()
    ca.configure_trust(client)
    settings = replace(_settings(up), encryption=encryption, tls_context=client)  # type: ignore[arg-type]
    session = Session(settings, local_hostname="relay.test")
    try:
        await session.open()
        for recipients in (THREE, ["d@example.net"]):
            outcomes = await session.send(SENDER, recipients, BODY)
            assert [type(o) for o in outcomes] == [Delivered] * len(recipients)
        assert [m.recipients for m in up.messages] == [THREE, ["d@example.net"]]
        assert all(m.tls is (encryption != "none") and m.data == BODY for m in up.messages)
        assert up.connections == 1
    finally:
        session.close()
        await up.stop()


@pytest.mark.parametrize("encryption", ["none", "starttls", "tls"])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_pipelining_over_tls_and_on_uvloop(
    loop: str, encryption: str, server_tls: ssl.SSLContext, ca: trustme.CA
) -> None:
    """The reader swap works on every transport: plain, TLS, STARTTLS; asyncio's and uvloop's
    (the daemon runs on uvloop when the ``fast`` extra is installed)."""
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        uvloop.run(_over(encryption, server_tls, ca))
    else:
        asyncio.run(_over(encryption, server_tls, ca))


# ----------------------------------------------------------------- a real peer


async def test_smtp_sink_takes_a_pipelined_transaction_with_three_recipients() -> None:
    async with smtp_sink() as sink:
        up = Upstream(id="sink", host=sink.host, port=sink.port, encryption="none")
        session = Session(up, local_hostname="relay.test")
        await session.open()
        try:
            assert session._smtp.supports_extension("pipelining")  # the path under test
            outcomes = await session.send(SENDER, THREE, BODY)
            again = await session.send(SENDER, ["d@example.net"], BODY)
        finally:
            await session.quit()
        assert [type(o) for o in outcomes + again] == [Delivered] * 4
        got = await sink.wait_for(2)
    # Dumps are ordered by time; two within one clock tick may come either way.
    first, second = sorted(got, key=lambda m: len(m.recipients), reverse=True)
    assert first.sender == SENDER
    assert first.recipients == THREE
    assert second.recipients == ["d@example.net"]
    # smtp-sink dumps with LF line endings and an empty line after the message
    # (its own Received header is split off by the helper); dots unstuffed.
    assert first.data == BODY.replace(b"\r\n", b"\n") + b"\n"
    assert second.data == first.data
