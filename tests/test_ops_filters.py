"""Neighbourhood filters: exact against the integer arithmetic they promise, within a
tolerance derived from that arithmetic of the float64 filter, the same on every SIMD
level, and equal per block and on the whole image."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from dagflow.image import Image
from dagflow.ops import filter_depth, get_op
from dagflow.ops.filters import (
    MAX_8_BIT_ERROR,
    _fixed_point_blur,
    fixed_point_bits,
    fixed_point_error,
    fixed_point_gaussian,
    fixed_point_kernel,
    gaussian_array,
    gaussian_weights,
    kernel_radius,
    median_array,
    unsharp_array,
)

RNG = np.random.default_rng(1)
SIGMAS = [(0.6, 4.0), (1.5, 4.0), (2.5, 3.0), (9.0, 3.0)]
#: Sigmas for the 8-bit path's model: below one pixel, the usual ones, long kernels.
SIGMAS_8 = [(0.3, 4.0), (0.6, 4.0), (1.0, 4.0), (1.5, 4.0), (2.0, 4.0), (2.5, 3.0),
            (5.0, 4.0), (9.0, 3.0), (20.0, 4.0)]
BOTH = [(np.uint8, 8), (np.uint16, 16)]


def integer_gaussian(arr: np.ndarray, sigma: float, truncate: float,
                     bits: int | None = None) -> np.ndarray:
    """OpenCV's fixed-point Gaussian written out for weights of ``bits`` fraction bits
    (by default those gaussian_array chooses): the row pass as exact int64 sums over the
    reflected image (numpy's ``symmetric`` padding), keeping all its fraction bits, the
    column pass the same, one rounding half up."""
    if bits is None:
        bits = fixed_point_bits(arr.dtype.name, sigma, truncate)
    k = fixed_point_kernel(sigma, truncate, bits=bits)
    r = len(k) // 2
    h, w = arr.shape[:2]
    padded = np.pad(arr.astype(np.int64), ((r, r), (r, r), (0, 0)), mode="symmetric")
    rows = sum(int(k[j]) * padded[:, j:j + w] for j in range(len(k)))
    total = sum(int(k[i]) * rows[i:i + h] for i in range(len(k)))
    return ((total + (1 << (2 * bits - 1))) >> (2 * bits)).astype(arr.dtype)


def bound(dtype, sigma: float, truncate: float) -> float:
    """The derived distance from the float64 Gaussian, in levels, on a full-range input:
    the final rounding plus the weights' rounding times the range."""
    bits = fixed_point_bits(np.dtype(dtype).name, sigma, truncate)
    return 0.5 + fixed_point_error(sigma, truncate, bits=bits) * np.iinfo(dtype).max


def float_gaussian(arr: np.ndarray, sigma: float, truncate: float) -> np.ndarray:
    """scipy's float64 Gaussian of every channel (the reference the bound is about)."""
    return ndimage.gaussian_filter(arr.astype(np.float64), sigma, truncate=truncate,
                                   mode="reflect", axes=(0, 1))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize(("sigma", "truncate"), SIGMAS)
def test_gaussian_is_exactly_its_integer_arithmetic(dtype, sigma, truncate):
    top = np.iinfo(dtype).max
    arr = RNG.integers(0, top + 1, (41, 53, 3), dtype=dtype)
    out = gaussian_array(arr, sigma, truncate)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, integer_gaussian(arr, sigma, truncate))


@pytest.mark.parametrize(("sigma", "truncate"), SIGMAS_8)
@pytest.mark.parametrize(("shape", "alpha"), [
    ((41, 53, 3), False), ((37, 29, 1), False), ((23, 31, 4), False), ((19, 27, 4), True),
    ((17, 13, 2), True), ((11, 9, 5), False), ((1, 1, 3), False), ((2, 3, 1), False),
    ((1, 40, 3), False), ((40, 1, 4), True), ((3, 5, 3), False)])
def test_8_bit_gaussian_is_opencvs_8_bit_arithmetic(sigma, truncate, shape, alpha):
    """OpenCV's own 8-bit path (8-bit weights) is the integer model's, pixel for pixel,
    whatever the sigma, the shape (smaller than the kernel too), the channels (OpenCV's
    1, 3 and 4, more split into planes); and gaussian_array is the model with the
    weights it chooses, an alpha channel kept."""
    arr = RNG.integers(0, 256, shape, dtype=np.uint8)
    colour = shape[2] - 1 if alpha else shape[2]
    if colour:
        np.testing.assert_array_equal(
            _fixed_point_blur(arr[:, :, :colour], sigma, truncate, bits=8),
            integer_gaussian(arr[:, :, :colour], sigma, truncate, bits=8))
    out = gaussian_array(arr, sigma, truncate, alpha=alpha)
    assert out.dtype == np.uint8 and out.shape == arr.shape
    np.testing.assert_array_equal(out[:, :, :colour],
                                  integer_gaussian(arr[:, :, :colour], sigma, truncate))
    np.testing.assert_array_equal(out[:, :, colour:], arr[:, :, colour:])


