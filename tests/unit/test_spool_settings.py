"""``spool.url`` (#27): PostgreSQL by URL, never a password in it, errors by key."""

from __future__ import annotations

import socket

import pytest

from relay.config import loads
from relay.errors import ConfigError


def test_a_path_is_sqlite_and_a_url_is_postgresql() -> None:
    cfg = loads("providers: [{id: a, host: h}]\n")
    assert cfg.spool.backend == "sqlite" and cfg.spool.node == socket.gethostname()
    cfg = loads(
        "spool: {url: 'postgresql://sluice@127.0.0.1:5432/sluice', password: s3cret, node: r1}\n"
        "providers: [{id: a, host: h}]\n"
    )
    assert cfg.spool.backend == "postgresql" and cfg.spool.node == "r1"
    assert cfg.spool.where == "postgresql://sluice@127.0.0.1:5432/sluice"
    assert cfg.spool.password is not None
    assert cfg.spool.password.resolve().get_secret_value() == "s3cret"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("postgresql://sluice:s3cret@db/sluice", "holds a password"),
        ("postgresql://sluice@db/sluice?password=s3cret", "holds a password"),
        ("mysql://sluice@db/sluice", "must start with postgresql://"),
    ],
)
def test_a_url_with_a_password_or_another_scheme_is_refused_by_its_key(url: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        loads(f"spool: {{url: '{url}'}}\nproviders: [{{id: a, host: h}}]\n")
    text = "\n".join(caught.value.issues)
    assert "spool.url" in text and why in text
    assert "s3cret" not in text
