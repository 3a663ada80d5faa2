"""The JSON API of config edits: ``POST /api/providers``, ``PATCH``/``DELETE /api/providers/{id}``,
``GET``/``PUT /api/settings/bounces``, ``POST /api/settings/bounces/folders`` (the folders of a
mailbox being typed), ``GET /api/presets``.

For apps that provision Sluice: the same operations, checks and writer as
the pages and ``sluice providers add|edit|...``. A body is the edited
object's fields, nested as in the YAML (``{"oauth2": {"client_id": ...}}``)
or as key paths (``{"oauth2.client_id": ...}``), plus ``save_anyway`` and
``base_digest`` (the digest the change was prepared against; default: the
file the daemon loaded). A field set to null is removed from the file.

Answers: 201/200 with the new digest and the keys changed; 422
``{"errors": {"field": "message"}}`` (``""``: not about one field); 409 with
``diff`` when the file changed on disk since it was loaded; 403 with the
reason when ``admin.config_edits`` is false; 404 for an unknown provider. A
secret never appears in an answer.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from admin.backend import actor, json_body, state
from admin.edits import (
    EditAnswer,
    bounce_current,
    edit_context,
    edits_off_reason,
    folders_of_typed,
    refusal_answer,
    save_bounces,
    save_provider,
    when_edits_allowed,
)
from admin.forms import PROVIDER_GROUPS, flat
from admin.settings import preset_view
from relay.config_edit import EditRefused
from relay.operations import config_edits as edits
from relay.presets import PRESETS

__all__ = ["routes"]

#: body keys that are not fields of the edited object
_CONTROL = ("save_anyway", "base_digest")


def _answer(answer: EditAnswer, ok_status: int = 200) -> JSONResponse:
    return JSONResponse(answer.payload(), status_code=ok_status if answer.ok else answer.status)


def _refused(status: int, message: str) -> JSONResponse:
    return JSONResponse({"errors": {"": message}}, status_code=status)


#: an edit call: with edits off, 403 and the reason as the form-level error
_edit_call = when_edits_allowed(lambda _request, reason: _refused(403, reason))


async def _body(request: Request) -> tuple[dict[str, Any], bool, str | None]:
    """(fields as key paths, save_anyway, base_digest). Raises ValueError: not a JSON object."""
    body = await json_body(request)
    save_anyway = body.get("save_anyway") is True
    base = body.get("base_digest")
    fields = flat({k: v for k, v in body.items() if k not in _CONTROL})
    return fields, save_anyway, base if isinstance(base, str) and base else None


async def api_presets(request: Request) -> Response:
    """The presets: each provider kind's settings and limits, with source and date."""
    out = []
    for p in PRESETS.values():
        view = preset_view(p)
        view["values"] = p.values(**{name: "{" + name + "}" for name in p.placeholders})
        out.append(view)
    return JSONResponse(out)


@_edit_call
async def api_provider_add(request: Request) -> Response:
    st = state(request)
    try:
        fields, save_anyway, base = await _body(request)
    except ValueError as exc:
        return _refused(400, str(exc))
    answer = await save_provider(
        st, None, fields, actor(request), base_digest=base, save_anyway=save_anyway, partial=True
    )
    return _answer(answer, 201)


@_edit_call
async def api_provider_edit(request: Request) -> Response:
    """PATCH: change the fields given; ``enabled`` disables or enables (not the last enabled)."""
    st = state(request)
    pid = request.path_params["pid"]
    try:
        fields, save_anyway, base = await _body(request)
    except ValueError as exc:
        return _refused(400, str(exc))
    enabled = fields.pop("enabled", None)
    answer: EditAnswer | None = None
    if fields or enabled is None:
        answer = await save_provider(
            st,
            pid,
            fields,
            actor(request),
            base_digest=base,
            save_anyway=save_anyway,
            partial=True,
        )
        if not answer.ok:
            return _answer(answer)
        base = answer.base_digest
    if enabled is not None:
        if not isinstance(enabled, bool):
            return JSONResponse({"errors": {"enabled": "must be true or false"}}, 422)
        try:
            result = await edits.set_provider_enabled(
                edit_context(st), pid, enabled, actor(request), base_digest=base
            )
        except EditRefused as exc:
            return _answer(refusal_answer(exc, PROVIDER_GROUPS, base or "", current_digest=None))
        answer = EditAnswer(ok=True, base_digest=result.digest, result=result)
    assert answer is not None
    return _answer(answer)


@_edit_call
async def api_provider_remove(request: Request) -> Response:
    """DELETE: remove the provider; the answer counts the queued recipients it leaves."""
    st = state(request)
    pid = request.path_params["pid"]
    ctx = edit_context(st)
    base = request.query_params.get("base_digest") or None
    impact = await edits.removal_impact(st.backend.spool, pid)
    try:
        result = await edits.remove_provider(ctx, pid, actor(request), base_digest=base)
    except EditRefused as exc:
        return _answer(refusal_answer(exc, PROVIDER_GROUPS, base or "", current_digest=None))
    payload = EditAnswer(ok=True, base_digest=result.digest, result=result).payload()
    payload["queued_recipients"] = impact
    return JSONResponse(payload)


@_edit_call
async def api_bounce_settings(request: Request) -> Response:
    """PUT: save the bounce settings (the mailbox is logged in to and its folder found first)."""
    st = state(request)
    try:
        fields, save_anyway, base = await _body(request)
    except ValueError as exc:
        return _refused(400, str(exc))
    answer = await save_bounces(
        st, fields, actor(request), base_digest=base, save_anyway=save_anyway, partial=True
    )
    return _answer(answer)


async def api_bounce_settings_read(request: Request) -> Response:
    """GET: the bounce settings as the file has them (key paths), which are read-only and why.

    Secrets are never in it: ``secrets`` says what each stands for ("saved", "not set").
    """
    st = state(request)
    if (reason := edits_off_reason(st)) is not None:
        return JSONResponse({"error": reason}, 403)
    current = await bounce_current(edit_context(st))
    return JSONResponse(
        {
            "values": current.values,
            "read_only": current.sources,
            "secrets": current.secrets,
            "digest": current.digest,
        }
    )


async def api_bounce_folders_typed(request: Request) -> Response:
    """POST: log in with the mailbox values given (typed in the form) and list the folders.

    200 ``{"folders": [...]}``; 502 ``{"error": ...}`` with the server's answer.
    Nothing is saved; the password (typed, else the saved one) is not echoed.
    """
    st = state(request)
    if (reason := edits_off_reason(st)) is not None:
        return JSONResponse({"error": reason}, 403)
    try:
        fields, _, _ = await _body(request)
    except ValueError as exc:
        return JSONResponse({"error": str(exc)}, 400)
    names, error = await folders_of_typed(st, fields)
    if error is not None:
        return JSONResponse({"error": error}, 502)
    return JSONResponse({"folders": names})


routes = [
    Route("/api/presets", api_presets),
    Route("/api/providers", api_provider_add, methods=["POST"]),
    Route("/api/providers/{pid}", api_provider_edit, methods=["PATCH"]),
    Route("/api/providers/{pid}", api_provider_remove, methods=["DELETE"]),
    Route("/api/settings/bounces", api_bounce_settings_read),
    Route("/api/settings/bounces", api_bounce_settings, methods=["PUT"]),
    Route("/api/settings/bounces/folders", api_bounce_folders_typed, methods=["POST"]),
]
