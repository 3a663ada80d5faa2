"""Between the settings forms (and the JSON API) and ``relay.operations.config_edits``.

The pages and the API read the file the same way (the edited object's keys,
which of them are read-only and why, what each secret's masked field
means), send only what the form changed, and turn a refusal into the same
answer: field -> message for the fields the form has, the rest as general
errors, the difference when the file changed on disk, and the HTTP status
(422 invalid, 409 stale, 404 no such provider). A secret's value never
comes back: not in the form, not in an error, not in the JSON.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from admin.backend import AdminState, state
from admin.forms import (
    BOUNCE_GROUPS,
    PROVIDER_GROUPS,
    Group,
    Kind,
    changed_values,
    fields_of,
    flat,
)
from relay.bounces.mailbox import Mailbox, MailboxError
from relay.config import MailboxSettings
from relay.config_edit import ConfigDocument, EditRefused, Loc, unified_diff
from relay.operations import config_edits as edits
from relay.operations.actor import Actor
from relay.secrets import SecretError

__all__ = [
    "Current",
    "EditAnswer",
    "Stale",
    "bounce_current",
    "edit_context",
    "edits_off_reason",
    "folders_of_typed",
    "provider_current",
    "refusal_answer",
    "save_bounces",
    "save_provider",
    "stale_notice",
]

#: always written when a provider is added, even when they equal the default: the
#: connection a reader of the file looks for first
_ADD_ALWAYS = ("port", "encryption")


@dataclass(frozen=True, slots=True)
class Current:
    """The edited object as the file has it, for the form."""

    #: key path -> value as written (``${VAR}`` included)
    values: dict[str, Any]
    #: key path -> where a read-only value comes from (the field is shown, not editable)
    sources: dict[str, str]
    #: secret field -> what its empty masked field stands for ("saved", "not set")
    secrets: dict[str, str]
    #: the digest of the file read
    digest: str


@dataclass(frozen=True, slots=True)
class EditAnswer:
    """A save's outcome as the page and the API show it."""

    ok: bool
    status: int = 200
    #: field (on the form) -> message in words
    errors: dict[str, str] = field(default_factory=dict)
    #: messages not about one field of the form
    general: list[str] = field(default_factory=list)
    #: the file changed on disk since it was loaded: the difference
    diff: str | None = None
    #: what the next save of this form starts from
    base_digest: str = ""
    #: every error by the field it names ('' for the rest): the API's answer
    by_field: dict[str, str] = field(default_factory=dict)
    result: edits.EditResult | None = None

    @property
    def connection_error(self) -> str | None:
        return self.result.connection_error if self.result is not None else None

    @property
    def needs_sign_in(self) -> bool:
        return self.result is not None and self.result.needs_sign_in

    def payload(self) -> dict[str, Any]:
        """The JSON API's body (never a secret: the result names keys, not values)."""
        if not self.ok:
            out: dict[str, Any] = {"errors": dict(self.by_field)}
            if self.diff is not None:
                out["diff"] = self.diff
            return out
        r = self.result
        assert r is not None
        return {
            "id": r.provider,
            "digest": r.digest,
            "changed": r.changed,
            "reloaded": r.reloaded,
            "warnings": r.warnings,
            "connection_error": r.connection_error,
            "needs_sign_in": r.needs_sign_in,
        }


def edits_off_reason(st: AdminState) -> str | None:
    """Why this admin serves no edit forms (None: it does)."""
    if not st.settings.config_edits:
        return (
            "Configuration edits are turned off on this host (admin.config_edits: false): "
            "its configuration file is managed elsewhere (Ansible, Puppet, NixOS...). "
            "Change it there; `sluice providers add|edit|...` still works from a shell."
        )
    if st.backend.edit_context is None:
        return "This admin has no configuration file to edit (it was started without one)."
    return None


Endpoint = Callable[[Request], Awaitable[Response]]


