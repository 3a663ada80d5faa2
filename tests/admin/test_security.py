"""Login, sessions, API credentials, CSRF, Host/Origin checks and the login brake."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from admin.app import create_app
from admin.auth import DEVICE_COOKIE, Credentials, LoginLimiter, hash_password, source_of
from relay.config import AdminSettings
from tests.admin.conftest import AppClientFactory
from tests.admin.test_pages import csrf_of
from tests.conftest import Running, SluiceFactory, provider_for
from tests.daemon_proc import run_cli
from tests.upstream import TestUpstream


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_login_required_when_a_password_is_set(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory, tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text("right-pw\n")
    async with sluice([provider_for(upstream)]) as s:
        async with app_client(s, password_file=tmp_path / "pw") as c:
            for path in ("/", "/queue?status=deferred", "/providers/up1"):
                r = await c.get(path)
                assert r.status_code == 303, path
                assert r.headers["location"].startswith("/login?next=%2F"), path
            for path in ("/api/queue", "/metrics", "/api/messages/X/raw"):
                r = await c.get(path)
                assert r.status_code == 401, path
                assert r.headers["www-authenticate"].startswith("Basic")
            assert (await c.post("/api/reload")).status_code == 401
            # Public: the login form, static files and liveness.
            for path in ("/login", "/static/admin.css", "/healthz"):
                assert (await c.get(path)).status_code == 200, path
            assert "No admin password" not in (await c.get("/login")).text
            # A probe learns whether a reload failed, not the config text that failed.
            health = (await c.get("/healthz")).json()
            assert health["last_reload_failed"] is False and "last_reload_error" not in health


async def test_login_form_session_cookie_and_logout(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory, tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text("right-pw\n")
    async with sluice([provider_for(upstream)]) as s:
        async with app_client(s, password_file=tmp_path / "pw") as c:
            page = await c.get("/login?next=/queue")
            cookie = page.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
            token = csrf_of(page.text)
            form = {"username": "admin", "password": "right-pw", "next": "/queue"}
            # Login CSRF: no token, no login.
            assert (await c.post("/login", data=form)).status_code == 403
            wrong = await c.post("/login", data={**form, "password": "nope", "csrf_token": token})
            assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
            r = await c.post("/login", data={**form, "csrf_token": token})
            assert r.status_code == 303 and r.headers["location"] == "/queue"
            assert "HttpOnly" in r.headers["set-cookie"]
            queue = await c.get("/queue")
            assert queue.status_code == 200 and "Log out admin" in queue.text
            # The token changed at login: the one from before is refused.
            assert csrf_of(queue.text) != token
            stale = await c.post("/api/reload", headers={"x-csrf-token": token})
            assert stale.status_code == 403
            r = await c.post("/logout", data={"csrf_token": csrf_of(queue.text)})
            assert r.status_code == 303 and r.headers["location"] == "/login"
            assert (await c.get("/queue")).status_code == 303


async def test_login_never_redirects_off_site(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory, tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text("pw\n")
    async with sluice([provider_for(upstream)]) as s:
        async with app_client(s, password_file=tmp_path / "pw") as c:
            token = csrf_of((await c.get("/login")).text)
            for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
                r = await c.post(
                    "/login",
                    data={
                        "username": "admin",
                        "password": "pw",
                        "next": target,
                        "csrf_token": token,
                    },
                )
                assert r.headers["location"] == "/", target
                c.cookies.clear()
                token = csrf_of((await c.get("/login")).text)


async def test_argon2_hash_basic_auth_and_bearer_token(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory, tmp_path: Path
) -> None:
    (tmp_path / "token").write_text("api-token-1\n")
    hashed = hash_password("hashed-pw")
    async with sluice([provider_for(upstream)]) as s:
        async with app_client(
            s, username="ops", password_hash=hashed, api_token_file=tmp_path / "token"
        ) as c:
            ok = await c.get("/api/queue", headers={"authorization": basic("ops", "hashed-pw")})
            assert ok.status_code == 200
            for user, pw in (("ops", "nope"), ("admin", "hashed-pw")):
                r = await c.get("/api/queue", headers={"authorization": basic(user, pw)})
                assert r.status_code == 401
            r = await c.get("/metrics", headers={"authorization": "Bearer api-token-1"})
            assert r.status_code == 200
            bad = await c.get("/metrics", headers={"authorization": "Bearer api-token-2"})
            assert bad.status_code == 401
            # Scripts with a token or Basic credentials need no CSRF token.
            r = await c.post("/api/reload", headers={"authorization": "Bearer api-token-1"})
            assert r.status_code == 200
            r = await c.post(
                "/api/queue/delete",
                json={"queue_ids": ["NOPE"]},
                headers={"authorization": basic("ops", "hashed-pw")},
            )
            assert r.status_code == 200 and r.json()["missing"] == ["NOPE"]
            # A login with the hash works in the form too.
            token = csrf_of((await c.get("/login")).text)
            form = {"username": "ops", "password": "hashed-pw", "csrf_token": token}
            assert (await c.post("/login", data=form)).status_code == 303
            assert (await c.get("/")).status_code == 200


async def test_csrf_on_every_cookie_authenticated_change(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    async with sluice([provider_for(upstream)]) as s, app_client(s) as c:
        token = csrf_of((await c.get("/")).text)  # the open admin's anonymous session
        changes = [
            ("/queue/action", {"action": "delete", "queue_id": "X"}),
            ("/messages/X/action", {"action": "retry"}),
            ("/reload", {}),
            ("/providers/up1/test", {}),
            ("/api/reload", None),
            ("/api/queue/delete", None),
            ("/api/messages/X/delete", None),
            ("/api/providers/up1/test", None),
        ]
        for path, form in changes:
            r = await c.post(path, data=form) if form is not None else await c.post(path)
            assert r.status_code == 403, path
            r = await c.post(path, data={**(form or {}), "csrf_token": "wrong"})
            assert r.status_code == 403, path
        good = await c.post("/queue/action", data={"action": "retry", "csrf_token": token})
        assert good.status_code == 303
        r = await c.post("/api/reload", headers={"x-csrf-token": token})
        assert r.status_code == 200


async def test_host_header_and_origin_checks(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    async with sluice([provider_for(upstream)]) as s:
        async with app_client(s, allowed_hosts=["sluice.internal"]) as c:
            for host in ("127.0.0.1:8025", "localhost", "[::1]:8025", "sluice.internal:8025"):
                r = await c.get("/api/queue", headers={"host": host})
                assert r.status_code == 200, host
            # DNS rebinding: a foreign name that resolves to 127.0.0.1.
            for host in ("evil.example", "evil.example:8025", "127.0.0.1.evil.example", ""):
                r = await c.get("/", headers={"host": host})
                assert r.status_code == 421, host
            cross = [
                {"origin": "http://evil.example"},
                {"origin": "null"},
                {"sec-fetch-site": "cross-site"},
                {"origin": "http://127.0.0.1:9999"},
            ]
            for headers in cross:
                r = await c.post("/api/reload", headers=headers)
                assert r.status_code == 403, headers
                assert "cross-site" in r.text
            c.cookies.clear()  # a script: no session cookie, so no CSRF token either
            r = await c.post("/api/reload", headers={"origin": "http://127.0.0.1"})
            assert r.status_code == 200


async def test_failed_logins_are_slowed_down(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory, tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text("right\n")
    async with sluice([provider_for(upstream)]) as s:
        async with app_client(s, password_file=tmp_path / "pw") as c:
            token = csrf_of((await c.get("/login")).text)
            form = {"username": "admin", "password": "guess", "csrf_token": token}
            codes = [(await c.post("/login", data=form)).status_code for _ in range(6)]
            assert codes == [401] * 5 + [429]
            # The right password is refused too while the brake is on...
            r = await c.post("/login", data={**form, "password": "right"})
            assert r.status_code == 429
            # ...and Basic auth from the same client as well.
            r = await c.get("/api/queue", headers={"authorization": basic("admin", "right")})
            assert r.status_code == 429 and int(r.headers["retry-after"]) > 0


async def test_open_admin_warns_on_every_page(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    async with sluice([provider_for(upstream)]) as s, app_client(s) as c:
        for path in ("/", "/providers", "/queue", "/log", "/providers/up1"):
            assert "No admin password is configured" in (await c.get(path)).text, path


async def test_a_stale_cookie_gets_no_csrf_exemption(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    async with sluice([provider_for(upstream)]) as s, app_client(s) as c:
        c.cookies.set("sluice_session", "forged-or-expired")
        r = await c.post("/api/reload")
        assert r.status_code == 403 and "reload the page" in r.text
        # Reloading the page issues a fresh session whose token works.
        token = csrf_of((await c.get("/")).text)
        assert (await c.post("/api/reload", headers={"x-csrf-token": token})).status_code == 200


async def test_reload_error_text_only_after_login(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory, tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text("pw\n")
    async with sluice([provider_for(upstream)]) as s:
        async with app_client(s, password_file=tmp_path / "pw", token="tok") as c:
            s.config_path.write_text("providers: []\n")
            r = await c.post("/api/reload", headers={"authorization": "Bearer tok"})
            assert r.status_code == 422 and "providers" in r.json()["error"]
            assert "Last reload failed" not in (await c.get("/login")).text
            assert "last_reload_error" not in (await c.get("/healthz")).json()
            r = await c.get("/healthz", headers={"authorization": "Bearer tok"})
            assert r.json()["last_reload_failed"] is True
            assert "providers" in r.json()["last_reload_error"]


# ------------------------------------------------ the login brake (issue #14, 8)


class FakeClock:
    """The limiter's clock, moved by the test instead of by sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sources_are_networks_and_the_delay_is_capped() -> None:
    assert {source_of(a) for a in ("127.0.0.1", "127.255.3.4", "::1", "::ffff:127.0.0.9")} == {
        "loopback"
    }
    assert source_of("192.0.2.1") == source_of("192.0.2.254") != source_of("192.0.3.1")
    assert source_of("2001:db8::1") == source_of("2001:db8::ffff:1") == "2001:db8::/64"
    assert source_of("2001:db8:0:1::1") != source_of("2001:db8::1")
    limiter = LoginLimiter(FakeClock())
    assert [limiter.delay(n) for n in range(4, 11)] == [0, 5, 10, 20, 40, 60, 60]
    # Address rotation cannot grow the table without bound.
    for i in range(LoginLimiter.MAX_KEYS + 50):
        limiter.failed(limiter.keys(f"10.{i // 65536}.{i // 256 % 256}.1", f"u{i}"))
    assert len(limiter) == LoginLimiter.MAX_KEYS


