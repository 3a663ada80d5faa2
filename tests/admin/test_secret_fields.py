"""Which config fields are secrets is said once, by a ``Secret`` mark on the field.

From the marks come the keys folded (``NAME``/``_env``/``_file``), the list
``Config.secrets()`` gives (resolved at load, masked in every log line), and
the keys whose ``${VAR}`` may stay unset. These tests set every marked field
of a config to a value of its own and look for the values where they must not
be: the log, the admin's pages and API, and ``sluice check``; and they add a
new marked field to a model to show it needs nothing else.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field, ValidationError

from relay import logsetup
from relay.config import SECRET_NAMES, Config, _Model, secret_fields
from relay.dkim import generate_key
from relay.secrets import MASK, Secret, SecretSource
from tests.admin.conftest import AppClientFactory
from tests.conftest import SluiceFactory, provider_for, write_config
from tests.upstream import TestUpstream

#: one value per marked field, each unlike any other text on a page
VALUES = {
    ("providers", 0, "password"): "Prov1derPw-7f3a",
    ("providers", 1, "oauth2", "client_secret"): "Cl1entSecret-91bd",
    ("providers", 1, "oauth2", "refresh_token"): "Refr3shTok-55e0",
    ("admin", "password_hash"): "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$SecretHash-2b7c",
    ("admin", "password"): "Adm1nPw-c4d2",
    ("admin", "api_token"): "ApiT0ken-e8f1",
    ("bounces", "mailbox", "password"): "Ma1lboxPw-0a9c",
    ("bounces", "mailbox", "oauth2", "client_secret"): "BoxCl1ent-77aa",
    ("bounces", "mailbox", "oauth2", "refresh_token"): "BoxRefr3sh-3c3c",
    ("notify", "webhooks", 0, "secret"): "H00kSecret-d00d",
    ("smtp", "users", 0, "password_hash"): "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$UserHash-5e1f",
    ("smtp", "users", 1, "password"): "Us3rPw-a41b",
    # the PostgreSQL role's (#27); with no spool.url it is not used, but still masked
    ("spool", "password"): "Sp00lPw-6b2e",
    # a DKIM private key must load (the daemon signs with it): a real one, made here
    ("dkim", "domains", 0, "key"): generate_key("ed25519")[1].decode("ascii").strip(),
}


def _every_marked_field(model: type[BaseModel], seen: set[type] | None = None) -> Iterator[str]:
    """``Model.field`` for every field marked ``Secret`` in the config's models."""
    seen = set() if seen is None else seen
    if model in seen:
        return
    seen.add(model)
    for name in secret_fields(model):
        yield f"{model.__name__}.{name}"
    for info in model.model_fields.values():
        stack: list[Any] = [info.annotation]
        while stack:
            arg = stack.pop()
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                yield from _every_marked_field(arg, seen)
            stack.extend(getattr(arg, "__args__", ()))


def _config_dict(up: TestUpstream, tmp_path: Path) -> dict[str, Any]:
    oauth2 = {"token_url": "http://127.0.0.1:9/token", "client_id": "app"}
    return {
        "smtp": {
            "listen": ["127.0.0.1:0"],
            "hostname": "sluice.test",
            "workers": 0,
            "users": [
                {"name": "app1", "password_hash": VALUES[("smtp", "users", 0, "password_hash")]},
                {"name": "app2", "password": VALUES[("smtp", "users", 1, "password")]},
            ],
        },
        "spool": {
            "path": str(tmp_path / "spool.sqlite3"),
            "password": VALUES[("spool", "password")],
        },
        "admin": {
            "enabled": False,
            "password_hash": VALUES[("admin", "password_hash")],
            "password": VALUES[("admin", "password")],
            "api_token": VALUES[("admin", "api_token")],
        },
        "providers": [
            provider_for(
                up,
                username="user1",
                password=VALUES[("providers", 0, "password")],
                allow_insecure_auth=True,
            ),
            {
                "id": "ms",
                "host": "127.0.0.1",
                "port": 9,
                "enabled": False,
                "username": "me@example.com",
                "oauth2": {
                    **oauth2,
                    "client_secret": VALUES[("providers", 1, "oauth2", "client_secret")],
                    "refresh_token": VALUES[("providers", 1, "oauth2", "refresh_token")],
                },
            },
        ],
        "bounces": {
            "mailbox": {
                "host": "127.0.0.1",
                "port": 9,
                "username": "bounces",
                "poll_interval": "1h",
                "password": VALUES[("bounces", "mailbox", "password")],
                "oauth2": {
                    **oauth2,
                    "client_secret": VALUES[("bounces", "mailbox", "oauth2", "client_secret")],
                    "refresh_token": VALUES[("bounces", "mailbox", "oauth2", "refresh_token")],
                },
            }
        },
        "notify": {
            "webhooks": [
                {
                    "url": "http://127.0.0.1:9/hook",
                    "secret": VALUES[("notify", "webhooks", 0, "secret")],
                }
            ]
        },
        "dkim": {
            "domains": [
                {
                    "domain": "example.org",
                    "selector": "s1",
                    "key": VALUES[("dkim", "domains", 0, "key")],
                }
            ]
        },
    }


