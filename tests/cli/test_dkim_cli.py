"""``sluice dkim keygen`` and ``sluice dkim check`` (``relay.cli.dkim``); no test asks real DNS."""

from __future__ import annotations

import re
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import dns.resolver
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from relay.cli.dkim import DnsUnavailable, check_domain, txt_lookup
from relay.cli.main import main
from relay.config import DkimDomain, loads
from relay.dkim import generate_key, load_key
from relay.outbound.dkim import Signer, sign
from tests.daemon_proc import run_cli
from tests.dkim_check import dkimpy_verifies, opendkim_verifies

MESSAGE = (
    b"From: App <app@example.com>\r\nTo: b@example.net\r\nSubject: keygen\r\n"
    b"Date: Mon, 07 Dec 2026 14:00:00 +0000\r\nMessage-ID: <k@example.com>\r\n\r\nbody\r\n"
)
_RECORD = re.compile(r"^(\S+)\. IN TXT \( (.*) \)$", re.MULTILINE)


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
async def test_keygen_writes_a_0600_key_and_the_record_that_verifies_it(
    tmp_path: Path, algorithm: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = await run_cli(
        "dkim", "keygen", "example.com", "s2026", "--algorithm", algorithm, "--out", str(tmp_path)
    )
    assert rc == 0, err
    key_file = tmp_path / "example.com.s2026.private"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    match = _RECORD.search(out)
    assert match is not None, out
    name, quoted = match.groups()
    strings = re.findall(r'"([^"]*)"', quoted)
    assert all(len(s) <= 255 for s in strings)
    if algorithm == "rsa":
        assert len(strings) == 2  # a 2048-bit key's record is longer than one string
    record = "".join(strings)
    assert name == "s2026._domainkey.example.com"
    assert f"key_file: {key_file}" in out
    # the key Sluice will read signs, and the printed record verifies, with both verifiers
    key = load_key(key_file.read_text())
    signer = Signer([(DkimDomain(domain="example.com", selector="s2026", key=None), key)])
    signed = await sign(signer, MESSAGE)
    assert dkimpy_verifies(signed, {name: record})
    verdict = opendkim_verifies(signed, {name: record}, tmp_path / "opendkim")
    assert verdict.endswith("succeeded"), verdict
    # and it never replaces a key
    assert main(["dkim", "keygen", "example.com", "s2026", "--out", str(tmp_path)]) == 73
    assert f"{key_file} exists; remove it or pick another selector" in capsys.readouterr().err
    assert load_key(key_file.read_text()) == key


def test_keygen_refuses_a_short_key_and_a_bad_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dkim", "keygen", "example.com", "s1", "--bits", "1024"]) == 64
    assert "2048 bits or more" in capsys.readouterr().err
    assert main(["dkim", "keygen", "not a domain", "s1", "--out", str(tmp_path)]) == 64
    assert "'not a domain' is not a DKIM domain" in capsys.readouterr().err
    assert _files(tmp_path) == []


def _files(directory: Path) -> list[Path]:
    return list(directory.iterdir())


def _config(key_file: Path) -> str:
    return (
        "providers:\n  - id: main\n    host: smtp.example.com\n"
        "dkim:\n  domains:\n    - domain: example.com\n      selector: s1\n"
        f"      key_file: {key_file}\n"
    )


def test_check_compares_the_published_record_with_the_key(tmp_path: Path) -> None:
    key, pem = generate_key("ed25519")
    (tmp_path / "k.pem").write_bytes(pem)
    cfg = loads(_config(tmp_path / "k.pem"))
    asked: list[str] = []

    def published(*records: str) -> Callable[[str], list[str]]:
        def lookup(name: str) -> list[str]:
            asked.append(name)
            return list(records)

        return lookup

    code, lines = check_domain(cfg, "EXAMPLE.com", published(key.record()))
    assert (code, lines) == (
        0,
        ["s1._domainkey.example.com: ok: the record matches the configured Ed25519 key"],
    )
    assert asked == ["s1._domainkey.example.com"]
    other = generate_key("ed25519")[0].record()
    code, lines = check_domain(cfg, "example.com", published("google-site-verification=x", other))
    assert code == 65
    assert lines == [
        "s1._domainkey.example.com: does not match: the record's p= is another public key"
        " than the configured key's",
        f"publish: {key.record()}",
    ]
    code, lines = check_domain(cfg, "example.com", published())
    assert code == 65 and lines[0].endswith("no DKIM record published")
    code, lines = check_domain(cfg, "example.org", published())
    assert code == 78 and "not in dkim.domains (configured: example.com)" in lines[0]


def test_check_says_when_dns_cannot_be_reached(tmp_path: Path) -> None:
    key, pem = generate_key("rsa")
    (tmp_path / "k.pem").write_bytes(pem)
    cfg = loads(_config(tmp_path / "k.pem"))
    # A resolver on a local port nobody answers on: no packet leaves the host.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = port
    with pytest.raises(DnsUnavailable, match=r"no DNS answer within 0\.3 s"):
        txt_lookup("s1._domainkey.example.com", resolver=resolver, lifetime=0.3)

    def unreachable(name: str) -> list[str]:
        return txt_lookup(name, resolver=resolver, lifetime=0.3)

    code, lines = check_domain(cfg, "example.com", unreachable)
    assert code == 69
    assert lines == [
        "s1._domainkey.example.com: cannot look it up: DNS is not reachable from here"
        " (no DNS answer within 0.3 s)",
        f"the record to publish: {key.record()}",
    ]


def test_check_of_a_domain_not_configured_asks_no_dns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, pem = generate_key("ed25519")
    (tmp_path / "k.pem").write_bytes(pem)
    path = tmp_path / "sluice.yaml"
    path.write_text(_config(tmp_path / "k.pem"))
    assert main(["dkim", "check", "-c", str(path), "example.org"]) == 78
    assert "example.org: not in dkim.domains (configured: example.com)" in capsys.readouterr().err
    (tmp_path / "k.pem").write_text("not a key")
    assert main(["dkim", "check", "-c", str(path), "example.com"]) == 78
    assert "example.com: key_file: not a PEM private key" in capsys.readouterr().err


def test_sluice_check_refuses_a_short_rsa_key_with_file_line_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    key_file = tmp_path / "short.pem"
    key_file.write_bytes(
        short.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path = tmp_path / "sluice.yaml"
    path.write_text(_config(key_file))
    assert main(["check", "-c", str(path)]) == 78
    err = capsys.readouterr().err
    assert f"sluice: {path}:8: dkim.domains.0.key_file: an RSA key of 1024 bits" in err
    assert "BEGIN" not in err
