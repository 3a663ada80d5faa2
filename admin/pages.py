"""The HTML pages: overview, providers, queue, log, message, suppressions, webhooks, login.

Each route reads through ``admin.data`` / ``admin.api`` (the same values the
JSON API returns) and renders one template. Forms post back here and answer
with a 303 redirect, so a reload never repeats an action.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from admin.api import (
    bounce_folders_data,
    bounce_raw_response,
    eml_response,
    overview_data,
    providers_data,
    suppression_detail,
    suppressions_csv_response,
    webhooks_data,
)
from admin.auth import DEVICE_COOKIE
from admin.backend import ACTIONS, REFUSAL_STATUS, AdminState, act, actor, identity, state
from admin.data import PAGE_SIZES, LogFilter, QueueFilter, message_view
from admin.edits import edits_off_reason
from admin.suppressions import ANY_SCOPE, IMPORT_MAX, SuppressionFilter, entry_view
from admin.testmail import test_message_view
from relay.errors import UnknownMessage
from relay.model import Action, AttemptStatus, LogEntry, QueueEntry, RecipientStatus
from relay.operations import suppressions as sup_ops
from relay.operations.actor import Refused
from relay.operations.queue import Acted
from relay.operations.testmail import SendTest, send_test_message
from relay.outbound.device_flow import DeviceFlowError
from relay.store.suppressions import SOURCES
from relay.wording import plural

__all__ = ["provider_page", "render", "routes"]


def _render(request: Request, name: str, ctx: dict[str, Any], status: int = 200) -> Response:
    st = state(request)
    who = identity(request)
    base = {
        "who": who,
        "csrf": who.session.csrf if who.session is not None else "",
        "open_mode": not st.credentials.login_required,
        "page": name.removesuffix(".html"),
        "notice": _notice(request),
        # Config text is for operators only, never for the login page.
        "reload_error": st.backend.status().last_reload_error if who.authenticated else None,
        # A store shared by a fleet: the queue, the log and a message say which node
        # accepted or tried the mail (on one host's spool that column says nothing).
        "fleet": st.backend.spool.shared,
        "node": st.backend.spool.node,
    }
    return st.templates.TemplateResponse(request, name, {**base, **ctx}, status_code=status)


#: for other admin modules (``admin.controls``)
render = _render


def _notice(request: Request) -> str:
    q = request.query_params
    done = q.get("done")
    try:
        n = int(q.get("n", "0"))
        missing = int(q.get("missing", "0"))
    except ValueError:
        return ""
    messages, recipients = plural(n, "message"), plural(n, "recipient")
    entries = plural(n, "suppression entry", "suppression entries")
    past = {a.value: a.past for a in Action}
    texts = {
        "retry": f"{messages} {past['retry']}.",
        "delete": f"{messages} {past['delete']}.",
        "reload": "Configuration reloaded.",
        "hold": f"{recipients} {past['hold']}.",
        "release": f"{recipients} {past['release']}: due now.",
        "reroute": f"{recipients} {past['reroute']}: due now.",
        "pause": "Delivery paused; mail is still accepted.",
        "resume": "Delivery resumed.",
        "reload-failed": "Reload failed; the running configuration is unchanged.",
        "added": "Address added to the suppression list.",
        "removed": f"{entries} removed.",
        "imported": f"{entries} imported.",
        "enabled": "Provider enabled; the configuration file is saved and reloaded.",
        "disabled": "Provider disabled; the configuration file is saved and reloaded.",
        "deleted": "Provider deleted; the configuration file is saved and reloaded.",
        "saved": "Saved; the configuration file is written and reloaded.",
    }
    text = texts.get(done or "", "")
    if text and missing:
        text += f" {plural(missing, 'message was', 'messages were')} no longer in the queue."
    return text


def _done(acted: Acted) -> str:
    return urlencode(
        {"done": acted.action.value, "n": len(acted.done), "missing": len(acted.missing)}
    )


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _local_path(target: str | None, default: str) -> str:
    """Only same-site paths are followed after a form (no open redirect)."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return default


