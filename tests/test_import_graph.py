"""No import cycles in src/finexp: the module-level imports (those that run when a module is imported) form a DAG,
and so do all imports, those inside functions included. The walk is tests/import_walk.py (``ast``, nothing imported).
"""

from __future__ import annotations

from pathlib import Path

from import_walk import ROOT, Edge, describe, find_cycles, import_edges, module_names


def test_src_finexp_has_no_import_cycles():
    modules = module_names()
    edges = import_edges(modules)
    assert len(modules) > 50 and len(edges) > 50  # the walk found the package, and its imports
    cycles = find_cycles(edges)
    assert not cycles, f"{len(cycles)} import cycle(s) in src/{ROOT}:\n" + "\n".join(map(describe, cycles))


def test_src_finexp_has_no_cycles_through_function_level_imports():
    """A function-level import that closes a cycle runs, but hides a layering fault: two modules that each need
    the other (the cycles of issue 16, build -> evaluate -> build and report <-> learning_curve, were of this kind).
    """
    edges = import_edges(module_names(), deferred=True)
    cycles = find_cycles(edges)
    assert not cycles, (
        f"{len(cycles)} cycle(s) in src/{ROOT} once imports inside functions count (move the shared code down a "
        "layer, or pass the object in):\n" + "\n".join(map(describe, cycles))
    )


def _package(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for name, text in files.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return module_names(tmp_path, "pkg")


def _pairs(edges: list[Edge]) -> set[tuple[str, str]]:
    return {(e.source, e.target) for e in edges}


def test_the_walk_resolves_submodules_relative_imports_and_skips_function_level_imports(tmp_path):
    modules = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg import b\nfrom pkg.sub import helper\nimport json\n",
            "b.py": "from .sub import leaf\n\ndef later():\n    from pkg import a\n",
            "sub/__init__.py": "from .leaf import helper\n",
            "sub/leaf.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n"
                "try:\n    from .. import b\nexcept ImportError:\n    pass\n"
            ),
        },
    )
    assert set(modules) == {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.leaf"}
    edges = import_edges(modules, "pkg", tmp_path)
    assert _pairs(edges) == {
        ("pkg.a", "pkg.b"),  # `from pkg import b`: b is a submodule
        ("pkg.a", "pkg.sub"),  # `from pkg.sub import helper`: a name in pkg.sub's namespace
        ("pkg.b", "pkg.sub.leaf"),  # relative, a submodule; the import inside later() is no edge
        ("pkg.sub", "pkg.sub.leaf"),
        ("pkg.sub.leaf", "pkg.b"),  # inside try: runs at import; the TYPE_CHECKING import does not
    }
    (cycle,) = find_cycles(edges)
    assert [e.source for e in cycle] == ["pkg.b", "pkg.sub.leaf"] and cycle[-1].target == "pkg.b"
    assert describe(cycle).startswith("pkg.b -> pkg.sub.leaf -> pkg.b\n")
    assert f"{tmp_path.name}/pkg/sub/leaf.py:5" in describe(cycle)
    deferred = import_edges(modules, "pkg", tmp_path, deferred=True)
    assert _pairs(deferred) - _pairs(edges) == {("pkg.b", "pkg.a")}  # the import inside later()
    assert [e.source for e in find_cycles(deferred)[0]] == ["pkg.a", "pkg.b"]  # a -> b -> a, through later()


def test_a_dag_has_no_cycles(tmp_path):
    modules = _package(
        tmp_path,
        {"__init__.py": "", "a.py": "from . import b, c\n", "b.py": "from .c import x\n", "c.py": "x = 1\n"},
    )
    edges = import_edges(modules, "pkg", tmp_path)
    assert _pairs(edges) == {("pkg.a", "pkg.b"), ("pkg.a", "pkg.c"), ("pkg.b", "pkg.c")}
    assert find_cycles(edges) == []
