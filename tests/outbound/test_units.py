"""Pure parts: rewrites, routing, token bucket, daily limit windows, breaker, token source."""

from __future__ import annotations

import calendar
from typing import Any

import pytest

from relay.config import Config, OAuth2Settings, Rate
from relay.message import HeaderBlock, bare_line_ending, rewrite
from relay.model import Delivered, Scope, TempFailure
from relay.outbound.health import Health
from relay.outbound.limits import Quota, TokenBucket, next_utc_midnight, utc_window
from relay.outbound.oauth import OAuthError, TokenSource
from relay.outbound.replies import AcrossTransactions
from relay.outbound.routing import route_for
from relay.outbound.session import classify
from tests.outbound.token_server import TokenServer

MSG = (
    b"Received: from x\r\n\tby y; date\r\n"
    b"From: =?utf-8?q?J=C3=B6rg?= <jorg@example.org>\r\n"
    b"X-Sluice-Provider: bulk\r\n"
    b"Subject: folded\r\n  subject line\r\n"
    b"\r\n"
    b"From: not a header, body text\r\nX-Sluice-Provider: in the body\r\n"
)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------ rewrite


def test_header_removed_and_everything_else_byte_identical() -> None:
    out = rewrite(MSG)
    assert out == MSG.replace(b"X-Sluice-Provider: bulk\r\n", b"", 1)
    assert b"X-Sluice-Provider: in the body" in out  # the body is never touched


def test_nothing_to_do_returns_the_same_bytes() -> None:
    data = b"From: a@b\r\nSubject: x\r\n\r\nbody\r\n"
    assert rewrite(data) is data


def test_send_from_keeps_original_from_as_reply_to() -> None:
    out = rewrite(MSG, send_from="noreply@verified.test", send_from_name="Billing, Inc.")
    head, body = out.split(b"\r\n\r\n", 1)
    assert b'From: "Billing, Inc." <noreply@verified.test>' in head
    assert b"Reply-To: =?utf-8?q?J=C3=B6rg?= <jorg@example.org>" in head
    assert b"<jorg@example.org>" not in head.split(b"Reply-To")[0]
    assert body == MSG.split(b"\r\n\r\n", 1)[1]


def test_send_from_without_from_header_adds_one() -> None:
    out = rewrite(b"Subject: x\r\n\r\nbody\r\n", send_from="n@v.test")
    assert out == b"Subject: x\r\nFrom: n@v.test\r\n\r\nbody\r\n"


def test_header_value_unfolds() -> None:
    head = HeaderBlock(MSG)
    assert head.value("subject") == "folded subject line"
    assert head.value("x-sluice-provider") == "bulk"
    assert head.value("reply-to") is None


# ------------------------------------------------------------------ routing


def _config(**extra: Any) -> Config:
    return Config.model_validate(
        {
            "providers": [
                {"id": "a", "host": "h", "priority": 50},
                {"id": "b", "host": "h", "priority": 10},
                {"id": "c", "host": "h", "enabled": False},
            ],
            **extra,
        }
    )


def test_default_order_is_by_priority_and_skips_disabled() -> None:
    assert route_for(_config(), "s@x.org", "r@y.net", HeaderBlock(b"\r\n")) == ["b", "a"]


@pytest.mark.parametrize(
    ("sender", "rcpt", "data", "want"),
    [
        ("s@billing.x.org", "r@y.net", b"\r\n", ["a"]),
        ("s@x.org", "r@mx.partner.test", b"\r\n", ["a"]),  # c is disabled
        ("s@x.org", "r@partner.test", b"\r\n", ["a"]),
        ("s@x.org", "r@y.net", b"X-Class: Bulk\r\n\r\n", ["a", "b"]),
        ("s@x.org", "r@y.net", b"X-Sluice-Provider: a\r\n\r\n", ["a"]),
        ("s@x.org", "r@y.net", b"X-Sluice-Provider: nope\r\n\r\n", ["b", "a"]),
        ("s@x.org", "r@y.net", b"X-Sluice-Provider: c\r\n\r\n", ["b", "a"]),  # disabled
    ],
)
def test_routes(sender: str, rcpt: str, data: bytes, want: list[str]) -> None:
    cfg = _config(
        routes=[
            {"sender_domain": ["billing.x.org"], "providers": ["a"]},
            {"recipient_domain": ["*.partner.test"], "providers": ["c", "a"]},
            {"header": "X-Class: bulk", "providers": ["a", "b"]},
        ]
    )
    assert route_for(cfg, sender, rcpt, HeaderBlock(data)) == want


