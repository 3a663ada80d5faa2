"""Secrets: one type for a value given inline, by environment variable, file or systemd credential.

Users write a secret under the keys they always have (``password``,
``password_env``, ``password_file``; the same three for ``client_secret``,
``refresh_token``, and ``api_token``); ``relay.config`` folds them into one
``SecretSource`` at parsing, and everything that needs the value, shows it or
hides it works from that object:

* ``resolve()`` returns the value (read from the environment, a file or
  ``$CREDENTIALS_DIRECTORY`` each time, so a rotated file is picked up), and
  raises ``SecretError`` when it cannot, *or when it is empty*: an empty
  password is no password, and an admin with an empty one would be open;
* ``display()`` is what the CLI and the admin show: ``MASK`` and where the
  value comes from, never the value;
* ``Redactor`` masks every resolved value in a text: ``relay.logsetup``
  puts every log line through one, and the spool every text from outside it
  stores (a provider's reply, a token endpoint's error, a webhook event's
  body), since such text may echo what Sluice sent (a token endpoint that
  repeats the request's ``client_secret`` in its ``error_description``).

A config field is a secret when it is marked so, and only there:
``Annotated[SecretSource | None, Secret("the admin")]``. ``relay.config``
finds the marked fields by walking its models, and derives from them the keys
it folds, the list ``Config.secrets()`` gives (to resolve at load, and to the
log redactor) and the keys whose ``${VAR}`` may stay unset; a new secret field
needs nothing else.

A provider with a ``username`` and no password keys takes its password from
the systemd credential named after its id (``LoadCredential=main:...`` puts
it in ``$CREDENTIALS_DIRECTORY/main``); a relative ``*_file`` is looked up in
``$CREDENTIALS_DIRECTORY`` first. See systemd.exec(5), "Credentials", and
https://systemd.io/CREDENTIALS/.

This module knows nothing of the config file's shape (``relay.config``
imports it, never the reverse).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from relay.errors import SluiceError

__all__ = ["MASK", "Redactor", "Secret", "SecretError", "SecretSource", "mask"]

MASK = "••••••"

#: the systemd credential example the messages give (the unit's own comment agrees)
_CREDENTIAL_DIR = "/etc/sluice/credentials"


@dataclass(frozen=True, slots=True)
class Secret:
    """The mark of a secret config field: ``Annotated[SecretSource | None, Secret(...)]``.

    A ``SecretSource`` field is written as ``NAME``, ``NAME_env`` or
    ``NAME_file``; a ``SecretStr`` one (``admin.password_hash``) as itself.
    ``owner`` says whom the secret is for in messages ("the admin"); with
    ``key``, the value of that key of the section follows it ("provider"
    and ``id``: "provider main"; "the provider" when the key is missing).
    """

    owner: str = ""
    key: str | None = None

    def owner_in(self, section: Mapping[str, object]) -> str:
        """The owner, named by the section's ``key`` when there is one."""
        if self.key is None:
            return self.owner
        value = section.get(self.key)
        return f"{self.owner} {value}" if isinstance(value, str) and value else f"the {self.owner}"


def mask(value: object) -> str:
    """What the CLI, the admin page and the API show in place of a secret (or "")."""
    return MASK if value else ""


# An AUTH payload (base64 of user and password: its value is never known in
# advance), and a ``key=value`` assignment (no blank before "=": prose has none).
_SECRETISH = re.compile(
    r"(?i)(\bAUTH\s+(?:PLAIN|LOGIN|XOAUTH2|CRAM-MD5)\s+)\S+"
    r"|(\b(?:password|passwd|secret|token|api_key)=)(\"[^\"]*\"|'[^']*'|[^\s\"]+)"
)
_MIN_SECRET = 4  # shorter "secrets" would mask ordinary words
# What every match of _SECRETISH holds once case-folded: "auth", or a key
# name with its "=" ("api_key=" as "_key=": (?i) lets "i" match a dotless
# "ı" too, which folding keeps). Asked first, since most lines (every
# "from=<...>" one) have an "=" and none of these, and the scan costs 4 µs.
_SECRETISH_WORDS = ("password=", "passwd=", "secret=", "token=", "_key=")


