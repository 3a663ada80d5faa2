"""``/healthz``: whether this relay takes mail safely, and what is wrong if not.

Three states, judged from facts the store and the daemon report:

* ``unhealthy`` (HTTP 503): mail is not being taken safely, so a probe should
  fail: the spool cannot be read, its writes fail now (a full disk: the
  listener answers 451 to every message), or nobody accepts SMTP
  connections (no listener, or every accept worker dead).
* ``degraded`` (HTTP 200): mail flows, but something needs a look before it
  gets worse: the WAL checkpointer fails or stopped (the writers' own
  checkpoints keep the spool going, more slowly), or fewer accept workers run
  than configured (the dead one is being replaced), or an operator paused
  delivery (``sluice providers pause``): mail is taken and waits.
* ``ok`` (HTTP 200).

Degraded answers 200 on purpose: an orchestrator restarting a relay that
still takes mail would only lose the sessions in flight. Alert on
``status != "ok"`` (or on the ``sluice_health`` gauge) instead.

The age of the oldest pending message is reported, never judged: how long
mail may wait is the retry policy's business and the operator's alert rule's.
While writes fail, each check tries one small durable write
(``Spool.probe_write``), so the state clears once there is room again even
when no mail comes in.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from enum import StrEnum

from admin.backend import Backend, DaemonStatus
from relay.errors import SpoolError
from relay.model import ProviderPause
from relay.store.spool import SpoolHealth

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
    #: operator pauses in force, one line each ("main: incident until ...")
    paused: list[str] = field(default_factory=list)

    @property
    def http_status(self) -> int:
        return 503 if self.state is State.UNHEALTHY else 200


def assess(
    *,
    spool_readable: bool,
    spool: SpoolHealth,
    status: DaemonStatus,
    oldest_pending_age: float | None,
    paused: list[str] | None = None,
) -> Health:
    """The verdict over the facts (pure; see the module docstring for the rules)."""
    bad: list[str] = []
    warn: list[str] = []
    if not spool_readable:
        bad.append("the spool cannot be read")
    if spool.writes.failing:
        bad.append(f"spool writes fail: {spool.writes.last_error}")
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
    for line in paused or ():
        warn.append(f"delivery paused by an operator: {line}")
    state = State.UNHEALTHY if bad else State.DEGRADED if warn else State.OK
    return Health(
        state, bad + warn, spool_readable, spool, status, oldest_pending_age, list(paused or ())
    )


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
    now = backend.clock()
    return assess(
        spool_readable=readable,
        spool=spool.health(),
        status=backend.status(),
        oldest_pending_age=None if oldest is None else max(0.0, now - oldest),
        paused=paused,
    )


def _pause_line(p: ProviderPause) -> str:
    who = "all providers" if p.provider == "*" else p.provider
    end = (
        "until resumed"
        if p.until is None
        else "until " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(p.until))
    )
    return f"{who}: {p.reason or 'no reason given'} ({end}, by {p.actor})"
