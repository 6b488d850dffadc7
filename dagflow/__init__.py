"""dagflow: batch image-processing workflows at cluster scale, on Dask.

Declare a workflow (a DAG of image operations) in Python or YAML, point it at images,
and :func:`run` it on an embedded ``LocalCluster`` or any Dask cluster::

    import dagflow

    wf = dagflow.Workflow("thumbnails", [
        dagflow.Node("load", "load", {"auto_orient": True}),
        dagflow.Node("small", "resize", {"long_side": 512}, after=["load"]),
        dagflow.Node("save", "save", {"format": "jpeg", "quality": 85}, after=["small"]),
    ])
    result = dagflow.run(wf, "photos/", "out/")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dagflow import config as config
    from dagflow.exceptions import (
        BadInputError,
        CircuitOpenError,
        ClusterStartError,
        ClusterUnreachableError,
        ConfigError,
        DagflowError,
        InputError,
        ItemError,
        ItemTimeoutError,
        OutputCollisionError,
        OutputError,
        OutputLockedError,
        OversizeError,
        PartialDataError,
        ResourceError,
        StorageError,
        TransientError,
        UnknownOpError,
        UnsafeStateError,
        WorkflowValidationError,
    )
    from dagflow.image import Image
    from dagflow.inputs import InputSet, resolve_inputs
    from dagflow.io.lazy import open_image
    from dagflow.ops.registry import Param, get_op, list_ops, register_op
    from dagflow.runtime import RunHandle, RunResult, run
    from dagflow.workflow import Condition, Node, Workflow

__version__ = "0.1.0"

__all__ = [
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

# Every name is imported on first use: `import dagflow` (and so `dagflow --help`, and
# every worker process, which imports the command's module again) costs nothing until a
# name is used. The runtime imports distributed, the ops numpy, scipy and OpenCV, the
# configuration Dask; open_image (a large TIFF as a lazy xarray.DataArray) dask and xarray.
_LAZY = {
    **dict.fromkeys(
        ["BadInputError", "CircuitOpenError", "ClusterStartError", "ClusterUnreachableError",
         "ConfigError", "DagflowError", "InputError", "ItemError", "ItemTimeoutError",
         "OutputCollisionError", "OutputError", "OutputLockedError", "OversizeError",
         "PartialDataError", "ResourceError", "StorageError", "TransientError", "UnknownOpError",
         "UnsafeStateError", "WorkflowValidationError"], "dagflow.exceptions"),
    "Image": "dagflow.image",
    "InputSet": "dagflow.inputs", "resolve_inputs": "dagflow.inputs",
    "Param": "dagflow.ops.registry", "get_op": "dagflow.ops.registry",
    "list_ops": "dagflow.ops.registry", "register_op": "dagflow.ops.registry",
    "Condition": "dagflow.workflow", "Node": "dagflow.workflow", "Workflow": "dagflow.workflow",
    "run": "dagflow.runtime", "RunResult": "dagflow.runtime", "RunHandle": "dagflow.runtime",
    "open_image": "dagflow.io.lazy",
}


def __getattr__(name: str) -> Any:
    import importlib

    if name == "config":
        return importlib.import_module("dagflow.config")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # found once
        return value
    raise AttributeError(f"module 'dagflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, "config"})
