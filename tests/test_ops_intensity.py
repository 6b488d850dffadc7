"""Intensity and colour ops against reference computations."""

from __future__ import annotations

import numpy as np
import pytest

from dagflow.image import Image
from dagflow.ops import get_op
from dagflow.ops.intensity import (
    convert_dtype_array,
    convert_space_array,
    equalize_array,
    luma_array,
    normalize_array,
    otsu_threshold,
    threshold_array,
)

RNG = np.random.default_rng(2)


# --------------------------------------------------------------------------- normalize


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("per_channel", [False, True])
def test_normalize_equals_percentile_mapping(dtype, per_channel):
    if dtype == np.float32:
        arr = (RNG.random((30, 40, 3)) * 0.5 + 0.2).astype(np.float32)
        top = 1.0
    else:
        top = np.iinfo(dtype).max
        arr = RNG.integers(top // 5, top // 2, (30, 40, 3), dtype=dtype)
    out = normalize_array(arr, 2.0, 97.0, per_channel=per_channel)
    assert out.dtype == dtype
    groups = [[0], [1], [2]] if per_channel else [[0, 1, 2]]
    for chans in groups:
        lo, hi = np.percentile(arr[:, :, chans], [2.0, 97.0])
        ref = np.clip((arr[:, :, chans].astype(np.float64) - lo) / (hi - lo) * top, 0, top)
        if dtype == np.float32:
            np.testing.assert_allclose(out[:, :, chans], ref, atol=1e-5)
        else:
            np.testing.assert_array_equal(out[:, :, chans], np.rint(ref))


def test_normalize_keeps_alpha_and_constant_channels():
    arr = np.zeros((10, 10, 4), np.uint16)
    arr[:, :, 0] = RNG.integers(1000, 2000, (10, 10))
    arr[:, :, 1] = 7
    arr[:, :, 3] = 1234
    out = get_op("normalize").func(Image(arr, {"space": "rgba"}), per_channel=True).data
    assert out[:, :, 0].max() == 65535 and out[:, :, 0].min() == 0
    assert (out[:, :, 1] == 7).all()
    assert (out[:, :, 3] == 1234).all()


# --------------------------------------------------------------------------- convert


def test_convert_16_to_8_exact():
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256, 1)
    out = convert_dtype_array(values, "uint8")
    expected = np.floor(values.astype(np.float64) / 257 + 0.5)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8


def test_convert_8_to_16_and_back():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    wide = convert_dtype_array(values, "uint16")
    np.testing.assert_array_equal(wide, values.astype(np.uint32) * 257)
    np.testing.assert_array_equal(convert_dtype_array(wide, "uint8"), values)


def test_convert_signed_and_wide_integers_map_their_whole_range():
    from dagflow.io.write import to_uint8, to_uint16

    signed = np.array([[[-32768], [-1], [0], [32767]]], np.int16)
    np.testing.assert_array_equal(convert_dtype_array(signed, "uint8")[0, :, 0],
                                  [0, 127, 128, 255])
    np.testing.assert_array_equal(convert_dtype_array(signed, "uint8"), to_uint8(signed))
    np.testing.assert_array_equal(convert_dtype_array(signed, "uint16"), to_uint16(signed))
    wide = np.array([[[0], [2**31], [2**32 - 1]]], np.uint32)
    np.testing.assert_array_equal(convert_dtype_array(wide, "uint16")[0, :, 0],
                                  [0, 32768, 65535])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_exact_histogram_counts_every_level(dtype, monkeypatch):
    from dagflow.ops import intensity

    values = np.random.default_rng(2).integers(0, np.iinfo(dtype).max + 1, (301, 257, 3),
                                               dtype=dtype)
    expected = np.bincount(values.ravel(), minlength=np.iinfo(dtype).max + 1)
    np.testing.assert_array_equal(intensity.exact_histogram(values), expected)
    monkeypatch.setattr(intensity, "_HIST_PART", 1000)  # counted in parts, summed
    np.testing.assert_array_equal(intensity.exact_histogram(values[:, :, 1]),
                                  np.bincount(values[:, :, 1].ravel(),
                                              minlength=len(expected)))


def test_exact_histogram_beyond_float32_counts():
    """OpenCV counts in float32, exact only to 2**24: more samples in a bin stay exact."""
    from dagflow.ops.intensity import exact_histogram

    values = np.zeros(2**24 + 3, np.uint8)
    assert exact_histogram(values)[0] == 2**24 + 3


def test_convert_16_to_8_is_rounded_for_every_level():
    levels = np.arange(65536, dtype=np.uint16)[None, :, None]
    np.testing.assert_array_equal(convert_dtype_array(levels, "uint8")[0, :, 0],
                                  np.floor(np.arange(65536) / 257 + 0.5).astype(np.uint8))


def test_convert_float():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    f = convert_dtype_array(values, "float32")
    assert f.dtype == np.float32 and f.max() == 1.0
    np.testing.assert_array_equal(convert_dtype_array(f, "uint8"), values)
    clipped = convert_dtype_array(np.array([[[-0.5, 0.5, 2.0]]], np.float32), "uint16")
    np.testing.assert_array_equal(clipped, [[[0, 32768, 65535]]])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_luma_bt601(dtype):
    top = np.iinfo(dtype).max
    rgb = RNG.integers(0, top + 1, (20, 30, 3), dtype=dtype)
    out = luma_array(rgb)
    ref = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert out.shape == (20, 30, 1) and out.dtype == dtype
    assert np.abs(out[:, :, 0] - ref).max() <= 0.5 + 1e-9
    np.testing.assert_array_equal(luma_array(np.array([[[top, 0, 0]]], dtype)),
                                  [[[round(0.299 * top)]]])


