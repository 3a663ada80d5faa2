"""dkimpy with OpenSSL's RSA: the CPU work of a DKIM signature, loaded only when one is made.

``relay.outbound.dkim`` decides what to sign and imports this module at its
first signature: dkimpy (with dnspython) and ``cryptography`` add about 30 MB
to a process, which a relay without ``dkim:`` domains never needs.
"""

from __future__ import annotations

import dkim
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim import DKIMException

from relay.config import DkimDomain
from relay.dkim import DkimKey
from relay.message import HeaderBlock
from relay.outbound.transfer import convert

__all__ = ["DKIMException", "fit_and_sign", "signature"]

_LINE_ENDING = b"\r\n"


class _OpenSslRsa:
    """``sign(digest).signature``, the shape dkimpy's Ed25519 branch calls: RSA by OpenSSL.

    RSASSA-PKCS1-v1_5 over the SHA-256 digest dkimpy computed (RFC 6376
    § 3.3.1), which is what dkimpy's own RSA code computes, in pure Python.
    """

    __slots__ = ("_key", "signature")

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self._key = key
        self.signature = b""

    def sign(self, digest: bytes) -> _OpenSslRsa:
        self.signature = self._key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        return self


class _Dkim(dkim.DKIM):  # type: ignore[misc]  # dkimpy has no type hints
    """dkimpy's signer, with the RSA private-key operation done by OpenSSL (``cryptography``).

    dkimpy makes an RSA signature in Python: two 1024-bit modular
    exponentiations, about 7 ms of CPU per message for a 2048-bit key, each
    holding the GIL for 3-4 ms, so that even from a thread it stalls the
    event loop that long (bench/RESULTS.md). It has no hook for the key
    operation; its ``gen_header`` hands an Ed25519 key the digest
    (``pk.sign(digest).signature``). For RSA this class lets ``gen_header``
    take that branch with ``_OpenSslRsa``: canonicalization, header choice,
    hashing and the field's layout stay dkimpy's, and ``a=rsa-sha256`` is
    already in the field. Checked against dkimpy 1.1 (pinned ``<1.2``);
    every RSA signature of the tests is verified by dkimpy and OpenDKIM.
    """

    signature_algorithm: bytes

    def __init__(self, message: bytes, key: rsa.RSAPrivateKey | None) -> None:
        super().__init__(message, linesep=_LINE_ENDING)
        self._openssl_key = key

    def gen_header(
        self,
        fields: list[tuple[bytes, bytes]],
        include_headers: object,
        canon_policy: object,
        header_name: bytes,
        pk: object,
        standardize: bool = False,
    ) -> bytes:
        if self._openssl_key is None or self.signature_algorithm != b"rsa-sha256":
            header: bytes = super().gen_header(
                fields, include_headers, canon_policy, header_name, pk, standardize
            )
            return header
        self.signature_algorithm = b"ed25519-sha256"  # the branch that calls pk.sign(digest)
        try:
            header = super().gen_header(
                fields,
                include_headers,
                canon_policy,
                header_name,
                _OpenSslRsa(self._openssl_key),
                standardize,
            )
        finally:
            self.signature_algorithm = b"rsa-sha256"
        return header


def fit_and_sign(data: bytes, s: DkimDomain, key: DkimKey) -> tuple[bytes, bytes, tuple[str, ...]]:
    """Re-encode what does not fit the wire (``transfer.convert``), then sign: in a thread."""
    fitted = convert(data, eight_bit=True)
    include = [n for n in HeaderBlock(fitted.data).names if n in s.headers] + list(s.oversign)
    return fitted.data, signature(fitted.data, s, key, include), fitted.changes


def signature(data: bytes, s: DkimDomain, key: DkimKey, include: list[str]) -> bytes:
    """The DKIM-Signature field (CRLF-ended) for ``data``: the CPU work, thread-safe."""
    header_c, body_c = s.canonicalization.split("/")
    signature: bytes = _Dkim(data, key.rsa).sign(
        s.selector.encode("ascii"),
        s.domain.encode("ascii"),
        key.private,
        signature_algorithm=key.signature_algorithm,
        canonicalize=(header_c.encode("ascii"), body_c.encode("ascii")),
        include_headers=[n.encode("ascii") for n in include],
    )
    return signature
