"""Geometry ops against reference computations: resize, crop, rotate, flip."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image as PILImage

from dagflow.exceptions import BadInputError
from dagflow.image import Image
from dagflow.ops import get_op
from dagflow.ops.geometry import (
    crop_array,
    crop_box,
    flip_array,
    resize_array,
    resize_shape,
    rotate_array,
)

RNG = np.random.default_rng(0)


def checkerboard(n, dtype=np.uint8, channels=1):
    top = np.iinfo(dtype).max
    board = (np.indices((n, n)).sum(axis=0) % 2 * top).astype(dtype)
    return np.repeat(board[:, :, None], channels, axis=2)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"long_side": 1000}, (1000, 750)),
        ({"long_side": 300}, (300, 225)),
        ({"long_side": 5000}, (4000, 3000)),
        ({"long_side": 8000, "allow_upscale": True}, (8000, 6000)),
        ({"size": [123, 45]}, (123, 45)),
        ({"scale": 0.1}, (400, 300)),
        ({"scale": 0.00001}, (1, 1)),
    ],
)
def test_resize_shape(kwargs, expected):
    assert resize_shape(4000, 3000, **kwargs) == expected


def test_resize_shape_portrait():
    assert resize_shape(300, 4000, long_side=400) == (30, 400)


@pytest.mark.parametrize("gap", [None, 2.0])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 3])
def test_resize_is_antialiased(gap, dtype, channels):
    board = checkerboard(256, dtype, channels)
    out = resize_array(board, 64, 64, reducing_gap=gap)
    assert out.shape == (64, 64, channels) and out.dtype == dtype
    mid = np.iinfo(dtype).max / 2
    assert np.abs(out.astype(float) - mid).max() <= 0.01 * np.iinfo(dtype).max


def test_resize_uint8_matches_pillow_lanczos():
    arr = RNG.integers(0, 256, (97, 131, 3), dtype=np.uint8)
    ref = np.asarray(PILImage.fromarray(arr).resize((40, 30), PILImage.Resampling.LANCZOS))
    np.testing.assert_array_equal(resize_array(arr, 40, 30, reducing_gap=None), ref)


def test_resize_uint16_close_to_pillow_on_8bit_content():
    arr8 = RNG.integers(0, 256, (97, 131, 3), dtype=np.uint8)
    ref = np.asarray(PILImage.fromarray(arr8).resize((40, 30), PILImage.Resampling.LANCZOS))
    out16 = resize_array(arr8.astype(np.uint16) * 257, 40, 30, reducing_gap=None)
    assert out16.dtype == np.uint16
    assert np.abs(out16 / 257.0 - ref).max() <= 1.0


def test_resize_op_sizes_and_no_implicit_upscale():
    img = Image(RNG.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    op = get_op("resize").func
    assert op(img, long_side=40).data.shape == (30, 40, 3)
    assert op(img, size=[17, 9]).data.shape == (9, 17, 3)
    assert op(img, scale=0.5).data.shape == (30, 40, 3)
    same = op(img, long_side=200)
    assert same.data.shape == (60, 80, 3)
    np.testing.assert_array_equal(same.data, img.data)
    assert op(img, long_side=160, allow_upscale=True).data.shape == (120, 160, 3)


def test_resize_alpha_premultiplied():
    rgba = np.zeros((64, 64, 4), np.uint16)
    rgba[:, :32] = [65535, 0, 0, 65535]  # opaque red on the left
    rgba[:, 32:] = [0, 65535, 0, 0]  # transparent green on the right
    out = get_op("resize").func(Image(rgba, {"space": "rgba"}), long_side=8).data
    visible = out[:, :, 3] > 1000
    assert visible.any()
    # the transparent green must not bleed into visible pixels
    assert out[:, :, 1][visible].max() < 200


def test_crop_box_and_clip():
    assert crop_box(100, 80, box=[10, 20, 30, 40]) == (10, 20, 30, 40)
    assert crop_box(100, 80, box=[-10, -10, 30, 30]) == (0, 0, 20, 20)
    assert crop_box(100, 80, box=[90, 70, 50, 50]) == (90, 70, 10, 10)
    assert crop_box(100, 80, center=[50, 40]) == (25, 20, 50, 40)
    assert crop_box(100, 80, center=[500, 40]) == (0, 20, 100, 40)
    with pytest.raises(BadInputError, match="crop_outside"):
        crop_box(100, 80, box=[100, 0, 10, 10])


def test_crop_array_is_a_copy():
    arr = RNG.integers(0, 256, (8, 10, 3), dtype=np.uint8)
    out = crop_array(arr, (2, 3, 4, 5))
    np.testing.assert_array_equal(out, arr[3:8, 2:6])
    assert not np.shares_memory(out, arr)


@pytest.mark.parametrize("angle", [90, 180, 270, -90, 450])
def test_rotate_quarter_turns_exact(angle):
    arr = RNG.integers(0, 65536, (7, 11, 3), dtype=np.uint16)
    np.testing.assert_array_equal(rotate_array(arr, angle), np.rot90(arr, k=(angle // 90) % 4))


def test_rotate_arbitrary_direction_matches_rot90():
    y, x = np.mgrid[0:41, 0:41]
    arr = (x * 3 + y).astype(np.uint8)[:, :, None]
    near = rotate_array(arr, 89.999, expand=False, order=1)
    inner = (slice(5, -5), slice(5, -5))
    assert np.abs(near[inner].astype(int) - np.rot90(arr)[inner]).max() <= 1


def test_rotate_expand_and_fill():
    arr = np.full((20, 40, 3), 100, np.uint8)
    out = rotate_array(arr, 45, expand=True, fill=[255, 0, 0])
    assert out.shape[0] > 40 and out.shape[1] > 40
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    assert out.dtype == np.uint8
    kept = rotate_array(arr, 30, expand=False)
    assert kept.shape == arr.shape


def test_rotate_op_transparent_corners_for_rgba16():
    arr = np.full((20, 20, 4), 65535, np.uint16)
    out = get_op("rotate").func(Image(arr, {"space": "rgba"}), angle=45).data
    assert out.dtype == np.uint16 and out[0, 0, 3] == 0 and out[out.shape[0] // 2,
                                                                out.shape[1] // 2, 3] == 65535


@pytest.mark.parametrize(("axis", "np_axis"),
                         [("horizontal", 1), ("vertical", 0), ("both", (0, 1))])
def test_flip(axis, np_axis):
    arr = RNG.integers(0, 256, (5, 6, 4), dtype=np.uint8)
    np.testing.assert_array_equal(flip_array(arr, axis), np.flip(arr, axis=np_axis))
