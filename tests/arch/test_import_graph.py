"""The import graph of ``owl/``: the library core never imports the toy world, and there are no cycles.

Every import counts, module-level or inside a function: a lazy import that hides a cycle is still a cycle.
Only ``if TYPE_CHECKING:`` blocks are left out (they never run). An edge goes to the most specific ``owl``
module named (``from owl.models import x`` is an edge to ``owl.models.x`` when that is a module, else to the
package ``owl.models``).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "owl"
# The CLI wires every part together, so it may import the world; owl.world itself uses the core.
WORLD_ALLOWED = {"owl.cli", "owl.eval.world"}  # owl eval world wraps owl.world.evaluate


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, this: str, is_pkg: bool, known: set[str]) -> set[str]:
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "owl":
                    out.add(_closest(alias.name, known))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = this.split(".") if is_pkg else this.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            if base.split(".")[0] == "owl":
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    out.add(full if full in known else _closest(base, known))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    out.discard(this)
    return out


def _closest(name: str, known: set[str]) -> str:
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: _imports(ast.parse(p.read_text()), m, p.name == "__init__.py", known) for m, p in sorted(mods.items())}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), plus self-loops."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
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

    for v in graph:
        if v not in index:
            strong(v)
    return found


def test_graph_sees_function_level_imports():
    """The checker itself: a lazy import inside a function is an edge (golden: the CLI imports the trainer lazily)."""
    graph = import_graph()
    assert "owl.train.loop" in graph["owl.cli"]
    assert "owl.config" in graph["owl.models.owl"]


def test_core_never_imports_world():
    graph = import_graph()
    offenders = {
        m: sorted(d for d in deps if d == "owl.world" or d.startswith("owl.world."))
        for m, deps in graph.items()
        if not (m == "owl.world" or m.startswith("owl.world.")) and m not in WORLD_ALLOWED
    }
    assert {m: d for m, d in offenders.items() if d} == {}


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
