"""The provider pages and API show usage against the daily limit, with its unit and window."""

from __future__ import annotations

from tests.admin.conftest import AppClientFactory
from tests.conftest import SluiceFactory, provider_for, smtp_send
from tests.upstream import TestUpstream

MESSAGE = b"From: a@example.org\r\nTo: x@example.net\r\nSubject: usage\r\n\r\nhello\r\n"


async def test_usage_shows_unit_and_window(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    m365 = provider_for(
        upstream,
        "m365",
        daily_limit=10,
        limit_unit="recipients",
        limit_window="rolling_24h",
        rate="30/m",
    )
    plain = provider_for(upstream, "plain", priority=200)
    async with sluice([m365, plain]) as s:
        await smtp_send(s.port, "a@example.org", ["x@example.net", "y@example.net"], MESSAGE)
        await upstream.wait_for(1)
        await s.wait_idle()
        async with app_client(s) as c:
            listing = (await c.get("/providers")).text
            assert "2 / 10 recipients, last 24 h" in listing
            assert "0 messages today (UTC), no daily limit" in listing
            page = (await c.get("/providers/m365")).text
            assert "2 / 10 recipients, last 24 h" in page and "30/60s" in page
            data = (await c.get("/api/providers/m365")).json()
    view = data.get("provider", data)
    assert view["sent_today"] == 2 and view["daily_limit"] == 10
    assert (view["limit_unit"], view["limit_window"]) == ("recipients", "rolling_24h")
