"""Sign-ins in progress: the device grant run by the daemon for the admin's Connect button.

``sluice providers connect ID`` runs the device grant in the operator's
terminal; the admin page cannot wait like that, so the daemon starts it here:
``start(provider)`` asks for the user code (shown at once), and a task polls
the token endpoint in the background until the person has signed in, then
stores the refresh token in the spool (``Spool.save_oauth_grant``), where the
provider's ``TokenSource`` finds it. One sign-in per provider at a time;
starting again replaces the one in progress. The tasks end with the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from enum import StrEnum

from relay.config import ProviderSettings
from relay.outbound.device_flow import DeviceCode, DeviceFlow, DeviceFlowError
from relay.secrets import SecretError

__all__ = ["SignIn", "SignInProgress", "SignIns"]

log = logging.getLogger("sluice.oauth")


class SignInProgress(StrEnum):
    """How a sign-in started from the admin stands."""

    PENDING = "pending"  #: waiting for the person to sign in
    CONNECTED = "connected"  #: signed in; the refresh token is stored
    FAILED = "failed"  #: refused, expired, or the token could not be stored


@dataclass(frozen=True, slots=True)
class SignIn:
    """One provider's sign-in: what to show, and how it stands."""

    provider: str
    user_code: str
    verification_uri: str
    expires_at: float
    state: SignInProgress = SignInProgress.PENDING
    error: str = ""
    verification_uri_complete: str | None = None


class SignIns:
    """Device-grant sign-ins started from the admin, one per provider."""

    def __init__(
        self,
        save: Callable[[str, str], Awaitable[None]],
        *,
        clock: Callable[[], float] = time.time,
        slow_down_step: float = 5.0,
    ) -> None:
        self._save = save
        self._clock = clock
        self._slow_down_step = slow_down_step
        self._current: dict[str, SignIn] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def get(self, provider: str) -> SignIn | None:
        return self._current.get(provider)

    async def start(self, settings: ProviderSettings) -> SignIn:
        """Ask for a user code and wait for the sign-in in the background.

        Raises:
            DeviceFlowError: no device sign-in is configured, or the endpoint refused.
        """
        o = settings.oauth2
        if o is None or not o.device_authorization_url:
            raise DeviceFlowError(
                "not_configured",
                f"provider {settings.id} has no oauth2.device_authorization_url",
            )
        try:
            secret = o.client_secret.resolve().get_secret_value() if o.client_secret else None
        except SecretError as exc:
            raise DeviceFlowError("no_client_secret", str(exc)) from exc
        flow = DeviceFlow(o, secret, clock=self._clock, slow_down_step=self._slow_down_step)
        code = await flow.start()
        sign_in = SignIn(
            settings.id,
            code.user_code,
            code.verification_uri,
            code.expires_at,
            verification_uri_complete=code.verification_uri_complete,
        )
        old = self._tasks.pop(settings.id, None)
        if old is not None:
            old.cancel()
        self._current[settings.id] = sign_in
        self._tasks[settings.id] = asyncio.create_task(
            self._wait(settings.id, flow, code), name=f"sign-in-{settings.id}"
        )
        return sign_in

    async def _wait(self, provider: str, flow: DeviceFlow, code: DeviceCode) -> None:
        try:
            grant = await flow.wait(code)
            await self._save(provider, grant.refresh_token)
        except DeviceFlowError as exc:
            self._finish(provider, SignInProgress.FAILED, exc.text)
            log.warning("provider %s: sign-in failed: %s", provider, exc.text)
        except Exception as exc:  # stored nothing: say so on the page, never crash the daemon
            self._finish(provider, SignInProgress.FAILED, f"{type(exc).__name__}: {exc}")
            log.exception("provider %s: sign-in failed", provider)
        else:
            self._finish(provider, SignInProgress.CONNECTED, "")
            log.info("provider %s: signed in; refresh token stored in the spool", provider)
        finally:
            self._tasks.pop(provider, None)

    def _finish(self, provider: str, state: SignInProgress, error: str) -> None:
        current = self._current.get(provider)
        if current is not None:
            self._current[provider] = replace(current, state=state, error=error)

    async def aclose(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
