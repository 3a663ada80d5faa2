"""The import graph of ``relay/`` and ``admin/``, read from the code, and its layers.

``python -m tests.layers`` prints every module under its layer with what it
imports from the project; ``python -m tests.layers --wings`` prints the wings and
what each imports: the architecture picture in docs/architecture.md is that output, and
``tests/unit/test_layers.py`` checks that docs/architecture.md still shows it.
``tests/unit/test_layers.py`` fails on a circle or on an import that runs the
wrong way.

Imports inside functions and under ``TYPE_CHECKING`` count too: they hide a
circle or an upward dependency, they do not remove it.

The front-ends (``admin`` and ``relay.cli``) reach the store only through
``relay.operations`` and the store's read views: ``front_end_writes`` finds a
call of a store write method (``SPOOL_WRITES``, ``SUPPRESSION_WRITES``) in
their code, an import of a store module behind the facade, or of a name that
only a write method takes (``WRITE_INPUTS``).

The layers, lowest first (a module may import its own wing and any lower layer):

0. core: ``relay.model``, ``errors``, ``config``, ``secrets``, ``message``,
   ``logsetup``, ``metrics``, ``sdnotify``, ``runner`` (no I/O but config loading)
1. ``relay.store``: the spool, the only SQL
2. ``relay.inbound``, ``relay.outbound``, ``relay.bounces`` and ``relay.notify``: the
   sides of the spool (what comes in, what goes out, what comes back, who is told);
   none imports another
3. ``relay.operations``: one typed function per operator or app action; the
   only code that calls the store's write methods for a front-end
4. ``admin``: the web page over the backend the daemon hands it
5. ``relay.daemon``: the composition root
6. ``relay.cli``: the ``sluice`` command
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ROOT",
    "SPOOL_READS",
    "SPOOL_WRITES",
    "SUPPRESSION_READS",
    "SUPPRESSION_WRITES",
    "Graph",
    "StoreReach",
    "cycles",
    "front_end_writes",
    "import_graph",
    "render_wings",
    "upward",
    "wing_graph",
    "wing_of",
]

ROOT = Path(__file__).resolve().parents[1]

#: wing -> rank; a module may import modules of its own wing or of a lower rank
RANKS = {
    "core": 0,
    "store": 1,
    "inbound": 2,
    "outbound": 2,
    "bounces": 2,
    "notify": 2,
    "operations": 3,
    "admin": 4,
    "daemon": 5,
    "cli": 6,
}

Graph = dict[str, set[str]]


def wing_of(module: str) -> str:
    """The wing a module belongs to (``core`` for the top-level ``relay.*`` modules)."""
    parts = module.split(".")
    if parts[0] == "admin":
        return "admin"
    wings = ("store", "inbound", "outbound", "bounces", "notify", "operations", "cli", "daemon")
    if len(parts) >= 2 and parts[1] in wings:
        return parts[1]
    return "core"


def _modules(root: Path) -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for pkg in ("relay", "admin"):
        for f in sorted((root / pkg).rglob("*.py")):
            name = ".".join(f.relative_to(root).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = f
    return mods


def import_graph(root: Path = ROOT) -> Graph:
    """Module -> the project modules it imports (anywhere in its file)."""
    mods = _modules(root)

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: Graph = {m: set() for m in mods}
    for m, f in mods.items():
        tree = ast.parse(f.read_text(), str(f))
        base = m if f.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = base.split(".")
                    prefix = ".".join(parts[: len(parts) - node.level + 1])
                    mod = f"{prefix}.{node.module}" if node.module else prefix
                else:
                    mod = node.module or ""
                targets = [mod, *(f"{mod}.{a.name}" for a in node.names)]
            for t in targets:
                r = resolve(t)
                # A package's own parent is not a dependency of its modules.
                if r and r != m and not m.startswith(r + "."):
                    graph[m].add(r)
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@dataclass(frozen=True)
class Violation:
    module: str
    imports: str

    def __str__(self) -> str:
        return (
            f"{self.module} ({wing_of(self.module)}) imports {self.imports} "
            f"({wing_of(self.imports)})"
        )


def upward(graph: Graph) -> list[Violation]:
    """Imports that run up the layers or sideways between the two sides of the spool."""
    bad = []
    for m, deps in sorted(graph.items()):
        wm = wing_of(m)
        for d in sorted(deps):
            wd = wing_of(d)
            if wd != wm and RANKS[wd] >= RANKS[wm]:
                bad.append(Violation(m, d))
    return bad


def render(graph: Graph) -> Iterable[str]:
    """The layered import list, lowest layer first."""
    for wing, rank in sorted(RANKS.items(), key=lambda kv: (kv[1], kv[0])):
        members = sorted(m for m in graph if wing_of(m) == wing)
        if not members:
            continue
        yield f"[{rank}] {wing}"
        for m in members:
            deps = sorted(graph[m])
            yield f"    {m}" + (f"  <- {', '.join(deps)}" if deps else "")


def wing_graph(graph: Graph) -> dict[str, set[str]]:
    """Wing -> the other wings its modules import."""
    out: dict[str, set[str]] = {w: set() for w in RANKS}
    for m, deps in graph.items():
        out[wing_of(m)].update(wing_of(d) for d in deps if wing_of(d) != wing_of(m))
    return out


def render_wings(graph: Graph) -> Iterable[str]:
    """One line per wing, highest layer first: what docs/architecture.md's picture shows."""
    wings = wing_graph(graph)
    for wing, rank in sorted(RANKS.items(), key=lambda kv: (-kv[1], kv[0])):
        uses = sorted(wings[wing], key=lambda w: (-RANKS[w], w))
        line = f"[{rank}] {wing:<10}" + (f" -> {', '.join(uses)}" if uses else "")
        yield line.rstrip()


