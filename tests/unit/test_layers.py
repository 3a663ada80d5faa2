"""The folder tree is the architecture: no import circles, no import that runs upward."""

from __future__ import annotations

import inspect
from pathlib import Path

from relay.store.spool import Spool
from relay.store.suppressions import Suppressions
from tests.layers import (
    ROOT,
    SPOOL_READS,
    SPOOL_WRITES,
    SUPPRESSION_READS,
    SUPPRESSION_WRITES,
    cycles,
    front_end_writes,
    import_graph,
    render_wings,
    upward,
    wing_of,
)


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


def test_front_ends_write_to_the_store_only_through_operations() -> None:
    """admin/ and relay/cli/ call no store write method and import nothing behind the facade."""
    assert [str(r) for r in front_end_writes()] == []


def _async_methods(cls: type) -> set[str]:
    return {
        name
        for name in dir(cls)
        if not name.startswith("_") and inspect.iscoroutinefunction(getattr(cls, name))
    }


def test_every_store_method_is_a_read_or_a_write() -> None:
    """A new store method must be sorted here, or the check above would not know it."""
    assert not SPOOL_WRITES & SPOOL_READS
    assert _async_methods(Spool) == SPOOL_WRITES | SPOOL_READS
    assert not SUPPRESSION_WRITES & SUPPRESSION_READS
    assert _async_methods(Suppressions) == SUPPRESSION_WRITES | SUPPRESSION_READS


def test_the_checker_sees_a_front_end_writing(tmp_path: Path) -> None:
    """The check above would pass vacuously if it could not see a write put back."""
    for pkg in ("relay", "relay/cli", "admin", "relay/operations"):
        (tmp_path / pkg).mkdir(parents=True, exist_ok=True)
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "admin" / "pages.py").write_text(
        "from relay.store.spool import NewMessage, Spool\n"
        "from relay.store.writer import Writer\n"
        "import relay.store.outbox\n"
        "async def add(st, names: set[str], request) -> None:\n"
        "    names.add('x')  # a set, not the store\n"
        "    request.session.clear()\n"
        "    await st.backend.spool.suppressions.add('a@example.org')\n"
        "    await st.backend.spool.delete('Q1')\n"
        "    await st.backend.spool.list_queue()  # a read\n"
    )
    (tmp_path / "relay" / "cli" / "main.py").write_text(
        "async def retry(spool, versions) -> None:\n"
        "    await spool.retry_now('Q1')\n"
        "    await versions.revoke_admin_sessions()\n"
    )
    # The operations layer is where the writes belong: not reported.
    (tmp_path / "relay" / "operations" / "queue.py").write_text(
        "async def retry(spool) -> None:\n    await spool.retry_now('Q1')\n"
    )
    assert [str(r) for r in front_end_writes(tmp_path)] == [
        "admin.pages:1: imports NewMessage from relay.store.spool",
        "admin.pages:2: imports relay.store.writer",
        "admin.pages:3: imports relay.store.outbox",
        "admin.pages:7: calls st.backend.spool.suppressions.add()",
        "admin.pages:8: calls st.backend.spool.delete()",
        "relay.cli.main:2: calls spool.retry_now()",
        "relay.cli.main:3: calls versions.revoke_admin_sessions()",
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
    assert wings["relay.operations.queue"] == "operations"


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
            module.count(".")
            and leaf
            in ("store", "inbound", "outbound", "bounces", "operations", "cli", "sql", "pg")
        ):
            continue  # packages, not modules
        if f"{leaf}.py" not in layout:
            missing.append(module)
    assert missing == []
