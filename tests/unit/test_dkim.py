"""DKIM keys, records and the config's refusal of a bad key (``relay.dkim``, ``relay.config``)."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from relay.config import loads
from relay.dkim import (
    DkimKeyError,
    generate_key,
    load_key,
    record_matches,
    record_name,
    record_strings,
)
from relay.errors import ConfigError


def _pem(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, fmt: serialization.PrivateFormat
) -> str:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode(
        "ascii"
    )


def test_an_rsa_key_loads_from_pkcs8_and_pkcs1_alike() -> None:
    key, pem = generate_key("rsa")
    assert key.algorithm == "rsa" and key.bits == 2048
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    private = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    pkcs1 = _pem(private, serialization.PrivateFormat.TraditionalOpenSSL)
    assert load_key(pkcs1) == key
    assert key.private.startswith(b"-----BEGIN RSA PRIVATE KEY-----")  # what dkimpy reads
    assert "PRIVATE" not in repr(key)


def test_an_ed25519_key_loads_from_pem_and_from_dkimpys_bare_seed() -> None:
    key, pem = generate_key("ed25519")
    assert key.algorithm == "ed25519" and pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert len(base64.b64decode(key.public)) == 32  # RFC 8463 § 4.2: the raw key
    assert load_key(key.private.decode("ascii")) == key  # dknewkey's format


@pytest.mark.parametrize("bits", [1024, 1536])
def test_an_rsa_key_under_2048_bits_is_refused(bits: int) -> None:
    short = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    with pytest.raises(DkimKeyError, match=f"an RSA key of {bits} bits; DKIM keys need 2048"):
        load_key(_pem(short, serialization.PrivateFormat.PKCS8), key="key_file")


def test_other_keys_and_other_text_are_refused() -> None:
    ecdsa = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(DkimKeyError, match="an ECDSA key; DKIM signs with RSA or Ed25519"):
        load_key(_pem(ecdsa, serialization.PrivateFormat.PKCS8))
    with pytest.raises(DkimKeyError, match="not a usable PEM private key"):
        load_key("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(DkimKeyError, match="not a PEM private key"):
        load_key("hunter2")


def test_the_record_is_cut_in_strings_of_255_octets_at_most() -> None:
    key, _ = generate_key("rsa", 3072)
    record = key.record()
    strings = record_strings(record)
    assert len(strings) >= 3 and all(len(s) <= 255 for s in strings)
    assert "".join(strings) == record
    assert record_strings("v=DKIM1; k=ed25519; p=abc") == ["v=DKIM1; k=ed25519; p=abc"]
    assert record_name("example.com", "s1") == "s1._domainkey.example.com"


def test_a_published_record_is_compared_with_the_key() -> None:
    key, _ = generate_key("ed25519")
    other, _ = generate_key("ed25519")
    rsa_key, _ = generate_key("rsa")
    assert record_matches(key.record(), key) == (True, "the record matches the configured key")
    # a resolver may hand back the strings joined with blanks inside p=
    spaced = key.record().replace("p=", "p= ")
    assert record_matches(spaced, key)[0]
    assert record_matches(other.record(), key) == (
        False,
        "the record's p= is another public key than the configured key's",
    )
    assert record_matches("v=DKIM1; k=ed25519; p=", key)[1].endswith("the key is revoked")
    assert "k=rsa key" in record_matches(rsa_key.record(), key)[1]
    # k= defaults to rsa (RFC 6376 § 3.6.1)
    assert record_matches(f"v=DKIM1; p={rsa_key.public}", rsa_key)[0]


def _config(tmp_path: Path, key_file: Path, extra: str = "") -> str:
    return (
        "providers:\n"
        "  - id: main\n"
        "    host: smtp.example.com\n"
        "dkim:\n"
        "  domains:\n"
        "    - domain: Example.COM\n"
        "      selector: s2026\n"
        f"      key_file: {key_file}\n" + extra
    )


def test_the_config_refuses_a_short_rsa_key_with_file_line_and_key(tmp_path: Path) -> None:
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    key_file = tmp_path / "short.key"
    key_file.write_text(_pem(short, serialization.PrivateFormat.TraditionalOpenSSL))
    with pytest.raises(ConfigError) as caught:
        loads(_config(tmp_path, key_file), source="sluice.yaml", secrets=True)
    assert caught.value.issues == [
        "sluice.yaml:8: dkim.domains.0.key_file: an RSA key of 1024 bits; DKIM keys need"
        " 2048 bits or more (RFC 8301; `sluice dkim keygen` makes one)"
    ]
    # commands that read no secrets (queue listings) are not stopped by it
    assert loads(_config(tmp_path, key_file), secrets=False).dkim.domains[0].domain == "example.com"


def test_the_config_checks_the_dkim_block(tmp_path: Path) -> None:
    _, pem = generate_key("ed25519")
    key_file = tmp_path / "ed.key"
    key_file.write_bytes(pem)
    cfg = loads(_config(tmp_path, key_file), secrets=True)
    (d,) = cfg.dkim.domains
    assert d.canonicalization == "relaxed/relaxed" and d.oversign == ["from"]
    assert d.headers[:4] == ["from", "sender", "reply-to", "subject"]
    assert cfg.dkim.for_domain("EXAMPLE.com") is d
    with pytest.raises(ConfigError, match=r"dkim.domains.0.headers: .*must include from"):
        loads(_config(tmp_path, key_file, "      headers: [to, subject]\n"))
    with pytest.raises(ConfigError, match=r"'received' must not be signed"):
        loads(_config(tmp_path, key_file, "      headers: [from, Received]\n"))
    twice = _config(tmp_path, key_file) + (
        f"    - domain: example.com\n      selector: s2\n      key_file: {key_file}\n"
    )
    with pytest.raises(ConfigError, match=r"sluice.yaml:9: dkim.domains.1.domain: duplicate"):
        loads(twice, source="sluice.yaml")
    missing = tmp_path / "nope.key"
    with pytest.raises(ConfigError, match=r"dkim.domains.0.key_file: cannot read"):
        loads(_config(tmp_path, missing), secrets=True)


def test_without_a_key_given_the_key_is_the_credential_named_after_the_domain(
    tmp_path: Path,
) -> None:
    _, pem = generate_key("ed25519")
    (tmp_path / "dkim-example.com").write_bytes(pem)
    text = (
        "providers:\n  - id: main\n    host: smtp.example.com\n"
        "dkim:\n  domains:\n    - domain: example.com\n      selector: s1\n"
    )
    cfg = loads(text, secrets=True, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    (ref,) = [r for r in cfg.secrets() if r.loc[0] == "dkim"]
    # a secret like the others: resolved at load, and masked in logs (logsetup.config_secrets)
    assert ref.loc == ("dkim", "domains", 0, "key")
    assert ref.source.credential == "dkim-example.com"
    assert ref.source.resolve({"CREDENTIALS_DIRECTORY": str(tmp_path)}).get_secret_value()
    with pytest.raises(ConfigError, match=r"dkim.domains.0.key: DKIM domain example.com has no"):
        loads(text, secrets=True, env={})


def test_a_relay_that_signs_nothing_does_not_load_dkimpy_openssl_or_dnspython() -> None:
    """dkimpy, ``cryptography`` and dnspython cost a process about 30 MB: loaded on use only.

    The daemon, an accept worker and the command line import them when a key
    is read, a signature made or a record looked up, never at start.
    """
    code = (
        "import sys, relay.daemon, relay.inbound.workers, relay.cli.main\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'dkim', 'cryptography', 'dns'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stdout
