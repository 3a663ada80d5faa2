"""``sluice dkim keygen`` and ``sluice dkim check``: a DKIM key, and whether DNS publishes it.

``keygen DOMAIN SELECTOR`` writes a new private key (PKCS#8 PEM, the form
``openssl genpkey`` and OpenDKIM read) with mode 0600, refusing to replace a
file, and prints the TXT record to publish, cut into character-strings of
255 octets at most as a zone file takes them, and the ``dkim.domains`` entry
to add. It needs no config: keys are often made on another machine.

``check DOMAIN`` reads the configured key and looks up
``SELECTOR._domainkey.DOMAIN`` (dnspython, which dkimpy already needs). When
no resolver answers it says so rather than "no record". Exit codes: 0 the
record matches, 65 (EX_DATAERR) no record or another key, 69 DNS unreachable,
78 the domain or its key is not configured right.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from os import EX_CANTCREAT, EX_CONFIG, EX_DATAERR, EX_OK, EX_UNAVAILABLE, EX_USAGE
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from relay.config import Config, DkimDomain, load
from relay.dkim import (
    DkimKey,
    generate_key,
    load_key,
    record_matches,
    record_name,
    record_strings,
)
from relay.errors import SluiceError
from relay.secrets import SecretError

if TYPE_CHECKING:  # dnspython (about 15 MB) is loaded by `sluice dkim check` only
    import dns.resolver

__all__ = ["DnsUnavailable", "check_domain", "register", "txt_lookup"]

#: how long ``check`` waits for DNS in all
_DNS_LIFETIME = 5.0


class DnsUnavailable(SluiceError):
    """No resolver answered (no network, no resolv.conf, a timeout): not "no record"."""


def txt_lookup(
    name: str, *, resolver: dns.resolver.Resolver | None = None, lifetime: float = _DNS_LIFETIME
) -> list[str]:
    """The TXT records at ``name``, each one's strings joined; ``[]`` when there is none.

    Raises:
        DnsUnavailable: no resolver could be asked or none answered in time.
    """
    import dns.exception
    import dns.resolver

    try:
        res = resolver if resolver is not None else dns.resolver.Resolver()
        answer = res.resolve(name, "TXT", lifetime=lifetime)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.resolver.NoResolverConfiguration:
        raise DnsUnavailable("no DNS resolver is configured (/etc/resolv.conf)") from None
    except dns.resolver.LifetimeTimeout:
        raise DnsUnavailable(f"no DNS answer within {lifetime:g} s") from None
    except dns.resolver.NoNameservers as exc:
        raise DnsUnavailable(f"no DNS server answered ({exc})") from None
    except dns.exception.DNSException as exc:
        raise DnsUnavailable(str(exc)) from None
    return [
        b"".join(rdata.strings).decode("utf-8", "replace")
        for rdata in answer
        if hasattr(rdata, "strings")
    ]


def check_domain(
    cfg: Config, domain: str, lookup: Callable[[str], list[str]] = txt_lookup
) -> tuple[int, list[str]]:
    """What ``sluice dkim check DOMAIN`` says, and its exit code; DNS through ``lookup``."""
    entry = cfg.dkim.for_domain(domain)
    if entry is None:
        known = ", ".join(d.domain for d in cfg.dkim.domains) or "none"
        return EX_CONFIG, [f"{domain}: not in dkim.domains (configured: {known})"]
    try:
        key = _configured_key(entry)
    except SecretError as exc:
        return EX_CONFIG, [f"{entry.domain}: {exc.key}: {exc.message}"]
    name = record_name(entry.domain, entry.selector)
    try:
        found = [r for r in lookup(name) if r.lstrip().startswith("v=DKIM1") or "p=" in r]
    except DnsUnavailable as exc:
        return EX_UNAVAILABLE, [
            f"{name}: cannot look it up: DNS is not reachable from here ({exc})",
            f"the record to publish: {key.record()}",
        ]
    if not found:
        return EX_DATAERR, [f"{name}: no DKIM record published", f"publish: {key.record()}"]
    verdicts = [record_matches(r, key) for r in found]
    if any(ok for ok, _ in verdicts):
        return EX_OK, [f"{name}: ok: the record matches the configured {_kind(key)} key"]
    lines = [f"{name}: does not match: {why}" for _, why in verdicts]
    return EX_DATAERR, [*lines, f"publish: {key.record()}"]


def _configured_key(entry: DkimDomain) -> DkimKey:
    if entry.key is None:
        raise SecretError("key", "no key given")
    return load_key(entry.key.resolve().get_secret_value(), key=entry.key.yaml_key)


def _kind(key: DkimKey) -> str:
    return f"RSA {key.bits}" if key.algorithm == "rsa" else "Ed25519"


def cmd_check(args: argparse.Namespace) -> int:
    cfg = load(args.config_path_of(args), secrets=False)  # only this domain's key is read
    code, lines = check_domain(cfg, args.domain)
    for line in lines:
        print(line, file=sys.stdout if code == EX_OK else sys.stderr)
    return code


def cmd_keygen(args: argparse.Namespace) -> int:
    try:
        entry = DkimDomain(domain=args.domain, selector=args.selector)
    except ValidationError as exc:
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "domain"
            print(f"sluice: {getattr(args, field, '')!r} is not a DKIM {field}", file=sys.stderr)
        return EX_USAGE
    if args.algorithm == "rsa" and args.bits < 2048:
        print(f"sluice: --bits {args.bits}: DKIM RSA keys need 2048 bits or more", file=sys.stderr)
        return EX_USAGE
    path = Path(args.out) / f"{entry.domain}.{entry.selector}.private"
    try:
        # O_EXCL: never replace a key (the published record would stop matching);
        # 0600 from the start, whatever the umask.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(f"sluice: {path} exists; remove it or pick another selector", file=sys.stderr)
        return EX_CANTCREAT
    except OSError as exc:
        print(f"sluice: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return EX_CANTCREAT
    with os.fdopen(fd, "wb") as f:
        key, pem = generate_key(args.algorithm, args.bits)
        f.write(pem)
    name = record_name(entry.domain, entry.selector)
    strings = " ".join(f'"{s}"' for s in record_strings(key.record()))
    print(f"wrote {path} ({_kind(key)}, mode 0600)")
    print("publish this DNS TXT record:")
    print(f"{name}. IN TXT ( {strings} )")
    print("and add to the config:")
    print("dkim:")
    print("  domains:")
    print(f"    - domain: {entry.domain}")
    print(f"      selector: {entry.selector}")
    print(f"      key_file: {path.resolve()}")
    return EX_OK


def register(
    sub: Any,
    common: argparse.ArgumentParser,
    config_path: Callable[[argparse.Namespace], Path],
) -> None:
    """Add ``dkim keygen`` and ``dkim check`` to the ``sluice`` parser."""
    dkim = sub.add_parser("dkim", help="DKIM keys and their DNS records")
    dsub = dkim.add_subparsers(dest="dkim_command", required=True, metavar="ACTION")
    p = dsub.add_parser(
        "keygen", parents=[common], help="write a new key (0600) and print its DNS record"
    )
    p.set_defaults(func=cmd_keygen, config_path_of=config_path)
    p.add_argument("domain")
    p.add_argument("selector")
    p.add_argument("--algorithm", choices=["rsa", "ed25519"], default="rsa")
    p.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    p.add_argument("--out", default=".", help="directory of the key file (default: here)")
    p = dsub.add_parser(
        "check", parents=[common], help="look the domain's record up and compare it with the key"
    )
    p.set_defaults(func=cmd_check, config_path_of=config_path)
    p.add_argument("domain")
