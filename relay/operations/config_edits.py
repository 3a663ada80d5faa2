"""Config edits: add, edit, enable, disable and remove providers, save the bounce settings.

The admin's forms, its JSON API and ``sluice providers add|edit|...`` all
edit the operator's YAML file through these functions, in the same steps:

1. read the file (``relay.config_edit.ConfigDocument``) and refuse if it
   is not the one the form was loaded from (``base_digest``), or not the one
   the running daemon loaded (a hand edit not yet reloaded): the refusal
   carries the difference, so nobody's work is overwritten unseen;
2. change only the keys the form changed; a typed secret goes to a file of
   its own in the secrets directory and the YAML gets ``password_file:``
   (a secret from the environment or a systemd credential is refused: it is
   not the file's to change);
3. validate the new text with ``sluice check``'s rules (``relay.config.loads``),
   each issue mapped to the form field it is about, in words;
4. unless ``save_anyway``, try the connection exactly as Test connection does
   (``EditContext.check_provider``; the bounce mailbox: log in and find the
   folder) and refuse with the server's answer on the field at fault;
5. write the secret files, then the YAML (``write_atomic``), then reload the
   daemon as ``sluice reload`` does; a refused reload puts the old bytes
   (and the old secret files) back and refuses with its reason;
6. write the audit log: who, when, the keys changed, never a secret's value.

Decisions where the issue is silent: an edit tries the connection only when
a connection field changed (host, port, encryption, sign-in, TLS), so that
changing a daily limit never needs the provider to answer; a provider with a
device sign-in (Microsoft 365) and no refresh token yet is saved without the
check and ``EditResult.needs_sign_in`` says to press Connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from relay.config import SECRET_NAMES, Config, MailboxSettings, ProviderSettings, loads
from relay.config_edit import (
    ConfigDocument,
    EditRefused,
    FieldError,
    Loc,
    field_name,
    secret_file_name,
    unified_diff,
    write_atomic,
    write_secret,
)
from relay.errors import ConfigError
from relay.model import Action
from relay.operations.actor import Actor
from relay.secrets import SecretSource
from relay.store.spool import Spool
from relay.tls import settings_context

__all__ = [
    "CONNECTION_FIELDS",
    "SECRET_FIELDS",
    "EditContext",
    "EditRefused",
    "EditResult",
    "FieldError",
    "add_provider",
    "answer_from_steps",
    "default_secrets_dir",
    "edit_provider",
    "field_of_step",
    "removal_impact",
    "remove_provider",
    "save_bounces",
    "secrets_dir_of",
    "set_provider_enabled",
]

#: the form fields of a provider that hold a secret (typed: written to a file of its own)
SECRET_FIELDS = ("password", "oauth2.client_secret", "oauth2.refresh_token")
#: the bounce settings' secret fields
BOUNCE_SECRET_FIELDS = (
    "mailbox.password",
    "mailbox.oauth2.client_secret",
    "mailbox.oauth2.refresh_token",
)
#: a change to any of these makes Save try the connection first
CONNECTION_FIELDS = frozenset(
    {
        "host",
        "port",
        "encryption",
        "username",
        "password",
        "auth_mechanism",
        "tls_verify",
        "ca_file",
        "allow_insecure_auth",
        "enabled",
        "oauth2.token_url",
        "oauth2.client_id",
        "oauth2.client_secret",
        "oauth2.refresh_token",
        "oauth2.scope",
    }
)
_MAILBOX_CONNECTION = frozenset(
    {"host", "port", "encryption", "username", "password", "folder", "tls_verify", "ca_file"}
)


@dataclass(frozen=True, slots=True)
class EditContext:
    """What an edit needs from the front-end that asks for it (the daemon, or the CLI)."""

    config_path: Path
    #: for the audit log
    spool: Spool
    #: where typed secrets are written (``admin.secrets_dir``)
    secrets_dir: Path
    #: digest of the file the running daemon loaded (None: no daemon runs)
    loaded_digest: str | None
    #: the connection test, as Test connection runs it: the server's answer on failure
    #: ("AUTH: 535 5.7.8 ..."), None when it passed
    check_provider: Callable[[ProviderSettings], Awaitable[str | None]]
    #: log in to the bounce mailbox and find its folder: the answer on failure, else None
    check_mailbox: Callable[[MailboxSettings], Awaitable[str | None]]
    #: reload the daemon: its error text, or None; None here: no daemon runs
    reload: Callable[[], Awaitable[str | None]] | None = None
    #: the text the daemon loaded (for the difference when the file changed since)
    loaded_text: str | None = None
    #: the environment ``${VAR}``s are read from when validating
    env: Mapping[str, str] | None = None
    #: an unset ``${VAR}`` is an error (the daemon: its environment is the one that
    #: counts); False for a shell, which need not have the service's environment
    #: (``sluice reload``'s pre-check reads the file the same way)
    strict_env: bool = True


@dataclass(frozen=True, slots=True)
class EditResult:
    """A saved edit: the file's new digest and what changed."""

    #: sha256 of the file as written (the next edit's ``base_digest``)
    digest: str
    #: the keys changed, as form fields ("port", "password") or section keys
    changed: list[str]
    #: the daemon took the new file (False: no daemon runs; the file is saved)
    reloaded: bool
    warnings: list[str] = field(default_factory=list)
    #: the connection test's answer when the operator saved anyway
    connection_error: str | None = None
    #: an oauth2 provider with a device sign-in: press Connect (``sluice providers connect``)
    needs_sign_in: bool = False
    #: the provider id (None for the bounce settings)
    provider: str | None = None


