"""The settings pages: add, edit, disable and delete providers, and the bounce mailbox form.

Each page is a second way to *edit the configuration file*, never a second
store of settings: the form is drawn from the file as it is (``${VAR}``
values and secrets from the environment or a systemd credential shown
read-only with where they come from), and Save goes through
``relay.operations.config_edits`` (the same checks and the same writer as
``sluice providers add|edit|...``), which validates with ``sluice check``'s
rules, tries the connection as Test connection does, writes the file
atomically and reloads. A refusal comes back as field errors, drawn beside
their fields, or as the difference when the file changed on disk since
Sluice loaded it.

The form carries the digest of the file the running daemon loaded
(``base_digest``): a hand edit that was not reloaded, or another browser's
save in between, makes Save refuse instead of overwriting it.

With ``admin.config_edits: false`` no form is served (GET and POST answer
403 with the reason) and the pages show no edit buttons.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from admin.api import providers_data
from admin.backend import AdminState, actor, state
from admin.edits import (
    EditAnswer,
    bounce_current,
    edit_context,
    edits_off_reason,
    folders_of_typed,
    provider_current,
    refusal_answer,
    save_bounces,
    save_provider,
    stale_notice,
    when_edits_allowed,
)
from admin.forms import BOUNCE_GROUPS, PROVIDER_GROUPS, Group, fields_of, flat, read_form
from admin.pages import provider_page, render, set_save_flash
from relay.operations import config_edits as edits
from relay.presets import PRESETS, Preset

__all__ = ["preset_view", "routes"]


@dataclass(frozen=True, slots=True)
class _Folders:
    ok: bool
    names: list[str]
    error: str = ""


def preset_view(p: Preset) -> dict[str, Any]:
    """A preset as the chooser and the form show it: its figures, their source and date."""
    limits = []
    if p.daily_limit is not None:
        window = "a rolling 24 h" if p.limit_window == "rolling_24h" else "UTC day"
        limits.append(f"{p.daily_limit:,} {p.limit_unit} per {window}")
    if p.rate is not None:
        limits.append(f"{p.rate} {p.rate_unit}")
    return {
        "key": p.name,
        "name": p.label,
        "host": p.host,
        "port": p.port,
        "encryption": p.encryption,
        "limits": ", ".join(limits),
        "source": p.source,
        "checked": p.checked,
        "note": p.note,
        "username_hint": p.username_hint,
    }


def _labels(groups: Sequence[Group], errors: Mapping[str, str]) -> list[str]:
    """The labels of the fields at fault, in form order (the summary above the form)."""
    return [f.label for f in fields_of(groups) if f.name in errors]


def _forbidden(request: Request, reason: str) -> Response:
    return render(request, "error.html", {"message": reason}, 403)


#: an edit page: with edits off, the error page saying why (403)
_edit_page = when_edits_allowed(_forbidden)


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# ------------------------------------------------------------------ providers


@_edit_page
async def provider_new(request: Request) -> Response:
    """Add provider: choose a preset, then the form filled from it."""
    st = state(request)
    key = request.query_params.get("preset")
    if key is None or key not in PRESETS:
        views = [preset_view(p) for p in PRESETS.values()]
        return render(request, "provider_new.html", {"presets": views})
    p = PRESETS[key]
    # Templates ({region}) stay in the fields for the operator to fill.
    values = p.values(**{name: "{" + name + "}" for name in p.placeholders})
    return await _provider_form(request, st, None, flat(values), preset=p)


async def _provider_form(
    request: Request,
    st: AdminState,
    pid: str | None,
    values: Mapping[str, Any],
    *,
    preset: Preset | None = None,
    answer: EditAnswer | None = None,
    status: int = 200,
) -> Response:
    """The add (``pid`` None) or edit form, with a refusal's errors beside their fields."""
    ctx = edit_context(st)
    current = await provider_current(ctx, pid) if pid is not None else None
    errors, general = ({}, []) if answer is None else (answer.errors, answer.general)
    cfg = st.backend.snapshot().config
    routes = [i + 1 for i, r in enumerate(cfg.routes) if pid is not None and pid in r.providers]
    return render(
        request,
        "provider_form.html",
        {
            "adding": pid is None,
            "pid": pid,
            "action": "/providers/new" if pid is None else f"/providers/{pid}/edit",
            "preset": preset_view(preset) if preset is not None else None,
            "groups": PROVIDER_GROUPS,
            "values": values,
            "errors": errors,
            "error_labels": _labels(PROVIDER_GROUPS, errors),
            "general": general,
            "diff": answer.diff if answer is not None else None,
            "sources": current.sources if current is not None else {},
            "secrets": current.secrets if current is not None else {},
            "base_digest": (
                answer.base_digest if answer is not None else st.backend.config_digest() or ""
            ),
            "routes": routes,
            "stale": await stale_notice(ctx) if answer is None else None,
        },
        status,
    )


