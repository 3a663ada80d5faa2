"""The composition root: the only module that knows every part.

Start order: spool lock, spool (and requeue what a crash left in flight),
providers, SMTP listeners, scheduler, admin. Stop order is the reverse, held
by one ``AsyncExitStack`` so that a failure half-way through start-up still
closes what was opened. Signals go through ``loop.add_signal_handler``:
TERM/INT stop gracefully (a second one exits at once), HUP reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from admin.backend import Backend, DaemonStatus
from admin.server import AdminServer, check_exposure
from relay import logsetup
from relay.address_rules import AddressRules
from relay.bounces.check import check_mailbox
from relay.bounces.mailbox import MailboxError
from relay.bounces.poller import BouncePoller, PollStatus
from relay.config import Config, ProviderSettings
from relay.config_edit import digest_of, load_with_text
from relay.errors import ConfigError, ListenError, SpoolError
from relay.inbound.auth import FailureCounter, LocalFailures
from relay.inbound.listener import Listener, RelayHandler, start_listeners
from relay.inbound.policy import LocalRates, WindowCounter
from relay.inbound.workers import AcceptorPool, WorkerSettings
from relay.metrics import Metrics
from relay.model import ACTIVE, RecipientStatus
from relay.notify.hook import Notifications
from relay.notify.webhooks import WebhookSender
from relay.operations.config_edits import EditContext, secrets_dir_of
from relay.outbound.oauth import TokenSource
from relay.outbound.probe import TestReport, connection_answer, test_provider
from relay.outbound.providers import ProviderSet
from relay.outbound.scheduler import Scheduler, Snapshot
from relay.outbound.shared_limits import Fleet
from relay.outbound.sign_in import SignIn, SignIns
from relay.sdnotify import Notifier
from relay.secrets import Redactor
from relay.store.lock import spool_lock
from relay.store.membership import Membership
from relay.store.node_status import write_status
from relay.store.singleton import one_node_at_a_time
from relay.store.spool import Spool
from relay.wording import plural

__all__ = ["Daemon", "ready_summary"]

log = logging.getLogger("sluice.daemon")

_PRUNE_EVERY = 3600.0
#: the name of the turn held by the node that prunes the spool for a fleet
PRUNE_TURN = "prune"
_PRUNE_BATCH = 2000
#: How long the admin's "Test connection" may take.
_TEST_TIMEOUT = 10.0


def ready_summary(counts: dict[RecipientStatus, int]) -> str:
    """The start-up line's numbers: what is still to deliver, then what is kept as history.

    >>> ready_summary({RecipientStatus.DEFERRED: 1, RecipientStatus.SENT: 487})
    '1 recipient pending delivery (487 sent, kept for spool.keep_sent)'
    """
    pending = sum(counts.get(s, 0) for s in ACTIVE)
    text = f"{plural(pending, 'recipient')} pending delivery"
    done = [f"{n} {s.value}" for s in RecipientStatus if s not in ACTIVE and (n := counts.get(s))]
    if done:
        text += f" ({', '.join(done)}, kept for spool.keep_sent)"
    return text


def _reason(exc: OSError) -> str:
    """The system's words for ``exc`` ("Address already in use"), without the wrapping."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