# ------------------------------------------------------------------- limits


def test_token_bucket_spreads_a_burst() -> None:
    clock = Clock(100.0)
    bucket = TokenBucket(Rate(2, 1.0), clock=clock)
    assert [bucket.reserve(10) for _ in range(4)] == [0.0, 0.0, 0.5, 1.0]
    assert bucket.reserve(1.2) is None  # would wait 1.5 s
    clock.now += 1.5
    assert bucket.reserve(0) == 0.0


def test_slow_rate_allows_one_at_a_time() -> None:
    clock = Clock(0.0)
    bucket = TokenBucket(Rate(10, 60.0), clock=clock)
    assert bucket.reserve(0) == 0.0
    assert bucket.reserve(0) is None
    assert bucket.next_free() == pytest.approx(6.0)


class Counters:
    def __init__(self) -> None:
        self.values: dict[tuple[str, str], int] = {}

    async def counter_add(self, name: str, window: str, delta: int = 1) -> int:
        key = (name, window)
        self.values[key] = self.values.get(key, 0) + delta
        return self.values[key]

    async def counter_get(self, name: str, window: str) -> int:
        return self.values.get((name, window), 0)

    async def counter_since(self, name: str, window: str) -> dict[str, int]:
        return {w: v for (n, w), v in self.values.items() if n == name and w >= window}

    async def counter_prune(self, name: str, before: str) -> None:
        for key in [k for k in self.values if k[0] == name and k[1] < before]:
            del self.values[key]


async def test_daily_limit_counts_durably_and_resets_at_utc_midnight() -> None:
    day = calendar.timegm((2026, 3, 1, 23, 59, 0))
    clock, counters = Clock(float(day)), Counters()
    limit = Quota("p", counters, clock=clock)
    assert (await limit.reserve(1, 2)).n == 1
    second = await limit.reserve(1, 2)
    assert second.n == 1
    assert (await limit.reserve(1, 2)).n == 0
    assert limit.reopens_at(clock.now) == next_utc_midnight(day) == day + 60
    await limit.give_back(second)  # one of them delivered nothing
    assert (await limit.reserve(1, 2)).n == 1
    assert counters.values[("provider:p:messages", "2026-03-01")] == 2
    # A new process on the same counters sees today's usage.
    assert (await Quota("p", counters, clock=clock).reserve(1, 2)).n == 0
    clock.now += 61
    assert utc_window(clock.now) == "2026-03-02"
    assert (await limit.reserve(1, 2)).n == 1
    assert await limit.used() == 1


# ------------------------------------------------------------------- health


def test_breaker_opens_after_threshold_and_closes_on_success() -> None:
    h = Health()
    assert h.view(0).state == "unknown"
    h.record_failure("refused", 10, threshold=2, cooldown=30)
    assert h.view(10).state == "error" and h.blocked_until(10) is None
    h.record_failure("refused", 11, threshold=2, cooldown=30)
    assert h.view(11).state == "cooldown" and h.blocked_until(11) == 41
    assert h.blocked_until(41) is None  # half-open: may be probed
    h.record_failure("refused", 42, threshold=2, cooldown=30)
    assert h.blocked_until(42) == 72  # the probe failed: open again
    h.record_ok(80)
    assert h.view(80).state == "ok" and h.last_error == "refused"


def test_throttle_replies_are_the_providers_fault() -> None:
    out = classify("a@x", code=451, text="4.7.1 rate limited, try again in 3 minutes")
    assert isinstance(out, TempFailure) and out.provider_fault and out.retry_after == 180
    out = classify("a@x", code=450, text="4.7.0 throttled")
    assert isinstance(out, TempFailure) and out.provider_fault
    out = classify("a@x", code=451, text="4.3.0 mailbox busy")
    assert isinstance(out, TempFailure) and not out.provider_fault


# -------------------------------------------------------------------- oauth


