"""Secret resolution: inline value, environment variable, file, or systemd credential.

A secret is looked up in this order: the inline ``password``, ``password_env``,
``password_file``, then ``$CREDENTIALS_DIRECTORY/<name>`` (systemd
``LoadCredential=``). Secrets are returned as ``SecretStr`` so that a stray
``repr`` or log line shows ``**********``, never the value.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from pydantic import SecretStr

from relay.config import Config, Loc

__all__ = ["MASK", "config_secret_issues", "mask", "resolve_secret"]

MASK = "••••••"


def mask(value: object) -> str:
    """What the CLI, the admin page and the API show in place of a secret."""
    return MASK if value else ""


def resolve_secret(
    inline: SecretStr | None,
    env_name: str | None,
    file: Path | None,
    *,
    credential: str | None = None,
    env: Mapping[str, str] | None = None,
) -> SecretStr | None:
    """Return the secret from the first source that is set, or ``None``.

    Raises:
        LookupError: a named variable is unset or a named file is unreadable.
    """
    environ = os.environ if env is None else env
    if inline is not None:
        return inline
    if env_name:
        if env_name not in environ:
            raise LookupError(f"environment variable {env_name} is not set")
        return SecretStr(environ[env_name])
    path = file
    if path is None and credential and environ.get("CREDENTIALS_DIRECTORY"):
        candidate = Path(environ["CREDENTIALS_DIRECTORY"]) / credential
        path = candidate if candidate.exists() else None
    elif path is not None and not path.is_absolute() and environ.get("CREDENTIALS_DIRECTORY"):
        candidate = Path(environ["CREDENTIALS_DIRECTORY"]) / path
        path = candidate if candidate.exists() else path
    if path is not None:
        try:
            return SecretStr(path.read_text(encoding="utf-8").rstrip("\r\n"))
        except OSError as exc:
            raise LookupError(f"cannot read {path}: {exc.strerror or exc}") from None
    return None


def config_secret_issues(cfg: Config, env: Mapping[str, str]) -> Iterator[tuple[Loc, str]]:
    """Every secret the config names must resolve; report the ones that do not."""
    for i, p in enumerate(cfg.providers):
        try:
            resolve_secret(p.password, p.password_env, p.password_file, credential=p.id, env=env)
        except LookupError as exc:
            key = "password_env" if p.password_env else "password_file"
            yield ("providers", i, key), str(exc)
        if p.oauth2 is not None:
            o = p.oauth2
            for name, triple in (
                ("client_secret", (o.client_secret, o.client_secret_env, o.client_secret_file)),
                ("refresh_token", (o.refresh_token, o.refresh_token_env, o.refresh_token_file)),
            ):
                try:
                    resolve_secret(*triple, env=env)
                except LookupError as exc:
                    yield ("providers", i, "oauth2", name), str(exc)
    box = cfg.bounces.mailbox
    if box is not None:
        try:
            resolve_secret(box.password, box.password_env, box.password_file, env=env)
        except LookupError as exc:
            key = "password_env" if box.password_env else "password_file"
            yield ("bounces", "mailbox", key), str(exc)
    a = cfg.admin
    for key, triple in (
        ("password_env", (None, a.password_env, a.password_file)),
        ("api_token_env", (None, a.api_token_env, a.api_token_file)),
    ):
        try:
            resolve_secret(*triple, env=env)
        except LookupError as exc:
            yield ("admin", key), str(exc)
