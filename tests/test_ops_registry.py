"""The built-in ops are registered, documented and validate their parameters."""

from __future__ import annotations

import pytest

import dagflow.ops
from dagflow.ops import Param, get_op, list_ops, register_op

BUILTINS = {
    "load": "source", "save": "sink", "resize": "transform", "crop": "transform",
    "rotate": "transform", "flip": "transform", "gaussian": "transform",
    "median": "transform", "unsharp": "transform", "normalize": "transform",
    "convert": "transform", "grayscale": "transform", "equalize": "transform",
    "threshold": "transform", "composite": "transform", "stats": "aggregate",
    "contact_sheet": "aggregate",
}


def test_reexports():
    assert dagflow.ops.register_op is register_op
    assert dagflow.ops.Param is Param
    assert callable(dagflow.ops.filter_depth)


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_registered_and_documented(name):
    spec = get_op(name)
    assert spec.kind == BUILTINS[name]
    assert spec.doc and "\n" not in spec.doc and len(spec.doc) < 120
    for p in spec.params:
        assert p.doc, f"{name}.{p.name} has no doc"
    if spec.kind in ("sink", "aggregate"):
        assert spec.suffix is not None
    if spec.kind == "aggregate":
        assert spec.reduce is not None
    header = {"width": 1000, "height": 800, "channels": 3, "itemsize": 1, "format": "jpeg"}
    resolved, problems = spec.resolve_params(_valid_params(name))
    assert problems == []
    assert spec.estimate_memory(header, resolved) >= 1000 * 800 * 3 * (name != "load") * 0.1


def _valid_params(name):
    return {"rotate": {"angle": 30}, "gaussian": {"sigma": 1.0},
            "unsharp": {"sigma": 1.0}, "resize": {"long_side": 100},
            "crop": {"box": [0, 0, 10, 10]}, "convert": {"dtype": "uint8"},
            "threshold": {"method": "otsu"}}.get(name, {})


def test_listed():
    names = {spec.name for spec in list_ops()}
    assert set(BUILTINS) <= names
    assert get_op("composite").inputs == 2
    assert get_op("load").inputs == 0


def problems(name, params):
    return get_op(name).resolve_params(params)[1]


def test_missing_required():
    (p,) = problems("gaussian", {})
    assert "missing required parameter 'sigma'" in p


def test_wrong_type():
    (p,) = problems("gaussian", {"sigma": "big"})
    assert "'sigma'" in p and "expected a number" in p


def test_out_of_range():
    (p,) = problems("save", {"quality": 0})
    assert "'quality'" in p and ">= 1" in p
    (p,) = problems("normalize", {"high": 101})
    assert "'high'" in p and "<= 100" in p


def test_bad_choice():
    (p,) = problems("flip", {"axis": "diagonal"})
    assert "'axis'" in p and "'horizontal'" in p


def test_unknown_with_suggestion():
    (p,) = problems("gaussian", {"sigma": 1.0, "sigm": 2})
    assert "unknown parameter 'sigm'" in p and "did you mean 'sigma'" in p


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("resize", {"long_side": 100, "scale": 0.5}, "exactly one of"),
        ("resize", {}, "exactly one of"),
        ("resize", {"size": [10, 0]}, "'size'"),
        ("resize", {"size": [10, 20, 30]}, "'size'"),
        ("resize", {"scale": 2.0}, "allow_upscale"),
        ("crop", {"box": [0, 0, 5, 5], "center": [3, 3]}, "exactly one of"),
        ("crop", {"box": [0, 0, 5]}, "'box'"),
        ("median", {"size": 4}, "odd"),
        ("normalize", {"low": 60, "high": 40}, "low < high"),
        ("convert", {}, "at least one of"),
        ("threshold", {}, "exactly one of"),
        ("threshold", {"value": 10, "method": "otsu"}, "exactly one of"),
        ("save", {"format": "jpeg", "compression": "lzw"}, "tiff and png only"),
        ("save", {"format": "tiff", "compression": "bogus"}, "for tiff"),
        ("save", {"format": "png", "compression": 12}, "0-9"),
        ("save", {"format": "png", "lossless": True}, "webp only"),
        ("save", {"format": "tiff", "tile": [100, 100]}, "multiples of 16"),
        ("save", {"format": "jpeg", "tile": [256, 256]}, "tiff only"),
        ("save", {"subdir": "../escape"}, "'subdir'"),
        ("save", {"subdir": "/abs"}, "'subdir'"),
        ("contact_sheet", {"background": [1, 2]}, "'background'"),
    ],
)
def test_cross_parameter_rules(name, params, expected):
    found = problems(name, params)
    assert found and any(expected in p for p in found), found


def test_valid_cross_parameter_combinations():
    assert problems("resize", {"scale": 2.0, "allow_upscale": True}) == []
    assert problems("save", {"format": "tiff", "compression": "zstd", "tile": [256, 256],
                             "subdir": "thumbs/small"}) == []
    assert problems("save", {"format": "png", "compression": 6}) == []
    assert problems("save", {"format": "webp", "lossless": True}) == []


def test_suffixes():
    save = get_op("save")
    for fmt, suffix in {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "tiff": ".tif"}.items():
        assert save.suffix(save.resolve_params({"format": fmt})[0]) == suffix
    assert get_op("stats").suffix({}) == ".parquet"
    assert get_op("contact_sheet").suffix({"format": "png"}) == ".png"


def test_memory_models_depend_on_params():
    header = {"width": 4000, "height": 3000, "channels": 3, "itemsize": 1}
    resize = get_op("resize")
    small = resize.estimate_memory(header, {"long_side": 100})
    big = resize.estimate_memory(header, {"scale": 2.0, "allow_upscale": True})
    assert big > 3 * small
    gaussian = get_op("gaussian")
    # input and output in uint8, plus the colour channels made contiguous for OpenCV
    # and its output, in uint8 too (its 8-bit path, taken at sigma 1.5); at sigma 2,
    # with 16-bit weights, as 16-bit values
    def factor(sigma):
        return gaussian.estimate_memory(header, {"sigma": sigma}) / (4000 * 3000 * 3)

    assert (factor(1.5), factor(2.0)) == (4, 6)
    load = get_op("load")
    jpeg = {**header, "format": "jpeg"}
    assert load.estimate_memory(jpeg, {"reduce_to": 500}) < load.estimate_memory(jpeg, {}) / 10
