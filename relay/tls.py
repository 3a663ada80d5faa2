"""TLS contexts: how Sluice checks a server it connects to, and what its listeners offer.

One rule for every TLS client Sluice opens: the system's trust store (or the
configured ``ca_file`` instead), the host name checked, TLS 1.2 at least
(RFC 8996 retired 1.0 and 1.1), all from ``ssl.create_default_context``.
A provider or mailbox with ``tls_verify: false`` turns both checks off; the
connection is still encrypted. ``relay.outbound.handshake`` also uses it, with
``verify=False`` and no version floor, for its sniff that only asks "does
this port speak TLS at all?", so that an old server is named for what it is.

``server_context`` is the other side, for ``smtp.listen`` entries with
``tls: starttls`` or ``implicit``: TLS 1.2 at least, forward-secret AEAD
ciphers only for 1.2 (Mozilla's "intermediate" set; 1.3's suites are all
AEAD), no compression, no renegotiation, no client certificates asked.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Protocol

__all__ = [
    "MINIMUM_VERSION",
    "SERVER_CIPHERS",
    "TlsClientSettings",
    "client_context",
    "credential_path",
    "server_context",
    "settings_context",
]

#: RFC 8996: TLS 1.0 and 1.1 are deprecated
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def client_context(
    ca_file: Path | str | None = None,
    *,
    verify: bool = True,
    minimum_version: ssl.TLSVersion = MINIMUM_VERSION,
) -> ssl.SSLContext:
    """A client context that checks the server's certificate and name unless ``verify`` is off.

    Args:
        ca_file: PEM file of the authorities to trust instead of the system's.
        verify: check the certificate chain and the host name.
        minimum_version: the oldest TLS version offered.
    """
    if verify:
        ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    else:
        # Nothing is checked, so no trust store is loaded: OpenSSL 3 spends
        # about 17 MB of the process on the system's (bench scale showed it).
        # PROTOCOL_TLS_CLIENT has the same secure defaults otherwise.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # check_hostname first: verify_mode cannot be CERT_NONE while it is on.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = minimum_version
    return ctx


class TlsClientSettings(Protocol):
    """What a config section needs to say for a TLS client (provider, bounce mailbox)."""

    @property
    def encryption(self) -> str: ...

    @property
    def ca_file(self) -> Path | None: ...

    @property
    def tls_verify(self) -> bool: ...


def settings_context(settings: TlsClientSettings) -> ssl.SSLContext | None:
    """The context for a config section; ``None`` when it says ``encryption: none``."""
    if settings.encryption == "none":
        return None
    return client_context(settings.ca_file, verify=settings.tls_verify)


#: TLS 1.2 suites a listener accepts: ECDHE or DHE key exchange, AES-GCM or ChaCha20
SERVER_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384"
)


def credential_path(path: Path) -> Path:
    """``path``, or the systemd credential of that name when it is relative and one exists."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory and not path.is_absolute():
        candidate = Path(directory) / path
        if candidate.exists():
            return candidate
    return path


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A listener's context: the certificate chain and key read now (a reload reads them again).

    Raises:
        OSError: a file cannot be read (``ssl.SSLError``, an ``OSError``, when it is not PEM
            or the key does not match).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MINIMUM_VERSION
    ctx.set_ciphers(SERVER_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(credential_path(cert_file), credential_path(key_file))
    return ctx
