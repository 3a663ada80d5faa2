"""The one client TLS context (relay.tls) against a real TLS server on port 0 (trustme certs)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from relay.bounces.mailbox import tls_context as mailbox_context
from relay.config import MailboxSettings, ProviderSettings
from relay.outbound.providers import tls_context as provider_context
from relay.tls import MINIMUM_VERSION, client_context, settings_context


async def _greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"hello\n")
    await writer.drain()
    writer.close()


@pytest.fixture
async def tls_port(server_tls: ssl.SSLContext) -> AsyncIterator[int]:
    """A TLS server on 127.0.0.1 whose certificate names 127.0.0.1 and localhost."""
    server = await asyncio.start_server(_greet, "127.0.0.1", 0, ssl=server_tls)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def _read(port: int, ctx: ssl.SSLContext, name: str = "localhost") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=name)
    try:
        return await reader.readline()
    finally:
        writer.close()


async def test_the_configured_ca_is_trusted(tls_port: int, ca_file: Path) -> None:
    assert await _read(tls_port, client_context(ca_file)) == b"hello\n"


async def test_an_unknown_authority_is_refused(tls_port: int) -> None:
    # The system store does not know trustme's CA.
    with pytest.raises(ssl.SSLCertVerificationError):
        await _read(tls_port, client_context())


async def test_a_name_the_certificate_does_not_carry_is_refused(
    tls_port: int, ca_file: Path
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match=r"(?i)hostname|match"):
        await _read(tls_port, client_context(ca_file), name="mail.example.com")


async def test_verify_off_takes_any_certificate_and_still_encrypts(tls_port: int) -> None:
    ctx = client_context(verify=False)
    assert await _read(tls_port, ctx, name="mail.example.com") == b"hello\n"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_a_server_below_tls_1_2_is_refused(ca: trustme.CA, ca_file: Path) -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(old)
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    server = await asyncio.start_server(_greet, "127.0.0.1", 0, ssl=old)
    async with server:
        port = server.sockets[0].getsockname()[1]
        # Only a client that offers TLS 1.1 can talk to it (else the test proves nothing) ...
        legacy = client_context(ca_file, minimum_version=ssl.TLSVersion.MINIMUM_SUPPORTED)
        legacy.set_ciphers("DEFAULT:@SECLEVEL=0")
        try:
            await _read(port, legacy)
        except (ssl.SSLError, ConnectionError):
            pytest.skip("this OpenSSL will not speak TLS 1.1 at all")
        # ... and ours does not.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await _read(port, client_context(ca_file))


def test_defaults() -> None:
    ctx = client_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname
    assert ctx.minimum_version == MINIMUM_VERSION == ssl.TLSVersion.TLSv1_2


def test_a_context_that_checks_nothing_loads_no_trust_store() -> None:
    # The system's trust store costs about 17 MB under OpenSSL 3, and the
    # handshake's sniff builds such a context for every unreachable provider.
    sniff = client_context(verify=False, minimum_version=ssl.TLSVersion.MINIMUM_SUPPORTED)
    assert sniff.cert_store_stats()["x509_ca"] == 0
    assert (sniff.verify_mode, sniff.check_hostname) == (ssl.CERT_NONE, False)
    assert sniff.minimum_version == ssl.TLSVersion.MINIMUM_SUPPORTED
    assert client_context().cert_store_stats()["x509_ca"] > 0  # the checking one does


def test_providers_and_the_mailbox_use_it(ca_file: Path) -> None:
    provider = ProviderSettings.model_validate(
        {"id": "p", "host": "smtp.example.com", "ca_file": str(ca_file), "tls_verify": False}
    )
    box = MailboxSettings.model_validate(
        {"host": "imap.example.com", "username": "u", "password": "p", "ca_file": str(ca_file)}
    )
    assert provider_context is mailbox_context is settings_context
    p = provider_context(provider)
    b = mailbox_context(box)
    assert p is not None and p.verify_mode == ssl.CERT_NONE and not p.check_hostname
    assert b is not None and b.verify_mode == ssl.CERT_REQUIRED and b.check_hostname
    assert b.get_ca_certs() != []
    plain = provider.model_copy(update={"encryption": "none"})
    assert provider_context(plain) is None
