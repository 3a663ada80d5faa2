"""Config edits on a real file and a real spool: what is written, refused, put back, audited.

The connection test is the front-end's (the daemon's or the CLI's
``test_provider``); here it is a function that answers as a server would, so
each step's refusal can be shown alone. The real thing, against a private
Postfix with Dovecot SASL, is in tests/cli/test_providers_edit.py.
"""

from __future__ import annotations

import dataclasses
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.config import MailboxSettings, ProviderSettings, load
from relay.config_edit import ConfigDocument, EditRefused, digest_of
from relay.model import Action
from relay.operations import config_edits as ops
from relay.operations.actor import Actor, ActorKind
from relay.operations.providers import save_sign_in
from relay.store.spool import Spool

BOB = Actor(ActorKind.ADMIN, "bob")
PASSWORD = "Zq-distinctive-Pw-8812"

CONFIG = """\
# Sluice on the test host (a comment the edits must keep)
spool:
  path: spool.sqlite3   # beside this file
delivery:
  poll_interval: 0.05

providers:
  # the one we had
  - id: main
    host: 127.0.0.1
    port: 2525
    encryption: none
"""


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    async with await Spool.open(tmp_path / "spool.sqlite3") as s:
        yield s


class Checks:
    """Answers of the connection test (None: passed) and what it was asked."""

    def __init__(self) -> None:
        self.answer: str | None = None
        self.seen: list[ProviderSettings] = []
        self.reload_error: str | None = None
        self.reloads = 0

    async def provider(self, p: ProviderSettings) -> str | None:
        self.seen.append(p)
        return self.answer

    async def mailbox(self, box: MailboxSettings) -> str | None:
        return self.answer

    async def reload(self) -> str | None:
        self.reloads += 1
        return self.reload_error


def _ctx(tmp_path: Path, spool: Spool, checks: Checks, *, daemon: bool = True) -> ops.EditContext:
    path = tmp_path / "sluice.yaml"
    if not path.exists():
        path.write_text(CONFIG)
    raw = path.read_bytes()
    return ops.EditContext(
        config_path=path,
        spool=spool,
        secrets_dir=tmp_path / "secrets",
        loaded_digest=digest_of(raw) if daemon else None,
        loaded_text=raw.decode() if daemon else None,
        check_provider=checks.provider,
        check_mailbox=checks.mailbox,
        reload=checks.reload if daemon else None,
    )


SG = {
    "id": "sg",
    "host": "127.0.0.1",
    "port": 2526,
    "encryption": "none",
    "username": "apikey",
    "password": PASSWORD,
    "allow_insecure_auth": True,
    "daily_limit": 100,
}


async def test_add_writes_the_block_and_a_0600_secret_never_the_value(
    tmp_path: Path, spool: Spool
) -> None:
    checks = Checks()
    ctx = _ctx(tmp_path, spool, checks)
    before = ctx.config_path.read_text()
    result = await ops.add_provider(ctx, SG, BOB, base_digest=ctx.loaded_digest)
    after = ctx.config_path.read_text()
    assert after.startswith(before)  # only the new block, at the end
    assert PASSWORD not in after
    secret = tmp_path / "secrets" / "provider-sg-password"
    assert f"password_file: {secret}" in after
    assert secret.read_text() == PASSWORD
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    # The connection test saw the typed password (the file was not written yet).
    tested = checks.seen[0]
    assert tested.password is not None
    assert tested.password.resolve().get_secret_value() == PASSWORD
    assert result.reloaded and checks.reloads == 1
    assert result.digest == digest_of(ctx.config_path.read_bytes())
    assert load(ctx.config_path).provider("sg").daily_limit == 100
    entry = (await spool.audit_log())[0]
    assert (entry.actor, entry.action, entry.target) == ("bob", Action.EDIT_CONFIG, "provider sg")
    assert "password" in entry.detail and PASSWORD not in entry.detail


async def test_a_failed_connection_test_refuses_on_the_field_unless_saved_anyway(
    tmp_path: Path, spool: Spool
) -> None:
    checks = Checks()
    checks.answer = "AUTH: 535 5.7.8 Error: authentication failed"
    ctx = _ctx(tmp_path, spool, checks)
    with pytest.raises(EditRefused) as info:
        await ops.add_provider(ctx, SG, BOB, base_digest=ctx.loaded_digest)
    assert [e.field for e in info.value.errors] == ["password"]
    assert "535 5.7.8" in info.value.errors[0].message
    assert ctx.config_path.read_text() == CONFIG
    assert not (tmp_path / "secrets" / "provider-sg-password").exists()
    result = await ops.add_provider(ctx, SG, BOB, base_digest=ctx.loaded_digest, save_anyway=True)
    assert result.connection_error == checks.answer
    assert "id: sg" in ctx.config_path.read_text()