def test_convert_spaces():
    rgb = RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    gray = convert_space_array(rgb, "rgb", "gray")
    np.testing.assert_array_equal(gray, luma_array(rgb))
    np.testing.assert_array_equal(convert_space_array(gray, "gray", "rgb"),
                                  np.repeat(gray, 3, axis=2))
    rgba = convert_space_array(rgb, "rgb", "rgba")
    assert rgba.shape == (4, 5, 4) and (rgba[:, :, 3] == 255).all()
    np.testing.assert_array_equal(convert_space_array(rgba, "rgba", "rgb"), rgb)


def test_convert_rgba_onto_background():
    rgba = np.array([[[200, 100, 0, 0], [200, 100, 0, 255], [200, 100, 0, 51]]], np.uint8)
    out = convert_space_array(rgba, "rgba", "rgb", background=[255, 255, 255])
    a = np.array([0, 1, 0.2])[:, None]
    ref = np.rint(rgba[0, :, :3] * a + 255 * (1 - a))
    np.testing.assert_array_equal(out[0], ref)


def test_convert_op_sets_space_and_dtype():
    img = Image(RNG.integers(0, 65536, (6, 6, 3), dtype=np.uint16))
    out = get_op("convert").func(img, dtype="uint8", space="rgba")
    assert out.dtype == np.uint8 and out.channels == 4 and out.meta["space"] == "rgba"


def test_grayscale_keeps_alpha():
    arr = RNG.integers(0, 65536, (6, 6, 4), dtype=np.uint16)
    op = get_op("grayscale").func
    out = op(Image(arr, {"space": "rgba"}))
    assert out.meta["space"] == "graya" and out.channels == 2 and out.dtype == np.uint16
    np.testing.assert_array_equal(out.data[:, :, 1], arr[:, :, 3])
    np.testing.assert_array_equal(out.data[:, :, :1], luma_array(arr[:, :, :3]))
    assert op(Image(arr, {"space": "rgba"}), keep_alpha=False).channels == 1


# --------------------------------------------------------------------------- equalize


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_equalize_flattens_cdf(dtype):
    top = np.iinfo(dtype).max
    normal = RNG.normal(0.35, 0.08, (200, 200, 1))
    arr = np.clip(normal * top, 0, top).astype(dtype)
    out = equalize_array(arr)
    assert out.dtype == dtype
    values = np.sort(out.ravel().astype(np.float64)) / top
    ecdf = np.arange(1, values.size + 1) / values.size
    counts = np.bincount(arr.ravel(), minlength=top + 1)
    # flat up to the discreteness: one input level cannot be split, outputs are rounded
    assert np.abs(ecdf - values).max() <= counts.max() / arr.size + 1 / top + 1e-3
    # the classic formula
    cdf = np.cumsum(counts)
    cdf_min = cdf[counts.nonzero()[0][0]]
    lut = np.rint((cdf - cdf_min) / (cdf[-1] - cdf_min) * top)
    np.testing.assert_array_equal(out[:, :, 0], lut[arr[:, :, 0]])


def test_equalize_alpha_untouched():
    arr = RNG.integers(0, 100, (10, 10, 2), dtype=np.uint8)
    out = get_op("equalize").func(Image(arr, {"space": "graya"})).data
    np.testing.assert_array_equal(out[:, :, 1], arr[:, :, 1])
    assert out[:, :, 0].max() == 255


# --------------------------------------------------------------------------- threshold


def brute_force_otsu(values, levels):
    best, best_t = -1.0, None
    for t in levels:
        lo, hi = values[values <= t], values[values > t]
        if lo.size == 0 or hi.size == 0:
            continue
        w0, w1 = lo.size / values.size, hi.size / values.size
        between = w0 * w1 * (lo.mean() - hi.mean()) ** 2
        if between > best + 1e-12:
            best, best_t = between, t
    return best_t


def test_otsu_bimodal():
    dark = RNG.normal(60, 8, 5000)
    bright = RNG.normal(190, 10, 3000)
    arr = np.clip(np.concatenate([dark, bright]), 0, 255).astype(np.uint8).reshape(80, 100, 1)
    t = otsu_threshold(arr)
    assert 60 < t < 190
    labels = np.concatenate([np.zeros(5000, bool), np.ones(3000, bool)])
    assert ((arr.ravel() > t) == labels).mean() > 0.99
    out = threshold_array(arr, method="otsu")
    assert set(np.unique(out)) == {0, 255}
    assert (out > 0).sum() == (arr > t).sum()


def test_otsu_matches_hand_computation():
    values = np.array([0, 0, 1, 1, 2, 5, 6, 6, 7, 7, 7, 3], np.uint8)
    assert otsu_threshold(values.reshape(3, 4, 1)) == brute_force_otsu(values, range(8))
    arr16 = RNG.integers(0, 65536, 500).astype(np.uint16)
    assert otsu_threshold(arr16.reshape(20, 25, 1)) == brute_force_otsu(
        arr16.astype(np.int64), np.unique(arr16))


def test_threshold_op_value_in_levels_and_single_channel():
    arr = RNG.integers(0, 65536, (10, 10, 3), dtype=np.uint16)
    out = get_op("threshold").func(Image(arr), value=128)
    assert out.channels == 1 and out.dtype == np.uint16 and out.meta["space"] == "gray"
    gray = luma_array(arr)
    np.testing.assert_array_equal(out.data, np.where(gray > 128 * 257, 65535, 0))
