"""The settings forms as data: which fields, in which groups, with what meaning beside each.

One description serves the HTML form (``admin/templates/_form.html`` draws
it), the reading of a posted form into the values the config-edit operations
take (``relay.operations.config_edits``), and the JSON API's answers. A
field's ``name`` is its key path inside the edited object, as the YAML has
it and as ``FieldError.field`` names it ("port", "oauth2.client_id",
"mailbox.folder"), so an error lands beside the field it is about.

Why no form library (WTForms, starlette-wtf): the fields are few and fixed,
the values go to the config-edit operations (which validate with exactly
``sluice check``'s rules, not with a second set of form rules), and a
secret field's "empty means unchanged" is ours to say. A table of
dataclasses and one reading function are less than a dependency.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = [
    "BOUNCE_GROUPS",
    "PROVIDER_GROUPS",
    "Field",
    "Group",
    "Kind",
    "changed_values",
    "fields_of",
    "flat",
    "nested",
    "read_form",
]


class Kind(StrEnum):
    """How a field is drawn and read."""

    TEXT = "text"
    NUMBER = "number"
    #: one of a few words: a <select>
    CHOICE = "choice"
    #: yes or no: a check box
    CHECK = "check"
    #: a password, client secret or token: masked, never sent back, empty = unchanged
    SECRET = "secret"


@dataclass(frozen=True, slots=True)
class Field:
    """One form field: a key of the edited object."""

    #: the key path inside the edited object ("port", "oauth2.client_id")
    name: str
    label: str
    #: what it means, shown beside it
    help: str
    kind: Kind = Kind.TEXT
    #: (value, label) for a CHOICE
    choices: tuple[tuple[str, str], ...] = ()
    #: what the key is when the file does not set it (a CHOICE's or CHECK's default)
    default: str | bool | None = None
    placeholder: str = ""
    required: bool = False
    #: only when adding (a provider's id names it in routes and in the spool's history)
    add_only: bool = False

    @property
    def dom_id(self) -> str:
        return "f-" + self.name.replace(".", "-").replace("_", "-")


@dataclass(frozen=True, slots=True)
class Group:
    """Fields an operator thinks of together (connection, sign-in, limits...)."""

    key: str
    title: str
    intro: str
    fields: tuple[Field, ...]


_ENCRYPTION = (
    ("starttls", "STARTTLS (port 587): plain connection upgraded to TLS"),
    ("tls", "TLS from the first byte (port 465)"),
    ("none", "none: plain text (a relay on this machine or a trusted network)"),
)
_MECHANISMS = (
    ("auto", "automatic: the strongest the server offers"),
    ("plain", "PLAIN"),
    ("login", "LOGIN"),
    ("cram-md5", "CRAM-MD5"),
    ("xoauth2", "XOAUTH2 (Microsoft 365, Gmail with OAuth2)"),
)
_UNITS = (("messages", "messages"), ("recipients", "recipients"))
_WINDOWS = (
    ("utc_day", "the UTC calendar day"),
    ("rolling_24h", "the last 24 hours (rolling)"),
)

PROVIDER_GROUPS: tuple[Group, ...] = (
    Group(
        "connection",
        "Connection",
        "Where Sluice hands mail over, and how the connection is protected.",
        (
            Field(
                "id",
                "ID",
                "A short name for this provider: used in routes, the log and the API. "
                "Letters, digits, dot, dash and underscore.",
                placeholder="sendgrid",
                required=True,
                add_only=True,
            ),
            Field("caption", "Caption", "A description for people; optional."),
            Field(
                "host",
                "Server",
                "The provider's SMTP server name.",
                placeholder="smtp.example.com",
                required=True,
            ),
            Field("port", "Port", "587 for STARTTLS, 465 for TLS.", Kind.NUMBER, default="587"),
            Field(
                "encryption",
                "Encryption",
                "How the connection is encrypted; the password is never sent in clear "
                "to a server that is not on this machine.",
                Kind.CHOICE,
                _ENCRYPTION,
                default="starttls",
            ),
            Field(
                "tls_verify",
                "Check the certificate",
                "Refuse a server whose certificate does not match its name. Turn off only "
                "for a test server.",
                Kind.CHECK,
                default=True,
            ),
            Field(
                "ca_file",
                "CA certificate file",
                "A private certificate authority's certificate (PEM) to check the server "
                "against; empty: the system's.",
                placeholder="/etc/sluice/relay-ca.pem",
            ),
        ),
    ),
    Group(
        "sign-in",
        "Sign-in",
        "The account Sluice logs in with. Typed passwords are kept in a file of their "
        "own (readable by Sluice only), never in the configuration file, and never shown "
        "again: leave a password empty to keep the one saved.",
        (
            Field("username", "User name", "The SMTP AUTH user name (SendGrid: apikey)."),
            Field(
                "allow_insecure_auth",
                "Sign in without TLS",
                "Send the password over a connection that is not encrypted: only for a "
                "server on this machine or a network you trust.",
                Kind.CHECK,
                default=False,
            ),
            Field("password", "Password", "The password or API key.", Kind.SECRET),
            Field(
                "auth_mechanism",
                "AUTH mechanism",
                "How the password is sent; automatic suits almost every server.",
                Kind.CHOICE,
                _MECHANISMS,
                default="auto",
            ),
            Field(
                "oauth2.token_url",
                "OAuth2 token URL",
                "For Microsoft 365 and Gmail with OAuth2 instead of a password: where "
                "Sluice gets access tokens.",
            ),
            Field("oauth2.client_id", "OAuth2 client ID", "The app registration's client ID."),
            Field(
                "oauth2.client_secret",
                "OAuth2 client secret",
                "Only for apps that have one; public clients signing in with a code need none.",
                Kind.SECRET,
            ),
            Field("oauth2.scope", "OAuth2 scope", "The permission asked for."),
            Field(
                "oauth2.device_authorization_url",
                "Device sign-in URL",
                "With it, the provider's page offers Connect: you sign in once in a "
                "browser and Sluice keeps the refresh token.",
            ),
        ),
    ),
    Group(
        "sender",
        "Sender rewrite",
        "Providers that only accept their verified senders: what the From is changed to.",
        (
            Field(
                "send_from",
                "Send from",
                "Replace the sender's address with this one (empty: keep the app's).",
                placeholder="noreply@example.com",
            ),
            Field("send_from_name", "Send from name", "The display name that goes with it."),
            Field(
                "bounce_address",
                "Bounce address",
                "The Return-Path for mail through this provider, instead of the one in "
                "the bounce settings.",
            ),
        ),
    ),
    Group(
        "limits",
        "Limits",
        "What the provider allows; Sluice holds mail back rather than exceed it.",
        (
            Field(
                "daily_limit",
                "Daily send rate",
                "How many the provider accepts per window (empty: no limit).",
                Kind.NUMBER,
            ),
            Field(
                "limit_unit",
                "Counted in",
                "What the daily rate counts (Microsoft 365 counts recipients).",
                Kind.CHOICE,
                _UNITS,
                default="messages",
            ),
            Field(
                "limit_window",
                "Over",
                "The window the daily rate applies to.",
                Kind.CHOICE,
                _WINDOWS,
                default="utc_day",
            ),
            Field(
                "rate",
                "Rate",
                "A sustained rate such as 10/s, 600/m or 5000/h (empty: as fast as allowed).",
                placeholder="10/s",
            ),
            Field(
                "rate_unit",
                "Rate counts",
                "What the rate counts.",
                Kind.CHOICE,
                _UNITS,
                default="messages",
            ),
            Field(
                "max_connections",
                "Connections",
                "Connections open at once to this provider.",
                Kind.NUMBER,
                default="4",
            ),
        ),
    ),
    Group(
        "routing",
        "Priority and routing",
        "Which provider is tried first; routes in the configuration file can pick "
        "providers per sender or recipient domain.",
        (
            Field(
                "priority",
                "Priority",
                "Lower is tried first; providers of equal priority share the mail.",
                Kind.NUMBER,
                default="100",
            ),
            Field(
                "failure_threshold",
                "Failures before a pause",
                "After this many failures in a row the provider is skipped for the cool-down.",
                Kind.NUMBER,
                default="3",
            ),
            Field(
                "cooldown",
                "Cool-down",
                "How long a failing provider is skipped (such as 60s or 5m).",
                default="60s",
            ),
        ),
    ),
)

_MAILBOX_ENCRYPTION = (
    ("tls", "TLS from the first byte (port 993)"),
    ("starttls", "STARTTLS (port 143)"),
    ("none", "none: plain text (a mail server on this machine only)"),
)

BOUNCE_GROUPS: tuple[Group, ...] = (
    Group(
        "mailbox",
        "Bounce mailbox",
        "The IMAP mailbox the bounce address delivers to. Save logs in first and checks "
        "that the folder exists.",
        (
            Field(
                "mailbox.host",
                "Server",
                "The IMAP server name.",
                placeholder="imap.example.com",
                required=True,
            ),
            Field(
                "mailbox.port",
                "Port",
                "Empty: 993 with TLS, else 143.",
                Kind.NUMBER,
            ),
            Field(
                "mailbox.encryption",
                "Encryption",
                "How the connection is encrypted.",
                Kind.CHOICE,
                _MAILBOX_ENCRYPTION,
                default="tls",
            ),
            Field("mailbox.username", "User name", "The mailbox's login.", required=True),
            Field(
                "mailbox.password",
                "Password",
                "Kept in a file of its own, never in the configuration file; leave empty "
                "to keep the one saved.",
                Kind.SECRET,
            ),
            Field(
                "mailbox.folder",
                "Folder",
                "The folder bounces arrive in: Retrieve folders lists the server's.",
                default="INBOX",
            ),
        ),
    ),
    Group(
        "policy",
        "Bounces and suppression",
        "Where bounces go and when an address stops getting mail.",
        (
            Field(
                "address",
                "Bounce address",
                "The Return-Path of relayed mail: where the bounces come back to.",
                placeholder="bounces@example.com",
            ),
            Field(
                "threshold",
                "Threshold",
                "Hard bounces of one address that put it on the suppression list.",
                Kind.NUMBER,
                default="3",
            ),
            Field(
                "window",
                "Window",
                "Count only bounces this recent, such as 30d (empty: all of them).",
            ),
            Field(
                "suppress_scope",
                "Suppress for",
                "Every stream, or only the stream of the mail that bounced (a newsletter's "
                "bounces then do not stop password resets).",
                Kind.CHOICE,
                (
                    ("global", "every stream (global)"),
                    ("stream", "the stream of the mail that bounced"),
                ),
                default="global",
            ),
        ),
    ),
)


def fields_of(groups: Sequence[Group]) -> list[Field]:
    """Every field of ``groups``, in order."""
    return [f for g in groups for f in g.fields]


def flat(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as key paths: ``{"oauth2": {"scope": s}}`` -> ``{"oauth2.scope": s}``."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat(value, path + "."))
        else:
            out[path] = value
    return out


def nested(values: Mapping[str, Any]) -> dict[str, Any]:
    """Key paths back into a nested mapping (the shape of the YAML object)."""
    out: dict[str, Any] = {}
    for path, value in values.items():
        *parents, last = path.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def _typed(field: Field, text: str) -> Any:
    """A form's text as the value the YAML key takes (None: remove the key)."""
    text = text.strip()
    if field.kind is Kind.NUMBER:
        if not text:
            return None
        try:
            return int(text)
        except ValueError:
            return text  # refused by the config's own rules, beside the field
    return text or None


