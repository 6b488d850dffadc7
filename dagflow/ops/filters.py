"""Neighbourhood filters: ``gaussian``, ``median`` and ``unsharp``.

The pixel work lives in array functions on ``(y, x, c)`` arrays (:func:`gaussian_array`,
:func:`median_array`, :func:`unsharp_array`), numpy here and cupy in
:mod:`dagflow.ops.gpu`, chosen by the array's type (:mod:`dagflow.ops.backends`). Each op
declares its tiling as an overlap of its kernel's reach (:func:`filter_depth`:
``ceil(truncate * sigma)``, ``size // 2``), run per block with
:func:`dask.array.map_overlap` and ``boundary="reflect"`` (the filters' own edge mode,
scipy's ``reflect``, OpenCV's ``BORDER_REFLECT``: ``d c b a | a b c d``). Filters work on
the colour channels only: an alpha channel is passed through unchanged (pass
``alpha=True`` to the array functions). Dtypes are kept.

Same pixels on every CPU. The Gaussian's kernel is the sampled Gaussian of radius
``int(truncate * sigma + 0.5)`` (scipy's), its weights computed in software floating
point (``cv2.getGaussianKernel``, identical on every machine). ``gaussian`` on 8- and
16-bit images runs OpenCV's bit-exact fixed-point ``GaussianBlur`` at 16-bit precision:
the weights rounded to multiples of 2**-16 (error diffused, summing to exactly 1), both
passes summed exactly in integers, one rounding at the end (half up). Integer
arithmetic has no order to depend on, so the result is the same whatever the SIMD width
or thread count, and a block filtered with its overlap equals the same pixels of the
whole image exactly. Its distance from the float64 Gaussian is bounded by the weights'
rounding (:func:`fixed_point_error`), a few thousandths of a level for the usual sigmas.
Other dtypes (float, signed and wide integers), and ``unsharp`` (whose threshold wants
the blur before any rounding), are filtered by :func:`scipy.ndimage.correlate1d` with
the same weights: a C loop summing in a fixed order, no BLAS, no dispatch by CPU.

This module imports no Dask and no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage

from dagflow._opencv import cv2
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
from dagflow.ops.backends import CUPY, array_function, common_backends
from dagflow.ops.registry import Param, get_op, register_op
from dagflow.ops.tiling import overlap

__all__ = [
    "FIXED_POINT_BITS",
    "filter_depth",
    "fixed_point_error",
    "fixed_point_kernel",
    "gaussian",
    "gaussian_array",
    "gaussian_weights",
    "kernel_radius",
    "median",
    "median_array",
    "unsharp",
    "unsharp_array",
]

#: Fraction bits of the fixed-point weights of OpenCV's 16-bit ``GaussianBlur``.
FIXED_POINT_BITS = 16

_MODE = "reflect"


def kernel_radius(sigma: float, truncate: float = 4.0) -> int:
    """The Gaussian kernel's radius in pixels, ``int(truncate * sigma + 0.5)`` (scipy's).

    Examples
    --------
    >>> kernel_radius(1.5), kernel_radius(2.0, 3.0), kernel_radius(0.1)
    (6, 6, 0)
    """
    return int(float(truncate) * float(sigma) + 0.5)


@lru_cache(maxsize=64)
def gaussian_weights(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The normalised 1-D Gaussian of :func:`kernel_radius`, as float64.

    ``exp(-x**2 / (2 sigma**2))`` for ``x`` in ``-r..r``, divided by its sum: scipy's
    kernel, computed by OpenCV in software floating point (``cv2.getGaussianKernel``), so
    that the weights do not depend on the CPU's ``exp``.
    """
    size = 2 * kernel_radius(sigma, truncate) + 1
    weights = cv2().getGaussianKernel(size, float(sigma), ktype=cv2().CV_64F).ravel()
    weights.setflags(write=False)
    return weights


