"""``/healthz``: whether this relay takes mail safely, and what is wrong if not.

Three states, judged from facts the store and the daemon report:

* ``unhealthy`` (HTTP 503): mail is not being taken safely, so a probe should
  fail: the spool cannot be read, its writes fail now (a full disk: the
  listener answers 452 to every message; also when the file system has no
  room left, whichever process found it full), or nobody accepts SMTP
  connections (no listener, or every accept worker dead).
* ``degraded`` (HTTP 200): mail flows, but something needs a look before it
  gets worse: the WAL checkpointer fails or stopped (the writers' own
  checkpoints keep the spool going, more slowly), or fewer accept workers run
  than configured (the dead one is being replaced), or the bounce mailbox
  cannot be read (bounces wait there; delivery goes on), or delivery outcomes
  wait in memory to be written (the spool refused them), or an operator paused
  delivery (``sluice providers pause``): mail is taken and waits, or a
  provider is failing or in an automatic cool-down (``relay.outbound.health``:
  the same words and reason as the provider pages, the API, ``/metrics`` and
  ``sluice providers list``). A provider only degraded (amber) is not reported
  here: it still delivers most mail.
* ``ok`` (HTTP 200).

Degraded answers 200 on purpose: an orchestrator restarting a relay that
still takes mail would only lose the sessions in flight. Alert on
``status != "ok"`` (or on the ``sluice_health`` gauge) instead.

Three more facts turn it ``degraded`` only past a threshold the operator set
in ``alerts`` (none is set by default: how long mail may wait is the retry
policy's business): the age of the oldest pending message
(``alerts.oldest_pending_after``), the number of deferred recipients
(``alerts.deferred_over``) and each provider's failed or deferred attempts in
the last hour (``alerts.provider_failures_per_hour``). The same numbers are
on ``/metrics`` whatever the thresholds.
While writes fail, each check tries one small durable write
(``Spool.probe_write``), so the state clears once there is room again even
when no mail comes in.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from enum import StrEnum

from admin.backend import Backend, DaemonStatus
from relay.config import AlertSettings
from relay.errors import SpoolError
from relay.model import ProviderPause, RecipientStatus
from relay.store.spool import SpoolHealth
from relay.wording import plural, when

__all__ = ["Health", "State", "assess", "check"]


class State(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True, slots=True)
class Health:
    state: State
    #: one line per thing that is wrong, worst first
    problems: list[str]
    spool_readable: bool
    spool: SpoolHealth
    status: DaemonStatus
    #: seconds the longest-waiting unsent recipient has waited (None: the queue is empty)
    oldest_pending_age: float | None
    #: deferred recipients (None: not counted, no threshold asks for it)
    deferred: int | None = None
    #: failed or deferred attempts per provider in the last hour (only with a threshold)
    provider_failures: dict[str, int] | None = None
    #: operator pauses in force, one line each ("main: incident until ...")
    paused: list[str] = field(default_factory=list)
    #: providers failing or cooling down, one line each ("provider main failing since ...: ...")
    providers: list[str] = field(default_factory=list)

    @property
    def http_status(self) -> int:
        return 503 if self.state is State.UNHEALTHY else 200


def assess(
    *,
    spool_readable: bool,
    spool: SpoolHealth,
    status: DaemonStatus,
    oldest_pending_age: float | None,
    alerts: AlertSettings | None = None,
    deferred: int | None = None,
    provider_failures: dict[str, int] | None = None,
    paused: list[str] | None = None,
    short_of_room: str | None = None,
    providers: list[str] | None = None,
) -> Health:
    """The verdict over the facts (pure; see the module docstring for the rules)."""
    bad: list[str] = []
    warn: list[str] = []
    if not spool_readable:
        bad.append("the spool cannot be read")
    if spool.writes.failing:
        bad.append(f"spool writes fail: {spool.writes.last_error}")
    elif short_of_room is not None:
        bad.append(f"spool disk full: {short_of_room}; mail is refused (452)")
    if not status.listener_up:
        bad.append("nobody accepts SMTP connections")
    cp = spool.checkpoints
    if cp is not None and not cp.running:
        warn.append("the WAL checkpointer has stopped")
    elif cp is not None and cp.failing:
        warn.append(f"WAL checkpoints fail: {cp.last_error}")
    if status.listener_up and status.accept_workers_alive < status.accept_workers:
        warn.append(
            f"{status.accept_workers_alive} of {status.accept_workers} accept workers running"
        )
    if status.bounce_mailbox and status.bounce_mailbox_error:
        # Bounces wait in the mailbox; delivery is not affected.
        warn.append(f"bounce mailbox: {status.bounce_mailbox_error}")
    if status.outcomes_unrecorded:
        # Delivered (or refused) but not yet written: kept in memory and
        # written again; those recipients are not tried again meanwhile.
        n = status.outcomes_unrecorded
        warn.append(f"{plural(n, 'delivery outcome')} not yet written to the spool")
    for line in paused or ():
        warn.append(f"delivery paused by an operator: {line}")
    warn.extend(providers or ())
    if alerts is not None:
        warn.extend(_alerts(alerts, oldest_pending_age, deferred, provider_failures or {}))
    state = State.UNHEALTHY if bad else State.DEGRADED if warn else State.OK
    return Health(
        state,
        bad + warn,
        spool_readable,
        spool,
        status,
        oldest_pending_age,
        deferred,
        provider_failures,
        list(paused or ()),
        list(providers or ()),
    )


def _alerts(
    alerts: AlertSettings,
    oldest_pending_age: float | None,
    deferred: int | None,
    provider_failures: dict[str, int],
) -> list[str]:
    out: list[str] = []
    after = alerts.oldest_pending_after
    if after is not None and oldest_pending_age is not None and oldest_pending_age > after:
        out.append(
            f"the oldest pending message has waited {oldest_pending_age:.0f}s"
            f" (alerts.oldest_pending_after: {after:.0f}s)"
        )
    limit = alerts.deferred_over
    if limit is not None and deferred is not None and deferred > limit:
        out.append(f"{plural(deferred, 'recipient')} deferred (alerts.deferred_over: {limit})")
    most = alerts.provider_failures_per_hour
    if most is not None:
        for pid, n in sorted(provider_failures.items()):
            if n > most:
                out.append(
                    f"provider {pid}: {plural(n, 'failed attempt')} in the last hour"
                    f" (alerts.provider_failures_per_hour: {most})"
                )
    return out


async def check(backend: Backend) -> Health:
    """Gather the facts (one indexed read, and a probe write only while writes fail)."""
    spool = backend.spool
    paused: list[str] = []
    try:
        oldest = await spool.oldest_pending()
        paused = [_pause_line(p) for p in (await spool.pauses()).values()]
        readable = True
    except Exception:  # any failure to read means "not healthy", reported as such
        oldest, readable = None, False
    if spool.health().writes.failing:
        with contextlib.suppress(SpoolError):
            await spool.probe_write()
    short_of_room = await spool.short_of_room()
    now = backend.clock()
    alerts = backend.snapshot().config.alerts
    deferred: int | None = None
    failures: dict[str, int] | None = None
    if readable:
        # Read only when a threshold asks: /healthz may be probed every second.
        with contextlib.suppress(Exception):
            if alerts.deferred_over is not None:
                deferred = (await spool.counts_by_status())[RecipientStatus.DEFERRED]
            if alerts.provider_failures_per_hour is not None:
                failures = await spool.provider_failures(since=now - 3600)
    return assess(
        spool_readable=readable,
        spool=spool.health(),
        status=backend.status(),
        oldest_pending_age=None if oldest is None else max(0.0, now - oldest),
        alerts=alerts,
        deferred=deferred,
        provider_failures=failures,
        paused=paused,
        short_of_room=short_of_room,
        providers=[
            f"provider {pid} {word.label}"
            + (f" since {when(since)}" if since is not None else "")
            + f": {reason}"
            for pid, word, reason, since in backend.snapshot().providers.troubles()
        ],
    )


def _pause_line(p: ProviderPause) -> str:
    who = "all providers" if p.provider == "*" else p.provider
    end = "until resumed" if p.until is None else f"until {when(p.until)}"
    return f"{who}: {p.reason or 'no reason given'} ({end}, by {p.actor})"
