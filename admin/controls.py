"""Operator controls in the admin: hold, release, reroute, pause, resume, and the audit log.

Forms go through a confirmation page that says how many recipients the
action affects, counted from the spool at that moment (as Postal asks
before a bulk action); the JSON API takes ``"dry_run": true`` for the same
count. Each action is a call to ``relay.operations`` with the acting admin
user (or ``api`` for a bearer token), which writes it to the audit log.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from admin.backend import REFUSAL_STATUS, AdminState, actor, json_body, state
from admin.data import jsonable
from admin.pages import render
from relay.config import parse_duration
from relay.model import Action, ProviderPause, RecipientStatus, Selection
from relay.operations import providers as provider_ops
from relay.operations import queue as queue_ops
from relay.operations.actor import Refused
from relay.operations.providers import ALL_PROVIDERS
from relay.operations.queue import CONTROLS, ControlRequest

__all__ = ["CONTROLS", "pause_views", "routes", "selection_from"]

_FILTERS = ("sender", "recipient_domain", "provider", "stream", "older_than")


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


def _request(action: Action, fields: Mapping[str, Any], selection: Selection) -> ControlRequest:
    return ControlRequest(
        action=action,
        selection=selection,
        reason=str(fields.get("reason") or ""),
        via=str(fields.get("via") or "") or None,
    )


async def pause_views(st: AdminState) -> dict[str, ProviderPause]:
    """Pauses in force, by provider id (``*``: all providers)."""
    return await st.backend.spool.pauses()


# ------------------------------------------------------------------------ pages


async def queue_control(request: Request) -> Response:
    """Hold, release or reroute: a confirmation with the count first, then the action."""
    st = state(request)
    form = await request.form()
    try:
        action = Action(str(form.get("action", "")))
    except ValueError:
        action = Action.RETRY  # not a control: refused just below
    if action not in CONTROLS:
        return render(request, "error.html", {"message": "Unknown action."}, 400)
    fields: dict[str, Any] = {k: form.get(k) for k in (*_FILTERS, "reason", "via", "everything")}
    fields["status"] = [str(s) for s in form.getlist("status")]
    # One form carries every action's inputs: keep only this action's own.
    if action is not Action.REROUTE:
        fields["via"] = None
    if action is not Action.HOLD:
        fields["reason"] = None
    ids = [str(v) for v in form.getlist("queue_id")]
    try:
        selection = selection_from(fields, ids)
        if selection.empty:
            raise ValueError("Select messages, or give a filter.")
    except ValueError as exc:
        return render(request, "error.html", {"message": str(exc)}, 400)
    back = str(form.get("back", "")) or "/queue"
    if not back.startswith("/") or back.startswith(("//", "/\\")):
        back = "/queue"
    config = st.backend.snapshot().config
    req = _request(action, fields, selection)
    try:
        if form.get("confirmed") != "yes":
            count = await queue_ops.count(st.backend.spool, config, req)
            hidden = [(k, str(v)) for k, v in fields.items() if v and k != "status"]
            hidden += [("status", s) for s in fields["status"]] + [("queue_id", q) for q in ids]
            return render(
                request,
                "confirm.html",
                {
                    "action": action.value,
                    "count": count,
                    "selection": count.selection,
                    "hidden": hidden,
                    "back": back,
                },
            )
        done = await queue_ops.control(st.backend.spool, config, req, actor(request))
    except Refused as exc:
        return render(request, "error.html", {"message": str(exc)}, REFUSAL_STATUS[exc.refusal])
    back = back.split("done=")[0].rstrip("&?") or "/queue"
    sep = "&" if "?" in back else "?"
    query = urlencode({"done": action.value, "n": done.recipients})
    return RedirectResponse(f"{back}{sep}{query}", status_code=303)


async def provider_pause(request: Request) -> Response:
    """Pause or resume one provider (``/providers/{pid}/pause``) or all (``pid`` = ``*``)."""
    st = state(request)
    pid = request.path_params.get("pid", ALL_PROVIDERS)
    form = await request.form()
    config = st.backend.snapshot().config
    try:
        if request.url.path.endswith("/resume"):
            await provider_ops.resume(st.backend.spool, config, pid, actor(request))
            done = "resume"
        else:
            await provider_ops.pause(
                st.backend.spool,
                config,
                pid,
                actor(request),
                reason=str(form.get("reason", "")),
                duration=_duration(form.get("for")),
                now=st.backend.clock(),
            )
            done = "pause"
    except Refused as exc:
        return render(request, "error.html", {"message": str(exc)}, REFUSAL_STATUS[exc.refusal])
    back = "/providers" if pid == ALL_PROVIDERS else f"/providers/{pid}"
    back = {"list": "/providers", "overview": "/"}.get(str(form.get("from", "")), back)
    return RedirectResponse(f"{back}?done={done}", status_code=303)


def _duration(text: object) -> float | None:
    """A pause's ``for`` ("2h"), or None for "until resumed".

    Raises:
        Refused: not a duration.
    """
    if text in (None, ""):
        return None
    try:
        return parse_duration(str(text).strip())
    except ValueError as exc:
        raise Refused(str(exc)) from exc


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


async def api_queue_control(request: Request) -> Response:
    """``POST /api/queue/{hold,release,reroute}``: ``{"queue_ids": [...]}`` or a ``"filter"``.

    The filter: ``sender``, ``recipient_domain``, ``provider``, ``stream``,
    ``older_than``, ``status`` (a list) or ``everything``. Also ``"reason"``
    (hold), ``"via"`` (reroute) and ``"dry_run": true`` (only count).
    """
    st = state(request)
    action = Action(request.url.path.rsplit("/", 1)[-1])
    try:
        body = await json_body(request)
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
    config = st.backend.snapshot().config
    req = _request(action, body, selection)
    try:
        if body.get("dry_run"):
            count = await queue_ops.count(st.backend.spool, config, req)
            return JSONResponse(
                {
                    "action": action.value,
                    "dry_run": True,
                    "recipients": count.recipients,
                    "messages": count.messages,
                }
            )
        done = await queue_ops.control(st.backend.spool, config, req, actor(request))
    except Refused as exc:
        return _error(REFUSAL_STATUS[exc.refusal], str(exc))
    return JSONResponse(
        {"action": action.value, "recipients": done.recipients, "selection": done.selection}
    )


async def api_pause(request: Request) -> Response:
    """``POST /api/providers/{pid}/pause`` (or ``/api/pause`` for all): ``{"reason", "for"}``."""
    st = state(request)
    pid = request.path_params.get("pid", ALL_PROVIDERS)
    try:
        body = await json_body(request)
    except ValueError as exc:
        return _error(400, str(exc))
    try:
        paused = await provider_ops.pause(
            st.backend.spool,
            st.backend.snapshot().config,
            pid,
            actor(request),
            reason=str(body.get("reason") or ""),
            duration=_duration(body.get("for")),
            now=st.backend.clock(),
        )
    except Refused as exc:
        return _error(REFUSAL_STATUS[exc.refusal], str(exc))
    return JSONResponse(
        {"provider": pid, "paused": True, "reason": paused.reason, "until": paused.until}
    )


async def api_resume(request: Request) -> Response:
    """``POST /api/providers/{pid}/resume`` (or ``/api/resume`` for all)."""
    st = state(request)
    pid = request.path_params.get("pid", ALL_PROVIDERS)
    try:
        resumed = await provider_ops.resume(
            st.backend.spool, st.backend.snapshot().config, pid, actor(request)
        )
    except Refused as exc:
        return _error(REFUSAL_STATUS[exc.refusal], str(exc))
    if resumed.due_now is None:
        return _error(409, f"{pid!r} was not paused")
    return JSONResponse({"provider": pid, "paused": False, "due_now": resumed.due_now})


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
