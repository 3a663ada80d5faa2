"""The shipped example config must stay valid and say what the README promises."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import pytest
from pydantic import BaseModel

from relay.config import SECRET_NAMES, Config, Endpoint, load
from relay.errors import ConfigError
from relay.secrets import SecretSource

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"


def test_example_config_is_valid_with_the_units_credential(tmp_path: Path) -> None:
    # What the unit's LoadCredential=main:/etc/sluice/credentials/main provides.
    (tmp_path / "main").write_text("s3cret\n")
    cfg = load(EXAMPLE, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert cfg.smtp.endpoints == [Endpoint("127.0.0.1", 25)]
    assert str(cfg.spool.path).startswith("/var/lib/sluice/")
    (main,) = cfg.providers
    assert main.password is not None and main.password.credential == "main"
    assert main.password.resolve({"CREDENTIALS_DIRECTORY": str(tmp_path)}).get_secret_value() == (
        "s3cret"
    )
    assert main.encryption == "starttls"
    assert cfg.admin.listen.is_loopback


def test_example_config_without_the_credential_says_how_to_give_it() -> None:
    with pytest.raises(ConfigError) as err:
        load(EXAMPLE, env={})
    (issue,) = err.value.issues
    line = next(n for n, t in enumerate(EXAMPLE.read_text().splitlines(), 1) if "- id: main" in t)
    assert issue.startswith(f"{EXAMPLE}:{line}: providers.0.password: provider main has no ")
    assert "password_env or password_file" in issue
    assert "LoadCredential=main:/etc/sluice/credentials/main" in issue
    assert "$CREDENTIALS_DIRECTORY is not set" in issue


def _fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    out: list[str] = []
    for name, field in model.model_fields.items():
        if SecretSource in get_args(field.annotation):
            # A folded secret: the keys users write are NAME, NAME_env, NAME_file.
            assert name in SECRET_NAMES
            out.extend(prefix + name + suffix for suffix in ("", "_env", "_file"))
            continue
        out.append(prefix + name)
        for arg in [field.annotation, *get_args(field.annotation)]:
            for inner in [arg, *get_args(arg)]:
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    out.extend(_fields(inner, f"{prefix}{name}."))
    return out


@pytest.mark.parametrize("key", sorted(set(_fields(Config))))
def test_every_config_key_is_documented_in_the_example(key: str) -> None:
    name = key.rsplit(".", 1)[-1]
    text = EXAMPLE.read_text()
    assert re.search(rf"^\s*#?\s*(- )?{name}:", text, re.MULTILINE), f"{key} is not in the example"


def test_every_key_line_has_a_comment_nearby() -> None:
    lines = EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip().removeprefix("- ")
        if not stripped or stripped.startswith("#") or "#" in stripped:
            continue
        # A key is explained by a comment on its line or just above it, or
        # it is a section header whose first key is explained.
        window = [lines[j].strip() for j in range(max(0, i - 3), i)]
        assert stripped.endswith(":") or any(w.startswith("#") for w in window), (
            f"config.example.yaml line {i + 1} has no comment: {line!r}"
        )
