"""The scheduler: claim due mail from the spool, deliver it, record outcomes.

The shape is procrastinate's worker: a stop event, the spool's wake event,
a bounded number of deliveries in flight (``delivery.max_concurrent``), named
tasks owned by a ``TaskGroup``, and a graceful drain with a deadline. Only
as many messages are claimed as there are free slots, so a lease never
waits behind other work. Under a steady stream, claims come at most once
per ``delivery.batch_window`` (``batch_wait``), each taking what arrived meanwhile.

Per message, the providers are tried in order: a recipient whose answer
moves it on (``relay.outbound.replies`` decides: the provider failed, asked to
back off, or cannot carry this message) is offered at once to the next one;
back-off applies only when every candidate has answered. A provider's reply
is also weighed with its replies to other transactions (``_lift``): the same
4xx to recipients of several domains speaks for the provider even when each
recipient was a transaction of its own (VERP). ``_deliver`` is a
short sequence of named steps; what happens to a recipient no provider
answered (wait for a limit, expire while waiting, skip for health) is decided
by the pure functions at the end of this module.

An outcome the spool cannot take (a full disk right after the provider's
250) is not dropped: it is kept (``relay.outbound.pending``) and written again
with back-off before anything else is claimed, and its recipients are left
out of the lease sweep meanwhile, so a recipient whose 250 this process has
seen is never sent again while it runs. A crash in that window falls under
the rule for every delivery in flight: the next start sends at most those
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple, Protocol

from relay.config import Config
from relay.enhanced_status import enhanced_status
from relay.errors import SpoolError, UnknownMessage
from relay.message import HeaderBlock, stream_of
from relay.metrics import Metrics
from relay.model import (
    AttemptStatus,
    Claim,
    ClaimedRecipient,
    Delivered,
    Outcome,
    PermFailure,
    ProviderPause,
    RecipientStatus,
    Scope,
    TempFailure,
    suppressed_for,
)
from relay.outbound.pending import PendingOutcomes, Refusal, Unrecorded
from relay.outbound.providers import Partial, Provider, ProviderSet, Unavailable
from relay.outbound.replies import AcrossTransactions, final, hard_bounce
from relay.outbound.retry import decide
from relay.outbound.routing import hold_rule_for
from relay.runner import GIVE_BACK_AFTER, LARGE_MESSAGE, give_back_memory
from relay.store.spool import ALL_PROVIDERS, Finish, OutboxEvent, Spool
from relay.store.suppressions import NewBounce, Threshold, normalize
from relay.verp import verp_address
from relay.wording import plural, when

__all__ = [
    "LimitWait",
    "OutcomeHook",
    "Scheduler",
    "Settled",
    "Snapshot",
    "Tried",
    "batch_wait",
    "expired_while_waiting",
    "fate",
    "health_skip",
    "limit_wait",
    "operator_pause",
]

log = logging.getLogger("sluice.scheduler")

NO_PROVIDER = TempFailure("", None, "4.4.0 no provider is available for this message")

#: at most this often held mail is checked against hold.expire_after, and ran-out
#: pauses forgotten (or every 5 polls, if that is sooner)
_CONTROLS_SWEEP_EVERY = 10.0
#: the name of the turn held by the node sweeping held mail and ended pauses (a fleet's one)
CONTROLS_TURN = "controls"
#: mail waiting for a pause without an end looks again this often (a resume wakes it)
_INDEFINITE_PAUSE_RECHECK = 300.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One consistent view of the configuration; a reload swaps the whole thing."""

    config: Config
    providers: ProviderSet


class OutcomeHook(Protocol):
    """Who hears of recorded outcomes (``relay.notify.hook.Notifications``; the daemon wires it).

    ``events`` gives the webhook events that ``Spool.finish`` stores in the
    transaction that records the outcomes; ``recorded`` runs once they are
    committed (DSNs). The scheduler knows nothing of either.
    """

    def events(self, claim: Claim, finishes: Sequence[Finish]) -> Sequence[OutboxEvent]: ...

    async def recorded(self, claim: Claim, finishes: Sequence[Finish], data: bytes) -> None: ...