@pytest.mark.parametrize(("sigma", "truncate"), SIGMAS_8)
def test_8_bit_images_take_8_bit_weights_only_within_the_promised_error(sigma, truncate):
    """8-bit weights where their bound keeps within MAX_8_BIT_ERROR levels, else 16-bit:
    an 8-bit result is never further than that from the float64 Gaussian."""
    own = 0.5 + fixed_point_error(sigma, truncate, bits=8) * 255
    bits = fixed_point_bits("uint8", sigma, truncate)
    assert bits == (8 if own <= MAX_8_BIT_ERROR else 16)
    assert bound(np.uint8, sigma, truncate) <= MAX_8_BIT_ERROR


@pytest.mark.parametrize(("dtype", "bits"), BOTH)
@pytest.mark.parametrize(("sigma", "truncate"), SIGMAS_8)
@pytest.mark.parametrize("shape", [(41, 53), (1, 1), (2, 7), (30, 1)])
def test_the_shared_model_is_the_integer_arithmetic(dtype, bits, sigma, truncate, shape):
    """fixed_point_gaussian (what the GPU runs, on cupy) sums in floats that hold every
    partial sum exactly: its pixels are the int64 model's."""
    arr = RNG.integers(0, np.iinfo(dtype).max + 1, (*shape, 1), dtype=dtype)
    out = fixed_point_gaussian(arr[:, :, 0], sigma, truncate, bits=bits)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out,
                                  integer_gaussian(arr, sigma, truncate, bits)[:, :, 0])


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 9, 3), (7, 1, 1), (2, 3, 4), (5, 6, 5),
                                   (40, 3, 2)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_gaussian_on_images_smaller_than_its_kernel(shape, dtype):
    arr = RNG.integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)
    out = gaussian_array(arr, 2.0)
    assert out.shape == arr.shape
    np.testing.assert_array_equal(out, integer_gaussian(arr, 2.0, 4.0))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize(("sigma", "truncate"), SIGMAS_8)
