"""Two independent DKIM verifiers for the tests: dkimpy, and OpenDKIM's test mode.

dkimpy's ``dkim.verify`` answers its DNS look-ups from a dict (the ``dnsfunc``
hook); OpenDKIM (``opendkim -x CONF -t FILE``, Debian's ``opendkim``) reads its
keys from a ``TestPublicKeys`` file instead of DNS (opendkim.conf(5)) and
shares no code with dkimpy. OpenDKIM reports one signature per message, so
each signature is checked on a copy of the message holding only that one.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import dkim

__all__ = [
    "OPENDKIM",
    "dkimpy_verifies",
    "opendkim_verifies",
    "signatures",
    "without_other_signatures",
]

OPENDKIM = shutil.which("opendkim") or "/usr/sbin/opendkim"

#: ``SELECTOR._domainkey.DOMAIN`` -> the TXT record's value
Records = dict[str, str]


def dkimpy_verifies(message: bytes, records: Records, index: int = 0) -> bool:
    """Whether dkimpy verifies the ``index``-th DKIM-Signature, DNS answered from ``records``."""

    def dnsfunc(name: bytes | str, timeout: int = 5) -> bytes:
        key = (name.decode() if isinstance(name, bytes) else name).rstrip(".")
        return records[key].encode() if key in records else b""

    verifier = dkim.DKIM(message)
    try:
        return bool(verifier.verify(idx=index, dnsfunc=dnsfunc))
    except dkim.ValidationError:  # a body hash mismatch is raised, not returned
        return False


def signatures(message: bytes) -> list[bytes]:
    """The DKIM-Signature fields of the header block (folded lines kept)."""
    head = message.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    fields: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return [f for f in fields if f.lower().startswith(b"dkim-signature:")]


def without_other_signatures(message: bytes, keep: bytes) -> bytes:
    """``message`` with every DKIM-Signature field but ``keep`` removed."""
    out = message
    for sig in signatures(message):
        if sig != keep:
            out = out.replace(sig, b"", 1)
    return out


def opendkim_verifies(message: bytes, records: Records, workdir: Path) -> str:
    """OpenDKIM's verdict line on the message's (only) signature; its keys from ``records``."""
    workdir.mkdir(parents=True, exist_ok=True)
    keys = workdir / "keys"
    keys.write_text("".join(f"{name} {value}\n" for name, value in records.items()))
    conf = workdir / "opendkim.conf"
    conf.write_text(f"Mode v\nSyslog no\nTestPublicKeys {keys}\n")
    msg = workdir / "message.eml"
    msg.write_bytes(message)
    done = subprocess.run(
        [OPENDKIM, "-x", str(conf), "-t", str(msg)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return (done.stdout + done.stderr).strip()