async def test_token_source_states(token_server: TokenServer) -> None:
    clock = Clock(1000.0)
    settings = OAuth2Settings(
        token_url=token_server.url,
        client_id="app",
        refresh_token="refresh-T0KEN",  # type: ignore[arg-type]
        refresh_margin=60,
    )
    source = TokenSource(settings, provider_id="p", clock=clock)
    assert source.status().state == "unknown"
    token_server.responses = [
        (200, {"access_token": "access-T0KEN-1", "expires_in": 120, "refresh_token": "rotated"}),
        (503, {}),
        TokenServer.issue("access-T0KEN-2", 120),
        (401, {"error": "invalid_client"}),
    ]
    assert await source.token() == "access-T0KEN-1"
    assert source.status().state == "valid" and source.status().valid_until == 1120
    clock.now += 30
    assert await source.token() == "access-T0KEN-1"  # cached, not yet within the margin
    clock.now += 40  # 50 s left < 60 s margin: refresh before expiry
    with pytest.raises(OAuthError) as exc:
        await source.token()
    assert not exc.value.reauthorize  # a 503 is temporary
    assert source.status().state == "valid"  # the old token has not expired yet
    assert await source.token() == "access-T0KEN-2"
    assert token_server.requests[2]["refresh_token"] == "rotated"  # RFC 6749 § 6 rotation
    source.invalidate()
    with pytest.raises(OAuthError) as exc:
        await source.token()
    assert exc.value.reauthorize
    status = source.status()
    assert status.state == "reauthorize" and "invalid_client" in status.last_error


async def test_token_endpoint_down_is_an_error_not_a_crash() -> None:
    settings = OAuth2Settings(token_url="http://127.0.0.1:1/token", client_id="app")
    source = TokenSource(settings, provider_id="p")
    with pytest.raises(OAuthError, match="unreachable"):
        await source.token()
    assert source.status().state == "error"


def test_a_long_non_ascii_send_from_name_is_folded_with_crlf() -> None:
    """The encoded name is folded; its fold must be CRLF like every other line."""
    out = rewrite(MSG, send_from="n@v.test", send_from_name="Ä" * 60)
    head = out.split(b"\r\n\r\n", 1)[0]
    assert b"\r\n " in head  # it was folded
    assert bare_line_ending(out) is None


# ------------------------------------------- the same 4xx across transactions (VERP)


def _deferred(rcpt: str, text: str = "451 4.3.0 Temporary system problem") -> TempFailure:
    return TempFailure(rcpt, int(text[:3]), text)


def test_the_same_4xx_to_two_domains_speaks_for_the_provider() -> None:
    across = AcrossTransactions(window=60, domains=2)
    first = _deferred("a@one.example")
    across.note("p", [first], 100.0)
    assert not across.speaks_for_provider("p", first, 100.0)
    # Echoed addresses and spacing do not make the replies differ.
    second = _deferred("b@two.example", "451  4.3.0 <b@two.example>: Temporary system problem")
    across.note("p", [second], 110.0)
    lifted, changed = across.lift("p", [(1, first), (2, second)], 110.0)
    assert all(isinstance(o, TempFailure) and o.scope is Scope.PAUSE for _, o in lifted)
    assert changed == [o for _, o in lifted] and all(o.moves_on for o in changed)
    # Another provider, and the same provider after the window, know nothing of it.
    assert not across.speaks_for_provider("q", second, 110.0)
    assert not across.speaks_for_provider("p", second, 165.0)


def test_one_domain_a_delivery_or_another_reply_do_not_add_up() -> None:
    across = AcrossTransactions(window=60, domains=2)
    same = [_deferred(f"u{i}@one.example") for i in range(5)]
    for o in same:
        across.note("p", [o], 100.0)
    assert not across.speaks_for_provider("p", same[0], 100.0)  # that domain's own trouble
    other = _deferred("x@two.example", "451 4.3.2 something else")
    across.note("p", [other], 100.0)
    assert not across.speaks_for_provider("p", other, 100.0)
    across.note("p", [_deferred("y@two.example")], 101.0)
    assert across.speaks_for_provider("p", same[0], 101.0)
    across.note("p", [Delivered("z@three.example", 250, "250 OK")], 102.0)
    assert not across.speaks_for_provider("p", same[0], 102.0)  # not everyone, after all


def test_greylisting_and_a_mailbox_status_stay_the_recipients() -> None:
    across = AcrossTransactions(window=60, domains=2)
    for text in ("451 4.7.1 Greylisted, please try again later", "452 4.2.2 over quota"):
        outcomes = [_deferred("a@one.example", text), _deferred("b@two.example", text)]
        across.note("p", outcomes, 100.0)
        lifted, changed = across.lift("p", list(enumerate(outcomes)), 100.0)
        assert changed == [] and [o for _, o in lifted] == outcomes


def test_what_it_keeps_is_bounded() -> None:
    across = AcrossTransactions(window=60, domains=2)
    for i in range(1000):
        across.note("p", [_deferred(f"a@d{i}.example", f"451 4.3.0 reply {i}")], 100.0)
        across.note("p", [_deferred(f"a@d{i}.example")], 100.0)
    assert sum(len(d) for keys in across._seen.values() for d in keys.values()) <= 16 * 16
