"""The folder tree is the architecture: no import circles, no import that runs upward."""

from __future__ import annotations

from pathlib import Path

from tests.layers import ROOT, cycles, import_graph, render_wings, upward, wing_of


def test_no_import_circles() -> None:
    assert cycles(import_graph()) == []


def test_no_wing_imports_upward_or_across_the_spool() -> None:
    assert [str(v) for v in upward(import_graph())] == []


def test_the_checker_sees_a_circle_and_an_upward_import(tmp_path: Path) -> None:
    """The two checks above would pass vacuously if the graph were read wrong."""
    (tmp_path / "relay" / "store").mkdir(parents=True)
    (tmp_path / "admin").mkdir()
    (tmp_path / "relay" / "__init__.py").write_text("")
    (tmp_path / "relay" / "store" / "__init__.py").write_text("")
    (tmp_path / "admin" / "__init__.py").write_text("")
    (tmp_path / "relay" / "config.py").write_text(
        "def f() -> None:\n    from relay import secrets\n"
    )
    (tmp_path / "relay" / "secrets.py").write_text("from relay.config import f\n")
    (tmp_path / "relay" / "store" / "spool.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from relay.daemon import D\n"
    )
    (tmp_path / "relay" / "daemon.py").write_text("from relay.store.spool import x\n")
    graph = import_graph(tmp_path)
    assert cycles(graph) == [
        ["relay.config", "relay.secrets"],
        ["relay.daemon", "relay.store.spool"],
    ]
    assert [str(v) for v in upward(graph)] == [
        "relay.store.spool (store) imports relay.daemon (daemon)"
    ]


def test_every_module_has_a_wing() -> None:
    wings = {m: wing_of(m) for m in import_graph()}
    assert wings["relay.inbound.listener"] == "inbound"
    assert wings["relay.outbound.scheduler"] == "outbound"
    assert wings["relay.store.spool"] == "store"
    assert wings["relay.message"] == "core"
    assert wings["admin.app"] == "admin"
    assert wings["relay.daemon"] == "daemon"
    assert wings["relay.cli.main"] == "cli"


ARCHITECTURE = ROOT / "docs" / "architecture.md"


def test_architecture_doc_shows_the_wings_as_the_code_has_them() -> None:
    """docs/architecture.md's picture is ``python -m tests.layers --wings``, kept true."""
    doc = ARCHITECTURE.read_text()
    block = doc.split("<!-- layers:begin -->\n```\n", 1)[1].split("\n```\n<!-- layers:end -->")[0]
    assert block.splitlines() == list(render_wings(import_graph()))


def test_architecture_doc_layout_names_every_module() -> None:
    doc = ARCHITECTURE.read_text()
    layout = doc.split("## Where each module lives", 1)[1].split("## Why some pieces", 1)[0]
    missing = []
    for module in import_graph():
        leaf = module.rsplit(".", 1)[-1]
        if leaf in ("relay", "admin", "__main__") or (
            module.count(".") and leaf in ("store", "inbound", "outbound", "bounces", "cli", "sql")
        ):
            continue  # packages, not modules
        if f"{leaf}.py" not in layout:
            missing.append(module)
    assert missing == []
