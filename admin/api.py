"""The JSON API under ``/api/`` (everything the pages show and do), ``/metrics``, ``/healthz``.

``/api/suppressions`` is the suppression list for apps and scripts: GET lists
(``search``, ``scope``, ``source``, ``after``, ``limit``), POST adds
(source ``api``: how an app pushes an unsubscribe), ``GET``/``DELETE
/api/suppressions/{address}`` read or remove one address, and
``/api/suppressions.csv`` exports (GET) or imports (POST, ``text/csv``).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from admin.backend import (
    ACTIONS,
    REFUSAL_STATUS,
    AdminState,
    act,
    actor,
    identity,
    json_body,
    state,
)
from admin.data import LogFilter, QueueFilter, jsonable, message_view, provider_view
from admin.health import Health, State, check
from admin.stats import summary
from admin.suppressions import IMPORT_MAX, SuppressionFilter, bounce_view, entry_view
from admin.testmail import test_message_view
from relay.bounces.mailbox import MailboxError
from relay.bounces.poller import MailboxState
from relay.errors import UnknownMessage
from relay.model import ProviderHealth, RecipientStatus
from relay.operations import suppressions as sup_ops
from relay.operations.actor import Refused
from relay.operations.testmail import SendTest, send_test_message
from relay.outbound.device_flow import DeviceFlowError

__all__ = [
    "bounce_folders_data",
    "bounce_raw_response",
    "eml_response",
    "overview_data",
    "providers_data",
    "routes",
    "suppression_detail",
    "suppressions_csv_response",
    "webhooks_data",
]


async def overview_data(st: AdminState) -> dict[str, Any]:
    b = st.backend
    now = b.clock()
    counts = await b.spool.counts_by_status()
    stats = await summary(b.spool, now)
    status = b.status()
    return {
        "now": now,
        "counts": {s.value: n for s, n in counts.items()},
        "active": sum(n for s, n in counts.items() if s.value in ("queued", "sending", "deferred")),
        "last_hour": stats.last_hour,
        "last_day": stats.last_day,
        "providers": await providers_data(st),
        "chart": stats.chart,
        "started_at": status.started_at,
        "last_reload_error": status.last_reload_error,
        "last_reload_at": status.last_reload_at,
        "bounce_mailbox": await bounce_mailbox_data(st),
        "pauses": [jsonable(p) for p in (await b.spool.pauses()).values()],
    }


async def bounce_mailbox_data(st: AdminState) -> dict[str, Any]:
    """The bounce mailbox on the overview: ``off``, ``waiting`` (not read yet), ``ok``, ``failing``.

    Shown to the logged-in operator only: the error text may name the mail server.
    ``unmatched`` counts the bounces kept because they named no mail Sluice
    sent to the address (forged, or about mail already pruned), and
    ``unmatched_latest`` lists the newest few: what a forger tried is seen,
    never counted.
    """
    poll = st.backend.bounce_mailbox()
    if poll is None:
        return {"state": MailboxState.OFF, "configured": False}
    sup = st.backend.spool.suppressions
    return {
        "state": poll.state,
        "configured": True,
        "last_poll_at": poll.last_poll_at,
        "last_ok_at": poll.last_ok_at,
        "next_poll_at": poll.next_poll_at,
        "failures": poll.failures,
        "error": poll.last_error,
        "unreadable": poll.unreadable,
        "last_unreadable": poll.last_unreadable,
        "last_unreadable_at": poll.last_unreadable_at,
        "unmatched": await sup.unmatched_count(),
        "unmatched_latest": [jsonable(u) for u in await sup.unmatched(limit=5)],
    }


async def bounce_folders_data(st: AdminState) -> tuple[int, dict[str, Any]]:
    """The bounce mailbox server's folders and the configured one, as (HTTP status, payload).

    200 ``{"folders": [...], "configured": "INBOX"}``; 404 when no mailbox is
    configured; 502 ``{"error": ...}`` when the server cannot be reached,
    logged in to or listed (the ``MailboxError`` text, as ``sluice bounces
    folders`` prints it).
    """
    box = st.backend.snapshot().config.bounces.mailbox
    if box is None or st.backend.bounce_folders is None:
        return 404, {"error": "no bounce mailbox is configured (bounces.mailbox)"}
    try:
        folders = await st.backend.bounce_folders()
    except MailboxError as exc:
        return 502, {"error": str(exc)}
    return 200, {"folders": folders, "configured": box.folder}


async def providers_data(st: AdminState) -> list[dict[str, Any]]:
    snap = st.backend.snapshot()
    statuses = {s.id: s for s in await snap.providers.status()}
    pauses = await st.backend.spool.pauses()
    views = []
    for p in snap.config.providers:
        view = provider_view(p, statuses.get(p.id))
        # An operator's pause of this provider, else of all of them (relay.store.spool).
        pause = pauses.get(p.id) or pauses.get("*")
        view["paused"] = jsonable(pause) if pause is not None else None
        views.append(view)
    return views


def _json(payload: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(jsonable(payload), status_code=status)


def _error(status: int, text: str) -> JSONResponse:
    return JSONResponse({"error": text}, status_code=status)


async def api_overview(request: Request) -> Response:
    data = await overview_data(state(request))
    data["chart"] = {
        "start": data["chart"].start,
        "hours": _hourly(data["chart"]),
        "total": data["chart"].total,
    }
    return _json(data)


def _hourly(c: Any) -> list[dict[str, Any]]:
    hours: dict[float, dict[str, Any]] = {}
    for bar in c.bars:
        hours.setdefault(bar.hour_start, {"hour_start": bar.hour_start})[bar.status] = bar.count
    return [hours[k] for k in sorted(hours)]


async def api_providers(request: Request) -> Response:
    return _json(await providers_data(state(request)))


async def api_provider(request: Request) -> Response:
    pid = request.path_params["pid"]
    for view in await providers_data(state(request)):
        if view["id"] == pid:
            return _json(view)
    return _error(404, f"no provider {pid!r}")


async def api_bounce_folders(request: Request) -> Response:
    status, payload = await bounce_folders_data(state(request))
    return _json(payload, status)


async def api_provider_test(request: Request) -> Response:
    st = state(request)
    pid = request.path_params["pid"]
    if pid not in {p.id for p in st.backend.snapshot().config.providers}:
        return _error(404, f"no provider {pid!r}")
    return _json(await st.backend.test_connection(pid))


async def api_provider_connect(request: Request) -> Response:
    """Start (POST) or follow (GET) a provider's device sign-in (OAuth 2.0 device grant).

    POST answers 202 with the user code and the verification URL to show the
    person signing in; GET tells ``state``: pending, connected or failed.
    """
    st = state(request)
    pid = request.path_params["pid"]
    b = st.backend
    if pid not in {p.id for p in b.snapshot().config.providers}:
        return _error(404, f"no provider {pid!r}")
    if b.sign_in_start is None or b.sign_in_state is None:
        return _error(404, "sign-in is not available")
    if request.method == "POST":
        try:
            sign_in = await b.sign_in_start(pid)
        except DeviceFlowError as exc:
            return _error(409 if exc.error == "not_configured" else 502, exc.text)
        return _json(sign_in, 202)
    current = b.sign_in_state(pid)
    if current is None:
        return _error(404, f"no sign-in started for {pid!r}")
    return _json(current)


async def api_provider_send_test(request: Request) -> Response:
    """Queue a test message through one provider: ``{"to": "someone@example.org"}``.

    Answers 202 with the queue ID; ``GET /api/test-messages/{queue_id}`` then
    tells its status and the provider's reply (``settled`` once it is final,
    or deferred after a first attempt).
    """
    try:
        body = await json_body(request)
    except ValueError as exc:
        return _error(400, f"expected a JSON body: {exc}")
    to = body.get("to")
    if not isinstance(to, str):
        return _error(400, 'expected {"to": "someone@example.org"}')
    b = state(request).backend
    try:
        sent = await send_test_message(
            b.spool,
            b.snapshot().config,
            SendTest(request.path_params["pid"], to),
            actor(request),
            hostname=b.hostname,
            now=b.clock(),
        )
    except Refused as exc:
        return _error(REFUSAL_STATUS[exc.refusal], str(exc))
    qid = sent.queue_id
    return _json({"queue_id": qid, "status_url": f"/api/test-messages/{qid}"}, 202)


async def api_test_message(request: Request) -> Response:
    view = await test_message_view(state(request).backend.spool, request.path_params["qid"])
    if view is None:
        return _error(404, "no such message")
    return _json(view)


async def api_queue(request: Request) -> Response:
    f = QueueFilter.parse(request.query_params)
    entries = await f.page(state(request).backend.spool)
    more = len(entries) == f.limit
    return _json(
        {
            "entries": entries,
            "next_before_id": entries[-1].id if entries and more else None,
        }
    )


async def api_queue_action(request: Request) -> Response:
    action = request.path_params["action"]
    if action not in ACTIONS:
        return _error(404, f"unknown action {action!r}")
    try:
        body = await json_body(request)
    except ValueError as exc:
        return _error(400, f"expected a JSON body: {exc}")
    ids = body.get("queue_ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return _error(400, 'expected {"queue_ids": ["...", ...]}')
    acted = await act(state(request).backend.spool, action, ids, actor(request))
    return _json({"action": action, "done": acted.done, "missing": acted.missing})


async def api_message_action(request: Request) -> Response:
    action = request.path_params["action"]
    if action not in ACTIONS:
        return _error(404, f"unknown action {action!r}")
    qid = request.path_params["qid"]
    acted = await act(state(request).backend.spool, action, [qid], actor(request))
    body = {"action": action, "done": acted.done, "missing": acted.missing}
    return _json(body, 404 if acted.missing else 200)


async def api_log(request: Request) -> Response:
    f = LogFilter.parse(request.query_params)
    entries = await f.page(state(request).backend.spool)
    more = len(entries) == f.limit
    return _json(
        {"entries": entries, "next_before_id": entries[-1].id if entries and more else None}
    )


async def api_message(request: Request) -> Response:
    spool = state(request).backend.spool
    try:
        detail = await spool.get(request.path_params["qid"])
        raw = await spool.body(detail.message_id)
    except UnknownMessage:
        return _error(404, "no such message")
    return _json(message_view(detail, raw))


async def eml_response(request: Request) -> Response:
    qid = request.path_params["qid"]
    try:
        raw = await state(request).backend.spool.raw(qid)
    except UnknownMessage:
        return Response("no such message\n", status_code=404, media_type="text/plain")
    safe = "".join(c for c in qid if c.isalnum())
    return Response(
        raw,
        media_type="message/rfc822",
        headers={"content-disposition": f'attachment; filename="{safe}.eml"'},
    )


async def webhooks_data(st: AdminState, *, limit: int = 50) -> list[dict[str, Any]]:
    """Each endpoint (configured, or with events still kept) with its counts and latest events."""
    configured = {h.url: h for h in st.backend.snapshot().config.notify.webhooks}
    counts = await st.backend.spool.outbox_counts()
    out = []
    for url in [*configured, *sorted(set(counts) - set(configured))]:
        hook = configured.get(url)
        rows = await st.backend.spool.outbox_recent(url, limit)
        out.append(
            {
                "url": url,
                "configured": hook is not None,
                "events": [e.value for e in hook.events] if hook is not None else [],
                "pending": counts.get(url, {}).get("pending", 0),
                "delivered": counts.get(url, {}).get("delivered", 0),
                "failing": counts.get(url, {}).get("failing", 0),
                "recent": [
                    {
                        "id": r.id,
                        "event_id": r.event_id,
                        "event": r.event,
                        "queue_id": r.queue_id,
                        "created_at": r.created_at,
                        "attempts": r.attempts,
                        "last_attempt_at": r.last_attempt_at,
                        "next_attempt_at": None if r.delivered_at else r.next_attempt_at,
                        "delivered_at": r.delivered_at,
                        "last_status": r.last_status,
                        "last_error": r.last_error,
                    }
                    for r in rows
                ],
            }
        )
    return out


async def api_webhooks(request: Request) -> Response:
    return _json(await webhooks_data(state(request)))


async def api_reload(request: Request) -> Response:
    st = state(request)
    ok = await st.backend.reload()
    status = st.backend.status()
    return _json(
        {"ok": ok, "error": None if ok else (status.last_reload_error or "see the daemon log")},
        200 if ok else 422,
    )


async def metrics(request: Request) -> Response:
    st = state(request)
    b = st.backend
    counts = await b.spool.counts_by_status()
    for s, n in counts.items():
        b.metrics.queue.labels(s.value).set(n)
    g = st.gauges
    g.deferred.set(counts[RecipientStatus.DEFERRED])
    for gauge in (
        g.health,
        g.sent_today,
        g.daily_limit,
        g.provider_failures,
        g.webhook_pending,
        g.webhook_failing,
        g.paused,
    ):
        gauge.clear()  # a provider removed by a reload must not linger
    failures = await b.spool.provider_failures(since=b.clock() - 3600)
    for hook in b.snapshot().config.notify.webhooks:
        g.webhook_pending.labels(hook.url).set(0)
        g.webhook_failing.labels(hook.url).set(0)
    for url, c in (await b.spool.outbox_counts()).items():
        g.webhook_pending.labels(url).set(c["pending"])
        g.webhook_failing.labels(url).set(c["failing"])
    pauses = await b.spool.pauses()
    for p in await b.snapshot().providers.status():
        for health in ProviderHealth:
            g.health.labels(p.id, health).set(1 if p.health == health else 0)
        if p.health in (ProviderHealth.OK, ProviderHealth.ERROR):
            b.metrics.provider_up.labels(p.id).set(1 if p.health == ProviderHealth.OK else 0)
        g.sent_today.labels(p.id).set(p.sent_today)
        g.provider_failures.labels(p.id).set(failures.get(p.id, 0))
        g.paused.labels(p.id).set(1 if p.id in pauses or "*" in pauses else 0)
        if p.daily_limit is not None:
            g.daily_limit.labels(p.id).set(p.daily_limit)
    g.uptime.set(max(0.0, b.clock() - b.status().started_at))
    for source, n in (await b.spool.suppressions.count_by_source()).items():
        g.suppressions.labels(source).set(n)
    _health_gauges(st, await check(b))
    body = generate_latest(b.metrics.registry) + generate_latest(g.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def _health_gauges(st: AdminState, h: Health) -> None:
    g = st.gauges
    for state_ in State:
        g.health_state.labels(state_.value).set(1 if h.state is state_ else 0)
    g.oldest_pending.set(h.oldest_pending_age or 0.0)
    w = h.spool.writes
    g.writes_failing.set(1 if w.failing else 0)
    g.write_errors.set(w.errors)
    g.last_write_error.set(w.last_error_at or 0.0)
    cp = h.spool.checkpoints
    g.checkpoints_failing.set(1 if cp is not None and (cp.failing or not cp.running) else 0)
    g.checkpoint_errors.set(cp.errors if cp is not None else 0)
    g.accept_workers.labels("configured").set(h.status.accept_workers)
    g.accept_workers.labels("alive").set(h.status.accept_workers_alive)


async def healthz(request: Request) -> Response:
    """The relay's health as JSON; 503 only when ``unhealthy`` (see ``admin.health``)."""
    h = await check(state(request).backend)
    status, w, cp = h.status, h.spool.writes, h.spool.checkpoints
    details: dict[str, object] = {
        "status": h.state.value,
        "ok": h.state is State.OK,
        "problems": h.problems,
        "spool": h.spool_readable,
        "spool_writes": {
            "failing": w.failing,
            "errors": w.errors,
            "last_error": w.last_error,
            "last_error_at": w.last_error_at,
        },
        "checkpoints": None
        if cp is None
        else {
            "running": cp.running,
            "failing": cp.failing,
            "errors": cp.errors,
            "last_error": cp.last_error,
            "last_error_at": cp.last_error_at,
        },
        "listener": status.listener_up,
        "accept_workers": None
        if not status.accept_workers
        else {"configured": status.accept_workers, "alive": status.accept_workers_alive},
        "oldest_pending_age": h.oldest_pending_age,
        "deferred": h.deferred,
        "provider_failures_last_hour": h.provider_failures,
        "paused": h.paused,
        "providers": h.providers,
        "last_reload_failed": status.last_reload_error is not None,
    }
    # /healthz answers without a login (for probes); the error text, which
    # quotes the config file, only to a caller who is logged in.
    if identity(request).authenticated:
        details["last_reload_error"] = status.last_reload_error
    return JSONResponse(details, status_code=h.http_status)


