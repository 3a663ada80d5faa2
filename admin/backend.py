"""What the admin may read and do (``Backend``, built and handed over by the daemon), and helpers.

The admin never imports the daemon: the daemon fills ``DaemonStatus`` and
builds ``Backend`` (``relay.daemon.Daemon.admin_backend``), and the admin
reads and acts only through it. No globals.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from jinja2 import Environment
from prometheus_client import CollectorRegistry, Gauge
from starlette.requests import Request
from starlette.templating import Jinja2Templates

from admin.auth import Credentials, LoginLimiter, Sessions
from admin.guard import SCOPE_KEY, Identity
from relay.bounces.poller import PollStatus
from relay.config import AdminSettings
from relay.metrics import Metrics
from relay.operations import queue as queue_ops
from relay.operations.actor import Actor, ActorKind, Refusal
from relay.operations.config_edits import EditContext
from relay.operations.queue import Acted
from relay.outbound.probe import TestReport
from relay.outbound.scheduler import Snapshot
from relay.outbound.sign_in import SignIn
from relay.store.spool import Spool

__all__ = [
    "ACTIONS",
    "REFUSAL_STATUS",
    "AdminState",
    "Backend",
    "DaemonStatus",
    "act",
    "actor",
    "identity",
    "json_body",
    "state",
]

ACTIONS = ("retry", "delete")
#: the largest JSON body the API reads
_BODY_MAX = 64 * 1024


@dataclass(frozen=True, slots=True)
class DaemonStatus:
    """Liveness facts the daemon reports about itself (``Daemon.admin_status``)."""

    started_at: float
    #: someone takes SMTP connections (the daemon, or at least one accept worker)
    listener_up: bool
    last_reload_error: str | None = None
    last_reload_at: float | None = None
    #: accept worker processes configured (0: the daemon accepts itself) ...
    accept_workers: int = 0
    #: ... and how many of them serve the sockets now
    accept_workers_alive: int = 0
    #: a bounce mailbox is configured ...
    bounce_mailbox: bool = False
    #: ... and its last poll failed with this ('' when it works)
    bounce_mailbox_error: str = ""
    bounce_mailbox_last_ok_at: float | None = None
    #: delivery outcomes the spool refused to write, held until written
    #: (``relay.outbound.pending``): those recipients are not tried again meanwhile
    outcomes_unrecorded: int = 0


@dataclass(frozen=True, slots=True)
class Backend:
    """What the admin may read and do; the daemon builds it and hands it over."""

    spool: Spool
    snapshot: Callable[[], Snapshot]
    metrics: Metrics
    #: re-read the config file; True when the new one was taken
    reload: Callable[[], Awaitable[bool]]
    #: run the real connection check against one provider, by ID
    test_connection: Callable[[str], Awaitable[TestReport]]
    status: Callable[[], DaemonStatus]
    #: start a provider's device sign-in (the Connect button); its state by provider id
    sign_in_start: Callable[[str], Awaitable[SignIn]] | None = None
    sign_in_state: Callable[[str], SignIn | None] | None = None
    #: this relay's host name (the test message's Message-ID and sender domain)
    hostname: str = "localhost"
    clock: Callable[[], float] = time.time
    #: the bounce mailbox poller's state now (None: no mailbox is configured)
    bounce_mailbox: Callable[[], PollStatus | None] = lambda: None
    #: list the bounce mailbox server's folders (raises ``MailboxError``; None: no poller)
    bounce_folders: Callable[[], Awaitable[list[str]]] | None = None
    #: sha256 of the config file the daemon runs (its last load or reload; None: no file)
    config_digest: Callable[[], str | None] = lambda: None
    #: what a config edit needs (``relay.operations.config_edits``); None: the daemon
    #: was not started from a file, so there is nothing to edit
    edit_context: Callable[[], EditContext] | None = None
    #: the key signing session cookies, kept in a store shared by a fleet (None: one
    #: made at start, this process's alone)
    session_key: str | None = None


class _ScrapeGauges:
    """Gauges only the admin knows how to fill (read at scrape time)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sent_today = Gauge(
            "sluice_provider_sent_today",
            "Messages sent today per provider.",
            ["provider"],
            registry=r,
        )
        self.daily_limit = Gauge(
            "sluice_provider_daily_limit",
            "Configured daily limit per provider.",
            ["provider"],
            registry=r,
        )
        self.health = Gauge(
            "sluice_provider_health",
            "1 for the provider's current health state (unknown, ok, degraded, error, cooldown:"
            " judged from its recent deliveries, as on the admin pages and in providers list).",
            ["provider", "state"],
            registry=r,
        )
        self.paused = Gauge(
            "sluice_provider_paused",
            "1 while an operator has paused delivery through the provider (or all).",
            ["provider"],
            registry=r,
        )
        self.uptime = Gauge(
            "sluice_uptime_seconds", "Seconds since the daemon started.", registry=r
        )
        # What /healthz judges, as numbers (admin/health.py has the rules).
        self.health_state = Gauge(
            "sluice_health",
            "1 for the relay's current health state (ok, degraded, unhealthy), as /healthz.",
            ["state"],
            registry=r,
        )
        self.oldest_pending = Gauge(
            "sluice_oldest_pending_seconds",
            "Age of the longest-waiting unsent recipient (0 when none waits).",
            registry=r,
        )
        self.writes_failing = Gauge(
            "sluice_spool_writes_failing",
            "1 while spool writes fail (e.g. a full disk), until one works again.",
            registry=r,
        )
        self.write_errors = Gauge(
            "sluice_spool_write_errors",
            "Failed spool writes since the daemon started.",
            registry=r,
        )
        self.last_write_error = Gauge(
            "sluice_spool_last_write_error_timestamp_seconds",
            "When a spool write last failed (0: never).",
            registry=r,
        )
        self.checkpoints_failing = Gauge(
            "sluice_spool_checkpoints_failing",
            "1 while the WAL checkpointer fails or has stopped.",
            registry=r,
        )
        self.checkpoint_errors = Gauge(
            "sluice_spool_checkpoint_errors",
            "Failed WAL checkpoints since the daemon started.",
            registry=r,
        )
        self.suppressions = Gauge(
            "sluice_suppressions",
            "Entries on the suppression list in force now (not expired), by source.",
            ["source"],
            registry=r,
        )
        self.provider_failures = Gauge(
            "sluice_provider_failures_last_hour",
            "Failed or deferred delivery attempts per provider in the last hour.",
            ["provider"],
            registry=r,
        )
        self.deferred = Gauge(
            "sluice_deferred_recipients",
            "Recipients waiting for a retry (as sluice_queue_recipients{status=deferred}).",
            registry=r,
        )
        self.webhook_pending = Gauge(
            "sluice_webhook_events_pending",
            "Webhook events not yet acknowledged, per endpoint URL.",
            ["endpoint"],
            registry=r,
        )
        self.webhook_failing = Gauge(
            "sluice_webhook_events_failing",
            "Webhook events waiting after a failed POST, per endpoint URL.",
            ["endpoint"],
            registry=r,
        )
        self.accept_workers = Gauge(
            "sluice_accept_workers",
            "Accept worker processes configured, and alive (serving the sockets).",
            ["state"],
            registry=r,
        )


