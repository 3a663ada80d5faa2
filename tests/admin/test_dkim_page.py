"""The DKIM page (``admin/dkim.py``): per domain, whether mail is signed, and its record."""

from __future__ import annotations

import html
import re
from pathlib import Path

from relay.dkim import generate_key, record_strings
from tests.admin.conftest import AppClientFactory
from tests.conftest import SluiceFactory, provider_for, smtp_send
from tests.upstream import TestUpstream


def _key_file(path: Path, algorithm: str) -> tuple[Path, str]:
    key, pem = generate_key(algorithm)  # type: ignore[arg-type]
    path.write_bytes(pem)
    return path, key.record()


async def test_the_page_shows_each_domain_signed_or_not_and_its_record(
    tmp_path: Path, sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    rsa_file, rsa_record = _key_file(tmp_path / "rsa.pem", "rsa")
    ed_file, ed_record = _key_file(tmp_path / "ed.pem", "ed25519")
    domains = [
        {"domain": "example.org", "selector": "s1", "key_file": str(rsa_file)},
        {"domain": "quiet.example", "selector": "q2", "key_file": str(ed_file)},
    ]
    async with sluice([provider_for(upstream)], dkim={"domains": domains}) as s:
        data = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nhello\r\n"
        await smtp_send(s.port, "a@example.org", ["b@example.net"], data)
        (got,) = await upstream.wait_for(1)
        assert got.data.startswith(b"DKIM-Signature:")
        async with app_client(s) as c:
            page = (await c.get("/dkim")).text
    assert '<a href="/dkim" aria-current="page">DKIM</a>' in page
    signed, quiet = re.split(r'<section class="dkim"', page)[1:]
    assert 'data-domain="example.org"' in signed and 'data-signed="1"' in signed
    assert "1 message signed since the daemon started" in signed and "RSA 2048 bits" in signed
    assert "s1._domainkey.example.org. IN TXT (" in signed
    strings = re.findall(r'"([^"]*)"', html.unescape(signed.split("IN TXT (", 1)[1]))
    assert strings == record_strings(rsa_record) and len(strings) == 2
    assert 'data-signed="0"' in quiet and "nothing signed since the daemon started" in quiet
    assert "Ed25519" in quiet and f'"{ed_record}"' in html.unescape(quiet)
    assert "PRIVATE KEY" not in page


async def test_without_domains_the_page_says_how_to_sign(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    async with sluice([provider_for(upstream)]) as s, app_client(s) as c:
        r = await c.get("/dkim")
    assert r.status_code == 200
    assert "No domain is signed" in r.text and "sluice dkim keygen" in r.text