async def suppression_detail(st: AdminState, address: str) -> dict[str, Any]:
    """One address: its entries (each scope, expired ones too) and its bounces."""
    sup = st.backend.spool.suppressions
    now = st.backend.clock()
    return {
        "address": address,
        "entries": [entry_view(e, now) for e in await sup.entries_of(address)],
        "bounces": [bounce_view(b) for b in await sup.bounces_of(address)],
    }


async def api_suppressions(request: Request) -> Response:
    st = state(request)
    f = SuppressionFilter.parse(request.query_params)
    rows, next_after = await f.page(st.backend.spool)
    now = st.backend.clock()
    return _json({"entries": [entry_view(e, now) for e in rows], "next_after": next_after})


async def api_suppression_add(request: Request) -> Response:
    """Add (or replace) an entry: ``{"address", "scope"?, "reason"?, "expires_at"?|"expires_in"?}``.

    The source is ``api``: an app pushing an unsubscribe or a complaint.
    """
    st = state(request)
    try:
        body = await json_body(request)
    except ValueError as exc:
        return _error(400, f'expected {{"address": "someone@example.org", ...}}: {exc}')
    try:
        expires_at = sup_ops.expiry(
            st.backend.clock(), body.get("expires_at"), body.get("expires_in")
        )
        done = await sup_ops.suppress(
            st.backend.spool,
            body.get("address"),
            actor(request),
            scope=body.get("scope"),
            reason=body.get("reason"),
            expires_at=expires_at,
        )
    except Refused as exc:
        return _error(REFUSAL_STATUS[exc.refusal], str(exc))
    return _json(entry_view(done.entry, st.backend.clock()), 201)