@lru_cache(maxsize=64)
def fixed_point_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The integer weights OpenCV's 16-bit ``GaussianBlur`` applies, summing to 2**16.

    :func:`gaussian_weights` scaled by ``2**FIXED_POINT_BITS`` and rounded from the
    outside in, each rounding error carried to the next weight, the centre taking what
    is left so that the sum is exact (``getGaussianKernelFixedPoint_ED`` in OpenCV's
    ``smooth.dispatch.cpp``). A pixel of :func:`gaussian_array` on 8- or 16-bit data is
    ``(sum_i sum_j k[i] k[j] x[y+i, x+j] + 2**31) >> 32`` over the reflected image.

    Examples
    --------
    >>> k = fixed_point_kernel(1.0, 2.0)
    >>> int(k.sum()) == 2 ** FIXED_POINT_BITS, bool((k == k[::-1]).all())
    (True, True)
    """
    weights = gaussian_weights(sigma, truncate)
    one = 1 << FIXED_POINT_BITS
    size = len(weights)
    half = size // 2
    out = np.zeros(size, dtype=np.int64)
    carried = 0.0
    for i in range(half):
        wanted = weights[i] * one + carried
        value = round(wanted)  # half to even, as cvRound
        carried = wanted - value
        out[i] = out[size - 1 - i] = value
    out[half] = one - 2 * int(out[:half].sum())
    out.setflags(write=False)
    return out


def fixed_point_error(sigma: float, truncate: float = 4.0) -> float:
    """How far the fixed-point Gaussian can be from the float64 one, before rounding.

    As a fraction of the input's range: half the L1 distance between the 2-D kernels
    (both sum to 1, so an input spanning ``[lo, hi]`` moves a pixel by at most this times
    ``hi - lo``). The result of :func:`gaussian_array` on 8- or 16-bit data is within
    ``0.5 + fixed_point_error(...) * (hi - lo)`` levels of the float64 filter.

    Examples
    --------
    >>> fixed_point_error(1.5) < 1e-4
    True
    """
    exact = gaussian_weights(sigma, truncate)
    fixed = fixed_point_kernel(sigma, truncate) / float(1 << FIXED_POINT_BITS)
    return float(0.5 * np.abs(np.outer(fixed, fixed) - np.outer(exact, exact)).sum())


def _colour(arr: np.ndarray, alpha: bool) -> np.ndarray:
    return arr[:, :, :-1] if alpha else arr


def _with_alpha(arr: np.ndarray, colour: np.ndarray, alpha: bool) -> np.ndarray:
    """``colour`` (y, x, c) with ``arr``'s alpha channel appended when it has one."""
    if not alpha:
        return colour
    out = np.empty_like(arr)
    out[:, :, :-1] = colour
    out[:, :, -1] = arr[:, :, -1]
    return out


def _fixed_point_blur(values: np.ndarray, sigma: float, truncate: float) -> np.ndarray:
    """OpenCV's bit-exact 16-bit Gaussian of ``uint16`` ``values`` (y, x, c)."""
    cv = cv2()
    size = 2 * kernel_radius(sigma, truncate) + 1
    src = np.ascontiguousarray(values)
    if src.shape[2] > 4:  # OpenCV's channel limit is higher; planes keep it simple
        return np.stack([_fixed_point_blur(src[:, :, c:c + 1], sigma, truncate)[:, :, 0]
                         for c in range(src.shape[2])], axis=2)
    out = cv.GaussianBlur(src, (size, size), float(sigma), sigmaY=float(sigma),
                          borderType=cv.BORDER_REFLECT | cv.BORDER_ISOLATED,
                          hint=cv.ALGO_HINT_ACCURATE)
    return out.reshape(src.shape)


def _float_blur(plane: np.ndarray, sigma: float, truncate: float) -> np.ndarray:
    """The separable Gaussian of one channel ``plane`` (y, x) in float64 (scipy's C loop)."""
    weights = gaussian_weights(sigma, truncate)
    out = ndimage.correlate1d(plane.astype(np.float64), weights, axis=0, mode=_MODE)
    return ndimage.correlate1d(out, weights, axis=1, mode=_MODE, output=out)


@array_function(lazy=CUPY)
def gaussian_array(
    arr: np.ndarray, sigma: float, truncate: float = 4.0, *, alpha: bool = False
) -> np.ndarray:
    """Gaussian blur of each colour channel of ``arr`` (y, x, c).

    8- and 16-bit images are filtered in exact fixed point (see the module's notes),
    other dtypes in float64; integers are rounded to nearest and clipped.

    Parameters
    ----------
    arr
        Pixels ``(y, x, c)``, any integer or float dtype.
    sigma
        Standard deviation in pixels, the same along y and x.
    truncate
        The kernel reaches ``int(truncate * sigma + 0.5)`` pixels each side.
    alpha
        Whether the last channel is alpha (copied unchanged).

    Returns
    -------
    numpy.ndarray
        The blurred pixels, in ``arr``'s dtype.
    """
    require_dtype(arr, "gaussian")
    colour = _colour(arr, alpha)
    if kernel_radius(sigma, truncate) == 0 or colour.shape[2] == 0:
        return arr.copy()
    if arr.dtype == np.uint8:
        # 8-bit values are filtered as 16-bit ones (the 16-bit weights' precision); the
        # weights sum to 1, so the result stays within 0..255
        blurred = _fixed_point_blur(colour.astype(np.uint16), sigma, truncate)
        blurred = blurred.astype(np.uint8)
    elif arr.dtype == np.uint16:
        blurred = _fixed_point_blur(colour, sigma, truncate)
    else:  # one channel at a time: the float64 planes are the working set
        return apply_to_colour(arr, alpha, lambda plane: from_float(
            _float_blur(plane, sigma, truncate), arr.dtype))
    return _with_alpha(arr, blurred, alpha)


