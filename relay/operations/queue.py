"""Retry, delete, hold, release and reroute: the operator's actions on queued mail.

``retry`` and ``delete`` act on messages by queue ID (``postsuper -r``/``-d``);
``hold``, ``release`` and ``reroute`` on a ``Selection`` of recipients
(``postsuper -h``/``-H``, KumoMTA's ``kcli rebind``), each written to the
spool's audit log with its actor. The past tense of each action lives on
``Action`` so that the CLI and the admin say "held" with one word.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from relay.config import Config
from relay.errors import UnknownMessage
from relay.model import Action, ProviderPause, Selection
from relay.operations.actor import Actor, Refusal, Refused
from relay.store.spool import ALL_PROVIDERS, Control, Selected, Spool

__all__ = [
    "CONTROLS",
    "QUEUE_ACTIONS",
    "REASON_MAX",
    "Acted",
    "ControlRequest",
    "Controlled",
    "check",
    "control",
    "count",
    "delete",
    "retry",
]


#: the actions a front-end may ask for on queued mail, in the order they are offered
QUEUE_ACTIONS = (Action.RETRY, Action.DELETE, Action.HOLD, Action.RELEASE, Action.REROUTE)

#: a hold's reason is cut to this many characters (it is shown on every recipient)
REASON_MAX = 500

#: the actions on a selection of recipients (the others take queue IDs)
CONTROLS = (Action.HOLD, Action.RELEASE, Action.REROUTE)


@dataclass(frozen=True, slots=True)
class Acted:
    """What a retry or a delete did: the queue IDs done, and those not in the queue."""

    action: Action
    done: tuple[str, ...]
    missing: tuple[str, ...]
    #: retry: recipients made due now, by queue ID (a delete has none)
    recipients: dict[str, int]


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """A hold, release or reroute of a selection of recipients."""

    action: Action
    selection: Selection
    #: hold: why (shown as the recipients' reason)
    reason: str = ""
    #: reroute: the provider for the next attempt
    via: str | None = None


@dataclass(frozen=True, slots=True)
class Controlled:
    """What a hold, release or reroute did (or, for a dry run, would do)."""

    action: Action
    #: recipients acted on (a dry run: that it would act on)
    recipients: int
    #: the selection in words, as the audit log has it
    selection: str
    dry_run: bool = False
    #: a dry run: of how many messages
    messages: int = 0
    #: a reroute via a provider that is paused now (itself, or all providers): the
    #: rerouted recipients wait for the resume; front-ends warn (None: not paused)
    via_paused: ProviderPause | None = None


def _unique(queue_ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(q.strip() for q in queue_ids if q.strip()))


async def retry(spool: Spool, queue_ids: Iterable[str], actor: Actor) -> Acted:
    """Make messages due now (failed ones too); unknown IDs are reported, not fatal."""
    done: list[str] = []
    missing: list[str] = []
    due: dict[str, int] = {}
    for qid in _unique(queue_ids):
        try:
            due[qid] = await spool.retry_now(qid, actor=actor.audit)
        except UnknownMessage:
            missing.append(qid)
        else:
            done.append(qid)
    return Acted(Action.RETRY, tuple(done), tuple(missing), due)


async def delete(spool: Spool, queue_ids: Iterable[str], actor: Actor) -> Acted:
    """Delete messages from the queue; unknown IDs are reported, not fatal."""
    done: list[str] = []
    missing: list[str] = []
    for qid in _unique(queue_ids):
        try:
            await spool.delete(qid, actor=actor.audit)
        except UnknownMessage:
            missing.append(qid)
        else:
            done.append(qid)
    return Acted(Action.DELETE, tuple(done), tuple(missing), {})


def check(config: Config, request: ControlRequest) -> None:
    """Refuse a request before anything is counted or changed.

    Raises:
        Refused: not a hold, release or reroute; an empty selection (nothing is
            done without a criterion: ``everything`` says "all" on purpose); or
            a reroute to no enabled provider.
    """
    if request.action not in CONTROLS:
        raise Refused(f"unknown action {request.action.value!r}", Refusal.NOT_FOUND)
    if request.selection.empty:
        raise Refused("give queue IDs, a filter, or everything")
    if request.action is Action.REROUTE:
        enabled = [p.id for p in config.providers if p.enabled]
        if request.via not in enabled:
            raise Refused(f"no enabled provider {request.via!r} (enabled: {', '.join(enabled)})")


async def _via_paused(spool: Spool, request: ControlRequest) -> ProviderPause | None:
    """The pause in force on a reroute's provider (or on all of them), if any.

    A reroute to a paused provider is allowed (the pause may end soon, and the
    operator may mean it), but its recipients then wait: the caller must say so.
    """
    if request.action is not Action.REROUTE or request.via is None:
        return None
    pauses = await spool.pauses()
    return pauses.get(request.via) or pauses.get(ALL_PROVIDERS)


async def count(spool: Spool, config: Config, request: ControlRequest) -> Controlled:
    """A dry run: how many recipients (of how many messages) the request would act on."""
    check(config, request)
    n: Selected = await spool.count_selected(request.selection, request.action)
    return Controlled(
        request.action,
        n.recipients,
        request.selection.describe(),
        dry_run=True,
        messages=n.messages,
        via_paused=await _via_paused(spool, request),
    )


async def control(
    spool: Spool, config: Config, request: ControlRequest, actor: Actor
) -> Controlled:
    """Hold, release or reroute the selected recipients, audited as ``actor``.

    Raises:
        Refused: see ``check``.
    """
    check(config, request)
    hold, reroute = request.action is Action.HOLD, request.action is Action.REROUTE
    done = await spool.control(
        request.selection,
        Control(
            action=request.action.value,
            actor=actor.audit,
            reason=request.reason.strip()[:REASON_MAX] if hold else "",
            provider=request.via if reroute else None,
            age_while_held=config.hold.age_while_held,
        ),
        endpoints=config.notify.webhooks,
    )
    return Controlled(
        request.action,
        done,
        request.selection.describe(),
        via_paused=await _via_paused(spool, request),
    )
