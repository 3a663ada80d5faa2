"""One address check, one message: ``sluice suppression add``, the JSON API and CSV imports.

"not an address" was stored by the CLI (it only looked for an "@") while the
admin refused it with its own rule; now every front-end asks
``relay.operations.suppressions.check_address`` (``relay.address`` underneath)
and shows its one message. Each front-end is used as a person or an app uses
it: the ``sluice`` command in a subprocess, the API with a bearer token, and
CSV files through both.
"""

from __future__ import annotations

from pathlib import Path

from relay.operations.actor import Refused
from relay.operations.suppressions import check_address
from tests.admin.conftest import AppClientFactory
from tests.conftest import SluiceFactory, provider_for
from tests.daemon_proc import run_cli
from tests.upstream import TestUpstream

BAD = "not an address"


def _message() -> str:
    try:
        check_address(BAD)
    except Refused as exc:
        return str(exc)
    raise AssertionError(f"{BAD!r} was taken as an address")


async def test_not_an_address_is_refused_alike_everywhere(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory, tmp_path: Path
) -> None:
    message = _message()
    assert message.startswith("not an address: 'not an address' (")
    csv_file = tmp_path / "list.csv"
    csv_file.write_text(f"address,reason\nok@example.org,fine\n{BAD},typo\n")
    async with sluice([provider_for(upstream)]) as s, app_client(s, token="tok") as c:
        cfg = str(s.config_path)
        auth = {"authorization": "Bearer tok"}

        # The CLI: refused with EX_DATAERR, nothing stored.
        rc, out, err = await run_cli("suppression", "add", BAD, "-c", cfg)
        assert (rc, out) == (65, "")
        assert err.strip() == f"sluice: {message}"

        # The JSON API: refused with 400 and the same text.
        r = await c.post("/api/suppressions", json={"address": BAD}, headers=auth)
        assert r.status_code == 400
        assert r.json() == {"error": message}

        # A CSV import, by the CLI and by the API: the same text, after the line.
        rc, _, err = await run_cli("suppression", "import", str(csv_file), "-c", cfg)
        assert rc == 65
        assert err.strip() == f"sluice: {csv_file}:3: {message}"
        r = await c.post(
            "/api/suppressions.csv",
            content=csv_file.read_bytes(),
            headers={**auth, "content-type": "text/csv"},
        )
        assert r.status_code == 400
        assert r.json() == {"error": f"line 3: {message}"}

        # All or nothing: the good row of the refused file was not added either.
        assert await s.spool.suppressions.page() == []

        # And a real address goes in through each of them.
        rc, out, err = await run_cli("suppression", "add", "Ok@Example.org", "-c", cfg)
        assert (rc, out.strip()) == (0, "suppressed 1 address"), err
        r = await c.post("/api/suppressions", json={"address": "app@example.org"}, headers=auth)
        assert r.status_code == 201
        entries = {(e.address, e.source) for e in await s.spool.suppressions.page()}
        assert entries == {("ok@example.org", "manual"), ("app@example.org", "api")}
