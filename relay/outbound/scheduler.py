"""The scheduler: claim due mail from the spool, deliver it, record outcomes.

The shape is procrastinate's worker: a stop event, the spool's wake event,
a bounded number of deliveries in flight (``delivery.max_concurrent``), named
tasks owned by a ``TaskGroup``, and a graceful drain with a deadline. Only
as many messages are claimed as there are free slots, so a lease never
waits behind other work.

Per message, the providers are tried in order: recipients a provider failed
for a reason of its own (connection, TLS, auth, 421) are offered at once to
the next one; back-off applies only when every candidate has failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from relay.config import Config
from relay.errors import SpoolError, UnknownMessage
from relay.message import HeaderBlock
from relay.metrics import Metrics
from relay.model import (
    AttemptStatus,
    Claim,
    Delivered,
    Outcome,
    PermFailure,
    RecipientStatus,
    TempFailure,
)
from relay.outbound.providers import ProviderSet, Unavailable
from relay.outbound.retry import decide
from relay.store.spool import Finish, Spool
from relay.wording import plural

__all__ = ["Scheduler", "Snapshot"]

log = logging.getLogger("sluice.scheduler")

_ATTEMPT_STATUS = {
    RecipientStatus.SENT: AttemptStatus.SUCCESS,
    RecipientStatus.FAILED: AttemptStatus.FAIL,
    RecipientStatus.EXPIRED: AttemptStatus.FAIL,
    RecipientStatus.DEFERRED: AttemptStatus.DEFERRED,
}

NO_PROVIDER = TempFailure("", None, "4.4.0 no provider is available for this message")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One consistent view of the configuration; a reload swaps the whole thing."""

    config: Config
    providers: ProviderSet