class Scheduler:
    def __init__(
        self,
        spool: Spool,
        snapshot: Callable[[], Snapshot],
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
        outcome_hook: OutcomeHook | None = None,
    ) -> None:
        self._outcome_hook = outcome_hook
        self._metrics = metrics or Metrics()
        self._spool = spool
        self._snapshot = snapshot
        self._clock = clock
        self._rng = rng or random.Random()
        self._inflight: set[asyncio.Task[None]] = set()
        self.idle = asyncio.Event()
        #: operator pauses (``sluice providers pause``), re-read before every claim
        self._pauses: dict[str, ProviderPause] = {}
        self._controls_swept = -_CONTROLS_SWEEP_EVERY
        #: when the last claim that took mail was asked for (monotonic; ``batch_wait``)
        self._last_claim = -float("inf")
        #: outcomes seen but not yet written (a full disk); written again before claims
        self._unrecorded = PendingOutcomes(rng=self._rng)
        #: recent recipient 4xx replies per provider: the same one to several
        #: domains speaks for the provider across transactions (VERP)
        self._across = AcrossTransactions()

    @property
    def unrecorded(self) -> int:
        """How many attempts' outcomes wait in memory to be written to the spool."""
        return len(self._unrecorded)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set, then drain for ``delivery.shutdown_grace``."""
        last_lease_sweep = 0.0
        try:
            async with asyncio.TaskGroup() as tg:
                while not stop.is_set():
                    cfg = self._snapshot().config.delivery
                    await self._record_late()
                    now = time.monotonic()
                    if now - last_lease_sweep > min(60.0, cfg.lease / 4):
                        last_lease_sweep = now
                        await self._sweep_leases()
                    self._spool.wake.clear()
                    await self._operator_controls(now)
                    free = cfg.max_concurrent - len(self._inflight)
                    if self._unrecorded.full:
                        free = 0  # each delivery could add to what waits in memory
                    claims: list[Claim] = []
                    if free > 0:
                        asked = time.monotonic()
                        try:
                            claimed = await self._spool.claim(free, cfg.lease)
                        except SpoolError as exc:
                            log.error("cannot claim mail from the spool: %s", exc)
                        else:
                            claims, self._pauses = claimed.claims, claimed.pauses
                            if claims:
                                self._last_claim = asked
                    self._start_attempts(tg, claims)
                    if len(self._inflight) >= cfg.max_concurrent:
                        # Full: more may be due, so claim again when a slot frees.
                        await _wait_any(
                            stop,
                            asyncio.wait(set(self._inflight), return_when=asyncio.FIRST_COMPLETED),
                            within=self._unrecorded.next_in(time.monotonic()),
                        )
                        continue
                    if claims and len(claims) == free:
                        # Every slot asked for was filled, so more may be due; and
                        # deliveries that ended during the claim freed slots that
                        # no wake event will announce.
                        continue
                    if not self._inflight and not self._unrecorded:
                        self.idle.set()
                    retry = self._unrecorded.next_in(time.monotonic())
                    within = cfg.poll_interval if retry is None else min(cfg.poll_interval, retry)
                    await _wait_any(stop, self._spool.wake.wait(), within=within)
                    self.idle.clear()
                    wait = batch_wait(time.monotonic(), self._last_claim, cfg.batch_window)
                    if wait > 0:
                        await _wait_any(stop, asyncio.sleep(wait))
                await self._drain()
                await self._record_late(stopping=True)
        finally:
            self.idle.set()

    async def _sweep_leases(self) -> None:
        """Queue again what outlived its lease, but never a recipient whose outcome waits here.

        On a shared store, another node's expired leases too, once that node has
        been silent for ``spool.node_timeout`` (``Spool.requeue_expired_leases``).
        """
        timeout = self._snapshot().config.spool.node_timeout
        try:
            await self._spool.requeue_expired_leases(
                keep=self._unrecorded.recipient_ids(), node_timeout=timeout
            )
        except SpoolError as exc:
            log.error("cannot take back expired leases: %s", exc)

    async def _operator_controls(self, now: float) -> None:
        """Now and then, expire long-held mail and ended pauses.

        The pauses themselves are read by every claim, in its transaction
        (``Spool.claim``): another process (``sluice providers pause``) may
        have set one, and mail claimed after the pause must not go out.
        In a fleet, one node sweeps at a time (the ``controls`` turn, asked
        for each sweep and never waited for): a node that finds it taken
        leaves this sweep to the one holding it.
        """
        try:
            poll = self._snapshot().config.delivery.poll_interval
            if now - self._controls_swept >= min(_CONTROLS_SWEEP_EVERY, 5 * poll):
                self._controls_swept = now
                async with self._spool.singleton(CONTROLS_TURN) as turn:
                    if turn:
                        await self._sweep_controls()
        except SpoolError as exc:
            log.error("cannot read operator controls from the spool: %s", exc)

    async def _sweep_controls(self) -> None:
        for provider in await self._spool.end_expired_pauses():
            log.info("provider %s: the operator's pause ran out; resuming", provider)
        expire_after = self._snapshot().config.hold.expire_after
        if expire_after is not None and (n := await self._spool.expire_held(expire_after)):
            log.warning("%s held longer than hold.expire_after", plural(n, "recipient"))

    def _paused(self, provider_id: str) -> Unavailable | None:
        """An operator's pause of this provider (or of all), as a wait without an attempt."""
        now = self._clock()
        for key in (provider_id, ALL_PROVIDERS):
            pause = self._pauses.get(key)
            if pause is not None and pause.active(now):
                return operator_pause(provider_id, pause, now=now)
        return None

    def _start_attempts(self, tg: asyncio.TaskGroup, claims: list[Claim]) -> None:
        """One delivery task per claim.

        Not a loop in ``run``: its variable would keep the last claim, body
        included (25 MB for a large message), for as long as no other mail is
        claimed. ``run`` keeps ``claims`` until its next turn (up to a poll
        interval), so a large body is taken out of it once its task has it;
        the heap's free pages are given back after that task.
        """
        for i, claim in enumerate(claims):
            task = tg.create_task(self._attempt(claim), name=f"deliver-{claim.queue_id}")
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            if claim.data is not None and len(claim.data) >= LARGE_MESSAGE:
                task.add_done_callback(self._give_back_later)
                claims[i] = replace(claim, data=None)  # the task has it; ``run``'s list need not

    @staticmethod
    def _give_back_later(_task: asyncio.Task[None]) -> None:
        asyncio.get_running_loop().call_later(GIVE_BACK_AFTER, give_back_memory)

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
        except SpoolError as exc:
            # Not a crash, and no traceback: the spool refused a write (a full
            # disk). Outcomes known by then are never lost here: ``_record``
            # keeps those it cannot write, and a recorded row is left alone by
            # the release (guarded). The rest was not sent, so giving it back
            # sends nothing twice; if the release fails too, the lease sweep
            # takes it back.
            log.error("%s: cannot write to the spool: %s; releasing for retry", claim.queue_id, exc)
            with contextlib.suppress(SpoolError):
                await self._spool.release(
                    claim,
                    reply="4.3.0 spool write failed during delivery; will retry",
                    next_attempt_at=self._clock() + 60,
                )
        except Exception:
            log.exception("%s: delivery crashed; releasing for retry", claim.queue_id)
            with contextlib.suppress(SpoolError):
                await self._spool.release(
                    claim,
                    reply="4.3.0 internal error during delivery; will retry",
                    next_attempt_at=self._clock() + 60,
                )

    async def _deliver(self, claim: Claim) -> None:
        """One attempt for a claimed message, in four steps.

        Read the body; offer each recipient to the providers of its route in
        turn; settle each recipient (pure ``fate``); then give back those
        that only wait for a limit, and record the others.
        """
        snap = self._snapshot()
        data = await self._body(claim)
        if data is None:
            return  # deleted while claimed; nothing to do
        head = HeaderBlock(data)  # found once per attempt; routing and rewrites read it
        claim = await self._hold_by_rules(claim, head, snap)
        if not claim.recipients:
            return
        claim = await self._skip_suppressed(claim, head, snap)
        if not claim.recipients:
            return
        tried = await self._offer(claim, data, head, snap)
        now = self._clock()
        give_up = snap.config.retry.give_up_after
        fates = {
            rid: fate(
                rcpt,
                tried.answers.get(rid, []),
                tried.waits.get(rid, []),
                give_up_after=give_up,
                now=now,
            )
            for rid, rcpt in claim.recipients.items()
        }
        await self._wait_for_limits(
            claim, {r: f for r, f in fates.items() if isinstance(f, LimitWait)}
        )
        settled = {r: f for r, f in fates.items() if isinstance(f, Settled)}
        finishes = await self._record(claim, settled, snap)
        await self._after_recorded(claim, finishes, data)

    async def _body(self, claim: Claim) -> bytes | None:
        if claim.data is not None:
            return claim.data
        try:
            return await self._spool.body(claim.message_id)
        except UnknownMessage:
            return None

    async def _hold_by_rules(self, claim: Claim, head: HeaderBlock, snap: Snapshot) -> Claim:
        """Put new recipients that a ``hold.rules`` rule matches on hold; the rest go on.

        Evaluated here, at the first claim, rather than in the listener: one
        place sees mail from every way in (the daemon, accept workers,
        ``sluice sendmail``), and a reload applies to mail not tried yet, as
        routing does. A recipient released once, rerouted, or tried before is
        never held again by a rule.
        """
        rules = snap.config.hold.rules
        if not rules:
            return claim
        held: dict[int, str] = {}
        for rid, rcpt in claim.recipients.items():
            if rcpt.attempts or rcpt.was_held or rcpt.route_override:
                continue
            rule = hold_rule_for(snap.config, claim.sender, rcpt.address, head)
            if rule is not None:
                held[rid] = "held by hold.rules" + (f": {rule.reason}" if rule.reason else "")
        if not held:
            return claim
        for reason in set(held.values()):
            await self._spool.hold_claimed(
                claim,
                [rid for rid, r in held.items() if r == reason],
                reason,
                endpoints=snap.config.notify.webhooks,
            )
        for rid, reason in held.items():
            log.info(
                "%s: to=<%s> %s",
                claim.queue_id,
                claim.recipients[rid].address,
                reason,
                extra={"event": "held", "queue_id": claim.queue_id},
            )
        rest = {r: c for r, c in claim.recipients.items() if r not in held}
        return replace(claim, recipients=rest, attempt_ids={r: claim.attempt_ids[r] for r in rest})

    async def _skip_suppressed(self, claim: Claim, head: HeaderBlock, snap: Snapshot) -> Claim:
        """Finish recipients on the suppression list as ``suppressed``; the claim without them.

        The list is read at every attempt, by the claim that starts it (an
        entry added while mail waits applies to it), for the message's stream
        and for every stream.
        """
        stream = stream_of(head, snap.config.suppression.stream_headers)
        found = suppressed_for(claim.suppressions, stream)
        if not found:
            return claim
        skipped = {
            rid: found[normalize(r.address)]
            for rid, r in claim.recipients.items()
            if normalize(r.address) in found
        }
        finishes = []
        for rid, entry in skipped.items():
            scope = f" for {entry.scope}" if entry.scope else ""
            reply = f"5.7.1 suppressed{scope} ({entry.source}): {entry.reason}"
            finishes.append(
                Finish(
                    recipient_id=rid,
                    attempt_id=claim.attempt_ids[rid],
                    status=RecipientStatus.SUPPRESSED,
                    attempt_status=AttemptStatus.SUPPRESSED,
                    next_attempt_at=None,
                    code=None,
                    reply=reply,
                    provider=None,
                )
            )
            log.info(
                "%s: to=<%s> status=suppressed reply=%s",
                claim.queue_id,
                claim.recipients[rid].address,
                reply,
                extra={"event": "outcome", "queue_id": claim.queue_id},
            )
            self._metrics.suppressed.labels(entry.source).inc()
        events = self._outcome_hook.events(claim, finishes) if self._outcome_hook else ()
        await self._spool.finish(finishes, events)
        return replace(
            claim,
            recipients={r: c for r, c in claim.recipients.items() if r not in skipped},
            attempt_ids={r: a for r, a in claim.attempt_ids.items() if r not in skipped},
        )

    async def _offer(self, claim: Claim, data: bytes, head: HeaderBlock, snap: Snapshot) -> Tried:
        """Offer each recipient to the providers of its route, in order.

        Routing is resolved now, from the current config, for each recipient. A
        recipient moves to the next provider only when the answer says so
        (``Outcome.moves_on``: the provider failed, asked to back off, or cannot
        carry this message); a provider that may not be used now (limits,
        cool-down) is skipped without an attempt and noted in ``waits``.
        """
        tried = Tried()
        bounces = snap.config.bounces
        verp_key = await self._spool.suppressions.verp_key() if bounces.verp else b""
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
                answered: list[tuple[int, Outcome]] = []
                for group, envelope in _return_paths(
                    rids, claim.queue_id, provider.settings.bounce_address or bounces.address,
                    verp=bounces.verp, key=verp_key,
                ):  # fmt: skip
                    started = time.monotonic()
                    got = self._paused(provider.id) or await provider.deliver(
                        claim.sender,
                        [pending[r] for r in group],
                        data,
                        crlf_only=claim.crlf_only,
                        head=head,
                        envelope_sender=envelope,
                        queue_id=claim.queue_id,
                    )
                    if isinstance(got, Unavailable):
                        for rid in group:  # skipped (limits, cool-down): not an attempt
                            tried.waits.setdefault(rid, []).append(got)
                        continue
                    if isinstance(got, Partial):  # a limit admitted only the first ones
                        for rid in group[len(got.outcomes) :]:
                            tried.waits.setdefault(rid, []).append(got.rest)
                        group, got = group[: len(got.outcomes)], got.outcomes
                    self._metrics.delivery_seconds.labels(provider.id).observe(
                        time.monotonic() - started
                    )
                    self._across.note(provider.id, got, self._clock())
                    answered.extend(zip(group, got, strict=True))
                    answered = await self._lift(provider, answered, claim.queue_id)
                answered = await self._lift(provider, answered, claim.queue_id)
                for rid, outcome in answered:
                    tried.answers.setdefault(rid, []).append((provider.id, outcome))
                    if not outcome.moves_on:
                        del pending[rid]
                    elif len(route) > 1:
                        log.info(
                            "%s: to=<%s> provider=%s did not take it: %s",
                            claim.queue_id,
                            pending[rid],
                            provider.id,
                            outcome.text,
                            extra={"event": "failover", "queue_id": claim.queue_id},
                        )
                if not pending:
                    break
        return tried

    async def _lift(
        self, provider: Provider, answered: list[tuple[int, Outcome]], queue_id: str
    ) -> list[tuple[int, Outcome]]:
        """Recipient 4xx replies that, across transactions, speak for the provider.

        The rule "the same 4xx to every recipient of a transaction" cannot
        fire when each recipient is a transaction of its own (VERP); the same
        reply to recipients of distinct domains (``AcrossTransactions``) does
        what it would: the recipients move on to the next provider of the
        route, and the provider is paused (as its health would pause it for
        the reply within one transaction), so the rest of this claim and
        later claims skip it. Called after each transaction, and once more
        when the provider is done (another claim may have tipped it meanwhile).
        """
        answered, lifted = self._across.lift(provider.id, answered, self._clock())
        if lifted:
            log.warning(
                "%s: provider %s gave the same reply to recipients of several domains;"
                " it speaks for the provider: %s",
                queue_id,
                provider.id,
                lifted[0].text,
                extra={"event": "failover", "queue_id": queue_id},
            )
            await provider.spoke_for_itself(lifted)
        return answered

    async def _wait_for_limits(self, claim: Claim, waits: dict[int, LimitWait]) -> None:
        """Give back, without counting an attempt, recipients that wait for a limit.

        A release the spool refuses is logged, not raised: the outcomes of the
        same attempt's other recipients (a 250 among them) are still to be
        recorded. These were not sent; the lease sweep takes them back.
        """
        groups: dict[LimitWait, list[int]] = {}
        for rid, wait in waits.items():
            groups.setdefault(wait, []).append(rid)
        for wait, rids in groups.items():
            try:
                await self._spool.release(
                    replace(
                        claim,
                        recipients={r: claim.recipients[r] for r in rids},
                        attempt_ids={r: claim.attempt_ids[r] for r in rids},
                    ),
                    reply=wait.reason,
                    next_attempt_at=wait.until,
                )
            except SpoolError as exc:
                log.error(
                    "%s: cannot give back %s waiting for a limit: %s; the lease sweep will",
                    claim.queue_id,
                    plural(len(rids), "recipient"),
                    exc,
                )
                continue
            for rid in rids:
                log.info(
                    "%s: to=<%s> waits until %s: %s",
                    claim.queue_id,
                    claim.recipients[rid].address,
                    when(wait.until),
                    wait.reason,
                )

    async def _record(
        self, claim: Claim, settled: dict[int, Settled], snap: Snapshot
    ) -> list[Finish]:
        """Decide each settled recipient's next state (``retry.decide``) and persist it."""
        if not settled:
            return []
        now = self._clock()
        finishes = []
        for rid, (outcome, provider_id) in settled.items():
            rcpt = claim.recipients[rid]
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
                    attempt_status=decision.attempt_status,
                    next_attempt_at=decision.next_attempt_at,
                    code=outcome.code,
                    reply=reply,
                    provider=provider_id,
                )
            )
            _log_outcome(claim, rcpt.address, outcome, decision.status, provider_id)
            self._metrics.deliveries.labels(provider_id or "-", decision.status.value).inc()
        events = self._outcome_hook.events(claim, finishes) if self._outcome_hook else ()
        refusals = [
            Refusal(rid, outcome, provider_id)
            for rid, (outcome, provider_id) in settled.items()
            if hard_bounce(outcome)
        ]
        try:
            await self._spool.finish(finishes, events)
        except SpoolError as exc:
            self._keep_unrecorded(claim, finishes, events, refusals, exc)
            return []
        await self._count_refusals(claim, refusals, snap)
        return finishes

    def _keep_unrecorded(
        self,
        claim: Claim,
        finishes: list[Finish],
        events: Sequence[OutboxEvent],
        refusals: list[Refusal],
        exc: SpoolError,
    ) -> None:
        """Hold outcomes the spool refused, to write them again; one line, no traceback."""
        self._unrecorded.keep(
            claim, finishes, events, refusals, error=str(exc), now=time.monotonic()
        )
        self._metrics.outcomes_unrecorded.set(len(self._unrecorded))
        log.error(
            "%s: the outcome of %s cannot be recorded: %s; kept in memory and written again"
            " shortly; meanwhile none of them is tried again",
            claim.queue_id,
            plural(len(finishes), "recipient"),
            exc,
            extra={"event": "outcome_unrecorded", "queue_id": claim.queue_id},
        )

    async def _record_late(self, *, stopping: bool = False) -> None:
        """Write the kept outcomes that are due (all of them when ``stopping``).

        Runs in the scheduler's loop before each claim, so a kept recipient's
        outcome is in the spool before anything could claim it again. Never
        raises: a failure waits longer (``PendingOutcomes.failed_again``).
        """
        now = time.monotonic()
        items = list(self._unrecorded) if stopping else self._unrecorded.due(now)
        for item in items:
            try:
                await self._spool.finish(item.finishes, item.events)
            except SpoolError as exc:
                self._unrecorded.failed_again(item, str(exc), now=time.monotonic())
                continue
            self._unrecorded.recorded(item)
            self._metrics.outcomes_unrecorded.set(len(self._unrecorded))
            log.warning(
                "%s: the outcome of %s was recorded late, after %.1fs and %s",
                item.claim.queue_id,
                plural(len(item.finishes), "recipient"),
                time.monotonic() - item.since,
                plural(item.failures, "failed write"),
                extra={"event": "outcome_recorded_late", "queue_id": item.claim.queue_id},
            )
            await self._after_late(item)
        if stopping and self._unrecorded:
            last = list(self._unrecorded)[-1]
            log.error(
                "stopping with %s not recorded (%s); the next start sends them again",
                plural(sum(len(i.finishes) for i in self._unrecorded), "recipient outcome"),
                last.error,
            )

    async def _after_late(self, item: Unrecorded) -> None:
        """What follows a recording (refusals counted, the outcome hook), done late."""
        claim = item.claim
        try:
            await self._count_refusals(claim, item.refusals, self._snapshot())
            data = await self._body(claim)
        except SpoolError as exc:
            log.error("%s: after its late outcome: %s", claim.queue_id, exc)
            return
        except Exception:
            # Never raised into the scheduler's loop, which must go on.
            log.exception("%s: after its late outcome", claim.queue_id)
            return
        if data is not None:
            await self._after_recorded(claim, list(item.finishes), data)

    async def _count_refusals(
        self, claim: Claim, refusals: Sequence[Refusal], snap: Snapshot
    ) -> None:
        """A provider's refusal of the address itself counts as a hard bounce (if configured)."""
        if snap.config.bounces.count_smtp_refusals:
            for r in refusals:
                await self._smtp_bounce(claim, r.recipient_id, r.outcome, r.provider, snap)

    async def _smtp_bounce(
        self, claim: Claim, rid: int, outcome: Outcome, provider: str | None, snap: Snapshot
    ) -> None:
        """A provider's refusal of the address itself counts as a hard bounce."""
        address = claim.recipients[rid].address
        entry = await self._spool.suppressions.record_bounce(
            NewBounce(
                address=address,
                kind="hard",
                source="smtp",
                status=enhanced_status(outcome.text),
                diagnostic=f"{provider or '-'}: {outcome.text}",
                queue_id=claim.queue_id,
                recipient_id=rid,
                key=f"smtp:{claim.attempt_ids[rid]}",
            ),
            Threshold.of(snap.config.bounces),
            endpoints=snap.config.notify.webhooks,
        )
        self._metrics.bounces.labels("hard", "smtp").inc()
        if entry is not None:
            self._metrics.suppressions_added.labels(entry.source).inc()
            log.warning(
                "%s: <%s> is now suppressed%s: %s",
                claim.queue_id,
                address,
                f" for stream {entry.scope}" if entry.scope else "",
                entry.reason,
                extra={"event": "suppressed", "queue_id": claim.queue_id},
            )

    async def _after_recorded(self, claim: Claim, finishes: list[Finish], data: bytes) -> None:
        """The outcome hook, once outcomes are committed; its failure never undoes them."""
        if self._outcome_hook is None or not finishes:
            return
        try:
            await self._outcome_hook.recorded(claim, finishes, data)
        except SpoolError as exc:
            log.error("%s: notifications not stored: %s", claim.queue_id, exc)
        except Exception:
            # Not re-raised: ``_attempt`` would "release" recipients already recorded.
            log.exception("%s: notifications failed", claim.queue_id)


