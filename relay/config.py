"""Configuration: a YAML file validated into one frozen ``Config`` snapshot.

``load(path)`` is the only function here that does I/O. Every problem found is
reported at once, each as ``FILE:LINE: dotted.key: message``; the line comes
from walking the pydantic error location down the composed YAML node tree.
Durations take ``90s``/``5m``/``4h``/``5d`` or plain seconds, sizes take
``25MiB``/``10KB`` or plain bytes, and ``${VAR}`` in any string takes the
environment. Secrets keep the keys users write (``password``,
``password_env``, ``password_file``, and the same for ``client_secret``,
``refresh_token`` and ``api_token``) and are folded into one
``relay.secrets.SecretSource`` each; ``load`` resolves them all (``check``,
``serve``) unless told not to (the queue commands need none). A reload
builds a new ``Config`` and swaps one reference; nothing here is ever mutated.
Reading a file is bounded (1 MiB, 64 levels, 20,000 nodes, aliases expanding
to 10,000, the standard tags only), so a hostile or broken file is refused in
well under a second with a line, never a traceback (see ``_BoundedComposer``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from relay.address import normal_domain
from relay.dkim import DEFAULT_HEADERS as DKIM_HEADERS
from relay.dkim import NEVER_SIGNED as DKIM_NEVER_SIGNED
from relay.dkim import DkimKeyError
from relay.dkim import load_key as load_dkim_key
from relay.errors import ConfigError, SluiceError
from relay.events import EventType
from relay.secrets import Secret, SecretError, SecretSource
from relay.tls import server_context, settings_context

try:
    from yaml._yaml import CParser as _CParser

    _WITH_LIBYAML = True
except ImportError:  # a PyYAML built without libyaml: the pure-Python parser does
    _CParser = object  # type: ignore[assignment,misc]
    _WITH_LIBYAML = False

__all__ = [
    "AUTO_WORKERS_MAX",
    "AdminSettings",
    "AlertSettings",
    "BounceSettings",
    "Config",
    "DeliverySettings",
    "DkimDomain",
    "DkimSettings",
    "Endpoint",
    "HoldRule",
    "HoldSettings",
    "LogSettings",
    "MailboxSettings",
    "NotifySettings",
    "OAuth2Settings",
    "ProviderSettings",
    "Rate",
    "RetrySettings",
    "RouteSettings",
    "ScheduleStep",
    "SecretRef",
    "SendingPolicy",
    "SmtpSettings",
    "SpoolSettings",
    "SuppressScope",
    "SuppressionSettings",
    "WebhookSettings",
    "auto_workers",
    "load",
    "load_structure",
    "loads",
    "parse_duration",
    "parse_size",
    "resolve_paths",
    "secret_fields",
]

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_NUMBER_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_duration(value: object) -> float:
    """Seconds from ``90``, ``"90s"``, ``"5m"``, ``"4h"``, ``"5d"``, ``"1h30m"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 90s, 5m, 4h or 5d")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a duration such as 90s, 5m, 4h or 5d")
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|[smhdw]?)", value.strip().lower())
    rebuilt = "".join(n + u for n, u in parts)
    if not parts or rebuilt != re.sub(r"\s+", "", value.strip().lower()):
        raise ValueError(f"{value!r} is not a duration (use e.g. 90s, 5m, 4h, 5d)")
    return sum(float(n) * _DURATION_UNITS[u or "s"] for n, u in parts)


def parse_size(value: object) -> int:
    """Bytes from ``1048576``, ``"25MiB"``, ``"10MB"``, ``"512k"``."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 25MiB or a number of bytes")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        match = _NUMBER_UNIT.match(value)
        if match and match.group(2).lower() in _SIZE_UNITS:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    raise ValueError(f"{value!r} is not a size (use e.g. 25MiB, 10MB or bytes)")


class Endpoint(NamedTuple):
    """A ``host:port`` listening or connecting address."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def _parse_endpoint(value: object) -> Endpoint:
    if isinstance(value, Endpoint):
        return value
    if not isinstance(value, str):
        raise ValueError("expected host:port, e.g. 127.0.0.1:25 or [::1]:25")
    match = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", value.strip())
    if not match:
        raise ValueError(f"{value!r} is not host:port (write IPv6 as [::1]:25)")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise ValueError(f"port {port} is out of range (0-65535)")
    return Endpoint(host, port)


class Rate(NamedTuple):
    """A sustained rate: ``count`` messages per ``per`` seconds."""

    count: int  # type: ignore[assignment]  # shadows tuple.count; the name users read
    per: float

    @property
    def per_second(self) -> float:
        return self.count / self.per


def _parse_rate(value: object) -> Rate:
    if isinstance(value, Rate):
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*", value)
        if match and int(match.group(1)) > 0:
            per = {"s": 1, "m": 60, "h": 3600}[match.group(2)[0]]
            return Rate(int(match.group(1)), float(per))
    raise ValueError(f"{value!r} is not a rate (use e.g. 10/s, 600/m, 5000/h)")


class ScheduleStep(NamedTuple):
    """One entry of ``retry.schedule``: wait ``delay`` seconds, ``repeat`` times in a row."""

    delay: float
    repeat: int


#: a step may repeat at most this often (``1h*10000`` is a typo, not a plan)
MAX_SCHEDULE_REPEAT = 1000


def parse_schedule_step(value: object) -> ScheduleStep:
    """``"5m"`` or ``"1h*3"`` (Haraka's ``temp_fail_intervals`` notation) or plain seconds."""
    if isinstance(value, ScheduleStep):
        return value
    repeat = 1
    if isinstance(value, str) and "*" in value:
        value, _, times = value.rpartition("*")
        if not times.strip().isdigit() or not 1 <= int(times) <= MAX_SCHEDULE_REPEAT:
            raise ValueError(
                f"{times.strip()!r} is not a repeat count (use e.g. 1h*3, "
                f"at most *{MAX_SCHEDULE_REPEAT})"
            )
        repeat = int(times)
    try:
        delay = parse_duration(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a retry interval (use e.g. 1m, 30m, 4h, or 1h*3 to repeat)"
        ) from None
    if delay <= 0:
        raise ValueError("a retry interval must be longer than 0")
    return ScheduleStep(delay, repeat)


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
EndpointT = Annotated[Endpoint, BeforeValidator(_parse_endpoint)]
RateT = Annotated[Rate, BeforeValidator(_parse_rate)]
ScheduleStepT = Annotated[ScheduleStep, BeforeValidator(parse_schedule_step)]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def secret_fields(model: type[BaseModel]) -> dict[str, Secret]:
    """The fields of ``model`` marked ``Secret`` (``Annotated[..., Secret(...)]``), by name."""
    return {
        name: mark
        for name, info in model.model_fields.items()
        for mark in info.metadata
        if isinstance(mark, Secret)
    }


def _folded(model: type[BaseModel], name: str) -> bool:
    """Whether a secret field is a ``SecretSource`` (written NAME, NAME_env or NAME_file)."""
    return SecretSource in get_args(model.model_fields[name].annotation)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    @model_validator(mode="before")
    @classmethod
    def _fold_secrets(cls, data: object) -> object:
        """Every ``Secret``-marked ``SecretSource`` field: its three keys folded into one."""
        for name, mark in secret_fields(cls).items():
            if isinstance(data, dict) and _folded(cls, name):
                credential = cls._default_credential(data)
                data = _fold_secret(data, name, credential=credential, owner=mark.owner_in(data))
        return data

    @classmethod
    def _default_credential(cls, data: dict[str, Any]) -> str | None:
        """The systemd credential a secret given by none of its keys is read from (none)."""
        return None


_SECRET_PARTS = {"inline": "", "env": "_env", "file": "_file"}


def _fold_secret(
    data: object, name: str, *, credential: str | None = None, owner: str = ""
) -> object:
    """Turn ``NAME``, ``NAME_env``, ``NAME_file`` of a raw mapping into ``NAME: SecretSource``.

    With none of the three and a ``credential``, the secret is that systemd
    credential; with none and no credential, there is no secret (``None``).
    """
    if not isinstance(data, dict):
        return data
    given = {
        part: data[name + suffix]
        for part, suffix in _SECRET_PARTS.items()
        if data.get(name + suffix) is not None
    }
    if isinstance(given.get("inline"), SecretSource):
        return data  # already folded (a model built in Python, or a copy)
    if len(given) > 1:
        keys = ", ".join(name + _SECRET_PARTS[part] for part in given)
        raise ValueError(f"give only one of {keys}")
    out = {k: v for k, v in data.items() if k not in {name + s for s in _SECRET_PARTS.values()}}
    if given or credential is not None:
        out[name] = {"name": name, "owner": owner, **given}
        if not given:
            out[name]["credential"] = credential
    return out