@_edit_page
async def provider_add(request: Request) -> Response:
    st = state(request)
    form = await request.form()
    posted = read_form(form, PROVIDER_GROUPS, adding=True)
    answer = await save_provider(
        st,
        None,
        posted,
        actor(request),
        base_digest=str(form.get("base_digest") or "") or None,
        save_anyway=form.get("save_anyway") is not None,
    )
    if not answer.ok:
        key = str(form.get("preset") or "")
        return await _provider_form(
            request, st, None, posted, preset=PRESETS.get(key), answer=answer, status=answer.status
        )
    return _see_other(_saved_url(request, str(posted.get("id")), answer))


def _saved_url(request: Request, pid: str, answer: EditAnswer) -> str:
    """Where a save lands: the provider's page, with what the server said at a Save anyway.

    The server's answer (never a secret: the connection test's words) rides in
    the signed session cookie as a one-shot flash for this provider, read and
    dropped by the page, so the URL stays short and nothing can be forged into
    the page through a link.
    """
    query = {"saved": "1"}
    if answer.connection_error:
        query["unchecked"] = "1"
        set_save_flash(request, pid, answer.connection_error)
    anchor = "#sign-in" if answer.needs_sign_in else ""
    return f"/providers/{pid}?{urlencode(query)}{anchor}"


@_edit_page
async def provider_edit(request: Request) -> Response:
    st = state(request)
    pid = request.path_params["pid"]
    current = await provider_current(edit_context(st), pid)
    if current is None:
        return render(request, "error.html", {"message": "No such provider in the file."}, 404)
    if request.method == "GET":
        return await _provider_form(request, st, pid, current.values)
    form = await request.form()
    posted = read_form(form, PROVIDER_GROUPS, adding=False)
    answer = await save_provider(
        st,
        pid,
        posted,
        actor(request),
        base_digest=str(form.get("base_digest") or "") or None,
        save_anyway=form.get("save_anyway") is not None,
        current=current,
    )
    if not answer.ok:
        return await _provider_form(request, st, pid, posted, answer=answer, status=answer.status)
    return _see_other(_saved_url(request, pid, answer))


@_edit_page
async def provider_enable(request: Request) -> Response:
    """Disable or Enable on the provider's page (refused for the last enabled one, with why)."""
    st = state(request)
    pid = request.path_params["pid"]
    enabled = request.url.path.endswith("/enable")
    form = await request.form()
    try:
        await edits.set_provider_enabled(
            edit_context(st),
            pid,
            enabled,
            actor(request),
            base_digest=str(form.get("base_digest") or "") or st.backend.config_digest(),
        )
    except edits.EditRefused as exc:
        view = next((v for v in await providers_data(st) if v["id"] == pid), None)
        if view is None:
            return render(request, "error.html", {"message": str(exc)}, 404)
        answer = refusal_answer(exc, PROVIDER_GROUPS, "", current_digest=None)
        return provider_page(request, view, edit_error=exc.message, status=answer.status)
    return _see_other(f"/providers/{pid}?done={'enabled' if enabled else 'disabled'}")