class Daemon:
    """A running Sluice: listeners, scheduler and admin around one spool."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: Path | None = None,
        clock: Callable[[], float] = time.time,
        notifier: Notifier | None = None,
        config_text: str | None = None,
    ) -> None:
        self._config_path = config_path
        #: the text of the config file the running config was loaded from (None: not
        #: known yet, read at start), and its sha256: what a config edit compares with
        self._config_text = config_text
        # Recorded for `sluice reload`, which may run in another directory.
        self._config_resolved = config_path.resolve() if config_path is not None else None
        self.notifier = notifier if notifier is not None else Notifier.from_env()
        self._reload_lock = asyncio.Lock()
        #: the outcome of the last reload, for the admin page, /healthz and ``sluice reload``
        self.reloads = 0
        self.last_reload_at: float | None = None
        self.last_reload_error: str | None = None
        self._clock = clock
        self._snapshot: Snapshot | None = None
        self._initial = config
        self._stop = asyncio.Event()
        self._stopping_hard = False
        self.hostname = ""
        #: the address rules of one config snapshot, made again when the snapshot changes
        self._rules: tuple[Config, AddressRules] | None = None
        self.spool: Spool | None = None
        #: the nodes sharing the store (``spool.shared``), else None
        self._fleet: Fleet | None = None
        self.listener: Listener | None = None
        #: the accept worker processes, with ``smtp.workers`` > 0
        self.acceptors: AcceptorPool | None = None
        self.scheduler: Scheduler | None = None
        self.notifications: Notifications | None = None
        self.webhooks: WebhookSender | None = None
        self.admin: AdminServer | None = None
        #: the bounce mailbox's poller (runs whether or not one is configured: a reload may add it)
        self.bounces: BouncePoller | None = None
        self._mailbox_oauth: TokenSource | None = None
        #: device sign-ins started from the admin (Connect)
        self._sign_ins: SignIns | None = None
        #: the admin's cookie key kept in a shared store (None: the admin makes its own)
        self._session_key: str | None = None
        self.ready = asyncio.Event()
        self.metrics = Metrics()
        self.started_at = clock()

    # ------------------------------------------------------------ state access

    def snapshot(self) -> Snapshot:
        assert self._snapshot is not None, "the daemon is not started"
        return self._snapshot

    @property
    def config(self) -> Config:
        return self.snapshot().config

    def address_rules(self) -> AddressRules:
        """The current config's address rules (asked at each RCPT and each message)."""
        cfg = self.config
        if self._rules is None or self._rules[0] is not cfg:
            self._rules = (cfg, AddressRules.from_config(cfg, self.hostname))
        return self._rules[1]

    def stop(self) -> None:
        """Begin a graceful stop (what SIGTERM does)."""
        if self._stop.is_set():
            if not self._stopping_hard:
                self._stopping_hard = True
                log.warning("second stop signal: exiting without waiting")
                os._exit(1)
        log.info("stopping")
        self._stop.set()

    async def reload(self) -> bool:
        """Re-read the config file and apply it; keep the running config if it is invalid.

        Provider, retry, limit and log changes apply to the next attempts and
        sessions (in-flight deliveries keep the snapshot they started with); a
        changed ``smtp.listen`` is rebound (new sockets first, then the old are
        closed); the spool path cannot change without a restart. The outcome is
        kept in ``last_reload_at``/``last_reload_error`` and in the node's status
        file (``relay/store/node_status.py``), where ``sluice reload`` watches for it.
        """
        if self._stop.is_set():
            log.warning("reload ignored: the daemon is stopping", extra={"event": "reload"})
            return False
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                error = await self._apply_reload()
            except Exception as exc:  # a bug must not kill the daemon on SIGHUP
                log.exception("reload failed unexpectedly", extra={"event": "reload"})
                error = f"internal error: {exc}"
            self.reloads += 1
            self.last_reload_at = self._clock()
            self.last_reload_error = error
            await self._record_status(
                {
                    "reload.id": f"{os.getpid()}:{self.reloads}",
                    "reload.at": f"{self.last_reload_at:.3f}",
                    "reload.error": error or "",
                }
            )
            self.notifier.ready(self.status_text())
            return error is None

    async def _apply_reload(self) -> str | None:
        """Validate and swap in the new config; the error text, or None on success."""
        if self._config_path is None:
            log.warning("reload asked, but the daemon was not started from a file")
            return "the daemon was not started from a config file"
        source = self._config_path
        try:
            new, text = await asyncio.to_thread(load_with_text, source)
        except ConfigError as exc:
            for issue in exc.issues:
                log.error("reload rejected: %s", issue, extra={"event": "reload"})
            log.error("kept the running configuration", extra={"event": "reload"})
            return "; ".join(exc.issues)
        old = self.snapshot()
        for key in ("path", "url", "node"):
            was, now = getattr(old.config.spool, key), getattr(new.spool, key)
            if was != now:
                msg = (
                    f"{source}: spool.{key}: cannot change on reload (running on "
                    f"{was}); restart sluice to use {now}"
                )
                log.error("reload rejected: %s", msg, extra={"event": "reload"})
                return msg
        if new.smtp.hostname != old.config.smtp.hostname:
            log.warning("smtp.hostname changes take effect at the next restart")
        if new.spool.heartbeat != old.config.spool.heartbeat:
            log.warning("spool.heartbeat changes take effect at the next restart")
        if new.smtp.workers != old.config.smtp.workers:
            log.warning("smtp.workers changes take effect at the next restart")
        # Listeners first: binding is what fails in practice (address in use), and
        # building providers adopts the new settings into their shared state.
        listener = self.listener
        old_endpoints = list(listener.endpoints) if listener is not None else []
        rebound = listener is not None and set(new.smtp.endpoints) != set(old_endpoints)
        if rebound:
            assert listener is not None
            try:
                await listener.rebind(new.smtp.endpoints)
            except OSError as exc:
                wanted = ", ".join(str(ep) for ep in new.smtp.endpoints)
                msg = f"{source}: smtp.listen: cannot listen on {wanted}: {exc.strerror or exc}"
                log.error("reload rejected: %s", msg, extra={"event": "reload"})
                return msg
        try:
            # Health, usage and tokens of providers whose id stays carry over.
            providers = ProviderSet.from_config(
                new,
                local_hostname=self.hostname,
                previous=old.providers,
                counters=self.spool,
                grants=self.spool,
                health_log=self.spool,
                fleet=self._fleet,
            )
        except LookupError as exc:  # a secret vanished between validation and use
            if rebound:
                assert listener is not None
                with contextlib.suppress(OSError):
                    await listener.rebind(old_endpoints)
            log.error("reload rejected: %s", exc, extra={"event": "reload"})
            return str(exc)
        if rebound:
            assert listener is not None
            for ep in listener.addresses:
                log.info("listening smtp=%s:%d", ep.host, ep.port)
            await self._record_listen()
        self._snapshot = Snapshot(new, providers)
        self._config_text = text
        await self._record_digest()
        if self.spool is not None:
            self.spool.stream_headers = new.suppression.stream_headers
            self.spool.redact = Redactor(logsetup.config_secrets(new))
        logsetup.apply_config(new)
        if self.acceptors is not None:
            if rebound:  # they serve the new sockets; the old ones finish their sessions
                await self.acceptors.restart(grace=self._session_grace())
            else:
                self.acceptors.reconfigure()
        log.info("configuration reloaded from %s", source, extra={"event": "reload"})
        # In-flight deliveries keep the provider objects they started with.
        await old.providers.aclose()
        await providers.publish_health()  # a provider new to the config starts "unknown"
        return None

    @property
    def accepting(self) -> bool:
        """Whether SMTP connections are being taken (by the daemon or its workers)."""
        if self.acceptors is not None:
            return self.acceptors.alive > 0
        return self.listener is not None and any(s.is_serving() for s in self.listener.servers)

    def admin_status(self) -> DaemonStatus:
        """What the admin page and ``/healthz`` tell about this daemon, now."""
        acceptors = self.acceptors
        return DaemonStatus(
            started_at=self.started_at,
            listener_up=self.accepting,
            last_reload_error=self.last_reload_error,
            last_reload_at=self.last_reload_at,
            accept_workers=acceptors.configured if acceptors is not None else 0,
            accept_workers_alive=acceptors.alive if acceptors is not None else 0,
            bounce_mailbox=self.config.bounces.mailbox is not None,
            bounce_mailbox_error=self.bounces.status.last_error if self.bounces else "",
            bounce_mailbox_last_ok_at=self.bounces.status.last_ok_at if self.bounces else None,
            outcomes_unrecorded=self.scheduler.unrecorded if self.scheduler is not None else 0,
        )

    async def test_connection(self, provider_id: str) -> TestReport:
        """The real connection check against one configured provider (no mail is sent)."""
        return await test_provider(
            self.config.provider(provider_id), local_hostname=self.hostname, timeout=_TEST_TIMEOUT
        )

    async def _provider_states(self) -> dict[str, str]:
        """Provider id -> health now, for ``provider_state`` webhook events.

        Asked after every outcome: the health words alone, without the daily
        counts and token state that a full ``status()`` reads.
        """
        return self.snapshot().providers.health()

    def admin_backend(self) -> Backend:
        """What the admin may read and do, handed to ``AdminServer.start``."""
        assert self.spool is not None, "the daemon is not started"

        def bounce_mailbox() -> PollStatus | None:
            # A copy: the admin reads it, the poller alone changes it.
            if self.bounces is None or self.config.bounces.mailbox is None:
                return None
            return dataclasses.replace(self.bounces.status)

        async def bounce_folders() -> list[str]:
            # Looked up per call: the admin starts before the poller exists.
            if self.bounces is None:
                raise MailboxError("the bounce mailbox poller is not running yet")
            return await self.bounces.folders()

        return Backend(
            spool=self.spool,
            snapshot=self.snapshot,
            metrics=self.metrics,
            reload=self.reload,
            test_connection=self.test_connection,
            status=self.admin_status,
            hostname=self.hostname,
            clock=self._clock,
            bounce_mailbox=bounce_mailbox,
            sign_in_start=self.start_sign_in,
            sign_in_state=self._sign_ins.get if self._sign_ins is not None else None,
            bounce_folders=bounce_folders,
            config_digest=self.config_digest,
            edit_context=self.edit_context if self._config_path is not None else None,
            session_key=self._session_key,
        )

    async def start_sign_in(self, provider_id: str) -> SignIn:
        """Start a provider's device sign-in (the admin's Connect button).

        Raises:
            KeyError: no such provider.
            DeviceFlowError: it has no device sign-in, or the endpoint refused.
        """
        assert self._sign_ins is not None, "the daemon is not started"
        return await self._sign_ins.start(self.config.provider(provider_id))

    def status_text(self) -> str:
        """One line for ``systemctl status`` (sd_notify ``STATUS=``)."""
        listen = ", ".join(str(ep) for ep in self.listener.addresses) if self.listener else "-"
        text = f"accepting mail on {listen}"
        if self.last_reload_error:
            text += f"; last reload failed: {self.last_reload_error[:200]}"
        return text

    def config_digest(self) -> str | None:
        """sha256 of the config file the running config came from (None: not from a file)."""
        if self._config_text is None:
            return None
        return digest_of(self._config_text.encode("utf-8"))

    async def _record_digest(self) -> None:
        """Keep the running file's digest (``daemon.config_sha256``) for the CLI."""
        digest = self.config_digest()
        if digest is not None:
            await self._record_status({"daemon.config_sha256": digest})

    async def _record_status(self, values: dict[str, str], *, fresh: bool = False) -> None:
        """Tell the other processes on this host (``relay/store/node_status.py``).

        A file beside the lock, not the store: on a store shared by a fleet
        these facts are this node's alone, and ``sluice reload`` must see them
        while the database is down. A full disk only costs the CLI its answer.
        """
        path = self._initial.spool.path
        try:
            await asyncio.to_thread(write_status, path, values, fresh=fresh)
        except OSError as exc:
            log.warning("could not record %s in %s: %s", ", ".join(values), path, exc)

    def edit_context(self) -> EditContext:
        """What a config edit from the admin needs: this daemon's checks, its reload, its file."""
        assert self.spool is not None and self._config_path is not None
        cfg = self.config
        secrets_dir = secrets_dir_of(cfg, self._config_path)
        hostname = self.hostname

        async def check(p: ProviderSettings) -> str | None:
            return await connection_answer(p, local_hostname=hostname, timeout=_TEST_TIMEOUT)

        async def reload() -> str | None:
            return None if await self.reload() else (self.last_reload_error or "refused")

        return EditContext(
            config_path=self._config_path,
            spool=self.spool,
            secrets_dir=secrets_dir,
            loaded_digest=self.config_digest(),
            loaded_text=self._config_text,
            check_provider=check,
            check_mailbox=check_mailbox,
            reload=reload,
        )

    async def _record_listen(self, *, fresh: bool = False) -> None:
        """Tell other processes (``sluice sendmail``, ``sluice reload``) where we are.

        ``fresh`` (at start): what an earlier run recorded is dropped.
        """
        if self.listener is None:
            return
        await self._record_status(
            {
                "daemon.pid": str(os.getpid()),
                "daemon.listen": " ".join(str(ep) for ep in self.listener.addresses),
                "daemon.config": str(self._config_resolved or ""),
            },
            fresh=fresh,
        )

    # --------------------------------------------------------------- lifecycle

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Daemon]:
        """Start everything; on exit stop everything in reverse order."""
        cfg = self._initial
        if cfg.admin.enabled:
            check_exposure(cfg.admin)  # before anything opens: a refused config changes nothing
        # Resolved once, in a thread: aiosmtpd would call getfqdn() per connection.
        if cfg.smtp.hostname:
            self.hostname = cfg.smtp.hostname
        else:
            self.hostname = await asyncio.to_thread(socket.getfqdn)
        async with contextlib.AsyncExitStack() as stack:
            stack.enter_context(spool_lock(cfg.spool.path))
            spool = await Spool.open(cfg.spool, clock=self._clock, checkpoints=True)
            spool.stream_headers = cfg.suppression.stream_headers
            spool.redact = Redactor(logsetup.config_secrets(cfg))
            stack.push_async_callback(spool.aclose)
            # Nodes sharing the store hold providers' limits and skips together.
            self._fleet = Fleet(spool, spool.node) if spool.shared else None
            self.spool = spool
            if spool.shared:
                await self._join_fleet(spool, stack)
            spool.listen()  # other nodes' wake-ups (a shared store; nothing on SQLite)
            try:
                requeued = await spool.requeue_inflight()
            except SpoolError as exc:
                # A full disk must not keep the daemon from starting (it
                # refuses mail until there is room): these leases expire and
                # the scheduler requeues them then.
                log.error("could not requeue what the last run left in flight: %s", exc)
                requeued = 0
            if requeued:
                log.warning(
                    "requeued %s left in flight by the last run", plural(requeued, "recipient")
                )
            self._snapshot = Snapshot(
                cfg,
                ProviderSet.from_config(
                    cfg,
                    local_hostname=self.hostname,
                    counters=spool,
                    grants=spool,
                    health_log=spool,
                    clock=self._clock,
                    fleet=self._fleet,
                ),
            )
            stack.push_async_callback(lambda: self.snapshot().providers.aclose())
            await self.snapshot().providers.publish_health()
            self._sign_ins = SignIns(spool.save_oauth_grant, clock=self._clock)
            stack.push_async_callback(self._sign_ins.aclose)

            #: ``smtp.policies`` rates, one count for this process and every accept worker
            rates = WindowCounter()
            #: failed AUTHs per client address, one count for this process and every worker
            auth_failures = FailureCounter()
            handler = RelayHandler(
                spool,
                lambda: self.config.smtp,
                hostname=self.hostname,
                clock=self._clock,
                events=self.metrics,
                rules=self.address_rules,
                rates=LocalRates(rates),
            )
            workers = cfg.smtp.worker_count
            try:
                self.listener = await start_listeners(
                    lambda: self.config.smtp,
                    handler,
                    hostname=self.hostname,
                    serve=workers == 0,
                    auth_failures=LocalFailures(auth_failures),
                )
            except OSError as exc:
                wanted = ", ".join(str(ep) for ep in cfg.smtp.endpoints)
                raise ListenError("smtp.listen", wanted, _reason(exc)) from exc
            stack.push_async_callback(self._close_listener)
            if workers:
                self.acceptors = AcceptorPool(
                    workers,
                    settings=self._worker_settings,
                    sockets=lambda: self.listener.bound if self.listener else [],
                    events=self.metrics,
                    wake=spool.wake.set,
                    rates=rates,
                    auth_failures=auth_failures,
                )
                # Stopped before the listener's sockets close (the stack is LIFO).
                stack.push_async_callback(self._close_acceptors)
                await self.acceptors.start()
            for ep in self.listener.addresses:
                log.info("listening smtp=%s:%d", ep.host, ep.port)
            await self._record_listen(fresh=True)
            if self._config_text is None and self._config_path is not None:
                # Started with a config loaded elsewhere (tests, embedding): the
                # file as it is now stands for it.
                with contextlib.suppress(OSError, UnicodeDecodeError):
                    self._config_text = await asyncio.to_thread(
                        self._config_path.read_text, encoding="utf-8"
                    )
            await self._record_digest()

            self.notifications = Notifications(
                spool,
                lambda: self.config,
                hostname=self.hostname,
                provider_states=self._provider_states,
                clock=self._clock,
            )
            self.scheduler = Scheduler(
                spool,
                self.snapshot,
                clock=self._clock,
                metrics=self.metrics,
                outcome_hook=self.notifications,
            )
            self.webhooks = WebhookSender(
                spool, lambda: self.config, clock=self._clock, fleet=spool
            )
            if spool.shared:
                # One cookie key for the fleet: a login on any node's admin is
                # good on every node (and the store's session version ends it).
                self._session_key = await spool.admin_session_key()
            if cfg.admin.enabled:
                # Bound before the TaskGroup: an error raised inside its body
                # would leave as an ExceptionGroup traceback, not one line.
                self.admin = await AdminServer.start(self.admin_backend(), cfg.admin)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.scheduler.run(self._stop), name="scheduler")
                tg.create_task(
                    one_node_at_a_time(
                        spool, PRUNE_TURN, self._stop, self._prune_loop, what="prunes the spool"
                    ),
                    name="pruner",
                )
                self.bounces = BouncePoller(
                    spool.suppressions,
                    lambda: self.config,
                    clock=self._clock,
                    oauth_token=self._mailbox_token,
                    fleet=spool,
                )
                tg.create_task(self.bounces.run(self._stop), name="bounces")
                tg.create_task(self.webhooks.run(self._stop), name="webhooks")
                if self.admin is not None:
                    tg.create_task(self.admin.serve(), name="admin")
                    log.info("listening admin=%s", self.admin.address)
                self.ready.set()
                # READY before counting: the count reads the whole status index.
                self.notifier.ready(self.status_text())
                log.info("sluice ready: %s", ready_summary(await spool.counts_by_status()))
                try:
                    yield self
                finally:
                    self.notifier.stopping("stopping: finishing deliveries in flight")
                    self._stop.set()
                    if self.listener is not None:
                        self.listener.stop_accepting()
                    if self.acceptors is not None:
                        self.acceptors.stop_accepting(self._session_grace())
                    if self.admin is not None:
                        self.admin.stop()

    async def _join_fleet(self, spool: Spool, stack: contextlib.AsyncExitStack) -> None:
        """Take this node's name on the shared store and beat until the very end.

        Before the start-up requeue, which takes back this node's own leases:
        they must not be a live namesake's. The heartbeat stops after the
        scheduler's drain (the stack closes after the TaskGroup), so a node
        finishing its deliveries at shutdown is never taken for dead.
        """
        settings = self._initial.spool
        membership = Membership(
            spool, heartbeat=settings.heartbeat, timeout=settings.node_timeout, clock=self._clock
        )
        await membership.join()
        stack.push_async_callback(membership.leave)
        beats = asyncio.create_task(membership.run(self.stop), name="heartbeat")

        async def stop_beating() -> None:
            beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beats

        stack.push_async_callback(stop_beating)
        log.info(
            "node %s joined the fleet on %s (heartbeat %gs, node_timeout %gs)",
            spool.node,
            spool.where,
            settings.heartbeat,
            settings.node_timeout,
        )

    async def _mailbox_token(self) -> str:
        """An XOAUTH2 access token for the bounce mailbox (Microsoft 365, Gmail)."""
        box = self.config.bounces.mailbox
        assert box is not None and box.oauth2 is not None
        source = self._mailbox_oauth
        if source is None or not source.same_settings(box.oauth2):
            source = TokenSource(
                box.oauth2, provider_id="bounces.mailbox", clock=self._clock, grants=self.spool
            )
            self._mailbox_oauth = source
        return await source.token()

    def _worker_settings(self) -> WorkerSettings:
        cfg = self.config
        return WorkerSettings(
            cfg.smtp,
            cfg.log,
            cfg.spool,
            self.hostname,
            sluice_logs=logsetup.installed(),
            stream_headers=cfg.suppression.stream_headers,
            rules=self.address_rules(),
        )

    def _session_grace(self) -> float:
        """How long open SMTP sessions may go on at shutdown before they get 421."""
        return min(5.0, self.config.delivery.shutdown_grace)

    async def _close_acceptors(self) -> None:
        if self.acceptors is not None:
            await self.acceptors.aclose(grace=self._session_grace())

    async def _close_listener(self) -> None:
        if self.listener is not None:
            await self.listener.aclose(grace=self._session_grace())

    async def _prune_loop(self, until: asyncio.Event) -> None:
        """Prune every ``_PRUNE_EVERY`` until ``until`` (a stop, or the prune turn lost).

        One node of a fleet prunes for all (the ``prune`` turn): the rows are
        the same for every node, and two would only wait on each other's locks.
        """
        while not until.is_set():
            assert self.spool is not None
            cfg = self.config
            removed = 0
            try:
                # In batches, so that a long backlog neither waits for the next
                # round nor holds the writer in one huge transaction.
                while not until.is_set():
                    n = await self.spool.prune(
                        log_retention=cfg.log.retention,
                        keep_sent=cfg.spool.keep_sent,
                        limit=_PRUNE_BATCH,
                    )
                    removed += n
                    if n < _PRUNE_BATCH:
                        break
                now = self._clock()
                await self.spool.prune_notifications(
                    events_before=now - cfg.notify.webhook_retention,
                    # A DSN mark must outlive its recipient's retries, or a
                    # delay warning could be sent twice.
                    dsn_before=now - max(cfg.retry.give_up_after, cfg.spool.keep_sent) - 86400,
                )
            except SpoolError as exc:  # e.g. disk full: try again next round, keep relaying
                log.error("pruning the spool failed: %s", exc)
            if removed:
                log.info("pruned %s", plural(removed, "finished message"))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_PRUNE_EVERY):
                    await until.wait()

    async def serve(self) -> None:
        """Run until SIGTERM or SIGINT; SIGHUP reloads."""
        loop = asyncio.get_running_loop()
        reloads: set[asyncio.Task[bool]] = set()

        async def reload_when_ready() -> bool:
            await self.ready.wait()
            return await self.reload()

        def on_hup() -> None:
            task = loop.create_task(reload_when_ready(), name="reload")
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        # Installed before start-up: SIGHUP's default action would kill a
        # daemon that is still opening its spool, and TERM must stop it cleanly.
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        try:
            async with self.running():
                await self._stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            for task in reloads:
                task.cancel()
            self.notifier.close()
        log.info("stopped")
