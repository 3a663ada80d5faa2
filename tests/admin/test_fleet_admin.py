"""One admin for the fleet (#27): two nodes on one PostgreSQL store, each with its own admin.

Two daemons run in this process on one database of the tests' cluster
(``tests/pg.py``), as nodes ``a`` and ``b`` with state directories of their
own; each gets the admin app its daemon builds, over httpx's ASGI transport.
What one node's admin shows and does must be the fleet's: the queue and the
log list the other node's mail with a node column, holds, pauses and
suppressions made on one act on the other, and a login on one node's admin
is good on the other's until a logout on either ends it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx

from admin.app import create_app
from admin.auth import Credentials
from relay.config import AdminSettings, load
from relay.daemon import Daemon
from relay.model import RecipientStatus
from tests.admin.test_pages import csrf_of
from tests.conftest import Running, eventually, fast_config, provider_for, smtp_send, write_config
from tests.pg import PgCluster, PgDatabase
from tests.upstream import TestUpstream

TOKEN = {"authorization": "Bearer fleet-token"}


def _msg(subject: str, to: str = "b@example.net") -> bytes:
    return f"From: a@example.org\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()


@asynccontextmanager
async def _fleet(
    tmp_path: Path, db: PgDatabase, upstream: TestUpstream, names: tuple[str, ...] = ("a", "b")
) -> AsyncIterator[dict[str, Running]]:
    """Nodes ``a`` and ``b`` running on ``db``, each from its own config and state directory."""
    async with AsyncExitStack() as stack:
        nodes: dict[str, Running] = {}
        for name in names:
            home = tmp_path / name
            home.mkdir()
            spool = {**db.config(node=name), "path": str(home / "spool.sqlite3")}
            cfg = fast_config(home, [provider_for(upstream)], spool=spool)
            if name == "b":
                # b claims only when woken by its own doings: what a accepts, a claims,
                # so that what a does with it shows what b's controls did to a.
                cfg["delivery"]["poll_interval"] = "60s"
            path = write_config(home / "sluice.yaml", cfg)
            daemon = Daemon(load(path), config_path=path)
            await stack.enter_async_context(daemon.running())
            nodes[name] = Running(daemon, path)
        yield nodes


@asynccontextmanager
async def _admin(s: Running, password_file: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The admin app node ``s`` builds (password login, and a bearer token for scripts)."""
    settings = AdminSettings.model_validate(
        {"listen": "127.0.0.1:0", "password_file": password_file}
    )
    creds = Credentials.from_settings(settings)
    creds.api_token = "fleet-token"
    app = create_app(s.daemon.admin_backend(), settings, creds)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        yield c


async def _status(s: Running, queue_id: str) -> RecipientStatus:
    (rcpt,) = (await s.spool.get(queue_id)).recipients
    return rcpt.status


