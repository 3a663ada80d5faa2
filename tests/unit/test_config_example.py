"""The shipped example config must stay valid and say what the README promises."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import pytest
from pydantic import BaseModel

from relay.config import Config, Endpoint, load
from relay.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"


def test_example_config_is_valid() -> None:
    cfg = load(EXAMPLE, env={"SLUICE_MAIN_PASSWORD": "s3cret"})
    assert cfg.smtp.listen == [Endpoint("127.0.0.1", 25)]
    assert str(cfg.spool.path).startswith("/var/lib/sluice/")
    (main,) = cfg.providers
    assert main.password_env == "SLUICE_MAIN_PASSWORD"
    assert main.encryption == "starttls"
    assert cfg.admin.listen.is_loopback


def test_example_config_needs_its_password_variable() -> None:
    with pytest.raises(ConfigError) as err:
        load(EXAMPLE, env={})
    (issue,) = err.value.issues
    assert "config.example.yaml:" in issue
    assert "providers.0.password_env" in issue
    assert "SLUICE_MAIN_PASSWORD" in issue


def _fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
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