def default_secrets_dir(spool_path: Path) -> Path:
    """``admin.secrets_dir``'s default: ``secrets`` beside the spool (the state directory)."""
    return spool_path.parent / "secrets"


def secrets_dir_of(cfg: Config, config_path: Path) -> Path:
    """``admin.secrets_dir`` (relative: to the config file's directory), or its default."""
    given = cfg.admin.secrets_dir
    if given is None:
        return default_secrets_dir(cfg.spool.path).absolute()
    return given if given.is_absolute() else config_path.resolve().parent / given


# ------------------------------------------------------------------ answers


_STEP_FIELD = {
    "auth": "password",
    "configuration": "password",
    "starttls": "encryption",
    "tls": "encryption",
    "connect": "host",
    "ehlo": "host",
    "helo": "host",
    "greeting": "host",
    "login": "password",
    "folder": "folder",
    "token": "oauth2.client_secret",
}


def field_of_step(answer: str, *, oauth2: bool = False) -> str:
    """The form field a failed check's answer is about: "AUTH: 535 ..." -> "password"."""
    step = answer.split(":", 1)[0].strip().lower()
    name = _STEP_FIELD.get(step, "host")
    if oauth2 and name == "password":
        return "oauth2.client_id"
    return name


def answer_from_steps(steps: Iterable[tuple[str, bool, str]]) -> str | None:
    """A check's answer from its steps (name, ok, detail): "STEP: detail" of the first failure."""
    for name, ok, detail in steps:
        if not ok:
            return f"{name}: {detail}"
    return None


# ------------------------------------------------------------------ helpers


_ISSUE = re.compile(r"^(?P<source>.*?):(?P<line>\d+): (?P<key>[^:]*): (?P<msg>.*)$", re.DOTALL)


def _issue_loc(key: str) -> Loc:
    out: list[str | int] = []
    for part in key.split("."):
        out.append(int(part) if part.isdigit() else part)
    return tuple(out)


def _field_errors(exc: ConfigError, prefix: Loc, what: str) -> list[FieldError]:
    """``sluice check``'s issues as form fields: those inside ``prefix`` by their key there."""
    errors: list[FieldError] = []
    for issue in exc.issues:
        m = _ISSUE.match(issue)
        if m is None:
            errors.append(FieldError("", issue))
            continue
        loc = _issue_loc(m.group("key"))
        msg = m.group("msg")
        if loc[: len(prefix)] == prefix and len(loc) > len(prefix):
            inner = loc[len(prefix) :]
            name = field_name(inner)
            for base in ("password", "client_secret", "refresh_token"):
                for suffix in ("_env", "_file"):
                    name = name.replace(base + suffix, base)
            if msg == "unknown key":
                msg = f"{name} is not a setting {what} has"
            elif msg == "required key is missing":
                msg = "is required"
            errors.append(FieldError(name, msg))
        elif loc == prefix:
            errors.append(FieldError("", msg))
        else:
            errors.append(FieldError("", f"elsewhere in the file ({m.group('key')}): {msg}"))
    return errors


