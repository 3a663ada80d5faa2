"""XOAUTH2 access tokens for providers that no longer take passwords (Microsoft 365, Gmail).

A ``TokenSource`` turns a provider's ``oauth2:`` block (token endpoint, client
id, client secret and/or refresh token, scope) into access tokens. It asks the
endpoint for a new token ``refresh_margin`` seconds *before* the current one
expires, so a token is never used in its last minutes, and it keeps what users
need to see: the state, when the token is valid until, the last refresh and
the last error. An endpoint that refuses the grant (``invalid_grant``, 400/401)
moves the source to ``reauthorize``: mail waits with a reply that says so
instead of looping on 4xx. Tokens and secrets are never logged, and never
shown: an endpoint may echo the request in its error (the ``client_secret``,
the refresh token), so every text it answers passes ``redact`` (a
``relay.secrets.Redactor`` of every value this source sent or obtained,
tokens got at run time included) before it becomes ``last_error``, a
delivery reply, a page or an event.

A provider signed in through the device grant (``relay.outbound.device_flow``)
has its refresh token in the spool (``GrantStore``), not in the YAML: it is
read at each refresh (so a sign-in by ``sluice providers connect`` in another
process is picked up), preferred over a configured one, replaced when the
provider rotates it, and marked failed when the provider refuses it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import httpx

from relay.config import OAuth2Settings
from relay.errors import SluiceError
from relay.http import client as http_client
from relay.model import GrantState
from relay.secrets import Redactor, SecretError
from relay.store.spool import OAuthGrant

__all__ = ["GrantStore", "OAuthError", "OAuthStatus", "SignInState", "TokenSource", "TokenState"]

log = logging.getLogger("sluice.oauth")

#: how many of its latest tokens and secrets a source masks in what it shows
_KNOWN = 16


class OAuthError(SluiceError):
    """No access token could be obtained. ``reauthorize`` means a human must act."""

    def __init__(self, text: str, *, reauthorize: bool = False) -> None:
        super().__init__(text)
        self.text = text
        self.reauthorize = reauthorize


class GrantStore(Protocol):
    """Where signed-in refresh tokens live (the spool)."""

    async def oauth_grant(self, provider: str) -> OAuthGrant | None: ...

    async def save_oauth_grant(self, provider: str, refresh_token: str) -> None: ...

    async def oauth_grant_failed(self, provider: str, error: str) -> None: ...


class TokenState(StrEnum):
    """Where a provider's access token stands."""

    UNKNOWN = "unknown"  #: no token asked for yet
    VALID = "valid"  #: a token in its lifetime
    EXPIRED = "expired"  #: the token's lifetime is over; the next use refreshes it
    ERROR = "error"  #: the endpoint failed (unreachable, 5xx); retried at the next use
    REAUTHORIZE = "reauthorize"  #: the grant was refused: a human must act


class SignInState(StrEnum):
    """What a provider with a device sign-in shows (grey, green, red)."""

    NEEDS_SIGN_IN = "needs sign-in"
    CONNECTED = "connected"
    #: revoked or refused: sign in again
    FAILED = "sign-in failed"


@dataclass(frozen=True, slots=True)
class OAuthStatus:
    state: TokenState
    valid_until: float | None
    last_refresh: float | None
    last_error: str
    #: with a device sign-in configured; else None
    sign_in: SignInState | None = None


