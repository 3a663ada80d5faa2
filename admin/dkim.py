"""The DKIM page: per signing domain, whether mail is signed, and the DNS record to publish.

Read-only, from the signer the running config built (``relay.outbound.dkim``):
a domain listed there has a key that loaded (a key that does not load stops
the config at ``sluice check``, start and reload), so "configured" means
"signing"; the counts say whether mail was signed since the daemon started.
Its own module and route, so that the provider pages and forms stay apart.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from admin.backend import state
from admin.pages import render
from relay.dkim import record_strings

__all__ = ["routes"]


async def dkim_page(request: Request) -> Response:
    """Each configured domain: selector, key, signed (count, last), and its TXT record."""
    signer = state(request).backend.snapshot().providers.dkim
    domains = [
        {"status": s, "strings": record_strings(s.record)}
        for s in (signer.status() if signer is not None else [])
    ]
    return render(request, "dkim.html", {"domains": domains})


routes = [Route("/dkim", dkim_page)]
