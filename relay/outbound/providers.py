"""Providers built from config: connection pools, health, limits and the order mail tries them in.

``Provider.deliver`` is one attempt through one provider: it first asks
whether the provider may be used now (circuit breaker, provider pause, daily
limit, rate), and answers ``Unavailable(until=...)`` when not, so the caller
can offer the mail elsewhere or let it wait exactly that long. A limit that
counts recipients may admit only some of a transaction's recipients: those
are sent now and the answer is a ``Partial`` saying why the rest wait. Otherwise it
applies the provider's rewrites to the bytes sent (never to the stored ones),
sends over a pooled session, and updates health from the outcomes.

``ProviderSet.plan`` resolves routing per recipient at every attempt. A
``ProviderSet`` is immutable configuration plus live state; a reload builds a
new one and hands over the ``ProviderState`` (health, usage, tokens) of every
provider whose id stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from relay.config import Config, DeliverySettings, ProviderSettings
from relay.errors import SluiceError
from relay.message import PROVIDER_HEADER, HeaderBlock, HeaderEdit, edit_headers, rewrite
from relay.model import Claim, Delivered, Outcome
from relay.outbound.dkim import Signer, sign
from relay.outbound.health import (
    Attempt,
    Health,
    HealthLog,
    HealthRecord,
    HealthView,
    ProviderHealth,
    record_key,
)
from relay.outbound.limits import Counters, Grant, Quota, TokenBucket
from relay.outbound.oauth import GrantStore, SignInState, TokenSource, TokenState
from relay.outbound.replies import health_verdict
from relay.outbound.routing import default_order, route_for
from relay.outbound.session import ProviderError, Session, StaleSession, Upstream, classify
from relay.outbound.shared_limits import Fleet, FleetBucket, FleetStore
from relay.secrets import Redactor

# Re-exported: a provider's context is the one every TLS client of Sluice uses.
from relay.tls import settings_context as tls_context
from relay.wording import plural, when

__all__ = [
    "Partial",
    "Provider",
    "ProviderSet",
    "ProviderState",
    "ProviderStatus",
    "Unavailable",
    "tls_context",
    "upstream_of",
]

log = logging.getLogger("sluice.providers")

#: a rate-limited attempt waits in place up to this long; beyond it the mail is deferred
_MAX_RATE_WAIT = 2.0


def upstream_of(
    settings: ProviderSettings, delivery: DeliverySettings, *, oauth: TokenSource | None = None
) -> Upstream:
    """Connection parameters with the password resolved (read now: files, credentials).

    Raises:
        SecretError: the password (env variable, file, systemd credential) is
            missing or empty (a ``LookupError``).
    """
    secret = settings.password.resolve() if settings.password is not None else None
    timeout = settings.timeout
    return Upstream(
        id=settings.id,
        host=settings.host,
        port=settings.port,
        encryption=settings.encryption,
        username=settings.username,
        password=secret.get_secret_value() if secret is not None else None,
        oauth=oauth,
        tls_context=tls_context(settings),
        allow_insecure_auth=settings.allow_insecure_auth,
        auth_mechanism=settings.auth_mechanism,
        pipelining=settings.pipelining,
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
    health: ProviderHealth = ProviderHealth.UNKNOWN
    #: why it is in that state ("" when healthy), and since when (``relay.outbound.health``)
    health_reason: str = ""
    health_since: float | None = None
    last_error: str = ""
    last_error_at: float | None = None
    last_ok_at: float | None = None
    #: units (``limit_unit``) counted in the limit's window (``limit_window``) now
    sent_today: int = 0
    daily_limit: int | None = None
    limit_unit: str = "messages"
    limit_window: str = "utc_day"
    rate: str | None = None
    rate_unit: str = "messages"
    max_connections: int = 0
    #: for XOAUTH2 providers; else None
    oauth_state: TokenState | None = None
    oauth_valid_until: float | None = None
    #: while in cool-down or paused: when it will be tried again
    blocked_until: float | None = None
    oauth_last_refresh: float | None = None
    oauth_last_error: str = ""
    #: with a device sign-in configured; else None
    oauth_sign_in: SignInState | None = None


@dataclass(frozen=True, slots=True)
class Unavailable:
    """The provider may not be used now; ``until`` is when it may (wall clock).

    ``limit`` is True for a daily limit or the rate: the mail should simply wait
    for the window, without counting an attempt. Otherwise (cool-down, a
    provider's pause) the normal retry back-off applies.
    """

    provider: str
    reason: str
    until: float
    limit: bool = False


@dataclass(frozen=True, slots=True)
class Partial:
    """A limit admitted only the first ``len(outcomes)`` recipients; the rest wait for ``rest``.

    Decided for limits counting recipients: a transaction that would exceed
    one sends as many recipients as fit now, and the others wait for the
    window (no attempt counted), rather than all waiting for the last one.
    """

    outcomes: list[Outcome]
    rest: Unavailable


class ProviderState:
    """Live state of one provider id that survives a reload (not a restart: see limits)."""

    def __init__(
        self,
        provider_id: str,
        counters: Counters | None,
        clock: Callable[[], float],
        grants: GrantStore | None = None,
        health_log: HealthLog | None = None,
        fleet: Fleet | None = None,
    ):
        self.health = Health()
        #: where each change of health is written for other processes (the spool)
        self.health_log = health_log
        self._published: HealthRecord | None = None
        #: the nodes sharing the store (None: one node): limits and skips held with them
        self.fleet = fleet
        #: the end of the last block of this node's own that the fleet was told of
        self._shared_until: float | None = None
        self.daily = Quota(provider_id, counters, clock=clock, shared=self._shared_counters)
        self._counters = counters
        self.bucket: TokenBucket | FleetBucket | None = None
        self.oauth: TokenSource | None = None
        self._id = provider_id
        self._clock = clock
        self._grants = grants

    @property
    def _shared_counters(self) -> FleetStore | None:
        return self.fleet.store if self.fleet is not None else None

    async def sync(self) -> None:
        """In a fleet: skip the provider while another node's block of it holds."""
        if self.fleet is None:
            return
        block = (await self.fleet.blocks()).get(self._id)
        if block is not None and block.node != self.fleet.node:
            reason = f"skipped by the fleet: {block.reason} (on node {block.node})"
            self.health.adopt(block.until, reason, block.since, self._clock())

    async def _share(self) -> None:
        """In a fleet: tell the other nodes of a block of this node's own (longer than told)."""
        if self.fleet is None:
            return
        now = self._clock()
        until = self.health.own_blocked_until(now)
        if until is None or (self._shared_until is not None and until <= self._shared_until):
            return
        self._shared_until = until
        record = self.health.record(now)
        await self.fleet.block(self._id, until, record.blocked_reason, record.blocked_since or now)

    async def publish(self) -> None:
        """Write the health record to the spool when it changed (for ``providers list``)."""
        await self._share()
        if self.health_log is None:
            return
        record = self.health.record(self._clock())
        if record == self._published:
            return
        self._published = record
        try:
            await self.health_log.meta_set({record_key(self._id): record.to_json()})
        except SluiceError as exc:  # a full disk must not fail the delivery
            self._published = None
            log.warning("provider %s: could not record its health: %s", self._id, exc)

    def adopt(self, settings: ProviderSettings) -> None:
        """Follow a (re)loaded config: keep the bucket, quota and tokens unless settings changed."""
        if (self.daily.unit, self.daily.window) != (settings.limit_unit, settings.limit_window):
            self.daily = Quota(
                self._id,
                self._counters,
                unit=settings.limit_unit,
                window=settings.limit_window,
                clock=self._clock,
                shared=self._shared_counters,
            )
        if settings.rate is None:
            self.bucket = None
        elif self.bucket is None or self.bucket.rate != settings.rate:
            if self.fleet is not None:
                self.bucket = FleetBucket(settings.rate, f"provider:{self._id}", self.fleet.store)
            else:
                self.bucket = TokenBucket(settings.rate)
        if settings.oauth2 is None:
            self.oauth = None
        elif self.oauth is None or not self.oauth.same_settings(settings.oauth2):
            self.oauth = TokenSource(
                settings.oauth2, provider_id=self._id, clock=self._clock, grants=self._grants
            )


#: no ``headers:`` rules
NO_HEADER_EDIT = HeaderEdit()


class Provider:
    """One upstream with a bounded pool of reusable SMTP sessions."""

    def __init__(
        self,
        settings: ProviderSettings,
        upstream: Upstream | None,
        *,
        local_hostname: str,
        state: ProviderState | None = None,
        clock: Callable[[], float] = time.time,
        setup_error: str = "",
        headers: HeaderEdit = NO_HEADER_EDIT,
        dkim: Signer | None = None,
    ):
        self.settings = settings
        #: ``headers:`` (top level, then this provider's own), applied to every attempt
        self.headers = headers
        #: the DKIM signer of the config this provider was built from (None: no signing)
        self.dkim = dkim
        self.id = settings.id
        self.upstream = upstream
        self.state = state or ProviderState(settings.id, None, clock)
        self.state.adopt(settings)
        self._clock = clock
        self._setup_error = setup_error
        self._local_hostname = local_hostname
        self._slots = asyncio.Semaphore(settings.max_connections)
        self._idle: list[tuple[float, Session]] = []
        self._closed = False

    # ----------------------------------------------------------------- sessions

    async def _session(self) -> Session:
        now = time.monotonic()
        while self._idle:
            since, session = self._idle.pop()
            if session.usable and now - since < self.settings.idle_timeout:
                return session
            await session.quit()
        return await self._open()

    async def _open(self) -> Session:
        if self.upstream is None:
            raise ProviderError(f"4.7.0 provider {self.id} is misconfigured: {self._setup_error}")
        session = Session(self.upstream, local_hostname=self._local_hostname)
        await session.open()
        return session

    async def _send(
        self, sender: str, recipients: Sequence[str], data: bytes, *, crlf_only: bool, queue_id: str
    ) -> list[Outcome]:
        try:
            session = await self._session()
            try:
                outcomes = await session.send(
                    sender, recipients, data, crlf_only=crlf_only, queue_id=queue_id
                )
            except StaleSession:
                # The pooled connection died while idle; nothing was sent on it.
                session = await self._open()
                outcomes = await session.send(
                    sender, recipients, data, crlf_only=crlf_only, queue_id=queue_id
                )
        except ProviderError as exc:
            log.warning("provider %s unavailable: %s", self.id, exc.text)
            return [classify(r, exc) for r in recipients]
        # After a reload closed this (old) provider, its in-flight sessions are not kept.
        if session.usable and self.settings.idle_timeout > 0 and not self._closed:
            self._idle.append((time.monotonic(), session))
        else:
            await session.quit()
        return outcomes

    # ------------------------------------------------------------------ deliver

    def blocked(self) -> Unavailable | None:
        """Unavailable because of health (cool-down or a provider's pause), else ``None``."""
        now = self._clock()
        until = self.state.health.blocked_until(now)
        if until is None:
            return None
        return Unavailable(self.id, f"{self.id}: {self.state.health.why_blocked(now)}", until)

    async def deliver(
        self,
        sender: str,
        recipients: Sequence[str],
        data: bytes,
        *,
        crlf_only: bool = False,
        head: HeaderBlock | None = None,
        envelope_sender: str | None = None,
        queue_id: str = "",
    ) -> list[Outcome] | Partial | Unavailable:
        """One attempt through this provider, or why it cannot be used now.

        ``crlf_only``: every line of ``data`` is known to end in CRLF, so the
        send need not check again (it does whenever a rewrite changed it).
        ``head``: the header block of ``data``, parsed once per attempt by the caller.
        ``envelope_sender``: the return path to use as is (the bounce address,
        or its VERP form), instead of the app's sender or ``send_from``.
        ``queue_id``: for the log lines of the session (a re-encoding, say).
        """
        await self.state.sync()
        if (blocked := self.blocked()) is not None:
            return blocked
        admitted = await self._admit(len(recipients))
        if isinstance(admitted, Unavailable):
            return admitted
        grant, n, rest = admitted
        s = self.settings
        sender_out = envelope_sender or (s.send_from if s.send_from is not None else sender)
        data_out = rewrite(data, send_from=s.send_from, send_from_name=s.send_from_name, head=head)
        data_out = edit_headers(data_out, self.headers)
        # Signed last: over the bytes this provider is sent (rewrite and header rules done).
        data_out = await sign(self.dkim, data_out, head=head if data_out is data else None)
        async with self._slots:
            outcomes = await self._send(
                sender_out,
                recipients[:n],
                data_out,
                crlf_only=crlf_only and data_out is data,
                queue_id=queue_id,
            )
        delivered = sum(isinstance(o, Delivered) for o in outcomes)
        if s.limit_unit == "recipients":
            await self.state.daily.give_back(grant, grant.n - delivered)
        elif not delivered:
            await self.state.daily.give_back(grant)
        self._judge(outcomes)
        await self.state.publish()
        return outcomes if rest is None else Partial(outcomes, rest)

    async def _admit(self, want: int) -> tuple[Grant, int, Unavailable | None] | Unavailable:
        """Ask the daily limit, then the rate, for ``want`` recipients.

        Returns the quota's grant, how many recipients may go now, and why the
        others wait (``None``: all may go); or why none may go.
        """
        s, state = self.settings, self.state
        by_rcpt = s.limit_unit == "recipients"
        grant = await state.daily.reserve(want if by_rcpt else 1, s.daily_limit)
        if grant.n == 0:
            return self._limited(state.daily.reopens_at(self._clock()))
        n = grant.n if by_rcpt else want
        rest = self._limited(state.daily.reopens_at(self._clock())) if n < want else None
        if state.bucket is None:
            return grant, n, rest
        try:
            got = await state.bucket.take(n if s.rate_unit == "recipients" else 1, _MAX_RATE_WAIT)
        except SluiceError:  # a fleet's bucket is in the store: nothing goes, give the units back
            with contextlib.suppress(SluiceError):
                await state.daily.give_back(grant)
            raise
        if got is None:
            await state.daily.give_back(grant)
            return self._rate_limited()
        wait, tokens = got
        if s.rate_unit == "recipients" and tokens < n:
            if by_rcpt:
                await state.daily.give_back(grant, n - tokens)
                grant = Grant(tokens, grant.window)
            n, rest = tokens, self._rate_limited()
        if wait > 0:
            await asyncio.sleep(wait)
        return grant, n, rest

    def _limited(self, until: float) -> Unavailable:
        s = self.settings
        assert s.daily_limit is not None  # an unlimited quota admits everything
        return Unavailable(
            self.id,
            f"{self.id}: daily limit of {plural(s.daily_limit, _UNIT[s.limit_unit])} "
            + (
                "per rolling 24 h reached; waiting for the window"
                if s.limit_window == "rolling_24h"
                else "reached; waiting for the next UTC day"
            ),
            until,
            limit=True,
        )

    def _rate_limited(self) -> Unavailable:
        assert self.state.bucket is not None
        return Unavailable(
            self.id,
            f"{self.id}: rate limit {_rate(self.settings)} reached",
            self._clock() + self.state.bucket.next_free(),
            limit=True,
        )

    async def spoke_for_itself(self, outcomes: Sequence[Outcome]) -> None:
        """Outcomes of earlier attempts found, together, to speak for the provider.

        The scheduler's cross-transaction rule (``replies.AcrossTransactions``:
        the same 4xx to several domains, one transaction each with VERP) gives
        them ``Scope.PAUSE``; health takes their verdict (the pause) as it takes
        one attempt's. They are not recorded as one more attempt: each was
        recorded when it was made, and the health window weighs the same reply
        across attempts itself (``relay.outbound.health.judge``).
        """
        self._judge(outcomes, attempt=False)
        await self.state.publish()  # the CLI reads the cool-down from the spool

    def _judge(self, outcomes: Sequence[Outcome], *, attempt: bool = True) -> None:
        """Health from one attempt, as ``replies.health_verdict`` reads the outcomes."""
        now = self._clock()
        health, s = self.state.health, self.settings
        if attempt:
            health.record_attempt(Attempt.of(outcomes, now, self._redact))
        verdict = health_verdict(outcomes)
        if verdict is None:
            health.record_ok(now)
            return
        was = health.view(now).state
        # The reason is the provider's own text, shown on pages and the API: it
        # may echo what was sent (the password, an OAuth token).
        reason = self._redact(verdict.reason)
        health.record_failure(reason, now, threshold=s.failure_threshold, cooldown=s.cooldown)
        if verdict.pause:
            health.pause(now + (verdict.retry_after or s.cooldown), reason, now)
        now_cooling = health.view(now).state is ProviderHealth.COOLDOWN
        if now_cooling and was is not ProviderHealth.COOLDOWN:
            log.warning(
                "provider %s skipped until %s: %s",
                self.id,
                when(health.blocked_until(now)),
                reason,
            )

    def _redact(self, text: str) -> str:
        """``text`` with this provider's password and OAuth tokens masked."""
        up = self.upstream
        if up is not None and up.password:
            text = Redactor([up.password])(text)
        return self.state.oauth.redact(text) if self.state.oauth is not None else text

    # ------------------------------------------------------------------- status

    def health_in_words(self) -> tuple[ProviderHealth, str, float | None]:
        """(word, reason, since) now, without a spool read: what ``/healthz`` reports."""
        view = self.state.health.view(self._clock())
        if self._setup_error:
            return ProviderHealth.ERROR, f"misconfigured: {self._setup_error}", None
        return view.state, view.reason, view.since

    def health_now(self) -> ProviderHealth:
        """The health word of ``status()`` alone: no spool read, no token sync."""
        return self._health_word(self.state.health.view(self._clock()))

    def _health_word(self, view: HealthView) -> ProviderHealth:
        return ProviderHealth.ERROR if self._setup_error else view.state

    async def status(self) -> ProviderStatus:
        s, now = self.settings, self._clock()
        view = self.state.health.view(now)
        if self.state.oauth is not None:
            await self.state.oauth.sync_grant()  # a sign-in elsewhere shows at once
        oauth = self.state.oauth.status() if self.state.oauth is not None else None
        last_error = view.last_error
        if self._setup_error and not last_error:
            last_error = f"misconfigured: {self._setup_error}"
        reason = f"misconfigured: {self._setup_error}" if self._setup_error else view.reason
        return ProviderStatus(
            id=s.id,
            caption=s.caption,
            host=s.host,
            port=s.port,
            encryption=s.encryption,
            enabled=s.enabled,
            priority=s.priority,
            health=self._health_word(view),
            health_reason=reason,
            health_since=view.since,
            last_error=last_error,
            last_error_at=view.last_error_at,
            last_ok_at=view.last_ok_at,
            sent_today=await self.state.daily.used(),
            daily_limit=s.daily_limit,
            limit_unit=s.limit_unit,
            limit_window=s.limit_window,
            rate=_rate(s),
            rate_unit=s.rate_unit,
            max_connections=s.max_connections,
            oauth_state=oauth.state if oauth else None,
            oauth_valid_until=oauth.valid_until if oauth else None,
            blocked_until=view.blocked_until,
            oauth_last_refresh=oauth.last_refresh if oauth else None,
            oauth_last_error=oauth.last_error if oauth else "",
            oauth_sign_in=oauth.sign_in if oauth else None,
        )

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(s.quit() for _, s in idle))
        try:
            await self.state.daily.aclose()  # the units counted behind (no daily limit)
        except SluiceError as exc:
            log.warning("provider %s: could not count its last sent mail: %s", self.id, exc)


