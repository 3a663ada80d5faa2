"""relay.operations on a real spool file: results, refusals, the audit log, the CSV codec."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.config import Config, load
from relay.model import Action, RecipientStatus, Selection, Suppression
from relay.operations import providers as provider_ops
from relay.operations import queue as queue_ops
from relay.operations import suppressions as sup_ops
from relay.operations.actor import Actor, ActorKind, Refusal, Refused
from relay.operations.sessions import revoke_admin_sessions
from relay.operations.testmail import SendTest, send_test_message
from relay.received import queue_id_from_received
from relay.store.spool import Spool
from tests.conftest import fast_config, write_config
from tests.pg import PgDatabase

ALICE = Actor(ActorKind.CLI, "alice")
APP = Actor(ActorKind.API, "api")
BOB = Actor(ActorKind.ADMIN, "bob")


@pytest.fixture(params=["sqlite", "postgresql"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> Config:
    """The operations run on either store (#27): the same results from both."""
    providers = [
        {"id": "up1", "host": "127.0.0.1", "port": 2525, "encryption": "none"},
        {"id": "off", "host": "127.0.0.1", "port": 2526, "encryption": "none", "enabled": False},
    ]
    sections: dict[str, Any] = {}
    if request.param == "postgresql":
        db: PgDatabase = request.getfixturevalue("pg_db")
        sections["spool"] = {"path": str(tmp_path / "spool.sqlite3"), **db.config()}
    cfg = fast_config(tmp_path, providers, **sections)
    return load(write_config(tmp_path / "sluice.yaml", cfg))


@pytest.fixture
async def spool(config: Config) -> AsyncIterator[Spool]:
    async with await Spool.open(config.spool) as s:
        yield s


def test_actors_are_named_in_the_audit_log_as_before() -> None:
    assert ALICE.audit == "cli:alice"
    assert APP.audit == "api"
    assert BOB.audit == "bob"
    assert Actor(ActorKind.API, "carol").audit == "api"
    assert Actor.cli().kind is ActorKind.CLI


def test_each_action_has_its_past_tense() -> None:
    assert [a.past for a in queue_ops.QUEUE_ACTIONS] == [
        "made due now",
        "deleted",
        "held",
        "released",
        "rerouted",
    ]


async def test_test_message_retry_hold_release_delete(spool: Spool, config: Config) -> None:
    sent = await send_test_message(
        spool, config, SendTest("up1", "ops@example.net"), BOB, hostname="relay.test", now=1e9
    )
    assert (sent.provider, sent.to) == ("up1", "ops@example.net")
    detail = await spool.get(sent.queue_id)
    assert detail.client == "admin" and [r.email for r in detail.recipients] == [sent.to]
    raw = await spool.raw(sent.queue_id)
    assert b"X-Sluice-Provider: up1" in raw and b"2001-09-09 01:46:40 UTC" in raw
    # Sluice's own trace line comes first, so a bounce of it is matched without VERP.
    assert raw.startswith(b"Received: by relay.test (Sluice) with local id ")
    assert queue_id_from_received(raw) == sent.queue_id

    retried = await queue_ops.retry(spool, [sent.queue_id, " ", "NOPE"], ALICE)
    assert (retried.done, retried.missing) == ((sent.queue_id,), ("NOPE",))
    assert retried.recipients == {sent.queue_id: 1}

    hold = queue_ops.ControlRequest(
        Action.HOLD, Selection(queue_ids=(sent.queue_id,)), reason=" why " * 200
    )
    dry = await queue_ops.count(spool, config, hold)
    assert (dry.dry_run, dry.recipients, dry.messages) == (True, 1, 1)
    held = await queue_ops.control(spool, config, hold, ALICE)
    assert (held.action.past, held.recipients) == ("held", 1)
    (entry,) = await spool.list_queue(statuses=[RecipientStatus.HELD])
    assert len(entry.reason) <= queue_ops.REASON_MAX + 50  # cut, not the 1000 given
    release = queue_ops.ControlRequest(Action.RELEASE, Selection(everything=True))
    assert (await queue_ops.control(spool, config, release, BOB)).recipients == 1
    audit = [(e.actor, e.action, e.count) for e in await spool.audit_log()]
    # every operator action is audited, retry and delete included (who, what, how many)
    assert audit == [("bob", "release", 1), ("cli:alice", "hold", 1), ("cli:alice", "retry", 1)]

    deleted = await queue_ops.delete(spool, [sent.queue_id, sent.queue_id], ALICE)
    assert (deleted.done, deleted.missing) == ((sent.queue_id,), ())
    (gone, *_) = await spool.audit_log()
    assert (gone.actor, gone.action, gone.target, gone.count) == (
        "cli:alice",
        "delete",
        sent.queue_id,
        1,
    )
    assert gone.detail == "1 recipient not yet delivered"
    assert (await queue_ops.delete(spool, [sent.queue_id], ALICE)).missing == (sent.queue_id,)


@pytest.mark.parametrize(
    ("to", "provider", "refusal"),
    [
        ("nonsense", "up1", Refusal.INVALID),
        ("a@b.example\r\nBcc: x@evil.example", "up1", Refusal.INVALID),
        ("ops@example.net", "nope", Refusal.NOT_FOUND),
        ("ops@example.net", "off", Refusal.CONFLICT),
    ],
)
async def test_a_test_message_is_refused_before_anything_is_queued(
    spool: Spool, config: Config, to: str, provider: str, refusal: Refusal
) -> None:
    with pytest.raises(Refused) as caught:
        await send_test_message(
            spool, config, SendTest(provider, to), BOB, hostname="h", now=time.time()
        )
    assert caught.value.refusal is refusal
    assert await spool.list_queue() == []


async def test_reroute_needs_an_enabled_provider(spool: Spool, config: Config) -> None:
    for via in ("off", "nope", None):
        request = queue_ops.ControlRequest(Action.REROUTE, Selection(everything=True), via=via)
        with pytest.raises(Refused, match=rf"no enabled provider {via!r} \(enabled: up1\)"):
            await queue_ops.control(spool, config, request, ALICE)
    empty = queue_ops.ControlRequest(Action.HOLD, Selection())
    with pytest.raises(Refused):
        await queue_ops.control(spool, config, empty, ALICE)
    assert await spool.audit_log() == []


async def test_pause_and_resume(spool: Spool, config: Config) -> None:
    with pytest.raises(Refused, match=r"no provider 'nope' \(known: up1, off\)") as caught:
        await provider_ops.pause(spool, config, "nope", ALICE, now=0.0)
    assert caught.value.refusal is Refusal.NOT_FOUND
    with pytest.raises(Refused, match="positive"):
        await provider_ops.pause(spool, config, "up1", ALICE, duration=0, now=0.0)
    now = time.time()
    paused = await provider_ops.pause(
        spool, config, "up1", APP, reason="  maintenance ", duration=60, now=now
    )
    assert (paused.name, paused.reason, paused.until) == ("provider up1", "maintenance", now + 60)
    assert set(await spool.pauses()) == {"up1"}
    resumed = await provider_ops.resume(spool, config, "up1", BOB)
    assert resumed.was_paused and resumed.due_now == 0
    again = await provider_ops.resume(spool, config, provider_ops.ALL_PROVIDERS, BOB)
    assert (again.name, again.due_now) == ("all providers", None)
    assert [(e.actor, e.action) for e in await spool.audit_log()] == [
        ("bob", "resume"),
        ("api", "pause"),
    ]


async def test_suppress_and_unsuppress_take_their_source_from_the_actor(spool: Spool) -> None:
    by_app = await sup_ops.suppress(spool, " App@Example.org ", APP, reason="unsubscribed")
    by_hand = await sup_ops.suppress(spool, "op@example.org", BOB, scope="news")
    assert (by_app.entry.address, by_app.entry.source) == ("app@example.org", "api")
    assert (by_hand.entry.source, by_hand.entry.reason) == ("manual", "added by hand")
    with pytest.raises(Refused, match=r"^not an address: 'x@' \("):
        await sup_ops.suppress(spool, "x@", BOB)
    with pytest.raises(Refused, match="scope"):
        await sup_ops.suppress(spool, "y@example.org", BOB, scope="a\x00b")
    # An address a bounce stored, whatever it looks like, can still be removed.
    await spool.suppressions.add("<b@d>@example.org", source="bounce")
    assert (await sup_ops.unsuppress(spool, "<B@D>@example.org", BOB)).removed == 1
    assert (await sup_ops.unsuppress(spool, "op@example.org", BOB, scope="other")).removed == 0
    assert (await sup_ops.unsuppress(spool, "op@example.org", BOB)).removed == 1
    assert [e.address for e in await spool.suppressions.page()] == ["app@example.org"]


async def test_the_csv_codec_round_trips_through_the_spool(spool: Spool) -> None:
    await sup_ops.suppress(spool, "a@example.org", BOB, reason='says "stop", twice')
    await sup_ops.suppress(spool, "b@example.org", APP, scope="news", expires_at=2e9)
    text, n = await sup_ops.export_csv(spool)
    assert n == 2 and text.splitlines()[0] == ",".join(sup_ops.COLUMNS)
    assert "2033-05-18T03:33:20+00:00" in text  # expires_at, UTC ISO 8601
    entries = sup_ops.parse_csv(("\ufeff" + text).encode())  # a BOM is fine
    assert [(e.address, e.scope, e.source, e.expires_at) for e in entries] == [
        ("a@example.org", "", "import", None),
        ("b@example.org", "news", "import", 2e9),
    ]
    assert entries[0].reason == 'says "stop", twice'


#: cells as spreadsheets read them: formula starts, quotes, and anything else
_CELLS = st.text(alphabet=st.sampled_from("=+-@\t\r'a ,\"x\n"), max_size=8) | st.text(max_size=8)


@given(st.lists(_CELLS, max_size=6))
def test_formula_cells_are_neutralized_and_restored(cells: list[str]) -> None:
    for cell in cells:
        out = sup_ops.neutralize(cell)
        assert not out.startswith(("=", "+", "-", "@", "\t", "\r"))
        assert sup_ops.restore(out) == cell
    assert sup_ops.neutralize("=1+1") == "'=1+1"
    assert sup_ops.neutralize("'=1+1") == "''=1+1"
    assert sup_ops.neutralize("'plain") == "'plain"  # nothing to run after the quote


@given(address=st.sampled_from(["=a", "+a", "-a", "'=a", "''+a", "'a", "a"]), reason=_CELLS)
def test_the_csv_file_round_trips_formula_looking_values(address: str, reason: str) -> None:
    reason = sup_ops.check_reason(reason)
    entry = Suppression(f"{address}@example.org", "=news", "manual", reason, 1e9, None)
    text = sup_ops.write_csv([entry])
    for row in csv.reader(io.StringIO(text)):
        assert not any(c.startswith(("=", "+", "-", "@", "\t", "\r")) for c in row)
    (back,) = sup_ops.parse_csv(text.encode())
    assert (back.address, back.scope, back.reason or "imported", back.created_at) == (
        entry.address,
        entry.scope,
        entry.reason or "imported",
        entry.created_at,
    )


def test_a_bad_row_is_named_by_the_line_it_starts_on() -> None:
    data = b'address,reason\nok@example.org,"two\nlines"\nbad,x\n'
    with pytest.raises(sup_ops.RowRefused) as caught:
        sup_ops.parse_csv(data)
    assert (caught.value.line, str(caught.value)) == (4, f"line 4: {caught.value.problem}")
    assert caught.value.problem.startswith("not an address: 'bad' (")


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"email\nx@example.org\n", "needs a header row with an 'address' column"),
        (b"address\n\xff\n", "not UTF-8"),
        (b"address,expires_at\nx@example.org,soon\n", "line 2: 'soon' is not an ISO 8601 time"),
    ],
)
def test_a_file_that_is_not_a_list_is_refused(data: bytes, why: str) -> None:
    with pytest.raises(Refused, match=why):
        sup_ops.parse_csv(data)


def test_defaults_and_the_size_limit() -> None:
    (entry,) = sup_ops.parse_csv(b"address\nx@example.org\n", default_scope="news")
    assert entry == Suppression("x@example.org", "news", "import", "imported", 0.0, None)
    with pytest.raises(Refused, match="larger than 1 MiB"):
        sup_ops.parse_csv(b"address\n" + b"x" * (1 << 20), max_bytes=1 << 20)


async def test_revoking_sessions_raises_the_version(spool: Spool) -> None:
    before = await spool.admin_session_version()
    assert (await revoke_admin_sessions(spool, ALICE)).version > before
