"""Config edits through a running daemon's own EditContext (what the admin gets from it).

The daemon (in-process, real sockets and spool) records the digest of the file
it runs; an edit through ``Backend.edit_context`` is checked with the daemon's
own Test connection against a real upstream, written, and reloaded; the digest
follows. A hand edit not reloaded is refused with the difference.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config_edit import EditRefused, digest_of
from relay.operations import config_edits as ops
from relay.operations.actor import Actor, ActorKind
from relay.store.node_status import read_status
from tests.conftest import SluiceFactory, provider_for
from tests.upstream import TestUpstream

BOB = Actor(ActorKind.ADMIN, "bob")


async def test_an_edit_through_the_daemon_reloads_it_and_a_hand_edit_is_refused(
    sluice: SluiceFactory, upstream: TestUpstream, tmp_path: Path
) -> None:
    async with sluice([provider_for(upstream)]) as s:
        backend = s.daemon.admin_backend()
        assert backend.edit_context is not None
        path = s.config_path
        assert backend.config_digest() == digest_of(path.read_bytes())
        # the node's status file (beside its lock), where the CLI reads it
        spool_path = s.daemon.config.spool.path
        assert read_status(spool_path, "daemon.config_sha256") == backend.config_digest()

        ctx = backend.edit_context()
        assert ctx.secrets_dir == (tmp_path / "secrets").absolute()
        # A port nothing listens on: the daemon's own connection test refuses it.
        with pytest.raises(EditRefused) as info:
            await ops.edit_provider(
                ctx, "up1", {"port": 9}, BOB, base_digest=backend.config_digest()
            )
        assert info.value.errors[0].field == "host"
        assert "connect" in info.value.errors[0].message

        result = await ops.edit_provider(
            ctx, "up1", {"daily_limit": 42}, BOB, base_digest=backend.config_digest()
        )
        assert result.reloaded
        assert s.daemon.config.provider("up1").daily_limit == 42
        assert backend.config_digest() == result.digest == digest_of(path.read_bytes())
        assert read_status(spool_path, "daemon.config_sha256") == result.digest

        # A hand edit, not reloaded: the next Save shows it instead of applying it unseen.
        path.write_text(path.read_text().replace("daily_limit: 42", "daily_limit: 43"))
        with pytest.raises(EditRefused) as info:
            await ops.edit_provider(
                backend.edit_context(), "up1", {"rate": "5/s"}, BOB, base_digest=result.digest
            )
        assert info.value.diff is not None
        assert "-  daily_limit: 42" in info.value.diff
        assert "+  daily_limit: 43" in info.value.diff
        assert s.daemon.config.provider("up1").daily_limit == 42
