"""``load`` and ``save`` round-trip through :mod:`dagflow.io` (which tests the codecs)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from dagflow.image import Image
from dagflow.ops import get_op


@pytest.mark.parametrize(("fmt", "dtype"), [("png", np.uint8), ("png", np.uint16),
                                            ("tiff", np.uint16)])
def test_save_then_load_lossless(tmp_path, fmt, dtype):
    top = np.iinfo(dtype).max
    arr = np.random.default_rng(6).integers(0, top + 1, (12, 17, 3), dtype=dtype)
    save, load = get_op("save"), get_op("load")
    params = save.resolve_params({"format": fmt})[0]
    path = save.func(Image(arr), str(tmp_path / "sub" / "img"), **params)
    assert path == str(tmp_path / "sub" / "img") + save.suffix(params)
    assert os.path.exists(path)
    back = load.func(path, **load.resolve_params({})[0])
    assert back.dtype == dtype
    np.testing.assert_array_equal(back.data, arr)


def test_jpeg_reduce_to(tmp_path):
    arr = np.full((400, 600, 3), 128, np.uint8)
    save, load = get_op("save"), get_op("load")
    path = save.func(Image(arr), str(tmp_path / "big"), **save.resolve_params({})[0])
    small = load.func(path, **load.resolve_params({"reduce_to": 100})[0])
    assert max(small.width, small.height) >= 100
    assert small.width < 600
