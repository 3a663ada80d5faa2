"""The webhook sender: posts the outbox's events to each endpoint until acknowledged.

One worker per configured endpoint posts that endpoint's events one at a
time, oldest first, so events about one message arrive in the order they
happened. Only a 2xx answer acknowledges an event (a redirect is not
followed: a receiver moved is a configuration to fix; ``relay.http`` decides). Anything else (no
answer, a timeout, 3xx, 4xx, 5xx) leaves the event at the head of the
endpoint's line, tried again after a back-off that doubles from
``notify.webhook_first_delay`` up to ``notify.webhook_max_delay``; the
other endpoints go on. In a fleet (a store other nodes share), each
endpoint's events are posted by the one node holding its turn
(``relay.store.singleton``), so they still go one at a time and in order.
Events live in the spool, so a restart or a receiver
down for hours loses nothing; they are dropped after
``notify.webhook_retention`` (7 days, as Postal keeps them), delivered or not.

At-least-once: a receiver that took an event but answered too late gets it
again; ``X-Sluice-Event-Id`` (and ``id`` in the body) tells it the duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import httpx

from relay.backoff import exponential
from relay.config import Config, NotifySettings, WebhookSettings
from relay.errors import SpoolError
from relay.events import SIGNATURE_HEADER, sign
from relay.http import USER_AGENT
from relay.http import client as http_client
from relay.logsetup import mask_http_logs, mask_url, mask_urls_in
from relay.secrets import SecretError
from relay.store.singleton import Fleet, one_node_at_a_time
from relay.store.spool import OutboxRow, Spool

__all__ = ["WebhookSender", "backoff", "turn_of"]

log = logging.getLogger("sluice.webhooks")

#: how often the set of endpoints is compared with the config (a reload may change it)
_CONFIG_CHECK = 1.0


def turn_of(url: str) -> str:
    """The name of the turn held by the node posting ``url``'s events (a fleet's one)."""
    return f"webhooks {url}"


def backoff(failures: int, settings: NotifySettings) -> float:
    """Seconds to wait after the ``failures``-th failed try in a row (1, 2, ...)."""
    return exponential(failures, first=settings.webhook_first_delay, cap=settings.webhook_max_delay)


class WebhookSender:
    """Drains the spool's webhook outbox; ``run(stop)`` is a task the daemon starts."""

    def __init__(
        self,
        spool: Spool,
        config: Callable[[], Config],
        *,
        clock: Callable[[], float] = time.time,
        user_agent: str = USER_AGENT,
        fleet: Fleet | None = None,
    ) -> None:
        self._spool = spool
        #: the spool, when other nodes may share it: one node posts each endpoint's events
        self._fleet = fleet
        self._config = config
        self._clock = clock
        self._user_agent = user_agent
        self._wakes: dict[str, asyncio.Event] = {}

    def _settings(self, url: str) -> WebhookSettings | None:
        for hook in self._config().notify.webhooks:
            if hook.url == url:
                return hook
        return None

    async def run(self, stop: asyncio.Event) -> None:
        """Post events until ``stop`` is set; one worker per configured endpoint."""
        workers: dict[str, asyncio.Task[None]] = {}
        mask_http_logs()  # httpx logs each POST's URL, which may carry the receiver's token
        async with (
            http_client(user_agent=self._user_agent) as client,
            asyncio.TaskGroup() as tg,
        ):
            while not stop.is_set():
                for hook in self._config().notify.webhooks:
                    if hook.url not in workers or workers[hook.url].done():
                        self._wakes[hook.url] = asyncio.Event()
                        workers[hook.url] = tg.create_task(
                            self._endpoint_turn(hook.url, client, stop),
                            name=f"webhook {mask_url(hook.url)}",
                        )
                self._spool.outbox_wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_CONFIG_CHECK):
                        await _first(stop, self._spool.outbox_wake)
                if self._spool.outbox_wake.is_set():
                    for wake in self._wakes.values():
                        wake.set()
            for wake in self._wakes.values():
                wake.set()

    async def _endpoint_turn(
        self, url: str, client: httpx.AsyncClient, stop: asyncio.Event
    ) -> None:
        """Post ``url``'s events; in a fleet, only while this node holds that endpoint's turn.

        One turn per endpoint, not one for all: each endpoint's events go out
        one at a time and in order from whichever node holds its turn, and
        the endpoints of a fleet may be spread over its nodes.
        """
        if self._fleet is None:
            await self._endpoint(url, client, stop)
            return

        async def work(until: asyncio.Event) -> None:
            await self._endpoint(url, client, until)

        await one_node_at_a_time(
            self._fleet,
            turn_of(url),
            stop,
            work,
            what=f"posts the webhook events of {mask_url(url)}",
        )

    async def _endpoint(self, url: str, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        wake = self._wakes[url]
        while not stop.is_set():
            hook = self._settings(url)
            if hook is None:
                return  # removed by a reload; its events wait in case it comes back
            wake.clear()
            try:
                row = await self._spool.outbox_next(url)
                if row is not None and row.next_attempt_at <= self._clock():
                    await self._post(row, hook, client)
                    continue
            except SpoolError as exc:
                # The store is out of reach (a PostgreSQL outage) or full: the
                # events wait in it; this endpoint asks again, the daemon goes on.
                # An event posted but not marked is posted again (at least once).
                log.error("webhook %s: cannot read the outbox: %s", mask_url(url), exc)
                row = None
            wait = _CONFIG_CHECK if row is None else row.next_attempt_at - self._clock()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(wait, _CONFIG_CHECK)):
                    await _first(stop, wake)

    async def _post(self, row: OutboxRow, hook: WebhookSettings, client: httpx.AsyncClient) -> None:
        body = row.body.encode()
        status: int | None = None
        try:
            secret = await asyncio.to_thread(hook.key.resolve)
            now = self._clock()
            headers = {
                "Content-Type": "application/json",
                "X-Sluice-Event": row.event,
                "X-Sluice-Event-Id": row.event_id,
                SIGNATURE_HEADER: sign(secret.get_secret_value().encode(), body, int(now)),
            }
            response = await client.post(
                hook.url, content=body, headers=headers, timeout=hook.timeout
            )
            status = response.status_code
            if response.is_success:
                await self._spool.outbox_delivered(row.id, status)
                return
            error = f"HTTP {status} {response.reason_phrase}".strip()
        except SecretError as exc:
            error = f"the webhook secret cannot be read: {exc.message}"
        except httpx.HTTPError as exc:
            error = (
                f"{type(exc).__name__}: {mask_urls_in(str(exc))}"
                if str(exc)
                else type(exc).__name__
            )
        delay = backoff(row.attempts + 1, self._config().notify)
        log.warning(
            "webhook %s: event %s (%s) not acknowledged: %s; retrying in %.0fs",
            mask_url(hook.url),
            row.event_id,
            row.event,
            error,
            delay,
            extra={"event": "webhook", "queue_id": row.queue_id or None},
        )
        await self._spool.outbox_failed(
            row.id, status=status, error=error, next_attempt_at=self._clock() + delay
        )


async def _first(stop: asyncio.Event, other: asyncio.Event) -> None:
    """Wait until either event is set."""
    tasks = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(other.wait())}
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