ClientAt = Callable[[str], AbstractAsyncContextManager[httpx.AsyncClient]]


@asynccontextmanager
async def admin_from(
    s: Running, limiter: LoginLimiter, **settings: Any
) -> AsyncIterator[tuple[Credentials, ClientAt]]:
    """One admin app (as the daemon builds it) and clients that come from chosen addresses."""
    admin = AdminSettings(**{"listen": "127.0.0.1:0", **settings})
    creds = Credentials.from_settings(admin)
    app = create_app(s.daemon.admin_backend(), admin, creds, limiter=limiter)

    @asynccontextmanager
    async def client_at(address: str) -> AsyncIterator[httpx.AsyncClient]:
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            yield c

    yield creds, client_at


async def login(c: httpx.AsyncClient, user: str, password: str) -> httpx.Response:
    token = csrf_of((await c.get("/login")).text)
    form = {"username": user, "password": password, "csrf_token": token}
    return await c.post("/login", data=form)


async def test_rotating_loopback_addresses_does_not_bypass_the_brake(
    sluice: SluiceFactory, upstream: TestUpstream, tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text("right\n")
    clock = FakeClock()
    async with sluice([provider_for(upstream)]) as s:
        async with admin_from(s, LoginLimiter(clock), password_file=tmp_path / "pw") as (_, at):
            codes = []
            for i in range(1, 21):  # 20 guesses, each from another 127.x.y.z
                async with at(f"127.{i}.0.{i}") as c:
                    codes.append((await login(c, "admin", f"guess{i}")).status_code)
            assert codes == [401] * LoginLimiter.FREE + [429] * (20 - LoginLimiter.FREE)
            # ::1 and IPv4-mapped loopback are the same source, and Basic counts too.
            for address in ("::1", "::ffff:127.9.9.9"):
                async with at(address) as c:
                    assert (await login(c, "admin", "another")).status_code == 429
                    r = await c.get("/api/queue", headers={"authorization": basic("x", "y")})
                    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
            # The account is braked from anywhere: guesses spread over networks gain nothing.
            async with at("192.0.2.7") as c:
                assert (await login(c, "admin", "guess")).status_code == 429
                assert (await login(c, "ADMIN", "guess")).status_code == 429
            # Keys, not a global switch: another network naming another account is checked.
            async with at("198.51.100.7") as c:
                assert (await login(c, "nobody", "guess")).status_code == 401
            # A /24 is one source: its neighbour is braked after it, not an address alone.
            for i in range(LoginLimiter.FREE):
                async with at(f"203.0.113.{i + 1}") as c:
                    assert (await login(c, f"user{i}", "guess")).status_code == 401
            async with at("203.0.113.200") as c:
                assert (await login(c, "someone-else", "guess")).status_code == 429


async def test_a_flood_delays_the_right_password_only_boundedly(
    sluice: SluiceFactory, upstream: TestUpstream, tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text("right\n")
    clock = FakeClock()
    limiter = LoginLimiter(clock)
    async with sluice([provider_for(upstream)]) as s:
        async with admin_from(s, limiter, password_file=tmp_path / "pw") as (_, at):
            # The operator's browser logged in before (it holds a device cookie).
            async with at("127.0.0.1") as operator:
                assert (await login(operator, "admin", "right")).status_code == 303
                assert DEVICE_COOKIE in operator.cookies
                await operator.post(
                    "/logout", data={"csrf_token": csrf_of((await operator.get("/")).text)}
                )
            # A local user floods: it guesses each time the brake lets it, and
            # hammers in between (those refusals are not counted).
            async with at("127.0.0.2") as attacker:
                for i in range(40):
                    wait = limiter.retry_after(limiter.keys("127.0.0.2", "admin"))
                    clock.now += wait
                    assert (await login(attacker, "admin", f"guess{i}")).status_code == 401
                    for _ in range(5 if i + 1 >= LoginLimiter.FREE else 0):
                        assert (await login(attacker, "admin", "again")).status_code == 429
            # The delay has grown, but never past the cap.
            keys = limiter.keys("127.0.0.1", "admin")
            assert 0 < limiter.retry_after(keys) <= LoginLimiter.CAP
            # The trusted browser is not delayed at all...
            async with at("127.0.0.1") as c:
                c.cookies.set(
                    DEVICE_COOKIE,
                    operator.cookies[DEVICE_COOKIE],
                    domain="127.0.0.1",
                    path="/login",
                )
                assert (await login(c, "admin", "right")).status_code == 303
                assert (await c.get("/")).status_code == 200
            # ...and a new browser with the right password waits at most CAP.
            async with at("127.0.0.1") as fresh:
                assert (await login(fresh, "admin", "right")).status_code == 429
                clock.now += LoginLimiter.CAP / 2
                async with at("127.0.0.2") as attacker:  # refused: it does not push the delay
                    for _ in range(3):
                        assert (await login(attacker, "admin", "more")).status_code == 429
                clock.now += LoginLimiter.CAP / 2
                assert (await login(fresh, "admin", "right")).status_code == 303


async def test_wrong_bearer_tokens_are_throttled(
    sluice: SluiceFactory, upstream: TestUpstream, tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text("right\n")
    (tmp_path / "token").write_text("the-token\n")
    clock = FakeClock()
    async with sluice([provider_for(upstream)]) as s:
        async with admin_from(
            s,
            LoginLimiter(clock),
            password_file=tmp_path / "pw",
            api_token_file=tmp_path / "token",
        ) as (_, at):
            codes = []
            for i in range(1, 11):
                async with at(f"127.0.{i}.1") as c:
                    r = await c.get("/api/queue", headers={"authorization": f"Bearer nope{i}"})
                    codes.append(r.status_code)
            assert codes == [401] * LoginLimiter.FREE + [429] * (10 - LoginLimiter.FREE)
            async with at("127.0.0.1") as c:
                right = {"authorization": "Bearer the-token"}
                r = await c.get("/api/queue", headers=right)
                assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
                # Token guesses do not delay the password (keys of their own).
                r = await c.get("/api/queue", headers={"authorization": basic("admin", "right")})
                assert r.status_code == 200
                clock.now += LoginLimiter.CAP
                assert (await c.get("/api/queue", headers=right)).status_code == 200


# ------------------------------------------ ending sessions (issue #14, item 9)


async def test_a_cookie_captured_before_logout_is_refused_after(
    sluice: SluiceFactory, upstream: TestUpstream, tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text("right\n")
    async with sluice([provider_for(upstream)]) as s:
        async with admin_from(s, LoginLimiter(), password_file=tmp_path / "pw") as (_, at):
            async with at("127.0.0.1") as c, at("127.0.0.1") as thief:
                assert (await login(c, "admin", "right")).status_code == 303
                captured = c.cookies["sluice_session"]
                thief.cookies.set("sluice_session", captured, domain="127.0.0.1")
                assert (await thief.get("/queue")).status_code == 200
                page = await c.get("/queue")
                assert (
                    await c.post("/logout", data={"csrf_token": csrf_of(page.text)})
                ).status_code == 303
                assert (await c.get("/queue")).status_code == 303
                # The copy taken before logout is worth nothing now, page or API.
                r = await thief.get("/queue")
                assert r.status_code == 303 and r.headers["location"].startswith("/login")
                assert (await thief.get("/api/queue")).status_code == 401
                # Logging in again works, and issues a cookie unlike the old one.
                async with at("127.0.0.1") as again:
                    again.cookies.set("sluice_session", captured, domain="127.0.0.1")
                    assert (await login(again, "admin", "right")).status_code == 303
                    assert again.cookies["sluice_session"] != captured
                    assert (await again.get("/queue")).status_code == 200


async def test_revoke_sessions_command_ends_every_session(
    sluice: SluiceFactory, upstream: TestUpstream, tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text("right\n")
    async with sluice([provider_for(upstream)]) as s:
        async with admin_from(s, LoginLimiter(), password_file=tmp_path / "pw") as (_, at):
            async with AsyncExitStack() as stack:
                browsers = [await stack.enter_async_context(at("127.0.0.1")) for _ in range(2)]
                for b in browsers:
                    assert (await login(b, "admin", "right")).status_code == 303
                    assert (await b.get("/")).status_code == 200
                rc, out, err = await run_cli("admin", "revoke-sessions", "-c", str(s.config_path))
                assert rc == 0, err
                assert "every admin session ended" in out
                for b in browsers:
                    assert (await b.get("/")).status_code == 303
                    assert (await b.get("/api/queue")).status_code == 401


async def test_a_password_change_ends_sessions(
    sluice: SluiceFactory, upstream: TestUpstream, tmp_path: Path
) -> None:
    async with sluice([provider_for(upstream)]) as s:
        hashed = hash_password("old-pw")
        async with admin_from(s, LoginLimiter(), password_hash=hashed) as (creds, at):
            async with at("127.0.0.1") as c:
                assert (await login(c, "admin", "old-pw")).status_code == 303
                assert (await c.get("/")).status_code == 200
                # What a reload of the secrets does: another hash is configured.
                creds.password_hash = hash_password("new-pw")
                assert (await c.get("/")).status_code == 303
                assert (await login(c, "admin", "new-pw")).status_code == 303
                assert (await c.get("/")).status_code == 200
