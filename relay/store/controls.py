"""Operator controls: selections, hold/release/reroute, pauses, hold expiry, and the audit log.

Every action here writes its audit row in the same transaction as the change
it records, and the webhook events it makes (``held``, ``released``) too:
neither is ever stored without the other. The functions are writer jobs (of
the writer's ``sqlite3.Connection``); the ``Spool`` facade submits them and
sets its wake events.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from relay.events import Affected, Endpoint, EventType, OutboxEvent, control_events
from relay.model import Claim, RecipientStatus, Selection
from relay.store.db import Conn, Reader
from relay.store.outbox import insert_events
from relay.store.sql import QUERIES, like_escape
from relay.wording import when

__all__ = [
    "ALL_PROVIDERS",
    "Control",
    "Selected",
    "audit",
    "control",
    "count_selected",
    "end_expired_pauses",
    "expire_held",
    "hold_claimed",
    "pause_provider",
    "resume_provider",
    "selection_params",
]

#: the provider id of a pause of every provider
ALL_PROVIDERS = "*"

#: the webhook event each operator action makes (a reroute makes none: the
#: attempt it leads to reports itself)
_CONTROL_EVENT = {"hold": EventType.HELD, "release": EventType.RELEASED}

#: the states each operator action applies to (a hold takes only what waits)
_ALLOWED = {
    "hold": (RecipientStatus.QUEUED, RecipientStatus.DEFERRED),
    "release": (RecipientStatus.HELD,),
    "reroute": (
        RecipientStatus.QUEUED,
        RecipientStatus.DEFERRED,
        RecipientStatus.HELD,
        RecipientStatus.FAILED,
        RecipientStatus.EXPIRED,
    ),
}


@dataclass(frozen=True, slots=True)
class Selected:
    """How many recipients (of how many messages) an action affects."""

    recipients: int
    messages: int


@dataclass(frozen=True, slots=True)
class Control:
    """An operator action on a selection: who does it, and the action's own settings."""

    #: "hold", "release" or "reroute"
    action: str
    #: admin user name, "api", "cli:$USER"
    actor: str
    #: hold: why (shown as the recipients' reason)
    reason: str = ""
    #: reroute: the provider for the next attempt
    provider: str | None = None
    #: release: whether the time held counts toward retry.give_up_after
    age_while_held: bool = False


def selection_params(selection: Selection, action: str, now: float) -> dict[str, Any]:
    """Bound parameters of the ``selected_recipients`` query for ``action``.

    Raises:
        ValueError: the selection is empty (nothing chosen, not ``everything``).
    """
    if selection.empty:
        raise ValueError("choose queue IDs or a filter (or everything)")
    allowed = _ALLOWED.get(action)
    if allowed is None:
        raise ValueError(f"unknown action {action!r}")
    return {
        "allowed": json.dumps([s.value for s in allowed]),
        "queue_ids": json.dumps(list(selection.queue_ids)) if selection.queue_ids else None,
        "sender": selection.sender or None,
        "domain": like_escape(selection.recipient_domain.lower().strip().rstrip("."))
        if selection.recipient_domain
        else None,
        "provider": selection.provider or None,
        # stored as relay.message.stream_of has it (lower case): the query
        # compares without regard to case, as people type it
        "stream": selection.stream or None,
        "received_before": None if selection.older_than is None else now - selection.older_than,
        "statuses": json.dumps([s.value for s in selection.statuses])
        if selection.statuses
        else None,
    }


def audit(
    c: Conn,
    now: float,
    actor: str,
    action: str,
    target: str,
    count: int,
    detail: str,
) -> None:
    """One row of the audit log, in the caller's transaction."""
    c.execute(
        QUERIES["audit_insert"],
        {
            "now": now,
            "actor": actor,
            "action": action,
            "target": target,
            "count": count,
            "detail": detail,
        },
    )


async def count_selected(reader: Reader, selection: Selection, action: str, now: float) -> Selected:
    """How many recipients ``action`` would affect now (the confirmation step)."""
    params = selection_params(selection, action, now)
    rows = list(await reader.execute_fetchall(QUERIES["selected_recipients"], params))
    return Selected(len(rows), len({r["message_id"] for r in rows}))


def _selected_ids(c: Conn, params: dict[str, Any]) -> str:
    """The selection's recipient ids now, as the JSON array the actions take (``:ids``)."""
    return json.dumps([r["id"] for r in c.execute(QUERIES["selected_recipients"], params)])


