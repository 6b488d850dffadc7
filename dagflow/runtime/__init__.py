"""The only layer that talks to a live cluster: connecting, running, results.

Its names are imported on first use: the command line reads the exit codes and installs
its signal handling (:mod:`dagflow.runtime.result`, :mod:`dagflow.runtime.signals`)
without importing distributed.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dagflow.runtime.cluster import connect, start_cuda_cluster, start_local_cluster
    from dagflow.runtime.plan import BatchPlan, plan
    from dagflow.runtime.result import (
        EXIT_BREAKER,
        EXIT_FAILED_ITEMS,
        EXIT_INVALID,
        EXIT_OK,
        EXIT_STORAGE,
        RunResult,
    )
    from dagflow.runtime.run import RunHandle, run
    from dagflow.runtime.selection import load_workflow, select_items

__all__ = [
    "EXIT_BREAKER",
    "EXIT_FAILED_ITEMS",
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_STORAGE",
    "BatchPlan",
    "RunHandle",
    "RunResult",
    "connect",
    "load_workflow",
    "plan",
    "run",
    "select_items",
    "start_cuda_cluster",
    "start_local_cluster",
]

_LAZY = {
    **dict.fromkeys(["connect", "start_cuda_cluster", "start_local_cluster"],
                    "dagflow.runtime.cluster"),
    "BatchPlan": "dagflow.runtime.plan", "plan": "dagflow.runtime.plan",
    **dict.fromkeys(["EXIT_BREAKER", "EXIT_FAILED_ITEMS", "EXIT_INVALID", "EXIT_OK",
                     "EXIT_STORAGE", "RunResult"], "dagflow.runtime.result"),
    "RunHandle": "dagflow.runtime.run", "run": "dagflow.runtime.run",
    "load_workflow": "dagflow.runtime.selection",
    "select_items": "dagflow.runtime.selection",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dagflow.runtime' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """``run`` and ``plan`` name functions here, not the submodules of the same names.

    Importing a submodule binds it on its package: once ``dagflow.runtime.run`` (the
    module) is imported, ``from dagflow.runtime import run`` would give the module.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("run", "plan") and isinstance(value, types.ModuleType):
            return  # the submodule stays in sys.modules; the name keeps the function
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
