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
16-bit images runs OpenCV's bit-exact fixed-point ``GaussianBlur`` on the image's own
dtype, with ``bits`` fraction bits to its weights (:data:`FIXED_POINT_BITS`: 8 for
8-bit images, 16 for 16-bit ones): the weights are rounded to multiples of
``2**-bits``, error diffused and summing to exactly 1 (:func:`fixed_point_kernel`);
the row pass sums exactly, keeping ``bits`` fraction bits (``255 * 2**8`` at most for
8-bit images, ``65535 * 2**16`` for 16-bit ones: within OpenCV's 16- and 32-bit
accumulators, so nothing is rounded between the passes),
the column pass sums exactly too, and the result is rounded once, half up:
``(sum_i sum_j k[i] k[j] x[y+i, x+j] + 2**(2 bits - 1)) >> 2 bits`` over the reflected
image. Integer arithmetic has no order to depend on, so the result is the same whatever
the SIMD width or thread count, and a block filtered with its overlap equals the same
pixels of the whole image exactly.

Its distance from the float64 Gaussian is that one rounding plus the weights' rounding:
at most ``0.5 + fixed_point_error(sigma, truncate, bits=bits) * (hi - lo)`` levels for
an input spanning ``[lo, hi]`` (:func:`fixed_point_error`: a fraction of the range).
With 16-bit weights that fraction is a few times 1e-5 for the usual sigmas (3e-5 at
sigma 1.5: two levels of a full-range 16-bit image). 8-bit weights are coarser, 0.0076
at sigma 1.5: on a full-range 8-bit image the bound is 2.4 levels at sigma 1.5, 1.3 at
sigma 1, 4.1 at sigma 2, and grows with the kernel's length (15 at sigma 9, truncate 3).
That is a worst case, reached by an image whose pixels follow the signs of the weights'
rounding errors; on photo-like images the differences stay under a level, on uniform
noise under two. The 8-bit path is OpenCV's own (what ``cv2.GaussianBlur`` gives its
users), about twice as fast as filtering 8-bit values as 16-bit ones, and it is taken
where its bound is at most :data:`MAX_8_BIT_ERROR` (2.5 levels: at the default truncate,
sigma 1 and 1.5 among others, not 1.2 or 2: the weights' rounding errors do not grow
evenly with sigma); elsewhere, 8-bit values are filtered with the 16-bit weights
(:func:`fixed_point_bits` decides, for the CPU and the GPU alike). So an 8-bit result
is always within 2.5 levels of the float64 Gaussian.

:func:`fixed_point_gaussian` is the same arithmetic for any array library with scipy's
``ndimage.correlate1d``: two passes of 1-D correlations with the integer weights, on
floats whose every partial sum is an integer small enough to be exact (below ``2**24``
in float32 for 8-bit images, ``2**48`` in float64 for 16-bit ones), so that their order
does not matter either. The GPU's 8-bit Gaussian (:mod:`dagflow.ops.gpu`) is that
function on cupy; the tests hold it and OpenCV to the integer arithmetic written out.

Other dtypes (float, signed and wide integers), and ``unsharp`` (whose threshold wants
the blur before any rounding), are filtered by :func:`scipy.ndimage.correlate1d` with
the same weights: a C loop summing in a fixed order, no BLAS, no dispatch by CPU.

This module imports no Dask and no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType, ModuleType
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
    "MAX_8_BIT_ERROR",
    "filter_depth",
    "fixed_point_bits",
    "fixed_point_error",
    "fixed_point_gaussian",
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

