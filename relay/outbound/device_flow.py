"""Signing a provider in without copying tokens by hand: the OAuth 2.0 device grant (RFC 8628).

Microsoft 365 (and other XOAUTH2 providers) want a refresh token obtained by a
person signing in. On a server there is no browser, so Sluice asks the
provider's *device authorization endpoint* for a short user code, shows it
with the verification URL (``sluice providers connect ID``, or the admin's
**Connect** button), and polls the token endpoint until the person has signed
in somewhere else. The refresh token it gets is stored in the spool, never in
the YAML, and ``TokenSource`` uses it from then on.

The polling follows RFC 8628 § 3.5: ``authorization_pending`` means wait
``interval`` and ask again; ``slow_down`` adds 5 seconds to the interval for
good; ``expired_token`` and ``access_denied`` end the attempt. Tokens are
never logged, and what an endpoint answers is shown only through a
``relay.secrets.Redactor`` of what was sent to it (the client secret, the
device code): an endpoint may echo the request in its error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from relay.config import OAuth2Settings
from relay.errors import SluiceError
from relay.http import client as http_client
from relay.secrets import Redactor

__all__ = ["DEVICE_GRANT", "DeviceCode", "DeviceFlow", "DeviceFlowError", "Grant"]

#: RFC 8628 § 3.4: the grant type of the token request
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


class DeviceFlowError(SluiceError):
    """The sign-in did not complete; ``error`` is the endpoint's code (RFC 8628 § 3.5)."""

    def __init__(self, error: str, text: str) -> None:
        super().__init__(text)
        self.error = error
        self.text = text


@dataclass(frozen=True, slots=True)
class DeviceCode:
    """What the person signing in needs (user code and URL), and what we poll with."""

    user_code: str
    verification_uri: str
    expires_at: float
    interval: float
    device_code: str = field(repr=False)
    #: the URL with the code filled in, when the endpoint offers one
    verification_uri_complete: str | None = None


@dataclass(frozen=True, slots=True)
class Grant:
    """The outcome of a completed sign-in."""

    refresh_token: str = field(repr=False)
    access_token: str = field(repr=False)
    expires_in: float | None


class DeviceFlow:
    """One provider's device authorization: ``start()``, then ``wait(code)``."""

    def __init__(
        self,
        settings: OAuth2Settings,
        client_secret: str | None = None,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        slow_down_step: float = 5.0,
    ) -> None:
        if not settings.device_authorization_url:
            raise DeviceFlowError(
                "not_configured", "oauth2.device_authorization_url is not set for this provider"
            )
        self.settings = settings
        self._secret = client_secret
        self._clock = clock
        self._sleep = sleep
        #: RFC 8628 § 3.5: "the interval MUST be increased by 5 seconds" (tests shorten it)
        self._slow_down_step = slow_down_step

    def _client_form(self) -> dict[str, str]:
        form = {"client_id": self.settings.client_id}
        if self._secret:
            form["client_secret"] = self._secret
        return form

    async def _post(self, url: str, form: dict[str, str]) -> tuple[int, dict[str, object]]:
        try:
            async with http_client() as client:
                resp = await client.post(url, data=form, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise DeviceFlowError(
                "unreachable", _redact(form, f"{url} is unreachable: {type(exc).__name__}: {exc}")
            ) from None
        try:
            body = resp.json()
        except ValueError:
            body = {}
        return resp.status_code, body if isinstance(body, dict) else {}

    async def start(self) -> DeviceCode:
        """Ask for a user code (RFC 8628 § 3.1-3.2).

        Raises:
            DeviceFlowError: the endpoint is unreachable or refused.
        """
        url = self.settings.device_authorization_url
        assert url is not None
        form = self._client_form()
        if self.settings.scope:
            form["scope"] = self.settings.scope
        status, body = await self._post(url, form)
        device_code = body.get("device_code")
        user_code = body.get("user_code")
        # Microsoft's endpoint said "verification_url" before the RFC settled.
        uri = body.get("verification_uri") or body.get("verification_url")
        if status != 200 or not all(
            isinstance(v, str) and v for v in (device_code, user_code, uri)
        ):
            error = _redact(form, str(body.get("error") or f"HTTP {status}"))
            raise DeviceFlowError(
                error, f"device authorization refused: {_describe(form, body, error)}"
            )
        assert isinstance(device_code, str) and isinstance(user_code, str) and isinstance(uri, str)
        expires_in = _number(body.get("expires_in"), 900.0)
        complete = body.get("verification_uri_complete")
        return DeviceCode(
            user_code=user_code,
            verification_uri=uri,
            expires_at=self._clock() + expires_in,
            # § 3.2: "If no value is provided, clients MUST use 5 as the default."
            interval=_number(body.get("interval"), 5.0),
            device_code=device_code,
            verification_uri_complete=complete if isinstance(complete, str) else None,
        )

    async def wait(self, code: DeviceCode) -> Grant:
        """Poll the token endpoint until the person signed in, refused, or the code expired.

        Raises:
            DeviceFlowError: ``expired_token``, ``access_denied`` or another refusal.
        """
        interval = code.interval
        form = {**self._client_form(), "grant_type": DEVICE_GRANT, "device_code": code.device_code}
        while True:
            if self._clock() >= code.expires_at:
                raise DeviceFlowError(
                    "expired_token", "the code expired before anyone signed in; start again"
                )
            await self._sleep(interval)
            status, body = await self._post(self.settings.token_url, form)
            error = body.get("error")
            if status == 200 and isinstance(body.get("access_token"), str):
                refresh = body.get("refresh_token")
                if not isinstance(refresh, str) or not refresh:
                    raise DeviceFlowError(
                        "no_refresh_token",
                        "signed in, but the provider gave no refresh token "
                        "(add the offline_access scope)",
                    )
                access = body["access_token"]
                assert isinstance(access, str)
                return Grant(refresh, access, _number(body.get("expires_in"), 0.0) or None)
            if error == "authorization_pending":
                continue
            if error == "slow_down":
                interval += self._slow_down_step
                continue
            if error == "expired_token":
                raise DeviceFlowError(
                    "expired_token", "the code expired before anyone signed in; start again"
                )
            if error == "access_denied":
                raise DeviceFlowError("access_denied", "the sign-in was refused")
            err = _redact(form, str(error or f"HTTP {status}"))
            raise DeviceFlowError(err, f"sign-in failed: {_describe(form, body, err)}")


def _number(value: object, default: float) -> float:
    return float(value) if isinstance(value, int | float) and value >= 0 else default


def _redact(form: dict[str, str], text: str) -> str:
    """``text`` with the secrets of ``form`` masked (the client secret, the device code)."""
    return Redactor(v for k, v in form.items() if k in ("client_secret", "device_code"))(text)


def _describe(form: dict[str, str], body: dict[str, object], error: str) -> str:
    described = _redact(form, str(body.get("error_description") or ""))[:200]
    return f"{error} ({described})" if described else error