def _loc_of(fieldname: str) -> Loc:
    return tuple(fieldname.split("."))


def _check_current(ctx: EditContext, doc: ConfigDocument, base_digest: str | None) -> None:
    """Refuse when the file is not the one the form was loaded from, or not the daemon's."""
    expected = base_digest if base_digest is not None else doc.digest
    if doc.digest != expected:
        diff = None
        if ctx.loaded_text is not None and ctx.loaded_digest == expected:
            diff = unified_diff(ctx.loaded_text, doc.text, path=str(ctx.config_path))
        raise EditRefused(
            f"{ctx.config_path} changed on disk since this form was loaded; "
            "look at the difference, reload, and make the change again",
            diff=diff,
        )
    if ctx.loaded_digest is not None and doc.digest != ctx.loaded_digest:
        diff = None
        if ctx.loaded_text is not None:
            diff = unified_diff(ctx.loaded_text, doc.text, path=str(ctx.config_path))
        raise EditRefused(
            f"{ctx.config_path} was changed by hand and not reloaded; saving would also "
            "apply that change unseen: run `sluice reload` (or fix the file) first",
            diff=diff,
        )


@dataclass
class _Secrets:
    """Typed secrets waiting to be written, and how to undo the writes."""

    ctx: EditContext
    #: form field -> (file name, value)
    pending: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: file -> its previous bytes (None: it did not exist)
    previous: dict[Path, bytes | None] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.ctx.secrets_dir.absolute() / name

    def write(self) -> None:
        """Write every pending secret, remembering what each file held (for ``undo``)."""
        for name, value in self.pending.values():
            path = self.path(name)
            try:
                self.previous[path] = path.read_bytes()
            except FileNotFoundError:
                self.previous[path] = None
            write_secret(self.ctx.secrets_dir, name, value)

    def undo(self) -> None:
        for path, old in self.previous.items():
            with contextlib.suppress(OSError):
                if old is None:
                    path.unlink()
                else:
                    write_secret(path.parent, path.name, old.decode("utf-8"))


def _set_secret(
    doc: ConfigDocument,
    origin: ConfigDocument,
    container: Loc,
    fieldname: str,
    value: str,
    secrets: _Secrets,
    file_name: str,
) -> None:
    """Point ``fieldname`` (``password``, ``oauth2.client_secret``) at a secrets file."""
    loc = (*container, *_loc_of(fieldname))
    base = loc[-1]
    assert isinstance(base, str)
    source = origin.provenance(loc, secrets_dir=secrets.ctx.secrets_dir.absolute())
    if source is not None and (origin.has((*loc[:-1], f"{base}_env")) or "systemd" in source):
        raise EditRefused(
            f"{fieldname} comes {source}; change it there",
            [FieldError(fieldname, f"comes {source}; change it there, not here")],
        )
    secrets.pending[fieldname] = (file_name, value)
    for suffix in ("", "_env"):
        doc.delete((*loc[:-1], f"{base}{suffix}"))
    doc.set((*loc[:-1], f"{base}_file"), str(secrets.path(file_name)))


