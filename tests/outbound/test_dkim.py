"""DKIM signing on the way out (``relay.outbound.dkim``), checked by two verifiers.

The first tests call the signer directly; the last module-wide one sends mail
through a real ``sluice serve`` process to a real upstream and checks every
signature it captured with dkimpy and with OpenDKIM, for RSA and Ed25519,
with and without a provider's ``send_from`` rewrite.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import dkim
import pytest
import pytest_asyncio
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from relay.config import DkimDomain, DkimSettings, load
from relay.dkim import DkimKey, generate_key, load_key, record_name
from relay.outbound.dkim import Signer, sign
from relay.outbound.dkim_crypto import _Dkim
from relay.secrets import SecretSource
from tests.conftest import SluiceFactory, fast_config, provider_for, smtp_send, write_config
from tests.daemon_proc import DaemonProcess, start_daemon
from tests.dkim_check import (
    Records,
    dkimpy_verifies,
    opendkim_verifies,
    signatures,
    without_other_signatures,
)
from tests.upstream import TestUpstream

MESSAGE = (
    b"From: App <app@%s>\r\n"
    b"To: someone@example.net\r\n"
    b"Subject: DKIM test\r\n"
    b"Date: Mon, 07 Dec 2026 14:00:00 +0000\r\n"
    b"Message-ID: <%s@sluice.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello,  this line has  double blanks   and trailing ones   \r\n"
    b".a line that starts with a dot\r\n"
    b"\r\n\r\n"
)


def message(domain: str, tag: str = "m1") -> bytes:
    return MESSAGE % (domain.encode(), tag.encode())


def signer_for(*entries: tuple[str, DkimKey]) -> Signer:
    return Signer([(DkimDomain(domain=d, selector="s1", key=None), key) for d, key in entries])


@pytest.fixture(scope="module")
def keys() -> dict[str, DkimKey]:
    return {"rsa": generate_key("rsa")[0], "ed25519": generate_key("ed25519")[0]}


# ---------------------------------------------------------------- the signer itself


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
async def test_the_signature_verifies_and_oversigns_from(
    keys: dict[str, DkimKey], algorithm: str
) -> None:
    key = keys[algorithm]
    signer = signer_for(("example.com", key))
    signed = await sign(signer, message("example.com"))
    (field,) = signatures(signed)
    tags = dkim.util.parse_tag_value(field.split(b":", 1)[1])
    assert tags[b"d"] == b"example.com" and tags[b"s"] == b"s1"
    assert tags[b"a"] == key.signature_algorithm and tags[b"c"] == b"relaxed/relaxed"
    signed_names = [h.strip() for h in tags[b"h"].split(b":")]
    assert signed_names.count(b"from") == 2  # From oversigned
    assert set(signed_names) == {
        b"from",
        b"to",
        b"subject",
        b"date",
        b"message-id",
        b"mime-version",
        b"content-type",
    }
    records = {record_name("example.com", "s1"): key.record()}
    assert dkimpy_verifies(signed, records)
    (status,) = signer.status()
    assert status.signed == 1 and status.last_signed_at is not None


async def test_mail_signed_for_its_domain_is_not_signed_twice(keys: dict[str, DkimKey]) -> None:
    signer = signer_for(("example.com", keys["ed25519"]))
    once = await sign(signer, message("example.com"))
    assert await sign(signer, once) is once
    # a signature for another domain (a mailing list's, say) does not count
    other = signer_for(("example.org", keys["ed25519"]))
    foreign = await sign(
        other, message("example.com").replace(b"app@example.com", b"a@example.org")
    )
    foreign = foreign.replace(b"a@example.org", b"app@example.com")
    assert len(signatures(await sign(signer, foreign))) == 2


async def test_other_domains_and_subdomains_are_sent_as_they_are(
    keys: dict[str, DkimKey],
) -> None:
    signer = signer_for(("example.com", keys["ed25519"]))
    for data in (message("example.org"), message("mail.example.com"), b"Subject: x\r\n\r\nbody"):
        assert await sign(signer, data) is data
    assert await sign(None, message("example.com")) == message("example.com")


async def test_bare_line_endings_are_signed_as_they_go_on_the_wire(
    keys: dict[str, DkimKey],
) -> None:
    signer = signer_for(("example.com", keys["rsa"]))
    data = message("example.com").replace(b"\r\n", b"\n")
    signed = await sign(signer, data)
    assert b"\n" not in signed.replace(b"\r\n", b"")
    assert dkimpy_verifies(signed, {record_name("example.com", "s1"): keys["rsa"].record()})


async def test_a_message_dkimpy_cannot_read_leaves_unsigned_with_a_warning(
    keys: dict[str, DkimKey], caplog: pytest.LogCaptureFixture
) -> None:
    signer = signer_for(("example.com", keys["ed25519"]))
    data = b"From: a@example.com\r\nnot a header line\r\nTo: b@example.net\r\n\r\nbody\r\n"
    assert await sign(signer, data) is data
    (status,) = signer.status()
    assert (status.signed, status.failed) == (0, 1)
    assert "Unexpected characters in RFC822 header" in status.last_error
    assert "dkim: not signed for example.com: Unexpected characters" in caplog.text


async def test_a_message_offered_again_is_not_signed_again(keys: dict[str, DkimKey]) -> None:
    signer = signer_for(("example.com", keys["rsa"]))
    first = await sign(signer, message("example.com"))
    again = await sign(signer, message("example.com"))
    assert first == again
    assert len(signer._cache) == 1 and signer.status()[0].signed == 2
    await sign(signer, message("example.com", "m2"))
    assert len(signer._cache) == 2


def test_keys_are_read_when_the_signer_is_built(tmp_path: Path, keys: dict[str, DkimKey]) -> None:
    _, pem = generate_key("ed25519")
    (tmp_path / "k.pem").write_bytes(pem)
    settings = DkimSettings(
        domains=[
            DkimDomain(
                domain="example.com",
                selector="s1",
                key=SecretSource(name="key", file=tmp_path / "k.pem"),
            )
        ]
    )
    signer = Signer.from_config(settings)
    assert signer.key_of("EXAMPLE.COM") is not None
    (tmp_path / "k.pem").write_text("not a key")
    with pytest.raises(LookupError, match="not a PEM private key"):
        Signer.from_config(settings)


async def test_keys_are_read_again_at_reload_and_a_bad_one_is_refused(
    tmp_path: Path, sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    first, first_pem = generate_key("rsa")
    key_file = tmp_path / "example.org.pem"
    key_file.write_bytes(first_pem)
    domain = {"domain": "example.org", "selector": "s1", "key_file": str(key_file)}
    data = message("example.org")
    async with sluice([provider_for(upstream)], dkim={"domains": [domain]}) as s:
        await smtp_send(s.port, "app@example.org", ["someone@example.net"], data)
        (got,) = await upstream.wait_for(1)
        assert dkimpy_verifies(got.data, {"s1._domainkey.example.org": first.record()})
        # a short key is a config error at reload: the running keys stay
        short = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        key_file.write_bytes(
            short.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        assert await s.daemon.reload() is False
        error = s.daemon.last_reload_error or ""
        assert f"{s.config_path}:" in error
        assert "dkim.domains.0.key_file: an RSA key of 1024 bits" in error
        assert "PRIVATE KEY" not in error
        # a new Ed25519 key under a new selector is taken at the next reload
        second, second_pem = generate_key("ed25519")
        key_file.write_bytes(second_pem)
        cfg = yaml.safe_load(s.config_path.read_text())
        cfg["dkim"]["domains"][0]["selector"] = "s2"
        s.config_path.write_text(yaml.safe_dump(cfg))
        assert await s.daemon.reload() is True, s.daemon.last_reload_error
        await smtp_send(s.port, "app@example.org", ["someone@example.net"], data)
        got = (await upstream.wait_for(2))[1]
        assert dkimpy_verifies(got.data, {"s2._domainkey.example.org": second.record()})
        signer = s.daemon.snapshot().providers.dkim
        assert signer is not None
        (status,) = signer.status()
        assert (status.selector, status.algorithm, status.signed) == ("s2", "ed25519", 2)


# ----------------------------------------------------- through a real daemon, two verifiers


@dataclass
class Relay:
    daemon: DaemonProcess
    upstream: TestUpstream
    records: Records
    tmp: Path


#: From domain the app writes -> (signing domain, algorithm) after the provider's rewrite
CASES = {
    "rsa.example": ("rsa.example", "rsa"),
    "ed.example": ("ed.example", "ed25519"),
    "via-rsa.example": ("rsa.example", "rsa"),
    "via-ed.example": ("ed.example", "ed25519"),
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def relay(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Relay]:
    """One ``sluice serve`` process signing for two domains, and one upstream."""
    tmp: Path = tmp_path_factory.mktemp("dkim")
    up = await TestUpstream().start()
    records: Records = {}
    domains = []
    for domain, algorithm in (("rsa.example", "rsa"), ("ed.example", "ed25519")):
        key, pem = generate_key(algorithm)  # type: ignore[arg-type]
        key_file = tmp / f"{domain}.pem"
        key_file.write_bytes(pem)
        key_file.chmod(0o600)
        records[record_name(domain, "sel1")] = key.record()
        domains.append({"domain": domain, "selector": "sel1", "key_file": str(key_file)})
    providers = [
        provider_for(up, "plain"),
        provider_for(up, "to-rsa", send_from="relay@rsa.example", send_from_name="Relay"),
        provider_for(up, "to-ed", send_from="relay@ed.example"),
    ]
    routes = [
        {"sender_domain": ["via-rsa.example"], "providers": ["to-rsa"]},
        {"sender_domain": ["via-ed.example"], "providers": ["to-ed"]},
    ]
    # header rules act before the signature (rewrite -> headers -> DKIM)
    headers = {"remove": ["X-Mailer"], "add": {"List-Help": "<mailto:help@rsa.example>"}}
    cfg = fast_config(tmp, providers, routes=routes, dkim={"domains": domains}, headers=headers)
    path = write_config(tmp / "sluice.yaml", cfg)
    load(path)  # what `sluice check` reads
    daemon = await start_daemon(path)
    try:
        yield Relay(daemon, up, records, tmp)
    finally:
        await daemon.stop()
        await up.stop()


async def send_through(relay: Relay, data: bytes, sender: str) -> bytes:
    before = len(relay.upstream.messages)
    refused, _ = await smtp_send(relay.daemon.port, sender, ["someone@example.net"], data)
    assert refused == {}
    return (await relay.upstream.wait_for(before + 1))[before].data


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("from_domain", list(CASES))
async def test_every_signature_verifies_with_dkimpy_and_opendkim(
    relay: Relay, from_domain: str
) -> None:
    signing_domain, algorithm = CASES[from_domain]
    data = message(from_domain, f"case-{from_domain}")
    got = await send_through(relay, data, f"app@{from_domain}")
    (field,) = signatures(got)
    tags = dkim.util.parse_tag_value(field.split(b":", 1)[1])
    assert tags[b"d"].decode() == signing_domain
    assert tags[b"a"] == (b"rsa-sha256" if algorithm == "rsa" else b"ed25519-sha256")
    if from_domain.startswith("via-"):  # the rewrite happened before the signature
        assert f"From: {'Relay ' if 'rsa' in from_domain else ''}".encode() in got
        assert f"<relay@{signing_domain}>".encode() in got or b"relay@ed.example" in got
        assert f"Reply-To: App <app@{from_domain}>".encode() in got
    assert dkimpy_verifies(got, relay.records)
    verdict = opendkim_verifies(got, relay.records, relay.tmp / f"opendkim-{from_domain}")
    assert f"d={signing_domain}" in verdict and verdict.endswith("succeeded"), verdict
    # and a change on the way would be caught by both
    tampered = got.replace(b"double blanks", b"double blank5")
    assert not dkimpy_verifies(tampered, relay.records)
    verdict = opendkim_verifies(tampered, relay.records, relay.tmp / f"bad-{from_domain}")
    assert "failed" in verdict, verdict


@pytest.mark.asyncio(loop_scope="module")
async def test_mail_the_app_signed_is_not_signed_again_nor_unknown_domains_signed(
    relay: Relay,
) -> None:
    # the app signs with the same key (it may hold it too): Sluice adds nothing
    key_file = relay.tmp / "rsa.example.pem"
    signer = Signer(
        [(DkimDomain(domain="rsa.example", selector="sel1", key=None), _key_of(key_file))]
    )
    presigned = await sign(signer, message("rsa.example", "presigned"))
    got = await send_through(relay, presigned, "app@rsa.example")
    (field,) = signatures(got)
    assert field in presigned
    assert dkimpy_verifies(got, relay.records)
    got = await send_through(relay, message("other.example", "other"), "app@other.example")
    assert signatures(got) == []


@pytest.mark.asyncio(loop_scope="module")
async def test_a_line_over_998_octets_is_re_encoded_before_it_is_signed(relay: Relay) -> None:
    """PHP's unwrapped HTML: the session would re-encode it after signing; it comes first."""
    long_line = b"<p>" + b"word " * 600 + b"</p>"  # 3,007 octets on one line
    data = message("ed.example", "long").replace(b"Hello,", long_line + b"\r\nHello,")
    got = await send_through(relay, data, "app@ed.example")
    assert len(signatures(got)) == 1
    assert b"Content-Transfer-Encoding: quoted-printable" in got
    assert max(map(len, got.split(b"\r\n"))) <= 998
    assert dkimpy_verifies(got, relay.records)
    verdict = opendkim_verifies(got, relay.records, relay.tmp / "opendkim-long")
    assert verdict.endswith("succeeded"), verdict


