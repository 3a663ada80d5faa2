"""Pause and resume delivery through a provider, and store a provider's sign-in.

A pause stops delivery through one provider (or all: ``ALL_PROVIDERS``) while
mail is still accepted; resuming makes the mail that waited for it due now.
Both are written to the spool's audit log with their actor.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.config import Config
from relay.operations.actor import Actor, Refusal, Refused
from relay.store.spool import ALL_PROVIDERS, Spool

__all__ = [
    "ALL_PROVIDERS",
    "REASON_MAX",
    "Paused",
    "Resumed",
    "check_provider",
    "pause",
    "resume",
    "save_sign_in",
    "target_name",
]

#: a pause's reason is cut to this many characters (the queue shows it on every recipient)
REASON_MAX = 500


def target_name(target: str) -> str:
    """A pause's target in words: "provider up1", "all providers"."""
    return "all providers" if target == ALL_PROVIDERS else f"provider {target}"


@dataclass(frozen=True, slots=True)
class Paused:
    """A pause in force: its target, reason, and end."""

    target: str
    reason: str
    #: when the pause ends by itself (None: when resumed)
    until: float | None

    @property
    def name(self) -> str:
        return target_name(self.target)


@dataclass(frozen=True, slots=True)
class Resumed:
    """A pause ended (or not: ``due_now`` None when there was none)."""

    target: str
    #: recipients that waited for the pause and are due now (None: it was not paused)
    due_now: int | None

    @property
    def name(self) -> str:
        return target_name(self.target)

    @property
    def was_paused(self) -> bool:
        return self.due_now is not None


def check_provider(config: Config, target: str) -> None:
    """Refuse a target that is neither ``ALL_PROVIDERS`` nor a configured provider.

    Raises:
        Refused: no such provider (``NOT_FOUND``), naming the known ones.
    """
    known = [p.id for p in config.providers]
    if target != ALL_PROVIDERS and target not in known:
        raise Refused(f"no provider {target!r} (known: {', '.join(known)})", Refusal.NOT_FOUND)


async def pause(
    spool: Spool,
    config: Config,
    target: str,
    actor: Actor,
    *,
    reason: str = "",
    duration: float | None = None,
    now: float,
) -> Paused:
    """Pause delivery through ``target`` (``ALL_PROVIDERS``: all) for ``duration`` or until resumed.

    Raises:
        Refused: no such provider, or a duration that is not positive.
    """
    check_provider(config, target)
    if duration is not None and duration <= 0:
        raise Refused("the duration must be positive")
    until = now + duration if duration is not None else None
    reason = reason.strip()[:REASON_MAX]
    await spool.pause_provider(target, actor=actor.audit, reason=reason, until=until)
    return Paused(target, reason, until)


async def resume(spool: Spool, config: Config, target: str, actor: Actor) -> Resumed:
    """End the pause of ``target``; what waited for it is due now.

    Raises:
        Refused: no such provider.
    """
    check_provider(config, target)
    return Resumed(target, await spool.resume_provider(target, actor=actor.audit))


async def save_sign_in(spool: Spool, provider: str, refresh_token: str, actor: Actor) -> None:
    """Store the refresh token a provider's device sign-in gave (``sluice providers connect``)."""
    del actor  # the grant row records when, not who: one token per provider
    await spool.save_oauth_grant(provider, refresh_token)
