"""DKIM signing on the way out (RFC 6376, RFC 8463 for Ed25519): the last step before sending.

``sign(signer, data)`` is called once per provider attempt, on the bytes that
provider will be sent: after its ``send_from`` rewrite (``relay.message.rewrite``)
and after any header change made for it, so the signature covers what leaves.
The signing domain is the From header's (of those bytes, so after a
rewrite it is ``send_from``'s domain), matched exactly as OpenDKIM does by
default (no subdomains). Mail that already carries a DKIM-Signature with
``d=`` that domain is sent as it is (the app signed it, or an earlier hop).

The signature is made by ``dkimpy`` (the library the issue asks for, kept
since 2008), with the RSA key operation done by OpenSSL
(``relay.outbound.dkim_crypto``, loaded by the first signature only: dkimpy
and OpenSSL's bindings cost a process about 30 MB; dkimpy's own RSA takes
about 7 ms of CPU in Python). Costs per message (bench/RESULTS.md):
RSA 2048 or Ed25519 about 0.3-1 ms at 2 KB; at 100 KB about 6 ms, dkimpy's
relaxed body canonicalisation (regular expressions over the body). So the
work runs in a thread (``asyncio.to_thread``), except for Ed25519 over a
small message, cheaper than the hop. dkimpy's Python code holds the GIL, so
the event loop can still wait for a piece of it, not for the whole signature.

A message with a line over 998 octets (PHP's unwrapped HTML) is re-encoded
(``relay.outbound.transfer``, as the session would do after the signature)
before it is signed, so that the signature covers what is sent.

Signatures are kept per (domain, selector, bytes signed) in a small bounded
cache, so a message offered to a second provider with the same rewrite, or
retried soon with the same bytes, is not signed again. A message that cannot
be signed (dkimpy refuses its header block) is sent unsigned with a warning,
as OpenDKIM's default (``On-Default accept``) does.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from relay.config import DkimDomain, DkimSettings
from relay.dkim import DkimKey, load_key, record_name, record_tags
from relay.message import HeaderBlock, bare_line_ending, field_value
from relay.outbound.transfer import Unconvertible, fits

__all__ = ["DkimDomainStatus", "Signer", "sign"]

log = logging.getLogger("sluice.dkim")

#: Ed25519 over a message up to this size costs less than the thread hop (< 1 ms)
_INLINE_MAX = 8 * 1024
#: signatures kept for messages offered again (one header of ~500 bytes each)
_CACHE_SIZE = 256
_LINE_ENDING = b"\r\n"
_ANY_LINE_ENDING = re.compile(rb"\r\n|\n|\r")


@dataclass(frozen=True, slots=True)
class DkimDomainStatus:
    """One configured domain as the admin shows it."""

    domain: str
    selector: str
    algorithm: str
    bits: int
    #: where to publish the record, and its value
    record_name: str
    record: str
    #: mail signed for this domain since the daemon started, and the last time
    signed: int
    last_signed_at: float | None
    #: messages sent unsigned because dkimpy refused them, and the last reason
    failed: int
    last_error: str


@dataclass(slots=True)
class _Domain:
    settings: DkimDomain
    key: DkimKey
    signed: int = 0
    last_signed_at: float | None = None
    failed: int = 0
    last_error: str = ""


class Signer:
    """The configured domains with their keys (read at load and reload), and what was signed."""

    def __init__(
        self, domains: list[tuple[DkimDomain, DkimKey]], *, clock: Callable[[], float] = time.time
    ) -> None:
        self._domains = {d.domain: _Domain(d, key) for d, key in domains}
        self._clock = clock
        self._cache: OrderedDict[tuple[str, str, bytes], bytes] = OrderedDict()

    @classmethod
    def from_config(
        cls,
        settings: DkimSettings,
        *,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        previous: Signer | None = None,
    ) -> Signer:
        """Read every domain's key now; counts of domains that stay carry over a reload.

        Raises:
            SecretError: a key cannot be read, or is not a usable key
                (``DkimKeyError``); ``relay.config.load`` has reported it already
                unless the file changed since.
        """
        loaded = []
        for d in settings.domains:
            if d.key is None:  # a model built in code without a key: nothing to sign with
                continue
            text = d.key.resolve(env).get_secret_value()
            loaded.append((d, load_key(text, key=d.key.yaml_key)))
        signer = cls(loaded, clock=clock)
        if previous is not None:
            for name, entry in signer._domains.items():
                old = previous._domains.get(name)
                if old is not None:
                    entry.signed, entry.last_signed_at = old.signed, old.last_signed_at
                    entry.failed, entry.last_error = old.failed, old.last_error
        return signer

    def __bool__(self) -> bool:
        return bool(self._domains)

    def status(self) -> list[DkimDomainStatus]:
        """Every configured domain, in config order."""
        return [
            DkimDomainStatus(
                domain=name,
                selector=e.settings.selector,
                algorithm=e.key.algorithm,
                bits=e.key.bits,
                record_name=record_name(name, e.settings.selector),
                record=e.key.record(),
                signed=e.signed,
                last_signed_at=e.last_signed_at,
                failed=e.failed,
                last_error=e.last_error,
            )
            for name, e in self._domains.items()
        ]

    def key_of(self, domain: str) -> DkimKey | None:
        """The key configured for ``domain``, or ``None``."""
        entry = self._domains.get(domain.lower())
        return entry.key if entry is not None else None

    def _entry_for(self, head: HeaderBlock) -> _Domain | None:
        """The domain to sign for: the From header's, if configured and not signed for yet."""
        author = head.value("from")
        if not author:
            return None
        addresses = email.utils.getaddresses([author])
        address = addresses[0][1] if addresses else ""
        domain = address.rpartition("@")[2].lower().rstrip(".")
        entry = self._domains.get(domain)
        if entry is None:
            return None
        for field, name in zip(head.fields, head.names, strict=True):
            if name == "dkim-signature":
                tags = record_tags(field_value(field).decode("ascii", "replace"))
                if tags.get("d", "").lower().rstrip(".") == domain:
                    return None  # signed for this domain already: not twice
        return entry

    async def sign(self, data: bytes, head: HeaderBlock | None = None) -> bytes:
        """``data`` with a DKIM-Signature prepended, or ``data`` itself when none is due."""
        if not self._domains:
            return data
        block = head if head is not None else HeaderBlock(data)
        if not block.mentions("from"):
            return data
        entry = self._entry_for(block)
        if entry is None:
            return data
        # dkimpy and OpenSSL's bindings (about 30 MB) are loaded by the first signature,
        # so a relay that signs nothing never carries them.
        from relay.outbound import dkim_crypto

        if bare_line_ending(data) is not None:
            # What goes on the wire has CRLF everywhere (``wire_data``): sign that.
            data = _ANY_LINE_ENDING.sub(_LINE_ENDING, data)
            block = HeaderBlock(data)
        s = entry.settings
        if not fits(data, eight_bit=True):
            # A line over 998 octets: the session would re-encode it after the
            # signature and break it, so re-encode first and sign that (rare;
            # not cached). 8-bit text is left as it is (RFC 6376 § 5.3 would
            # have it made 7-bit; providers offer 8BITMIME).
            try:
                data, header, changes = await asyncio.to_thread(
                    dkim_crypto.fit_and_sign, data, s, entry.key
                )
            except (dkim_crypto.DKIMException, Unconvertible) as exc:
                return self._unsigned(entry, data, exc)
            log.info("dkim: re-encoded before signing for %s: %s", s.domain, "; ".join(changes))
        else:
            include = [n for n in block.names if n in s.headers] + list(s.oversign)
            cache_key = (s.domain, s.selector, hashlib.blake2b(data, digest_size=20).digest())
            cached = self._cache.get(cache_key)
            if cached is not None:
                self._cache.move_to_end(cache_key)
                header = cached
            else:
                try:
                    if entry.key.algorithm == "ed25519" and len(data) <= _INLINE_MAX:
                        header = dkim_crypto.signature(data, s, entry.key, include)
                    else:
                        header = await asyncio.to_thread(
                            dkim_crypto.signature, data, s, entry.key, include
                        )
                except dkim_crypto.DKIMException as exc:
                    return self._unsigned(entry, data, exc)
                self._cache[cache_key] = header
                if len(self._cache) > _CACHE_SIZE:
                    self._cache.popitem(last=False)
        entry.signed += 1
        entry.last_signed_at = self._clock()
        return header + data

    @staticmethod
    def _unsigned(entry: _Domain, data: bytes, exc: Exception) -> bytes:
        """Count and log a message that leaves unsigned (OpenDKIM's ``On-Default accept``)."""
        entry.failed += 1
        entry.last_error = str(exc)
        log.warning("dkim: not signed for %s: %s", entry.settings.domain, exc)
        return data


async def sign(signer: Signer | None, data: bytes, *, head: HeaderBlock | None = None) -> bytes:
    """The last step of preparing a message for one provider: add its DKIM signature.

    ``head`` is the header block of ``data`` when the caller has it parsed.
    Without a signer (no ``dkim:`` domains) the bytes are returned untouched.
    """
    if not signer:
        return data
    return await signer.sign(data, head)