# ------------------------------------------------------------ pure policy steps


@dataclass
class Tried:
    """What one attempt's offers gave, per recipient row id."""

    #: (provider id, outcome), in the order the providers answered
    answers: dict[int, list[tuple[str, Outcome]]] = field(default_factory=dict)
    #: providers of the recipient's route that were skipped, and why
    waits: dict[int, list[Unavailable]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LimitWait:
    """The recipient waits for a limit to reopen, without counting an attempt."""

    until: float
    reason: str


class Settled(NamedTuple):
    """The recipient's outcome for this attempt, and the provider that gave it."""

    outcome: Outcome
    provider: str | None


def _return_paths(
    rids: list[int], queue_id: str, bounce_address: str | None, *, verp: bool, key: bytes
) -> list[tuple[list[int], str | None]]:
    """The envelope sender of each transaction: the app's own (None), the bounce
    address, or, with VERP, one return path (and so one transaction) per recipient,
    signed with the spool's ``key`` (``relay.verp``)."""
    if bounce_address and verp:
        return [([rid], verp_address(bounce_address, queue_id, rid, key)) for rid in rids]
    return [(rids, bounce_address)]


def _reasons(waits: Sequence[Unavailable]) -> str:
    return "; ".join(dict.fromkeys(w.reason for w in waits))


def limit_wait(waits: Sequence[Unavailable]) -> LimitWait | None:
    """When every provider skipped was at its daily limit or rate: wait for the first to reopen."""
    if not waits or not all(w.limit for w in waits):
        return None
    return LimitWait(min(w.until for w in waits), f"4.7.0 waiting: {_reasons(waits)}")


def operator_pause(provider_id: str, pause: ProviderPause, *, now: float) -> Unavailable:
    """A provider paused by an operator is skipped like one at its limit: no attempt counts."""
    if pause.until is None:
        until, end = now + _INDEFINITE_PAUSE_RECHECK, "until resumed"
    else:
        until = pause.until
        end = f"until {when(pause.until)}"
    reason = f": {pause.reason}" if pause.reason else ""
    return Unavailable(
        provider_id, f"{provider_id}: paused by operator{reason} {end}", until, limit=True
    )


def batch_wait(now: float, last_claim: float, window: float) -> float:
    """How long woken mail waits to be claimed with what follows it (``delivery.batch_window``).

    Mail that arrives within ``window`` of the last claim waits for the
    window's end, so that one claim (one spool transaction) and the
    deliveries it starts take every message that came meanwhile: under a
    steady stream, the scheduler claims at most once per window instead of
    once per message, and the outcomes of deliveries that started together
    commit together. Mail after a quiet spell (``window`` or more since the
    last claim that took mail) is claimed at once. PostgreSQL's
    ``commit_delay`` and a NIC's interrupt coalescing make the same trade: a
    bounded wait, only under load, for far fewer fixed costs.
    """
    return max(0.0, window - (now - last_claim))


def expired_while_waiting(since: float, *, give_up_after: float, now: float) -> bool:
    """A recipient past ``retry.give_up_after`` expires even while it waits for a limit."""
    return since + give_up_after <= now


def health_skip(address: str, waits: Sequence[Unavailable], *, now: float) -> Settled:
    """Every provider was skipped for health (cool-down, a pause), or some for a limit.

    The retry back-off applies, as if the provider had failed again, honouring
    the end of the shortest pause.
    """
    first = min(waits, key=lambda w: w.until)
    outcome = TempFailure(
        address,
        None,
        f"4.4.0 no provider available now: {_reasons(waits)}",
        retry_after=max(0.0, first.until - now),
        scope=Scope.PROVIDER,
    )
    return Settled(outcome, first.provider)


def fate(
    rcpt: ClaimedRecipient,
    answers: Sequence[tuple[str, Outcome]],
    waits: Sequence[Unavailable],
    *,
    give_up_after: float,
    now: float,
) -> LimitWait | Settled:
    """What becomes of one recipient after the providers of its route were offered it."""
    if answers:
        waiting = _reasons(waits) if waits else None
        wait = max(0.0, min(w.until for w in waits) - now) if waits else 0.0
        return Settled(final(answers, waiting=waiting, wait=wait), answers[-1][0])
    if (limited := limit_wait(waits)) is not None:
        if expired_while_waiting(rcpt.since, give_up_after=give_up_after, now=now):
            return Settled(TempFailure(rcpt.address, None, f"4.7.0 {_reasons(waits)}"), None)
        return limited
    if waits:
        return health_skip(rcpt.address, waits, now=now)
    return Settled(replace(NO_PROVIDER, recipient=rcpt.address), None)


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
