"""End every admin session: ``sluice admin revoke-sessions`` and the admin's log out.

One admin account means one set of sessions: a session version in the spool
is raised, and a cookie carrying an older one is refused from then on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from relay.operations.actor import Actor

__all__ = ["Revoked", "SessionStore", "revoke_admin_sessions"]


class SessionStore(Protocol):
    """Where the session version is kept (the ``Spool``)."""

    async def revoke_admin_sessions(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Revoked:
    """Every admin session ended."""

    #: the session version from now on; cookies with an older one are refused
    version: int


async def revoke_admin_sessions(store: SessionStore, actor: Actor) -> Revoked:
    """End every admin session."""
    del actor  # the version is the whole record: who ended them is in the daemon log
    return Revoked(await store.revoke_admin_sessions())