def when_edits_allowed(
    refuse: Callable[[Request, str], Response],
) -> Callable[[Endpoint], Endpoint]:
    """An endpoint that edits the config: with edits off it answers ``refuse(request, why)``.

    One check for every edit page and API call (``edits_off_reason``); each
    front-end says no in its own form (an error page, a JSON 403).
    """

    def wrap(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            if (reason := edits_off_reason(state(request))) is not None:
                return refuse(request, reason)
            return await endpoint(request)

        return guarded

    return wrap


def edit_context(st: AdminState) -> edits.EditContext:
    """The daemon's edit context (call ``edits_off_reason`` first)."""
    make = st.backend.edit_context
    assert make is not None, "config edits are not available"
    return make()


@dataclass(frozen=True, slots=True)
class Stale:
    """The file on disk is not the one the daemon runs: Save will refuse until it is reloaded."""

    path: str
    diff: str


async def stale_notice(ctx: edits.EditContext) -> Stale | None:
    """Why Save would refuse before anything is typed: a hand edit not yet reloaded."""
    if ctx.loaded_digest is None:
        return None
    try:
        doc = await asyncio.to_thread(ConfigDocument.read, ctx.config_path)
    except EditRefused:
        return None
    if doc.digest == ctx.loaded_digest:
        return None
    diff = ""
    if ctx.loaded_text is not None:
        diff = unified_diff(ctx.loaded_text, doc.text, path=str(ctx.config_path))
    return Stale(str(ctx.config_path), diff)


def _secret_note(doc: ConfigDocument, loc: Loc, ctx: edits.EditContext) -> tuple[str, str | None]:
    """(placeholder of the masked field, read-only reason or None) for a secret key."""
    parent = doc.get(loc[:-1])
    name = str(loc[-1])
    if not isinstance(parent, Mapping):
        return "not set", None
    if f"{name}_env" in parent:
        return "", f"from the environment variable {parent[f'{name}_env']}"
    source = doc.provenance(loc, secrets_dir=ctx.secrets_dir.absolute())
    if source is not None and "systemd" in source:
        return "", source
    if f"{name}_file" in parent:
        if source is None:
            return "saved (leave empty to keep it)", None
        return f"in {parent[f'{name}_file']} (type a new one to replace it)", None
    if name in parent:
        return "set in the file (type a new one to move it to a file of its own)", None
    return "not set", None


def _current(
    doc: ConfigDocument, container: Loc, groups: Sequence[Group], ctx: edits.EditContext
) -> Current:
    obj = doc.get(container)
    values = flat(obj) if isinstance(obj, Mapping) else {}
    sources: dict[str, str] = {}
    secrets: dict[str, str] = {}
    for f in fields_of(groups):
        loc = (*container, *f.name.split("."))
        if f.kind is Kind.SECRET:
            values.pop(f.name, None)  # never to the page
            note, reason = _secret_note(doc, loc, ctx)
            secrets[f.name] = note
            if reason is not None:
                sources[f.name] = reason
            continue
        if doc.has(loc):
            reason = doc.provenance(loc)
            if reason is not None:
                sources[f.name] = reason
        elif (why := doc.shared_reason(loc)) is not None:
            sources[f.name] = why
    # Secret keys of any spelling stay out of the values the page is drawn from.
    values = {
        k: _plain(v)
        for k, v in values.items()
        if not k.rsplit(".", 1)[-1].startswith(("password", "client_secret", "refresh_token"))
    }
    return Current(values, sources, secrets, doc.digest)


def _plain(value: Any) -> Any:
    """ruamel's scalar types as plain ones (the page and the comparison want str/int/bool)."""
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


async def provider_current(ctx: edits.EditContext, provider_id: str) -> Current | None:
    """One provider as the file has it (None: not in the file)."""
    doc = await asyncio.to_thread(ConfigDocument.read, ctx.config_path)
    index = doc.find_provider(provider_id)
    if index is None:
        return None
    return _current(doc, ("providers", index), PROVIDER_GROUPS, ctx)


async def bounce_current(ctx: edits.EditContext) -> Current:
    """The ``bounces`` section as the file has it."""
    doc = await asyncio.to_thread(ConfigDocument.read, ctx.config_path)
    return _current(doc, ("bounces",), BOUNCE_GROUPS, ctx)


def refusal_answer(
    exc: EditRefused, groups: Sequence[Group], base_digest: str, *, current_digest: str | None
) -> EditAnswer:
    """A refusal as the form shows it: errors beside the fields the form has, the rest above."""
    names = {f.name for f in fields_of(groups)}
    errors: dict[str, str] = {}
    general: list[str] = []
    for e in exc.errors:
        if e.field in names and e.field not in errors:
            errors[e.field] = e.message
        elif e.field:
            general.append(f"{e.field}: {e.message}")
        else:
            general.append(e.message)
    if not exc.errors:
        general.append(exc.message)
    by_field: dict[str, str] = {}
    for e in exc.errors:
        by_field[e.field] = (
            f"{by_field[e.field]}; {e.message}" if e.field in by_field else e.message
        )
    if not exc.errors:
        by_field[""] = exc.message
    stale = exc.diff is not None or (
        not exc.errors and current_digest is not None and current_digest != base_digest
    )
    missing = not exc.errors and exc.message.startswith("no provider")
    status = 409 if stale else 404 if missing else 422
    return EditAnswer(
        ok=False,
        status=status,
        errors=errors,
        general=general,
        diff=exc.diff,
        base_digest=base_digest,
        by_field=by_field,
    )


async def _digest_now(ctx: edits.EditContext) -> str | None:
    try:
        return (await asyncio.to_thread(ConfigDocument.read, ctx.config_path)).digest
    except EditRefused:
        return None


def _moved_secret(
    values: Mapping[str, Any], current: Current | None, host: str, secret: str
) -> EditAnswer | None:
    """Refuse to send a saved password to a server it was not saved for, unseen.

    The page never shows a saved password, so a new server name with the old
    password kept would hand it to whoever answers there (the connection
    check logs in at once): someone who may use the admin page but may not
    read the secrets could collect it. A new host therefore needs the
    password typed again; one from the environment or a credential (read-only
    here) is the operator's to move, and stays.
    """
    if current is None or host not in values or values.get(secret):
        return None
    saved = current.secrets.get(secret, "not set")
    if saved == "not set" or secret in current.sources:
        return None
    what = "client secret" if secret.endswith("client_secret") else "password"
    message = (
        f"type the {what} again for the new server: a saved {what} is not sent to "
        "another server unseen"
    )
    return EditAnswer(ok=False, status=422, errors={secret: message}, by_field={secret: message})


async def save_provider(
    st: AdminState,
    provider_id: str | None,
    posted: Mapping[str, Any],
    actor: Actor,
    *,
    base_digest: str | None,
    save_anyway: bool,
    current: Current | None = None,
    partial: bool = False,
) -> EditAnswer:
    """Add (``provider_id`` None) or edit a provider with what the form posted.

    Only the fields that differ from the file are sent (``partial``: the API,
    whose body holds only what it sets, any key a provider has, is sent as it is).
    """
    ctx = edit_context(st)
    base = base_digest or st.backend.config_digest() or ""
    if partial:
        values = dict(posted)
    elif provider_id is None:
        values = changed_values(posted, {}, PROVIDER_GROUPS)
        for name in _ADD_ALWAYS:
            if posted.get(name) not in (None, ""):
                values[name] = posted[name]
    else:
        if current is None:
            current = await provider_current(ctx, provider_id)
        known = current.values if current is not None else {}
        read_only = list(current.sources) if current is not None else []
        values = changed_values(posted, known, PROVIDER_GROUPS, read_only=read_only)
    if provider_id is not None:
        if current is None:
            current = await provider_current(ctx, provider_id)
        for host, secret in (
            ("host", "password"),
            ("oauth2.token_url", "oauth2.client_secret"),
            ("oauth2.device_authorization_url", "oauth2.client_secret"),
        ):
            if (moved := _moved_secret(values, current, host, secret)) is not None:
                return moved
    try:
        if provider_id is None:
            result = await edits.add_provider(
                ctx, values, actor, base_digest=base or None, save_anyway=save_anyway
            )
        else:
            result = await edits.edit_provider(
                ctx, provider_id, values, actor, base_digest=base or None, save_anyway=save_anyway
            )
    except EditRefused as exc:
        return refusal_answer(exc, PROVIDER_GROUPS, base, current_digest=await _digest_now(ctx))
    return EditAnswer(ok=True, base_digest=result.digest, result=result)


async def save_bounces(
    st: AdminState,
    posted: Mapping[str, Any],
    actor: Actor,
    *,
    base_digest: str | None,
    save_anyway: bool,
    partial: bool = False,
) -> EditAnswer:
    """Save the bounce settings with what the form posted (only what it changed)."""
    ctx = edit_context(st)
    base = base_digest or st.backend.config_digest() or ""
    if partial:
        values = dict(posted)
    else:
        current = await bounce_current(ctx)
        values = changed_values(
            posted, current.values, BOUNCE_GROUPS, read_only=list(current.sources)
        )
    moved = _moved_secret(values, await bounce_current(ctx), "mailbox.host", "mailbox.password")
    if moved is not None:
        return moved
    try:
        result = await edits.save_bounces(
            ctx, values, actor, base_digest=base or None, save_anyway=save_anyway
        )
    except EditRefused as exc:
        return refusal_answer(exc, BOUNCE_GROUPS, base, current_digest=await _digest_now(ctx))
    return EditAnswer(ok=True, base_digest=result.digest, result=result)


async def folders_of_typed(
    st: AdminState, posted: Mapping[str, Any]
) -> tuple[list[str], str | None]:
    """Log in with the mailbox values typed in the form and list its folders: (names, error).

    The password is the one typed, else the one saved (the running
    configuration's) when the server and user name are the saved ones:
    "Retrieve folders" works before the first save, and after it without
    retyping, but never hands the saved password to another server. Nothing
    is written.
    """
    box: dict[str, Any] = {}
    for f in fields_of(BOUNCE_GROUPS):
        if f.name.startswith("mailbox.") and f.kind is not Kind.SECRET:
            value = posted.get(f.name)
            if value not in (None, ""):
                box[f.name.removeprefix("mailbox.")] = value
    typed = posted.get("mailbox.password")
    saved = st.backend.snapshot().config.bounces.mailbox
    try:
        settings = MailboxSettings(**box)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'mailbox'}: {e['msg']}" for e in exc.errors()
        )
        return [], f"the mailbox settings are not complete: {problems}"
    password: str | None = None
    if isinstance(typed, str) and typed:
        password = typed
    elif (
        saved is not None
        and saved.password is not None
        and (saved.host, saved.username) == (settings.host, settings.username)
    ):
        # The saved password goes only to the server and user it was saved for.
        try:
            password = (await asyncio.to_thread(saved.password.resolve)).get_secret_value()
        except (SecretError, LookupError) as exc:
            return [], f"the saved mailbox password cannot be read: {exc}"
    if password is None:
        return [], "type the mailbox password"

    def listing() -> list[str]:
        with Mailbox(settings, password=password) as mb:
            return mb.folders()

    try:
        return await asyncio.to_thread(listing), None
    except MailboxError as exc:
        return [], str(exc)