def test_gaussian_is_within_the_derived_bound_of_float64(dtype, sigma, truncate):
    """Rounding (half a level) plus the weights' rounding times the input's range, on
    noise and on the input that reaches the weights' part of it: the pixels at the
    dtype's top where the fixed-point kernel outweighs the float64 one."""
    top = np.iinfo(dtype).max
    arr = RNG.integers(0, top + 1, (41, 53, 3), dtype=dtype)
    np.testing.assert_allclose(gaussian_array(arr, sigma, truncate),
                               float_gaussian(arr, sigma, truncate), rtol=0,
                               atol=bound(dtype, sigma, truncate) + 1e-9 * top)
    bits = fixed_point_bits(np.dtype(dtype).name, sigma, truncate)
    k = fixed_point_kernel(sigma, truncate, bits=bits) / 2.0 ** bits
    exact = gaussian_weights(sigma, truncate)
    n = len(k)
    worst = ((np.outer(k, k) > np.outer(exact, exact)) * top).astype(dtype)[:, :, None]
    out = gaussian_array(worst, sigma, truncate)[n // 2, n // 2, 0]  # its centre pixel
    reference = float((np.outer(exact, exact) * worst[:, :, 0]).sum())
    # within the bound, and reaching it but for the final rounding: the bound is tight
    assert bound(dtype, sigma, truncate) - 1 - 1e-9 * top <= abs(int(out) - reference) \
        <= bound(dtype, sigma, truncate) + 1e-9 * top
    # each weight is within one unit of 2**-bits (error diffusion), so the kernels'
    # distance is at most the kernel's length in units
    assert fixed_point_error(sigma, truncate, bits=bits) <= n / 2.0 ** bits


@pytest.mark.parametrize(("dtype", "bits"), BOTH)
def test_fixed_point_weights_are_the_gaussians(dtype, bits):
    for sigma, truncate in SIGMAS_8:
        k = fixed_point_kernel(sigma, truncate, bits=bits)
        assert len(k) == 2 * kernel_radius(sigma, truncate) + 1
        assert int(k.sum()) == 1 << bits and (k == k[::-1]).all() and (k >= 0).all()
        x = np.arange(-(len(k) // 2), len(k) // 2 + 1)
        exact = np.exp(-0.5 * (x / sigma) ** 2)
        exact /= exact.sum()
        np.testing.assert_allclose(gaussian_weights(sigma, truncate), exact, rtol=1e-12)
        # error diffusion: each weight within one unit (the carried error is at most
        # half a unit, before and after it), the centre too (twice the last carry)
        assert np.abs(k / 2.0 ** bits - exact).max() <= 1.0 / 2 ** bits + 1e-12


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.int32])
def test_gaussian_other_dtypes_in_float64(dtype):
    arr = (RNG.random((30, 37, 3)) * 2000 - 1000).astype(dtype)
    out = gaussian_array(arr, 1.5)
    assert out.dtype == dtype
    ref = float_gaussian(arr, 1.5, 4.0)
    if np.dtype(dtype).kind == "f":  # float64 sums, rounded once to the dtype
        np.testing.assert_allclose(out, ref, rtol=2 * np.finfo(dtype).eps, atol=1e-9)
    else:
        np.testing.assert_allclose(out, ref, rtol=0, atol=0.5 + 1e-9)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_gaussian_stays_in_range_at_the_ends_of_the_dtype(dtype):
    """The weights sum to exactly 1: a flat image at the dtype's top stays at its top,
    one at 0 stays 0, and hard edges between the two stay within the range."""
    top = np.iinfo(dtype).max
    for flat in (0, top):
        arr = np.full((37, 41, 3), flat, dtype)
        np.testing.assert_array_equal(gaussian_array(arr, 1.5), arr)
    checker = (np.indices((37, 41)).sum(axis=0) % 2 * top).astype(dtype)[:, :, None]
    checker[:, :20] = top
    out = gaussian_array(checker, 1.5)
    np.testing.assert_array_equal(out, integer_gaussian(checker, 1.5, 4.0))
    assert out.max() == top


def test_gaussian_matches_explicit_sampled_kernel():
    arr = RNG.integers(0, 256, (30, 30, 1), dtype=np.uint8)
    sigma, truncate = 1.2, 3.0
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    k1 = np.exp(-0.5 * (x / sigma) ** 2)
    k1 /= k1.sum()
    padded = np.pad(arr[:, :, 0].astype(np.float64), radius, mode="symmetric")
    ref = np.zeros((30, 30))
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            ref += k1[dy] * k1[dx] * padded[dy:dy + 30, dx:dx + 30]
    out = gaussian_array(arr, sigma, truncate)[:, :, 0]
    np.testing.assert_allclose(out, ref, rtol=0, atol=bound(np.uint8, sigma, truncate) + 1e-9)


def test_gaussian_alpha_untouched():
    arr = RNG.integers(0, 256, (20, 20, 4), dtype=np.uint8)
    img = Image(arr, {"space": "rgba"})
    out = get_op("gaussian").func(img, sigma=2.0).data
    np.testing.assert_array_equal(out[:, :, 3], arr[:, :, 3])
    np.testing.assert_array_equal(out[:, :, :3], integer_gaussian(arr[:, :, :3], 2.0, 4.0))


def test_median_matches_explicit_windows():
    arr = RNG.integers(0, 65536, (9, 11, 2), dtype=np.uint16)
    size, r = 3, 1
    out = median_array(arr, size)
    assert out.dtype == np.uint16
    for ch in range(2):
        padded = np.pad(arr[:, :, ch], r, mode="symmetric")
        for y in range(9):
            for x in range(11):
                window = padded[y:y + size, x:x + size]
                assert out[y, x, ch] == np.median(window)


def test_median_removes_salt_and_keeps_alpha():
    arr = np.full((15, 15, 4), 100, np.uint8)
    arr[7, 7] = 255
    out = median_array(arr, 3, alpha=True)
    assert (out[:, :, :3] == 100).all()
    np.testing.assert_array_equal(out[:, :, 3], arr[:, :, 3])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_unsharp_formula(dtype):
    """``img + amount * (img - blur)`` where the detail exceeds the threshold, computed in
    float32: within the final rounding plus float32's relative error (a few ulps of the
    largest value) of the float64 formula, away from the threshold's edge."""
    top = np.iinfo(dtype).max
    arr = RNG.integers(0, top + 1, (25, 25, 1), dtype=dtype)
    sigma, amount, thr = 1.5, 0.7, 4.0 * top / 255
    img = arr[:, :, 0].astype(np.float64)
    detail = img - ndimage.gaussian_filter(img, sigma, mode="reflect")
    float32_error = 8 * np.finfo(np.float32).eps * top
    keep = np.abs(np.abs(detail) - thr) > float32_error  # the mask cannot flip there
    ref = np.clip(np.where(np.abs(detail) > thr, img + amount * detail, img), 0, top)
    out = unsharp_array(arr, sigma, amount, thr)[:, :, 0]
    np.testing.assert_allclose(out[keep], ref[keep], rtol=0,
                               atol=0.5 + (1 + 2 * amount) * float32_error)
    assert keep.mean() > 0.99


def test_unsharp_threshold_in_levels_scales_for_16bit():
    arr8 = RNG.integers(0, 256, (25, 25, 3), dtype=np.uint8)
    op = get_op("unsharp").func
    out8 = op(Image(arr8), sigma=1.0, amount=1.0, threshold=10.0).data
    out16 = op(Image(arr8.astype(np.uint16) * 257), sigma=1.0, amount=1.0,
               threshold=10.0).data
    assert out16.dtype == np.uint16
    assert np.abs(out16 / 257.0 - out8).max() <= 1.5


def test_filter_depth():
    assert filter_depth("gaussian", {"sigma": 1.5, "truncate": 4.0}) == 6
    assert filter_depth("gaussian", {"sigma": 1.0}) == 4
    assert filter_depth("unsharp", {"sigma": 0.6, "truncate": 3.0}) == 2
    assert filter_depth("median", {"size": 7}) == 3
    assert filter_depth("median", {}) == 1
    with pytest.raises(ValueError, match="not a neighbourhood filter"):
        filter_depth("resize", {})
    for sigma, truncate in SIGMAS:  # the overlap covers the kernel
        assert filter_depth("gaussian", {"sigma": sigma, "truncate": truncate}) >= \
            kernel_radius(sigma, truncate)


@pytest.mark.parametrize(("name", "params"),
                         [("gaussian", {"sigma": 1.3, "truncate": 3.0}),
                          ("median", {"size": 5}),
                          ("unsharp", {"sigma": 1.0, "amount": 2.0})])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_tiled_with_filter_depth_equals_whole(name, params, dtype):
    """Blocks padded by filter_depth (reflect at the edges) give the whole-image result,
    exactly: each output pixel is computed from the same inputs in the same way."""
    arr = (RNG.random((48, 40, 3)) * 255).astype(dtype)
    spec = get_op(name)
    resolved = spec.resolve_params(params)[0]
    whole = spec.func(Image(arr), **resolved).data
    depth = filter_depth(name, resolved)
    assert depth >= 1
    padded = np.pad(arr, ((depth, depth), (depth, depth), (0, 0)), mode="symmetric")
    tiled = np.empty_like(arr)
    for y0 in range(0, 48, 16):
        for x0 in range(0, 40, 20):
            block = padded[y0:y0 + 16 + 2 * depth, x0:x0 + 20 + 2 * depth]
            out = spec.func(Image(block), **resolved).data
            tiled[y0:y0 + 16, x0:x0 + 20] = out[depth:depth + 16, depth:depth + 20]
    np.testing.assert_array_equal(tiled, whole)


_PIXELS_SCRIPT = """
import hashlib, json, sys
import numpy as np
from dagflow.image import Image
from dagflow.ops import get_op
from dagflow.testing import photo_like
out = {}
for dtype in (np.uint8, np.uint16, np.float32):
    data = photo_like(97, 131, channels=4, dtype=dtype, seed=3)
    for name, params in (("gaussian", {"sigma": 1.5}), ("gaussian", {"sigma": 7.0}),
                         ("unsharp", {"sigma": 2.0, "amount": 1.5, "threshold": 2.0}),
                         ("resize", {"long_side": 50}), ("normalize", {})):
        spec = get_op(name)
        full = spec.resolve_params(params)[0]
        result = spec.func(Image(data, {"space": "rgba"}), **full).data
        out[f"{name}-{params}-{np.dtype(dtype).name}"] = hashlib.sha256(
            np.ascontiguousarray(result).tobytes()).hexdigest()
json.dump(out, sys.stdout)
"""

#: SIMD levels to run the kernels at, as OpenCV names its dispatched features, and the
#: OpenBLAS kernels to force; the first entry is this machine's own.
SIMD_LEVELS = [
    {},
    {"OPENCV_CPU_DISABLE": "AVX512-SKX,AVX512-CLX,AVX_VNNI",
     "OPENBLAS_CORETYPE": "Haswell"},
    {"OPENCV_CPU_DISABLE": "AVX512-SKX,AVX512-CLX,AVX_VNNI,AVX2,FP16,AVX,SSE4.2,SSE4.1",
     "OPENBLAS_CORETYPE": "Prescott"},
]


def test_filters_give_the_same_pixels_at_every_simd_level():
    """The same ops in fresh processes with OpenCV's dispatch limited to AVX2, then to
    SSE3 (its baseline), and OpenBLAS forced to other kernels: the same bytes."""
    digests = []
    for extra in SIMD_LEVELS:
        env = {k: v for k, v in os.environ.items()
               if k not in ("OPENCV_CPU_DISABLE", "OPENBLAS_CORETYPE")}
        env.update(extra)
        done = subprocess.run([sys.executable, "-c", _PIXELS_SCRIPT], capture_output=True,
                              text=True, env=env, timeout=120, check=True)
        digests.append(json.loads(done.stdout))
    assert digests[0] and all(d == digests[0] for d in digests[1:])
    assert len(set(digests[0].values())) == len(digests[0])  # every case its own result