def _apply_values(
    doc: ConfigDocument,
    container: Loc,
    values: Mapping[str, Any],
    secret_fields: Iterable[str],
    secrets: _Secrets,
    name_parts: tuple[str, ...],
) -> list[str]:
    """Set each form field under ``container``; secrets to files; "" or None removes a key."""
    changed: list[str] = []
    secret_set = set(secret_fields)
    errors: list[FieldError] = []
    # Where a secret comes from is read from the file as it was: a new provider's
    # username must not make its typed password "the systemd credential".
    origin: ConfigDocument | None = None
    for fieldname, value in values.items():
        loc = (*container, *_loc_of(fieldname))
        if fieldname in secret_set:
            if value is None or value == "":
                continue  # the masked field left as it was: unchanged
            origin = origin or ConfigDocument(doc.raw, path=doc.path)
            _set_secret(
                doc,
                origin,
                container,
                fieldname,
                str(value),
                secrets,
                secret_file_name(*name_parts, fieldname.replace(".", "-")),
            )
            changed.append(fieldname)
            continue
        if value is not None and value != "" and doc.has(loc) and _same(doc.get(loc), value):
            continue  # sent as it is (a form may send every field): nothing to change
        if value is not None and value != "" and _secret_source_key(loc[-1]):
            # Naming a file or variable the daemon can read would let anyone on the page
            # have the connection test send another secret to a server of their choosing.
            base = str(loc[-1]).rpartition("_")[0]
            errors.append(
                FieldError(
                    fieldname,
                    f"where a secret is read from is set in the file by hand; type the "
                    f"secret in the {base} field instead (it is kept in the secrets directory)",
                )
            )
            continue
        reason = doc.provenance(loc)
        if reason is not None and "environment variable" in reason and doc.has(loc):
            errors.append(FieldError(fieldname, f"comes {reason}; change it there, not here"))
            continue
        try:
            if value is None or value == "":
                if doc.delete(loc):
                    changed.append(fieldname)
            else:
                before = doc.get(loc)
                doc.set(loc, value)
                if before != doc.get(loc) or before is None:
                    changed.append(fieldname)
        except EditRefused as exc:
            errors.append(FieldError(fieldname, exc.message))
        except KeyError:
            errors.append(FieldError(fieldname, "cannot be set here"))
    if errors:
        raise EditRefused("the form has errors", errors)
    return changed


def _secret_source_key(key: object) -> bool:
    """``password_env``, ``client_secret_file``...: a key naming where a secret is read from."""
    base, _, suffix = str(key).rpartition("_")
    return suffix in ("env", "file") and base in SECRET_NAMES


def _same(current: object, value: object) -> bool:
    """Whether a form's value is what the file has (a form sends "587" for 587)."""
    if isinstance(current, bool) or isinstance(value, bool):
        return current is value or str(current).lower() == str(value).lower()
    return str(current) == str(value)


def _validate(ctx: EditContext, text: str, prefix: Loc, what: str) -> Config:
    """``sluice check``'s rules on the new text (secrets are the daemon's to resolve)."""
    try:
        return loads(
            text,
            source=str(ctx.config_path),
            env=ctx.env,
            secrets=False,
            unset="error" if ctx.strict_env else "empty",
        )
    except ConfigError as exc:
        errors = _field_errors(exc, prefix, what)
        raise EditRefused(f"the {what} is not valid", errors) from None


def _ca_file(settings: ProviderSettings | MailboxSettings, field: str) -> None:
    """Refuse a ``ca_file`` that does not load, as ``sluice check`` does (OpenSSL reads it)."""
    if settings.ca_file is None:
        return
    try:
        settings_context(settings)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        message = f"cannot load {settings.ca_file}: {reason}"
        raise EditRefused(message, [FieldError(field, message)]) from None


def _with_typed(
    settings: ProviderSettings | MailboxSettings, secrets: _Secrets, prefix: str = ""
) -> Any:
    """The settings with the secrets typed in the form inline (the files are not written yet)."""
    update: dict[str, Any] = {}
    oauth_update: dict[str, Any] = {}
    for fieldname, (_, value) in secrets.pending.items():
        name = fieldname.removeprefix(prefix)
        source = SecretSource(name=name.rsplit(".", 1)[-1], inline=SecretStr(value))
        if name == "password":
            update["password"] = source
        elif name.startswith("oauth2."):
            oauth_update[name.removeprefix("oauth2.")] = source
    oauth2 = settings.oauth2
    if oauth_update and oauth2 is not None:
        update["oauth2"] = oauth2.model_copy(update=oauth_update)
    return settings.model_copy(update=update) if update else settings


