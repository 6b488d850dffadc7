"""Every transform keeps the dtype (16-bit stays 16-bit) on 1, 3 and 4 channel images."""

from __future__ import annotations

import numpy as np
import pytest

from dagflow.image import Image
from dagflow.ops import get_op

RNG = np.random.default_rng(5)

CASES = {
    "resize": {"long_side": 20},
    "crop": {"box": [2, 3, 10, 12]},
    "rotate": {"angle": 30},
    "flip": {"axis": "both"},
    "gaussian": {"sigma": 1.0},
    "median": {"size": 3},
    "unsharp": {"sigma": 1.0, "amount": 1.5},
    "normalize": {},
    "equalize": {},
    "threshold": {"method": "otsu"},
    "grayscale": {},
    "convert": {"space": "rgb"},
}
CHANNELS = {"threshold": lambda c: 1, "grayscale": lambda c: 2 if c == 4 else 1,
            "convert": lambda c: 3}
SPACES = {1: "gray", 3: "rgb", 4: "rgba"}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_dtype_and_channels(name, dtype, channels):
    spec = get_op(name)
    params, problems = spec.resolve_params(CASES[name])
    assert problems == []
    top = np.iinfo(dtype).max
    arr = RNG.integers(0, top + 1, (30, 40, channels), dtype=dtype)
    out = spec.func(Image(arr, {"space": SPACES[channels]}), **params)
    assert out.dtype == dtype
    assert out.channels == CHANNELS.get(name, lambda c: c)(channels)
    assert out.data.ndim == 3


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_composite_dtype(dtype, channels):
    top = np.iinfo(dtype).max
    a = Image(RNG.integers(0, top + 1, (10, 12, channels), dtype=dtype),
              {"space": SPACES[channels]})
    for mode in ("blend", "over", "multiply", "add", "difference"):
        out = get_op("composite").func(a, a, mode=mode)
        assert out.dtype == dtype and out.channels == channels


def test_float_images_stay_float():
    arr = RNG.random((16, 16, 3)).astype(np.float32)
    for name in ("gaussian", "median", "unsharp", "normalize", "equalize", "resize", "rotate"):
        spec = get_op(name)
        params = spec.resolve_params({**CASES[name], **({"long_side": 8}
                                                        if name == "resize" else {})})[0]
        assert spec.func(Image(arr), **params).dtype == np.float32, name
