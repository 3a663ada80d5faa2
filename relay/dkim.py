"""DKIM keys and their DNS records (RFC 6376, RFC 8463): everything about DKIM but signing.

A domain's private key is read when the config loads (``relay.config``
refuses a key that does not parse, or an RSA key under 2048 bits, with its
``FILE:LINE: key``), and again when the daemon builds its signer; the
signing itself is the outbound wing's (``relay.outbound.dkim``).

Keys are read with ``cryptography`` (PEM, PKCS#1 or PKCS#8, as
``opendkim-genkey`` and ``openssl genpkey`` write them), and also as the bare
base64 Ed25519 seed that dkimpy's ``dknewkey`` writes, then handed to dkimpy
in the one form it signs with (PKCS#1 PEM for RSA, the base64 seed for
Ed25519). The TXT record is ``v=DKIM1; k=rsa|ed25519; p=...``: for RSA the
DER SubjectPublicKeyInfo (what OpenDKIM publishes), for Ed25519 the raw
32-byte public key (RFC 8463 § 4.2). A record longer than 255 octets is
published as several character-strings of at most 255 each (RFC 6376
§ 3.6.2.2), which a resolver hands back joined.

The private key never leaves a ``DkimKey`` in text form: its ``repr``
hides it, and ``relay.config`` marks the key as a secret, so the log
redactor masks it should it ever reach a log line.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from relay.secrets import SecretError

if TYPE_CHECKING:  # imported where a key is read: a relay without DKIM keys never loads them
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

__all__ = [
    "DEFAULT_HEADERS",
    "MIN_RSA_BITS",
    "NEVER_SIGNED",
    "Algorithm",
    "DkimKey",
    "DkimKeyError",
    "generate_key",
    "load_key",
    "record_matches",
    "record_name",
    "record_strings",
    "record_tags",
]

Algorithm = Literal["rsa", "ed25519"]

#: RFC 8301 § 3.2 makes 1024 the floor; 2048 is what OpenDKIM's keygen and
#: every large receiver now ask for, and what the issue sets.
MIN_RSA_BITS = 2048

#: The header fields signed by default when present: RFC 6376 § 5.4.1's list,
#: which is OpenDKIM's default ``SignHeaders`` and dkimpy's ``DKIM.SHOULD``.
DEFAULT_HEADERS = (
    "from",
    "sender",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "to",
    "cc",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-id",
    "content-description",
    "resent-date",
    "resent-from",
    "resent-sender",
    "resent-to",
    "resent-cc",
    "resent-message-id",
    "in-reply-to",
    "references",
    "list-id",
    "list-help",
    "list-unsubscribe",
    "list-subscribe",
    "list-post",
    "list-owner",
    "list-archive",
)

#: never signed (RFC 6376 § 5.4: they change in transit); dkimpy refuses them too
NEVER_SIGNED = frozenset(
    ["return-path", "received", "comments", "keywords", "bcc", "resent-bcc", "dkim-signature"]
)

#: one character-string of a TXT record holds at most 255 octets (RFC 1035 § 3.3)
_TXT_STRING = 255


class DkimKeyError(SecretError):
    """A DKIM key that cannot be used: not a key, not RSA or Ed25519, or too short.

    A ``SecretError`` (so a ``LookupError``): the key is a secret that cannot
    be had in a usable form, reported under the YAML key the user wrote.
    """


@dataclass(frozen=True, slots=True)
class DkimKey:
    """One private key, in the form dkimpy signs with, and its public half for DNS."""

    algorithm: Algorithm
    #: RSA modulus size; 256 for Ed25519
    bits: int
    #: PKCS#1 PEM (RSA) or the base64 seed (Ed25519): what ``dkim.sign`` takes
    private: bytes = field(repr=False)
    #: the ``p=`` value of the TXT record (base64)
    public: str
    #: the RSA key as OpenSSL holds it (``relay.outbound.dkim`` signs with it); None for Ed25519
    rsa: rsa.RSAPrivateKey | None = field(default=None, repr=False, compare=False)

    @property
    def signature_algorithm(self) -> bytes:
        """The ``a=`` tag: ``rsa-sha256`` or ``ed25519-sha256`` (RFC 8463 § 3)."""
        return b"rsa-sha256" if self.algorithm == "rsa" else b"ed25519-sha256"

    def record(self) -> str:
        """The TXT record's value to publish: ``v=DKIM1; k=...; p=...``."""
        return f"v=DKIM1; k={self.algorithm}; p={self.public}"