async def api_suppression(request: Request) -> Response:
    st = state(request)
    try:
        address = sup_ops.lookup_key(request.path_params["address"])
    except Refused as exc:
        return _error(400, str(exc))
    data = await suppression_detail(st, address)
    if not data["entries"] and not data["bounces"]:
        return _error(404, "that address has no entry and no bounce")
    return _json(data)


async def api_suppression_remove(request: Request) -> Response:
    """Remove an address's entry in ``?scope=`` (every scope when absent)."""
    try:
        done = await sup_ops.unsuppress(
            state(request).backend.spool,
            request.path_params["address"],
            actor(request),
            scope=request.query_params.get("scope"),
        )
    except Refused as exc:
        return _error(REFUSAL_STATUS[exc.refusal], str(exc))
    return _json({"address": done.address, "removed": done.removed}, 200 if done.removed else 404)


async def suppressions_csv_response(request: Request) -> Response:
    """The list (with the same filters as the page) as CSV, as ``sluice suppression export``."""
    f = SuppressionFilter.parse(request.query_params)
    text, _ = await sup_ops.export_csv(
        state(request).backend.spool, search=f.search or None, scope=f.scope, source=f.source
    )
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": 'attachment; filename="suppressions.csv"'},
    )


async def api_suppressions_import(request: Request) -> Response:
    """Add the entries of a CSV body (``text/csv``); all or none."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > IMPORT_MAX:
            return _error(413, f"the CSV is larger than {IMPORT_MAX} bytes")
    try:
        done = await sup_ops.import_csv(
            state(request).backend.spool, bytes(raw), actor(request), max_bytes=IMPORT_MAX
        )
    except Refused as exc:
        return _error(REFUSAL_STATUS[exc.refusal], str(exc))
    return _json({"imported": done.count})


async def bounce_raw_response(request: Request) -> Response:
    """A stored bounce message as plain text (never HTML: its content is a stranger's)."""
    bounce_id: int = request.path_params["bid"]
    raw = await state(request).backend.spool.suppressions.bounce_raw(bounce_id)
    if raw is None:
        return Response("no such bounce message\n", status_code=404, media_type="text/plain")
    disposition = "attachment" if request.query_params.get("download") else "inline"
    return Response(
        raw,
        # utf-8 for the browser to show it; bytes that are not are shown as such,
        # and nosniff (admin.guard) keeps it from ever being read as HTML.
        media_type="text/plain; charset=utf-8",
        headers={"content-disposition": f'{disposition}; filename="bounce-{bounce_id}.txt"'},
    )


routes = [
    Route("/api/overview", api_overview),
    Route("/api/providers", api_providers),
    Route("/api/providers/{pid}", api_provider),
    Route("/api/providers/{pid}/test", api_provider_test, methods=["POST"]),
    Route("/api/providers/{pid}/connect", api_provider_connect, methods=["GET", "POST"]),
    Route("/api/providers/{pid}/send-test", api_provider_send_test, methods=["POST"]),
    Route("/api/test-messages/{qid}", api_test_message),
    Route("/api/queue", api_queue),
    Route("/api/queue/{action}", api_queue_action, methods=["POST"]),
    Route("/api/log", api_log),
    Route("/api/messages/{qid}", api_message),
    Route("/api/messages/{qid}/raw", eml_response),
    Route("/api/messages/{qid}/{action}", api_message_action, methods=["POST"]),
    Route("/api/reload", api_reload, methods=["POST"]),
    Route("/api/suppressions", api_suppressions),
    Route("/api/suppressions", api_suppression_add, methods=["POST"]),
    Route("/api/suppressions.csv", suppressions_csv_response),
    Route("/api/suppressions.csv", api_suppressions_import, methods=["POST"]),
    Route("/api/suppressions/{address:path}", api_suppression),
    Route("/api/suppressions/{address:path}", api_suppression_remove, methods=["DELETE"]),
    Route("/api/bounces/folders", api_bounce_folders),
    Route("/api/bounces/{bid:int}/raw", bounce_raw_response),
    Route("/api/webhooks", api_webhooks),
    Route("/metrics", metrics),
    Route("/healthz", healthz),
]
