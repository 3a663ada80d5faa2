"""``SecretSource``: the keys users write fold into one type; resolution, emptiness, display."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from admin.auth import Credentials
from admin.server import check_exposure
from relay.config import AdminSettings, Config, ProviderSettings, loads
from relay.errors import ConfigError
from relay.secrets import (
    _SECRETISH,
    MASK,
    Redactor,
    SecretError,
    SecretSource,
    _mask_group,
    _may_look_secret,
)

REPO = Path(__file__).resolve().parents[2]

HEAD = "providers:\n  - id: main\n    host: smtp.example.com\n"


def _issues(text: str, env: dict[str, str], secrets: bool = True) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        loads(text, source="c.yaml", env=env, secrets=secrets)
    return caught.value.issues


def _line(text: str, marker: str = "# <-") -> int:
    (line,) = [n for n, t in enumerate(text.splitlines(), 1) if marker in t]
    return line


def test_secrets_module_does_not_import_config() -> None:
    # relay.config imports relay.secrets; the reverse would be the old import circle.
    # (relay.errors, the error tree's root, imports nothing.)
    tree = ast.parse((REPO / "relay" / "secrets.py").read_text())
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    } | {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert not any(m.startswith("relay") and m != "relay.errors" for m in imported), imported


@pytest.mark.parametrize(
    ("yaml_key", "value", "field"),
    [
        ("password", "inline-pw", "inline"),
        ("password_env", "SLUICE_PW", "env"),
        ("password_file", "/etc/sluice/pw", "file"),
    ],
)
def test_the_keys_users_write_fold_into_one_source(yaml_key: str, value: str, field: str) -> None:
    cfg = loads(HEAD + f"    username: u\n    {yaml_key}: {value}\n")
    source = cfg.providers[0].password
    assert isinstance(source, SecretSource)
    assert source.yaml_key == yaml_key
    got = getattr(source, field)
    assert (got.get_secret_value() if isinstance(got, SecretStr) else str(got)) == value
    assert source.credential is None  # given explicitly: no fallback


def test_oauth_and_admin_secrets_fold_too() -> None:
    cfg = loads(
        HEAD
        + "    username: me@example.com\n"
        + "    oauth2:\n      token_url: https://t.example/token\n      client_id: app\n"
        + "      client_secret_env: CS\n      refresh_token_file: rt\n"
        + "admin:\n  password_file: /etc/sluice/admin-pw\n  api_token: inline-token\n"
    )
    o = cfg.providers[0].oauth2
    assert o is not None and o.client_secret is not None and o.refresh_token is not None
    assert (o.client_secret.env, o.refresh_token.file) == ("CS", Path("rt"))
    assert cfg.providers[0].password is None  # XOAUTH2: no password, no credential
    refs = {(ref.loc, ref.yaml_loc, ref.provider) for ref in cfg.secrets()}
    assert refs == {
        (
            ("providers", 0, "oauth2", "client_secret"),
            ("providers", 0, "oauth2", "client_secret_env"),
            "main",
        ),
        (
            ("providers", 0, "oauth2", "refresh_token"),
            ("providers", 0, "oauth2", "refresh_token_file"),
            "main",
        ),
        (("admin", "password"), ("admin", "password_file"), None),
        (("admin", "api_token"), ("admin", "api_token"), None),
    }


def test_models_built_in_python_take_the_same_keys() -> None:
    admin = AdminSettings(password_env="X", api_token_file=Path("/t"))  # type: ignore[call-arg]
    assert admin.password is not None and admin.password.env == "X"
    assert admin.api_token is not None and admin.api_token.file == Path("/t")
    p = ProviderSettings(id="a", host="h", username="u")
    assert p.password is not None and p.password.credential == "a"
    assert ProviderSettings(id="a", host="h").password is None  # no AUTH, no secret
    # A copy keeps the folded source as it is.
    assert p.model_copy(update={"host": "h2"}).password == p.password


@pytest.mark.parametrize("name", ["password", "client_secret", "refresh_token", "api_token"])
def test_only_one_source_per_secret(name: str) -> None:
    # The line is the mapping's (its first key's), as for any rule across keys.
    if name == "api_token":
        text = HEAD + f"admin:\n  {name}: a  # <-\n  {name}_env: B\n"
        key = "admin"
    elif name == "password":
        text = (
            HEAD.replace("- id: main", "- id: main  # <-") + f"    {name}: a\n    {name}_file: b\n"
        )
        key = "providers.0"
    else:
        text = (
            HEAD
            + "    oauth2:\n      token_url: t  # <-\n      client_id: c\n"
            + f"      {name}_env: A\n      {name}_file: b\n"
        )
        key = "providers.0.oauth2"
    (issue,) = _issues(text, {}, secrets=False)
    assert issue.startswith(f"c.yaml:{_line(text)}: {key}: give only one of {name}")


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        (HEAD + "    password_env: 12  # <-\n", "providers.0.password_env", "valid string"),
        (HEAD + '    password_env: ""  # <-\n', "providers.0.password_env", "at least 1"),
        (HEAD + '    password: ""  # <-\n', "providers.0.password", "empty secret is no secret"),
        (HEAD + "    password: '  '  # <-\n", "providers.0.password", "empty secret"),
        (
            HEAD + "admin:\n  password_hash: ''  # <-\n",
            "admin.password_hash",
            "an empty password is no password",
        ),
        (
            HEAD + "    oauth2:\n      token_url: t\n      client_id: c\n"
            "      refresh_token: ''  # <-\n",
            "providers.0.oauth2.refresh_token",
            "empty secret",
        ),
        (HEAD + "admin:\n  api_token_fil: x  # <-\n", "admin.api_token_fil", "unknown key"),
    ],
)
def test_a_bad_secret_key_is_reported_at_its_line(text: str, key: str, fragment: str) -> None:
    issues = _issues(text, {}, secrets=False)
    matching = [i for i in issues if i.startswith(f"c.yaml:{_line(text)}: {key}: ")]
    assert matching, issues
    assert fragment in matching[0]


@pytest.mark.parametrize(
    ("lines", "key"),
    [
        ("    username: u\n    password_env: EMPTY  # <-\n", "providers.0.password_env"),
        ("    username: u\n    password_env: BLANK  # <-\n", "providers.0.password_env"),
        (
            "    oauth2:\n      token_url: t\n      client_id: c\n"
            "      client_secret_env: EMPTY  # <-\n",
            "providers.0.oauth2.client_secret_env",
        ),
        ("admin:\n  password_env: EMPTY  # <-\n", "admin.password_env"),
        ("admin:\n  api_token_env: BLANK  # <-\n", "admin.api_token_env"),
        ("    username: ${EMPTY}\n    password: ${EMPTY}x\n", None),  # not empty: "x"
    ],
)
def test_an_empty_variable_is_no_secret(lines: str, key: str | None) -> None:
    env = {"EMPTY": "", "BLANK": " \t"}
    text = HEAD + lines
    if key is None:
        loads(text, env=env, secrets=True)
        return
    (issue,) = _issues(text, env)
    assert issue.startswith(f"c.yaml:{_line(text)}: {key}: environment variable ")
    assert "is empty; an empty secret is no secret" in issue


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("    username: u\n    password_file: {f}  # <-\n", "providers.0.password_file"),
        (
            "    oauth2:\n      token_url: t\n      client_id: c\n"
            "      refresh_token_file: {f}  # <-\n",
            "providers.0.oauth2.refresh_token_file",
        ),
        ("admin:\n  password_file: {f}  # <-\n", "admin.password_file"),
        ("admin:\n  api_token_file: {f}  # <-\n", "admin.api_token_file"),
    ],
)
def test_an_empty_file_is_no_secret(tmp_path: Path, section: str, key: str) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")  # a lone newline is stripped like any trailing one
    text = HEAD + section.format(f=empty)
    (issue,) = _issues(text, {})
    assert issue == (f"c.yaml:{_line(text)}: {key}: {empty} is empty; an empty secret is no secret")


def test_resolution_order_and_sources(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-file\r\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "main").write_text("from-credential\n")
    (creds / "rel").write_text("relative-in-credentials\n")
    env = {"PW": "from-env", "CREDENTIALS_DIRECTORY": str(creds)}

    def value(**kw: object) -> str:
        return SecretSource(name="password", **kw).resolve(env).get_secret_value()  # type: ignore[arg-type]

    assert value(inline="inline-pw") == "inline-pw"
    assert value(env="PW") == "from-env"
    assert value(file=tmp_path / "pw") == "from-file"
    assert value(file=Path("rel")) == "relative-in-credentials"
    assert value(credential="main") == "from-credential"


def test_credential_errors_say_how_to_provide_it(tmp_path: Path) -> None:
    source = SecretSource(name="password", credential="main", owner="provider main")
    with pytest.raises(SecretError) as unset:
        source.resolve({})
    assert unset.value.key == "password"
    assert "provider main has no password: give password_env or password_file" in str(unset.value)
    assert "LoadCredential=main:/etc/sluice/credentials/main" in str(unset.value)
    assert "$CREDENTIALS_DIRECTORY is not set" in str(unset.value)
    with pytest.raises(SecretError) as missing:
        source.resolve({"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert f"$CREDENTIALS_DIRECTORY ({tmp_path}) has no file main" in str(missing.value)
    (tmp_path / "main").write_text("")
    with pytest.raises(SecretError, match="is empty"):
        source.resolve({"CREDENTIALS_DIRECTORY": str(tmp_path)})


def test_a_source_built_in_code_takes_one_of_the_three() -> None:
    with pytest.raises(ValueError, match="give only one of env, file"):
        SecretSource(name="password", env="X", file=Path("/f"))


def test_unset_and_unreadable_sources(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="environment variable NOPE is not set") as err:
        SecretSource(name="client_secret", env="NOPE").resolve({})
    assert err.value.key == "client_secret_env"
    with pytest.raises(SecretError, match="cannot read") as err:
        SecretSource(name="api_token", file=tmp_path / "absent").resolve({})
    assert err.value.key == "api_token_file"


def test_display_never_shows_the_value() -> None:
    for kw, origin in (
        ({"inline": "hunter2-pw"}, "inline"),
        ({"env": "SLUICE_PW"}, "$SLUICE_PW"),
        ({"file": "/etc/sluice/pw"}, "file /etc/sluice/pw"),
        ({"credential": "main"}, "credential main"),
    ):
        source = SecretSource(name="password", **kw)  # type: ignore[arg-type]
        assert source.display() == f"{MASK} ({origin})"
        assert "hunter2-pw" not in repr(source) + str(source)


def test_without_secrets_the_structure_still_loads() -> None:
    # What `sluice queue ...` and `providers list` need: no variable of the service.
    text = (
        HEAD
        + "    username: u\n    password_env: SLUICE_NOT_IN_THIS_SHELL\n"
        + "  - id: other\n    host: h\n    username: u\n    password: ${SLUICE_NOR_THIS}\n"
        + "admin:\n  password_hash: ${SLUICE_HASH_NEITHER}\n  api_token_file: /nonexistent/t\n"
    )
    cfg = loads(text, env={}, secrets=False)
    assert [p.id for p in cfg.providers] == ["main", "other"]
    issues = _issues(text, {}, secrets=True)
    assert any("${SLUICE_NOR_THIS} is not set" in i for i in issues), issues
    # A predicate picks whose secrets must resolve (`providers test ID`).
    only_main = "providers:\n  - id: main\n    host: h\n    username: u\n    password: x1\n"
    only_main += "admin:\n  api_token_env: SLUICE_NOT_IN_THIS_SHELL\n"
    loads(only_main, env={}, secrets=lambda ref: ref.provider == "main")
    with pytest.raises(ConfigError, match=r"admin\.api_token_env"):
        loads(only_main, env={}, secrets=True)


def test_check_exposure_counts_a_given_password_only() -> None:
    listen = "0.0.0.0:8025"
    with pytest.raises(ConfigError, match="not a loopback address and no admin password"):
        check_exposure(AdminSettings(listen=listen))  # type: ignore[arg-type]
    check_exposure(AdminSettings(listen=listen, password_env="SLUICE_X"))  # type: ignore[call-arg, arg-type]


def test_admin_credentials_refuse_an_empty_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Defence in depth for a config that did not go through `load`: the daemon
    # resolves the admin's secrets at start-up, and an empty one is an error.
    monkeypatch.setenv("SLUICE_TEST_EMPTY_ADMIN_PW", "")
    with pytest.raises(SecretError, match="is empty"):
        Credentials.from_settings(AdminSettings(password_env="SLUICE_TEST_EMPTY_ADMIN_PW"))  # type: ignore[call-arg]
    (tmp_path / "token").write_text("")
    with pytest.raises(SecretError, match="is empty"):
        Credentials.from_settings(AdminSettings(api_token_file=tmp_path / "token"))  # type: ignore[call-arg]
    (tmp_path / "pw").write_text("admin-pw\n")
    creds = Credentials.from_settings(AdminSettings(password_file=tmp_path / "pw"))  # type: ignore[call-arg]
    assert creds.password == "admin-pw" and creds.login_required


def test_config_secrets_lists_every_source() -> None:
    cfg = Config.model_validate(
        {
            "providers": [{"id": "a", "host": "h", "username": "u", "password": "pa55-a"}],
            "admin": {"api_token": "t0ken-x"},
        }
    )
    assert [ref.source.yaml_key for ref in cfg.secrets()] == ["password", "api_token"]


def test_the_redactor_masks_values_inside_json_and_keeps_it_valid() -> None:
    # A webhook event's body is JSON: a secret with characters JSON escapes
    # (a quote, a backslash) is not in its text as such, and masking must not
    # break the document.
    redact = Redactor(['sec"ret\\1', "plainSecret"])
    body = json.dumps(
        {"data": {"reply": 'echo sec"ret\\1 and plainSecret', "n": 1, "l": ["plainSecret"]}},
        separators=(",", ":"),
        sort_keys=True,
        ensure_ascii=False,
    )
    masked = redact.json_text(body)
    assert json.loads(masked) == {"data": {"reply": f"echo {MASK} and {MASK}", "n": 1, "l": [MASK]}}
    assert "sec" not in masked and "plainSecret" not in masked
    clean = '{"data":{"reply":"250 ok \\"quoted\\""}}'
    assert redact.json_text(clean) is clean  # nothing to mask: the very same text
    assert redact.json_text("not json plainSecret") == f"not json {MASK}"


def test_with_values_adds_run_time_tokens_without_changing_the_original() -> None:
    config = Redactor(["configSecret"])
    both = config.with_values(["runtimeToken", "ab"])  # too short to mask: "ab"
    text = "configSecret runtimeToken ab"
    assert both(text) == f"{MASK} {MASK} ab"
    assert config(text) == f"{MASK} runtimeToken ab"


def test_only_the_log_masks_what_merely_looks_like_a_secret() -> None:
    reply = "4.7.0 the server does not offer AUTH CRAM-MD5 (it offers: PLAIN); token=abc"
    assert Redactor(["configSecret"])(reply) == reply  # a stored reply stays readable
    log = Redactor(["configSecret"], heuristics=True)
    assert log("AUTH PLAIN AHVzZXIAcHc=") == f"AUTH PLAIN {MASK}"
    assert log.with_values(["runtimeToken"])("token=abc") == f"token={MASK}"


# Pieces of every alternative of the secret-looking pattern, in several cases,
# the characters (?i) matches beyond ASCII (dotless i, long s, Kelvin sign),
# and what sits around them in a log line.
_PIECES = st.sampled_from(
    [
        "AUTH",
        "auth",
        "Auth ",
        "PLAIN ",
        "LOGIN",
        " XOAUTH2 ",
        "CRAM-MD5",
        "aUtH",
        "password",
        "PASSWORD",
        "passwd",
        "secret",
        "SECRET",
        "ſecret",
        "token",
        "TOKEN",
        "tO\u212aen",
        "api_key",
        "API_KEY",
        "apı_key",
        "ap\u0130_key",
        "=",
        "==",
        " ",
        "  ",
        "x",
        "'v'",
        '"v v"',
        "from=<a@b>",
        ":",
        "\t",
        "\u0131",
        "\u017f",
        "é",
    ]
)


@given(st.lists(_PIECES, max_size=8).map("".join))
def test_the_quick_look_never_skips_what_the_pattern_masks(text: str) -> None:
    """A line skips the secret-looking scan only where the scan would change nothing."""
    log = Redactor(heuristics=True)
    assert log(text) == _SECRETISH.sub(_mask_group, text)


def test_a_plain_log_line_with_equals_signs_is_left_as_it_is() -> None:
    line = "accepted from=<app@example.com> nrcpt=1 size=2048 client=127.0.0.1"
    assert not _may_look_secret(line)
    assert Redactor(heuristics=True)(line) == line
    assert _may_look_secret("retrying with passwd=x") and _may_look_secret("AUTH LOGIN")
