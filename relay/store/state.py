"""Small state kept beside the mail: meta values, counters, OAuth grants, admin sessions, health.

Meta values are what the daemon tells other processes (the last reload, the
addresses it listens on, the schema version); counters outlive restarts (a
provider's daily usage); OAuth grants hold refresh tokens from a provider
sign-in, with the spool's file permissions rather than in the YAML; the admin
session version voids every session cookie issued under an older one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from relay.store.db import Conn, Reader
from relay.store.sql import QUERIES
from relay.store.writer import CheckpointHealth, WriteHealth

__all__ = [
    "OAuthGrant",
    "SpoolHealth",
    "admin_session_key",
    "admin_session_version",
    "counter_add",
    "counter_get",
    "counter_prune",
    "counter_since",
    "meta_get",
    "meta_set",
    "oauth_grant",
    "oauth_grant_failed",
    "probe_write",
    "revoke_admin_sessions",
    "save_oauth_grant",
]


@dataclass(frozen=True, slots=True)
class OAuthGrant:
    """A provider's stored sign-in (OAuth 2.0 device grant): its refresh token and state."""

    provider: str
    refresh_token: str = field(repr=False)
    #: "connected", or "failed" once the provider refused the token
    state: str = "connected"
    error: str = ""
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class SpoolHealth:
    """What ``/healthz`` needs to know about the store."""

    writes: WriteHealth
    #: None when this process runs no checkpointer (``sluice queue``)
    checkpoints: CheckpointHealth | None


def counter_add(c: Conn, name: str, window: str, delta: int) -> int:
    """Add ``delta`` to a counter; its new value."""
    row = c.execute(
        QUERIES["counter_add"], {"name": name, "window": window, "delta": delta}
    ).fetchone()
    return int(row[0])


def counter_prune(c: Conn, name: str, before: str) -> None:
    """Delete a counter's windows before ``before``."""
    c.execute(QUERIES["counter_prune"], {"name": name, "window": before})


def meta_set(c: Conn, values: dict[str, str]) -> None:
    """Set meta values."""
    c.executemany(QUERIES["meta_set"], [{"key": k, "value": v} for k, v in values.items()])


def save_oauth_grant(c: Conn, now: float, provider: str, refresh_token: str) -> None:
    """Store (or replace) a provider's refresh token: it is connected."""
    c.execute(
        QUERIES["oauth_grant_set"],
        {"provider": provider, "refresh_token": refresh_token, "now": now},
    )


def oauth_grant_failed(c: Conn, now: float, provider: str, error: str) -> None:
    """The provider refused the stored token: mark it failed, keep it for the record."""
    c.execute(QUERIES["oauth_grant_failed"], {"provider": provider, "error": error, "now": now})


def admin_session_key(c: Conn, offered: str) -> str:
    """The admin's cookie key kept in the store: ``offered`` if none was kept yet."""
    c.execute(QUERIES["admin_session_key_offer"], {"key": offered})
    return str(c.execute(QUERIES["admin_session_key"]).fetchone()[0])


def revoke_admin_sessions(c: Conn) -> int:
    """Start a new admin session version; returns it."""
    return int(c.execute(QUERIES["admin_sessions_revoke"]).fetchone()[0])


def probe_write(c: Conn, size: int) -> None:
    """Grow the spool by ``size`` bytes and give them back, in one transaction."""
    c.execute(QUERIES["health_probe_put"], {"size": size})
    c.execute(QUERIES["health_probe_drop"])


async def meta_get(reader: Reader, key: str) -> str | None:
    """One meta value, or None."""
    async with reader.execute(QUERIES["meta_get"], {"key": key}) as cur:
        row = await cur.fetchone()
    return str(row[0]) if row else None


async def counter_get(reader: Reader, name: str, window: str) -> int:
    """A counter's value in one window (0 when never counted)."""
    async with reader.execute(QUERIES["counter_get"], {"name": name, "window": window}) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def counter_since(reader: Reader, name: str, window: str) -> dict[str, int]:
    """A counter's windows from ``window`` on."""
    async with reader.execute(QUERIES["counter_since"], {"name": name, "window": window}) as cur:
        return {str(row[0]): int(row[1]) async for row in cur}


async def oauth_grant(reader: Reader, provider: str) -> OAuthGrant | None:
    """A provider's stored sign-in, or None."""
    async with reader.execute(QUERIES["oauth_grant_get"], {"provider": provider}) as cur:
        row = await cur.fetchone()
    if row is None:
        return None
    return OAuthGrant(
        provider=row["provider"],
        refresh_token=row["refresh_token"],
        state=row["state"],
        error=row["error"],
        updated_at=row["updated_at"],
    )


async def admin_session_version(reader: Reader) -> int:
    """The admin's current session version (0 until the first revocation)."""
    async with reader.execute(QUERIES["admin_session_version"]) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0
