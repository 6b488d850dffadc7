"""Image operations: the op registry and the built-in ops, one family per module.

Importing :mod:`dagflow.ops` registers every built-in op:

============  ====================================================================
module        ops
============  ====================================================================
load          ``load`` (source)
save          ``save`` (sink)
geometry      ``resize``, ``crop``, ``rotate``, ``flip``
filters       ``gaussian``, ``median``, ``unsharp`` (and :func:`filter_depth`)
intensity     ``normalize``, ``convert``, ``grayscale``, ``equalize``, ``threshold``
composite     ``composite`` (two inputs)
aggregate     ``stats``, ``contact_sheet`` (aggregates)
dispatch      CPU/GPU choice per node; ``gpu`` holds the cupy implementations
============  ====================================================================

Every op keeps its input's dtype (16-bit stays 16-bit) unless changing it is its
purpose, works on 1-4 channel images, and leaves an alpha channel untouched where
moving pixels is not the point (filters and intensity ops act on colour channels only;
geometry moves alpha with the colour). Levels given as parameters are 8-bit (0-255),
scaled to the image's dtype.
"""

from __future__ import annotations

from dagflow.ops import aggregate, composite, dispatch, filters, geometry, intensity, load, save
from dagflow.ops.filters import filter_depth
from dagflow.ops.registry import REQUIRED, OpSpec, Param, get_op, list_ops, register_op

__all__ = [
    "REQUIRED",
    "OpSpec",
    "Param",
    "aggregate",
    "composite",
    "dispatch",
    "filter_depth",
    "filters",
    "geometry",
    "get_op",
    "intensity",
    "list_ops",
    "load",
    "register_op",
    "save",
]

# cupy implementations of resize, gaussian, median, unsharp, normalize and convert,
# imported on first use on a GPU worker only (see dagflow.ops.dispatch)
dispatch.register_builtin_gpu_funcs()
