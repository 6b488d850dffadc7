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
============  ====================================================================

and the machinery every op's declaration (:class:`OpSpec`) uses: ``registry``
(:func:`register_op`), ``tiling`` (how an op runs block by block), ``backends`` (array
functions chosen by the array's type; ``gpu`` holds the cupy implementations) and
``dispatch`` (the device a node's items run on, and the fall back to the CPU).

Every op keeps its input's dtype (16-bit stays 16-bit) unless changing it is its
purpose, works on 1-4 channel images, and leaves an alpha channel untouched where
moving pixels is not the point (filters and intensity ops act on colour channels only;
geometry moves alpha with the colour). Levels given as parameters are 8-bit (0-255),
scaled to the image's dtype.
"""

from __future__ import annotations

from dagflow.ops import (
    aggregate,
    backends,
    composite,
    dispatch,
    filters,
    geometry,
    intensity,
    load,
    save,
    tiling,
)
from dagflow.ops.filters import filter_depth
from dagflow.ops.registry import REQUIRED, OpSpec, Param, get_op, list_ops, register_op

__all__ = [
    "REQUIRED",
    "OpSpec",
    "Param",
    "aggregate",
    "backends",
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
    "tiling",
]