def control(
    now: float, selection: Selection, ctl: Control, endpoints: Sequence[Endpoint]
) -> Callable[[Conn], tuple[int, bool]]:
    """The writer job that holds, releases or reroutes the selection, audited.

    The job returns how many recipients changed and whether it stored
    events. The request is checked here, before any hop to the writer.

    Raises:
        ValueError: an empty selection, an unknown action, a reroute without a provider.
    """
    params = selection_params(selection, ctl.action, now)
    params["now"] = now
    if ctl.action == "hold":
        query = "hold_selected"
        params["reply"] = f"held by {ctl.actor}" + (f": {ctl.reason}" if ctl.reason else "")
    elif ctl.action == "release":
        query = "release_selected"
        params["reply"] = f"released by {ctl.actor}"
        params["age_while_held"] = ctl.age_while_held
    elif ctl.action == "reroute":
        if not ctl.provider:
            raise ValueError("reroute needs a provider")
        query = "reroute_selected"
        params["via"] = ctl.provider
    else:
        raise ValueError(f"unknown action {ctl.action!r}")
    sql = QUERIES[query]
    detail = f"via {ctl.provider}" if ctl.action == "reroute" else ctl.reason
    kind = _CONTROL_EVENT.get(ctl.action)
    status = RecipientStatus.HELD if ctl.action == "hold" else RecipientStatus.QUEUED

    def job(c: Conn) -> tuple[int, bool]:
        changed = c.execute(sql, params | {"ids": _selected_ids(c, params)}).fetchall()
        audit(c, now, ctl.actor, ctl.action, selection.describe(), len(changed), detail)
        events: list[OutboxEvent] = []
        if kind is not None and endpoints:
            events = control_events(
                endpoints,
                kind,
                (Affected(r["id"], r["queue_id"], r["rcpt"]) for r in changed),
                status=status.value,
                reason=str(params["reply"]),
                actor=ctl.actor,
                now=now,
            )
            insert_events(c, events)
        return len(changed), bool(events)

    return job


def hold_claimed(
    c: Conn,
    now: float,
    claim: Claim,
    ids: Sequence[int],
    reason: str,
    actor: str,
    endpoints: Sequence[Endpoint],
) -> tuple[int, bool]:
    """Put claimed recipients on hold, dropping their attempts' log rows; (held, evented)."""
    held: list[Affected] = []
    for rid in ids:
        row = c.execute(
            QUERIES["hold_claimed"], {"id": rid, "now": now, "reply": reason}
        ).fetchone()
        if row is not None:
            held.append(Affected(rid, claim.queue_id, claim.recipients[rid].address))
        c.execute(QUERIES["delete_attempt"], {"id": claim.attempt_ids[rid]})
    events = control_events(
        endpoints,
        EventType.HELD,
        held,
        status=RecipientStatus.HELD.value,
        reason=reason,
        actor=actor,
        now=now,
    )
    insert_events(c, events)
    return len(held), bool(events)


def expire_held(c: Conn, now: float, expire_after: float) -> int:
    """Held longer than ``expire_after`` seconds: expired, with the reason; audited."""
    reply = (
        f"5.4.7 held longer than hold.expire_after ({expire_after:g}s); expired without delivery"
    )
    n = len(
        c.execute(
            QUERIES["expire_held"], {"before": now - expire_after, "now": now, "reply": reply}
        ).fetchall()
    )
    if n:
        audit(c, now, "sluice", "expire-held", "hold.expire_after", n, reply)
    return n


def pause_provider(
    c: Conn, now: float, provider: str, actor: str, reason: str, until: float | None
) -> None:
    """Pause delivery through ``provider`` (``ALL_PROVIDERS``: all); audited."""
    detail = reason + (f" (until {when(until)})" if until is not None else "")
    c.execute(
        QUERIES["pause_set"],
        {"provider": provider, "reason": reason, "until": until, "actor": actor, "now": now},
    )
    audit(c, now, actor, "pause", provider, 0, detail)


def resume_provider(c: Conn, now: float, provider: str, actor: str) -> int | None:
    """End a pause; recipients waiting for it are due now (how many). None: not paused."""
    pattern = "%paused by operator%"
    if provider != ALL_PROVIDERS:
        pattern = "%" + like_escape(f"{provider}: paused by operator") + "%"
    if not c.execute(QUERIES["pause_delete"], {"provider": provider}).fetchall():
        return None
    n = len(c.execute(QUERIES["wake_paused"], {"now": now, "pattern": pattern}).fetchall())
    audit(c, now, actor, "resume", provider, n, "")
    return n


def end_expired_pauses(c: Conn, now: float) -> list[str]:
    """Forget pauses whose duration ran out; audited. The providers they paused."""
    ended = [r["provider"] for r in c.execute(QUERIES["pauses_end_expired"], {"now": now})]
    for provider in ended:
        audit(c, now, "sluice", "resume", provider, 0, "the pause ran out")
    return ended