async def test_invalid_fields_are_refused_in_words_by_field(tmp_path: Path, spool: Spool) -> None:
    ctx = _ctx(tmp_path, spool, Checks())
    with pytest.raises(EditRefused) as info:
        await ops.add_provider(
            ctx,
            {**SG, "port": 70000, "encryption": "ssl", "limit_unit": "bytes"},
            BOB,
            base_digest=ctx.loaded_digest,
        )
    fields = {e.field: e.message for e in info.value.errors}
    assert set(fields) == {"port", "encryption", "limit_unit"}
    assert all("providers." not in m for m in fields.values())
    assert ctx.config_path.read_text() == CONFIG


async def test_edit_a_limit_needs_no_connection_and_keeps_the_rest(
    tmp_path: Path, spool: Spool
) -> None:
    checks = Checks()
    checks.answer = "connect: refused"  # the limit change must not ask
    ctx = _ctx(tmp_path, spool, checks)
    result = await ops.edit_provider(
        ctx, "main", {"daily_limit": 250, "password": ""}, BOB, base_digest=ctx.loaded_digest
    )
    assert result.changed == ["daily_limit"]
    assert checks.seen == []
    assert ctx.config_path.read_text() == CONFIG + "    daily_limit: 250\n"


async def test_the_last_enabled_provider_cannot_be_disabled_or_removed(
    tmp_path: Path, spool: Spool
) -> None:
    ctx = _ctx(tmp_path, spool, Checks())
    for attempt in (
        ops.set_provider_enabled(ctx, "main", False, BOB, base_digest=ctx.loaded_digest),
        ops.remove_provider(ctx, "main", BOB, base_digest=ctx.loaded_digest),
    ):
        with pytest.raises(EditRefused) as info:
            await attempt
        assert "only enabled provider" in str(info.value)
    assert ctx.config_path.read_text() == CONFIG


async def test_a_hand_edit_not_reloaded_is_refused_with_the_difference(
    tmp_path: Path, spool: Spool
) -> None:
    ctx = _ctx(tmp_path, spool, Checks())
    ctx.config_path.write_text(CONFIG.replace("port: 2525", "port: 2600"))
    with pytest.raises(EditRefused) as info:
        await ops.edit_provider(ctx, "main", {"daily_limit": 5}, BOB, base_digest=ctx.loaded_digest)
    assert info.value.diff is not None
    assert "-    port: 2525" in info.value.diff and "+    port: 2600" in info.value.diff
    assert "daily_limit" not in ctx.config_path.read_text()


async def test_a_refused_reload_puts_the_old_file_and_secrets_back(
    tmp_path: Path, spool: Spool
) -> None:
    checks = Checks()
    ctx = _ctx(tmp_path, spool, checks)
    checks.reload_error = "smtp.listen: cannot listen on 127.0.0.1:25"
    with pytest.raises(EditRefused) as info:
        await ops.add_provider(ctx, SG, BOB, base_digest=ctx.loaded_digest)
    assert "cannot listen" in str(info.value)
    assert ctx.config_path.read_text() == CONFIG
    assert not (tmp_path / "secrets" / "provider-sg-password").exists()
    assert await spool.audit_log() == []


async def test_without_a_daemon_the_file_is_saved_and_not_reloaded(
    tmp_path: Path, spool: Spool
) -> None:
    checks = Checks()
    ctx = _ctx(tmp_path, spool, checks, daemon=False)
    doc = ConfigDocument.read(ctx.config_path)
    result = await ops.set_provider_enabled(ctx, "main", True, BOB, base_digest=doc.digest)
    assert result.changed == [] and not result.reloaded
    await ops.add_provider(ctx, {**SG, "enabled": False}, BOB, base_digest=doc.digest)
    assert checks.reloads == 0
    added = ConfigDocument.read(ctx.config_path)
    result = await ops.set_provider_enabled(ctx, "sg", True, BOB, base_digest=added.digest)
    assert result.changed == ["enabled"] and not result.reloaded
    assert "enabled: true" in ctx.config_path.read_text()