class TokenSource:
    """Obtains and refreshes one provider's access token; safe to share across sessions."""

    def __init__(
        self,
        settings: OAuth2Settings,
        *,
        provider_id: str,
        clock: Callable[[], float] = time.time,
        grants: GrantStore | None = None,
    ) -> None:
        self.settings = settings
        self._provider_id = provider_id
        self._grants = grants
        #: the stored sign-in as last read (None: none stored, or no store)
        self._grant: OAuthGrant | None = None
        self._clock = clock
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._expires_at: float | None = None
        self._last_refresh: float | None = None
        self._last_error = ""
        self._reauthorize = False
        # A rotated refresh token (RFC 6749 § 6) replaces the configured one in memory.
        self._refresh_token: str | None = None
        #: the last tokens and secrets this source sent or got (for ``redact``), newest last
        self._known: tuple[str, ...] = ()

    def redact(self, text: str) -> str:
        """``text`` (from the token endpoint or the provider) with this source's secrets masked.

        Masks the client secret and refresh token last sent, the refresh
        tokens stored or rotated in, and the access tokens obtained.
        """
        return Redactor(self._known)(text)

    def _learn(self, *values: str | None) -> None:
        # Bounded: a daemon running for a year gets thousands of access tokens;
        # the client secret and refresh token come again with every refresh.
        new = [v for v in values if v]
        kept = [v for v in self._known if v not in new]
        self._known = (*kept, *new)[-_KNOWN:]

    def same_settings(self, settings: OAuth2Settings) -> bool:
        return settings == self.settings

    def status(self) -> OAuthStatus:
        if self._reauthorize:
            state = TokenState.REAUTHORIZE
        elif self._token is not None and not self._expired(self._clock()):
            state = TokenState.VALID
        elif self._last_error:
            state = TokenState.ERROR
        elif self._token is not None:
            state = TokenState.EXPIRED
        else:
            state = TokenState.UNKNOWN
        return OAuthStatus(
            state, self._expires_at, self._last_refresh, self._last_error, self._sign_in()
        )

    def _sign_in(self) -> SignInState | None:
        if not self.settings.device_authorization_url:
            return None
        failed = self._grant is not None and self._grant.state == GrantState.FAILED
        if self._reauthorize or failed:
            return SignInState.FAILED
        if self._grant is not None or self._refresh_token or self._configured_refresh():
            return SignInState.CONNECTED
        return SignInState.NEEDS_SIGN_IN

    def _configured_refresh(self) -> bool:
        return self.settings.refresh_token is not None

    async def sync_grant(self) -> None:
        """Re-read the stored sign-in (another process may have signed in since)."""
        if self._grants is not None:
            self._grant = await self._grants.oauth_grant(self._provider_id)

    def invalidate(self) -> None:
        """The server refused the token: fetch a new one next time."""
        self._token = None
        self._expires_at = None

    def _expired(self, now: float) -> bool:
        return self._expires_at is not None and now >= self._expires_at

    def _fresh(self, now: float) -> bool:
        if self._token is None:
            return False
        if self._expires_at is None:
            return True
        return now < self._expires_at - self.settings.refresh_margin

    async def token(self) -> str:
        """A usable access token, refreshed first when it is close to expiry.

        Raises:
            OAuthError: the endpoint is unreachable or refused (see ``reauthorize``).
        """
        async with self._lock:
            if self._fresh(self._clock()):
                assert self._token is not None
                return self._token
            return await self._refresh()

    async def _refresh(self) -> str:
        await self.sync_grant()
        grant = self._grant
        usable = grant is not None and grant.state == GrantState.CONNECTED
        stored = grant.refresh_token if grant is not None and usable else None
        if stored is not None and stored != self._refresh_token:
            self._refresh_token = stored  # a new sign-in replaces what we had
            self._reauthorize = False
        if (
            self.settings.device_authorization_url
            and not self._refresh_token
            and not self._configured_refresh()
        ):
            self._last_error = (
                f"{SignInState.NEEDS_SIGN_IN}: run `sluice providers connect {self._provider_id}` "
                "or use Connect on the admin page"
                if grant is None
                else f"{SignInState.FAILED} ({grant.error}); sign in again with "
                f"`sluice providers connect {self._provider_id}`"
            )
            raise OAuthError(self._last_error, reauthorize=True)
        form = await asyncio.to_thread(self._form)  # may read secret files
        self._learn(stored, form.get("client_secret"), form.get("refresh_token"))
        try:
            async with http_client() as client:
                resp = await client.post(
                    self.settings.token_url, data=form, headers={"Accept": "application/json"}
                )
        except httpx.HTTPError as exc:
            self._last_error = self.redact(
                f"token endpoint unreachable: {type(exc).__name__}: {exc}"
            )
            log.warning("provider %s: %s", self._provider_id, self._last_error)
            raise OAuthError(self._last_error) from None
        body = _json(resp)
        token = body.get("access_token")
        if resp.status_code != 200 or not isinstance(token, str) or not token:
            error = str(body.get("error") or f"HTTP {resp.status_code}")
            # Masked before it is cut: a cut through a secret would leave its start.
            described = self.redact(str(body.get("error_description") or ""))[:200]
            # RFC 6749 § 5.2: these mean the grant itself is no good; retrying won't help.
            fatal = error in {"invalid_grant", "invalid_client", "unauthorized_client"} or (
                resp.status_code in (400, 401) and "error" in body
            )
            self._last_error = self.redact(
                f"token refresh failed: {error}" + (f" ({described})" if described else "")
            )
            if fatal:
                self._reauthorize = True
                self.invalidate()
                self._last_error += "; re-authorisation needed (new refresh token or secret)"
                if self._grants is not None and stored is not None:
                    # Revoked or expired: the stored sign-in is no good any more.
                    self._refresh_token = None
                    await self._grants.oauth_grant_failed(self._provider_id, self.redact(error))
                    await self.sync_grant()
            log.warning("provider %s: %s", self._provider_id, self._last_error)
            raise OAuthError(self._last_error, reauthorize=fatal)
        now = self._clock()
        self._token = token
        rotated = body.get("refresh_token")
        self._learn(token, rotated if isinstance(rotated, str) else None)
        expires_in = body.get("expires_in")
        self._expires_at = now + float(expires_in) if isinstance(expires_in, int | float) else None
        if isinstance(rotated, str) and rotated and rotated != self._refresh_token:
            self._refresh_token = rotated
            if self._grants is not None and (stored is not None or self._sign_in() is not None):
                # RFC 6749 § 6: the old one may stop working; keep the new one durably.
                await self._grants.save_oauth_grant(self._provider_id, rotated)
                await self.sync_grant()
        self._last_refresh = now
        self._last_error = ""
        self._reauthorize = False
        log.info(
            "provider %s: access token refreshed (valid for %ss)",
            self._provider_id,
            expires_in if expires_in is not None else "?",
        )
        return token

    def _form(self) -> dict[str, str]:
        s = self.settings
        try:
            secret = s.client_secret.resolve() if s.client_secret is not None else None
            refresh = s.refresh_token.resolve() if s.refresh_token is not None else None
        except SecretError as exc:
            self._last_error = str(exc)
            raise OAuthError(f"oauth2 secret unavailable: {exc}") from None
        form = {"client_id": s.client_id}
        refresh_token = self._refresh_token or (
            refresh.get_secret_value() if refresh is not None else None
        )
        if refresh_token:
            form.update(grant_type="refresh_token", refresh_token=refresh_token)
        else:
            form["grant_type"] = "client_credentials"
        if secret is not None:
            form["client_secret"] = secret.get_secret_value()
        if s.scope:
            form["scope"] = s.scope
        return form


def _json(resp: httpx.Response) -> dict[str, object]:
    try:
        body = resp.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
