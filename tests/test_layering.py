"""The import directions of DESIGN.md, read from the source with ``ast``.

Every import counts, at module level or inside a function: a deferred import hides a
dependency from Python's import machinery, not from the design (``plan`` importing ``run``
inside a function still depends on it, and a cycle of such imports is still two modules
that cannot be understood apart). Imports under ``if TYPE_CHECKING:`` do not count: they
are annotations, never executed.

A package's ``__init__`` is not a module of the graph: it gathers its package's modules
(the op registry's built-ins, the CLI's subcommands), so a module's import of its own
package is read as an import of the submodule it names (``from dagflow.ops import gpu``
is ``dagflow.ops.gpu``) or else of nothing inside the package.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

import dagflow

ROOT = Path(dagflow.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


#: Every module of dagflow, by dotted name.
MODULES: dict[str, Path] = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
PACKAGES = {name for name, path in MODULES.items() if path.name == "__init__.py"}


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(name: str, *, in_functions: bool = True) -> set[str]:
    """The modules that module ``name`` imports, as absolute names.

    ``from package import name`` is ``package.name`` when that is a dagflow module, else
    ``package``; relative imports are resolved. ``in_functions=False``: only what runs
    when the module is imported (module level and class bodies).
    """
    path = MODULES[name]
    package = name if name in PACKAGES else name.rpartition(".")[0]
    found: set[str] = set()
    todo: list[ast.AST] = [ast.parse(path.read_text(encoding="utf-8"))]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _type_checking(node):
            todo.extend(node.orelse)
            continue
        if not in_functions and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
        todo.extend(ast.iter_child_nodes(node))
    found.discard(name)
    return found


def within(names: Iterable[str], *prefixes: str) -> set[str]:
    """The names that are one of ``prefixes`` or inside one of them."""
    return {n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)}


def import_graph(names: Iterable[str], *, in_functions: bool = True) -> dict[str, set[str]]:
    """Module -> the modules of ``names`` it imports; packages' ``__init__`` left out."""
    nodes = set(names) - PACKAGES
    return {n: imports(n, in_functions=in_functions) & nodes for n in nodes}


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_reader_finds_imports_anywhere_and_cycles():
    """The tools of this file, on dagflow itself and on a small graph."""
    assert "dagflow.ops.gpu" in imports("dagflow.ops.dispatch")  # inside a function
    assert "dagflow.runtime.cluster" in imports("dagflow.runtime.run")  # module level
    assert "dagflow.ops.gpu" not in imports("dagflow.ops.dispatch", in_functions=False)
    assert "dagflow.io.lazy" not in imports("dagflow")  # under TYPE_CHECKING only
    assert "dagflow.exceptions" in imports("dagflow.io.atomic")
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": set()}
    assert cycles(graph) == [["a", "b", "c"], ["d", "e"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_workflow_imports_no_dask():
    for name in within(MODULES, "dagflow.workflow"):
        assert not within(imports(name), "dask", "distributed"), name


@pytest.mark.parametrize("family", ["dagflow.ops", "dagflow.io"])
def test_ops_and_io_never_import_the_layers_above_them(family):
    for name in within(MODULES, family):
        above = within(imports(name), "dagflow.workflow", "dagflow.compile", "dagflow.runtime")
        assert not above, (name, above)


#: What compile may import of dagflow: the declarations it compiles (workflow, the op
#: registry, retry policy, resources, configuration) and the task functions its graphs
#: call (dagflow.execute). The code those functions run (readers, writers, op kernels,
#: the tiled path, monitoring) and the runtime above it stay out.
COMPILE_MAY_IMPORT = ("dagflow.compile", "dagflow.workflow", "dagflow.ops.registry",
                      "dagflow.recovery.policy", "dagflow.resources", "dagflow.config",
                      "dagflow.exceptions", "dagflow.execute")


def test_compile_imports_no_worker_code_beyond_the_task_functions():
    for name in within(MODULES, "dagflow.compile"):
        ours = within(imports(name), "dagflow") - PACKAGES
        assert ours <= within(ours, *COMPILE_MAY_IMPORT), (name, ours)
        assert not within(imports(name), "distributed"), name


def test_the_scheduler_plugin_never_imports_bokeh():
    assert not within(imports("dagflow.monitor.plugin"), "bokeh")


@pytest.mark.parametrize("name", sorted(within(MODULES, "dagflow.runtime") - PACKAGES))
def test_no_import_cycle_inside_runtime(name):
    on_cycles = [c for c in cycles(import_graph(within(MODULES, "dagflow.runtime")))
                 if name in c]
    assert not on_cycles, on_cycles


def test_no_module_level_import_cycle_anywhere():
    """At import time no two modules of dagflow wait for each other (such a cycle hands
    one of them a partly initialised module, depending on which is imported first)."""
    assert cycles(import_graph(MODULES, in_functions=False)) == []
