"""Accept → deliver through upstreams that enforce the wire limits: decoded content unchanged.

The upstreams: ``StrictUpstream`` (aiosmtpd that refuses lines over 998
octets and, without 8BITMIME, any 8-bit byte) and Postfix's ``smtp-sink -8``
(no 8BITMIME; never SMTPUTF8). A message is accepted through Sluice's own
listener when its lines are short enough for it, else enqueued through the
store as the listener (or ``sluice sendmail``) would store it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings

from relay.config import load
from relay.daemon import Daemon
from relay.model import AttemptStatus
from relay.outbound.transfer import MAX_LINE, fits, longest_line
from relay.store.spool import NewMessage
from tests.conftest import Running, SluiceFactory, fast_config, smtp_send, write_config
from tests.mime_corpus import decoded, messages
from tests.outbound.helpers import SENDER
from tests.outbound.strict_upstream import StrictUpstream
from tests.peers import smtp_sink

RCPT = "user@example.net"
HEAD = b"From: App <app@example.org>\r\nTo: user@example.net\r\nSubject: transfer\r\n"
#: what PHP's mail() writes for an HTML mail: no MIME structure, one unwrapped line
PHP_HTML = (
    HEAD + b"MIME-Version: 1.0\r\nContent-type: text/html; charset=UTF-8\r\n\r\n"
    b"<html><body>" + b"<p>Gr\xc3\xbc\xc3\x9fe, caf\xc3\xa9.</p>" * 150 + b"</body></html>\r\n"
)
EIGHT_BIT = HEAD + b"Content-Type: text/plain; charset=utf-8\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n.\r\n"
MULTIPART = (
    HEAD + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="=_b"\r\n\r\n'
    b"--=_b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
    b"\r\ncaf\xc3\xa9\r\n..dots\r\n"
    b"--=_b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n"
    b"\r\n" + bytes(b for b in range(1, 256) if b not in b"\r\n") * 6 + b"\r\n"
    b"--=_b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\n"
    + b"x" * 1500
    + b"\r\n--=_b--\r\n"
)
FIXED = {"php-html": PHP_HTML, "8bit": EIGHT_BIT, "multipart": MULTIPART}


def content(data: bytes) -> list[tuple[str, list[tuple[str, str]], bytes | None]]:
    """What a client decodes, less the trace headers each hop adds."""
    out = decoded(data)
    return [
        (ctype, [(n, v) for n, v in fields if n != "received"], body) for ctype, fields, body in out
    ]


async def accept(s: Running, data: bytes, queue_id: str) -> None:
    """Through the listener when its lines fit it; else stored as the listener would."""
    if longest_line(data) <= MAX_LINE:
        refused, _reply = await smtp_send(s.port, SENDER, [RCPT], data)
        assert refused == {}
    else:
        await s.spool.enqueue(NewMessage(queue_id, SENDER, [RCPT], data, "t", time.time()))


# ------------------------------------------------------------------ the strict fake


@pytest.mark.parametrize("name", list(FIXED))
async def test_fixed_examples_reach_a_7bit_998_upstream(
    sluice: SluiceFactory, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    data = FIXED[name]
    up = await StrictUpstream().start()
    try:
        provider = {"id": "strict", "host": up.host, "port": up.port, "encryption": "none"}
        async with sluice([provider]) as s:
            await accept(s, data, "QTRANSFER1")
            (got,) = await up.wait_for(1)
    finally:
        await up.stop()
    assert content(got.data) == content(data)
    assert "BODY=8BITMIME" not in got.mail_options
    said = [r.getMessage() for r in caplog.records]
    lines = [m for m in said if "re-encoded for provider strict" in m]
    assert len(lines) == 1, lines  # one INFO line saying what was done
    assert "7-bit" in lines[0]


async def test_with_8bitmime_only_the_long_line_is_re_encoded(
    sluice: SluiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    long_part = b"Content-Type: text/html\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + b"h" * 2000
    data = (
        HEAD + b'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\ncaf\xc3\xa9\r\n"
        b"--b\r\n" + long_part + b"\r\n--b--\r\n"
    )
    up = await StrictUpstream(eight_bit_mime=True).start()
    try:
        provider = {"id": "strict8", "host": up.host, "port": up.port, "encryption": "none"}
        async with sluice([provider]) as s:
            await accept(s, data, "QLONG8")
            (got,) = await up.wait_for(1)
    finally:
        await up.stop()
    assert content(got.data) == content(data)
    assert "BODY=8BITMIME" in got.mail_options
    # the 8-bit text part before it left as it was stored
    assert data[: data.index(long_part)] in got.data
    (line,) = [r.getMessage() for r in caplog.records if "re-encoded" in r.getMessage()]
    assert line.startswith("QLONG8: ") and "part 1.2 text/html: 8bit -> quoted-printable" in line


async def test_a_message_that_cannot_be_converted_fails_with_a_clear_reason(
    sluice: SluiceFactory,
) -> None:
    data = HEAD + b"Content-Type: multipart/mixed\r\n\r\n" + b"z" * 1500 + b"\r\n"
    up = await StrictUpstream().start()
    try:
        provider = {"id": "strict", "host": up.host, "port": up.port, "encryption": "none"}
        async with sluice([provider]) as s:
            await accept(s, data, "QBROKEN")
            await s.wait_idle()
            rows = await s.spool.list_log(search="QBROKEN")
    finally:
        await up.stop()
    assert up.messages == [] and up.refused == []  # never sent a byte of it
    (row,) = rows
    assert row.status is AttemptStatus.FAIL
    assert row.code == 554 and "5.6.3" in row.reason and "no boundary" in row.reason, row.reason


# ------------------------------------------------------------------ the property


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def strict_relay(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[Running, StrictUpstream]]:
    """One Sluice and one strict 7-bit upstream for every example of the property."""
    up = await StrictUpstream().start()
    tmp: Path = tmp_path_factory.mktemp("transfer")
    provider = {"id": "strict", "host": up.host, "port": up.port, "encryption": "none"}
    path = write_config(tmp / "sluice.yaml", fast_config(tmp, [provider]))
    daemon = Daemon(load(path), config_path=path)
    try:
        async with daemon.running():
            yield Running(daemon, path), up
    finally:
        await up.stop()


@pytest.mark.asyncio(loop_scope="module")
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=messages())
async def test_any_message_survives_accept_and_delivery_to_a_strict_upstream(
    strict_relay: tuple[Running, StrictUpstream], data: bytes
) -> None:
    s, up = strict_relay
    up.refused.clear()  # each example on its own (a refusal already failed its own)
    before = len(up.messages)
    # a marker to find it by (hypothesis replays examples on the same upstream)
    marked = f"X-Example: {before}\r\n".encode() + data
    await accept(s, marked, f"QPROP{before}")
    got = (await up.wait_for(before + 1))[before]
    assert content(got.data) == content(marked)


# ------------------------------------------------------------------ real peers


@pytest.mark.parametrize("eight_bit", [False, True], ids=["-8", "8bitmime"])
@pytest.mark.parametrize("name", list(FIXED))
async def test_smtp_sink_gets_decoded_parts_unchanged(
    sluice: SluiceFactory, name: str, eight_bit: bool
) -> None:
    data = FIXED[name]
    async with smtp_sink(*([] if eight_bit else ["-8"])) as sink:
        provider = {"id": "sink", "host": sink.host, "port": sink.port, "encryption": "none"}
        async with sluice([provider]) as s:
            await accept(s, data, "QSINK1")
            (got,) = await sink.wait_for(1)
    # smtp-sink dumps with LF line endings and one more LF at the end
    wire = got.data.removesuffix(b"\n").replace(b"\n", b"\r\n")
    assert longest_line(wire) <= MAX_LINE
    if eight_bit:
        assert ("BODY=8BITMIME" in got.mail_args.upper()) == (not wire.isascii())
        if fits(data, eight_bit=True):
            assert wire.endswith(data)  # byte for byte, after the Received headers
    else:
        assert wire.isascii()
        assert "8BITMIME" not in got.mail_args.upper()
    assert content(wire) == content(data)


async def test_smtp_sink_gets_an_idn_domain_as_its_a_label(sluice: SluiceFactory) -> None:
    """smtp-sink never offers SMTPUTF8: the domain goes as xn--…, the mail is not refused."""
    rcpt, sender = "user@bücher.example", "app@exämple.org"
    async with smtp_sink() as sink:
        provider = {"id": "sink", "host": sink.host, "port": sink.port, "encryption": "none"}
        async with sluice([provider]) as s:
            async with aiosmtplib.SMTP(
                hostname="127.0.0.1", port=s.port, start_tls=False, timeout=10
            ) as client:
                refused, _ = await client.sendmail(
                    sender, [rcpt], EIGHT_BIT, mail_options=["SMTPUTF8"]
                )
            assert refused == {}
            (got,) = await sink.wait_for(1)
            await s.wait_idle()
            rows = await s.spool.list_log()
    assert got.recipients == ["user@xn--bcher-kva.example"]
    assert got.sender == "app@xn--exmple-cua.org"
    assert "SMTPUTF8" not in got.mail_args.upper()
    assert [r.status for r in rows] == [AttemptStatus.SUCCESS]


async def test_a_non_ascii_local_part_is_still_refused_without_smtputf8(
    sluice: SluiceFactory,
) -> None:
    async with smtp_sink() as sink:
        provider = {"id": "sink", "host": sink.host, "port": sink.port, "encryption": "none"}
        async with sluice([provider]) as s:
            async with aiosmtplib.SMTP(
                hostname="127.0.0.1", port=s.port, start_tls=False, timeout=10
            ) as client:
                await client.sendmail(
                    SENDER, ["jürgen@bücher.example"], EIGHT_BIT, mail_options=["SMTPUTF8"]
                )
            await s.wait_idle()
            rows = await s.spool.list_log()
        assert sink.messages() == []
    assert [(r.status, r.code) for r in rows] == [(AttemptStatus.FAIL, 553)]
