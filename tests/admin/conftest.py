"""Admin fixtures: the app over httpx's ASGI transport, against a real running Sluice."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest

from admin.app import create_app
from admin.auth import Credentials
from relay.config import AdminSettings
from tests.conftest import Running

AppClientFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def app_client() -> AppClientFactory:
    """``async with app_client(s, password="pw") as client:`` talks to a fresh admin app.

    The app is built over the backend the daemon hands its own admin, of the
    running daemon ``s``; only the HTTP hop is in-process.
    """

    @asynccontextmanager
    async def make(
        s: Running,
        *,
        base_url: str = "http://127.0.0.1",
        password: str | None = None,
        token: str | None = None,
        **settings: Any,
    ) -> AsyncIterator[httpx.AsyncClient]:
        admin = AdminSettings(**{"listen": "127.0.0.1:0", **settings})
        creds = Credentials.from_settings(admin)
        if password is not None:
            creds.password = password
        if token is not None:
            creds.api_token = token
        app = create_app(s.daemon.admin_backend(), admin, creds)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client

    return make
