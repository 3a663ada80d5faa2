"""Fixtures for provider tests, and the rule that no secret ever reaches a log line."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trustme

from tests.outbound.token_server import TokenServer
from tests.upstream import TestUpstream

#: every secret the provider tests use; none may appear in any captured log line
SECRETS = (
    "s3cret-Pa55word",
    "wrong-Pa55word",
    "client-S3CRET",
    "refresh-T0KEN",
    "access-T0KEN-1",
    "access-T0KEN-2",
    "access-T0KEN-3",
)


def _forms(secret: str) -> list[str]:
    return [secret, base64.b64encode(secret.encode()).decode()]


@pytest.fixture(autouse=True)
def no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Capture everything Sluice logs (DEBUG included) and fail on any secret in it."""
    caplog.set_level(logging.DEBUG)
    # The test upstream is aiosmtpd too and logs raw AUTH lines at DEBUG; that is the
    # fake provider talking, not Sluice.
    logging.getLogger("mail.log").setLevel(logging.INFO)
    yield
    logging.getLogger("mail.log").setLevel(logging.NOTSET)
    for record in caplog.records:
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        for secret in SECRETS:
            for form in _forms(secret):
                assert form not in text, f"secret in a log line: {record.name}: {text[:200]}"


@pytest.fixture
def wrong_ca_file(tmp_path: Path) -> Path:
    path = tmp_path / "wrong-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
async def token_server() -> AsyncIterator[TokenServer]:
    server = await TokenServer().start()
    yield server
    await server.stop()


async def start_upstream(**kwargs: object) -> TestUpstream:
    return await TestUpstream(**kwargs).start()  # type: ignore[arg-type]
