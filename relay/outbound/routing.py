"""Routing: which providers, in which order, may carry mail for each recipient.

Resolved at every attempt from the current config, so a change applies to
mail already queued. In order of precedence:

1. an ``X-Sluice-Provider: ID[, ID...]`` header names the providers (the
   header is removed before sending); an unknown ID is ignored with a warning;
2. the first route whose every given condition matches: ``sender_domain``,
   ``recipient_domain`` (``*.example.com`` also matches subdomains) and
   ``header`` (``"Name: value"``, or just ``"Name"`` for presence);
3. every enabled provider by ``priority`` (lowest first; ties keep file order).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from relay.address import domain_of, normal_domain
from relay.config import Config, HoldRule, RouteSettings
from relay.message import PROVIDER_HEADER, HeaderBlock

__all__ = ["default_order", "domain_matches", "hold_rule_for", "route_for"]

log = logging.getLogger("sluice.routing")


def domain_matches(domain: str, patterns: Sequence[str]) -> bool:
    """Whether ``domain`` (from ``domain_of``) is one of ``patterns`` (``*.x`` = x and below).

    Patterns are compared as ``relay.address.normal_domain`` writes them, so
    ``Example.ORG.`` in the config matches mail for ``example.org``.
    """
    for pattern in patterns:
        p = normal_domain(pattern)
        if p.startswith("*."):
            if domain == p[2:] or domain.endswith(p[1:]):
                return True
        elif domain == p:
            return True
    return False


def _header_matches(head: HeaderBlock, spec: str) -> bool:
    name, sep, want = spec.partition(":")
    value = head.value(name.strip())
    if value is None:
        return False
    return not sep or value.lower() == " ".join(want.split()).lower()


def default_order(config: Config) -> list[str]:
    enabled = [p for p in config.providers if p.enabled]
    return [p.id for p in sorted(enabled, key=lambda p: p.priority)]


def _matches(route: RouteSettings, sender: str, recipient: str, head: HeaderBlock) -> bool:
    if route.sender_domain and not domain_matches(domain_of(sender), route.sender_domain):
        return False
    if route.recipient_domain and not domain_matches(domain_of(recipient), route.recipient_domain):
        return False
    return not (route.header and not _header_matches(head, route.header))


def route_for(config: Config, sender: str, recipient: str, head: HeaderBlock) -> list[str]:
    """Provider ids to try for one recipient, in order (enabled providers only)."""
    enabled = {p.id: p for p in config.providers if p.enabled}
    named = head.value(PROVIDER_HEADER)
    if named:
        ids = [i.strip() for i in named.split(",") if i.strip()]
        chosen = [i for i in ids if i in enabled]
        if chosen:
            return chosen
        log.warning("%s: %r names no enabled provider; using the routes", PROVIDER_HEADER, named)
    for route in config.routes:
        if _matches(route, sender, recipient, head):
            return [i for i in route.providers if i in enabled]
    return default_order(config)


def hold_rule_for(
    config: Config, sender: str, recipient: str, head: HeaderBlock
) -> HoldRule | None:
    """The first ``hold.rules`` rule whose every given condition matches, if any."""
    for rule in config.hold.rules:
        if rule.sender_domain and not domain_matches(domain_of(sender), rule.sender_domain):
            continue
        domain = domain_of(recipient)
        if rule.recipient_domain and not domain_matches(domain, rule.recipient_domain):
            continue
        if rule.recipient_domain_not and domain_matches(domain, rule.recipient_domain_not):
            continue
        if rule.header and not _header_matches(head, rule.header):
            continue
        return rule
    return None
