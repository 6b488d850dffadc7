"""The ``bench_header`` op: the no-op workflow's only node.

It reads an image's header (:func:`dagflow.io.probe_header`, a few kilobytes, no
decoding) and returns a 1x1 image, so that everything else a run does -- scheduling,
the per-item loop, records, checkpoints, monitoring -- is dagflow's own cost. Registered
on import; workers import this module when they unpickle the op.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dagflow.image import Image
from dagflow.ops.registry import register_op

__all__ = ["bench_header", "header_kernel", "noop_workflow"]

_PIXEL = np.zeros((1, 1, 1), np.uint8)


def header_kernel(path: str) -> dict[str, Any]:
    """The work of one item: read its header."""
    from dagflow.io import probe_header

    return probe_header(path)


@register_op("bench_header", kind="source", replace=True)
def bench_header(path: str) -> Image:
    """Read the image's header only; return a 1x1 placeholder image."""
    header = header_kernel(path)
    return Image(_PIXEL, {"format": header["format"], "source_width": header["width"],
                          "source_height": header["height"]})


def noop_workflow() -> Any:
    from dagflow import Node, Workflow

    return Workflow("noop", [Node("header", "bench_header")])