def test_the_config_sets_every_marked_field_and_secrets_lists_each(
    upstream: TestUpstream, tmp_path: Path
) -> None:
    cfg = Config.model_validate(_config_dict(upstream, tmp_path))
    refs = {ref.loc: ref.source.resolve().get_secret_value() for ref in cfg.secrets()}
    assert refs == VALUES
    # Every marked field of every model is set above (a new one must be added here).
    assert set(_every_marked_field(Config)) == {
        "AdminSettings.password_hash",
        "AdminSettings.password",
        "AdminSettings.api_token",
        "ProviderSettings.password",
        "OAuth2Settings.client_secret",
        "OAuth2Settings.refresh_token",
        "MailboxSettings.password",
        "WebhookSettings.secret",
        "DkimDomain.key",
        "SmtpUser.password_hash",
        "SmtpUser.password",
        "SpoolSettings.password",
    }
    # The keys the loader folds are the marked SecretSource fields.
    assert set(SECRET_NAMES) == {loc[-1] for loc in VALUES} - {"password_hash"}


def test_every_secret_is_masked_in_the_log(upstream: TestUpstream, tmp_path: Path) -> None:
    cfg = Config.model_validate(_config_dict(upstream, tmp_path))
    assert logsetup.config_secrets(cfg) == set(VALUES.values())
    out = io.StringIO()
    logsetup.configure("info", "text", secrets=logsetup.config_secrets(cfg), stream=out)
    try:
        for value in VALUES.values():
            logging.getLogger("sluice.test").warning("value: %s", value)
    finally:
        logsetup.configure("info", "text", stream=io.StringIO())
    text = out.getvalue()
    assert text.count(MASK) == len(VALUES)
    assert not [v for v in VALUES.values() if v in text]


async def test_no_secret_on_any_admin_page_or_api(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory, tmp_path: Path
) -> None:
    config = _config_dict(upstream, tmp_path)
    sections = {k: v for k, v in config.items() if k not in ("providers", "smtp", "spool")}
    pages = [
        "/",
        "/providers",
        "/providers/up1",
        "/providers/ms",
        "/queue",
        "/log",
        "/suppressions",
        "/webhooks",
        "/audit",
        "/dkim",
        "/api/overview",
        "/api/providers",
        "/api/providers/up1",
        "/api/providers/ms",
        "/api/webhooks",
        "/api/pauses",
        "/metrics",
        "/healthz",
    ]
    async with sluice(config["providers"], **sections) as s, app_client(s) as c:
        for page in pages:
            resp = await c.get(page)
            assert resp.status_code == 200, page
            leaked = [v for v in VALUES.values() if v in resp.text]
            assert leaked == [], page


def test_sluice_check_shows_no_secret(upstream: TestUpstream, tmp_path: Path) -> None:
    path = write_config(tmp_path / "sluice.yaml", _config_dict(upstream, tmp_path))
    ok = subprocess.run(
        [sys.executable, "-m", "relay.cli", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    # and a config that does not validate, beside the secrets
    broken = path.read_text().replace("poll_interval: 1h", "poll_interval: soon")
    path.write_text(broken)
    bad = subprocess.run(
        [sys.executable, "-m", "relay.cli", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "poll_interval" in bad.stderr
    for result in (ok, bad):
        assert [v for v in VALUES.values() if v in result.stdout + result.stderr] == []


class _Vault(_Model):
    """A section a later version might add, with a secret of a new name."""

    url: str = "https://vault.example"
    vault_token: Annotated[SecretSource | None, Secret("the vault")] = None


class _WiderConfig(Config):
    vault: _Vault = Field(default_factory=_Vault)


def test_a_new_marked_field_needs_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "vt").write_text("Va1ltTok-9999\n")
    base = {"providers": [{"id": "a", "host": "h"}]}
    given_as = {"vault_token": "Va1ltTok-9999", "vault_token_file": str(tmp_path / "vt")}
    for key, value in given_as.items():
        cfg = _WiderConfig.model_validate({**base, "vault": {key: value}})
        refs = [(r.loc, r.yaml_loc, r.source.resolve().get_secret_value()) for r in cfg.secrets()]
        assert refs == [(("vault", "vault_token"), ("vault", key), "Va1ltTok-9999")]
        assert logsetup.config_secrets(cfg) == {"Va1ltTok-9999"}
    with pytest.raises(ValidationError, match="give only one of vault_token, vault_token_file"):
        _WiderConfig.model_validate({**base, "vault": given_as})
