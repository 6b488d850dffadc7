"""Pillow-compatible resampling as sparse matrices, for the GPU ``resize``.

Pillow's antialiased Lanczos resize (what :func:`dagflow.ops.geometry.resize_array` uses
on the CPU) is separable: each axis is a sparse linear map from input to output pixels,
optionally preceded by an integer box reduction (``reducing_gap``). This module builds
those maps with Pillow's own arithmetic (``precompute_coeffs`` in ``Resample.c``, the box
logic of ``Image.resize`` and ``Image.reduce``), as ``scipy.sparse`` CSR matrices, so that
a GPU can apply them as two sparse-dense products per channel (cupyx) and agree with the
CPU within rounding.

Pure numpy and scipy: no cupy, no Pillow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import sparse

__all__ = ["AxisPlan", "lanczos", "plan_axes", "reduce_matrix", "resample_matrix"]

_LANCZOS_SUPPORT = 3.0


def lanczos(x: np.ndarray) -> np.ndarray:
    """Pillow's Lanczos-3 kernel: ``sinc(x) sinc(x / 3)`` on ``[-3, 3)``."""
    x = np.asarray(x, dtype=np.float64)
    out = np.sinc(x) * np.sinc(x / 3.0)
    out[(x < -3.0) | (x >= 3.0)] = 0.0
    return out


def resample_matrix(in_size: int, out_size: int, box0: float = 0.0,
                    box1: float | None = None) -> sparse.csr_matrix:
    """The ``out_size x in_size`` Lanczos map of ``[box0, box1)`` of the input onto the output.

    Each row holds the normalised weights Pillow computes for that output pixel; the
    kernel may reach input pixels outside the box (clipped to the input).
    """
    box1 = float(in_size if box1 is None else box1)
    scale = (box1 - box0) / out_size
    filterscale = max(scale, 1.0)
    support = _LANCZOS_SUPPORT * filterscale
    rows, cols, vals = [], [], []
    for xx in range(out_size):
        center = box0 + (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # C truncation, as Pillow
        xmax = min(int(center + support + 0.5), in_size)
        if xmax <= xmin:
            continue
        taps = np.arange(xmin, xmax)
        w = lanczos((taps - center + 0.5) / filterscale)
        total = w.sum()
        if total != 0:
            w = w / total
        rows.append(np.full(len(taps), xx))
        cols.append(taps)
        vals.append(w)
    if not rows:
        return sparse.csr_matrix((out_size, in_size))
    return sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows),
                                                     np.concatenate(cols))),
                             shape=(out_size, in_size))


def reduce_matrix(in_size: int, factor: int) -> sparse.csr_matrix:
    """The ``ceil(in/factor) x in_size`` box average of ``Image.reduce`` (a partial last
    block averages the pixels it has)."""
    out_size = -(-in_size // factor)
    cols = np.arange(in_size)
    rows = cols // factor
    counts = np.bincount(rows, minlength=out_size).astype(np.float64)
    return sparse.csr_matrix((1.0 / counts[rows], (rows, cols)), shape=(out_size, in_size))


@dataclass(frozen=True)
class AxisPlan:
    """How one axis is resized: an optional box reduction, then a Lanczos map (or none)."""

    reduce: sparse.csr_matrix | None
    resample: sparse.csr_matrix | None


def plan_axes(width: int, height: int, out_width: int, out_height: int,
              reducing_gap: float | None = 2.0) -> tuple[AxisPlan, AxisPlan]:
    """The ``(x, y)`` plans of ``Image.resize((out_width, out_height), LANCZOS,
    reducing_gap=...)`` for a ``width x height`` image."""
    fx = fy = 1
    if reducing_gap is not None:
        fx = int(width / out_width / reducing_gap) or 1
        fy = int(height / out_height / reducing_gap) or 1
    plans = []
    for size, out, factor in ((width, out_width, fx), (height, out_height, fy)):
        reduce = None
        box1 = float(size)
        in_size = size
        if fx > 1 or fy > 1:
            # Pillow reduces both axes together (one of them possibly by 1)
            reduce = reduce_matrix(size, factor) if factor > 1 else None
            box1 = size / factor
            in_size = -(-size // factor)
        if out == in_size and math.isclose(box1, in_size):
            plans.append(AxisPlan(reduce, None))
        else:
            plans.append(AxisPlan(reduce, resample_matrix(in_size, out, 0.0, box1)))
    return plans[0], plans[1]
