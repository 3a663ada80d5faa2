"""The scheduler's outcome hook: webhook events with each outcome, then DSNs.

``Notifications.events`` is called *before* ``Spool.finish`` and returns the
outbox rows that ``finish`` writes in the same transaction as the outcomes,
so an outcome is never recorded without its events (nor the reverse).
``Notifications.recorded`` runs *after* it: it enqueues the DSN for
recipients that failed or expired (and a delay warning for those that have
waited ``notify.delay_warning_after``), and reports provider state changes.

A DSN is enqueued in its own transaction right after the outcome: a crash
between the two loses that DSN, never the outcome (the marks in ``dsn_sent``
are written with the DSN, so a DSN is never sent twice).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from relay.config import Config
from relay.events import OUTCOME_EVENTS, EventType, event_body
from relay.message import HeaderBlock
from relay.model import Claim, RecipientStatus
from relay.notify.dsn import DsnKind, DsnRecipient, build_dsn, dsn_refusal
from relay.store.spool import (
    DsnVerdict,
    Finish,
    NewMessage,
    OutboxEvent,
    Spool,
    stored_under_fresh_id,
)

__all__ = ["Notifications"]

log = logging.getLogger("sluice.notify")

_GIVEN_UP = frozenset({RecipientStatus.FAILED, RecipientStatus.EXPIRED})
#: the event each recorded recipient state makes
_EVENT_OF = {event.recipient_status: event for event in OUTCOME_EVENTS}


class Notifications:
    """What the scheduler calls around recording outcomes (``OutcomeHook``).

    Args:
        spool: where events and DSNs are stored.
        config: the current configuration (a reload swaps it).
        hostname: this relay's name (Reporting-MTA, MAILER-DAEMON's domain).
        provider_states: provider id -> health state now ("ok", "cooldown", ...).
        clock: wall-clock seconds.
    """

    def __init__(
        self,
        spool: Spool,
        config: Callable[[], Config],
        *,
        hostname: str,
        provider_states: Callable[[], Awaitable[dict[str, str]]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._spool = spool
        self._config = config
        self._hostname = hostname
        self._provider_states = provider_states
        self._clock = clock
        self._last_states: dict[str, str] | None = None

    # ------------------------------------------------------------ webhooks

    def events(self, claim: Claim, finishes: Sequence[Finish]) -> list[OutboxEvent]:
        """Outbox rows for the outcomes about to be recorded, one per endpoint that wants each."""
        hooks = self._config().notify.webhooks
        if not hooks:
            return []
        now = self._clock()
        out: list[OutboxEvent] = []
        for f in finishes:
            kind = _EVENT_OF.get(f.status)
            if kind is None:
                continue
            rcpt = claim.recipients[f.recipient_id]
            # One outcome, one ID: the delivery-log row it closes.
            event_id = f"{claim.queue_id}.{f.attempt_id}"
            data: dict[str, Any] = {
                "queue_id": claim.queue_id,
                "sender": claim.sender,
                "subject": claim.subject,
                "recipient": rcpt.address,
                "status": f.status.value,
                "provider": f.provider,
                "code": f.code,
                "reply": f.reply,
                "attempts": rcpt.attempts + 1,
                "next_attempt_at": f.next_attempt_at,
                "received_at": claim.received_at,
            }
            body = event_body(event_id, kind, now, data)
            out.extend(
                OutboxEvent(h.url, event_id, kind.value, claim.queue_id, body, now)
                for h in hooks
                if kind in h.events
            )
        return out

    async def provider_changes(self) -> None:
        """Store a ``provider_state`` event for each provider whose health changed."""
        if self._provider_states is None:
            return
        states = await self._provider_states()
        before, self._last_states = self._last_states, states
        hooks = [h for h in self._config().notify.webhooks if EventType.PROVIDER_STATE in h.events]
        if before is None or not hooks:
            return  # the first look is the baseline: nothing changed yet
        now = self._clock()
        events: list[OutboxEvent] = []
        for pid, state in sorted(states.items()):
            if before.get(pid, state) == state:
                continue
            event_id = f"provider.{pid}.{int(now * 1000)}"
            data = {"provider": pid, "state": state, "previous": before[pid]}
            body = event_body(event_id, EventType.PROVIDER_STATE, now, data)
            events.extend(
                OutboxEvent(h.url, event_id, EventType.PROVIDER_STATE.value, "", body, now)
                for h in hooks
            )
            log.info("provider %s: %s -> %s", pid, before[pid], state)
        await self._spool.add_events(events)

    # ---------------------------------------------------------------- DSNs

    async def recorded(self, claim: Claim, finishes: Sequence[Finish], data: bytes) -> None:
        """After the outcomes are committed: DSNs, then provider state changes."""
        cfg = self._config()
        now = self._clock()
        # An archive copy is the operator's, not the sender's: like Postfix's
        # always_bcc (added with NOTIFY=NONE), its failure makes no DSN.
        rcpts = claim.recipients
        mine = [
            f for f in finishes if not (f.recipient_id in rcpts and rcpts[f.recipient_id].archive)
        ]
        failed = [f for f in mine if f.status in _GIVEN_UP]
        warn_after = cfg.notify.delay_warning_after
        delayed = [
            f
            for f in mine
            if f.status is RecipientStatus.DEFERRED
            and warn_after is not None
            and now - claim.recipients[f.recipient_id].since >= warn_after
        ]
        if failed or delayed:
            refusal = dsn_refusal(
                claim.sender,
                HeaderBlock(data),
                enabled=cfg.notify.dsn,
                domains=cfg.notify.dsn_domains,
                no_domains=cfg.notify.no_dsn_domains,
            )
            if refusal is not None:
                log.debug("%s: no DSN: %s", claim.queue_id, refusal)
            else:
                for kind, group in ((DsnKind.FAILED, failed), (DsnKind.DELAYED, delayed)):
                    if group:
                        await self._dsn(kind, claim, group, data, cfg, now)
        await self.provider_changes()

    async def _dsn(
        self,
        kind: DsnKind,
        claim: Claim,
        group: Sequence[Finish],
        data: bytes,
        cfg: Config,
        now: float,
    ) -> None:
        give_up = cfg.retry.give_up_after
        recipients = [
            DsnRecipient(
                address=claim.recipients[f.recipient_id].address,
                action="failed" if kind is DsnKind.FAILED else "delayed",
                code=f.code,
                reply=f.reply,
                last_attempt_at=now,
                retry_until=(
                    claim.recipients[f.recipient_id].since + give_up
                    if kind is DsnKind.DELAYED
                    else None
                ),
            )
            for f in group
        ]

        def make(dsn_queue_id: str) -> NewMessage:
            body = build_dsn(
                kind=kind,
                original=data,
                sender=claim.sender,
                recipients=recipients,
                hostname=self._hostname,
                queue_id=claim.queue_id,
                dsn_queue_id=dsn_queue_id,
                arrival=claim.received_at,
                now=now,
            )
            return NewMessage(
                queue_id=dsn_queue_id,
                sender="",  # RFC 5321 § 4.5.5: notifications go from the null reverse-path
                recipients=[claim.sender],
                data=body,
                subject=HeaderBlock(body).value("subject") or "",
                received_at=now,
                client="sluice (DSN)",
                helo=self._hostname,
                crlf_only=True,
            )

        def store(msg: NewMessage) -> Awaitable[DsnVerdict]:
            return self._spool.enqueue_dsn(
                msg,
                recipient_ids=[f.recipient_id for f in group],
                kind=kind.value,
                sender=claim.sender.lower(),
                per_hour=cfg.notify.dsn_per_hour,
            )

        msg, verdict = await stored_under_fresh_id(make, store, now)
        if verdict is DsnVerdict.QUEUED:
            log.info(
                "%s: %s DSN to <%s> queued as %s",
                claim.queue_id,
                kind.value,
                claim.sender,
                msg.queue_id,
                extra={"event": "dsn", "queue_id": claim.queue_id},
            )
        elif verdict is DsnVerdict.RATE_LIMITED:
            log.warning(
                "%s: no %s DSN to <%s>: more than notify.dsn_per_hour=%d this hour",
                claim.queue_id,
                kind.value,
                claim.sender,
                cfg.notify.dsn_per_hour,
                extra={"event": "dsn", "queue_id": claim.queue_id},
            )
