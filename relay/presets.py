"""Presets for common providers: what "Add provider from preset" fills in.

A preset fills the fields an operator would otherwise look up: host, port,
encryption, the AUTH mechanism, a hint for the username, the documented
sending limits and, for Microsoft 365 and Gmail, the OAuth 2.0 endpoints.
Every figure carries where it comes from (``source``) and when it was read
(``checked``): providers change their limits without notice, and a preset
that does not say how old it is would be trusted longer than it deserves.
The limits are those ``config.example.yaml`` documents (checked 2026-11-30
against copies of the pages named); SendGrid's and Mailgun's host, port and
user name were read from copies of their pages on 2026-12-07. They publish no
fixed limit (it is the plan's), so theirs are left unset.

Templates: ``{region}`` (Amazon SES) and ``{tenant}`` (Microsoft 365) are for
the operator to fill; ``Preset.values(**fill)`` puts them in.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

__all__ = ["PRESETS", "OAuth2Hint", "Preset", "preset"]


@dataclass(frozen=True, slots=True)
class OAuth2Hint:
    """The OAuth 2.0 endpoints of a provider with XOAUTH2 (templates: ``{tenant}``)."""

    token_url: str
    scope: str
    #: RFC 8628 device sign-in (the Connect button); None: the provider offers none for mail
    device_authorization_url: str | None = None


@dataclass(frozen=True, slots=True)
class Preset:
    """One provider's connection settings and documented limits, with where they come from."""

    #: the key (``--from-preset NAME``)
    name: str
    #: what the choice list shows
    label: str
    host: str
    port: int
    encryption: Literal["none", "starttls", "tls"]
    auth_mechanism: Literal["auto", "plain", "login", "cram-md5", "xoauth2"]
    #: what goes in the username field (shown as a placeholder)
    username_hint: str
    #: where the figures come from
    source: str
    #: when they were read (ISO date)
    checked: str
    daily_limit: int | None = None
    limit_unit: Literal["messages", "recipients"] = "messages"
    limit_window: Literal["utc_day", "rolling_24h"] = "utc_day"
    #: ``10/s``, ``30/m``: as ``rate:`` takes it
    rate: str | None = None
    rate_unit: Literal["messages", "recipients"] = "messages"
    oauth2: OAuth2Hint | None = None
    #: a sentence for the form (what the username is, what a limit depends on)
    note: str = ""
    #: template names the host or oauth2 URLs hold (``region``, ``tenant``)
    placeholders: tuple[str, ...] = field(default=())

    def values(self, **fill: str) -> dict[str, Any]:
        """The provider keys this preset sets, as YAML would have them (templates filled).

        Raises:
            ValueError: a template is left unfilled (``region`` for SES).
        """
        out: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "encryption": self.encryption,
        }
        if self.auth_mechanism != "auto":
            out["auth_mechanism"] = self.auth_mechanism
        if self.daily_limit is not None:
            out["daily_limit"] = self.daily_limit
            if self.limit_unit != "messages":
                out["limit_unit"] = self.limit_unit
            if self.limit_window != "utc_day":
                out["limit_window"] = self.limit_window
        if self.rate is not None:
            out["rate"] = self.rate
            if self.rate_unit != "messages":
                out["rate_unit"] = self.rate_unit
        if self.oauth2 is not None and self.auth_mechanism == "xoauth2":
            oauth2: dict[str, Any] = {
                "token_url": self.oauth2.token_url,
                "scope": self.oauth2.scope,
            }
            if self.oauth2.device_authorization_url:
                oauth2["device_authorization_url"] = self.oauth2.device_authorization_url
            out["oauth2"] = oauth2
        filled: dict[str, Any] = _fill(out, fill, self.name)
        return filled


def _fill(value: Any, fill: Mapping[str, str], name: str) -> Any:
    if isinstance(value, dict):
        return {k: _fill(v, fill, name) for k, v in value.items()}
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in fill or not fill[m.group(1)]:
            raise ValueError(f"the {name} preset needs the {m.group(1)} (e.g. --{m.group(1)})")
        return fill[m.group(1)]

    return re.sub(r"\{([a-z_]+)\}", sub, value)


_CHECKED = "2026-11-30"