async def _commit(
    ctx: EditContext,
    doc: ConfigDocument,
    text: str,
    secrets: _Secrets,
    actor: Actor,
    target: str,
    detail: str,
) -> tuple[str, bool]:
    """Write secrets and file, reload (undo both if refused), audit. (digest, reloaded)."""
    try:
        await asyncio.to_thread(secrets.write)
        digest = await asyncio.to_thread(
            write_atomic, ctx.config_path, text, expect_digest=doc.digest, base_text=doc.text
        )
    except OSError as exc:
        await asyncio.to_thread(secrets.undo)
        where = exc.filename or ctx.config_path
        raise EditRefused(
            f"cannot write {where}: {exc.strerror or exc}; the user Sluice runs as needs "
            "write access to the config file's directory and the secrets directory "
            '(docs/operating.md, "Editing providers without opening the file")'
        ) from None
    except BaseException:
        await asyncio.to_thread(secrets.undo)
        raise
    reloaded = False
    if ctx.reload is not None:
        error = await ctx.reload()
        if error is not None:
            old = doc.raw.decode("utf-8")
            await asyncio.to_thread(
                write_atomic, ctx.config_path, old, expect_digest=digest, base_text=text
            )
            await asyncio.to_thread(secrets.undo)
            # The daemon kept its running config, which is the old file's: nothing to redo.
            raise EditRefused(
                f"the daemon refused the new file, so it was put back as it was: {error}",
                [FieldError("", f"the daemon refused it: {error}")],
            )
        reloaded = True
    await ctx.spool.record_audit(actor.audit, Action.EDIT_CONFIG, target, detail)
    return digest, reloaded


def _read(ctx: EditContext, base_digest: str | None) -> ConfigDocument:
    doc = ConfigDocument.read(ctx.config_path)
    _check_current(ctx, doc, base_digest)
    return doc


def _provider_index(doc: ConfigDocument, provider_id: str) -> int:
    index = doc.find_provider(provider_id)
    if index is None:
        raise EditRefused(f"no provider {provider_id!r} in {doc.path}")
    return index


async def _needs_sign_in(spool: Spool, p: ProviderSettings) -> bool:
    """An oauth2 provider with a device sign-in, no refresh token in the file, none in the spool."""
    o = p.oauth2
    if o is None or not o.device_authorization_url or o.refresh_token is not None:
        return False
    grant = await spool.oauth_grant(p.id)
    return grant is None or grant.state != "connected"


async def _check(
    ctx: EditContext, p: ProviderSettings, secrets: _Secrets, save_anyway: bool
) -> str | None:
    """The connection test's answer (None: passed); refuses unless ``save_anyway``."""
    answer = await ctx.check_provider(_with_typed(p, secrets))
    if answer is None or save_anyway:
        return answer
    where = field_of_step(answer, oauth2=p.oauth2 is not None)
    raise EditRefused(
        f"the connection test failed: {answer}",
        [FieldError(where, f"the server answered: {answer}")],
    )


def _describe(changed: Iterable[str]) -> str:
    keys = list(dict.fromkeys(changed))
    return "keys: " + (", ".join(keys) if keys else "none")


# --------------------------------------------------------------- operations


async def _save_provider(
    ctx: EditContext,
    doc: ConfigDocument,
    index: int,
    changed: list[str],
    secrets: _Secrets,
    actor: Actor,
    *,
    added: bool,
    save_anyway: bool,
) -> EditResult:
    """The second half of add and edit: validate, test the connection, write, reload, audit.

    A new provider is always tested (unless it waits for a device sign-in); an
    edited one only when it is enabled and a connection field changed (a new
    daily limit never needs the server to answer).
    """
    text = doc.render()
    cfg = _validate(ctx, text, ("providers", index), "provider")
    p = cfg.providers[index]
    _ca_file(p, "ca_file")
    answer = None
    sign_in = await _needs_sign_in(ctx.spool, p)
    if not sign_in and (added or (p.enabled and CONNECTION_FIELDS.intersection(changed))):
        answer = await _check(ctx, p, secrets, save_anyway)
    what = ("added; " if added else "edited; ") + _describe(changed)
    digest, reloaded = await _commit(ctx, doc, text, secrets, actor, f"provider {p.id}", what)
    return EditResult(
        digest, changed, reloaded, connection_error=answer, needs_sign_in=sign_in, provider=p.id
    )


