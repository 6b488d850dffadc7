"""The composite op: exact formulas per mode and input reconciliation."""

from __future__ import annotations

import numpy as np
import pytest

from dagflow.exceptions import BadInputError
from dagflow.image import Image
from dagflow.ops import get_op
from dagflow.ops.composite import composite_array

RNG = np.random.default_rng(3)
composite = get_op("composite").func


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_modes_exact(dtype):
    top = np.iinfo(dtype).max
    a = RNG.integers(0, top + 1, (8, 9, 3), dtype=dtype)
    b = RNG.integers(0, top + 1, (8, 9, 3), dtype=dtype)
    fa, fb = a.astype(np.float64), b.astype(np.float64)
    expected = {
        "blend": np.rint(fa * 0.75 + fb * 0.25),
        "over": fb,
        "multiply": np.rint(fa * fb / top),
        "add": np.minimum(fa + fb, top),
        "difference": np.abs(fa - fb),
    }
    for mode, ref in expected.items():
        out = composite_array(a, b, mode, 0.25)
        assert out.dtype == dtype
        assert np.abs(out.astype(np.float64) - ref).max() <= (1 if mode == "multiply" else 0), \
            mode


def test_over_uses_b_alpha():
    a = np.full((2, 2, 3), 100, np.uint8)
    b = np.zeros((2, 2, 4), np.uint8)
    b[..., :3] = 200
    b[..., 3] = [[0, 255], [51, 102]]
    out = composite(Image(a), Image(b, {"space": "rgba"}), mode="over").data
    beta = b[..., 3:] / 255
    expected = np.broadcast_to(np.rint(200 * beta + 100 * (1 - beta)), (2, 2, 3))
    np.testing.assert_array_equal(out, expected)
    assert out.shape == (2, 2, 3)


def test_over_porter_duff_with_alpha_on_both():
    a = np.array([[[100, 100, 100, 128]]], np.uint8)
    b = np.array([[[200, 0, 0, 64]]], np.uint8)
    out = composite(Image(a, {"space": "rgba"}), Image(b, {"space": "rgba"}), mode="over")
    ab, aa = 64 / 255, 128 / 255
    out_a = ab + aa * (1 - ab)
    ref_colour = (np.array([200, 0, 0]) * ab + 100 * aa * (1 - ab)) / out_a
    np.testing.assert_array_equal(out.data[0, 0, :3], np.rint(ref_colour))
    assert out.data[0, 0, 3] == round(out_a * 255)


def test_blend_keeps_a_alpha():
    a = RNG.integers(0, 256, (4, 4, 4), dtype=np.uint8)
    b = RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    out = composite(Image(a, {"space": "rgba"}), Image(b), mode="blend", alpha=0.5)
    np.testing.assert_array_equal(out.data[..., 3], a[..., 3])
    assert out.meta["space"] == "rgba"


def test_gray_and_rgb_reconciled():
    a = RNG.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    g = RNG.integers(0, 256, (5, 5, 1), dtype=np.uint8)
    out = composite(Image(a), Image(g), mode="difference").data
    np.testing.assert_array_equal(out, np.abs(a.astype(int) - g.astype(int)))


def test_dtype_of_b_converted_to_a():
    a = np.full((3, 3, 1), 1000, np.uint16)
    b = np.full((3, 3, 1), 2, np.uint8)
    out = composite(Image(a), Image(b), mode="add").data
    assert out.dtype == np.uint16 and (out == 1000 + 2 * 257).all()


def test_size_mismatch():
    a, b = Image(np.zeros((4, 4, 3), np.uint8)), Image(np.full((8, 8, 3), 9, np.uint8))
    with pytest.raises(BadInputError, match="shape_mismatch") as info:
        composite(a, b)
    assert info.value.reason == "shape_mismatch" and "resize_b" in str(info.value)
    out = composite(a, b, mode="add", resize_b=True).data
    assert out.shape == (4, 4, 3) and (out == 9).all()


def test_channels_that_cannot_be_reconciled():
    a = Image(np.zeros((4, 4, 3), np.uint8))
    b = Image(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(BadInputError, match="shape_mismatch"):
        composite(a, b)
