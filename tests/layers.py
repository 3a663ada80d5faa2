"""The import graph of ``relay/`` and ``admin/``, read from the code, and its layers.

``python -m tests.layers`` prints every module under its layer with what it
imports from the project; ``python -m tests.layers --wings`` prints the wings and
what each imports: the architecture picture in docs/architecture.md is that output, and
``tests/unit/test_layers.py`` checks that docs/architecture.md still shows it.
``tests/unit/test_layers.py`` fails on a circle or on an import that runs the
wrong way.

Imports inside functions and under ``TYPE_CHECKING`` count too: they hide a
circle or an upward dependency, they do not remove it.

The layers, lowest first (a module may import its own wing and any lower layer):

0. core: ``relay.model``, ``errors``, ``config``, ``secrets``, ``message``,
   ``logsetup``, ``metrics``, ``sdnotify``, ``runner`` (no I/O but config loading)
1. ``relay.store``: the spool, the only SQL
2. ``relay.inbound``, ``relay.outbound``, ``relay.bounces`` and ``relay.notify``: the
   sides of the spool (what comes in, what goes out, what comes back, who is told);
   none imports another
3. ``admin``: the web page over the backend the daemon hands it
4. ``relay.daemon``: the composition root
5. ``relay.cli``: the ``sluice`` command
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ROOT",
    "Graph",
    "cycles",
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
    "admin": 3,
    "daemon": 4,
    "cli": 5,
}

Graph = dict[str, set[str]]


def wing_of(module: str) -> str:
    """The wing a module belongs to (``core`` for the top-level ``relay.*`` modules)."""
    parts = module.split(".")
    if parts[0] == "admin":
        return "admin"
    wings = ("store", "inbound", "outbound", "bounces", "notify", "cli", "daemon")
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
        line = f"[{rank}] {wing:<9}" + (f" -> {', '.join(uses)}" if uses else "")
        yield line.rstrip()


def main() -> int:
    graph = import_graph()
    lines = render_wings(graph) if "--wings" in sys.argv[1:] else render(graph)
    for line in lines:
        print(line)
    problems = [" <-> ".join(c) for c in cycles(graph)] + [str(v) for v in upward(graph)]
    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
