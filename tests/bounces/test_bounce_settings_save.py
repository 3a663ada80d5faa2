"""Saving the bounce settings checks the mailbox first, against a real Dovecot.

``relay.operations.config_edits.save_bounces`` with the real check
(``relay.bounces.check.check_mailbox``): a wrong password is refused with
Dovecot's answer on the password field, a folder the server does not have on
the folder field, and nothing is written; the right settings are saved with
the password in a 0600 file and the rest in the YAML, comments kept.
"""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import imapclient
import pytest

from relay.bounces.check import check_mailbox
from relay.config import ProviderSettings, load
from relay.config_edit import EditRefused, digest_of
from relay.operations import config_edits as ops
from relay.operations.actor import Actor, ActorKind
from relay.store.spool import Spool
from tests.bounces.mailhost import Dovecot, dovecot

pytestmark = pytest.mark.slow

PASSWORD = "b0unce-Distinctive-pw-3317"
CONFIG = """\
# bounces for the test relay
spool:
  path: spool.sqlite3
providers:
  - id: main
    host: 127.0.0.1
    port: 2525
    encryption: none

bounces:
  # where bounces return
  address: bounces@bounce.test
  threshold: 3
"""


@pytest.fixture
async def imap() -> AsyncIterator[Dovecot]:
    async with dovecot({"bounces": PASSWORD}) as server:
        yield server


async def _no_provider_check(p: ProviderSettings) -> str | None:
    raise AssertionError("saving the bounce settings must not test a provider")


async def test_save_bounces_logs_in_and_finds_the_folder_first(
    imap: Dovecot, tmp_path: Path
) -> None:
    path = tmp_path / "sluice.yaml"
    path.write_text(CONFIG)
    async with await Spool.open(tmp_path / "spool.sqlite3") as spool:
        ctx = ops.EditContext(
            config_path=path,
            spool=spool,
            secrets_dir=tmp_path / "secrets",
            loaded_digest=None,
            check_provider=_no_provider_check,
            check_mailbox=check_mailbox,
        )
        values = {
            "mailbox.host": "127.0.0.1",
            "mailbox.port": imap.port,
            "mailbox.encryption": "none",
            "mailbox.username": "bounces",
            "mailbox.password": "wrong-password",
            "mailbox.folder": "Bounces",
            "threshold": 2,
        }
        actor = Actor(ActorKind.ADMIN, "bob")
        with pytest.raises(EditRefused) as info:
            await ops.save_bounces(ctx, values, actor, base_digest=digest_of(CONFIG.encode()))
        assert [e.field for e in info.value.errors] == ["mailbox.password"]
        assert "login" in info.value.errors[0].message
        assert "AUTHENTICATIONFAILED" in info.value.errors[0].message.upper()
        assert path.read_text() == CONFIG

        values["mailbox.password"] = PASSWORD
        with pytest.raises(EditRefused) as info:
            await ops.save_bounces(ctx, values, actor, base_digest=None)
        assert [e.field for e in info.value.errors] == ["mailbox.folder"]
        assert "no folder 'Bounces'" in info.value.errors[0].message
        assert "INBOX" in info.value.errors[0].message  # what it has instead
        assert path.read_text() == CONFIG

        def make_folder() -> None:
            with imapclient.IMAPClient("127.0.0.1", port=imap.port, ssl=False) as c:
                c.login("bounces", PASSWORD)
                c.create_folder("Bounces")

        await asyncio.to_thread(make_folder)
        result = await ops.save_bounces(ctx, values, actor, base_digest=None)
        assert set(result.changed) == set(values)
        text = path.read_text()
        assert text.startswith(CONFIG.split("  threshold: 3")[0])  # comments in place
        assert PASSWORD not in text
        secret = tmp_path / "secrets" / "bounces-mailbox-password"
        assert secret.read_text() == PASSWORD
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        cfg = load(path)
        box = cfg.bounces.mailbox
        assert box is not None and box.folder == "Bounces" and box.port == imap.port
        assert cfg.bounces.threshold == 2
        audit = await spool.audit_log()
        assert audit[0].target == "bounces" and PASSWORD not in audit[0].detail
