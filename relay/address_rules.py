"""Address rules applied when mail is accepted: aliases, redirect and archive_bcc.

What Postfix's cleanup does with ``virtual_alias_maps``/``aliases``, a
staging host's catch-all and ``always_bcc``/``sender_bcc_maps``, done once,
before the message is stored, from every way in (the listener, accept
workers and ``sluice sendmail`` with the daemon down alike):

1. **aliases**: a recipient whose key is in ``aliases`` becomes the alias's
   targets, recursively (an address met again on its own path stays as it
   is, as Postfix keeps ``ops: ops, dev``; deeper than 1,000 or more than
   1,000 recipients is refused). A key is a full address (``cron@localhost``)
   or a bare local name (``root``), which stands for that name at every
   local domain: ``smtp.hostname`` (or this host's name), ``localhost``,
   ``localhost.localdomain`` and ``local_domains``. An address at a local
   domain that no alias names is refused with the reason: nothing past
   Sluice can deliver ``root@web1``.
2. **redirect**: every recipient outside ``redirect.allow`` becomes
   ``redirect.to`` (or is stored on hold), and the addresses it replaced are
   listed in an ``X-Sluice-Original-To`` header added to the stored copy.
   At acceptance, not at delivery, so that mail queued on a staging host
   stays redirected whatever a later reload says.
3. **archive_bcc**: one more recipient per archive address; never
   redirected (the operator chose it), never refused.

Each stored recipient keeps the address the client gave (``RcptNote``),
shown on the admin's message page and by ``sluice queue show``. Pure: no
I/O; ``resolve`` and ``refusal`` are the whole interface.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from relay.config import ALIAS_EXPANSION_LIMIT, Config, alias_problem
from relay.model import AddressRule, RcptNote

__all__ = ["ORIGINAL_TO_HEADER", "AddressRules", "Resolved"]

#: lists the recipients ``redirect`` replaced (added to the stored copy)
ORIGINAL_TO_HEADER = "X-Sluice-Original-To"
#: always local, as in Postfix's default ``mydestination``
_ALWAYS_LOCAL = ("localhost", "localhost.localdomain")


@dataclass(frozen=True, slots=True)
class Resolved:
    """The recipients to store, and the header to add to the stored copy."""

    recipients: list[str]
    #: final address -> what a rule did to it (absent: nothing)
    notes: dict[str, RcptNote] = field(default_factory=dict)
    #: an ``X-Sluice-Original-To`` field (CRLF-ended), or b""
    header: bytes = b""


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


@dataclass(frozen=True, slots=True)
class AddressRules:
    """The address rules of one config snapshot, for one host name."""

    local_domains: frozenset[str] = frozenset(_ALWAYS_LOCAL)
    aliases: Mapping[str, Sequence[str]] = field(default_factory=dict)
    redirect_to: str | None = None
    redirect_hold: bool = False
    #: redirect.allow: domains, "*.domain" suffixes and addresses (lower case)
    allow: frozenset[str] = frozenset()
    archive_to: str | None = None
    archive_by_domain: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Config, hostname: str) -> AddressRules:
        """The rules ``config`` sets, with ``hostname`` (the name Sluice says) as local."""
        local = {*_ALWAYS_LOCAL, hostname.lower(), *(d.lower() for d in config.local_domains)}
        if config.smtp.hostname:
            local.add(config.smtp.hostname.lower())
        redirect, archive = config.redirect, config.archive_bcc
        return cls(
            local_domains=frozenset(local),
            aliases=config.aliases,
            redirect_to=redirect.to if redirect else None,
            redirect_hold=redirect is not None and redirect.action == "hold",
            allow=frozenset(redirect.allow) if redirect else frozenset(),
            archive_to=archive.to if archive else None,
            archive_by_domain={k.lower(): v for k, v in archive.sender_domains.items()}
            if archive
            else {},
        )

    @property
    def redirects(self) -> bool:
        return self.redirect_to is not None or self.redirect_hold

    def _key(self, address: str) -> str | None:
        """The alias key ``address`` matches, if any (exact address first, then local name)."""
        low = address.lower()
        if low in self.aliases:
            return low
        local, at, domain = low.rpartition("@")
        if not at:
            return low if low in self.aliases else None
        if domain in self.local_domains and local in self.aliases:
            return local
        return None

    def _is_local(self, address: str) -> bool:
        return "@" not in address or _domain(address) in self.local_domains

    def _expand(self, address: str) -> list[str]:
        """``address`` through the aliases: the final addresses, in order, without repeats."""
        out: list[str] = []
        # Depth first, in order, with a stack of its own (chains may be 1,000 deep).
        stack: list[tuple[str, frozenset[str]]] = [(address, frozenset())]
        while stack:
            addr, path = stack.pop()
            key = self._key(addr)
            if key is None or key in path or len(out) >= ALIAS_EXPANSION_LIMIT:
                if addr not in out:
                    out.append(addr)
                continue
            below = path | {key}
            stack.extend((t, below) for t in reversed(self.aliases[key]))
        return out

    def refusal(self, address: str) -> str | None:
        """Why mail to ``address`` is refused (an unaliased local name), or ``None``.

        Asked at ``RCPT``, so the client hears it for the one recipient.
        """
        if not self.aliases and _domain(address) not in self.local_domains:
            return None  # the fast path: no aliases, a remote address
        key = self._key(address)
        if key is not None and (why := alias_problem(self.aliases, key)) is not None:
            return f"alias {key}: {why}"
        for final in self._expand(address):
            if self._is_local(final):
                name = final.partition("@")[0]
                return (
                    f"{final} is a local name and has no alias; add "
                    f"'{name}: someone@example.com' under aliases: in Sluice's config"
                )
        return None

    def _allowed(self, address: str) -> bool:
        low = address.lower()
        domain = _domain(low)
        if low in self.allow or domain in self.allow:
            return True
        return any(e.startswith("*.") and domain.endswith(e[1:]) for e in self.allow)

    def resolve(self, sender: str, recipients: Iterable[str]) -> Resolved:
        """The recipients to store for ``recipients`` (each already past ``refusal``)."""
        given = list(recipients)
        if not (self.aliases or self.redirects or self.archive_to or self.archive_by_domain):
            return Resolved(given)
        final: list[str] = []
        notes: dict[str, RcptNote] = {}
        originals: dict[str, list[str]] = {}
        redirected: list[str] = []
        for addr in given:
            for out in self._expand(addr):
                rule = AddressRule.ALIAS if out != addr else None
                held = ""
                if self.redirects and not self._allowed(out):
                    redirected.append(out)
                    rule = AddressRule.REDIRECT
                    if self.redirect_hold:
                        held = "held by redirect: outside redirect.allow"
                    else:
                        out = self.redirect_to or out
                if out not in final:
                    final.append(out)
                if rule is not None:
                    seen = originals.setdefault(out, [])
                    if addr not in seen:
                        seen.append(addr)
                    notes[out] = RcptNote(rule, ", ".join(seen), held)
        for archive in (self.archive_to, self.archive_by_domain.get(_domain(sender))):
            if archive is not None and archive not in final:
                final.append(archive)
                notes[archive] = RcptNote(AddressRule.ARCHIVE)
        header = b""
        if redirected:
            header = _field(ORIGINAL_TO_HEADER, list(dict.fromkeys(redirected)))
        return Resolved(final, notes, header)


def _field(name: str, addresses: list[str]) -> bytes:
    """``Name: a, b, ...`` folded at 78 columns (RFC 5322 section 2.2.3)."""
    line, lines = f"{name}:", []
    for i, addr in enumerate(addresses):
        piece = f" {addr}" + ("," if i < len(addresses) - 1 else "")
        if len(line) + len(piece) > 78 and line != f"{name}:":
            lines.append(line)
            line = ""
        line += piece
    lines.append(line)
    return "\r\n".join(lines).encode("utf-8") + b"\r\n"