# --------------------------------------------------------- front-ends and the store

#: ``Spool`` methods that change the spool: only ``relay.operations`` calls them
#: for a front-end (the daemon's own parts call them directly)
SPOOL_WRITES = frozenset(
    {
        "enqueue",
        "enqueue_dsn",
        "claim",
        "claim_due",
        "finish",
        "release",
        "requeue_inflight",
        "requeue_expired_leases",
        "retry_now",
        "delete",
        "control",
        "hold_claimed",
        "expire_held",
        "pause_provider",
        "resume_provider",
        "end_expired_pauses",
        "record_audit",
        "prune",
        "prune_notifications",
        "add_events",
        "outbox_next",
        "outbox_delivered",
        "outbox_failed",
        "counter_add",
        "counter_prune",
        "meta_set",
        "save_oauth_grant",
        "oauth_grant_failed",
        "revoke_admin_sessions",
        "node_join",
        "node_beat",
        "node_leave",
        "counter_reserve",
        "counter_return",
        "rate_reserve",
        "block_provider",
        "admin_session_key",
    }
)
#: ``Spool`` methods a front-end may call: reads, the lifecycle, and
#: ``probe_write`` (``/healthz`` asks whether a write fits again; it leaves nothing)
SPOOL_READS = frozenset(
    {
        "open",
        "aclose",
        "probe_write",
        "short_of_room",
        "oauth_grant",
        "meta_get",
        "counter_get",
        "counter_since",
        "counts_by_status",
        "count_selected",
        "body",
        "get",
        "raw",
        "list_queue",
        "queue_marks",
        "list_log",
        "oldest_pending",
        "provider_failures",
        "attempt_buckets",
        "pauses",
        "audit_log",
        "waiting_via",
        "admin_session_version",
        "outbox_recent",
        "outbox_counts",
        "node_row",
        "list_nodes",
        "provider_blocks",
    }
)
#: ``Suppressions`` (``spool.suppressions``) methods that change the list
SUPPRESSION_WRITES = frozenset(
    {"record_bounce", "record_dsn", "verp_key", "add", "add_many", "remove"}
)
SUPPRESSION_READS = frozenset(
    {"active", "active_many", "page", "entries_of", "scopes", "count_by_source", "bounces_of"}
    | {"bounce_raw", "unmatched", "unmatched_count"}
)
#: the wings that are front-ends
FRONT_ENDS = ("admin", "cli")
#: the store modules a front-end may import: the facade and the suppression
#: list (for their read views and value types), the lock (who runs) and the
#: daemon's status file beside it (what it answered: read, never written there)
FRONT_END_STORE_MODULES = frozenset(
    {
        "relay.store",
        "relay.store.spool",
        "relay.store.suppressions",
        "relay.store.lock",
        "relay.store.node_status",
    }
)
#: store names that are only ever the input of a write method
WRITE_INPUTS = frozenset({"NewMessage", "NewBounce", "Control", "Finish", "new_queue_id"})

# A generic method name (``add``, ``delete``) is a store write only on a
# receiver that names the store; a name with an underscore (``retry_now``,
# ``revoke_admin_sessions``) is the store's own wherever it is called.
_STORE_RECEIVER = ("spool", "suppressions", "versions")


@dataclass(frozen=True)
class StoreReach:
    """A front-end module reaching past the operations layer into the store."""

    module: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line}: {self.what}"


def _reaches(module: str, tree: ast.AST) -> Iterable[StoreReach]:
    writes = SPOOL_WRITES | SUPPRESSION_WRITES
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            receiver = ast.unparse(node.func.value)
            named = any(word in receiver.lower() for word in _STORE_RECEIVER)
            if name in writes and ("_" in name or named):
                yield StoreReach(module, node.lineno, f"calls {receiver}.{name}()")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("relay.store."):
                    if alias.name not in FRONT_END_STORE_MODULES:
                        yield StoreReach(module, node.lineno, f"imports {alias.name}")
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            mod = node.module
            if mod != "relay.store" and not mod.startswith("relay.store."):
                continue
            if mod not in FRONT_END_STORE_MODULES:
                yield StoreReach(module, node.lineno, f"imports {mod}")
                continue
            for alias in node.names:
                # ``from relay.store import writer`` imports a module behind the facade.
                sub = f"{mod}.{alias.name}" if mod == "relay.store" else None
                inside = (
                    sub is not None
                    and alias.name.islower()
                    and sub not in (FRONT_END_STORE_MODULES)
                )
                if alias.name in WRITE_INPUTS or inside:
                    yield StoreReach(module, node.lineno, f"imports {alias.name} from {mod}")


def front_end_writes(root: Path = ROOT) -> list[StoreReach]:
    """Where ``admin`` or ``relay.cli`` writes to the store without ``relay.operations``."""
    found: list[StoreReach] = []
    for m, f in _modules(root).items():
        if wing_of(m) in FRONT_ENDS:
            found.extend(_reaches(m, ast.parse(f.read_text(), str(f))))
    return sorted(found, key=lambda r: (r.module, r.line, r.what))


def main() -> int:
    graph = import_graph()
    lines = render_wings(graph) if "--wings" in sys.argv[1:] else render(graph)
    for line in lines:
        print(line)
    problems = [" <-> ".join(c) for c in cycles(graph)] + [str(v) for v in upward(graph)]
    problems += [str(r) for r in front_end_writes()]
    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