_UNIT = {"messages": "message", "recipients": "recipient"}


def _rate(s: ProviderSettings) -> str | None:
    if s.rate is None:
        return None
    unit = {1.0: "s", 60.0: "m", 3600.0: "h"}.get(s.rate.per)
    text = f"{s.rate.count}/{unit}" if unit else f"{s.rate.count}/{s.rate.per:g}s"
    return text if s.rate_unit == "messages" else f"{text} recipients"


class ProviderSet:
    """The configured providers and the routing that orders them per recipient."""

    def __init__(
        self,
        providers: Sequence[Provider],
        config: Config | None = None,
        dkim: Signer | None = None,
    ) -> None:
        self.providers = list(providers)
        self.by_id = {p.id: p for p in self.providers}
        self.config = config
        #: the DKIM signer every provider of this set signs with (for the admin's page too)
        self.dkim = dkim

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        local_hostname: str,
        previous: ProviderSet | None = None,
        counters: Counters | None = None,
        clock: Callable[[], float] = time.time,
        grants: GrantStore | None = None,
        health_log: HealthLog | None = None,
        fleet: Fleet | None = None,
    ) -> ProviderSet:
        """Build providers; with ``previous``, keep the state of every id that stays.

        Raises:
            LookupError: a provider's secret (env variable, file) is missing, or a
                DKIM key cannot be read or used (``SecretError``).
        """
        kept = {p.id: p.state for p in previous.providers} if previous is not None else {}
        signer = Signer.from_config(
            config.dkim, clock=clock, previous=previous.dkim if previous is not None else None
        )
        built = []
        for p in config.providers:
            state = kept.get(p.id) or ProviderState(
                p.id, counters, clock, grants, health_log, fleet
            )
            state.adopt(p)
            try:
                upstream = upstream_of(p, config.delivery, oauth=state.oauth)
            except LookupError:
                if p.enabled:
                    raise
                # A disabled provider sends nothing: its secret may be missing
                # until it is enabled (``load`` checks it no sooner either).
                bare = p.model_copy(update={"password": None})
                upstream = upstream_of(bare, config.delivery, oauth=state.oauth)
            layers = [config.headers, p.headers]
            headers = HeaderEdit.merged(*((h.remove, h.add) for h in layers if h is not None))
            built.append(
                Provider(
                    p,
                    upstream,
                    local_hostname=local_hostname,
                    state=state,
                    clock=clock,
                    headers=headers,
                    dkim=signer,
                )
            )
        return cls(built, config, signer)

    def candidates(self) -> list[Provider]:
        """Enabled providers in ``priority`` order (lowest first; ties keep file order)."""
        enabled = [p for p in self.providers if p.settings.enabled]
        return sorted(enabled, key=lambda p: p.settings.priority)

    def plan(self, claim: Claim, head: HeaderBlock) -> list[tuple[list[int], list[Provider]]]:
        """Group the claim's recipients by the providers routing gives them, in order."""
        if self.config is None:
            return [(list(claim.recipients), self.candidates())]
        groups: dict[tuple[str, ...], list[int]] = {}
        default = tuple(default_order(self.config))
        # A cheap look for the header first: splitting the header block of
        # every message only to find no routing header was a visible cost.
        routed = bool(self.config.routes) or head.mentions(PROVIDER_HEADER)
        for rid, rcpt in claim.recipients.items():
            override = self._override(rcpt.route_override)
            if override is not None:
                ids: tuple[str, ...] = (override,)
            elif routed:
                ids = tuple(route_for(self.config, claim.sender, rcpt.address, head))
            else:
                ids = default
            groups.setdefault(ids, []).append(rid)
        return [([*rids], [self.by_id[i] for i in ids]) for ids, rids in groups.items()]

    def _override(self, provider_id: str | None) -> str | None:
        """An operator's reroute (``route_override``), if that provider can take mail."""
        if provider_id is None:
            return None
        provider = self.by_id.get(provider_id)
        if provider is None or not provider.settings.enabled:
            log.warning("reroute to %r: no such enabled provider; using the routes", provider_id)
            return None
        return provider_id

    async def status(self) -> list[ProviderStatus]:
        """Every provider's state, in config order."""
        return [await p.status() for p in self.providers]

    async def publish_health(self) -> None:
        """Write every provider's health record that changed (at start: replace the last run's)."""
        for p in self.providers:
            await p.state.publish()

    def troubles(self) -> list[tuple[str, ProviderHealth, str, float | None]]:
        """Enabled providers failing or in an automatic cool-down: (id, word, reason, since)."""
        out = []
        for p in self.providers:
            word, reason, since = p.health_in_words()
            if p.settings.enabled and word.trouble:
                out.append((p.id, word, reason, since))
        return out

    def health(self) -> dict[str, str]:
        """Provider id -> ``ProviderHealth`` now (what ``provider_state`` events compare)."""
        return {p.id: p.health_now() for p in self.providers}

    async def aclose(self) -> None:
        await asyncio.gather(*(p.aclose() for p in self.providers))
