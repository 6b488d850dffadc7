"""The public API is curated: what ``import dagflow`` exports is pinned here."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import dagflow

PUBLIC = {
    "BadInputError", "CircuitOpenError", "Condition", "ConfigError", "DagflowError", "Image",
    "InputError", "InputSet", "ItemError", "ItemTimeoutError", "Node", "OversizeError",
    "Param", "ResourceError", "RunHandle", "RunResult", "TransientError", "UnknownOpError",
    "Workflow", "WorkflowValidationError", "__version__", "get_op", "list_ops",
    "open_image", "register_op", "resolve_inputs", "run",
}


def test_exported_members():
    assert set(dagflow.__all__) >= PUBLIC
    for name in dagflow.__all__:
        assert getattr(dagflow, name) is not None, name


def test_importing_dagflow_does_not_import_distributed_or_cupy():
    code = ("import sys, dagflow, dagflow.workflow; "
            "print('distributed' in sys.modules, 'cupy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_layering():
    root = Path(dagflow.__file__).parent
    for path in (root / "workflow").glob("*.py"):
        assert not {n for n in _imports(path) if n.split(".")[0] in ("dask", "distributed")}, path
    for family in ("ops", "io"):
        for path in (root / family).rglob("*.py"):
            bad = {n for n in _imports(path)
                   if n.startswith(("dagflow.workflow", "dagflow.compile", "dagflow.runtime"))}
            assert not bad, (path, bad)
    plugin = root / "monitor" / "plugin.py"
    if plugin.exists():
        assert not {n for n in _imports(plugin) if n.startswith("bokeh")}