_ALL = [
    Preset(
        name="smtp",
        label="Any SMTP server",
        host="",
        port=587,
        encryption="starttls",
        auth_mechanism="auto",
        username_hint="the account's user name",
        source="RFC 6409 (message submission on port 587 with STARTTLS)",
        checked=_CHECKED,
        note="Port 587 with STARTTLS is submission's standard; 465 is implicit TLS.",
    ),
    Preset(
        name="sendgrid",
        label="SendGrid",
        host="smtp.sendgrid.net",
        port=587,
        encryption="starttls",
        auth_mechanism="auto",
        username_hint="apikey",
        source="https://www.twilio.com/docs/sendgrid/for-developers/sending-email/integrating-with-the-smtp-api",
        checked="2026-12-07",
        note="The username is the word apikey; the password is an API key. "
        "Limits depend on the plan: set daily_limit to yours.",
    ),
    Preset(
        name="mailgun",
        label="Mailgun",
        host="smtp.mailgun.org",
        port=587,
        encryption="starttls",
        auth_mechanism="auto",
        username_hint="postmaster@YOUR-DOMAIN",
        source="https://help.mailgun.com/hc/en-us/articles/203380100 (SMTP credentials per "
        "domain; ports 25, 465, 587 with STARTTLS, 2525)",
        checked="2026-12-07",
        note="SMTP credentials are per sending domain (smtp.eu.mailgun.org for the EU "
        "region). Limits depend on the plan: set daily_limit to yours.",
    ),
    Preset(
        name="ses",
        label="Amazon SES",
        host="email-smtp.{region}.amazonaws.com",
        port=587,
        encryption="starttls",
        auth_mechanism="auto",
        username_hint="the SMTP user name (from SES's SMTP settings, not an access key)",
        source="https://docs.aws.amazon.com/ses/latest/dg/manage-sending-quotas.html",
        checked=_CHECKED,
        daily_limit=50000,
        limit_unit="recipients",
        limit_window="rolling_24h",
        rate="14/s",
        rate_unit="recipients",
        note="Quotas are per account and region: read yours with `aws sesv2 get-account`.",
        placeholders=("region",),
    ),
    Preset(
        name="microsoft365",
        label="Microsoft 365 / Exchange Online",
        host="smtp.office365.com",
        port=587,
        encryption="starttls",
        auth_mechanism="xoauth2",
        username_hint="the mailbox's address",
        source="https://learn.microsoft.com/office365/servicedescriptions/"
        "exchange-online-service-description/exchange-online-limits",
        checked=_CHECKED,
        daily_limit=10000,
        limit_unit="recipients",
        limit_window="rolling_24h",
        rate="30/m",
        oauth2=OAuth2Hint(
            token_url="https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
            scope="https://outlook.office365.com/SMTP.Send offline_access",
            device_authorization_url="https://login.microsoftonline.com/{tenant}/oauth2/v2.0/devicecode",
        ),
        note="Sign in with Connect after saving (the app registration's client id, "
        "tenant and SMTP.Send permission are needed).",
        placeholders=("tenant",),
    ),
    Preset(
        name="gmail",
        label="Gmail / Google Workspace (user)",
        host="smtp.gmail.com",
        port=587,
        encryption="starttls",
        auth_mechanism="auto",
        username_hint="you@gmail.com or you@your-domain",
        source="https://support.google.com/a/answer/166852",
        checked=_CHECKED,
        daily_limit=2000,
        limit_window="rolling_24h",
        oauth2=OAuth2Hint(
            token_url="https://oauth2.googleapis.com/token",
            scope="https://mail.google.com/",
        ),
        note="An app password (with 2-step verification), or oauth2 with a refresh "
        "token (Google's device sign-in does not grant the mail scope).",
    ),
    Preset(
        name="google-relay",
        label="Google Workspace SMTP relay",
        host="smtp-relay.gmail.com",
        port=587,
        encryption="starttls",
        auth_mechanism="auto",
        username_hint="a Workspace user (or none, when the relay allows this IP)",
        source="https://support.google.com/a/answer/2956491",
        checked=_CHECKED,
        daily_limit=10000,
        limit_unit="recipients",
        limit_window="rolling_24h",
    ),
]

#: every preset by name, "smtp" (any SMTP server) first
PRESETS: Mapping[str, Preset] = MappingProxyType({p.name: p for p in _ALL})


def preset(name: str) -> Preset:
    """The preset called ``name``.

    Raises:
        KeyError: no such preset (the message lists the known ones).
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"no preset {name!r} (known: {', '.join(PRESETS)})") from None