async def test_a_secret_from_the_environment_or_an_anchor_is_not_the_forms(
    tmp_path: Path, spool: Spool
) -> None:
    (tmp_path / "sluice.yaml").write_text(
        CONFIG
        + "  - id: env\n"
        + "    host: &shared 127.0.0.1\n"
        + "    port: 2526\n"
        + "    encryption: none\n"
        + "    username: u\n"
        + "    password_env: SLUICE_ENV_PASSWORD\n"
    )
    ctx = _ctx(tmp_path, spool, Checks())
    with pytest.raises(EditRefused) as info:
        await ops.edit_provider(
            ctx, "env", {"password": PASSWORD}, BOB, base_digest=ctx.loaded_digest
        )
    assert [(e.field, e.message) for e in info.value.errors] == [
        (
            "password",
            "comes from the environment variable SLUICE_ENV_PASSWORD; change it there, not here",
        )
    ]
    with pytest.raises(EditRefused) as info:
        await ops.edit_provider(
            ctx, "env", {"host": "127.0.0.2"}, BOB, base_digest=ctx.loaded_digest
        )
    assert info.value.errors[0].field == "host"
    assert "anchor &shared" in info.value.errors[0].message
    assert PASSWORD not in ctx.config_path.read_text()


async def test_remove_refuses_a_provider_a_route_names_then_removes(
    tmp_path: Path, spool: Spool
) -> None:
    (tmp_path / "sluice.yaml").write_text(
        CONFIG
        + "  - id: two\n    host: 127.0.0.1\n    port: 2526\n    encryption: none\n"
        + "routes:\n  - recipient_domain: [example.net]\n    providers: [two]\n"
    )
    ctx = _ctx(tmp_path, spool, Checks())
    with pytest.raises(EditRefused) as info:
        await ops.remove_provider(ctx, "two", BOB, base_digest=ctx.loaded_digest)
    assert "routes 1 name two" in str(info.value)
    assert await ops.removal_impact(spool, "two") == 0
    with pytest.raises(EditRefused):
        await ops.remove_provider(ctx, "nope", BOB, base_digest=ctx.loaded_digest)
    result = await ops.remove_provider(ctx, "main", BOB, base_digest=ctx.loaded_digest)
    assert result.reloaded
    assert "id: main" not in ctx.config_path.read_text()
    assert ctx.config_path.read_text().startswith("# Sluice on the test host")


async def test_a_ca_file_that_does_not_load_is_refused_on_its_field(
    tmp_path: Path, spool: Spool
) -> None:
    checks = Checks()
    ctx = _ctx(tmp_path, spool, checks)
    bad = tmp_path / "not-a-ca.pem"
    bad.write_text("not a certificate\n")
    for ca in (tmp_path / "missing.pem", bad):
        with pytest.raises(EditRefused) as info:
            await ops.add_provider(
                ctx,
                {**SG, "encryption": "starttls", "ca_file": str(ca)},
                BOB,
                base_digest=ctx.loaded_digest,
            )
        assert [e.field for e in info.value.errors] == ["ca_file"]
        assert f"cannot load {ca}" in info.value.errors[0].message
    assert checks.seen == [] and ctx.config_path.read_text() == CONFIG


async def test_a_file_that_cannot_be_written_is_refused_in_words(
    tmp_path: Path, spool: Spool
) -> None:
    ctx = _ctx(tmp_path, spool, Checks())
    (tmp_path / "secrets").write_text("a file where the directory should be")
    with pytest.raises(EditRefused) as info:
        await ops.add_provider(ctx, SG, BOB, base_digest=ctx.loaded_digest)
    assert "cannot write" in str(info.value) and "write access" in str(info.value)
    assert ctx.config_path.read_text() == CONFIG


async def test_fields_sent_unchanged_change_nothing_even_from_the_environment(
    tmp_path: Path, spool: Spool
) -> None:
    (tmp_path / "sluice.yaml").write_text(CONFIG.replace("host: 127.0.0.1", "host: ${RELAY_HOST}"))
    ctx = _ctx(tmp_path, spool, Checks())
    ctx = dataclasses.replace(ctx, env={"RELAY_HOST": "127.0.0.1"})
    result = await ops.edit_provider(
        ctx,
        "main",
        {"host": "${RELAY_HOST}", "port": "2525", "encryption": "none"},
        BOB,
        base_digest=ctx.loaded_digest,
    )
    assert result.changed == [] and not result.reloaded
    with pytest.raises(EditRefused) as info:
        await ops.edit_provider(
            ctx, "main", {"host": "10.0.0.1"}, BOB, base_digest=ctx.loaded_digest
        )
    assert info.value.errors[0].field == "host"
    assert "environment variable RELAY_HOST" in info.value.errors[0].message


