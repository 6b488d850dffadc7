"""The public API is curated: what ``import dagflow`` exports is pinned here, by equality,
so that a name cannot appear in it or vanish from it unnoticed.

The import directions between dagflow's layers are tested in ``test_layering.py``.
"""

from __future__ import annotations

import inspect
import subprocess
import sys

import dagflow

EXPORTED = [
    "BadInputError",
    "CircuitOpenError",
    "ClusterStartError",
    "ClusterUnreachableError",
    "Condition",
    "ConfigError",
    "DagflowError",
    "Image",
    "InputError",
    "InputSet",
    "ItemError",
    "ItemTimeoutError",
    "Node",
    "OutputCollisionError",
    "OutputError",
    "OutputLockedError",
    "OversizeError",
    "Param",
    "PartialDataError",
    "ResourceError",
    "RunHandle",
    "RunResult",
    "StorageError",
    "TransientError",
    "UnknownOpError",
    "UnsafeStateError",
    "Workflow",
    "WorkflowValidationError",
    "__version__",
    "get_op",
    "list_ops",
    "open_image",
    "register_op",
    "resolve_inputs",
    "run",
]


def test_exported_members():
    assert sorted(dagflow.__all__) == EXPORTED
    assert len(set(dagflow.__all__)) == len(dagflow.__all__)
    for name in dagflow.__all__:
        assert getattr(dagflow, name) is not None, name
    star: dict[str, object] = {}
    exec("from dagflow import *", star)  # the lazy names too
    assert sorted(set(star) - {"__builtins__"}) == EXPORTED


def test_every_public_name_of_the_package_is_exported():
    """What ``dagflow/__init__.py`` defines or imports for users is in ``__all__`` (its
    submodules and the typing helpers it uses itself aside)."""
    own = {"annotations", "TYPE_CHECKING", "Any"}
    public = {name for name, value in vars(dagflow).items()
              if not name.startswith("_") and not inspect.ismodule(value)} - own
    assert public <= set(dagflow.__all__), public - set(dagflow.__all__)


def test_importing_dagflow_does_not_import_distributed_or_cupy():
    code = ("import sys, dagflow, dagflow.workflow; "
            "print('distributed' in sys.modules, 'cupy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]
