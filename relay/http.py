"""The HTTP client settings: how Sluice speaks to web endpoints (webhooks, OAuth).

Every HTTP request Sluice makes goes through a client from ``client()``, so
the things that should not differ between callers are decided once here:

* ``User-Agent: Sluice/VERSION``, so a receiver's logs say who called;
* a timeout on every phase (connect, read, write, pool), ``DEFAULT_TIMEOUT``
  unless the caller has its own (a webhook's ``timeout``): a hung endpoint
  must never hold mail or the daemon;
* redirects are not followed: a token endpoint or a webhook receiver that
  moved is a configuration to fix, and following a redirect could send a
  signed event or a client secret to a host nobody configured;
* the environment's proxy and CA settings are honoured (``HTTPS_PROXY``,
  ``NO_PROXY``, ``SSL_CERT_FILE``), as any client on the host would;
  certificates are always verified.

The callers: ``relay.notify.webhooks``, ``relay.outbound.oauth`` and
``relay.outbound.device_flow``. httpx already does the HTTP; what is
hand-written here is only the choice of its options.
"""

from __future__ import annotations

import httpx

from relay import __version__

__all__ = ["DEFAULT_TIMEOUT", "USER_AGENT", "client"]

USER_AGENT = f"Sluice/{__version__}"

#: seconds per phase; web endpoints answer in well under this
DEFAULT_TIMEOUT = 20.0


def client(*, timeout: float = DEFAULT_TIMEOUT, user_agent: str = USER_AGENT) -> httpx.AsyncClient:
    """A new ``httpx.AsyncClient`` with Sluice's settings; use it as ``async with``.

    Args:
        timeout: seconds for each phase of a request (a request may override it).
        user_agent: the ``User-Agent`` header; Sluice's own unless a caller names itself.
    """
    return httpx.AsyncClient(
        headers={"User-Agent": user_agent},
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        verify=True,
        trust_env=True,
    )