@dataclass
class AdminState:
    backend: Backend
    settings: AdminSettings
    credentials: Credentials
    sessions: Sessions
    limiter: LoginLimiter
    templates: Jinja2Templates
    gauges: _ScrapeGauges = field(default_factory=_ScrapeGauges)

    @property
    def env(self) -> Environment:
        return self.templates.env


def state(request: Request) -> AdminState:
    admin: AdminState = request.app.state.admin
    return admin


def identity(request: Request) -> Identity:
    who: Identity = request.scope[SCOPE_KEY]
    return who


def actor(request: Request) -> Actor:
    """Who acts, for the operations: the front-end (the JSON API or the pages) and the user.

    The name is the admin user; ``api`` for a bearer token; ``admin (no
    password set)`` when no login is required.
    """
    who = identity(request)
    kind = ActorKind.API if request.url.path.startswith("/api/") else ActorKind.ADMIN
    if who.via == "token":
        return Actor(kind, "api")
    if who.via == "open":
        return Actor(kind, "admin (no password set)")
    return Actor(kind, who.user or str(who.via))


#: a refusal's HTTP status
REFUSAL_STATUS = {Refusal.INVALID: 400, Refusal.NOT_FOUND: 404, Refusal.CONFLICT: 409}


async def json_body(request: Request, *, limit: int = _BODY_MAX) -> dict[str, Any]:
    """The request's JSON object, read up to ``limit`` bytes (an empty body is ``{}``).

    Raises:
        ValueError: too large, not JSON, or not an object.
    """
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise ValueError("request body too large")
    body = json.loads(raw) if raw else {}
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object")
    return body


async def act(spool: Spool, action: str, queue_ids: Iterable[str], who: Actor) -> Acted:
    """Retry or delete messages by queue ID (``ACTIONS``); unknown IDs are reported, not fatal."""
    if action == "retry":
        return await queue_ops.retry(spool, queue_ids, who)
    if action == "delete":
        return await queue_ops.delete(spool, queue_ids, who)
    raise ValueError(action)