def _may_look_secret(text: str) -> bool:
    """False only where ``_SECRETISH`` cannot match (C-level substring tests)."""
    if "=" not in text:
        return "auth" in text.casefold()
    folded = text.casefold()
    return "auth" in folded or any(word in folded for word in _SECRETISH_WORDS)


class Redactor:
    """Replaces known secret values and secret-looking fragments with ``MASK``.

    One mechanism for every place text from outside is kept or shown: the
    log handler holds one, the spool holds one (set from the config by the
    daemon, as ``stream_headers`` is), and an OAuth token source adds the
    tokens it obtained at run time with ``with_values``. Most texts hold no
    secret, so each pass first asks ``str.__contains__`` (a C substring
    search) whether it could match, and runs its regex only then.

    ``heuristics`` also masks what merely looks like a secret (an ``AUTH``
    payload, a ``password=VALUE``): right for log lines, where Sluice's own
    debug text may hold one; wrong for a provider's reply kept for people,
    where "does not offer AUTH CRAM-MD5 (it offers: ...)" must stay readable.
    """

    def __init__(self, secrets: Iterable[str] = (), *, heuristics: bool = False) -> None:
        self._pattern: re.Pattern[str] | None = None
        self._values: tuple[str, ...] = ()
        self._heuristics = heuristics
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        """Mask ``secrets`` from now on (instead of the values given before); on reload."""
        values = sorted({s for s in secrets if len(s) >= _MIN_SECRET}, key=len, reverse=True)
        self._values = tuple(values)
        self._pattern = re.compile("|".join(map(re.escape, values))) if values else None

    def with_values(self, secrets: Iterable[str]) -> Redactor:
        """A new redactor masking these values as well as this one's (this one is unchanged)."""
        return Redactor((*self._values, *secrets), heuristics=self._heuristics)

    def __call__(self, text: str) -> str:
        if self._pattern is not None and any(v in text for v in self._values):
            text = self._pattern.sub(MASK, text)
        if self._heuristics and _may_look_secret(text):
            text = _SECRETISH.sub(_mask_group, text)
        return text

    def json_text(self, text: str) -> str:
        """A JSON document with every string in it redacted; unchanged when none needs it.

        The document is redacted value by value and encoded again (compact,
        keys sorted, as ``relay.events.event_body`` writes it), so it stays
        valid JSON whatever the secret's characters; a text that is not JSON
        is redacted as text.
        """
        if "\\" not in text and self(text) == text:
            return text  # the common case: nothing to mask, escaped or not
        try:
            doc = json.loads(text)
        except ValueError:
            return self(text)
        masked = self._walk(doc)
        if masked == doc:
            return text
        return json.dumps(masked, separators=(",", ":"), sort_keys=True, ensure_ascii=False)

    def _walk(self, doc: object) -> object:
        if isinstance(doc, str):
            return self(doc)
        if isinstance(doc, list):
            return [self._walk(v) for v in doc]
        if isinstance(doc, dict):
            return {k: self._walk(v) for k, v in doc.items()}
        return doc


def _mask_group(m: re.Match[str]) -> str:
    return (m.group(1) or m.group(2)) + MASK