async def add_provider(
    ctx: EditContext,
    values: Mapping[str, Any],
    actor: Actor,
    *,
    base_digest: str | None,
    save_anyway: bool = False,
) -> EditResult:
    """Add a provider (``values``: its form fields, ``id`` included) at the end of ``providers``.

    Raises:
        EditRefused: invalid fields, the connection test failed (unless
            ``save_anyway``), the file changed on disk, or the daemon refused.
    """
    provider_id = str(values.get("id") or "").strip()
    if not provider_id:
        raise EditRefused("a provider needs an id", [FieldError("id", "is required")])
    doc = await asyncio.to_thread(_read, ctx, base_digest)
    if doc.find_provider(provider_id) is not None:
        raise EditRefused(
            f"a provider {provider_id!r} exists already",
            [FieldError("id", f"{provider_id!r} is taken; choose another id")],
        )
    index = doc.append(("providers",), {"id": provider_id})
    secrets = _Secrets(ctx)
    rest = {k: v for k, v in values.items() if k != "id"}
    changed = [
        "id",
        *_apply_values(
            doc, ("providers", index), rest, SECRET_FIELDS, secrets, ("provider", provider_id)
        ),
    ]
    return await _save_provider(
        ctx, doc, index, changed, secrets, actor, added=True, save_anyway=save_anyway
    )


async def edit_provider(
    ctx: EditContext,
    provider_id: str,
    values: Mapping[str, Any],
    actor: Actor,
    *,
    base_digest: str | None,
    save_anyway: bool = False,
) -> EditResult:
    """Change the fields in ``values`` (only those the form changed) of one provider.

    A secret field left empty or absent is unchanged; any other field set to
    "" or None is removed from the file (its default applies).

    Raises:
        EditRefused: as ``add_provider``; also no such provider.
    """
    doc = await asyncio.to_thread(_read, ctx, base_digest)
    index = _provider_index(doc, provider_id)
    if "id" in values and str(values["id"]) != provider_id:
        raise EditRefused(
            "a provider's id cannot change (the spool's counters and the queue name it)",
            [FieldError("id", "cannot change; add a new provider and remove this one")],
        )
    values = {k: v for k, v in values.items() if k != "id"}
    secrets = _Secrets(ctx)
    changed = _apply_values(
        doc, ("providers", index), values, SECRET_FIELDS, secrets, ("provider", provider_id)
    )
    if not changed:
        return EditResult(doc.digest, [], False, provider=provider_id)
    if "oauth2.token_url" in changed and "oauth2.refresh_token" not in changed:
        await _refuse_moving_a_refresh_token(ctx, doc, index, provider_id)
    return await _save_provider(
        ctx, doc, index, changed, secrets, actor, added=False, save_anyway=save_anyway
    )


async def _refuse_moving_a_refresh_token(
    ctx: EditContext, doc: ConfigDocument, index: int, provider_id: str
) -> None:
    """A new token URL must not inherit the refresh token issued by the old one.

    Sluice posts the refresh token to ``token_url`` at every refresh, so a new
    URL with the old token kept would hand it to whoever answers there: the
    same reason a new host needs the password typed again.
    """
    before = ConfigDocument(doc.raw, path=doc.path)
    in_file = any(
        before.has(("providers", index, "oauth2", f"refresh_token{suffix}"))
        for suffix in ("", "_env", "_file")
    )
    grant = await ctx.spool.oauth_grant(provider_id)
    if in_file or (grant is not None and grant.state == "connected"):
        raise EditRefused(
            "a new token URL would be sent the refresh token of the old one",
            [
                FieldError(
                    "oauth2.token_url",
                    "the refresh token was issued by the old server and is sent to this URL at "
                    "every refresh; type a refresh token for the new one, or remove the provider "
                    "and add it again (then Connect)",
                )
            ],
        )


def _enabled_ids(cfg: Config) -> list[str]:
    return [p.id for p in cfg.providers if p.enabled]