#: Fraction bits of the weights of OpenCV's bit-exact ``GaussianBlur``, by sample dtype:
#: 8 for 8-bit images (its ``ufixedpoint16``: 8.8 fixed point), 16 for 16-bit ones
#: (``ufixedpoint32``: 16.16).
FIXED_POINT_BITS: Mapping[str, int] = MappingProxyType({"uint8": 8, "uint16": 16})
#: The most levels an 8-bit result may be from the float64 Gaussian (its bound, on any
#: input): OpenCV's 8-bit weights where they keep within it, 16-bit weights elsewhere.
MAX_8_BIT_ERROR = 2.5

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
def fixed_point_kernel(sigma: float, truncate: float = 4.0, *, bits: int) -> np.ndarray:
    """The integer weights OpenCV's bit-exact ``GaussianBlur`` applies, summing to
    ``2**bits``.

    :func:`gaussian_weights` scaled by ``2**bits`` and rounded from the outside in, each
    rounding error carried to the next weight, the centre taking what is left so that
    the sum is exact (``getGaussianKernelFixedPoint_ED`` in OpenCV's
    ``smooth.dispatch.cpp``; ``bits`` is 8 for 8-bit images, 16 for 16-bit ones, see
    :data:`FIXED_POINT_BITS`). A pixel of :func:`gaussian_array` on such data is
    ``(sum_i sum_j k[i] k[j] x[y+i, x+j] + 2**(2 bits - 1)) >> 2 bits`` over the
    reflected image.

    Examples
    --------
    >>> k = fixed_point_kernel(1.0, 2.0, bits=8)
    >>> k.tolist()
    [14, 62, 104, 62, 14]
    >>> int(fixed_point_kernel(1.5, bits=16).sum()) == 2 ** 16
    True
    """
    weights = gaussian_weights(sigma, truncate)
    one = 1 << bits
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


def fixed_point_error(sigma: float, truncate: float = 4.0, *, bits: int) -> float:
    """How far the fixed-point Gaussian can be from the float64 one, before its rounding.

    As a fraction of the input's range: half the L1 distance between the 2-D kernels,
    the fixed-point one with ``bits`` fraction bits (both sum to 1, so an input spanning
    ``[lo, hi]`` moves a pixel by at most this times ``hi - lo``, reached where the
    pixels follow the signs of the difference). Nothing else is rounded until the end:
    the result of :func:`gaussian_array` on 8- or 16-bit data is within
    ``0.5 + fixed_point_error(sigma, truncate, bits=FIXED_POINT_BITS[dtype]) * (hi - lo)``
    levels of the float64 filter.

    Examples
    --------
    >>> fixed_point_error(1.5, bits=16) < 1e-4
    True
    >>> round(0.5 + fixed_point_error(1.5, bits=8) * 255, 2)  # levels, full-range 8-bit
    2.43
    """
    exact = gaussian_weights(sigma, truncate)
    fixed = fixed_point_kernel(sigma, truncate, bits=bits) / float(1 << bits)
    return float(0.5 * np.abs(np.outer(fixed, fixed) - np.outer(exact, exact)).sum())


@lru_cache(maxsize=64)
def fixed_point_bits(dtype: str, sigma: float, truncate: float = 4.0) -> int:
    """Fraction bits of the weights :func:`gaussian_array` uses for ``dtype`` samples.

    16 for 16-bit images; for 8-bit images, OpenCV's own 8 where the result stays within
    :data:`MAX_8_BIT_ERROR` levels of the float64 Gaussian on any input, else 16 (the
    8-bit values filtered as 16-bit ones: slower, within 0.51 levels).

    Examples
    --------
    >>> fixed_point_bits("uint8", 1.5), fixed_point_bits("uint8", 2.0)
    (8, 16)
    >>> fixed_point_bits("uint16", 1.5)
    16
    """
    bits = FIXED_POINT_BITS[str(dtype)]
    if bits == 8 and 0.5 + fixed_point_error(sigma, truncate, bits=8) * 255 > MAX_8_BIT_ERROR:
        return 16
    return bits


def fixed_point_gaussian(plane: Any, sigma: float, truncate: float = 4.0, *, bits: int,
                         xp: ModuleType = np, ndimage: ModuleType = ndimage) -> Any:
    """OpenCV's bit-exact Gaussian of one channel, for numpy or cupy arrays.

    The arithmetic of :func:`fixed_point_kernel` as two 1-D correlations with the
    integer weights (reflected edges), the row pass then the column pass, and the one
    rounding, half up, by a shift. The correlations run in float32 for ``bits=8`` and
    float64 for ``bits=16``: every product and partial sum is an integer below
    ``2**24`` (8-bit: ``255 * 2**16``) or ``2**48``, which those floats hold exactly,
    so the sums are OpenCV's whatever order or fused multiply-adds the library uses.

    Parameters
    ----------
    plane
        One channel ``(y, x)``, ``uint8`` for ``bits=8`` or ``uint16`` for ``bits=16``.
    sigma, truncate
        As for :func:`gaussian_array`.
    bits
        Fraction bits of the weights (:data:`FIXED_POINT_BITS`).
    xp, ndimage
        The array library and its ``ndimage`` (``numpy`` and ``scipy.ndimage``, or
        ``cupy`` and ``cupyx.scipy.ndimage``).

    Returns
    -------
    array
        The blurred channel, in ``plane``'s dtype and library.

    Examples
    --------
    >>> plane = np.zeros((5, 5), np.uint8)
    >>> plane[2, 2] = 255
    >>> fixed_point_gaussian(plane, 1.0, 2.0, bits=8)[2].tolist()
    [6, 25, 42, 25, 6]
    """
    work = np.float32 if bits <= 8 else np.float64
    weights = xp.asarray(fixed_point_kernel(sigma, truncate, bits=bits), dtype=work)
    rows = ndimage.correlate1d(plane.astype(work), weights, axis=1, mode=_MODE)
    sums = ndimage.correlate1d(rows, weights, axis=0, mode=_MODE).astype(
        np.int32 if bits <= 8 else np.int64)
    sums += 1 << (2 * bits - 1)  # in place: three planes at most, as on a device
    sums >>= 2 * bits
    return sums.astype(plane.dtype)


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


