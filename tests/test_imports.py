"""The package's import graph: no circle among fastal's modules, and selection never imports
training (fastal/select/ scores and ranks with whatever model it is handed).

The graph is read from the source (AST), not by importing: an edge for every import of a
fastal module anywhere in a module (module level, class bodies, ``if TYPE_CHECKING:`` blocks
and inside functions): an import deferred into a function still makes the two modules depend
on each other, and a circle there is still a circle of meaning.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fastal

ROOT = Path(fastal.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """fastal modules imported anywhere under ``node``."""
    found = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import):
            found += [a.name for a in child.names]
        elif isinstance(child, ast.ImportFrom):
            if child.level:  # relative: resolve against this module's package
                base = module.split(".")
                base = base[: len(base) - child.level + (1 if is_package else 0)]
                target = ".".join(base + ([child.module] if child.module else []))
            else:
                target = child.module or ""
            # `from pkg import sub` imports the submodule sub when there is one.
            found += [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in child.names]
        found += _imports(child, module, is_package)
    return [m for m in found if m == "fastal" or m.startswith("fastal.")]


def graph() -> dict[str, set[str]]:
    out = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        found = _imports(tree, name, path.name == "__init__.py")
        edges = {m if m in MODULES else m.rsplit(".", 1)[0] for m in found}  # a name's module
        out[name] = {m for m in edges if m in MODULES and m != name}
    return out


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_a_circle_and_a_submodule_import() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    g = graph()
    assert "fastal.kernels.ops" in g["fastal.kernels"]  # `from fastal.kernels.ops import ...`
    assert "fastal.errors" in g["fastal.pool"]
    assert "fastal.train" in g["fastal.loop"]  # imported inside functions only


def test_no_import_circle_inside_fastal() -> None:
    assert cycles(graph()) == []


def test_selection_never_imports_training() -> None:
    g = graph()
    bad = {m: sorted(t for t in g[m] if t == "fastal.train" or t.startswith("fastal.train.")) for m in g}
    assert {m: t for m, t in bad.items() if m.startswith("fastal.select") and t} == {}