async def overview(request: Request) -> Response:
    st = state(request)
    context = {**await overview_data(st), "folders": None}
    return _render(request, "overview.html", {**context, "bounce_settings": _can_edit(st)})


def _can_edit(st: AdminState) -> bool:
    return edits_off_reason(st) is None


async def bounce_folders(request: Request) -> Response:
    """ "Retrieve folders" on the bounce mailbox card: the overview with the server's folders.

    A POST (with the CSRF token) though it changes nothing: it makes the
    relay log in to the mail server, which a link or a prefetch must not do.
    """
    st = state(request)
    status, folders = await bounce_folders_data(st)
    context = {**await overview_data(st), "folders": folders, "bounce_settings": _can_edit(st)}
    return _render(request, "overview.html", context, status)


async def providers(request: Request) -> Response:
    return await _providers_page(request)


async def _providers_page(
    request: Request,
    *,
    tested: dict[str, Any] | None = None,
    send_error: str = "",
    form: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    """The provider list, with "Test connection" per row and "Send test message" below.

    ``?test_message=ID`` shows where that test message stands (the page's
    script polls ``/api/test-messages/ID`` until it is settled).
    """
    st = state(request)
    views = await providers_data(st)
    qid = request.query_params.get("test_message", "")
    test_message = await test_message_view(st.backend.spool, qid) if qid else None
    form = form or {}
    return _render(
        request,
        "providers.html",
        {
            "providers": views,
            "tested": tested or {},
            "test_message": test_message,
            "send_error": send_error,
            "send_to": form.get("to", ""),
            "send_provider": form.get("provider", ""),
            "edits_off": edits_off_reason(st),
        },
        status,
    )


async def provider_detail(request: Request) -> Response:
    st = state(request)
    pid = request.path_params["pid"]
    view = next((v for v in await providers_data(st) if v["id"] == pid), None)
    if view is None:
        return _render(request, "error.html", {"message": "No such provider."}, 404)
    report = None
    if request.method == "POST":
        report = await st.backend.test_connection(pid)
        if (await request.form()).get("from") == "list":
            return await _providers_page(request, tested={pid: report})
    return provider_page(request, view, report=report)


#: session key of the one-shot note a Save anyway leaves for the provider's page
_SAVE_FLASH = "save_answer"
#: the server's answer is cut to this many characters (it rides in the cookie)
SAVE_FLASH_LIMIT = 500


def set_save_flash(request: Request, pid: str, answer: str) -> None:
    """Keep what the server answered at a Save anyway for the next view of ``pid``'s page."""
    request.session[_SAVE_FLASH] = {"pid": pid, "text": answer[:SAVE_FLASH_LIMIT]}


def _take_save_flash(request: Request, pid: str) -> str | None:
    """The Save-anyway answer left for ``pid`` (dropped once read); None if there is none."""
    flash = request.session.get(_SAVE_FLASH)
    if not isinstance(flash, dict) or flash.get("pid") != pid:
        return None
    del request.session[_SAVE_FLASH]
    text = flash.get("text")
    return text if isinstance(text, str) else None


def provider_page(
    request: Request,
    view: dict[str, Any],
    *,
    report: Any = None,
    sign_in_error: str | None = None,
    edit_error: str | None = None,
    status: int = 200,
) -> Response:
    """A provider's page: its settings, health, sign-in, and the edit buttons (or why none)."""
    st = state(request)
    pid = view["id"]
    sign_in = st.backend.sign_in_state(pid) if st.backend.sign_in_state is not None else None
    q = request.query_params
    context = {
        "p": view,
        "report": report,
        "sign_in": None if sign_in_error else sign_in,
        "sign_in_error": sign_in_error,
        "edits_off": edits_off_reason(st),
        "edit_error": edit_error,
        "saved": q.get("saved") == "1",
        "unchecked": q.get("unchecked") == "1",
        "save_answer": _take_save_flash(request, pid) if q.get("unchecked") == "1" else None,
        "base_digest": st.backend.config_digest() or "",
    }
    return _render(request, "provider.html", context, status)


async def provider_connect(request: Request) -> Response:
    """The Connect button: start the device sign-in and show its code on the provider page."""
    st = state(request)
    pid = request.path_params["pid"]
    view = next((v for v in await providers_data(st) if v["id"] == pid), None)
    if view is None:
        return _render(request, "error.html", {"message": "No such provider."}, 404)
    if st.backend.sign_in_start is None:
        return _render(request, "error.html", {"message": "Sign-in is not available."}, 404)
    try:
        await st.backend.sign_in_start(pid)
    except DeviceFlowError as exc:
        return provider_page(request, view, sign_in_error=exc.text, status=502)
    return _see_other(f"/providers/{pid}#sign-in")


async def send_test(request: Request) -> Response:
    """The "Send test message" form: queue it, then show it on the provider list."""
    form = await request.form()
    fields = {"provider": str(form.get("provider", "")), "to": str(form.get("to", ""))}
    b = state(request).backend
    try:
        sent = await send_test_message(
            b.spool,
            b.snapshot().config,
            SendTest(fields["provider"], fields["to"]),
            actor(request),
            hostname=b.hostname,
            now=b.clock(),
        )
    except Refused as exc:
        status = REFUSAL_STATUS[exc.refusal]
        return await _providers_page(request, send_error=str(exc), form=fields, status=status)
    return _see_other(f"/providers?{urlencode({'test_message': sent.queue_id})}#test-message")


def _page_links(
    path: str, query: list[tuple[str, str]], entries: Sequence[QueueEntry | LogEntry], limit: int
) -> dict[str, str | None]:
    """Keyset paging: the first page, and the next one after the last row shown."""
    more = bool(entries) and len(entries) == limit
    return {
        "first_url": f"{path}?{urlencode(query)}",
        "next_url": (
            f"{path}?{urlencode([*query, ('before_id', str(entries[-1].id))])}" if more else None
        ),
    }


async def queue(request: Request) -> Response:
    """The queue, one row per recipient; a row's checkbox stands for its whole message.

    The retry/delete/hold/release/reroute forms take queue IDs (``relay.operations.queue``
    acts on messages), so every checkbox of one message is one choice (the
    script ticks them together) and says how many recipients it covers.
    """
    spool = state(request).backend.spool
    f = QueueFilter.parse(request.query_params)
    entries = await f.page(spool)
    marks = await spool.queue_marks(e.queue_id for e in entries)
    base_q = [("status", s.value) for s in f.statuses]
    if f.search:
        base_q.append(("search", f.search))
    base_q.append(("limit", str(f.limit)))
    return _render(
        request,
        "queue.html",
        {
            "f": f,
            "entries": entries,
            "recipients_of": marks.recipients,
            "bounced": marks.bounced,
            "statuses": [s.value for s in RecipientStatus],
            "page_sizes": PAGE_SIZES,
            **_page_links("/queue", base_q, entries, f.limit),
            "here": request.url.path + ("?" + request.url.query if request.url.query else ""),
            "providers": state(request).backend.snapshot().config.providers,
        },
    )


async def queue_action(request: Request) -> Response:
    form = await request.form()
    action = str(form.get("action", ""))
    back = _local_path(str(form.get("back", "")), "/queue")
    if action not in ACTIONS:
        return _render(request, "error.html", {"message": "Unknown action."}, 400)
    ids = [str(v) for v in form.getlist("queue_id")]
    acted = await act(state(request).backend.spool, action, ids, actor(request))
    # Drop an older notice from the way back before adding this one.
    back = back.split("done=")[0].rstrip("&?") or "/queue"
    sep = "&" if "?" in back else "?"
    params = _done(acted)
    return _see_other(f"{back}{sep}{params}")


async def log_page(request: Request) -> Response:
    f = LogFilter.parse(request.query_params)
    entries = await f.page(state(request).backend.spool)
    base_q = [("status", s.value) for s in f.statuses]
    for key, value in (("search", f.search), ("date", f.date)):
        if value:
            base_q.append((key, value))
    if f.date:
        base_q.append(("tz", str(f.tz)))
    base_q.append(("limit", str(f.limit)))
    return _render(
        request,
        "log.html",
        {
            "f": f,
            "entries": entries,
            "statuses": list(AttemptStatus),
            "page_sizes": PAGE_SIZES,
            **_page_links("/log", base_q, entries, f.limit),
        },
    )


async def message(request: Request) -> Response:
    spool = state(request).backend.spool
    qid = request.path_params["qid"]
    try:
        detail = await spool.get(qid)
        raw = await spool.body(detail.message_id)
    except UnknownMessage:
        return _render(request, "error.html", {"message": "No message with that queue ID."}, 404)
    return _render(request, "message.html", {"m": message_view(detail, raw), "qid": qid})


async def message_action(request: Request) -> Response:
    qid = request.path_params["qid"]
    form = await request.form()
    action = str(form.get("action", ""))
    if action not in ACTIONS:
        return _render(request, "error.html", {"message": "Unknown action."}, 400)
    params = _done(await act(state(request).backend.spool, action, [qid], actor(request)))
    if action == "delete":
        return _see_other(f"/queue?{params}")
    return _see_other(f"/messages/{qid}?{params}")


async def suppressions(request: Request) -> Response:
    return await _suppressions_page(request)


async def _suppressions_page(
    request: Request,
    *,
    error: str = "",
    form: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    """The list with its filters, the add form and the CSV import/export."""
    st = state(request)
    f = SuppressionFilter.parse(request.query_params)
    rows, next_after = await f.page(st.backend.spool)
    now = st.backend.clock()
    query = f.query()
    return _render(
        request,
        "suppressions.html",
        {
            "f": f,
            "any_scope": ANY_SCOPE,
            "entries": [entry_view(e, now) for e in rows],
            "scopes": await st.backend.spool.suppressions.scopes(),
            "sources": SOURCES,
            "page_sizes": PAGE_SIZES,
            "first_url": f"/suppressions?{urlencode(query)}",
            "next_url": (
                f"/suppressions?{urlencode([*query, ('after', next_after)])}"
                if next_after is not None
                else None
            ),
            "export_url": f"/suppressions.csv?{urlencode(query)}",
            "here": request.url.path + ("?" + request.url.query if request.url.query else ""),
            "error": error,
            "form": form or {},
            "import_max_mib": IMPORT_MAX // (1024 * 1024),
        },
        status,
    )


async def suppression_add(request: Request) -> Response:
    st = state(request)
    form = await request.form()
    fields = {k: str(form.get(k, "")) for k in ("address", "scope", "reason", "expires_in")}
    try:
        expires_at = sup_ops.expiry(st.backend.clock(), expires_in=fields["expires_in"].strip())
        done = await sup_ops.suppress(
            st.backend.spool,
            fields["address"],
            actor(request),
            scope=fields["scope"],
            reason=fields["reason"],
            expires_at=expires_at,
        )
    except Refused as exc:
        return await _suppressions_page(request, error=str(exc), form=fields, status=400)
    query = urlencode({"search": done.entry.address, "done": "added"})
    return _see_other(f"/suppressions?{query}")


async def suppression_remove(request: Request) -> Response:
    form = await request.form()
    back = _local_path(str(form.get("back", "")), "/suppressions")
    try:
        done = await sup_ops.unsuppress(
            state(request).backend.spool,
            str(form.get("address", "")),
            actor(request),
            scope=str(form.get("scope", "")),
        )
    except Refused as exc:
        return await _suppressions_page(request, error=str(exc), status=400)
    n = done.removed
    back = back.split("done=")[0].rstrip("&?") or "/suppressions"
    sep = "&" if "?" in back else "?"
    return _see_other(f"{back}{sep}{urlencode({'done': 'removed', 'n': n})}")


async def suppression_import(request: Request) -> Response:
    """The CSV upload (multipart; ``admin.guard`` checked its CSRF field and its size)."""
    async with request.form(max_files=1, max_fields=10) as form:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            return await _suppressions_page(request, error="Choose a CSV file.", status=400)
        data = await upload.read(IMPORT_MAX + 1)
    try:
        done = await sup_ops.import_csv(
            state(request).backend.spool, data, actor(request), max_bytes=IMPORT_MAX
        )
    except Refused as exc:
        return await _suppressions_page(request, error=f"Import refused: {exc}", status=400)
    return _see_other(f"/suppressions?{urlencode({'done': 'imported', 'n': done.count})}")


async def suppression_page(request: Request) -> Response:
    """One address: its entries in every scope and the bounces that put it there."""
    try:
        address = sup_ops.lookup_key(request.path_params["address"])
    except Refused as exc:
        return _render(request, "error.html", {"message": str(exc)}, 400)
    data = await suppression_detail(state(request), address)
    return _render(
        request,
        "suppression.html",
        {**data, "here": request.url.path},
        200 if data["entries"] or data["bounces"] else 404,
    )


async def webhooks(request: Request) -> Response:
    """Each endpoint's recent events, delivered or failing (as Postal shows them)."""
    return _render(request, "webhooks.html", {"endpoints": await webhooks_data(state(request))})


async def reload(request: Request) -> Response:
    ok = await state(request).backend.reload()
    return _see_other("/?done=reload" if ok else "/?done=reload-failed")


async def login(request: Request) -> Response:
    st = state(request)
    who = identity(request)
    if not st.credentials.login_required or who.via == "cookie":
        return _see_other("/")
    target = _local_path(request.query_params.get("next"), "/")
    if request.method == "GET":
        return _render(request, "login.html", {"next": target, "error": ""})
    form = await request.form()
    target = _local_path(str(form.get("next", "")), "/")
    client = request.client.host if request.client else "?"
    user, password = str(form.get("username", "")), str(form.get("password", ""))
    # The login brake (admin.auth): a trusted browser counts under its own key.
    device = st.sessions.device(request.cookies.get(DEVICE_COOKIE), user)
    keys = st.limiter.keys(client, user, device)
    wait = st.limiter.retry_after(keys)
    if wait:
        error = f"Too many failed attempts. Try again in {int(wait) + 1} s."
        return _render(request, "login.html", {"next": target, "error": error}, 429)
    if not await st.credentials.check(user, password):
        st.limiter.failed(keys)
        error = "Wrong user name or password."
        return _render(request, "login.html", {"next": target, "error": error}, 401)
    st.limiter.succeeded(keys)
    await st.sessions.log_in(request.session, user)
    response = _see_other(target)
    response.headers.append("set-cookie", st.sessions.device_cookie(user, device))
    return response


async def logout(request: Request) -> Response:
    # Ends every session issued so far (server-side session version), and starts
    # a fresh anonymous one so that the login form right after has a token.
    await state(request).sessions.log_out(request.session, actor(request))
    return _see_other("/login")


routes = [
    Route("/", overview),
    Route("/providers", providers),
    Route("/providers/send-test", send_test, methods=["POST"]),
    Route("/providers/{pid}", provider_detail),
    Route("/providers/{pid}/test", provider_detail, methods=["POST"]),
    Route("/providers/{pid}/connect", provider_connect, methods=["POST"]),
    Route("/queue", queue),
    Route("/queue/action", queue_action, methods=["POST"]),
    Route("/log", log_page),
    Route("/messages/{qid}", message),
    Route("/messages/{qid}/eml", eml_response),
    Route("/messages/{qid}/action", message_action, methods=["POST"]),
    Route("/suppressions", suppressions),
    Route("/suppressions.csv", suppressions_csv_response),
    Route("/suppressions/add", suppression_add, methods=["POST"]),
    Route("/suppressions/remove", suppression_remove, methods=["POST"]),
    Route("/suppressions/import", suppression_import, methods=["POST"]),
    Route("/suppressions/{address:path}", suppression_page),
    Route("/bounces/folders", bounce_folders, methods=["POST"]),
    Route("/bounces/{bid:int}/raw", bounce_raw_response),
    Route("/webhooks", webhooks),
    Route("/reload", reload, methods=["POST"]),
    Route("/login", login, methods=["GET", "POST"]),
    Route("/logout", logout, methods=["POST"]),
]