@pytest.mark.asyncio(loop_scope="module")
async def test_the_signature_covers_the_headers_as_the_header_rules_left_them(
    relay: Relay,
) -> None:
    """headers: remove/add act before signing: both verifiers accept what arrives."""
    data = message("rsa.example", "rules").replace(
        b"MIME-Version:", b"X-Mailer: PHPMailer 6.9\r\nMIME-Version:"
    )
    got = await send_through(relay, data, "app@rsa.example")
    head = got.split(b"\r\n\r\n", 1)[0]
    assert b"X-Mailer" not in head and b"List-Help: <mailto:help@rsa.example>" in head
    (field,) = signatures(got)
    tags = dkim.util.parse_tag_value(field.split(b":", 1)[1])
    assert b"list-help" in [h.strip() for h in tags[b"h"].split(b":")]  # added, then signed
    assert dkimpy_verifies(got, relay.records)
    verdict = opendkim_verifies(got, relay.records, relay.tmp / "opendkim-rules")
    assert verdict.endswith("succeeded"), verdict


def _key_of(path: Path) -> DkimKey:
    return load_key(path.read_text())


def test_the_opendkim_check_can_fail(tmp_path: Path, keys: dict[str, DkimKey]) -> None:
    """Guard: the OpenDKIM verdict is read right (a wrong key fails)."""
    data = dkim.DKIM(message("example.com")).sign(
        b"s1",
        b"example.com",
        keys["ed25519"].private,
        signature_algorithm=b"ed25519-sha256",
        include_headers=[b"from"],
    ) + message("example.com")
    wrong = generate_key("ed25519")[0].record()
    verdict = opendkim_verifies(data, {"s1._domainkey.example.com": wrong}, tmp_path)
    assert "failed" in verdict, verdict
    assert without_other_signatures(data, signatures(data)[0]) == data


def test_the_openssl_rsa_signature_is_dkimpys_own_byte_for_byte(keys: dict[str, DkimKey]) -> None:
    """RSA is signed by OpenSSL through dkimpy's Ed25519 branch (``_Dkim``); same bytes out.

    PKCS#1 v1.5 is deterministic, so with the same ``t=`` (the same second)
    dkimpy's pure-Python RSA gives the very same field.
    """
    key = keys["rsa"]
    data = message("example.com")
    assert key.rsa is not None
    args = (b"s1", b"example.com", key.private)
    kwargs = {"signature_algorithm": b"rsa-sha256", "include_headers": [b"from", b"to", b"from"]}
    for _ in range(3):  # until both fall in the same second
        fast = _Dkim(data, key.rsa).sign(*args, **kwargs)
        slow = dkim.DKIM(data, linesep=b"\r\n").sign(*args, **kwargs)
        if b" t=" + fast.split(b" t=")[1][:10] in slow:
            break
    assert fast == slow
    assert dkimpy_verifies(fast + data, {"s1._domainkey.example.com": key.record()})