def read_form(form: Mapping[str, Any], groups: Sequence[Group], *, adding: bool) -> dict[str, Any]:
    """Every field's value as posted (key path -> value; None for an empty field).

    A secret field left empty is absent (unchanged); a check box is ``True``
    when ticked. ``adding`` keeps the add-only fields (the id). ``form`` is
    a posted form or a JSON object (already typed: taken as it is).
    """
    out: dict[str, Any] = {}
    for f in fields_of(groups):
        if f.add_only and not adding:
            continue
        raw = form.get(f.name)
        if f.kind is Kind.CHECK:
            out[f.name] = raw if isinstance(raw, bool) else raw in ("on", "yes", "true", "1")
        elif f.kind is Kind.SECRET:
            if isinstance(raw, str) and raw:
                out[f.name] = raw  # typed: kept as typed (spaces may be part of it)
        elif raw is None or isinstance(raw, str):
            out[f.name] = _typed(f, raw or "")
        else:
            out[f.name] = raw
    return out


def changed_values(
    posted: Mapping[str, Any],
    current: Mapping[str, Any],
    groups: Sequence[Group],
    *,
    read_only: Sequence[str] = (),
) -> dict[str, Any]:
    """Only what the form changed against the file (key path -> new value, None: remove).

    ``current`` is the edited object as the file has it (key paths, from
    ``flat``); a key the file leaves out counts as its default, so an
    untouched select or check box writes nothing. Read-only fields (a
    ``${VAR}``, a secret from the environment) are never written. Adding a
    provider is editing an empty one.
    """
    out: dict[str, Any] = {}
    for f in fields_of(groups):
        if f.name not in posted or f.name in read_only:
            continue
        new = posted[f.name]
        if f.kind is Kind.SECRET:
            out[f.name] = new  # only there when typed
            continue
        old = current.get(f.name, f.default)
        if _same(f, old, new):
            continue
        out[f.name] = new
    return out


def _same(f: Field, old: Any, new: Any) -> bool:
    """Whether the form's value is what the file says (or its default, when it says nothing)."""
    if f.kind is Kind.CHECK:
        return bool(old) == bool(new)
    if new is None:
        return old is None or (f.default is not None and str(old) == str(f.default))
    return old is not None and str(old).strip() == str(new).strip()