def load_key(text: str, *, key: str = "key") -> DkimKey:
    """Read a private key from its text (PEM, or a bare base64 Ed25519 seed).

    Args:
        text: the key file's content.
        key: the YAML key it came from, for the error.

    Raises:
        DkimKeyError: not a key Sluice can sign with, or an RSA key under 2048 bits.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    stripped = text.strip()
    if "-----BEGIN" not in stripped:
        return _bare_ed25519(stripped, key)
    try:
        private = serialization.load_pem_private_key(stripped.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        reason = "it is encrypted" if "password" in str(exc).lower() else "it does not parse"
        raise DkimKeyError(key, f"not a usable PEM private key ({reason})") from None
    if isinstance(private, rsa.RSAPrivateKey):
        return _rsa(private, key)
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return _ed25519(private)
    kind = "an ECDSA" if isinstance(private, ec.EllipticCurvePrivateKey) else "another kind of"
    raise DkimKeyError(key, f"{kind} key; DKIM signs with RSA or Ed25519")


def _rsa(private: rsa.RSAPrivateKey, key: str) -> DkimKey:
    from cryptography.hazmat.primitives import serialization

    bits = private.key_size
    if bits < MIN_RSA_BITS:
        raise DkimKeyError(
            key,
            f"an RSA key of {bits} bits; DKIM keys need {MIN_RSA_BITS} bits or more "
            "(RFC 8301; `sluice dkim keygen` makes one)",
        )
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    spki = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return DkimKey("rsa", bits, pem, base64.b64encode(spki).decode("ascii"), private)


def _ed25519(private: ed25519.Ed25519PrivateKey) -> DkimKey:
    from cryptography.hazmat.primitives import serialization

    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return DkimKey("ed25519", 256, base64.b64encode(seed), base64.b64encode(public).decode("ascii"))


def _bare_ed25519(text: str, key: str) -> DkimKey:
    """dkimpy's ``dknewkey --ktype ed25519`` writes the 32-byte seed in base64, no PEM."""
    try:
        seed = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        seed = b""
    if len(seed) != 32:
        raise DkimKeyError(key, "not a PEM private key (nor a base64 Ed25519 seed)")
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return _ed25519(ed25519.Ed25519PrivateKey.from_private_bytes(seed))


def generate_key(algorithm: Algorithm = "rsa", bits: int = MIN_RSA_BITS) -> tuple[DkimKey, bytes]:
    """A new key and its PKCS#8 PEM (what ``sluice dkim keygen`` writes).

    Raises:
        DkimKeyError: an RSA size under 2048 bits.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == "rsa":
        if bits < MIN_RSA_BITS:
            raise DkimKeyError("--bits", f"{bits} bits; DKIM keys need {MIN_RSA_BITS} or more")
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return load_key(pem.decode("ascii")), pem


# ------------------------------------------------------------------- the DNS record


def record_name(domain: str, selector: str) -> str:
    """Where the key is published: ``SELECTOR._domainkey.DOMAIN`` (RFC 6376 § 3.6.2.1)."""
    return f"{selector}._domainkey.{domain}"


def record_strings(value: str) -> list[str]:
    """The record cut into character-strings of at most 255 octets, for a zone file."""
    return [value[i : i + _TXT_STRING] for i in range(0, len(value), _TXT_STRING)] or [""]


def record_tags(record: str) -> dict[str, str]:
    """The ``tag=value`` list of a DKIM TXT record (RFC 6376 § 3.2), blanks removed.

    Tag names are kept as written (they are case-sensitive); folding
    whitespace inside a value (a long ``p=``) is removed, as a verifier does.
    """
    tags: dict[str, str] = {}
    for part in record.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            tags.setdefault(name.strip(), "".join(value.split()))
    return tags


def record_matches(record: str, key: DkimKey) -> tuple[bool, str]:
    """Whether a published record fits ``key``, and why not in words.

    ``k=`` defaults to ``rsa`` (RFC 6376 § 3.6.1); an empty ``p=`` is a
    revoked key.
    """
    tags = record_tags(record)
    if tags.get("v", "DKIM1") != "DKIM1":
        return False, f"v={tags['v']}: not a DKIM1 record"
    kind = tags.get("k", "rsa")
    if kind != key.algorithm:
        return False, f"the record is for a k={kind} key; the configured key is {key.algorithm}"
    published = tags.get("p")
    if published is None:
        return False, "the record has no p= (public key)"
    if not published:
        return False, "the record's p= is empty: the key is revoked"
    if published != key.public:
        return False, "the record's p= is another public key than the configured key's"
    return True, "the record matches the configured key"
