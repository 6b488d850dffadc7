"""``resize`` on a lazy image, block by block: the op's tiled implementation.

Each output block covers the output pixels whose centres fall in one input block; it is
resampled from that block plus an overlap of the Lanczos support with Pillow's ``box``
(pure Lanczos: ``reducing_gap`` is not used), so the result equals the whole-image
:func:`~dagflow.ops.geometry.resize_array` with ``reducing_gap=None`` within a level, for
any factor, integer or fractional. :mod:`dagflow.ops.geometry` declares it as
``resize``'s tiling.

This module imports Dask only when an image is resized.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image as PILImage

from dagflow.ops._common import dtype_max, from_float

__all__ = ["resize_lazy"]

_LANCZOS_SUPPORT = 3.0


def _resize_block(block: np.ndarray, out_w: int, out_h: int,
                  box: tuple[float, float, float, float], alpha: bool) -> np.ndarray:
    """Pillow's pure Lanczos resize of the ``box`` region of ``block`` (which may hold
    pixels outside the box for the kernel to use), as :func:`~dagflow.ops.geometry.
    resize_array` with ``reducing_gap=None``."""
    lanczos = PILImage.Resampling.LANCZOS
    _h, _w, c = block.shape
    if block.dtype == np.uint8 and (c in (1, 3) or (c in (2, 4) and alpha)):
        src = PILImage.fromarray(np.ascontiguousarray(block[:, :, 0] if c == 1 else block))
        out = np.asarray(src.resize((out_w, out_h), lanczos, box=box, reducing_gap=None))
        return out.reshape(out_h, out_w, c).copy()
    dtype = block.dtype
    top = dtype_max(dtype)
    out = np.empty((out_h, out_w, c), dtype=dtype)
    n_colour = c - 1 if alpha else c
    coverage = safe = None

    def resample(plane: np.ndarray) -> np.ndarray:
        return np.asarray(PILImage.fromarray(plane).resize((out_w, out_h), lanczos, box=box,
                                                           reducing_gap=None))

    if alpha:
        a = block[:, :, -1].astype(np.float32) / np.float32(top)
        a_small = resample(a)
        out[:, :, -1] = from_float(np.clip(a_small, 0.0, 1.0) * top, dtype)
        coverage = a
        safe = np.where(a_small > 1e-6, a_small, 1.0).astype(np.float32)
    for ch in range(n_colour):
        plane = block[:, :, ch].astype(np.float32)
        if coverage is not None:
            plane *= coverage
        small = resample(plane)
        if safe is not None:
            small = small / safe
        out[:, :, ch] = from_float(small, dtype)
    return out


def _bounds(chunks: Sequence[int]) -> list[int]:
    return [0, *np.cumsum(chunks).tolist()]


def resize_lazy(array: Any, width: int, height: int, *, alpha: bool = False) -> Any:
    """Resize a lazy ``(y, x, c)`` dask array to ``height x width``, blockwise.

    Each output block covers the output pixels whose centres fall in one input block;
    it is resampled from that block plus an overlap of the Lanczos support (no overlap
    at the image's edges, where Pillow clips the kernel as on the whole image).
    """
    import dask.array as da

    in_h, in_w = int(array.shape[0]), int(array.shape[1])
    if (in_w, in_h) == (width, height):
        return array
    sy, sx = in_h / height, in_w / width
    depth_y = math.ceil(_LANCZOS_SUPPORT * max(sy, 1.0)) + 2
    depth_x = math.ceil(_LANCZOS_SUPPORT * max(sx, 1.0)) + 2
    # every input block needs room for the overlap and at least a few output pixels
    min_y = max(2 * depth_y, math.ceil(4 * sy))
    min_x = max(2 * depth_x, math.ceil(4 * sx))
    if min(array.chunks[0]) < min_y or min(array.chunks[1]) < min_x:
        array = array.rechunk({0: max(min_y, max(array.chunks[0])),
                               1: max(min_x, max(array.chunks[1]))})
        array = array.rechunk({0: _even_chunks(in_h, max(array.chunks[0]), min_y),
                               1: _even_chunks(in_w, max(array.chunks[1]), min_x)})
    ybounds, xbounds = _bounds(array.chunks[0]), _bounds(array.chunks[1])
    oy = [round(b * height / in_h) for b in ybounds]
    ox = [round(b * width / in_w) for b in xbounds]
    out_chunks = (tuple(np.diff(oy).tolist()), tuple(np.diff(ox).tolist()),
                  (int(array.shape[2]),))
    padded = da.overlap.overlap(array, depth={0: depth_y, 1: depth_x, 2: 0},
                                boundary={0: "none", 1: "none", 2: "none"})

    def block(b: np.ndarray, block_id: tuple[int, int, int] | None = None) -> np.ndarray:
        i, j, _ = block_id  # type: ignore[misc]
        top = ybounds[i] - (depth_y if i > 0 else 0)
        left = xbounds[j] - (depth_x if j > 0 else 0)
        out_h, out_w = oy[i + 1] - oy[i], ox[j + 1] - ox[j]
        if out_h <= 0 or out_w <= 0:
            return np.empty((max(out_h, 0), max(out_w, 0), b.shape[2]), dtype=b.dtype)
        box = (ox[j] * sx - left, oy[i] * sy - top, ox[j + 1] * sx - left,
               oy[i + 1] * sy - top)
        return _resize_block(b, out_w, out_h, box, alpha)

    return da.map_blocks(block, padded, chunks=out_chunks, dtype=array.dtype,
                         meta=np.empty((0, 0, 0), dtype=array.dtype))


def _even_chunks(total: int, target: int, minimum: int) -> tuple[int, ...]:
    """Chunks of about ``target`` whose smallest is at least ``minimum`` (when possible)."""
    n = max(1, total // max(target, 1))
    if total // n < minimum:
        n = max(1, total // minimum)
    base, rest = divmod(total, n)
    return tuple(base + (1 if k < rest else 0) for k in range(n))
