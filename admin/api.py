"""The JSON API under ``/api/`` (everything the pages show and do), ``/metrics``, ``/healthz``."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from admin.backend import ACTIONS, AdminState, act, identity, state
from admin.data import LogFilter, QueueFilter, jsonable, message_view, provider_view
from admin.health import Health, State, check
from admin.stats import summary
from admin.testmail import TestMessageError, send_test_message, test_message_view
from relay.errors import UnknownMessage

__all__ = ["eml_response", "overview_data", "providers_data", "routes"]

_BODY_MAX = 64 * 1024


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
        "pauses": [jsonable(p) for p in (await b.spool.pauses()).values()],
    }


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


async def _body(request: Request) -> Any:
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > _BODY_MAX:
            raise ValueError("request body too large")
    return json.loads(raw) if raw else {}


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


async def api_provider_test(request: Request) -> Response:
    st = state(request)
    pid = request.path_params["pid"]
    if pid not in {p.id for p in st.backend.snapshot().config.providers}:
        return _error(404, f"no provider {pid!r}")
    return _json(await st.backend.test_connection(pid))


async def api_provider_send_test(request: Request) -> Response:
    """Queue a test message through one provider: ``{"to": "someone@example.org"}``.

    Answers 202 with the queue ID; ``GET /api/test-messages/{queue_id}`` then
    tells its status and the provider's reply (``settled`` once it is final,
    or deferred after a first attempt).
    """
    try:
        body = await _body(request)
    except ValueError as exc:
        return _error(400, f"expected a JSON body: {exc}")
    to = body.get("to") if isinstance(body, dict) else None
    if not isinstance(to, str):
        return _error(400, 'expected {"to": "someone@example.org"}')
    try:
        qid = await send_test_message(state(request).backend, request.path_params["pid"], to)
    except TestMessageError as exc:
        return _error(exc.status, str(exc))
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
        body = await _body(request)
    except ValueError as exc:
        return _error(400, f"expected a JSON body: {exc}")
    ids = body.get("queue_ids") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return _error(400, 'expected {"queue_ids": ["...", ...]}')
    return _json(await act(state(request).backend.spool, action, ids))


async def api_message_action(request: Request) -> Response:
    action = request.path_params["action"]
    if action not in ACTIONS:
        return _error(404, f"unknown action {action!r}")
    result = await act(state(request).backend.spool, action, [request.path_params["qid"]])
    return _json(result, 404 if result["missing"] else 200)


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
    for s, n in (await b.spool.counts_by_status()).items():
        b.metrics.queue.labels(s.value).set(n)
    g = st.gauges
    for gauge in (g.health, g.sent_today, g.daily_limit, g.paused):
        gauge.clear()  # a provider removed by a reload must not linger
    pauses = await b.spool.pauses()
    for p in await b.snapshot().providers.status():
        for health in ("unknown", "ok", "error", "cooldown"):
            g.health.labels(p.id, health).set(1 if p.health == health else 0)
        if p.health in ("ok", "error"):
            b.metrics.provider_up.labels(p.id).set(1 if p.health == "ok" else 0)
        g.sent_today.labels(p.id).set(p.sent_today)
        g.paused.labels(p.id).set(1 if p.id in pauses or "*" in pauses else 0)
        if p.daily_limit is not None:
            g.daily_limit.labels(p.id).set(p.daily_limit)
    g.uptime.set(max(0.0, b.clock() - b.status().started_at))
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
        "paused": h.paused,
        "last_reload_failed": status.last_reload_error is not None,
    }
    # /healthz answers without a login (for probes); the error text, which
    # quotes the config file, only to a caller who is logged in.
    if identity(request).authenticated:
        details["last_reload_error"] = status.last_reload_error
    return JSONResponse(details, status_code=h.http_status)


routes = [
    Route("/api/overview", api_overview),
    Route("/api/providers", api_providers),
    Route("/api/providers/{pid}", api_provider),
    Route("/api/providers/{pid}/test", api_provider_test, methods=["POST"]),
    Route("/api/providers/{pid}/send-test", api_provider_send_test, methods=["POST"]),
    Route("/api/test-messages/{qid}", api_test_message),
    Route("/api/queue", api_queue),
    Route("/api/queue/{action}", api_queue_action, methods=["POST"]),
    Route("/api/log", api_log),
    Route("/api/messages/{qid}", api_message),
    Route("/api/messages/{qid}/raw", eml_response),
    Route("/api/messages/{qid}/{action}", api_message_action, methods=["POST"]),
    Route("/api/reload", api_reload, methods=["POST"]),
    Route("/metrics", metrics),
    Route("/healthz", healthz),
]