@array_function(lazy=CUPY)
def median_array(arr: np.ndarray, size: int, *, alpha: bool = False) -> np.ndarray:
    """Median of the ``size`` x ``size`` window around each pixel, per colour channel.

    Computed in the image's own dtype (exact: the median of an odd window is one of its
    pixels, so any CPU gives the same result).

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
    colour = _colour(arr, alpha)
    blurred = ndimage.median_filter(colour, size=(size, size, 1), mode=_MODE)
    return _with_alpha(arr, blurred, alpha)


@array_function(lazy=CUPY)
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

    Each channel in float32 (float64 for 32- and 64-bit samples): the blur by scipy's
    C loop with :func:`gaussian_weights`, row pass then column pass (scipy's
    ``gaussian_filter``), then the detail, threshold and sum elementwise; no step
    depends on the CPU. A float blur rather than :func:`gaussian_array`'s fixed point:
    the threshold compares the detail with a level, and a blur rounded to levels would
    move that decision for pixels whose detail is the threshold.

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
    if kernel_radius(sigma, truncate) == 0:
        return arr.copy()
    weights = gaussian_weights(sigma, truncate)
    work = np.float64 if arr.dtype.itemsize > 2 else np.float32

    def sharpen(plane: np.ndarray) -> np.ndarray:
        img = plane.astype(work)
        blurred = ndimage.correlate1d(img, weights, axis=0, mode=_MODE)
        ndimage.correlate1d(blurred, weights, axis=1, mode=_MODE, output=blurred)
        detail = np.subtract(img, blurred, out=blurred)
        if threshold > 0:
            detail[np.abs(detail) <= threshold] = 0.0
        img += work(amount) * detail
        return from_float(img, arr.dtype)

    return apply_to_colour(arr, alpha, sharpen)


def filter_depth(op_name: str, params: Mapping[str, Any]) -> int:
    """The overlap, in pixels each side, that ``op_name`` declares for tiled processing.

    Parameters
    ----------
    op_name
        An op whose tiling is an overlap (``gaussian``, ``median``, ``unsharp``, or a
        user's filter).
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
        For an op whose tiling is not an overlap.

    Examples
    --------
    >>> filter_depth("gaussian", {"sigma": 1.5})
    6
    >>> filter_depth("median", {"size": 5})
    2
    """
    spec = get_op(op_name)
    if spec.tiling is None or spec.tiling.kind != "overlap":
        raise ValueError(f"{op_name!r} is not a neighbourhood filter: its tiling is "
                         f"{spec.tiling.kind if spec.tiling else 'not declared'}, not an "
                         "overlap")
    defaults = {p.name: p.default for p in spec.params if not p.required}
    return spec.tiling.overlap_depth({**defaults, **params})


def _blur_depth(params: Mapping[str, Any]) -> int:
    return math.ceil(float(params["truncate"]) * float(params["sigma"]))


def _median_depth(params: Mapping[str, Any]) -> int:
    return int(params["size"]) // 2


def _fixed_point(header: Mapping[str, Any]) -> bool:
    return str(header.get("dtype", "uint8")) in ("uint8", "uint16")


def _gaussian_memory(header: Mapping[str, Any], params: Mapping[str, Any]) -> float:
    # input + output in the image's dtype, plus: 8/16-bit, the colour channels as 16-bit
    # and OpenCV's 16-bit output (4 bytes a sample; its row buffers are a few rows);
    # other dtypes, one channel at a time, float64 values, the filtered plane and its
    # rounding (24 bytes a pixel)
    if _fixed_point(header):
        return decoded_bytes(header) * 2 + plane_pixels(header) * header.get("channels", 3) * 4
    return decoded_bytes(header) * 2 + plane_pixels(header) * 24


def _unsharp_memory(header: Mapping[str, Any], params: Mapping[str, Any]) -> float:
    # input + output, and per channel float32 planes: the channel, its blur (then the
    # detail), the rounding, the cast (measured 4.3 planes, declared 5); float64 for
    # 32- and 64-bit samples
    per_pixel = 4 * 5 if header.get("itemsize", 1) <= 2 else 8 * 5
    return decoded_bytes(header) * 2 + plane_pixels(header) * per_pixel


def _median_check(params: Mapping[str, Any]) -> list[str]:
    if params["size"] % 2 == 0:
        return [f"parameter 'size': expected an odd window size, got {params['size']!r}"]
    return []


_SIGMA = Param("sigma", float, doc="standard deviation of the Gaussian, in pixels",
               minimum=1e-3, maximum=1000)
_TRUNCATE = Param("truncate", float, 4.0, "kernel radius in standard deviations",
                  minimum=0.5, maximum=20)


@register_op("gaussian", params=[_SIGMA, _TRUNCATE], memory=_gaussian_memory,
             tiling=overlap(_blur_depth), backends=common_backends(gaussian_array))
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
    data = gaussian_array(image.data, sigma, truncate, alpha=has_alpha(image))
    return image.replace(data)


@register_op(
    "median",
    params=[Param("size", int, 3, "window side in pixels, odd", minimum=1, maximum=101)],
    memory_factor=2.5,
    check=_median_check,
    tiling=overlap(_median_depth),
    backends=common_backends(median_array),
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
    return image.replace(median_array(image.data, size, alpha=has_alpha(image)))


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
    tiling=overlap(_blur_depth),
    backends=common_backends(unsharp_array),
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
    arr = image.data
    level = threshold * dtype_max(arr.dtype) / 255.0
    data = unsharp_array(arr, sigma, amount, level, truncate, alpha=has_alpha(image))
    return image.replace(data)