# ----------------------------------------------------------- smtp.policies
# What a user (after AUTH) or a client network may send: ``relay.inbound.policy``
# enforces it; kept in a block of its own.


def _sender_pattern(value: object) -> object:
    """An ``allowed_senders`` entry: ``<>``, ``user@domain``, ``@domain`` or ``*@domain``."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text == "<>":
        return text
    local, at, domain = text.rpartition("@")
    if not at or not domain or " " in text:
        raise ValueError(f"{value!r} is not an address, @domain, *@domain or <>")
    if local == "*":
        local = ""
    return f"{local.lower()}@{normal_domain(domain)}"


SenderPattern = Annotated[str, BeforeValidator(_sender_pattern)]


class SendingPolicy(_Model):
    """One entry of ``smtp.policies``: who it applies to, and what they may send.

    Matches a session when every condition given matches (``users``: the
    name the session authenticated as; ``networks``: the client's address);
    the first entry that matches applies (Postfix's restriction lists read
    the same way). A session no entry matches has no restriction.
    """

    users: list[str] = Field(default_factory=list)
    networks: list[Network] = Field(default_factory=list)
    #: envelope senders (MAIL FROM) allowed; empty: any. ``<>`` allows the null sender
    allowed_senders: list[SenderPattern] = Field(default_factory=list)
    #: domains the From header's address(es) may have (``*.example.com``: and below); empty: any
    allowed_from_domains: list[str] = Field(default_factory=list)
    #: messages per client (the user, else the client address) per second/minute/hour
    rate: RateT | None = None
    max_message_size: Size | None = Field(default=None, gt=0)
    #: the default route: an ``X-Sluice-Provider`` header added when the message has none
    providers: list[str] = Field(default_factory=list)
    #: the default stream: an ``X-Sluice-Stream`` header added when the message names none
    stream: str | None = None

    @field_validator("networks", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        if not isinstance(value, list):
            return value
        return [ipaddress.ip_network(str(v), strict=False) for v in value]

    @field_validator("allowed_from_domains", mode="before")
    @classmethod
    def _domains(cls, value: object) -> object:
        if not isinstance(value, list):
            return value
        return [normal_domain(str(v)) for v in value]


def _policy_issues(cfg: Config) -> Iterator[tuple[Loc, str]]:
    """``smtp.policies``: whom each matches, known users and providers, a size that fits."""
    users = {u.name for u in cfg.smtp.users}
    known = {p.id for p in cfg.providers}
    for i, policy in enumerate(cfg.smtp.policies):
        loc: Loc = ("smtp", "policies", i)
        if not (policy.users or policy.networks):
            yield loc, "a policy needs users or networks (0.0.0.0/0 and ::/0 match every client)"
        for j, name in enumerate(policy.users):
            if name not in users:
                yield (*loc, "users", j), f"unknown user {name!r} (not in smtp.users)"
        for j, pid in enumerate(policy.providers):
            if pid not in known:
                yield (*loc, "providers", j), f"unknown provider id {pid!r}"
        size = policy.max_message_size
        if size is not None and size > cfg.smtp.max_message_size:
            yield (
                (*loc, "max_message_size"),
                f"{size} is above smtp.max_message_size ({cfg.smtp.max_message_size})",
            )


# --------------------------------------------------------------- SMTP listeners and users
# Issue #26: clients beyond loopback. A ``smtp.listen`` entry is a string (as
# before: no TLS, no AUTH) or a mapping with TLS, its own networks and an AUTH
# rule; ``smtp.users`` are who may AUTH. The defaults are Postfix's submission
# service: AUTH only over TLS (smtpd_tls_auth_only), required on a listener
# that is not on loopback.

ListenTls = Literal["none", "starttls", "implicit"]
ListenAuth = Literal["none", "optional", "required"]


def _networks_of(value: object) -> object:
    """A list of CIDR strings as networks (a host address is a /32 or /128)."""
    if not isinstance(value, list):
        return value
    return [ipaddress.ip_network(str(v), strict=False) for v in value]


def only_loopback(networks: list[Network]) -> bool:
    """Whether every address of every network is a loopback address."""
    return all(net.is_loopback for net in networks)


class ListenerSettings(_Model):
    """One ``smtp.listen`` entry: an address and how clients there are served.

    A plain ``"host:port"`` string is this with ``tls: none`` and ``auth:
    none``, exactly what a string always meant.
    """

    address: EndpointT
    #: ``starttls``: offered after EHLO (RFC 3207); ``implicit``: TLS from the first byte (RFC 8314)
    tls: ListenTls = "none"
    #: PEM certificate chain and key; a relative path is looked up in
    #: ``$CREDENTIALS_DIRECTORY`` first (systemd ``LoadCredential=``), read again on reload
    cert_file: Path | None = None
    key_file: Path | None = None
    #: who may connect here (default: ``smtp.allowed_networks``)
    networks: list[Network] | None = None
    #: whether AUTH is offered and needed before MAIL; default: ``none`` on a
    #: loopback address, ``required`` elsewhere (Postfix's submission service)
    auth: ListenAuth | None = None
    #: with ``auth: required``, clients that may still send without AUTH
    #: (Postfix's ``permit_mynetworks``)
    no_auth_networks: list[Network] = Field(default_factory=list)
    #: AUTH without TLS (passwords in clear); refused unless the address is loopback
    allow_auth_without_tls: bool = False

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: object) -> object:
        if isinstance(data, str | Endpoint):
            return {"address": _parse_endpoint(data), "auth": "none"}
        return data

    @field_validator("networks", "no_auth_networks", mode="before")
    @classmethod
    def _nets(cls, value: object) -> object:
        return _networks_of(value)

    @property
    def auth_mode(self) -> ListenAuth:
        """``auth`` with its default applied."""
        if self.auth is not None:
            return self.auth
        return "none" if self.address.is_loopback else "required"

    def connect_networks(self, smtp: SmtpSettings) -> list[Network]:
        """Who may connect to this listener."""
        return self.networks if self.networks is not None else smtp.allowed_networks

    def unauthenticated_networks(self, smtp: SmtpSettings) -> list[Network]:
        """Who may send mail here without AUTH."""
        if self.auth_mode == "required":
            return self.no_auth_networks
        return self.connect_networks(smtp)


class SmtpUser(_Model):
    """One ``smtp.users`` entry: a name clients AUTH as, and its secret.

    The secret is an argon2 ``password_hash`` (``sluice admin hash-password``)
    or a clear password given as ``password``, ``password_env``,
    ``password_file``, or else the systemd credential ``smtp-user-NAME``.
    """

    name: str = Field(min_length=1, max_length=255, pattern=r"^[^\s\x00-\x1f\x7f]+$")
    password_hash: Annotated[SecretStr | None, Secret("smtp user", key="name")] = None
    #: ``password``/``password_env``/``password_file`` folded
    password: Annotated[SecretSource | None, Secret("smtp user", key="name")] = None

    @classmethod
    def _default_credential(cls, data: dict[str, Any]) -> str | None:
        if data.get("password_hash") is not None or not isinstance(data.get("name"), str):
            return None
        return f"smtp-user-{data['name']}"

    @field_validator("password_hash")
    @classmethod
    def _argon2(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("$argon2"):
            raise ValueError("is not an argon2 hash (make one with `sluice admin hash-password`)")
        return value

    @model_validator(mode="after")
    def _one_secret(self) -> SmtpUser:
        if self.password_hash is not None and self.password is not None:
            raise ValueError("give password_hash or a password, not both")
        return self


class SmtpSettings(_Model):
    #: strings (``host:port``) or ``ListenerSettings`` mappings
    listen: list[ListenerSettings] = Field(
        default_factory=lambda: [ListenerSettings.model_validate("127.0.0.1:25")]
    )
    #: who may AUTH (``relay.inbound.auth``)
    users: list[SmtpUser] = Field(default_factory=list)
    #: the acknowledgement ``sluice check`` needs for a listener beyond loopback
    #: that takes mail without AUTH from networks beyond loopback (an open relay
    #: for whoever is in them)
    allow_unauthenticated_relay_from_networks: bool = False
    #: a failed AUTH is answered 535 after this long (slows password guessing)
    auth_failure_delay: Duration = Field(default=1.0, ge=0, le=60)
    #: this many failed AUTHs from one address within ``auth_lockout``...
    auth_failure_limit: int = Field(default=5, ge=1, le=10_000)
    #: ...and AUTH from it is answered 421 (and disconnected) until this long after the last one
    auth_lockout: Duration = Field(default=600.0, gt=0, le=86400)
    allowed_networks: list[Network] = Field(
        default_factory=lambda: [
            ipaddress.ip_network("127.0.0.0/8"),
            ipaddress.ip_network("::1/128"),
        ]
    )
    max_message_size: Size = Field(default=25 * 1024 * 1024, gt=0)
    #: Postfix's smtpd_recipient_limit: msmtp, for one, gives up the whole
    #: message at the first 452, so a low limit loses mail to long lists.
    max_recipients: int = Field(default=1000, ge=1, le=100_000)
    #: open client connections per accepting process (Postfix's default_process_limit);
    #: more clients wait in the listen backlog until one ends
    max_connections: int = Field(default=100, ge=1, le=100_000)
    #: how long a client may wait in the backlog for a session before it is
    #: answered 421 (0: at once); ``relay.inbound.admission``
    connection_wait: Duration = Field(default=30.0, ge=0, le=3600)
    hostname: str | None = None
    idle_timeout: Duration = Field(default=300.0, gt=0)
    bare_line_endings: Literal["reject", "accept"] = "reject"
    #: what each user or client network may send (``SendingPolicy``; first match wins)
    policies: list[SendingPolicy] = Field(default_factory=list)
    #: refuse a recipient on the suppression list at RCPT (a 5xx the app sees)
    #: instead of accepting it and ending it as ``suppressed``; global entries
    #: only (a message's stream is not known before DATA)
    refuse_suppressed: bool = False
    #: accept worker processes (``relay.inbound.workers``); 0 = accept in the daemon itself
    workers: int | Literal["auto"] = "auto"

    @field_validator("allowed_networks", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        return _networks_of(value)

    @property
    def endpoints(self) -> list[Endpoint]:
        """The addresses of ``listen``, in order."""
        return [entry.address for entry in self.listen]

    def listener(self, address: Endpoint) -> ListenerSettings:
        """The ``listen`` entry of ``address`` (the first, if given twice).

        Raises:
            KeyError: no entry has that address.
        """
        for entry in self.listen:
            if entry.address == address:
                return entry
        raise KeyError(address)

    def listener_issues(self) -> Iterator[tuple[Loc, str]]:
        """The listener rules pydantic cannot express per field (``load`` reports them)."""
        names = [u.name for u in self.users]
        for i, name in enumerate(names):
            if names.index(name) != i:
                yield ("smtp", "users", i, "name"), f"duplicate user name {name!r}"
        for i, entry in enumerate(self.listen):
            loc: Loc = ("smtp", "listen", i)
            if entry.tls != "none" and (entry.cert_file is None or entry.key_file is None):
                yield (*loc, "tls"), f"tls: {entry.tls} needs cert_file and key_file"
            if entry.tls == "none" and (entry.cert_file or entry.key_file):
                yield (*loc, "cert_file"), "cert_file and key_file need tls: starttls or implicit"
            if entry.allow_auth_without_tls and not entry.address.is_loopback:
                yield (
                    (*loc, "allow_auth_without_tls"),
                    f"{entry.address} is not a loopback address: passwords would cross the "
                    "network in clear; use tls: starttls or implicit",
                )
            if entry.auth_mode != "none":
                if entry.tls == "none" and not entry.allow_auth_without_tls:
                    yield (
                        (*loc, "auth"),
                        f"auth: {entry.auth_mode} needs tls: starttls or implicit (AUTH is "
                        "offered only over TLS; on a loopback address, "
                        "allow_auth_without_tls: true allows it in clear)",
                    )
                if not self.users:
                    yield (*loc, "auth"), f"auth: {entry.auth_mode} but smtp.users is empty"
            elif entry.no_auth_networks:
                yield (*loc, "no_auth_networks"), "only used with auth: required"
            open_to = [
                str(net) for net in entry.unauthenticated_networks(self) if not net.is_loopback
            ]
            if (
                open_to
                and not entry.address.is_loopback
                and not self.allow_unauthenticated_relay_from_networks
            ):
                yield (
                    loc,
                    f"open relay: {entry.address} is not a loopback address and takes mail "
                    f"without AUTH from {', '.join(open_to)}; require AUTH (auth: required, "
                    "with tls), keep the unauthenticated networks on loopback, or acknowledge "
                    "it with smtp.allow_unauthenticated_relay_from_networks: true",
                )

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: object) -> object:
        # One clear message instead of one per member of the union.
        if value == "auto" or (type(value) is int and 0 <= value <= 64):
            return value
        raise ValueError("must be 'auto' or a number of processes from 0 to 64")

    @property
    def worker_count(self) -> int:
        """``workers`` resolved for the CPUs this process may use (``auto_workers``)."""
        if self.workers != "auto":
            return int(self.workers)
        return auto_workers(len(os.sched_getaffinity(0)))


#: ``smtp.workers: auto`` starts at most this many accept workers (about 45 MB each).
AUTO_WORKERS_MAX = 4


def auto_workers(cpus: int) -> int:
    """``smtp.workers: auto``: one accept worker per two CPUs, none on one, at most 4.

    The daemon's own process delivers (and takes about one CPU when busy);
    accepting is the rest of the work. On 2 or 3 CPUs that is one worker, as
    before; 4 CPUs get 2, 8 and more get 4.
    """
    return min(AUTO_WORKERS_MAX, cpus // 2)


class SpoolSettings(_Model):
    """Where the queue lives: a SQLite file (the default), or a PostgreSQL database (#27).

    With ``url`` set, the store is PostgreSQL and may be shared by a fleet of
    nodes; ``path``'s directory stays this node's own state directory either
    way (its lock and pid files, the secrets typed on the admin page).
    """

    path: Path = Path("/var/lib/sluice/spool.sqlite3")
    keep_sent: Duration = Field(default=7 * 86400.0, ge=0)
    #: ``postgresql://USER@HOST:PORT/DB`` (no password in it: ``password``/``_env``/``_file``)
    url: str | None = Field(default=None, min_length=1)
    #: the role's password (``password``, ``password_env``, ``password_file``, or the
    #: systemd credential ``spool``), when the server asks for one
    password: Annotated[SecretSource | None, Secret("the spool")] = None
    #: this node's name in a fleet sharing one PostgreSQL store; default: the host name
    node: str = Field(default_factory=socket.gethostname, min_length=1, max_length=200)

    @field_validator("url")
    @classmethod
    def _postgresql_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme = value.partition("://")[0]
        if scheme not in ("postgresql", "postgres"):
            raise ValueError("must start with postgresql:// (SQLite is spool.path)")
        if re.search(r"://[^/@]*:[^/@]*@", value) or re.search(r"[?&]password=", value):
            raise ValueError(
                "holds a password; put it in spool.password_file or spool.password_env "
                "(a URL is shown and logged, a secret must never be)"
            )
        return value

    @property
    def backend(self) -> Literal["sqlite", "postgresql"]:
        return "sqlite" if self.url is None else "postgresql"

    @property
    def where(self) -> str:
        """The store as logs and messages name it: the file, or the URL (no password in it)."""
        return str(self.path) if self.url is None else self.url


class RetrySettings(_Model):
    first_delay: Duration = Field(default=60.0, gt=0)
    max_delay: Duration = Field(default=3600.0, gt=0)
    give_up_after: Duration = Field(default=5 * 86400.0, gt=0)
    jitter: float = Field(default=0.1, ge=0, le=1)
    #: explicit intervals between attempts (``[1m, 5m, 1h*3, 4h]``) instead of the
    #: exponential back-off; the last one repeats until ``give_up_after``
    schedule: list[ScheduleStepT] | None = Field(default=None, min_length=1)


class DeliverySettings(_Model):
    max_concurrent: int = Field(default=20, ge=1, le=1000)
    connect_timeout: Duration = Field(default=30.0, gt=0)
    command_timeout: Duration = Field(default=300.0, gt=0)
    data_timeout: Duration = Field(default=600.0, gt=0)
    poll_interval: Duration = Field(default=5.0, gt=0)
    #: new mail within this long of the last claim waits for the window's end, to be
    #: claimed with what follows it (``relay.outbound.scheduler.batch_wait``); 0 = never
    batch_window: Duration = Field(default=0.005, ge=0, le=1.0)
    shutdown_grace: Duration = Field(default=30.0, ge=0)
    lease: Duration = Field(default=1800.0, gt=0)


class LogSettings(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    retention: Duration = Field(default=30 * 86400.0, gt=0)


class AdminSettings(_Model):
    enabled: bool = True
    listen: EndpointT = Endpoint("127.0.0.1", 8025)
    username: str = "admin"
    password_hash: Annotated[SecretStr | None, Secret("the admin")] = None
    #: ``password``/``password_env``/``password_file`` (the clear password) folded
    password: Annotated[SecretSource | None, Secret("the admin")] = None
    #: ``api_token``/``api_token_env``/``api_token_file`` (bearer token for /api/) folded
    api_token: Annotated[SecretSource | None, Secret("the admin API")] = None
    allowed_hosts: list[str] = Field(default_factory=list)
    session_max_age: Duration = Field(default=12 * 3600.0, gt=0)
    # -- config edits (issue #25: relay/config_edit.py, relay/operations/config_edits.py)
    #: the admin may edit the config file (false: no edit forms, the API answers 403)
    config_edits: bool = True
    #: where typed secrets are written (default: ``secrets`` beside the spool file)
    secrets_dir: Path | None = None

    @field_validator("password_hash")
    @classmethod
    def _hash_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is empty; an empty password is no password")
        return value

    @property
    def has_password(self) -> bool:
        """Whether a password is *given* (its value is checked where it is resolved)."""
        return self.password_hash is not None or self.password is not None

    def exposure_issue(self) -> str | None:
        """Why this admin must not start: reachable from the network with no password.

        One rule in one place: ``load`` reports it with its line (so ``sluice
        check`` refuses what ``sluice serve`` would), and the admin server
        checks it again for settings built in code.
        """
        if not self.enabled or self.has_password or self.listen.is_loopback:
            return None
        return (
            f"{self.listen} is not a loopback address and no admin password is configured; "
            "set admin.password_hash (see `sluice admin hash-password`), password_env or "
            "password_file, or listen on 127.0.0.1"
        )


# ------------------------------------------------------------ address rules
# Issue #26 section 3: aliases, redirect and archive_bcc act at acceptance
# (relay.address_rules), headers on the way out (relay.message.edit_headers).

_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 section 3.6.8 field-name


def _address_or_name(value: str) -> str:
    """An alias key or target: a bare local name (``root``) or a full address."""
    value = value.strip()
    if not value or any(c.isspace() or c in '<>,"' for c in value):
        raise ValueError(f"{value!r} is not a local name or an address")
    local, at, domain = value.rpartition("@")
    if at and (not local or not domain or ("." not in domain and domain != "localhost")):
        raise ValueError(f"{value!r} is not a local name or an address")
    return value.lower()


def _mailbox(value: str) -> str:
    """A full address (the redirect target, an archive address)."""
    value = value.strip()
    if "@" not in value:
        raise ValueError(f"{value!r} is not a full address (user@domain)")
    return _address_or_name(value)


def _targets(value: object) -> object:
    """One target or a list of them: always a list."""
    return [value] if isinstance(value, str) else value


AliasName = Annotated[str, AfterValidator(_address_or_name)]
Mailbox = Annotated[str, AfterValidator(_mailbox)]
AliasTargets = Annotated[list[AliasName], BeforeValidator(_targets), Field(min_length=1)]


def _allow_entry(value: str) -> str:
    """A redirect allow-list entry: ``example.com``, ``*.example.com`` or an address."""
    value = value.strip().lower()
    bare = value.removeprefix("*.")
    if "@" in value:
        return _mailbox(value)
    if not bare or "*" in bare or not re.fullmatch(r"[a-z0-9._-]+", bare, re.ASCII):
        raise ValueError(f"{value!r}: a domain, *.domain or an address")
    return value


def _header_name(value: str) -> str:
    if not _HEADER_NAME.fullmatch(value.replace("*", "a").replace("?", "a")):
        raise ValueError(f"{value!r} is not a header field name")
    return value


def _header_value(value: str) -> str:
    if "\r" in value or "\n" in value or not value.isascii():
        raise ValueError("a header value is one line of ASCII")
    return value


class RedirectSettings(_Model):
    """Staging hosts: recipients outside ``allow`` never reach their mailbox."""

    #: where mail to recipients outside ``allow`` goes instead
    to: Mailbox | None = None
    #: domains (``example.com``), subdomains (``*.example.com``) and addresses that pass
    allow: list[Annotated[str, AfterValidator(_allow_entry)]] = Field(default_factory=list)
    #: rewrite (to ``to``) or hold (kept, on hold until an operator releases it)
    action: Literal["rewrite", "hold"] = "rewrite"

    @model_validator(mode="after")
    def _target_for_rewrite(self) -> RedirectSettings:
        if self.action == "rewrite" and self.to is None:
            raise ValueError("redirect.to is needed with action: rewrite")
        return self


class ArchiveSettings(_Model):
    """A copy of relayed mail to an archive (Postfix always_bcc / sender_bcc_maps)."""

    #: gets a copy of every message
    to: Mailbox | None = None
    #: sender domain -> the address that gets a copy of that domain's mail
    sender_domains: dict[str, Mailbox] = Field(default_factory=dict)


class HeaderSettings(_Model):
    """Header fields changed on the way out (the stored copy is never changed)."""

    #: field names to remove, glob patterns allowed (``X-Internal-*``), any case
    remove: list[Annotated[str, AfterValidator(_header_name)]] = Field(default_factory=list)
    #: fields added, name -> value
    add: dict[
        Annotated[str, AfterValidator(_header_name)],
        Annotated[str, AfterValidator(_header_value)],
    ] = Field(default_factory=dict)

    @field_validator("add")
    @classmethod
    def _no_globs(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if "*" in name or "?" in name:
                raise ValueError(f"{name!r}: an added field needs a plain name")
        return value


#: how deep aliases may point at aliases (Postfix virtual_alias_recursion_limit)
ALIAS_RECURSION_LIMIT = 1000
#: how many recipients one address may become (Postfix virtual_alias_expansion_limit)
ALIAS_EXPANSION_LIMIT = 1000


def alias_problem(aliases: Mapping[str, Sequence[str]], key: str) -> str | None:
    """Why expanding ``key`` fails (too deep, too many), or ``None``; shared with the listener.

    An address met again on its own path stays as it is (Postfix keeps an
    alias that names itself, ``ops: ops, dev``), so a loop ends rather than fails.
    """
    found = 0
    # Depth first, with a stack of its own: a chain 1,000 deep is allowed,
    # and Python's own recursion limit is about that.
    stack: list[tuple[str, frozenset[str], int]] = [(key, frozenset(), 0)]
    while stack:
        name, path, depth = stack.pop()
        if depth > ALIAS_RECURSION_LIMIT:
            return f"aliases nest deeper than {ALIAS_RECURSION_LIMIT}"
        targets = aliases.get(name)
        if targets is None or name in path:
            found += 1
            if found > ALIAS_EXPANSION_LIMIT:
                return f"expands to more than {ALIAS_EXPANSION_LIMIT} recipients"
            continue
        below = path | {name}
        stack.extend((t, below, depth + 1) for t in reversed(targets))
    return None


class OAuth2Settings(_Model):
    token_url: str
    client_id: str
    #: ``client_secret``/``_env``/``_file`` folded
    client_secret: Annotated[SecretSource | None, Secret("oauth2")] = None
    #: ``refresh_token``/``_env``/``_file`` folded
    refresh_token: Annotated[SecretSource | None, Secret("oauth2")] = None
    scope: str = ""
    refresh_margin: Duration = Field(default=300.0, ge=0)
    #: RFC 8628 device authorization endpoint: lets ``sluice providers connect``
    #: (or the admin's Connect button) obtain the refresh token by a sign-in
    device_authorization_url: str | None = None


class ProviderSettings(_Model):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    caption: str = ""
    driver: Literal["smtp"] = "smtp"
    host: str = Field(min_length=1)
    port: int = Field(default=587, ge=1, le=65535)
    encryption: Literal["none", "starttls", "tls"] = "starttls"
    username: str | None = None
    #: ``password``/``password_env``/``password_file`` folded; with a username and
    #: none of them (and no oauth2), the systemd credential named after the id
    password: Annotated[SecretSource | None, Secret("provider", key="id")] = None
    oauth2: OAuth2Settings | None = None
    #: the one SASL mechanism tried per connection; "auto" picks the strongest the
    #: server offers (CRAM-MD5, then PLAIN, then LOGIN), or XOAUTH2 with ``oauth2``
    auth_mechanism: Literal["auto", "plain", "login", "cram-md5", "xoauth2"] = "auto"
    enabled: bool = True
    priority: int = 100
    timeout: Duration | None = None
    max_connections: int = Field(default=4, ge=1, le=1000)
    tls_verify: bool = True
    ca_file: Path | None = None
    allow_insecure_auth: bool = False
    #: RFC 2920: MAIL, RCPT and DATA in one write when the server offers
    #: PIPELINING; false only for a server that offers it and then mishandles it
    pipelining: bool = True
    send_from: str | None = None
    send_from_name: str | None = None
    #: header fields removed and added for this provider, after the top-level ``headers``
    headers: HeaderSettings | None = None
    #: this provider's bounce address (Return-Path), instead of bounces.address
    bounce_address: str | None = None
    daily_limit: int | None = Field(default=None, ge=1)
    #: what ``daily_limit`` counts: messages (one per transaction) or recipients
    #: (Microsoft 365 counts recipients)
    limit_unit: Literal["messages", "recipients"] = "messages"
    #: the UTC calendar day, or the last 24 hours (Microsoft 365, Gmail, SES)
    limit_window: Literal["utc_day", "rolling_24h"] = "utc_day"
    rate: RateT | None = None
    #: what ``rate`` counts: messages or recipients
    rate_unit: Literal["messages", "recipients"] = "messages"
    idle_timeout: Duration = Field(default=30.0, ge=0)
    #: circuit breaker: after this many consecutive failures of the provider itself,
    #: skip it for ``cooldown`` (also the pause after a 421 without a "try again in")
    failure_threshold: int = Field(default=3, ge=1, le=1000)
    cooldown: Duration = Field(default=60.0, ge=0)

    @classmethod
    def _default_credential(cls, data: dict[str, Any]) -> str | None:
        """With a username and no oauth2, the password is the credential named after the id."""
        pid = data.get("id")
        needs = bool(data.get("username")) and data.get("oauth2") is None
        return pid if needs and isinstance(pid, str) and pid else None

    @model_validator(mode="after")
    def _mechanism_fits_credentials(self) -> ProviderSettings:
        mech = self.auth_mechanism
        if self.oauth2 is not None and mech not in ("auto", "xoauth2"):
            raise ValueError(f"auth_mechanism {mech!r} cannot be used with oauth2 (XOAUTH2)")
        if self.oauth2 is None and mech == "xoauth2":
            raise ValueError("auth_mechanism 'xoauth2' needs oauth2 settings")
        return self


class RouteSettings(_Model):
    """Choose providers for matching mail; the first matching route wins."""

    sender_domain: list[str] | None = None
    recipient_domain: list[str] | None = None
    header: str | None = None
    providers: list[str] = Field(min_length=1)


class MailboxSettings(_Model):
    """The bounce mailbox: an IMAP folder the bounces of relayed mail arrive in."""

    host: str = Field(min_length=1)
    #: default 993 with encryption tls, else 143
    port: int | None = Field(default=None, ge=1, le=65535)
    encryption: Literal["tls", "starttls", "none"] = "tls"
    username: str = Field(min_length=1)
    #: ``password``/``password_env``/``password_file`` folded
    password: Annotated[SecretSource | None, Secret("the bounce mailbox")] = None
    #: XOAUTH2 (Microsoft 365, Gmail mailboxes), as for providers
    oauth2: OAuth2Settings | None = None
    folder: str = "INBOX"
    #: move processed messages here; without it they are flagged and left in place
    processed_folder: str | None = None
    #: delete processed messages (only when asked: a bounce is evidence)
    delete_processed: bool = False
    #: move messages that cannot be read here (made when missing); without it they are
    #: flagged ``$SluiceUnreadable`` and processed like the rest
    quarantine_folder: str | None = None
    poll_interval: Duration = Field(default=60.0, gt=0)
    timeout: Duration = Field(default=30.0, gt=0)
    max_message_size: Size = Field(default=10 * 1024 * 1024, gt=0)
    tls_verify: bool = True
    ca_file: Path | None = None

    @property
    def effective_port(self) -> int:
        return self.port or (993 if self.encryption == "tls" else 143)

    @model_validator(mode="after")
    def _clear_text_only_on_loopback(self) -> MailboxSettings:
        if self.encryption == "none" and not _loopback_host(self.host):
            raise ValueError(
                "encryption: none sends the mailbox password in clear; "
                "use tls or starttls, or a loopback host"
            )
        return self


class SuppressScope(StrEnum):
    """What a suppression made by bounces applies to (``bounces.suppress_scope``)."""

    #: every stream: the address gets no more mail at all (the default)
    GLOBAL = "global"
    #: only the stream of the mail that bounced; mail of no stream still suppresses globally
    STREAM = "stream"


class BounceSettings(_Model):
    """Where bounces go, how they are read, and when they suppress an address."""

    #: the envelope sender (Return-Path) of relayed mail; None keeps the app's own
    address: str | None = None
    #: a return path per recipient (``address`` with +QUEUEID-RCPTID) to attribute bounces
    verp: bool = False
    #: hard bounces of one address that put it on the suppression list
    threshold: int = Field(default=3, ge=1, le=1000)
    #: count only bounces this recent (None: all)
    window: Duration | None = None
    #: soft bounces spread over at least this long count as one hard bounce (None: off)
    soft_as_hard_after: Duration | None = None
    #: a suppression caused by bounces lifts itself after this long (None: never)
    expire_after: Duration | None = None
    #: a provider's permanent refusal of a recipient (550 5.1.1...) counts as a hard bounce
    count_smtp_refusals: bool = True
    #: what an address crossing the threshold is suppressed for: ``global`` (every
    #: stream) or ``stream`` (only the stream of the mail that bounced, so a
    #: newsletter's bounces do not stop password resets; ``relay.store.suppressions``)
    suppress_scope: SuppressScope = SuppressScope.GLOBAL
    mailbox: MailboxSettings | None = None

    @model_validator(mode="after")
    def _verp_needs_address(self) -> BounceSettings:
        if self.verp and not self.address:
            raise ValueError("verp needs bounces.address (the address bounces return to)")
        return self


class SuppressionSettings(_Model):
    """How suppressed recipients are treated, and what names a message's stream."""

    #: headers that name a message's stream, first found wins (List-Id: its <id>)
    stream_headers: list[str] = Field(default_factory=lambda: ["X-Sluice-Stream", "List-Id"])


def _loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class WebhookSettings(_Model):
    """One endpoint that gets events as signed JSON POSTs (``relay.notify.webhooks``)."""

    url: str = Field(pattern=r"^https?://[^\s/]+")
    #: which events it gets (default: every kind, ``relay.events.EventType``)
    events: list[EventType] = Field(default_factory=lambda: list(EventType), min_length=1)
    #: ``secret``/``secret_env``/``secret_file`` folded: the HMAC key (required:
    #: a receiver must be able to tell Sluice's events from anyone's)
    secret: Annotated[SecretSource | None, Secret("webhook", key="url")] = None
    timeout: Duration = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _signed(self) -> WebhookSettings:
        if self.secret is None:
            raise ValueError("a webhook needs secret_env, secret_file or secret (to sign events)")
        return self

    @property
    def key(self) -> SecretSource:
        """The signing secret (always set: checked at load)."""
        assert self.secret is not None
        return self.secret


class NotifySettings(_Model):
    """Telling senders (DSNs) and other programs (webhooks) what became of mail."""

    #: RFC 3464 DSNs to the envelope sender; off by default: apps rarely read mail
    dsn: bool = False
    #: sender domains that get DSNs even with ``dsn: false`` ...
    dsn_domains: list[str] = Field(default_factory=list)
    #: ... and sender domains that never do
    no_dsn_domains: list[str] = Field(default_factory=list)
    #: a "delayed" DSN once a recipient has waited this long (Postfix's delay_warning_time)
    delay_warning_after: Duration | None = Field(default=None, gt=0)
    #: at most this many DSNs per sender address per hour (a loop guard)
    dsn_per_hour: int = Field(default=10, ge=1, le=100_000)
    webhooks: list[WebhookSettings] = Field(default_factory=list)
    #: back-off after a failed POST: first_delay doubling up to max_delay
    webhook_first_delay: Duration = Field(default=5.0, gt=0)
    webhook_max_delay: Duration = Field(default=600.0, gt=0)
    #: how long events (delivered or not) are kept for the admin's Webhooks page
    webhook_retention: Duration = Field(default=7 * 86400.0, gt=0)


class AlertSettings(_Model):
    """Thresholds that turn ``/healthz`` to ``degraded`` (none is set by default)."""

    oldest_pending_after: Duration | None = Field(default=None, gt=0)
    deferred_over: int | None = Field(default=None, ge=0)
    provider_failures_per_hour: int | None = Field(default=None, ge=0)


class HoldRule(_Model):
    """Put new mail on hold when every given condition matches (like ``routes:``).

    ``recipient_domain_not`` is the staging-host rule: hold every recipient
    outside the listed domains.
    """

    sender_domain: list[str] | None = None
    recipient_domain: list[str] | None = None
    recipient_domain_not: list[str] | None = None
    header: str | None = None
    #: shown as the held recipients' reason
    reason: str = ""


class HoldSettings(_Model):
    """Operator holds: ``sluice queue hold`` and ``hold.rules`` for new mail."""

    #: False (default): time spent held does not count toward retry.give_up_after
    age_while_held: bool = False
    #: held longer than this: the recipient expires (None: held until released)
    expire_after: Duration | None = Field(default=None, gt=0)
    rules: list[HoldRule] = Field(default_factory=list)


# ------------------------------------------------------------------- DKIM (#26 § 2)


class DkimDomain(_Model):
    """How mail whose From header is in ``domain`` is signed on the way out.

    Only that exact domain, as OpenDKIM's default (``SubDomains no``): a
    subdomain signs with an entry of its own. The key is a secret written
    ``key_file`` (or ``key_env``, ``key``); with none of them it is the
    systemd credential ``dkim-DOMAIN``.
    """

    domain: str = Field(
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+$"
    )
    selector: str = Field(
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?)*$"
    )
    #: ``key``/``key_env``/``key_file`` folded: the private key (RSA 2048+ or Ed25519), PEM
    key: Annotated[SecretSource | None, Secret("DKIM domain", key="domain")] = None
    #: header fields signed when present (RFC 6376 § 5.4.1, OpenDKIM's default set)
    headers: list[str] = Field(default_factory=lambda: list(DKIM_HEADERS), min_length=1)
    #: signed once more than present, so that none can be added (OpenDKIM's OversignHeaders)
    oversign: list[str] = Field(default_factory=lambda: ["from"])
    #: header/body canonicalization (RFC 6376 § 3.4)
    canonicalization: Literal[
        "relaxed/relaxed", "relaxed/simple", "simple/relaxed", "simple/simple"
    ] = "relaxed/relaxed"

    @field_validator("domain")
    @classmethod
    def _lower_domain(cls, value: str) -> str:
        return value.lower()

    @field_validator("headers", "oversign")
    @classmethod
    def _header_names(cls, value: list[str]) -> list[str]:
        names = [name.strip().lower() for name in value]
        for name in names:
            if not re.fullmatch(r"[!-9;-~]+", name):
                raise ValueError(f"{name!r} is not a header field name")
            if name in DKIM_NEVER_SIGNED:
                raise ValueError(f"{name!r} must not be signed (RFC 6376 § 5.4)")
        return list(dict.fromkeys(names))

    @field_validator("headers")
    @classmethod
    def _from_signed(cls, value: list[str]) -> list[str]:
        if "from" not in value:
            raise ValueError("must include from (RFC 6376 § 5.4)")
        return value

    @classmethod
    def _default_credential(cls, data: dict[str, Any]) -> str | None:
        """With no key given, the key is the systemd credential ``dkim-DOMAIN``."""
        domain = data.get("domain")
        return f"dkim-{domain.lower()}" if isinstance(domain, str) and domain else None


class DkimSettings(_Model):
    """DKIM signing on the way out (``relay.outbound.dkim``); no domains: nothing signed."""

    domains: list[DkimDomain] = Field(default_factory=list)

    def for_domain(self, domain: str) -> DkimDomain | None:
        """The entry for a From domain (exact, any case), or ``None``."""
        wanted = domain.lower()
        return next((d for d in self.domains if d.domain == wanted), None)


class Config(_Model):
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    spool: SpoolSettings = Field(default_factory=SpoolSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    log: LogSettings = Field(default_factory=LogSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    providers: list[ProviderSettings] = Field(min_length=1)
    routes: list[RouteSettings] = Field(default_factory=list)
    bounces: BounceSettings = Field(default_factory=BounceSettings)
    suppression: SuppressionSettings = Field(default_factory=SuppressionSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)

    hold: HoldSettings = Field(default_factory=HoldSettings)
    dkim: DkimSettings = Field(default_factory=DkimSettings)

    # address rules (relay.address_rules); the keys of section 3 of issue #26
    #: domains whose addresses are local names (besides smtp.hostname and localhost)
    local_domains: list[str] = Field(default_factory=list)
    aliases: dict[AliasName, AliasTargets] = Field(default_factory=dict)
    redirect: RedirectSettings | None = None
    archive_bcc: ArchiveSettings | None = None
    headers: HeaderSettings = Field(default_factory=HeaderSettings)

    @field_validator("aliases")
    @classmethod
    def _aliases_end(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for key in value:
            if (why := alias_problem(value, key)) is not None:
                raise ValueError(f"{key}: {why}")
            for target in value[key]:
                if "@" not in target and target not in value:
                    raise ValueError(
                        f"{key}: {target!r} is a local name with no alias of its own"
                        " (mail to it would be refused)"
                    )
        return value

    def provider(self, provider_id: str) -> ProviderSettings:
        for provider in self.providers:
            if provider.id == provider_id:
                return provider
        raise KeyError(provider_id)

    def secrets(self) -> Iterator[SecretRef]:
        """Every secret the config names (disabled providers' and admin's included).

        Found by walking the models for ``Secret``-marked fields, providers
        first, then the other sections in their order; a ``SecretStr``
        (``admin.password_hash``) comes as an inline ``SecretSource``.
        """
        sections = sorted(type(self).model_fields, key=lambda name: name != "providers")
        for name in sections:
            yield from _secrets_in(getattr(self, name), (name,), None)


Loc = tuple[str | int, ...]


def _secrets_in(value: object, loc: Loc, provider: str | None) -> Iterator[SecretRef]:
    """The ``SecretRef`` of every marked field set in ``value`` and below it."""
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _secrets_in(item, (*loc, i), provider)
        return
    if not isinstance(value, BaseModel):
        return
    if isinstance(value, ProviderSettings):
        provider = value.id
    marked = secret_fields(type(value))
    for name in type(value).model_fields:
        item = getattr(value, name)
        if name not in marked:
            yield from _secrets_in(item, (*loc, name), provider)
        elif isinstance(item, SecretSource):
            yield SecretRef((*loc, name), item, provider)
        elif isinstance(item, SecretStr):
            yield SecretRef((*loc, name), SecretSource(name=name, inline=item), provider)


def _secret_keys(model: type[BaseModel]) -> Iterator[tuple[str, bool]]:
    """Every marked field's name under ``model``, and whether it is folded."""
    for name, info in model.model_fields.items():
        if name in secret_fields(model):
            yield name, _folded(model, name)
        for arg in [info.annotation, *get_args(info.annotation)]:
            for inner in [arg, *get_args(arg)]:
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    yield from _secret_keys(inner)


class SecretRef(NamedTuple):
    """One secret of a config: where it sits, where it comes from, whose it is."""

    #: the folded field, e.g. ("providers", 0, "password")
    loc: Loc
    source: SecretSource
    #: the provider id, or None for the admin's secrets
    provider: str | None

    @property
    def yaml_loc(self) -> Loc:
        """The key the user wrote, e.g. ("providers", 0, "password_env")."""
        return (*self.loc[:-1], self.source.yaml_key)


#: the secret keys users write, by base name; each folds into one ``SecretSource``
#: (derived from the ``Secret`` marks: ``password``, ``client_secret`` ...)
SECRET_NAMES = tuple(dict.fromkeys(name for name, folded in _secret_keys(Config) if folded))
#: every key whose value is a secret (those above, and ``password_hash``)
_SECRET_KEYS = frozenset(name for name, _ in _secret_keys(Config))

#: which secrets ``load`` resolves: all, none, or those a predicate picks
SecretsWanted = bool | Callable[[SecretRef], bool]


# --------------------------------------------------------------------------- loading


def _semantic_issues(cfg: Config) -> Iterator[tuple[Loc, str]]:
    """Cross-field rules pydantic cannot express per field."""
    seen: dict[str, int] = {}
    for i, p in enumerate(cfg.providers):
        if p.id in seen:
            yield ("providers", i, "id"), f"duplicate provider id {p.id!r}"
        seen.setdefault(p.id, i)
    if not any(p.enabled for p in cfg.providers):
        if len(cfg.providers) == 1:
            msg = "the only provider can't be disabled"
        else:
            msg = "at least one provider must be enabled"
        yield ("providers", len(cfg.providers) - 1, "enabled"), msg
    for i, route in enumerate(cfg.routes):
        for j, pid in enumerate(route.providers):
            if pid not in seen:
                yield ("routes", i, "providers", j), f"unknown provider id {pid!r}"
        if not (route.sender_domain or route.recipient_domain or route.header):
            yield ("routes", i), "a route needs sender_domain, recipient_domain or header"
    for i, rule in enumerate(cfg.hold.rules):
        if not (
            rule.sender_domain or rule.recipient_domain or rule.recipient_domain_not or rule.header
        ):
            yield (
                ("hold", "rules", i),
                "a hold rule needs sender_domain, recipient_domain, recipient_domain_not or header",
            )
    if cfg.retry.first_delay > cfg.retry.max_delay:
        yield ("retry", "first_delay"), "first_delay is longer than max_delay"
    domains: dict[str, int] = {}
    for i, d in enumerate(cfg.dkim.domains):
        if d.domain in domains:
            yield ("dkim", "domains", i, "domain"), f"duplicate DKIM domain {d.domain!r}"
        domains.setdefault(d.domain, i)
    yield from cfg.smtp.listener_issues()
    exposed = cfg.admin.exposure_issue()
    if exposed is not None:
        yield ("admin", "listen"), exposed
    yield from _policy_issues(cfg)


def _file_issues(cfg: Config) -> Iterator[tuple[Loc, str]]:
    """Files the daemon reads at start besides secrets: each must load as it will then.

    A provider's ``ca_file`` becomes its TLS context when the daemon builds
    its providers; a missing or non-PEM file stopped ``serve`` there (exit 69,
    no line) while ``check`` said OK. Building the same context here (no
    network: OpenSSL only reads the file) makes both refuse it with its line.
    """
    for i, entry in enumerate(cfg.smtp.listen):
        if entry.tls == "none" or entry.cert_file is None or entry.key_file is None:
            continue
        try:
            server_context(entry.cert_file, entry.key_file)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            yield ("smtp", "listen", i, "cert_file"), f"cannot load the certificate: {reason}"
    for i, p in enumerate(cfg.providers):
        if p.ca_file is None:
            continue
        try:
            settings_context(p)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            yield ("providers", i, "ca_file"), f"cannot load {p.ca_file}: {reason}"


def _dkim_issues(cfg: Config, env: Mapping[str, str]) -> Iterator[tuple[Loc, str]]:
    """Every DKIM key must load as the signer will load it: a bad key is a config error.

    A key that cannot be read at all is ``_secret_issues``' to report; here
    the text read must be an RSA (2048 bits or more) or Ed25519 private key.
    """
    for i, d in enumerate(cfg.dkim.domains):
        if d.key is None:
            continue
        try:
            load_dkim_key(d.key.resolve(env).get_secret_value(), key=d.key.yaml_key)
        except SecretError as exc:
            if isinstance(exc, DkimKeyError):
                yield ("dkim", "domains", i, exc.key), exc.message


def _expand_env(
    node: yaml.Node,
    env: Mapping[str, str],
    issues: list[tuple[int, Loc, str]],
    loc: Loc = (),
    *,
    unset: Literal["error", "empty"] = "error",
    keep_secret_vars: bool = False,
) -> None:
    """Replace ``${VAR}`` in every scalar, in place on the composed tree.

    An unset variable is an issue (``unset="error"``) or reads as empty. With
    ``keep_secret_vars``, an unset one in a secret's value is left as written:
    that value is not used, and "" would read as an (invalid) empty secret.
    """
    if isinstance(node, yaml.ScalarNode) and "${" in node.value:
        secret = keep_secret_vars and bool(loc) and loc[-1] in _SECRET_KEYS

        def sub(m: re.Match[str]) -> str:
            if m.group(1) in env:
                return env[m.group(1)]
            if secret:
                return m.group(0)
            if unset == "error":
                issues.append((node.start_mark.line + 1, loc, f"${{{m.group(1)}}} is not set"))
            return ""

        node.value = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", sub, node.value)
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            part = getattr(key, "value", "?")
            _expand_env(
                value, env, issues, (*loc, part), unset=unset, keep_secret_vars=keep_secret_vars
            )
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _expand_env(
                item, env, issues, (*loc, i), unset=unset, keep_secret_vars=keep_secret_vars
            )


def _duplicate_keys(node: yaml.Node, loc: Loc = ()) -> Iterator[tuple[int, Loc, str]]:
    """YAML quietly keeps the last of two equal keys; a config mistake, so report it."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name = str(getattr(key, "value", "?"))
            line = key.start_mark.line + 1
            if name in seen:
                yield line, (*loc, name), f"duplicate key (first given on line {seen[name]})"
            seen.setdefault(name, line)
            yield from _duplicate_keys(value, (*loc, name))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, (*loc, i))


def _line_of(root: yaml.Node | None, loc: Loc, *, key: bool = False) -> int:
    """1-based line of the deepest node ``loc`` reaches (the key node if ``key``)."""
    node = root
    line = root.start_mark.line + 1 if root is not None else 1
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                    node = k if (last and key) else v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
        else:
            return line
        line = node.start_mark.line + 1
    return line


def _dotted(loc: Loc) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _clean_loc(loc: tuple[Any, ...]) -> Loc:
    # pydantic inserts validator names such as "function-after[...]" into loc.
    cleaned = [p for p in loc if isinstance(p, int) or not ("[" in p or p.startswith("function"))]
    # A folded secret's parts name the key the user wrote: password.env -> password_env.
    out: list[str | int] = []
    for part in cleaned:
        if out and part in _SECRET_PARTS and out[-1] in SECRET_NAMES:
            out[-1] = f"{out[-1]}{_SECRET_PARTS[str(part)]}"
        else:
            out.append(part)
    return tuple(out)


def _secret_issues(
    cfg: Config, env: Mapping[str, str], wanted: SecretsWanted
) -> Iterator[tuple[Loc, str]]:
    """Every wanted secret must resolve to a non-empty value; report those that do not.

    A disabled provider's secrets are not wanted: it sends nothing, and its
    variable or credential may well be missing until it is enabled (its
    provider then needs them, and the reload that enables it checks them).
    """
    disabled = {i for i, p in enumerate(cfg.providers) if not p.enabled}
    for ref in cfg.secrets():
        if ref.loc[0] == "providers" and ref.loc[1] in disabled:
            continue
        if wanted is True or (callable(wanted) and wanted(ref)):
            try:
                ref.source.resolve(env)
            except SecretError as exc:
                yield (*ref.loc[:-1], exc.key), exc.message


# A config file is written by people (or by a template an attacker may fill), so
# the loader bounds what a few hundred bytes can make it do. config.example.yaml,
# every section shown with its comments, is 20 KB, 157 nodes and 4 levels deep; a
# provider adds about 15 nodes. The bounds sit far above any real file (1 MiB is
# fifty example files; 20,000 nodes is a thousand providers) and below what costs
# time: pure-Python PyYAML scans about 1 MB/s or 50,000 nodes/s, so a file at the
# bounds loads well under a second, where a 2.5M-item list took minutes and 2 GB.
MAX_CONFIG_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 20_000
# Each reported issue costs a walk to find its line; past this many the rest is a count.
MAX_ISSUES = 100
MAX_ALIAS_NODES = 10_000
# The tags SafeLoader builds (str, int, map, seq, ...) and the merge key it reads
# (``<<: *defaults``); any other, such as !!python/object/apply, is refused with
# its line rather than a traceback.
_KNOWN_TAGS = frozenset(
    [
        *(t for t in yaml.SafeLoader.yaml_constructors if t is not None),
        "tag:yaml.org,2002:merge",
        "tag:yaml.org,2002:value",
    ]
)


class _TooBig(SluiceError):
    """Raised inside the composer when a bound is passed; ``loads`` reports it."""

    def __init__(self, line: int, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.loc = loc
        self.message = message


class _BoundedComposer(yaml.composer.Composer):
    """SafeLoader whose composer counts nodes and depth as it builds the tree.

    Anchors and aliases stay allowed (``<<: *defaults`` is a fair way to repeat
    provider settings), but the composer shares one node per anchor, so a tree
    walk or pydantic sees every alias expanded: a 535-byte "billion laughs" is
    a billion nodes to them. Counting each alias at the size of what it names
    refuses that while composing, before anything walks the tree. PyYAML has
    no such bound of its own; this subclass is the smallest hook that has one.
    It is PyYAML's own composer, so it sits on libyaml's parser when PyYAML has
    it (50 times faster: a 1 MiB file parses in 10 ms, not 0.6 s) and on the
    pure-Python one when not.
    """

    def __init__(self) -> None:
        yaml.composer.Composer.__init__(self)  # not super(): the loaders mix in a parser
        self._nodes = 0
        self._alias_nodes = 0
        self._sizes: dict[str, int] = {}
        self._path: list[str | int] = []

    def _refuse(self, message: str) -> _TooBig:
        mark = self._next_event().start_mark
        return _TooBig(mark.line + 1 if mark else 1, tuple(self._path), message)

    def _next_event(self) -> yaml.Event:
        """The parser's next event, without taking it; the parser is the other base."""
        raise NotImplementedError

    def dispose(self) -> None:
        """Let the parser drop its state; the parser is the other base."""
        raise NotImplementedError

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        """Compose one node, keeping its key path, the depth and the expanded count."""
        # The stubs say int; at run time a mapping value's index is its key node.
        part: object = index
        if isinstance(part, yaml.ScalarNode):
            self._path.append(str(part.value))
        elif isinstance(part, int):
            self._path.append(part)
        else:
            self._path.append("")  # a mapping key, or the root; dropped below
        try:
            if len(self._path) > MAX_DEPTH + 1:
                raise self._refuse(f"nested deeper than {MAX_DEPTH} levels")
            event = self._next_event()
            if isinstance(event, yaml.AliasEvent) and event.anchor in self._sizes:
                size = self._sizes[event.anchor]
                self._alias_nodes += size
                self._nodes += size
                if self._alias_nodes > MAX_ALIAS_NODES:
                    raise self._refuse(
                        f"aliases expand to more than {MAX_ALIAS_NODES:,} nodes"
                        " (a repeated anchor, as in a 'billion laughs')"
                    )
                self._check_total()
                return super().compose_node(parent, index)
            if isinstance(event, yaml.AliasEvent) and event.anchor in self.anchors:
                # The anchor is still open: the value would contain itself.
                raise self._refuse(f"the alias *{event.anchor} is inside its own anchor")
            anchor = getattr(event, "anchor", None)
            before = self._nodes
            self._nodes += 1
            self._check_total()
            node = super().compose_node(parent, index)
            if anchor is not None:
                self._sizes[anchor] = self._nodes - before
            return node
        finally:
            self._path.pop()

    def _check_total(self) -> None:
        if self._nodes > MAX_NODES:
            raise self._refuse(f"more than {MAX_NODES:,} values in one file")


class _PyLoader(_BoundedComposer, yaml.SafeLoader):
    """The bounded composer on PyYAML's pure-Python reader, scanner and parser."""

    def __init__(self, stream: str) -> None:
        yaml.SafeLoader.__init__(self, stream)
        _BoundedComposer.__init__(self)

    def _next_event(self) -> yaml.Event:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped stub
        return event

    def dispose(self) -> None:
        yaml.SafeLoader.dispose(self)


class _CLoader(
    _BoundedComposer, yaml.constructor.SafeConstructor, yaml.resolver.Resolver, _CParser
):
    """The bounded composer on libyaml's parser (the same events and marks as PyYAML's)."""

    def __init__(self, stream: str) -> None:
        _CParser.__init__(self, stream)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        _BoundedComposer.__init__(self)

    def _next_event(self) -> yaml.Event:
        event = self.peek_event()
        assert event is not None  # the composer peeks only inside a document
        return event

    def dispose(self) -> None:
        _CParser.dispose(self)


def _unknown_tags(node: yaml.Node, loc: Loc = ()) -> Iterator[tuple[int, Loc, str]]:
    """A tag SafeLoader cannot build (``!!python/...``, ``!custom``) is a config mistake."""
    if node.tag not in _KNOWN_TAGS:
        yield (
            node.start_mark.line + 1,
            loc,
            f"the tag {node.tag.removeprefix('tag:yaml.org,2002:')!r} is not allowed here",
        )
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield from _unknown_tags(key, loc)
            yield from _unknown_tags(value, (*loc, str(getattr(key, "value", "?"))))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _unknown_tags(item, (*loc, i))


def _compose(text: str, source: str) -> yaml.Node | None:
    """Compose the YAML within the bounds; every failure becomes ``FILE:LINE: key: message``."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{source}:1: (file): {_too_large(len(text))}"])
    try:
        loader: _BoundedComposer = _CLoader(text) if _WITH_LIBYAML else _PyLoader(text)
        try:
            return loader.get_single_node()
        finally:
            loader.dispose()
    except _TooBig as exc:
        loc = tuple(p for p in exc.loc if p != "")
        raise ConfigError([f"{source}:{exc.line}: {_dotted(loc)}: {exc.message}"]) from None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_yaml_issue(source, exc)]) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError([f"{source}:{line}: (yaml): {exc.reason}"]) from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError([f"{source}:1: (yaml): {exc}"]) from None


def _yaml_issue(source: str, exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark else 1
    return f"{source}:{line}: (yaml): {exc.problem or exc}"


def _not_shown(source: str, total: int) -> list[str]:
    """The count line that ends a list of issues cut at ``MAX_ISSUES`` (none if not cut)."""
    if total <= MAX_ISSUES:
        return []
    return [f"{source}:1: (top level): {total - MAX_ISSUES:,} more issues not shown"]


def _too_large(size: int) -> str:
    return (
        f"the file is larger than {MAX_CONFIG_BYTES // 1024} KiB"
        f" ({size:,} bytes or more); a config is a few dozen KiB"
    )


def loads(
    text: str,
    *,
    source: str = "<config>",
    env: Mapping[str, str] | None = None,
    secrets: SecretsWanted = False,
    unset: Literal["error", "empty"] = "error",
) -> Config:
    """Parse and validate YAML text; raise ``ConfigError`` listing every issue.

    ``secrets`` says which secrets must resolve now (``True``: all); when any
    are, each provider's ``ca_file`` must load too (what ``serve`` reads at
    start). When none are wanted, a ``${VAR}`` in a secret's value may be unset. ``unset="empty"``
    reads any other unset ``${VAR}`` as "".
    """
    environ = os.environ if env is None else env
    root = _compose(text, source)
    if root is None:
        raise ConfigError([f"{source}:1: providers: the file is empty; at least one provider"])
    early: list[tuple[int, Loc, str]] = [*_unknown_tags(root), *_duplicate_keys(root)]
    _expand_env(root, environ, early, unset=unset, keep_secret_vars=secrets is False)
    if early:
        raise ConfigError(
            [f"{source}:{line}: {_dotted(loc)}: {msg}" for line, loc, msg in early[:MAX_ISSUES]]
            + _not_shown(source, len(early))
        )
    try:
        data = yaml.SafeLoader(text).construct_document(root)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_yaml_issue(source, exc)]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{source}:1: (top level): expected a mapping of sections"])
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        issues = []
        errors = exc.errors()
        for err in errors[:MAX_ISSUES]:
            loc = _clean_loc(err["loc"])
            is_key = err["type"] == "extra_forbidden"
            msg = "unknown key" if is_key else err["msg"].removeprefix("Value error, ")
            if err["type"] == "missing":
                msg = "required key is missing"
            issues.append(f"{source}:{_line_of(root, loc, key=is_key)}: {_dotted(loc)}: {msg}")
        raise ConfigError(issues + _not_shown(source, len(errors))) from None
    problems = list(_semantic_issues(cfg))
    if secrets is not False:
        problems.extend(_file_issues(cfg))
        problems.extend(_secret_issues(cfg, environ, secrets))
        if secrets is True:  # the daemon's and ``sluice check``'s load: the keys it signs with
            problems.extend(_dkim_issues(cfg, environ))
    if problems:
        raise ConfigError(
            [
                f"{source}:{_line_of(root, loc)}: {_dotted(loc)}: {msg}"
                for loc, msg in problems[:MAX_ISSUES]
            ]
            + _not_shown(source, len(problems))
        )
    return cfg


def _read(source: str) -> str:
    """Read at most one byte past the bound, so /dev/zero or a huge file costs nothing."""
    try:
        with open(source, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError([f"{source}:1: (file): {_too_large(len(data))}"])
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{source}:1: (file): cannot read: {exc}"]) from None


def load(
    path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    secrets: SecretsWanted = True,
) -> Config:
    """Read and validate a config file (see ``loads``); by default every secret must resolve.

    Commands that connect to no provider (``sluice queue ...``, ``providers
    list``) pass ``secrets=False``: an operator's shell need not hold the
    service's environment or credentials to look at the queue.
    """
    source = os.fspath(path)
    cfg = loads(_read(source), source=source, env=env, secrets=secrets)
    return resolve_paths(cfg, Path(source).resolve().parent)


def load_structure(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    """``load`` for a process without the service's secrets and environment.

    Secrets are not resolved and an unset ``${VAR}`` reads as empty, so that
    ``sluice sendmail`` (run by cron or PHP) and the pre-check of ``sluice
    reload`` (run from a shell) see the same structure the daemon does; the
    daemon's own ``load`` remains the full check.
    """
    source = os.fspath(path)
    cfg = loads(_read(source), source=source, env=env, secrets=False, unset="empty")
    return resolve_paths(cfg, Path(source).resolve().parent)


def resolve_paths(cfg: Config, base: Path) -> Config:
    """Make a relative spool path relative to the config file's directory."""
    if cfg.spool.path.is_absolute():
        return cfg
    spool = cfg.spool.model_copy(update={"path": base / cfg.spool.path})
    return cfg.model_copy(update={"spool": spool})