def _fixed_point_blur(values: np.ndarray, sigma: float, truncate: float, *,
                      bits: int | None = None) -> np.ndarray:
    """OpenCV's bit-exact Gaussian of ``uint8`` or ``uint16`` ``values`` (y, x, c), in
    their own dtype: with ``bits`` fraction bits to the weights (by default
    :func:`fixed_point_bits`'s choice), its 8-bit path for 8 bits, its 16-bit path for
    16 (8-bit values filtered as 16-bit ones, then narrowed: the weights sum to one, so
    the result stays within 0..255)."""
    if bits is None:
        bits = fixed_point_bits(values.dtype.name, sigma, truncate)
    if bits == 16 and values.dtype == np.uint8:
        return _fixed_point_blur(values.astype(np.uint16), sigma, truncate,
                                 bits=16).astype(np.uint8)
    cv = cv2()
    size = 2 * kernel_radius(sigma, truncate) + 1
    src = np.ascontiguousarray(values)
    if src.shape[2] > 4:  # OpenCV's channel limit is higher; planes keep it simple
        return np.stack([_fixed_point_blur(src[:, :, c:c + 1], sigma, truncate,
                                           bits=bits)[:, :, 0]
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

    8- and 16-bit images are filtered by OpenCV's bit-exact fixed point, with the
    weights' fraction bits of :func:`fixed_point_bits` (8-bit weights for 8-bit images
    where they keep within :data:`MAX_8_BIT_ERROR` levels, else 16-bit weights): within
    ``0.5 + fixed_point_error(sigma, truncate, bits=fixed_point_bits(...)) * range``
    levels of the float64 Gaussian (see the module's notes). Other dtypes are filtered
    in float64; integers are rounded to nearest and clipped.

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
    if arr.dtype.name in FIXED_POINT_BITS:
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
    return str(header.get("dtype", "uint8")) in FIXED_POINT_BITS


def _gaussian_memory(header: Mapping[str, Any], params: Mapping[str, Any]) -> float:
    # input + output in the image's dtype, plus: 8/16-bit, the colour channels made
    # contiguous for OpenCV and its output, in the image's dtype (its row buffers are a
    # few rows), twice over as 16-bit values for 8-bit images filtered with 16-bit
    # weights; other dtypes, one channel at a time, float64 values, the filtered plane
    # and its rounding (24 bytes a pixel)
    if _fixed_point(header):
        dtype = str(header.get("dtype", "uint8"))
        widened = dtype == "uint8" and fixed_point_bits(
            dtype, float(params["sigma"]), float(params.get("truncate", 4.0))) == 16
        return decoded_bytes(header) * (6 if widened else 4)
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

    8- and 16-bit images are blurred by OpenCV's bit-exact fixed-point Gaussian, with
    weights in 1/256 for 8-bit images (where that keeps within 2.5 levels, as at sigma 1
    and 1.5; 1/65536 elsewhere) and 1/65536 for 16-bit ones: the same
    pixels on every CPU (and on the GPU for 8-bit images), within
    ``0.5 + fixed_point_error(sigma, truncate, bits=fixed_point_bits(...)) * range``
    levels of the float64 Gaussian (8-bit images: 2.5 levels at worst, under a level
    on photo-like ones). Other dtypes are blurred in float64.

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
