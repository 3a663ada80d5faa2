"""The spool: the one store every part of Sluice holds, a facade over one module per job.

``Spool`` owns the connections and the writer thread; the work is done by
the modules behind it, one per job:

- ``queue``: enqueue, claim, finish, release, requeue, retry, delete, prune, body;
- ``controls``: selections, hold/release/reroute, pauses, hold expiry, the audit log;
- ``outbox``: the webhook outbox and the DSN marks;
- ``views``: read-only views (a message, the queue, the log, counts, pauses, audit);
- ``state``: meta values, counters, OAuth grants, admin session versions, health;
- ``suppressions``: bounces and the suppression list (``Spool.suppressions``);
- ``nodes``: the fleet's nodes and their heartbeats (``relay/store/membership.py`` beats);
- ``migrations``: the schema, made or brought up to date on ``open``.

Writes go through one writer connection owned by one thread (``Writer`` in
``relay/store/writer.py``), with **group commit**: jobs queued while a
transaction is being written are batched into the next one, each inside its
own SAVEPOINT, so a failing job rolls back alone. Every caller is answered
only after the ``COMMIT`` of its own job has returned, and the database runs
WAL with ``synchronous=FULL``, so a ``250`` given after ``enqueue`` returns
survives ``kill -9`` and power loss alike. (aiosqlite gives one thread per
connection too, but one hop per statement; a batch here costs one hop.) The
job modules' writer functions are handed to the writer as they are: the
split adds no hop, await or transaction to the hot path.

Reads go through a separate aiosqlite connection, so the admin page and the CLI
never hold the writer, and never see an uncommitted row.

Every state change is a guarded update: ``... WHERE status = ? RETURNING``, and no row
returned means the row had moved on.

**The backend contract.** The second backend, PostgreSQL (``spool.url``,
issue #27, ``relay/store/pg/``), runs the same job modules through
connection adapters (``relay/store/db.py``), so what it provides is by
construction ``Spool.open`` / ``aclose`` and the public methods below,
with these signatures and results, plus ``wake``, ``outbox_wake``,
``stream_headers`` and ``suppressions`` (``relay/store/suppressions.py``):

- queue: ``enqueue``, ``claim`` / ``claim_due``, ``finish``, ``release``,
  ``requeue_inflight``, ``requeue_expired_leases``, ``retry_now``, ``delete``,
  ``prune``, ``body``;
- outboxes: ``enqueue_dsn``, ``add_events``, ``outbox_next``,
  ``outbox_delivered``, ``outbox_failed``, ``outbox_recent``,
  ``outbox_counts``, ``prune_notifications``;
- controls: ``count_selected``, ``control``, ``hold_claimed``,
  ``expire_held``, ``pause_provider``, ``resume_provider``,
  ``end_expired_pauses``, ``record_audit``;
- views: ``get``, ``raw``, ``list_queue``, ``list_log``, ``counts_by_status``,
  ``oldest_pending``, ``provider_failures``, ``attempt_buckets``, ``pauses``,
  ``audit_log``, ``queue_marks``, ``waiting_via``;
- state: ``counter_add``, ``counter_prune``, ``counter_get``,
  ``counter_since``, ``meta_set``, ``meta_get``, ``save_oauth_grant``,
  ``oauth_grant_failed``, ``oauth_grant``, ``admin_session_key``, ``admin_session_version``,
  ``revoke_admin_sessions``, ``probe_write``, ``short_of_room``, ``health``;
- nodes: ``node_join``, ``node_row``, ``node_beat``, ``node_leave``, ``list_nodes``.
- limits shared by the nodes of a fleet (``relay/store/limits.py``):
  ``counter_reserve``, ``counter_return``, ``rate_reserve``,
  ``block_provider``, ``provider_blocks``.
- a fleet (``relay/store/singleton.py``): ``singleton`` (a turn at work one
  node does at a time) and ``listen`` (other nodes' wake-ups set ``wake``
  and ``outbox_wake``); granted at once, and nothing to hear, on SQLite.

Results are plain values and frozen dataclasses of ``relay.model`` and of
the job modules: no ``sqlite3`` or ``aiosqlite`` type, no ``rowid``. Row ids
leave as plain ints named for what they are (``message_id``, a recipient's
``id`` as a keyset for the next page, ``attempt_ids``), and come back only
to the methods that take them. ``tests/store/test_backend_contract.py``
walks every result type to keep it so; the store tests that take the
``spool_where`` fixture run on both backends, and
``tests/store/test_pg_statements.py`` has the server prepare every named
statement's PostgreSQL form.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import socket
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar, cast

import aiosqlite

from relay.config import SpoolSettings, SuppressionSettings
from relay.errors import SpoolError
from relay.events import Endpoint, OutboxEvent
from relay.message import HeaderBlock, stream_of
from relay.model import (
    Action,
    AttemptStatus,
    AuditEntry,
    Claim,
    LogEntry,
    MessageDetail,
    ProviderPause,
    QueueEntry,
    RecipientStatus,
    Selection,
)
from relay.secrets import Redactor
from relay.store import controls, limits, nodes, outbox, queue, state, views
from relay.store.controls import ALL_PROVIDERS, Control, Selected
from relay.store.db import Conn
from relay.store.limits import ProviderBlock, RateGrant
from relay.store.migrations import migrate
from relay.store.nodes import NodeRow
from relay.store.outbox import DsnVerdict, OutboxRow
from relay.store.queue import Claimed, Finish, NewMessage, new_queue_id, stored_under_fresh_id
from relay.store.singleton import Granted, Turn, Turns
from relay.store.state import OAuthGrant, SpoolHealth
from relay.store.suppressions import Suppressions
from relay.store.views import AttemptBucket
from relay.store.writer import Checkpointer, DiskSpace, Writer, connect, write_lock_path
from relay.wording import plural

if TYPE_CHECKING:
    from relay.store.pg.reader import PgReader
    from relay.store.pg.wakeups import PgWakeups, Wake
    from relay.store.pg.writer import PgWriter

__all__ = [
    "ALL_PROVIDERS",
    "AttemptBucket",
    "Claimed",
    "Control",
    "DsnVerdict",
    "Finish",
    "NewMessage",
    "NodeRow",
    "OAuthGrant",
    "OutboxEvent",
    "OutboxRow",
    "ProviderBlock",
    "RateGrant",
    "Selected",
    "Spool",
    "SpoolHealth",
    "new_queue_id",
    "stored_under_fresh_id",
]

Clock = Callable[[], float]
T = TypeVar("T")

#: how long a fleet limit job asks again while other nodes hold its limit, in seconds
_LIMIT_PATIENCE = 10.0


def _always(_result: object) -> bool:
    """``Spool._announcing``'s test for a write that always makes something happen."""
    return True


