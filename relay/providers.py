"""Providers built from config: connection pools and the order mail tries them in.

``ProviderSet.candidates(...)`` is the seam where routing, health and limits
decide which providers an attempt may use, in order. A ``ProviderSet`` is
immutable configuration plus live state (pools); a reload builds a new one.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass

from relay.config import Config, DeliverySettings, ProviderSettings
from relay.delivery import ProviderError, Session, Upstream, classify
from relay.model import Claim, Outcome
from relay.secrets import resolve_secret

__all__ = ["Provider", "ProviderSet", "ProviderStatus", "tls_context"]

log = logging.getLogger("sluice.providers")


def tls_context(settings: ProviderSettings) -> ssl.SSLContext | None:
    """The client TLS context for a provider; verification is on unless disabled."""
    if settings.encryption == "none":
        return None
    ctx = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    if not settings.tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def upstream_of(settings: ProviderSettings, delivery: DeliverySettings) -> Upstream:
    secret = resolve_secret(
        settings.password, settings.password_env, settings.password_file, credential=settings.id
    )
    timeout = settings.timeout
    return Upstream(
        id=settings.id,
        host=settings.host,
        port=settings.port,
        encryption=settings.encryption,
        username=settings.username,
        password=secret.get_secret_value() if secret is not None else None,
        tls_context=tls_context(settings),
        allow_insecure_auth=settings.allow_insecure_auth,
        connect_timeout=timeout or delivery.connect_timeout,
        command_timeout=timeout or delivery.command_timeout,
        data_timeout=max(timeout or 0, delivery.data_timeout),
    )


@dataclass(frozen=True, slots=True)
class ProviderStatus:
    """What the CLI and the admin page show about one provider (never a secret)."""

    id: str
    caption: str
    host: str
    port: int
    encryption: str
    enabled: bool
    priority: int
    #: "unknown" (grey), "ok" (green), "error" (red), "cooldown" (skipped for now)
    health: str = "unknown"
    last_error: str = ""
    last_error_at: float | None = None
    last_ok_at: float | None = None
    sent_today: int = 0
    daily_limit: int | None = None
    rate: str | None = None
    max_connections: int = 0
    #: for XOAUTH2 providers: "valid", "refreshing", "reauthorize", ...; else None
    oauth_state: str | None = None
    oauth_valid_until: float | None = None


class Provider:
    """One upstream with a bounded pool of reusable SMTP sessions."""

    def __init__(self, settings: ProviderSettings, upstream: Upstream, *, local_hostname: str):
        self.settings = settings
        self.id = settings.id
        self.upstream = upstream
        self._local_hostname = local_hostname
        self._slots = asyncio.Semaphore(settings.max_connections)
        self._idle: list[tuple[float, Session]] = []

    async def _session(self) -> Session:
        now = time.monotonic()
        while self._idle:
            since, session = self._idle.pop()
            if session.usable and now - since < self.settings.idle_timeout:
                return session
            await session.quit()
        session = Session(self.upstream, local_hostname=self._local_hostname)
        await session.open()
        return session

    async def deliver(self, sender: str, recipients: Sequence[str], data: bytes) -> list[Outcome]:
        """Send one message; every recipient gets an outcome."""
        async with self._slots:
            try:
                session = await self._session()
            except ProviderError as exc:
                log.warning("provider %s unavailable: %s", self.id, exc.text)
                return [classify(r, exc) for r in recipients]
            outcomes = await session.send(sender, recipients, data)
            if session.usable and self.settings.idle_timeout > 0:
                self._idle.append((time.monotonic(), session))
            else:
                await session.quit()
            return outcomes

    async def status(self) -> ProviderStatus:
        s = self.settings
        return ProviderStatus(
            id=s.id,
            caption=s.caption,
            host=s.host,
            port=s.port,
            encryption=s.encryption,
            enabled=s.enabled,
            priority=s.priority,
            daily_limit=s.daily_limit,
            rate=f"{s.rate.count}/{s.rate.per:g}s" if s.rate else None,
            max_connections=s.max_connections,
        )

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        await asyncio.gather(*(s.quit() for _, s in idle))


class ProviderSet:
    """The configured providers, in the order mail tries them."""

    def __init__(self, providers: Sequence[Provider]) -> None:
        self.providers = list(providers)
        self.by_id = {p.id: p for p in self.providers}

    @classmethod
    def from_config(cls, config: Config, *, local_hostname: str) -> ProviderSet:
        built = [
            Provider(p, upstream_of(p, config.delivery), local_hostname=local_hostname)
            for p in config.providers
        ]
        return cls(built)

    def candidates(self, claim: Claim, data: bytes) -> list[Provider]:
        """Enabled providers in ``priority`` order (lowest first; ties keep file order)."""
        enabled = [p for p in self.providers if p.settings.enabled]
        return sorted(enabled, key=lambda p: p.settings.priority)

    async def status(self) -> list[ProviderStatus]:
        """Every provider's state, in config order."""
        return [await p.status() for p in self.providers]

    async def aclose(self) -> None:
        await asyncio.gather(*(p.aclose() for p in self.providers))
