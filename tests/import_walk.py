"""The import graph of src/finexp, read with ``ast`` (nothing is imported): tests/test_import_graph.py checks it has
no cycles, tests/test_dependencies.py that every third-party import is declared.

Import-time edges are the module-level imports (those that run when a module is imported). Imports inside functions
run later and cannot create an import-time cycle, so they are edges only with ``deferred=True``; imports under
``if TYPE_CHECKING:`` never are. ``from x import y`` is an edge to ``x.y`` when ``y`` is a submodule of ``x`` and to
``x`` otherwise (the name must then be in ``x``'s namespace). The implicit import of a module's parent packages is
not an edge: a package is in ``sys.modules`` before its submodules run, so a submodule importing a sibling never
waits on it.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "finexp"


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` at ``path:line`` when it is imported."""

    source: str
    target: str
    path: str
    line: int


def module_names(src: Path = SRC, root: str = ROOT) -> dict[str, Path]:
    """Every module of ``root`` under ``src``: ``finexp.data.splits`` -> its file (a package: its __init__.py)."""
    modules = {}
    for path in sorted((src / root).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_statements(body: list[ast.stmt], deferred: bool = False) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of ``body`` that run when the module runs: the top level and the blocks in it (if, try,
    with, for, class bodies); with ``deferred``, also those inside functions. Never those under ``if TYPE_CHECKING``.
    """
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not deferred:
            continue  # runs when called, not when imported
        blocks: list[list[ast.stmt]] = []
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            blocks = [node.orelse]  # type hints only: never imported at run time
        else:
            for name in ("body", "orelse", "finalbody"):
                blocks.append(getattr(node, name, []))
            blocks += [part.body for part in [*getattr(node, "handlers", []), *getattr(node, "cases", [])]]
        for block in blocks:
            if isinstance(block, list):
                found += _import_statements(block, deferred)
    return found


def _absolute(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of ``from <level dots><name> import ...`` written in ``module``."""
    if level == 0:
        return name or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, name] if name else base)


def import_edges(modules: dict[str, Path], root: str = ROOT, src: Path = SRC, deferred: bool = False) -> list[Edge]:
    """The import edges between the modules of ``root`` (files under ``src``, shown as ``src/...``): those that run
    at import time, and with ``deferred`` also the imports inside functions."""
    edges = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in _import_statements(tree.body, deferred):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _absolute(module, is_package, node.level, node.module)
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.append(submodule if submodule in modules else base)
            for target in targets:
                while target and target not in modules:  # `import finexp.data.missing_attr` style: the nearest module
                    target = target.rpartition(".")[0]
                if target and target != module and (target == root or target.startswith(root + ".")):
                    edges.append(Edge(module, target, str(Path(src.name, path.relative_to(src))), node.lineno))
    return edges


def find_cycles(edges: list[Edge]) -> list[list[Edge]]:
    """One shortest cycle through each strongly connected component that has more than one module (Tarjan)."""
    graph: dict[str, list[Edge]] = {}
    for edge in edges:
        graph.setdefault(edge.source, []).append(edge)
        graph.setdefault(edge.target, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:  # recursive: the graph is a few hundred modules deep at most
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for edge in graph[node]:
            if edge.target not in index:
                visit(edge.target)
                low[node] = min(low[node], low[edge.target])
            elif edge.target in on_stack:
                low[node] = min(low[node], index[edge.target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)

    cycles = []
    for component in components:
        start = min(component)
        # breadth-first from start back to start, inside the component: the shortest cycle through `start`
        paths: dict[str, list[Edge]] = {start: []}
        frontier = [start]
        cycle: list[Edge] | None = None
        while frontier and cycle is None:
            following = []
            for node in frontier:
                for edge in sorted(graph[node], key=lambda e: e.target):
                    if edge.target not in component:
                        continue
                    if edge.target == start:
                        cycle = [*paths[node], edge]
                        break
                    if edge.target not in paths:
                        paths[edge.target] = [*paths[node], edge]
                        following.append(edge.target)
                if cycle is not None:
                    break
            frontier = following
        assert cycle is not None  # a strongly connected component always has one
        cycles.append(cycle)
    return sorted(cycles, key=lambda c: c[0].source)


def describe(cycle: list[Edge]) -> str:
    """``a -> b -> a`` followed by the import line of each step."""
    chain = " -> ".join([cycle[0].source, *(e.target for e in cycle)])
    steps = "\n".join(f"    {e.source} -> {e.target}  ({e.path}:{e.line})" for e in cycle)
    return f"{chain}\n{steps}"


def third_party_imports(modules: dict[str, Path], root: str = ROOT, src: Path = SRC) -> dict[str, list[str]]:
    """Top-level names of the absolute imports of ``modules`` that are neither the standard library nor ``root``,
    those inside functions included (the feature that runs them needs them): ``{"numpy": ["src/x.py:3", ...]}``."""
    found: dict[str, list[str]] = {}
    for path in modules.values():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _import_statements(tree.body, deferred=True):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif node.level == 0 and node.module:
                names = [node.module]
            else:
                continue  # relative: inside the package
            for name in names:
                top = name.partition(".")[0]
                if top != root and top not in sys.stdlib_module_names:
                    found.setdefault(top, []).append(f"{Path(src.name, path.relative_to(src))}:{node.lineno}")
    return found
