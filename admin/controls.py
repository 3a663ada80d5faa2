"""Operator controls in the admin: hold, release, reroute, pause, resume, and the audit log.

Forms go through a confirmation page that says how many recipients the
action affects, counted from the spool at that moment (as Postal asks
before a bulk action); the JSON API takes ``"dry_run": true`` for the same
count. Every action is written to the spool's audit log with who did it:
the admin user, or ``api`` for a bearer token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from admin.backend import AdminState, identity, state
from admin.data import jsonable
from admin.guard import Identity
from admin.pages import render
from relay.config import parse_duration
from relay.model import ProviderPause, RecipientStatus, Selection
from relay.store.spool import ALL_PROVIDERS, Control

__all__ = ["CONTROLS", "actor_of", "pause_views", "routes", "selection_from"]

#: the actions on a selection of recipients
CONTROLS = ("hold", "release", "reroute")
_FILTERS = ("sender", "recipient_domain", "provider", "stream", "older_than")
_DONE = {"hold": "held", "release": "released", "reroute": "rerouted"}
_BODY_MAX = 64 * 1024


def actor_of(who: Identity) -> str:
    """Who acts, for the audit log: the admin user, or ``api`` for a bearer token."""
    if who.via == "token":
        return "api"
    if who.via == "open":
        return "admin (no password set)"
    return who.user or who.via


def selection_from(fields: Mapping[str, Any], queue_ids: Sequence[str]) -> Selection:
    """A selection from form fields or a JSON object (``older_than`` as "2h" or seconds).

    Raises:
        ValueError: a bad status or age.
    """

    def text(name: str) -> str | None:
        value = fields.get(name)
        return str(value).strip() or None if value is not None else None

    older = fields.get("older_than")
    older_than = None
    if older not in (None, ""):
        older_than = float(older) if isinstance(older, int | float) else parse_duration(older)
    statuses = fields.get("status") or ()
    if isinstance(statuses, str):
        statuses = (statuses,)
    everything = fields.get("everything") in (True, "1", "on", "yes", "true")
    return Selection(
        queue_ids=tuple(dict.fromkeys(q.strip() for q in queue_ids if q.strip())),
        sender=text("sender"),
        recipient_domain=text("recipient_domain"),
        provider=text("provider"),
        stream=text("stream"),
        older_than=older_than,
        statuses=tuple(RecipientStatus(s) for s in statuses),
        everything=everything,
    )


def _check_via(st: AdminState, action: str, via: str | None) -> str | None:
    """An error text when a reroute names no enabled provider."""
    if action != "reroute":
        return None
    enabled = {p.id for p in st.backend.snapshot().config.providers if p.enabled}
    if not via or via not in enabled:
        return f"reroute needs an enabled provider (one of: {', '.join(sorted(enabled))})"
    return None


def _control(st: AdminState, who: Identity, action: str, fields: Mapping[str, Any]) -> Control:
    return Control(
        action=action,
        actor=actor_of(who),
        reason=str(fields.get("reason") or "").strip()[:500],
        provider=str(fields.get("via") or "") or None,
        age_while_held=st.backend.snapshot().config.hold.age_while_held,
    )


async def pause_views(st: AdminState) -> dict[str, ProviderPause]:
    """Pauses in force, by provider id (``*``: all providers)."""
    return await st.backend.spool.pauses()


# ------------------------------------------------------------------------ pages


async def queue_control(request: Request) -> Response:
    """Hold, release or reroute: a confirmation with the count first, then the action."""
    st, who = state(request), identity(request)
    form = await request.form()
    action = str(form.get("action", ""))
    if action not in CONTROLS:
        return render(request, "error.html", {"message": "Unknown action."}, 400)
    fields: dict[str, Any] = {k: form.get(k) for k in (*_FILTERS, "reason", "via", "everything")}
    fields["status"] = [str(s) for s in form.getlist("status")]
    # One form carries every action's inputs: keep only this action's own.
    if action != "reroute":
        fields["via"] = None
    if action != "hold":
        fields["reason"] = None
    ids = [str(v) for v in form.getlist("queue_id")]
    try:
        selection = selection_from(fields, ids)
        if selection.empty:
            raise ValueError("Select messages, or give a filter.")
    except ValueError as exc:
        return render(request, "error.html", {"message": str(exc)}, 400)
    if (error := _check_via(st, action, fields.get("via"))) is not None:
        return render(request, "error.html", {"message": error}, 400)
    back = str(form.get("back", "")) or "/queue"
    if not back.startswith("/") or back.startswith(("//", "/\\")):
        back = "/queue"
    if form.get("confirmed") != "yes":
        count = await st.backend.spool.count_selected(selection, action)
        hidden = [(k, str(v)) for k, v in fields.items() if v and k != "status"]
        hidden += [("status", s) for s in fields["status"]] + [("queue_id", q) for q in ids]
        return render(
            request,
            "confirm.html",
            {
                "action": action,
                "count": count,
                "selection": selection.describe(),
                "hidden": hidden,
                "back": back,
            },
        )
    n = await st.backend.spool.control(
        selection,
        _control(st, who, action, fields),
        endpoints=st.backend.snapshot().config.notify.webhooks,
    )
    back = back.split("done=")[0].rstrip("&?") or "/queue"
    sep = "&" if "?" in back else "?"
    return RedirectResponse(f"{back}{sep}{urlencode({'done': action, 'n': n})}", status_code=303)


async def provider_pause(request: Request) -> Response:
    """Pause or resume one provider (``/providers/{pid}/pause``) or all (``pid`` = ``*``)."""
    st, who = state(request), identity(request)
    pid = request.path_params.get("pid", ALL_PROVIDERS)
    form = await request.form()
    resume = request.url.path.endswith("/resume")
    if pid != ALL_PROVIDERS and pid not in {p.id for p in st.backend.snapshot().config.providers}:
        return render(request, "error.html", {"message": "No such provider."}, 404)
    if resume:
        await st.backend.spool.resume_provider(pid, actor=actor_of(who))
        done = "resume"
    else:
        try:
            until = _until(st, form.get("for"))
        except ValueError as exc:
            return render(request, "error.html", {"message": str(exc)}, 400)
        reason = str(form.get("reason", "")).strip()[:500]
        await st.backend.spool.pause_provider(pid, actor=actor_of(who), reason=reason, until=until)
        done = "pause"
    back = "/providers" if pid == ALL_PROVIDERS else f"/providers/{pid}"
    back = {"list": "/providers", "overview": "/"}.get(str(form.get("from", "")), back)
    return RedirectResponse(f"{back}?done={done}", status_code=303)


def _until(st: AdminState, duration: object) -> float | None:
    if duration in (None, ""):
        return None
    seconds = parse_duration(str(duration).strip())
    if seconds <= 0:
        raise ValueError("the duration must be positive")
    return st.backend.clock() + seconds


async def audit_page(request: Request) -> Response:
    st = state(request)
    before = request.query_params.get("before_id")
    before_id = int(before) if before and before.isdigit() else None
    entries = await st.backend.spool.audit_log(before_id=before_id, limit=50)
    next_url = f"/audit?before_id={entries[-1].id}" if len(entries) == 50 else None
    return render(
        request, "audit.html", {"entries": entries, "next_url": next_url, "before_id": before_id}
    )


# -------------------------------------------------------------------------- API


def _error(status: int, text: str) -> JSONResponse:
    return JSONResponse({"error": text}, status_code=status)


async def _json_body(request: Request) -> dict[str, Any]:
    import json

    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > _BODY_MAX:
            raise ValueError("request body too large")
    body = json.loads(raw) if raw else {}
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object")
    return body


async def api_queue_control(request: Request) -> Response:
    """``POST /api/queue/{hold,release,reroute}``: ``{"queue_ids": [...]}`` or a ``"filter"``.

    The filter: ``sender``, ``recipient_domain``, ``provider``, ``stream``,
    ``older_than``, ``status`` (a list) or ``everything``. Also ``"reason"``
    (hold), ``"via"`` (reroute) and ``"dry_run": true`` (only count).
    """
    st, who = state(request), identity(request)
    action = request.url.path.rsplit("/", 1)[-1]
    try:
        body = await _json_body(request)
        ids = body.get("queue_ids") or []
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError('"queue_ids" must be a list of strings')
        flt = body.get("filter") or {}
        if not isinstance(flt, dict):
            raise ValueError('"filter" must be an object')
        selection = selection_from(flt, ids)
        if selection.empty:
            raise ValueError('give "queue_ids" or a "filter" ({"everything": true} for all)')
    except ValueError as exc:
        return _error(400, str(exc))
    if (error := _check_via(st, action, body.get("via"))) is not None:
        return _error(400, error)
    if body.get("dry_run"):
        count = await st.backend.spool.count_selected(selection, action)
        return JSONResponse({"action": action, "dry_run": True, **jsonable(count)})
    n = await st.backend.spool.control(
        selection,
        _control(st, who, action, body),
        endpoints=st.backend.snapshot().config.notify.webhooks,
    )
    return JSONResponse({"action": action, "recipients": n, "selection": selection.describe()})


async def api_pause(request: Request) -> Response:
    """``POST /api/providers/{pid}/pause`` (or ``/api/pause`` for all): ``{"reason", "for"}``."""
    st, who = state(request), identity(request)
    pid = request.path_params.get("pid", ALL_PROVIDERS)
    if pid != ALL_PROVIDERS and pid not in {p.id for p in st.backend.snapshot().config.providers}:
        return _error(404, f"no provider {pid!r}")
    try:
        body = await _json_body(request)
        until = _until(st, body.get("for"))
    except ValueError as exc:
        return _error(400, str(exc))
    reason = str(body.get("reason") or "").strip()[:500]
    await st.backend.spool.pause_provider(pid, actor=actor_of(who), reason=reason, until=until)
    return JSONResponse({"provider": pid, "paused": True, "reason": reason, "until": until})


async def api_resume(request: Request) -> Response:
    """``POST /api/providers/{pid}/resume`` (or ``/api/resume`` for all)."""
    st, who = state(request), identity(request)
    pid = request.path_params.get("pid", ALL_PROVIDERS)
    n = await st.backend.spool.resume_provider(pid, actor=actor_of(who))
    if n is None:
        return _error(409, f"{pid!r} was not paused")
    return JSONResponse({"provider": pid, "paused": False, "due_now": n})


async def api_pauses(request: Request) -> Response:
    pauses = await pause_views(state(request))
    return JSONResponse([jsonable(p) for p in pauses.values()])


async def api_audit(request: Request) -> Response:
    before = request.query_params.get("before_id")
    before_id = int(before) if before and before.isdigit() else None
    entries = await state(request).backend.spool.audit_log(before_id=before_id, limit=100)
    return JSONResponse(
        {
            "entries": jsonable(entries),
            "next_before_id": entries[-1].id if len(entries) == 100 else None,
        }
    )


routes = [
    Route("/queue/control", queue_control, methods=["POST"]),
    Route("/providers/pause-all", provider_pause, methods=["POST"]),
    Route("/providers/resume-all", provider_pause, methods=["POST"]),
    Route("/providers/{pid}/pause", provider_pause, methods=["POST"]),
    Route("/providers/{pid}/resume", provider_pause, methods=["POST"]),
    Route("/audit", audit_page),
    *(Route(f"/api/queue/{a}", api_queue_control, methods=["POST"]) for a in CONTROLS),
    Route("/api/pause", api_pause, methods=["POST"]),
    Route("/api/resume", api_resume, methods=["POST"]),
    Route("/api/pauses", api_pauses),
    Route("/api/providers/{pid}/pause", api_pause, methods=["POST"]),
    Route("/api/providers/{pid}/resume", api_resume, methods=["POST"]),
    Route("/api/audit", api_audit),
]
