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
import fcntl
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

from relay.config import Config, load
from relay.errors import ConfigError, SpoolLocked
from relay.metrics import Metrics
from relay.providers import ProviderSet
from relay.scheduler import Scheduler, Snapshot
from relay.smtp_server import Listener, RelayHandler, start_listeners
from relay.spool import Spool

__all__ = ["Daemon", "spool_lock"]

log = logging.getLogger("sluice.daemon")

_PRUNE_EVERY = 3600.0


@contextlib.contextmanager
def spool_lock(spool_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` beside the spool for the daemon's lifetime.

    Raises:
        SpoolLocked: another process (another ``sluice serve``) holds it.
    """
    lock_path = spool_path.with_name(spool_path.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise SpoolLocked(
                f"spool {spool_path} is in use by another sluice process (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


class Daemon:
    """A running Sluice: listeners, scheduler and admin around one spool."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config_path = config_path
        self._clock = clock
        self._snapshot: Snapshot | None = None
        self._initial = config
        self._stop = asyncio.Event()
        self._stopping_hard = False
        self.hostname = ""
        self.spool: Spool | None = None
        self.listener: Listener | None = None
        self.scheduler: Scheduler | None = None
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
        """Re-read the config file; keep the running config if the new one is invalid."""
        if self._config_path is None:
            log.warning("reload asked, but the daemon was not started from a file")
            return False
        try:
            new = await asyncio.to_thread(load, self._config_path)
        except ConfigError as exc:
            for issue in exc.issues:
                log.error("reload rejected: %s", issue)
            return False
        old = self.snapshot()
        if new.smtp.listen != old.config.smtp.listen or new.spool != old.config.spool:
            log.warning("smtp.listen and spool changes take effect at the next restart")
        # Health, usage and tokens of providers whose id stays carry over.
        providers = ProviderSet.from_config(
            new, local_hostname=self.hostname, previous=old.providers, counters=self.spool
        )
        self._snapshot = Snapshot(new, providers)
        log.info("configuration reloaded from %s", self._config_path)
        # In-flight deliveries keep the provider objects they started with.
        await old.providers.aclose()
        return True

    # --------------------------------------------------------------- lifecycle

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Daemon]:
        """Start everything; on exit stop everything in reverse order."""
        cfg = self._initial
        self.hostname = cfg.smtp.hostname or await asyncio.to_thread(socket.getfqdn)
        async with contextlib.AsyncExitStack() as stack:
            stack.enter_context(spool_lock(cfg.spool.path))
            spool = await Spool.open(cfg.spool.path, clock=self._clock)
            stack.push_async_callback(spool.aclose)
            self.spool = spool
            requeued = await spool.requeue_inflight()
            if requeued:
                log.warning("requeued %d recipients left in flight by the last run", requeued)
            self._snapshot = Snapshot(
                cfg,
                ProviderSet.from_config(
                    cfg, local_hostname=self.hostname, counters=spool, clock=self._clock
                ),
            )
            stack.push_async_callback(lambda: self.snapshot().providers.aclose())

            handler = RelayHandler(
                spool,
                lambda: self.config.smtp,
                hostname=self.hostname,
                clock=self._clock,
                metrics=self.metrics,
            )
            self.listener = await start_listeners(
                lambda: self.config.smtp, handler, hostname=self.hostname
            )
            stack.push_async_callback(self._close_listener)
            for ep in self.listener.addresses:
                log.info("listening smtp=%s:%d", ep.host, ep.port)

            self.scheduler = Scheduler(
                spool, self.snapshot, clock=self._clock, metrics=self.metrics
            )
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.scheduler.run(self._stop), name="scheduler")
                tg.create_task(self._prune_loop(), name="pruner")
                self.ready.set()
                log.info(
                    "sluice ready: %d recipients in the queue",
                    sum((await spool.counts_by_status()).values()),
                )
                try:
                    yield self
                finally:
                    self._stop.set()
                    if self.listener is not None:
                        self.listener.stop_accepting()

    async def _close_listener(self) -> None:
        if self.listener is not None:
            await self.listener.aclose(grace=min(5.0, self.config.delivery.shutdown_grace))

    async def _prune_loop(self) -> None:
        while not self._stop.is_set():
            assert self.spool is not None
            cfg = self.config
            removed = await self.spool.prune(
                log_retention=cfg.log.retention, keep_sent=cfg.spool.keep_sent
            )
            if removed:
                log.info("pruned %d finished messages", removed)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_PRUNE_EVERY):
                    await self._stop.wait()

    async def serve(self) -> None:
        """Run until SIGTERM or SIGINT; SIGHUP reloads."""
        loop = asyncio.get_running_loop()
        reloads: set[asyncio.Task[bool]] = set()

        def on_hup() -> None:
            task = loop.create_task(self.reload(), name="reload")
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        async with self.running():
            loop.add_signal_handler(signal.SIGTERM, self.stop)
            loop.add_signal_handler(signal.SIGINT, self.stop)
            loop.add_signal_handler(signal.SIGHUP, on_hup)
            try:
                await self._stop.wait()
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
        log.info("stopped")