class Scheduler:
    def __init__(
        self,
        spool: Spool,
        snapshot: Callable[[], Snapshot],
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._spool = spool
        self._snapshot = snapshot
        self._clock = clock
        self._rng = rng or random.Random()
        self._inflight: set[asyncio.Task[None]] = set()
        self.idle = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set, then drain for ``delivery.shutdown_grace``."""
        last_lease_sweep = 0.0
        try:
            async with asyncio.TaskGroup() as tg:
                while not stop.is_set():
                    cfg = self._snapshot().config.delivery
                    now = time.monotonic()
                    if now - last_lease_sweep > min(60.0, cfg.lease / 4):
                        last_lease_sweep = now
                        await self._spool.requeue_expired_leases()
                    self._spool.wake.clear()
                    free = cfg.max_concurrent - len(self._inflight)
                    claims: list[Claim] = []
                    if free > 0:
                        try:
                            claims = await self._spool.claim_due(free, cfg.lease)
                        except SpoolError as exc:
                            log.error("cannot claim mail from the spool: %s", exc)
                    for claim in claims:
                        task = tg.create_task(
                            self._attempt(claim), name=f"deliver-{claim.queue_id}"
                        )
                        self._inflight.add(task)
                        task.add_done_callback(self._inflight.discard)
                    if len(self._inflight) >= cfg.max_concurrent:
                        # Full: more may be due, so claim again when a slot frees.
                        await _wait_any(
                            stop,
                            asyncio.wait(set(self._inflight), return_when=asyncio.FIRST_COMPLETED),
                        )
                        continue
                    if claims and len(claims) == free:
                        # Every slot asked for was filled, so more may be due; and
                        # deliveries that ended during the claim freed slots that
                        # no wake event will announce.
                        continue
                    if not self._inflight:
                        self.idle.set()
                    await _wait_any(stop, self._spool.wake.wait(), within=cfg.poll_interval)
                    self.idle.clear()
                await self._drain()
        finally:
            self.idle.set()

    async def _drain(self) -> None:
        grace = self._snapshot().config.delivery.shutdown_grace
        if not self._inflight:
            return
        inflight = plural(len(self._inflight), "delivery", "deliveries")
        log.info("waiting up to %.0fs for %s", grace, inflight)
        _done, pending = await asyncio.wait(set(self._inflight), timeout=grace)
        for task in pending:
            task.cancel()

    async def _attempt(self, claim: Claim) -> None:
        try:
            await self._deliver(claim)
        except asyncio.CancelledError:
            # Shutdown: give the recipients back without counting an attempt.
            with contextlib.suppress(SpoolError):
                await asyncio.shield(
                    self._spool.release(claim, reply="interrupted by shutdown; will retry")
                )
            raise
        except Exception:
            log.exception("%s: delivery crashed; releasing for retry", claim.queue_id)
            with contextlib.suppress(SpoolError):
                await self._spool.release(
                    claim,
                    reply="4.3.0 internal error during delivery; will retry",
                    next_attempt_at=self._clock() + 60,
                )

    async def _deliver(self, claim: Claim) -> None:
        snap = self._snapshot()
        data = claim.data
        if data is None:
            try:
                data = await self._spool.body(claim.message_id)
            except UnknownMessage:
                return  # deleted while claimed; nothing to do
        results: dict[int, tuple[Outcome, str | None]] = {}
        waits: list[Unavailable] = []
        # Routing is resolved now, from the current config, for each recipient.
        head = HeaderBlock(data)  # found once per attempt; routing and rewrites read it
        for rids_of_route, route in snap.providers.plan(claim, head):
            pending = {rid: claim.recipients[rid].address for rid in rids_of_route}
            for provider in route:
                rids = list(pending)
                # DEBUG: the outcome line that follows says the same at INFO.
                log.debug(
                    "%s: attempt provider=%s to=%s",
                    claim.queue_id,
                    provider.id,
                    ",".join(f"<{pending[r]}>" for r in rids),
                    extra={"event": "attempt", "queue_id": claim.queue_id},
                )
                started = time.monotonic()
                got = await provider.deliver(
                    claim.sender,
                    [pending[r] for r in rids],
                    data,
                    crlf_only=claim.crlf_only,
                    head=head,
                )
                if isinstance(got, Unavailable):
                    waits.append(got)  # skipped (limits, cool-down): not an attempt
                    continue
                self._metrics.delivery_seconds.labels(provider.id).observe(
                    time.monotonic() - started
                )
                for rid, outcome in zip(rids, got, strict=True):
                    results[rid] = (outcome, provider.id)
                    if not (isinstance(outcome, TempFailure) and outcome.provider_fault):
                        del pending[rid]
                if not pending:
                    break
        untried = [rid for rid in claim.recipients if rid not in results]
        if untried and waits and all(w.limit for w in waits):
            # A recipient past retry.give_up_after expires even while it waits
            # for a limit; it is decided below like any other temporary failure.
            give_up = snap.config.retry.give_up_after
            for rid in [r for r in untried if claim.recipients[r].since + give_up <= self._clock()]:
                reason = "; ".join(dict.fromkeys(w.reason for w in waits))
                results[rid] = (
                    TempFailure(claim.recipients[rid].address, None, f"4.7.0 {reason}"),
                    None,
                )
                untried.remove(rid)
        if untried and waits and all(w.limit for w in waits):
            # Every provider these recipients may use is at its daily limit or rate:
            # they wait, without counting an attempt, until the first one allows.
            until = min(w.until for w in waits)
            reason = "4.7.0 waiting: " + "; ".join(dict.fromkeys(w.reason for w in waits))
            await self._spool.release(
                replace(
                    claim,
                    recipients={r: claim.recipients[r] for r in untried},
                    attempt_ids={r: claim.attempt_ids[r] for r in untried},
                ),
                reply=reason,
                next_attempt_at=until,
            )
            for rid in untried:
                log.info(
                    "%s: to=<%s> waits until %s: %s",
                    claim.queue_id,
                    claim.recipients[rid].address,
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(until)),
                    reason,
                )
            claim = replace(
                claim,
                recipients={r: c for r, c in claim.recipients.items() if r in results},
            )
            if not claim.recipients:
                return
        elif untried and waits:
            # Skipped for health (cool-down, a provider's pause): the retry back-off
            # applies, as if the provider had failed again, honouring its pause.
            first = min(waits, key=lambda w: w.until)
            reason = "; ".join(dict.fromkeys(w.reason for w in waits))
            for rid in untried:
                results[rid] = (
                    TempFailure(
                        claim.recipients[rid].address,
                        None,
                        f"4.4.0 no provider available now: {reason}",
                        retry_after=max(0.0, first.until - self._clock()),
                        provider_fault=True,
                    ),
                    first.provider,
                )
        now = self._clock()
        finishes = []
        for rid, rcpt in claim.recipients.items():
            outcome, provider_id = results.get(rid, (NO_PROVIDER, None))
            decision = decide(
                outcome,
                attempts=rcpt.attempts + 1,
                since=rcpt.since,
                now=now,
                policy=snap.config.retry,
                rng=self._rng,
            )
            reply = outcome.text
            if decision.status is RecipientStatus.EXPIRED:
                reply = f"4.4.7 gave up after {snap.config.retry.give_up_after:.0f}s: {reply}"
            finishes.append(
                Finish(
                    recipient_id=rid,
                    attempt_id=claim.attempt_ids[rid],
                    status=decision.status,
                    attempt_status=_ATTEMPT_STATUS[decision.status],
                    next_attempt_at=decision.next_attempt_at,
                    code=outcome.code,
                    reply=reply,
                    provider=provider_id,
                )
            )
            _log_outcome(claim, rcpt.address, outcome, decision.status, provider_id)
            self._metrics.deliveries.labels(provider_id or "-", decision.status.value).inc()
        await self._spool.finish(finishes)


def _log_outcome(
    claim: Claim, rcpt: str, outcome: Outcome, status: RecipientStatus, provider: str | None
) -> None:
    level = logging.INFO if isinstance(outcome, Delivered) else logging.WARNING
    if isinstance(outcome, PermFailure):
        level = logging.WARNING
    log.log(
        level,
        "%s: to=<%s> provider=%s status=%s reply=%s",
        claim.queue_id,
        rcpt,
        provider or "-",
        status.value,
        outcome.text,
        extra={"event": "outcome", "queue_id": claim.queue_id},
    )


async def _wait_any(
    stop: asyncio.Event, other: Awaitable[object], *, within: float | None = None
) -> None:
    """Wait until ``stop`` is set, ``other`` finishes, or ``within`` seconds pass."""
    tasks = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(other)}
    try:
        await asyncio.wait(tasks, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