@_edit_page
async def provider_delete(request: Request) -> Response:
    """Delete: a confirmation with how many queued recipients last went through it, then delete."""
    st = state(request)
    pid = request.path_params["pid"]
    ctx = edit_context(st)
    if await provider_current(ctx, pid) is None:
        return render(request, "error.html", {"message": "No such provider in the file."}, 404)
    general: list[str] = []
    diff = None
    if request.method == "POST":
        form = await request.form()
        if form.get("confirmed") == "yes":
            try:
                await edits.remove_provider(
                    ctx,
                    pid,
                    actor(request),
                    base_digest=str(form.get("base_digest") or "") or st.backend.config_digest(),
                )
            except edits.EditRefused as exc:
                general, diff = [str(exc)], exc.diff
            else:
                return _see_other(f"/providers?{urlencode({'done': 'deleted', 'id': pid})}")
    impact = await edits.removal_impact(st.backend.spool, pid)
    return render(
        request,
        "provider_delete.html",
        {
            "pid": pid,
            "impact": impact,
            "general": general,
            "diff": diff,
            "base_digest": st.backend.config_digest() or "",
        },
        409 if general else 200,
    )


# -------------------------------------------------------------------- bounces


async def bounce_settings(request: Request) -> Response:
    st = state(request)
    if (reason := edits_off_reason(st)) is not None:
        if request.method == "POST":
            return _forbidden(request, reason)
        return render(request, "bounce_settings.html", {"off_reason": reason}, 403)
    ctx = edit_context(st)
    if request.method == "GET":
        current = await bounce_current(ctx)
        return await _bounce_form(request, st, current.values)
    form = await request.form()
    posted = read_form(form, BOUNCE_GROUPS, adding=False)
    if form.get("folder_pick"):
        posted["mailbox.folder"] = str(form.get("folder_pick"))
    answer = await save_bounces(
        st,
        posted,
        actor(request),
        base_digest=str(form.get("base_digest") or "") or None,
        save_anyway=form.get("save_anyway") is not None,
    )
    if not answer.ok:
        return await _bounce_form(request, st, posted, answer=answer, status=answer.status)
    return _see_other("/settings/bounces?done=saved")


@_edit_page
async def bounce_folders_typed(request: Request) -> Response:
    """Retrieve folders with the values typed in the form (nothing is saved)."""
    st = state(request)
    form = await request.form()
    posted = read_form(form, BOUNCE_GROUPS, adding=False)
    names, error = await folders_of_typed(st, posted)
    folders = _Folders(ok=error is None, names=names, error=error or "")
    return await _bounce_form(
        request,
        st,
        posted,
        folders=folders,
        base_digest=str(form.get("base_digest") or ""),
        status=200 if error is None else 502,
    )


async def _bounce_form(
    request: Request,
    st: AdminState,
    values: Mapping[str, Any],
    *,
    answer: EditAnswer | None = None,
    folders: _Folders | None = None,
    base_digest: str | None = None,
    status: int = 200,
) -> Response:
    current = await bounce_current(edit_context(st))
    secrets = dict(current.secrets)
    if folders is not None and values.get("mailbox.password"):
        # Never sent back, so the form cannot keep it: say so where it is typed.
        secrets["mailbox.password"] = "type it again to save (a password is never sent back)"
    if base_digest is None:
        base_digest = answer.base_digest if answer is not None else st.backend.config_digest() or ""
    return render(
        request,
        "bounce_settings.html",
        {
            "off_reason": None,
            "groups": BOUNCE_GROUPS,
            "values": values,
            "errors": answer.errors if answer is not None else {},
            "error_labels": _labels(BOUNCE_GROUPS, answer.errors if answer is not None else {}),
            "general": answer.general if answer is not None else [],
            "diff": answer.diff if answer is not None else None,
            "sources": current.sources,
            "secrets": secrets,
            "folders": folders,
            "base_digest": base_digest,
            "stale": await stale_notice(edit_context(st)) if answer is None else None,
        },
        status,
    )


routes = [
    Route("/providers/new", provider_new),
    Route("/providers/new", provider_add, methods=["POST"]),
    Route("/providers/{pid}/edit", provider_edit, methods=["GET", "POST"]),
    Route("/providers/{pid}/enable", provider_enable, methods=["POST"]),
    Route("/providers/{pid}/disable", provider_enable, methods=["POST"]),
    Route("/providers/{pid}/delete", provider_delete, methods=["GET", "POST"]),
    Route("/settings/bounces", bounce_settings, methods=["GET", "POST"]),
    Route("/settings/bounces/folders", bounce_folders_typed, methods=["POST"]),
]
