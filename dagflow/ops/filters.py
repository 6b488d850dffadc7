"""Neighbourhood filters: ``gaussian``, ``median`` and ``unsharp``.

The pixel work lives in pure functions on ``(y, x, c)`` arrays (:func:`gaussian_array`,
:func:`median_array`, :func:`unsharp_array`) so that tiled processing can run them per
block with :func:`dask.array.map_overlap`, using :func:`filter_depth` as the overlap and
``boundary="reflect"`` (the filters' own edge mode, scipy's ``reflect``: ``d c b a | a b
c d``). Filters work on the colour channels only: an alpha channel is passed through
unchanged (pass ``alpha=True`` to the pure functions). Dtypes are kept: integer images
are filtered in 32-bit float, then rounded and clipped.

This module imports no Dask and no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage

from dagflow.image import Image
from dagflow.ops._common import (
    apply_to_colour,
    decoded_bytes,
    dtype_max,
    from_float,
    has_alpha,
    plane_pixels,
    require_dtype,
)
from dagflow.ops.registry import Param, register_op

__all__ = [
    "FILTER_OPS",
    "filter_depth",
    "gaussian",
    "gaussian_array",
    "median",
    "median_array",
    "unsharp",
    "unsharp_array",
]

#: The ops :func:`filter_depth` knows: their output pixel depends on a neighbourhood.
FILTER_OPS = frozenset({"gaussian", "median", "unsharp"})

_MODE = "reflect"


def gaussian_array(
    arr: np.ndarray, sigma: float, truncate: float = 4.0, *, alpha: bool = False
) -> np.ndarray:
    """Gaussian blur of each colour channel of ``arr`` (y, x, c).

    Parameters
    ----------
    arr
        Pixels ``(y, x, c)``, any integer or float dtype.
    sigma
        Standard deviation in pixels, the same along y and x.
    truncate
        The kernel reaches ``truncate * sigma`` pixels each side.
    alpha
        Whether the last channel is alpha (copied unchanged).

    Returns
    -------
    numpy.ndarray
        The blurred pixels, in ``arr``'s dtype.
    """
    require_dtype(arr, "gaussian")
    if int(truncate * float(sigma) + 0.5) <= _BANDED_MAX_RADIUS:
        return _banded_gaussian(arr, float(sigma), float(truncate), alpha)

    def blur(plane: np.ndarray) -> np.ndarray:
        out = ndimage.gaussian_filter(plane, sigma, output=np.float32, mode=_MODE,
                                      truncate=truncate)
        return from_float(out, arr.dtype)

    return apply_to_colour(arr, alpha, blur)


#: Kernel radius up to which :func:`gaussian_array` filters with banded matrix products.
_BANDED_MAX_RADIUS = 64
#: Output rows (vertical pass) and columns (horizontal pass) per matrix product.
_ROW_BLOCK, _COL_BLOCK = 16, 32
#: Largest m*n*k of one product: OpenBLAS computes those in the calling thread, so the
#: filter never starts BLAS threads that would fight a Dask worker's threads for the cores
#: (wherever OPENBLAS_NUM_THREADS is not 1), at a cost of a few more, smaller products.
_BLAS_SERIAL_MNK = 1 << 18


def _span(m: int, k: int) -> int:
    """Columns (or rows) per product of an ``m`` x ``k`` block kept under the threshold."""
    return max(8, _BLAS_SERIAL_MNK // max(1, m * k))


@lru_cache(maxsize=64)
def _band_blocks(n: int, sigma: float, truncate: float, block: int, transposed: bool
                 ) -> tuple[tuple[int, int, int, int, np.ndarray], ...]:
    """The 1-D Gaussian over ``n`` samples as blocks of its (banded) matrix.

    Each block is ``(start, stop, first, last, weights)``: output samples
    ``start:stop`` are ``weights @ input[first:last]``. The sampled kernel and the
    ``reflect`` edges are scipy's, folded into the weights.
    """
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    period = 2 * n
    blocks = []
    for start in range(0, n, block):
        stop = min(n, start + block)
        rows = np.arange(start, stop)[:, None]
        src = (rows + np.arange(-radius, radius + 1)[None, :]) % period
        src = np.where(src >= n, period - 1 - src, src)  # d c b a | a b c d | d c b a
        first, last = int(src.min()), int(src.max()) + 1
        weights = np.zeros((stop - start, last - first))
        np.add.at(weights, (np.broadcast_to(rows - start, src.shape), src - first),
                  np.broadcast_to(kernel, src.shape))
        weights = weights.astype(np.float32)
        blocks.append((start, stop, first, last,
                       np.ascontiguousarray(weights.T) if transposed else weights))
    return tuple(blocks)


def _banded_gaussian(arr: np.ndarray, sigma: float, truncate: float, alpha: bool
                     ) -> np.ndarray:
    """:func:`gaussian_array` as two passes of banded float32 matrix products (BLAS).

    Channel by channel, as scipy's filter (the same kernel, edges and float32
    intermediate, and the same working set: two float32 planes), about three times
    faster than its line-by-line loop.
    """
    h, w, channels = arr.shape
    out = np.empty_like(arr)
    plane = np.empty((h, w), np.float32)
    vertical = np.empty((h, w), np.float32)
    rows = _band_blocks(h, sigma, truncate, _ROW_BLOCK, False)
    columns = _band_blocks(w, sigma, truncate, _COL_BLOCK, True)
    info = np.iinfo(arr.dtype) if arr.dtype.kind in "ui" else None
    # The weights are non-negative and each output's sum to 1: an output lies between
    # its inputs (within float32 rounding, far under 0.5 for 8- and 16-bit values), so
    # rounding alone keeps it in range. Wider integers lose digits in float32: clipped.
    exact_range = info is not None and info.bits <= 16
    n_colour = channels - 1 if alpha else channels
    for c in range(n_colour):
        plane[...] = arr[:, :, c]
        for start, stop, first, last, weights in rows:
            span = _span(stop - start, last - first)
            for col in range(0, w, span):
                np.matmul(weights, plane[first:last, col:col + span],
                          out=vertical[start:stop, col:col + span])
        for start, stop, first, last, weights in columns:
            span = _span(stop - start, last - first)
            for row in range(0, h, span):
                np.matmul(vertical[row:row + span, first:last], weights,
                          out=plane[row:row + span, start:stop])
        if info is not None:  # as from_float: round to nearest and clip, then cast
            np.rint(plane, out=plane)
            if not exact_range:
                np.clip(plane, info.min, info.max, out=plane)
        out[:, :, c] = plane
    if alpha:
        out[:, :, n_colour:] = arr[:, :, n_colour:]
    return out


def median_array(arr: np.ndarray, size: int, *, alpha: bool = False) -> np.ndarray:
    """Median of the ``size`` x ``size`` window around each pixel, per colour channel.

    Computed in the image's own dtype (exact: the median of an odd window is one of its
    pixels).

    Parameters
    ----------
    arr
        Pixels ``(y, x, c)``.
    size
        Window side, odd.
    alpha
        Whether the last channel is alpha (copied unchanged).

    Returns
    -------
    numpy.ndarray
        The filtered pixels, in ``arr``'s dtype.
    """
    require_dtype(arr, "median")
    if size <= 1:
        return arr.copy()
    return apply_to_colour(arr, alpha,
                           lambda plane: ndimage.median_filter(plane, size=size, mode=_MODE))


def unsharp_array(
    arr: np.ndarray,
    sigma: float,
    amount: float = 1.0,
    threshold: float = 0.0,
    truncate: float = 4.0,
    *,
    alpha: bool = False,
) -> np.ndarray:
    """Unsharp mask: ``img + amount * (img - blur)`` where ``|img - blur| > threshold``.

    Parameters
    ----------
    arr
        Pixels ``(y, x, c)``.
    sigma
        Standard deviation of the Gaussian blur.
    amount
        Strength of the sharpening.
    threshold
        Minimum difference to sharpen, in the image's own units (``unsharp`` converts
        its 8-bit levels to those).
    truncate
        As for :func:`gaussian_array`.
    alpha
        Whether the last channel is alpha (copied unchanged).

    Returns
    -------
    numpy.ndarray
        The sharpened pixels in ``arr``'s dtype (integers clipped to their range).
    """
    require_dtype(arr, "unsharp")
    top = dtype_max(arr.dtype) if arr.dtype.kind in "ui" else None

    def sharpen(plane: np.ndarray) -> np.ndarray:
        img = plane.astype(np.float32)
        detail = img - ndimage.gaussian_filter(img, sigma, mode=_MODE, truncate=truncate)
        if threshold > 0:
            detail[np.abs(detail) <= threshold] = 0.0
        img += np.float32(amount) * detail
        if top is None:
            return img.astype(arr.dtype)
        return from_float(img, arr.dtype)

    return apply_to_colour(arr, alpha, sharpen)


def filter_depth(op_name: str, params: Mapping[str, Any]) -> int:
    """The overlap, in pixels each side, that ``op_name`` needs for tiled processing.

    Parameters
    ----------
    op_name
        ``gaussian``, ``median`` or ``unsharp``.
    params
        The node's parameters (missing ones take the op's defaults).

    Returns
    -------
    int
        ``ceil(truncate * sigma)`` for ``gaussian`` and ``unsharp`` (at least the radius
        scipy's kernel uses), ``size // 2`` for ``median``.

    Raises
    ------
    ValueError
        For an op that is not a neighbourhood filter.

    Examples
    --------
    >>> filter_depth("gaussian", {"sigma": 1.5})
    6
    >>> filter_depth("median", {"size": 5})
    2
    """
    if op_name in ("gaussian", "unsharp"):
        return math.ceil(float(params.get("truncate", 4.0)) * float(params["sigma"]))
    if op_name == "median":
        return int(params.get("size", 3)) // 2
    raise ValueError(f"{op_name!r} is not a neighbourhood filter; filter_depth knows "
                     f"{', '.join(sorted(FILTER_OPS))}")


def _gaussian_memory(header: Mapping[str, Any], params: Mapping[str, Any]) -> float:
    # input + output in the image's dtype, plus one channel at a time in float32: the
    # banded path's plane and vertical pass (8 bytes a pixel measured), scipy's output
    # and intermediate above its radius (8-10); declared 12: ~6x the decoded size for
    # 8-bit RGB
    return decoded_bytes(header) * 2 + plane_pixels(header) * 4 * 3


def _unsharp_memory(header: Mapping[str, Any], params: Mapping[str, Any]) -> float:
    # input + output, and per channel float32 planes: the channel, its blur (and scipy's
    # intermediate), the detail and the rounding (measured 4.3 planes, declared 5)
    return decoded_bytes(header) * 2 + plane_pixels(header) * 4 * 5


def _median_check(params: Mapping[str, Any]) -> list[str]:
    if params["size"] % 2 == 0:
        return [f"parameter 'size': expected an odd window size, got {params['size']!r}"]
    return []


_SIGMA = Param("sigma", float, doc="standard deviation of the Gaussian, in pixels",
               minimum=1e-3, maximum=1000)
_TRUNCATE = Param("truncate", float, 4.0, "kernel radius in standard deviations",
                  minimum=0.5, maximum=20)


@register_op("gaussian", params=[_SIGMA, _TRUNCATE], memory=_gaussian_memory)
def gaussian(image: Image, *, sigma: float, truncate: float = 4.0) -> Image:
    """Gaussian blur of the colour channels; alpha and dtype are kept.

    Parameters
    ----------
    image
        The input image.
    sigma
        Standard deviation in pixels.
    truncate
        Kernel radius in standard deviations.

    Returns
    -------
    Image
        The blurred image.
    """
    data = gaussian_array(np.asarray(image.data), sigma, truncate, alpha=has_alpha(image))
    return image.replace(data)


@register_op(
    "median",
    params=[Param("size", int, 3, "window side in pixels, odd", minimum=1, maximum=101)],
    memory_factor=2.5,
    check=_median_check,
)
def median(image: Image, *, size: int = 3) -> Image:
    """Median filter over a square window, per colour channel (removes salt-and-pepper).

    Parameters
    ----------
    image
        The input image.
    size
        Window side, odd.

    Returns
    -------
    Image
        The filtered image, same dtype, alpha unchanged.
    """
    return image.replace(median_array(np.asarray(image.data), size, alpha=has_alpha(image)))


@register_op(
    "unsharp",
    params=[
        _SIGMA,
        Param("amount", float, 1.0, "strength: 1.0 adds the full detail once",
              minimum=0, maximum=20),
        Param("threshold", float, 0.0, "minimum difference to sharpen, in 8-bit levels",
              minimum=0, maximum=255),
        _TRUNCATE,
    ],
    memory=_unsharp_memory,
)
def unsharp(
    image: Image,
    *,
    sigma: float,
    amount: float = 1.0,
    threshold: float = 0.0,
    truncate: float = 4.0,
) -> Image:
    """Sharpen with an unsharp mask on the colour channels; alpha and dtype are kept.

    Parameters
    ----------
    image
        The input image.
    sigma
        Radius of the blur subtracted, as a Gaussian standard deviation.
    amount
        Strength of the sharpening.
    threshold
        Leave pixels whose difference to the blur is at most this (8-bit levels,
        scaled to the dtype) untouched, so flat noise is not amplified.
    truncate
        Kernel radius in standard deviations.

    Returns
    -------
    Image
        The sharpened image.
    """
    arr = np.asarray(image.data)
    level = threshold * dtype_max(arr.dtype) / 255.0
    data = unsharp_array(arr, sigma, amount, level, truncate, alpha=has_alpha(image))
    return image.replace(data)