class SecretError(SluiceError, LookupError):
    """A configured secret cannot be had: unset, unreadable, missing or empty.

    ``key`` is the YAML key the user wrote (``password_env``), for
    ``FILE:LINE: dotted.key: message``.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def _blank(value: str) -> bool:
    return not value.strip()


class SecretSource(BaseModel):
    """Where one secret comes from: one of ``inline``, ``env``, ``file``, else ``credential``.

    ``name`` is the secret's YAML base key (``password``, ``client_secret``),
    used in messages and to name the key the user wrote (``yaml_key``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    name: str
    inline: SecretStr | None = None
    env: str | None = Field(default=None, min_length=1)
    file: Path | None = None
    #: a systemd credential to read when none of the three is given (a provider's id)
    credential: str | None = None
    #: who the secret is for, in messages ("provider main")
    owner: str = ""

    @field_validator("inline")
    @classmethod
    def _not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and _blank(value.get_secret_value()):
            raise ValueError("is empty; an empty secret is no secret")
        return value

    @field_validator("file")
    @classmethod
    def _file_named(cls, value: Path | None) -> Path | None:
        if value is not None and str(value) in ("", "."):
            raise ValueError("must name a file")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> SecretSource:
        # relay.config reports two keys given in the YAML; this guards models built in code.
        given = [k for k in ("inline", "env", "file") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give only one of {', '.join(given)}")
        return self

    @property
    def yaml_key(self) -> str:
        """The key the user wrote: ``password``, ``password_env`` or ``password_file``."""
        if self.env is not None:
            return f"{self.name}_env"
        if self.file is not None:
            return f"{self.name}_file"
        return self.name

    def origin(self) -> str:
        """Where the value comes from, for people (no value)."""
        if self.inline is not None:
            return "inline"
        if self.env is not None:
            return f"${self.env}"
        if self.file is not None:
            return f"file {self.file}"
        if self.credential is not None:
            return f"credential {self.credential}"
        return "not given"

    def display(self) -> str:
        """``MASK`` and where the value comes from: what the CLI and admin show."""
        return f"{MASK} ({self.origin()})"

    def resolve(self, env: Mapping[str, str] | None = None) -> SecretStr:
        """The value; files and credentials are read now (call in a thread in async code).

        Raises:
            SecretError: unset variable, unreadable or missing file, or an empty value.
        """
        environ = os.environ if env is None else env
        if self.inline is not None:
            return self.inline
        if self.env is not None:
            if self.env not in environ:
                raise SecretError(self.yaml_key, self._unset_message())
            if _blank(environ[self.env]):
                raise SecretError(
                    self.yaml_key,
                    f"environment variable {self.env} is empty; an empty secret is no secret",
                )
            return SecretStr(environ[self.env])
        if self.file is not None:
            return self._read(self._file_path(environ))
        if self.credential is not None:
            return self._read(self._credential_path(environ))
        raise SecretError(self.name, f"no {self.name} given")

    def _unset_message(self) -> str:
        """Why a ``NAME_env`` variable is missing, and what lasts longer than an environment.

        A daemon reads its environment once, when it starts: a variable
        exported in the operator's shell, or added to the unit since, never
        reaches it, and a reload that adds a provider fails here although the
        shell has the variable. A file is read at each use; a credential comes
        with the unit, so the check in ``ExecStartPre=`` sees it too.
        """
        return (
            f"environment variable {self.env} is not set in the daemon's environment (only the "
            "environment sluice was started with counts: a variable exported in a shell, or "
            f"added to the unit since, reaches it only at a restart); use {self.name}_file, read "
            "at each use (a reload sees a new file), or a systemd credential (LoadCredential=)"
        )

    def _file_path(self, environ: Mapping[str, str]) -> Path:
        assert self.file is not None
        directory = environ.get("CREDENTIALS_DIRECTORY")
        if directory and not self.file.is_absolute():
            candidate = Path(directory) / self.file
            if candidate.exists():
                return candidate
        return self.file

    def _credential_path(self, environ: Mapping[str, str]) -> Path:
        assert self.credential is not None
        cred = self.credential
        who = f"{self.owner} has" if self.owner else "there is"
        how = (
            f"{who} no {self.name}: give {self.name}_env or {self.name}_file, or the systemd "
            f"credential {cred!r} (the unit's LoadCredential={cred}:{_CREDENTIAL_DIR}/{cred}; "
            f"by hand: CREDENTIALS_DIRECTORY={_CREDENTIAL_DIR} sluice ...)"
        )
        directory = environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise SecretError(self.name, f"{how}; $CREDENTIALS_DIRECTORY is not set")
        path = Path(directory) / cred
        if not path.exists():
            raise SecretError(
                self.name, f"{how}; $CREDENTIALS_DIRECTORY ({directory}) has no file {cred}"
            )
        return path

    def _read(self, path: Path) -> SecretStr:
        try:
            value = path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise SecretError(self.yaml_key, f"cannot read {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise SecretError(self.yaml_key, f"{path} is not UTF-8 text") from None
        if _blank(value):
            raise SecretError(self.yaml_key, f"{path} is empty; an empty secret is no secret")
        return SecretStr(value)