class Spool:
    """The store: accepted mail, per-recipient state and the delivery log.

    Open it with ``await Spool.open(path)`` and close it with ``aclose()``.
    ``wake`` is set whenever new mail becomes due, so the scheduler starts at
    once instead of at its next poll.
    """

    def __init__(
        self,
        path: Path,
        writer: Writer | PgWriter,
        reader: aiosqlite.Connection | PgReader,
        clock: Clock,
        checkpointer: Checkpointer | None = None,
        *,
        node: str = "",
        where: str = "",
    ) -> None:
        #: SQLite: the spool file; PostgreSQL: the node's own state (its directory holds
        #: the lock, the pid file, the secrets typed on the page)
        self.path = path
        #: this node's name (``spool.node``): on its accepted mail, leases and attempts
        self.node = node or socket.gethostname()
        #: the store as messages name it: the file, or the URL (never a password)
        self.where = where or str(path)
        self._writer = writer
        self._reader = reader
        self._clock = clock
        self._checkpointer = checkpointer
        self.wake = asyncio.Event()
        #: set when webhook events are stored, so the sender posts them at once
        self.outbox_wake = asyncio.Event()
        #: bounces and the suppression list
        self.suppressions = Suppressions(writer, reader, clock, outbox_wake=self.outbox_wake)
        #: work one node may do at a time (``singleton``): every turn is ours on SQLite
        self._turns: Turns = Granted()
        #: a shared store's wake-ups for other nodes (``listen``); None on SQLite
        self._wakeups: PgWakeups | None = None
        #: the headers that name a message's stream (``suppression.stream_headers``):
        #: ``enqueue`` stores ``relay.message.stream_of`` of them, the value the
        #: scheduler matches suppression scopes against. Whoever stores mail sets
        #: it from the config: the daemon (and on reload), its accept workers,
        #: ``sluice sendmail``; the rest store no mail and keep the default.
        self.stream_headers: list[str] = SuppressionSettings().stream_headers
        #: masks the config's resolved secrets in every text from outside the spool
        #: keeps: the reply or error of an attempt, a webhook event's body, a DSN,
        #: a refused sign-in's error. Such text may echo what Sluice sent (a token
        #: endpoint repeating the ``client_secret`` of the request), and pages, the
        #: API, the CLI and webhook receivers all read it from here. The daemon sets
        #: it from the config (and on reload), as ``stream_headers``.
        self._redact = Redactor()

    @property
    def redact(self) -> Redactor:
        """What masks secrets in the text from outside the spool stores (bounces' too)."""
        return self._redact

    @redact.setter
    def redact(self, redactor: Redactor) -> None:
        self._redact = redactor
        self.suppressions.redact = redactor

    @property
    def backend(self) -> Literal["sqlite", "postgresql"]:
        return "sqlite" if isinstance(self._writer, Writer) else "postgresql"

    @property
    def shared(self) -> bool:
        """Other nodes may share this store (PostgreSQL): what one node knows, all must ask."""
        return self.backend == "postgresql"

    @classmethod
    async def open(
        cls,
        where: str | os.PathLike[str] | SpoolSettings,
        *,
        clock: Clock = time.time,
        checkpoints: bool = False,
        node: str | None = None,
    ) -> Spool:
        """Open (creating it if needed) the store, brought to the current schema.

        ``where``: a SQLite file, or ``spool`` settings (SQLite at ``path``, or
        PostgreSQL at ``url``). ``node`` names this node (default: the
        settings' ``node``, else the host name).

        ``checkpoints=True`` (the daemon) also starts the ``Checkpointer``
        that copies the WAL into the database for every process writing it
        (SQLite; PostgreSQL checkpoints itself).

        Raises:
            SpoolError: the store cannot be opened or reached, a migration step
                failed, or it is newer than this code (``relay/store/migrations.py``).
        """
        if isinstance(where, SpoolSettings):
            node = node or where.node
            if where.url is not None:
                from relay.store.pg.open import open_pg

                pg_writer, pg_reader = await open_pg(where, node=node, clock=clock)
                spool = cls(where.path, pg_writer, pg_reader, clock, node=node, where=where.url)
                await spool._join_fleet(where)
                return spool
            where = where.path
        spool_path = Path(where)
        # The daemon keeps a reserve file beside the spool (``DiskSpace``). On
        # a disk already full it is given back first, so that the spool opens
        # (its WAL index needs a page or two) and the daemon starts, refusing
        # mail until there is room, instead of exiting.
        space = DiskSpace(spool_path, reserve=checkpoints)
        try:
            spool_path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            full = await asyncio.to_thread(space.nearly_full)
            if full:
                await asyncio.to_thread(space.release)
            conn = await asyncio.to_thread(connect, spool_path)
        except (OSError, sqlite3.Error) as exc:
            raise SpoolError(f"cannot open spool {spool_path}: {exc}") from exc
        try:
            await asyncio.to_thread(migrate, conn)
        except (SpoolError, sqlite3.Error) as exc:
            conn.close()
            raise SpoolError(f"cannot open spool {spool_path}: {exc}") from exc
        if not full:
            await asyncio.to_thread(space.make)
        lock = write_lock_path(spool_path)
        writer = Writer(
            conn, asyncio.get_running_loop(), lock_path=lock, clock=clock, space=space, full=full
        )
        reader = await aiosqlite.connect(spool_path, timeout=30)
        reader.row_factory = aiosqlite.Row
        await reader.execute("PRAGMA busy_timeout=30000")
        checkpointer = None
        if checkpoints:
            checkpointer = Checkpointer(spool_path, lock, clock=clock)
        return cls(spool_path, writer, reader, clock, checkpointer, node=node or "")

    async def _join_fleet(self, settings: SpoolSettings) -> None:
        """On a shared store: turns as advisory locks, wake-ups as LISTEN/NOTIFY."""
        from relay.store.pg.open import target_of
        from relay.store.pg.turns import PgTurns
        from relay.store.pg.wakeups import PgWakeups

        target = await asyncio.to_thread(target_of, settings, self.node)
        self._turns = PgTurns(target)
        wakeups = PgWakeups(target, {"wake": self.wake, "outbox_wake": self.outbox_wake})
        self._wakeups = wakeups
        self.suppressions.notify_outbox = lambda c: wakeups.notify(c, "outbox_wake")

    def singleton(self, name: str) -> AbstractAsyncContextManager[Turn]:
        """This node's turn at work only one node may do at a time (``relay.store.singleton``).

        ``async with spool.singleton("bounces") as turn: if turn: ...``. On
        SQLite always this node's; on PostgreSQL a session advisory lock,
        given back when the block ends or the session does.
        """
        return self._turns.hold(name)

    def listen(self) -> None:
        """Hear other processes' wake-ups from now on (the daemon; a no-op on SQLite).

        Mail made due and webhook events stored by another node then set
        ``wake`` and ``outbox_wake`` here at once (``relay/store/pg/wakeups.py``).
        """
        if self._wakeups is not None:
            self._wakeups.listen()

    def _announcing(
        self, job: Callable[[Conn], T], **when: Callable[[T], bool]
    ) -> Callable[[Conn], T]:
        """``job``, telling other nodes in its own transaction what it made happen.

        ``when`` maps ``wake`` / ``outbox_wake`` to a test of the job's
        result: on a shared store, a NOTIFY for each that holds is sent in
        the job's transaction (when it commits, and only then). On SQLite
        ``job`` itself: no other node to tell.
        """
        wakeups = self._wakeups
        if wakeups is None:
            return job

        def announced(c: Conn) -> T:
            result = job(c)
            for which, test in when.items():
                if test(result):
                    wakeups.notify(c, cast("Wake", which))
            return result

        return announced

    async def aclose(self) -> None:
        await self._turns.aclose()
        if self._wakeups is not None:
            await self._wakeups.aclose()
        if self._checkpointer is not None:
            await self._checkpointer.close()
        await self._writer.close()
        await self._reader.close()

    async def __aenter__(self) -> Spool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------ the queue

    async def enqueue(self, msg: NewMessage) -> str:
        """Store a message and its recipients in one durable transaction."""
        stream = stream_of(HeaderBlock(msg.data), self.stream_headers)
        node = self.node
        queue_id = await self._writer.submit(
            self._announcing(lambda c: queue.insert_message(c, msg, stream, node), wake=_always)
        )
        self.wake.set()
        return queue_id

    async def claim_due(self, limit: int, lease: float) -> list[Claim]:
        """``claim``'s claims alone."""
        return (await self.claim(limit, lease)).claims

    async def claim(self, limit: int, lease: float) -> Claimed:
        """Lease up to ``limit`` due messages (all their due recipients) to attempts.

        Each claimed recipient gets an in-progress delivery-log row in the same
        transaction. What the attempt needs to read comes with the claim, in
        the same hop to the writer thread: the message's bytes, the
        suppression entries of its recipients, and the operator pauses in
        force (a pause set before this transaction holds the mail it claims).
        """
        now = self._clock()
        node = self.node
        return await self._writer.submit(
            lambda c: queue.claim(c, now, limit, lease, node), durable=False
        )

    async def finish(self, finishes: Iterable[Finish], events: Sequence[OutboxEvent] = ()) -> int:
        """Persist outcomes, and the webhook events that report them; returns how many moved.

        A recipient no longer ``sending`` under this node's lease (deleted, or
        taken back and maybe claimed by another node) is left alone and its log
        row is still closed, so the log tells what happened.
        """
        redact = self.redact
        items = [replace(f, reply=redact(f.reply)) for f in finishes]
        events = self._redacted(events)
        now = self._clock()
        node = self.node
        due = any(f.status is RecipientStatus.QUEUED for f in items)
        moved = await self._writer.submit(
            self._announcing(
                lambda c: queue.finish(c, now, items, events, node),
                wake=lambda _: due,
                outbox_wake=lambda _: bool(events),
            )
        )
        if due:
            self.wake.set()
        if events:
            self.outbox_wake.set()
        return moved

    async def release(
        self, claim: Claim, *, reply: str, next_attempt_at: float | None = None
    ) -> None:
        """Give a claim back without counting an attempt (e.g. at shutdown).

        Only what this node still holds goes back (as in ``finish``).
        """
        now = self._clock()
        due = now if next_attempt_at is None else next_attempt_at
        reply = self.redact(reply)
        node = self.node
        # Due now (a shutdown gives its claims back): another node may take them at once.
        await self._writer.submit(
            self._announcing(
                lambda c: queue.release(c, now, claim, reply, due, node),
                wake=lambda _: due <= now,
            )
        )

    async def requeue_inflight(self) -> int:
        """At start-up: recipients a crash left ``sending`` go back to the queue.

        On a shared store, only this node's (``spool.node``): another node's
        leases are its own, or the lease sweep's once it stopped beating.
        """
        now = self._clock()
        node, everyone = self.node, not self.shared
        n = await self._writer.submit(
            self._announcing(
                lambda c: queue.requeue_inflight(c, now, node, everyone=everyone), wake=bool
            )
        )
        if n:
            self.wake.set()
        return n

    async def requeue_expired_leases(
        self, keep: Collection[int] = (), *, node_timeout: float = 30.0
    ) -> int:
        """Leases that outlived any possible attempt go back to the queue; how many.

        ``keep``: recipient ids left alone, whatever their lease (their outcome
        is known to the scheduler, not yet written). On a shared store, another
        node's expired leases go back only once its heartbeat is older than
        ``node_timeout`` (``spool.node_timeout``): until then they are its own,
        and only it knows its ``keep``.
        """
        now = self._clock()
        kept = frozenset(keep)
        node, everyone = self.node, not self.shared
        n = await self._writer.submit(
            self._announcing(
                lambda c: queue.requeue_expired_leases(
                    c, now, kept, node, stale_before=now - node_timeout, everyone=everyone
                ),
                wake=bool,
            )
        )
        if n:
            self.wake.set()
        return n

    async def retry_now(self, queue_id: str, *, actor: str | None = None) -> int:
        """Make every unsent recipient of a message due now (``postqueue -i``).

        With an ``actor`` (an operator's action), the audit log records who, in
        the same transaction.
        """
        now = self._clock()

        def job(c: Conn) -> int:
            n = queue.retry_now(c, now, queue_id)
            if actor is not None:
                controls.audit(c, now, actor, Action.RETRY, queue_id, n, "made due now")
            return n

        n = await self._writer.submit(self._announcing(job, wake=bool))
        self.wake.set()
        return n

    async def delete(self, queue_id: str, *, actor: str | None = None) -> None:
        """Delete a message (``postsuper -d``); its log rows stay.

        With an ``actor``, the audit log records who deleted it and how many of
        its recipients were still unsent: the message itself is gone after.
        """
        now = self._clock()

        def job(c: Conn) -> None:
            unsent = queue.delete(c, queue_id)
            if actor is not None:
                detail = f"{plural(unsent, 'recipient')} not yet delivered"
                controls.audit(c, now, actor, Action.DELETE, queue_id, unsent, detail)

        await self._writer.submit(job)

    async def prune(self, *, log_retention: float, keep_sent: float, limit: int = 5000) -> int:
        """Drop old log rows and long-finished messages; returns messages removed."""
        now = self._clock()
        return await self._writer.submit(
            lambda c: queue.prune(c, now, log_retention, keep_sent, limit)
        )

    async def body(self, message_id: int) -> bytes:
        """The stored bytes of a message (the scheduler reads them for each attempt)."""
        return await queue.body(self._reader, self._writer, message_id)

    # ------------------------------------------------------------ the outboxes

    async def enqueue_dsn(
        self,
        msg: NewMessage,
        *,
        recipient_ids: Sequence[int],
        kind: str,
        sender: str,
        per_hour: int,
    ) -> DsnVerdict:
        """Enqueue a DSN about ``recipient_ids`` to ``sender``, at most once each, rate-limited.

        The check, the marks and the message are one transaction: a crash
        cannot send a DSN twice, nor mark one that was never queued. The DSN
        quotes the provider's reply, so it passes ``redact`` as well.
        """
        now = self._clock()
        text = msg.data.decode("utf-8", "surrogateescape")
        masked = self.redact(text)
        if masked != text:
            msg = replace(msg, data=masked.encode("utf-8", "surrogateescape"))

        def job(c: Conn) -> DsnVerdict:
            verdict, fresh = outbox.dsn_verdict(c, now, recipient_ids, kind, sender, per_hour)
            if verdict is DsnVerdict.QUEUED:
                queue.insert_message(c, msg, node=self.node)
            sent_as = msg.queue_id if verdict is DsnVerdict.QUEUED else ""
            outbox.mark_dsns(c, now, fresh, kind, sender, sent_as)
            return verdict

        verdict = await self._writer.submit(
            self._announcing(job, wake=lambda v: v is DsnVerdict.QUEUED)
        )
        if verdict is DsnVerdict.QUEUED:
            self.wake.set()
        return verdict

    async def add_events(self, events: Sequence[OutboxEvent]) -> None:
        """Store webhook events that no outcome carries (a provider's state change)."""
        events = self._redacted(events)
        if events:
            await self._writer.submit(
                self._announcing(lambda c: outbox.insert_events(c, events), outbox_wake=_always)
            )
            self.outbox_wake.set()

    def _redacted(self, events: Sequence[OutboxEvent]) -> Sequence[OutboxEvent]:
        """``events`` with their bodies through ``redact`` (valid JSON still)."""
        return [replace(e, body=self.redact.json_text(e.body)) for e in events]

    async def outbox_next(self, endpoint: str) -> OutboxRow | None:
        """An endpoint's oldest unacknowledged event (read on the writer: always fresh)."""
        return await self._writer.submit(lambda c: outbox.next_row(c, endpoint), durable=False)

    async def outbox_delivered(self, row_id: int, status: int) -> None:
        """The receiver acknowledged event ``row_id`` with HTTP ``status``."""
        now = self._clock()
        await self._writer.submit(lambda c: outbox.delivered(c, now, row_id, status))

    async def outbox_failed(
        self, row_id: int, *, status: int | None, error: str, next_attempt_at: float
    ) -> None:
        """A try of event ``row_id`` failed; it is due again at ``next_attempt_at``."""
        now = self._clock()
        await self._writer.submit(
            lambda c: outbox.failed(c, now, row_id, status, error, next_attempt_at)
        )

    async def outbox_recent(self, endpoint: str, limit: int = 50) -> list[OutboxRow]:
        """The latest events of one endpoint, newest first (the admin's Webhooks page)."""
        return await outbox.recent(self._reader, endpoint, limit)

    async def outbox_counts(self) -> dict[str, dict[str, int]]:
        """Per endpoint URL: events ``pending``, ``delivered``, and ``failing`` (tried, waiting)."""
        return await outbox.counts(self._reader)

    async def prune_notifications(self, *, events_before: float, dsn_before: float) -> None:
        """Drop webhook events, and DSN marks, older than the times given."""
        await self._writer.submit(lambda c: outbox.prune(c, events_before, dsn_before))

    # --------------------------------------------------------- operator controls

    async def count_selected(self, selection: Selection, action: str) -> Selected:
        """How many recipients ``action`` would affect now (the confirmation step)."""
        return await controls.count_selected(self._reader, selection, action, self._clock())

    async def control(
        self, selection: Selection, control: Control, *, endpoints: Sequence[Endpoint] = ()
    ) -> int:
        """Hold, release or reroute the selected recipients; audited; returns how many.

        Hold (``postsuper -h``): queued and deferred recipients are never
        claimed until released. Release (``postsuper -H``): due now. Reroute
        (KumoMTA's ``rebind``): the next attempt goes through one provider.
        An empty selection affects nothing (``Selection.everything`` to mean all).

        ``endpoints`` (``notify.webhooks``) get a ``held`` or ``released``
        event per recipient changed, stored in the same transaction.
        """
        job = controls.control(self._clock(), selection, control, endpoints)
        n, evented = await self._writer.submit(
            self._announcing(
                job,
                wake=lambda r: bool(r[0]) and control.action != "hold",
                outbox_wake=lambda r: bool(r[1]),
            )
        )
        if n and control.action != "hold":
            self.wake.set()
        if evented:
            self.outbox_wake.set()
        return n

    async def hold_claimed(
        self,
        claim: Claim,
        rids: Iterable[int],
        reason: str,
        *,
        actor: str = "hold.rules",
        endpoints: Sequence[Endpoint] = (),
    ) -> int:
        """Put claimed recipients on hold (a ``hold.rules`` rule); no attempt is logged.

        ``endpoints`` get a ``held`` event per recipient held, in the same transaction.
        """
        now = self._clock()
        ids, node = list(rids), self.node
        n, evented = await self._writer.submit(
            self._announcing(
                lambda c: controls.hold_claimed(c, now, claim, ids, reason, actor, endpoints, node),
                outbox_wake=lambda r: bool(r[1]),
            )
        )
        if evented:
            self.outbox_wake.set()
        return n

    async def expire_held(self, expire_after: float) -> int:
        """Held longer than ``expire_after`` seconds: expired, with the reason; audited."""
        now = self._clock()
        return await self._writer.submit(lambda c: controls.expire_held(c, now, expire_after))

    async def pause_provider(
        self, provider: str, *, actor: str, reason: str = "", until: float | None = None
    ) -> None:
        """Pause delivery through ``provider`` (``ALL_PROVIDERS``: all); audited."""
        now = self._clock()
        await self._writer.submit(
            lambda c: controls.pause_provider(c, now, provider, actor, reason, until)
        )

    async def resume_provider(self, provider: str, *, actor: str) -> int | None:
        """End a pause; recipients waiting for it are due now. None: it was not paused."""
        now = self._clock()
        n = await self._writer.submit(
            self._announcing(lambda c: controls.resume_provider(c, now, provider, actor), wake=bool)
        )
        if n:
            self.wake.set()
        return n

    async def record_audit(
        self, actor: str, action: str, target: str, detail: str, *, count: int = 0
    ) -> None:
        """One audit-log row for an action that changes no spool row (a config edit)."""
        now = self._clock()
        await self._writer.submit(
            lambda c: controls.audit(c, now, actor, action, target, count, detail)
        )

    async def end_expired_pauses(self) -> list[str]:
        """Forget pauses whose duration ran out (they resumed by themselves); audited."""
        now = self._clock()
        # Not fsynced on its own: a pause that ran out is no pause whether or
        # not this row survives a power cut (the next sweep removes it again).
        return await self._writer.submit(
            lambda c: controls.end_expired_pauses(c, now), durable=False
        )

    # ------------------------------------------------------------------- views

    async def get(self, queue_id: str) -> MessageDetail:
        """A message's envelope, its recipients and its delivery-log rows."""
        return await views.get(self._reader, queue_id)

    async def raw(self, queue_id: str) -> bytes:
        """The stored bytes of a message, by queue ID (for ``.eml`` download)."""
        detail = await self.get(queue_id)
        return await self.body(detail.message_id)

    async def list_queue(
        self,
        *,
        statuses: Iterable[RecipientStatus] | None = None,
        search: str | None = None,
        before_id: int | None = None,
        limit: int = 50,
    ) -> list[QueueEntry]:
        """One page of queue entries, newest first; keyset pagination on ``id``.

        Pass the last entry's ``id`` as ``before_id`` for the next page: the
        cost of a page does not depend on how deep it is.
        """
        return await views.list_queue(
            self._reader, statuses=statuses, search=search, before_id=before_id, limit=limit
        )

    async def queue_marks(self, queue_ids: Iterable[str]) -> views.QueueMarks:
        """For a queue page: each message's recipient count, and who bounced after delivery."""
        return await views.queue_marks(self._reader, queue_ids)

    async def list_log(
        self,
        *,
        statuses: Iterable[AttemptStatus] | None = None,
        search: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before_id: int | None = None,
        limit: int = 50,
    ) -> list[LogEntry]:
        """One page of the delivery log, newest first; keyset pagination on ``id``."""
        return await views.list_log(
            self._reader,
            statuses=statuses,
            search=search,
            since=since,
            until=until,
            before_id=before_id,
            limit=limit,
        )

    async def counts_by_status(self) -> dict[RecipientStatus, int]:
        """Recipients per state (every state listed, 0 when none)."""
        return await views.counts_by_status(self._reader)

    async def oldest_pending(self) -> float | None:
        """When the longest-waiting unsent recipient entered the queue (None: none waits).

        Also the read ``/healthz`` makes to learn that the spool answers.
        """
        return await views.oldest_pending(self._reader)

    async def provider_failures(self, *, since: float) -> dict[str, int]:
        """Failed or deferred attempts per provider since ``since`` (the alert's count)."""
        return await views.provider_failures(self._reader, since)

    async def attempt_buckets(
        self, *, start: float, since: float, hour_ago: float
    ) -> list[AttemptBucket]:
        """Delivery-log rows since ``since`` by clock hour from ``start`` and status.

        One pass over the ``attempts_started`` index: its cost follows the
        traffic after ``since``, not the size of the log.
        """
        return await views.attempt_buckets(self._reader, start, since, hour_ago)

    async def pauses(self) -> dict[str, ProviderPause]:
        """Operator pauses in force now, by provider id (``ALL_PROVIDERS``: all).

        For the admin and the CLI; the scheduler gets them with each ``claim``.
        """
        return await views.pauses(self._reader, self._clock())

    async def waiting_via(self, provider: str) -> int:
        """Recipients still waiting whose last attempt went through ``provider``."""
        return await views.waiting_via(self._reader, provider)

    async def audit_log(self, *, before_id: int | None = None, limit: int = 50) -> list[AuditEntry]:
        """One page of the audit log, newest first; keyset pagination on ``id``."""
        return await views.audit_log(self._reader, before_id, limit)

    # ------------------------------------------------------------------- nodes

    async def node_join(
        self, pid: int, now: float, *, stale_before: float, seen: float | None = None
    ) -> bool:
        """Take this node's name for process ``pid``; False: a live holder has it.

        The name is free when nobody holds it, its holder stopped cleanly, or
        its last beat is before ``stale_before``; ``seen`` (a beat the caller
        watched go quiet) takes that very row. ``relay/store/membership.py``
        decides when to call it.
        """
        name = self.node
        return await self._writer.submit(
            lambda c: nodes.join(c, name, pid, now, stale_before, seen)
        )

    async def node_row(self) -> NodeRow | None:
        """This node name's row (read on the writer: the holder's last committed beat)."""
        name = self.node
        return await self._writer.submit(lambda c: nodes.row(c, name), durable=False)

    async def node_beat(self, pid: int, started_at: float, now: float) -> bool:
        """Record this node's heartbeat; False: another process took the name over."""
        name = self.node
        return await self._writer.submit(
            lambda c: nodes.beat(c, name, pid, started_at, now), durable=False
        )

    async def node_leave(self, pid: int, started_at: float) -> None:
        """Give the node name back (a clean stop): the next start need not wait."""
        name = self.node
        await self._writer.submit(lambda c: nodes.leave(c, name, pid, started_at))

    async def list_nodes(self) -> list[NodeRow]:
        """Every node that ever joined this store, by name, with its last heartbeat."""
        return await nodes.list_nodes(self._reader)

    # ------------------------------------------------------------------- state

    async def counter_add(self, name: str, window: str, delta: int = 1) -> int:
        """Add to a counter kept across restarts (e.g. a provider's daily usage).

        Committed without its own fsync: it survives a process crash at once,
        and a power cut once the delivery's outcome (always durable, written
        right after) is committed, since WAL frames reach the disk in order.
        """
        return await self._writer.submit(
            lambda c: state.counter_add(c, name, window, delta), durable=False
        )

    async def counter_prune(self, name: str, before: str) -> None:
        """Delete a counter's windows before ``before`` (a rolling limit's old slots)."""
        await self._writer.submit(lambda c: state.counter_prune(c, name, before), durable=False)

    async def counter_get(self, name: str, window: str) -> int:
        """A counter's value in one window (0 when never counted)."""
        return await state.counter_get(self._reader, name, window)

    async def counter_since(self, name: str, window: str) -> dict[str, int]:
        """A counter's windows from ``window`` on (keys sort as the windows do)."""
        return await state.counter_since(self._reader, name, window)

    # ----------------------------------------------- limits shared by a fleet

    async def _limit_job(self, job: Callable[[Conn], T]) -> T:
        """Run a ``relay.store.limits`` job, asking again while another node holds its limit.

        Written like ``counter_add`` (no fsync of its own). The lock is held to
        the other node's commit: a few milliseconds, so the first waits are short.

        Raises:
            SpoolError: the limit stayed taken for ``_LIMIT_PATIENCE`` seconds.
        """
        deadline = time.monotonic() + _LIMIT_PATIENCE
        pause = 0.001
        while True:
            try:
                return await self._writer.submit(job, durable=False)
            except limits.LimitBusy as busy:
                if time.monotonic() > deadline:
                    raise SpoolError(f"limit {busy} stayed taken by another node") from None
            await asyncio.sleep(random.uniform(pause / 2, pause))
            pause = min(pause * 2, 0.05)

    async def counter_reserve(
        self, name: str, window: str, oldest: str, want: int, limit: int
    ) -> int:
        """Atomically add up to ``want`` to ``name``'s ``window`` under ``limit``; how many.

        The limit counts the counter's windows from ``oldest`` on (``window``
        itself for a UTC day; the slots of the last 24 h for a rolling one),
        as every node sharing the store wrote them: a daily limit holds across
        the fleet. Give units back with ``counter_return``.
        """
        return await self._limit_job(
            lambda c: limits.counter_reserve(c, name, window, oldest, want, limit)
        )

    async def counter_return(self, name: str, window: str, n: int) -> None:
        """Give back ``n`` units that ``counter_reserve`` took (nothing was sent with them)."""
        await self._limit_job(lambda c: limits.counter_return(c, name, window, n))

    async def rate_reserve(
        self, name: str, *, per_second: float, capacity: float, want: int, max_wait: float
    ) -> RateGrant:
        """Take up to ``want`` tokens of the rate ``name`` kept in the store (GCRA).

        The same answer as ``TokenBucket.reserve_many`` (the wait for the
        first token, how many), for a bucket every node shares; ``got == 0``:
        the first token is more than ``max_wait`` away, nothing was taken.
        """
        clock = self._clock
        return await self._limit_job(
            lambda c: limits.rate_reserve(c, name, clock(), per_second, capacity, want, max_wait)
        )

    async def block_provider(self, provider: str, block: ProviderBlock) -> bool:
        """Tell every node to skip ``provider`` until ``block.until``; False if a longer
        block was already recorded."""
        return await self._limit_job(lambda c: limits.block_provider(c, provider, block))

    async def provider_blocks(self) -> dict[str, ProviderBlock]:
        """Providers skipped fleet-wide now (``block_provider``), by id."""
        return await limits.provider_blocks(self._reader, self._clock())

    async def meta_set(self, values: dict[str, str]) -> None:
        """Record daemon status values (e.g. the last reload) for other processes."""
        await self._writer.submit(lambda c: state.meta_set(c, values))

    async def meta_get(self, key: str) -> str | None:
        """One daemon status value, or None."""
        return await state.meta_get(self._reader, key)

    async def save_oauth_grant(self, provider: str, refresh_token: str) -> None:
        """Store a provider's refresh token (a sign-in, or a rotation by the provider)."""
        now = self._clock()
        await self._writer.submit(lambda c: state.save_oauth_grant(c, now, provider, refresh_token))

    async def oauth_grant_failed(self, provider: str, error: str) -> None:
        """The provider refused the stored token (revoked, expired): mark it failed."""
        now = self._clock()
        error = self.redact(error)
        await self._writer.submit(lambda c: state.oauth_grant_failed(c, now, provider, error))

    async def oauth_grant(self, provider: str) -> OAuthGrant | None:
        """A provider's stored sign-in, or ``None`` if nobody signed it in."""
        return await state.oauth_grant(self._reader, provider)

    async def admin_session_version(self) -> int:
        """The admin's current session version (0 until the first revocation)."""
        return await state.admin_session_version(self._reader)

    async def admin_session_key(self) -> str:
        """The key that signs the admin's session cookies, kept in the store (made once).

        For a store shared by a fleet: a login on one node's admin is good on
        every other, and ``revoke_admin_sessions`` ends it on all of them.
        """
        offered = secrets.token_urlsafe(32)
        return await self._writer.submit(lambda c: state.admin_session_key(c, offered))

    async def revoke_admin_sessions(self) -> int:
        """End every admin session by starting a new session version; returns it."""
        return await self._writer.submit(state.revoke_admin_sessions)

    async def probe_write(self, size: int = 1 << 20) -> None:
        """Grow the spool by ``size`` bytes and give them back, durably: can we write again?

        ``/healthz`` tries it while writes are failing, so that the failure
        clears once there is room again, even with no mail coming in. A small
        write would prove little: it can fit in pages the spool already has.

        Raises:
            SpoolError: it does not fit (the disk is still full) or fails; at
                once while the writer knows the disk is full (the probe would
                only eat the room the reserve gave back for the checkpoint).
        """
        if self._writer.disk_full:
            raise SpoolError("spool disk full")
        await self._writer.submit(lambda c: state.probe_write(c, size))

    async def short_of_room(self) -> str | None:
        """Why the spool's disk has no room for mail now, else None (``/healthz``).

        Looks at the file system itself, so it also sees a disk that the
        daemon's accept workers found full while the daemon wrote nothing.
        """
        return await asyncio.to_thread(self._writer.short_of_room)

    @property
    def disk_full(self) -> bool:
        """The spool's disk is full: mail is refused until the writer finds room (no I/O)."""
        return self._writer.disk_full

    @property
    def unreachable(self) -> bool:
        """The store's server was out of reach at the last try, under a second ago (no I/O).

        Never on SQLite (its file is here: a failing disk is ``disk_full``).
        """
        return not isinstance(self._writer, Writer) and self._writer.unreachable

    def health(self) -> SpoolHealth:
        """The last write failure and success, and how checkpoints go; no I/O."""
        checkpoints = None
        if self._checkpointer is not None:
            checkpoints = self._checkpointer.health
            if not self._checkpointer.alive and checkpoints.running:
                checkpoints = replace(checkpoints, running=False)
        return SpoolHealth(self._writer.health, checkpoints)