async def set_provider_enabled(
    ctx: EditContext,
    provider_id: str,
    enabled: bool,
    actor: Actor,
    *,
    base_digest: str | None,
) -> EditResult:
    """Enable or disable a provider; the last enabled one cannot be disabled (with the reason).

    Enabling writes ``enabled: true`` only when the file said false (the default is true).
    """
    doc = await asyncio.to_thread(_read, ctx, base_digest)
    index = _provider_index(doc, provider_id)
    current = _validate(ctx, doc.text, ("providers", index), "provider")
    if not enabled and _enabled_ids(current) == [provider_id]:
        reason = (
            f"{provider_id} is the only enabled provider: mail would have nowhere to go; "
            "enable another one first"
        )
        raise EditRefused(reason, [FieldError("enabled", reason)])
    loc = ("providers", index, "enabled")
    if not enabled or doc.get(loc) is not None:  # absent means enabled: nothing to write
        try:
            doc.set(loc, enabled)
        except EditRefused as exc:
            raise EditRefused(exc.message, [FieldError("enabled", exc.message)]) from None
    if not doc.changed:
        return EditResult(doc.digest, [], False, provider=provider_id)
    text = doc.render()
    _validate(ctx, text, ("providers", index), "provider")
    word = "enabled" if enabled else "disabled"
    digest, reloaded = await _commit(
        ctx, doc, text, _Secrets(ctx), actor, f"provider {provider_id}", f"{word}; keys: enabled"
    )
    return EditResult(digest, ["enabled"], reloaded, provider=provider_id)


async def remove_provider(
    ctx: EditContext,
    provider_id: str,
    actor: Actor,
    *,
    base_digest: str | None,
) -> EditResult:
    """Remove a provider from the file (its secrets files stay: they may be reused).

    Mail queued through it goes to the other providers at its next attempt
    (routing reads the config at every attempt). Refused for the last
    enabled provider, and for one a route names (the route would point nowhere).
    """
    doc = await asyncio.to_thread(_read, ctx, base_digest)
    index = _provider_index(doc, provider_id)
    current = _validate(ctx, doc.text, ("providers", index), "provider")
    if _enabled_ids(current) == [provider_id]:
        reason = (
            f"{provider_id} is the only enabled provider: mail would have nowhere to go; "
            "add or enable another one first"
        )
        raise EditRefused(reason, [FieldError("", reason)])
    routes = [i for i, r in enumerate(current.routes) if provider_id in r.providers]
    if routes:
        reason = (
            f"routes {', '.join(str(i + 1) for i in routes)} name {provider_id}; "
            "change those routes (in the file) first"
        )
        raise EditRefused(reason, [FieldError("", reason)])
    doc.delete(("providers", index))
    text = doc.render()
    _validate(ctx, text, ("providers",), "provider")
    digest, reloaded = await _commit(
        ctx, doc, text, _Secrets(ctx), actor, f"provider {provider_id}", "removed"
    )
    return EditResult(digest, ["removed"], reloaded, provider=provider_id)


async def removal_impact(spool: Spool, provider_id: str) -> int:
    """Recipients still waiting whose last attempt went through ``provider_id``."""
    return await spool.waiting_via(provider_id)


async def save_bounces(
    ctx: EditContext,
    values: Mapping[str, Any],
    actor: Actor,
    *,
    base_digest: str | None,
    save_anyway: bool = False,
) -> EditResult:
    """Save the bounce settings (``address``, ``threshold``, ``mailbox.host`` ... as fields).

    With a mailbox, Save logs in and looks for the folder first (unless
    ``save_anyway``): a wrong password or a missing folder is refused with
    the server's answer.
    """
    doc = await asyncio.to_thread(_read, ctx, base_digest)
    secrets = _Secrets(ctx)
    changed = _apply_values(doc, ("bounces",), values, BOUNCE_SECRET_FIELDS, secrets, ("bounces",))
    if not changed:
        return EditResult(doc.digest, [], False)
    text = doc.render()
    cfg = _validate(ctx, text, ("bounces",), "bounce settings")
    box = cfg.bounces.mailbox
    if box is not None:
        _ca_file(box, "mailbox.ca_file")
    answer = None
    touched = {c.removeprefix("mailbox.") for c in changed if c.startswith("mailbox.")}
    if box is not None and _MAILBOX_CONNECTION.intersection(touched):
        answer = await ctx.check_mailbox(_with_typed(box, secrets, "mailbox."))
        if answer is not None and not save_anyway:
            where = "mailbox." + field_of_step(answer)
            raise EditRefused(
                f"the mailbox check failed: {answer}",
                [FieldError(where, f"the server answered: {answer}")],
            )
    digest, reloaded = await _commit(
        ctx, doc, text, secrets, actor, "bounces", "edited; " + _describe(changed)
    )
    return EditResult(digest, changed, reloaded, connection_error=answer)
