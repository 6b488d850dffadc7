"""Neighbourhood filters against reference computations, and their overlap depth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from dagflow.image import Image
from dagflow.ops import filter_depth, get_op
from dagflow.ops.filters import gaussian_array, median_array, unsharp_array

RNG = np.random.default_rng(1)


def reference_gaussian(plane, sigma, truncate, top):
    ref = ndimage.gaussian_filter(plane.astype(np.float64), sigma, truncate=truncate,
                                  mode="reflect")
    return np.clip(np.rint(ref), 0, top)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("sigma", [0.8, 2.5])
def test_gaussian_matches_float64_reference(dtype, sigma):
    top = np.iinfo(dtype).max
    arr = RNG.integers(0, top + 1, (40, 50, 3), dtype=dtype)
    out = gaussian_array(arr, sigma, 3.0)
    assert out.dtype == dtype
    for ch in range(3):
        ref = reference_gaussian(arr[:, :, ch], sigma, 3.0, top)
        diff = np.abs(out[:, :, ch].astype(np.int64) - ref)
        assert diff.max() <= 1
        assert (diff == 0).mean() > 0.99


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_gaussian_stays_in_range_at_the_ends_of_the_dtype(dtype):
    """Rounding alone keeps 8- and 16-bit outputs in range: a flat image at the dtype's
    top stays at its top (not wrapped to 0), one at 0 stays 0, and hard edges between the
    two match the float64 reference."""
    top = np.iinfo(dtype).max
    for flat in (0, top):
        arr = np.full((37, 41, 3), flat, dtype)
        np.testing.assert_array_equal(gaussian_array(arr, 1.5), arr)
    checker = (np.indices((37, 41)).sum(axis=0) % 2 * top).astype(dtype)[:, :, None]
    checker[:, :20] = top
    out = gaussian_array(checker, 1.5)[:, :, 0].astype(np.int64)
    ref = reference_gaussian(checker[:, :, 0], 1.5, 4.0, top)
    assert np.abs(out - ref).max() <= 1
    assert out.max() == top and out.min() >= 0


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
    out = gaussian_array(arr, sigma, truncate)[:, :, 0].astype(int)
    assert np.abs(out - np.rint(ref)).max() <= 1


def test_gaussian_alpha_untouched():
    arr = RNG.integers(0, 256, (20, 20, 4), dtype=np.uint8)
    img = Image(arr, {"space": "rgba"})
    out = get_op("gaussian").func(img, sigma=2.0).data
    np.testing.assert_array_equal(out[:, :, 3], arr[:, :, 3])
    assert not np.array_equal(out[:, :, 0], arr[:, :, 0])


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


def test_median_removes_salt():
    arr = np.full((15, 15, 3), 100, np.uint8)
    arr[7, 7] = 255
    assert (median_array(arr, 3) == 100).all()


def test_unsharp_formula():
    arr = RNG.integers(0, 256, (25, 25, 1), dtype=np.uint8)
    sigma, amount, thr = 1.5, 0.7, 4.0
    img = arr[:, :, 0].astype(np.float64)
    blur = ndimage.gaussian_filter(img, sigma, mode="reflect")
    detail = img - blur
    ref = np.where(np.abs(detail) > thr, img + amount * detail, img)
    ref = np.clip(np.rint(ref), 0, 255)
    out = unsharp_array(arr, sigma, amount, thr)[:, :, 0]
    assert np.abs(out.astype(int) - ref).max() <= 1


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


@pytest.mark.parametrize(("name", "params"),
                         [("gaussian", {"sigma": 1.3, "truncate": 3.0}),
                          ("median", {"size": 5}),
                          ("unsharp", {"sigma": 1.0, "amount": 2.0})])
def test_tiled_with_filter_depth_equals_whole(name, params):
    """Blocks padded by filter_depth (reflect at the edges) give the whole-image result."""
    arr = RNG.integers(0, 256, (48, 40, 3), dtype=np.uint8)
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
