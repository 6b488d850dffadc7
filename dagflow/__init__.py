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
from dagflow.ops.registry import Param, get_op, list_ops, register_op
from dagflow.workflow import Condition, Node, Workflow

if TYPE_CHECKING:
    from dagflow.io.lazy import open_image
    from dagflow.runtime import RunHandle, RunResult, run

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

# The runtime imports distributed; load it on first use so that `dagflow validate` and
# workflow code stay light.
# open_image (a large TIFF as a lazy xarray.DataArray) imports dask and xarray.
_LAZY = {"run": "dagflow.runtime", "RunResult": "dagflow.runtime", "RunHandle": "dagflow.runtime",
         "open_image": "dagflow.io.lazy"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dagflow' has no attribute {name!r}")