async def test_a_device_sign_in_provider_is_saved_unchecked_and_asks_for_connect(
    tmp_path: Path, spool: Spool
) -> None:
    checks = Checks()
    checks.answer = "AUTH: 535 no token yet"
    ctx = _ctx(tmp_path, spool, checks)
    m365 = {
        "id": "m365",
        "host": "127.0.0.1",
        "port": 2527,
        "encryption": "none",
        "allow_insecure_auth": True,
        "username": "app@example.com",
        "auth_mechanism": "xoauth2",
        "oauth2.token_url": "https://login.example.com/token",
        "oauth2.client_id": "client-1",
        "oauth2.device_authorization_url": "https://login.example.com/devicecode",
    }
    result = await ops.add_provider(ctx, m365, BOB, base_digest=ctx.loaded_digest)
    assert result.needs_sign_in and checks.seen == []
    await spool.save_oauth_grant("m365", "refresh-token-from-the-sign-in")
    ctx = _ctx(tmp_path, spool, checks)  # the daemon reloaded: it runs the new file
    checks.answer = None
    result = await ops.edit_provider(ctx, "m365", {"port": 2528}, BOB, base_digest=result.digest)
    assert not result.needs_sign_in  # signed in: the edit is checked like any other
    assert [p.id for p in checks.seen] == ["m365"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("password_file", "OTHER_FILE"),
        ("password_env", "SLUICE_OTHER_PASSWORD"),
        ("oauth2.client_secret_file", "OTHER_FILE"),
        ("oauth2.refresh_token_env", "SLUICE_OTHER_PASSWORD"),
    ],
)
async def test_a_form_cannot_point_a_secret_at_a_file_or_variable_the_daemon_can_read(
    tmp_path: Path, spool: Spool, monkeypatch: pytest.MonkeyPatch, field: str, value: str
) -> None:
    """Only a typed secret is written (to the secrets directory); where a secret is read
    from is set by hand in the file. Otherwise anyone on the page could name another
    provider's password file (or the daemon's environment) and have the connection test
    send it to a server of their choosing."""
    other = tmp_path / "other-provider-password"
    other.write_text("Other-Provider-Secret-5150")
    monkeypatch.setenv("SLUICE_OTHER_PASSWORD", "Other-Provider-Secret-5150")
    checks = Checks()
    ctx = _ctx(tmp_path, spool, checks)
    before = ctx.config_path.read_bytes()
    values = {"id": "evil", "host": "127.0.0.1", "port": 2599, "username": "u"}
    if field.startswith("oauth2."):
        values |= {"oauth2.token_url": "http://127.0.0.1:9/token", "oauth2.client_id": "c"}
    values[field] = str(other) if value == "OTHER_FILE" else value
    with pytest.raises(EditRefused) as refused:
        await ops.add_provider(ctx, values, BOB, base_digest=ctx.loaded_digest)
    assert [e.field for e in refused.value.errors] == [field]
    assert "type the secret" in refused.value.errors[0].message
    assert checks.seen == []  # never offered to any server
    assert ctx.config_path.read_bytes() == before


OAUTH_CONFIG = (
    CONFIG
    + """\
  - id: m365
    host: 127.0.0.1
    port: 2527
    encryption: none
    username: relay@contoso.example
    auth_mechanism: xoauth2
    oauth2:
      token_url: http://127.0.0.1:9/old-token
      client_id: c
"""
)


@pytest.mark.parametrize("where", ["file", "spool"])
async def test_a_new_token_url_is_not_handed_the_old_refresh_token(
    tmp_path: Path, spool: Spool, where: str
) -> None:
    """Sluice posts the refresh token to token_url at every refresh: moving the URL with
    the token kept (in the file, or from a device sign-in in the spool) is refused."""
    text = OAUTH_CONFIG
    if where == "file":
        token = tmp_path / "m365-refresh-token"
        token.write_text("Refresh-Token-Of-The-Old-Server")
        text += f"      refresh_token_file: {token}\n"
    else:
        await save_sign_in(spool, "m365", "Refresh-Token-Of-The-Old-Server", BOB)
    (tmp_path / "sluice.yaml").write_text(text)
    checks = Checks()
    ctx = _ctx(tmp_path, spool, checks)
    with pytest.raises(EditRefused) as refused:
        await ops.edit_provider(
            ctx,
            "m365",
            {"oauth2.token_url": "http://127.0.0.1:9/new-token"},
            BOB,
            base_digest=ctx.loaded_digest,
        )
    assert [e.field for e in refused.value.errors] == ["oauth2.token_url"]
    assert "refresh token" in refused.value.errors[0].message
    assert ctx.config_path.read_text() == text
    # With a refresh token for the new server typed in, the move is the operator's.
    result = await ops.edit_provider(
        ctx,
        "m365",
        {"oauth2.token_url": "http://127.0.0.1:9/new-token", "oauth2.refresh_token": "New-Rt"},
        BOB,
        base_digest=ctx.loaded_digest,
        save_anyway=True,
    )
    assert "oauth2.token_url" in result.changed
    assert load(ctx.config_path).provider("m365").oauth2.token_url.endswith("/new-token")  # type: ignore[union-attr]
