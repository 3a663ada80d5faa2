"""AUTH against a real Postfix with Dovecot SASL: one attempt per connection.

Postfix counts AUTH commands per connection in its ``disconnect from ...
auth=SUCCESS/TOTAL`` summary, and logs a ``SASL <MECH> authentication
failed`` warning per failure; Dovecot logs a ``Password mismatch`` per
failure. Those counts, not our own fake's, say how many attempts Sluice made.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import trustme

from relay.model import QueueEntry, RecipientStatus
from relay.outbound.handshake import SPEAKS_PLAIN, SPEAKS_TLS
from tests.conftest import SluiceFactory, eventually, fast_config, smtp_send, write_config
from tests.daemon_proc import run_cli
from tests.outbound.helpers import SENDER, entries, message, queue_id_of, sent
from tests.peers import PostfixSasl, postfix_sasl

PASSWORD = "s3cret-Pa55word"
WRONG = "wrong-Pa55word"
_AUTH_COUNT = re.compile(r" auth=(\d+)/(\d+)| auth=(\d+)\b")


def _pem(ca: trustme.CA, tmp_path: Path) -> tuple[Path, Path]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key = tmp_path / "postfix-cert.pem", tmp_path / "postfix-key.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key))
    return chain, key


@pytest.fixture
async def postfix(ca: trustme.CA, tmp_path: Path) -> AsyncIterator[PostfixSasl]:
    async with postfix_sasl(*_pem(ca, tmp_path), {"relay": PASSWORD}) as pf:
        yield pf


def _provider(pf: PostfixSasl, ca_file: Path, **extra: Any) -> dict[str, Any]:
    return {
        "id": "postfix",
        "host": pf.host,
        "port": pf.port,
        "encryption": "starttls",
        "ca_file": str(ca_file),
        "username": "relay",
        # Dovecot delays a failed AUTH answer by 2 s (auth_failure_delay).
        "timeout": "15s",
        **extra,
    }


def _auth_attempts(pf: PostfixSasl) -> list[tuple[int, int]]:
    """(succeeded, tried) AUTH commands of every finished connection that tried AUTH."""
    out = []
    for line in pf.disconnects():
        match = _AUTH_COUNT.search(line)
        if match is None:
            continue
        if match.group(3) is not None:  # "auth=1": every one of them succeeded
            n = int(match.group(3))
            out.append((n, n))
        else:
            out.append((int(match.group(1)), int(match.group(2))))
    return out


def _balanced(pf: PostfixSasl) -> bool:
    """Every connection smtpd logged as opened is logged as closed (the log is complete)."""
    log = pf.postfix_log()
    return log.count("]: connect from ") == log.count("]: disconnect from ")


async def _deferred(s: object, qid: str) -> list[QueueEntry]:
    found = await entries(s.spool, qid)  # type: ignore[attr-defined]
    return [e for e in found if e.status is RecipientStatus.DEFERRED]


async def test_a_wrong_password_costs_one_auth_attempt_per_connection(
    sluice: SluiceFactory, postfix: PostfixSasl, ca: trustme.CA, ca_file: Path
) -> None:
    # The counter can see a double attempt: aiosmtplib's login() tries PLAIN, then LOGIN.
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    client = aiosmtplib.SMTP(
        hostname=postfix.host, port=postfix.port, start_tls=True, tls_context=ctx, timeout=15
    )
    await client.connect()
    with pytest.raises(aiosmtplib.SMTPAuthenticationError):
        await client.login("relay", WRONG)
    await client.quit()
    await eventually(lambda: _auth_attempts(postfix) == [(0, 2)], within=20)

    async with sluice([_provider(postfix, ca_file, password=WRONG)]) as s:
        _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message("wrong"))
        qid = queue_id_of(reply)
        (entry,) = await eventually(lambda: _deferred(s, qid), within=30)
        # At least one retry on a new connection, so "per connection" is shown twice.
        await eventually(lambda: len(_auth_attempts(postfix)) >= 3, within=30)
    await eventually(lambda: _balanced(postfix), within=20)

    ours = _auth_attempts(postfix)[1:]
    assert ours and all(attempt == (0, 1) for attempt in ours), postfix.disconnects()
    log = postfix.postfix_log()
    failures = re.findall(r"SASL (\S+) authentication failed", log)
    assert failures == ["PLAIN", "LOGIN"] + ["PLAIN"] * len(ours)
    assert postfix.dovecot_log().count("Password mismatch") == 2 + len(ours)
    assert entry.reason.startswith("authentication failed: 535 5.7.8")
    assert entry.reason.endswith("(PLAIN)")
    assert "status=sent" not in log

    # The right password delivers (the deferred message too, on its next attempt).
    async with sluice([_provider(postfix, ca_file, password=PASSWORD)]) as s:
        _, reply = await smtp_send(s.port, SENDER, ["b@example.net"], message("right"))
        await eventually(lambda: sent(s.spool, queue_id_of(reply)), within=30)
        await eventually(lambda: sent(s.spool, qid), within=30)
    await eventually(lambda: postfix.postfix_log().count("status=sent") == 2, within=20)
    log = postfix.postfix_log()
    assert "sasl_method=PLAIN, sasl_username=relay" in log
    assert "to=<a@example.net>, relay=none" in log and "to=<b@example.net>, relay=none" in log


async def test_auth_mechanism_login_is_the_one_used(
    sluice: SluiceFactory, postfix: PostfixSasl, ca_file: Path
) -> None:
    p = _provider(postfix, ca_file, password=PASSWORD, auth_mechanism="login")
    async with sluice([p]) as s:
        _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message())
        await eventually(lambda: sent(s.spool, queue_id_of(reply)), within=30)
    await eventually(lambda: "status=sent" in postfix.postfix_log(), within=20)
    assert "sasl_method=LOGIN, sasl_username=relay" in postfix.postfix_log()


async def test_auto_prefers_cram_md5_when_offered(
    sluice: SluiceFactory, ca: trustme.CA, ca_file: Path, tmp_path: Path
) -> None:
    users = {"relay": PASSWORD}
    async with postfix_sasl(*_pem(ca, tmp_path), users, mechanisms="plain login cram-md5") as pf:
        async with sluice([_provider(pf, ca_file, password=PASSWORD)]) as s:
            _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message())
            await eventually(lambda: sent(s.spool, queue_id_of(reply)), within=30)
        await eventually(lambda: "status=sent" in pf.postfix_log(), within=20)
        assert "sasl_method=CRAM-MD5, sasl_username=relay" in pf.postfix_log()
        await eventually(lambda: _balanced(pf), within=20)
        assert _auth_attempts(pf) == [(1, 1)]


async def test_providers_test_against_postfix_shows_every_step(
    postfix: PostfixSasl, ca_file: Path, tmp_path: Path
) -> None:
    good = _provider(postfix, ca_file, password=PASSWORD)
    bad = {**_provider(postfix, ca_file, password=WRONG), "id": "wrongpw"}
    path = write_config(tmp_path / "sluice.yaml", fast_config(tmp_path, [good, bad]))
    code, out, err = await run_cli("providers", "test", "postfix", "-c", str(path))
    assert code == 0, out + err
    for line in (
        "ok   connect   220 postfix.sasl.invalid ESMTP Postfix",
        "ok   EHLO      250 postfix.sasl.invalid",
        "ok   STARTTLS  220 2.0.0 Ready to start TLS; TLSv1.",
        "ok   AUTH      235 2.7.0 Authentication successful (PLAIN as relay)",
        "ok   QUIT      221 2.0.0 Bye",
    ):
        assert line in out, out
    code, out, err = await run_cli("providers", "test", "wrongpw", "-c", str(path))
    assert code == 69
    assert "FAIL AUTH      535 5.7.8 Error: authentication failed" in out
    assert WRONG not in out + err and PASSWORD not in out + err
    await eventually(lambda: _balanced(postfix), within=20)
    assert _auth_attempts(postfix)[-2:] == [(1, 1), (0, 1)]


@pytest.mark.parametrize(
    ("mode", "which", "expected"),
    [("starttls", "tls_port", SPEAKS_TLS), ("tls", "port", SPEAKS_PLAIN)],
)
async def test_wrong_encryption_for_a_postfix_port(
    sluice: SluiceFactory,
    postfix: PostfixSasl,
    ca_file: Path,
    tmp_path: Path,
    mode: str,
    which: str,
    expected: str,
) -> None:
    p = {**_provider(postfix, ca_file, password=PASSWORD), "encryption": mode}
    p["port"] = getattr(postfix, which)
    async with sluice([p]) as s:
        _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message())
        (entry,) = await eventually(lambda: _deferred(s, queue_id_of(reply)), within=30)
    path = write_config(tmp_path / "cli.yaml", fast_config(tmp_path, [p]))
    code, out, _ = await run_cli("providers", "test", "postfix", "-c", str(path))
    assert entry.reason.endswith(expected), entry.reason
    assert code == 69 and expected in out
    assert "status=sent" not in postfix.postfix_log()