async def test_any_node_lists_and_controls_the_fleets_mail(
    tmp_path: Path, pg_db: PgDatabase, upstream: TestUpstream
) -> None:
    (tmp_path / "pw").write_text("pw\n")
    async with _fleet(tmp_path, pg_db, upstream) as n, AsyncExitStack() as stack:
        admin = {
            k: await stack.enter_async_context(_admin(s, tmp_path / "pw")) for k, s in n.items()
        }

        # Accepted and delivered by node a: node b's queue, log and message page say so.
        _, reply = await smtp_send(n["a"].port, "a@example.org", ["b@example.net"], _msg("one"))
        qid = reply.split()[-1]
        await upstream.wait_for(1)

        async def sent() -> bool:
            return await _status(n["b"], qid) is RecipientStatus.SENT

        await eventually(sent)
        entries = (await admin["b"].get("/api/queue", headers=TOKEN)).json()["entries"]
        assert [(e["queue_id"], e["node"]) for e in entries] == [(qid, "a")]
        log = (await admin["b"].get("/api/log", headers=TOKEN)).json()["entries"]
        (tried,) = [e for e in log if (e["queue_id"], e["status"]) == (qid, "success")]
        # whichever node claimed it: b hears a's wake-up (NOTIFY) as soon as a does
        assert tried["node"] in ("a", "b")
        page = (await admin["b"].get("/queue", headers=TOKEN)).text
        assert "<th>Node</th>" in page and '<td class="node">a</td>' in page
        assert ">node b</span>" in page  # which node serves the page
        page = (await admin["b"].get("/log", headers=TOKEN)).text
        assert "<th>Node</th>" in page and f'<td class="node">{tried["node"]}</td>' in page
        page = (await admin["b"].get(f"/messages/{qid}", headers=TOKEN)).text
        assert '<dd class="node">a</dd>' in page

        # A pause made on b holds what a accepts; a hold made on a holds it past the resume.
        r = await admin["b"].post("/api/pause", json={"reason": "fleet test"}, headers=TOKEN)
        assert r.status_code == 200, r.text
        _, reply = await smtp_send(n["a"].port, "a@example.org", ["b@example.net"], _msg("two"))
        two = reply.split()[-1]

        async def waits() -> bool:
            (rcpt,) = (await n["a"].spool.get(two)).recipients
            return rcpt.status is not RecipientStatus.SENDING and "paused" in rcpt.reason

        await eventually(waits)
        r = await admin["a"].post("/api/queue/hold", json={"queue_ids": [two]}, headers=TOKEN)
        assert r.status_code == 200 and r.json()["recipients"] == 1, r.text
        assert (await admin["a"].post("/api/resume", json={}, headers=TOKEN)).status_code == 200
        assert await _status(n["b"], two) is RecipientStatus.HELD
        # Released on b: delivered (by either node), once.
        r = await admin["b"].post("/api/queue/release", json={"queue_ids": [two]}, headers=TOKEN)
        assert r.status_code == 200, r.text
        got = await upstream.wait_for(2)
        assert [b"Subject: two" in m.data for m in got] == [False, True]

        # A suppression added on b: the recipient is not sent to by a.
        r = await admin["b"].post(
            "/api/suppressions", json={"address": "gone@example.net"}, headers=TOKEN
        )
        assert r.status_code in (200, 201), r.text
        _, reply = await smtp_send(
            n["a"].port, "a@example.org", ["gone@example.net"], _msg("three", "gone@example.net")
        )
        three = reply.split()[-1]

        async def suppressed() -> bool:
            return await _status(n["a"], three) is RecipientStatus.SUPPRESSED

        await eventually(suppressed)
        detail = await n["b"].spool.get(three)
        assert "suppressed" in detail.recipients[0].reason
        # whichever node claimed it (both hear the wake-up) found b's entry in the store
        assert [a.node for a in detail.attempts] in (["a"], ["b"])
        assert len(upstream.messages) == 2


async def test_a_login_holds_on_every_node_and_a_logout_ends_it_everywhere(
    tmp_path: Path, pg_db: PgDatabase, upstream: TestUpstream
) -> None:
    (tmp_path / "pw").write_text("pw\n")
    async with _fleet(tmp_path, pg_db, upstream) as n:
        async with _admin(n["a"], tmp_path / "pw") as a, _admin(n["b"], tmp_path / "pw") as b:
            token = csrf_of((await a.get("/login")).text)
            form = {"username": "admin", "password": "pw", "csrf_token": token}
            assert (await a.post("/login", data=form)).status_code == 303
            cookie = a.cookies["sluice_session"]
            # The cookie node a issued is good on node b (one key for the fleet).
            b.cookies.set("sluice_session", cookie, domain="127.0.0.1")
            page = await b.get("/queue")
            assert page.status_code == 200 and "Log out admin" in page.text
            # Logged out on b: the session ends on a too.
            r = await b.post("/logout", data={"csrf_token": csrf_of(page.text)})
            assert r.status_code == 303
            r = await a.get("/queue")
            assert r.status_code == 303 and r.headers["location"].startswith("/login")


async def test_the_admin_answers_503_while_the_database_is_down(
    tmp_path: Path, pg_cluster: PgCluster, pg_db: PgDatabase, upstream: TestUpstream
) -> None:
    """A page or API call that cannot read the store says so (503), and works once it is back."""
    (tmp_path / "pw").write_text("pw\n")
    async with _fleet(tmp_path, pg_db, upstream, names=("a",)) as n:
        async with _admin(n["a"], tmp_path / "pw") as a:
            assert (await a.get("/queue", headers=TOKEN)).status_code == 200
            pg_cluster.stop()
            try:
                page = await a.get("/queue", headers=TOKEN)
                assert page.status_code == 503 and "spool is unavailable" in page.text
                api = await a.get("/api/log", headers=TOKEN)
                assert api.status_code == 503 and "spool.url" in api.json()["error"]
                health = await a.get("/healthz")
                assert health.json()["status"] == "unhealthy", health.text
            finally:
                pg_cluster.start()
            assert (await a.get("/queue", headers=TOKEN)).status_code == 200
