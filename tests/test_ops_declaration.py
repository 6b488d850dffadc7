"""The op declaration is the one place that knows about an op: its output header, its
tiling and its array backends, read by the memory model, the tiled path and the GPU path,
and nothing outside ``dagflow/ops/`` switches on an op's name."""

from __future__ import annotations

import ast
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from scipy import ndimage

import dagflow
from dagflow import Node, Workflow
from dagflow.compile import node_tasks
from dagflow.image import Image
from dagflow.io import probe_header, read_image
from dagflow.ops import Param, filter_depth, get_op, list_ops, register_op, tiling
from dagflow.resources import MemoryModel, header_fields
from dagflow.testing import photo_like

ROOT = Path(dagflow.__file__).resolve().parent
SPACES = {1: "gray", 2: "graya", 3: "rgb", 4: "rgba"}

#: Every built-in transform with parameters that exercise its output rule.
TRANSFORMS = [
    ("resize", {"long_side": 40}), ("resize", {"size": [33, 71], "allow_upscale": True}),
    ("resize", {"scale": 0.37}), ("resize", {"long_side": 500}),
    ("crop", {"box": [10, 5, 30, 200]}), ("crop", {"center": [21, 13]}),
    ("rotate", {"angle": 90}), ("rotate", {"angle": 270, "expand": False}),
    ("rotate", {"angle": 30}), ("rotate", {"angle": 30, "expand": False}),
    ("flip", {"axis": "both"}), ("gaussian", {"sigma": 1.5}), ("median", {"size": 3}),
    ("unsharp", {"sigma": 1.0}), ("normalize", {}), ("equalize", {}),
    ("convert", {"dtype": "uint16"}), ("convert", {"dtype": "float32", "space": "gray"}),
    ("convert", {"space": "rgba"}), ("convert", {"space": "rgb", "dtype": "uint8"}),
    ("grayscale", {}), ("grayscale", {"keep_alpha": False}), ("threshold", {"value": 100}),
    ("threshold", {"method": "otsu"}),
]


@pytest.mark.parametrize("op,params", TRANSFORMS, ids=[f"{o}-{i}" for i, (o, _) in
                                                        enumerate(TRANSFORMS)])
@pytest.mark.parametrize("dtype,channels", [(np.uint8, 3), (np.uint16, 1), (np.uint8, 4),
                                            (np.float32, 2)])
def test_the_declared_output_header_is_what_the_op_produces(op, params, dtype, channels):
    """Planning estimates every node on the header the op declares: it must be the
    image the op really hands on (size, channels, dtype, colour space)."""
    spec = get_op(op)
    full, problems = spec.resolve_params(params)
    assert problems == []
    image = Image(photo_like(57, 86, channels=channels, dtype=dtype, seed=channels),
                  {"space": SPACES[channels]})
    if op == "convert" and full["space"] == "gray" and channels < 3:
        pytest.skip("gray to gray")
    header = {"width": 86, "height": 57, "channels": channels, "dtype": np.dtype(dtype).name,
              "itemsize": np.dtype(dtype).itemsize, "space": SPACES[channels]}
    out = spec.output_header(header, full)
    produced = spec.func(image, **full)
    assert (out["width"], out["height"], out["channels"]) == (
        produced.width, produced.height, produced.channels)
    assert (out["dtype"], out["itemsize"]) == (produced.dtype.name, produced.dtype.itemsize)
    assert out["space"] == produced.meta["space"]


def test_loads_declared_header_is_the_decoded_image(tmp_path):
    """EXIF orientation swapped, JPEG draft reduction applied, orientation 1 after."""
    exif = PILImage.Exif()
    exif[0x0112] = 6
    path = tmp_path / "turned.jpg"
    PILImage.fromarray(photo_like(300, 500, seed=1)).save(path, exif=exif, quality=90)
    header = header_fields(probe_header(path))
    spec = get_op("load")
    for params in ({"reduce_to": 100}, {"reduce_to": None}, {"auto_orient": False}):
        full = spec.resolve_params(params)[0]
        out = spec.output_header(header, full)
        image = read_image(path, auto_orient=full["auto_orient"], reduce_to=full["reduce_to"])
        assert (out["width"], out["height"], out["channels"]) == (
            image.width, image.height, image.channels), params
        assert out["orientation"] == 1


# --------------------------------------------------------------------------- a user's op


def _erode(image: Image, *, radius: int) -> Image:
    """Grey erosion of the colour channels over a square of side 2 radius + 1."""
    size = (2 * radius + 1, 2 * radius + 1, 1)
    return image.replace(ndimage.minimum_filter(np.asarray(image.data), size=size,
                                                mode="reflect"))


def _erode_memory(header, params):
    return header["width"] * header["height"] * header["channels"] * header["itemsize"] * 2


def _to_float(image: Image) -> Image:
    """Pixels as float32, 0-1."""
    data = np.asarray(image.data)
    top = np.iinfo(data.dtype).max if data.dtype.kind in "ui" else 1.0
    return image.replace((data / np.float32(top)).astype(np.float32))


@pytest.fixture(scope="module")
def users_ops():
    """Two ops as a user declares them: an overlap filter and a pointwise dtype change."""
    register_op("erode_demo", params=[Param("radius", int, 1, "pixels", minimum=0)],
                memory=_erode_memory, replace=True,
                tiling=tiling.overlap(lambda params: params["radius"]))(_erode)
    register_op("to_float_demo", memory_factor=6.0, replace=True,
                output=lambda header, params: {"dtype": "float32"},
                tiling="pointwise")(_to_float)
    return get_op("erode_demo"), get_op("to_float_demo")


def test_a_users_op_declares_its_output_and_its_memory(users_ops):
    """The memory model reads the user's declaration: the float32 output of
    ``to_float_demo`` is what the next node is estimated on (4 bytes a sample)."""
    wf = Workflow("u", [Node("load", "load"), Node("f", "to_float_demo", after="load"),
                        Node("e", "erode_demo", {"radius": 2}, after="f"),
                        Node("save", "save", {"format": "tiff"}, after="e")])
    model = MemoryModel(node_tasks(wf))
    item = {"width": 1000, "height": 500, "channels": 3, "dtype": "uint8", "format": "png"}
    _load, to_float, erode, _save = model.estimates(item)
    decoded = 1000 * 500 * 3
    assert to_float.inputs == decoded and to_float.output == 4 * decoded
    assert to_float.peak == 6 * decoded  # its memory_factor, of its input
    assert erode.inputs == 4 * decoded and erode.peak == 2 * 4 * decoded  # its memory model
    assert model.headers_through(item)["e"]["dtype"] == "float32"
    assert filter_depth("erode_demo", {"radius": 4}) == 4
    assert filter_depth("erode_demo", {}) == 1  # the parameter's default


def test_a_users_op_runs_tiled_equal_to_the_whole_image(users_ops, tmp_path):
    """Declared ``overlap`` and ``pointwise``, the user's own functions run block by
    block: the results equal the whole-image ones, dtype and all."""
    import tifffile

    from dagflow.io.lazy import open_image
    from dagflow.tiled import apply_op, not_tileable

    data = photo_like(150, 170, channels=3, dtype=np.uint16, seed=5)
    tifffile.imwrite(tmp_path / "a.tif", data, tile=(32, 32), photometric="rgb")
    lazy = open_image(tmp_path / "a.tif", chunks=48)
    whole = Image(data, {"space": "rgb"})
    eroded = apply_op(lazy, "erode_demo", {"radius": 3})
    np.testing.assert_array_equal(eroded.values, _erode(whole, radius=3).data)
    floats = apply_op(eroded, "to_float_demo")
    assert floats.dtype == np.float32 and floats.attrs["dtype"] == "float32"
    np.testing.assert_array_equal(floats.values,
                                  _to_float(_erode(whole, radius=3)).data)
    register_op("undeclared_demo", replace=True)(lambda image: image)
    assert not_tileable("undeclared_demo", {}) == \
        "op 'undeclared_demo' has no tiled implementation"


def test_a_result_that_contradicts_the_declaration_is_an_error(tmp_path):
    """A pointwise op whose function changes the dtype without declaring it, a lazy op
    whose result has another size: the tiled result would be mislabelled (and planned on
    the wrong header), so it fails and says what to declare."""
    import tifffile

    from dagflow.io.lazy import open_image
    from dagflow.tiled import apply_op

    register_op("sneaky_demo", tiling="pointwise", replace=True)(_to_float)
    tifffile.imwrite(tmp_path / "a.tif", photo_like(40, 50, seed=1), photometric="rgb")
    out = apply_op(open_image(tmp_path / "a.tif", chunks=32), "sneaky_demo")
    assert out.dtype == np.uint8  # what the declaration says
    with pytest.raises(ValueError, match="declare output="):
        out.compute()
    # an op that builds its own lazy result: checked at once, before anything computes
    register_op("halve_demo", replace=True,
                tiling=tiling.lazy(lambda array, meta: array[::2, ::2]))(lambda image: image)
    with pytest.raises(ValueError, match=r"built a \(20, 25, 3\) result where its output "
                                         r"header says \(40, 50, 3\)"):
        apply_op(open_image(tmp_path / "a.tif", chunks=32), "halve_demo")


def test_declarations_are_checked_when_registered():
    with pytest.raises(ValueError, match="does not fit a sink op"):
        register_op("bad_sink_demo", kind="sink", tiling="pointwise")(lambda i, d: d)
    with pytest.raises(ValueError, match="2 images does not tile"):
        register_op("bad_two_demo", inputs=2, tiling="pointwise")(lambda a, b: a)
    with pytest.raises(ValueError, match="does not fit a transform"):
        register_op("bad_source_demo", tiling=tiling.source(open))(lambda i: i)
    with pytest.raises(TypeError, match="tiling= takes"):
        register_op("bad_word_demo", tiling="blockwise")(lambda i: i)
    assert tiling.overlap(3).overlap_depth({}) == 3
    depth = tiling.overlap(lambda p: math.ceil(p["truncate"] * p["sigma"]))
    assert depth.overlap_depth({"sigma": 1.5, "truncate": 4.0}) == 6


# --------------------------------------------------------------------------- the built-ins


def test_every_builtin_declaration_travels_by_reference():
    """A node's task carries its op's declaration: every built-in one pickles as
    references to module-level functions (no lambdas, which plain pickle refuses)."""
    for spec in list_ops():
        if spec.func.__module__.startswith("dagflow."):
            assert pickle.loads(pickle.dumps(spec)) == spec, spec.name


def test_array_functions_travel_by_reference():
    """A function pickled by value (a notebook's op) that calls a built-in array function
    finds the worker's own one, with the implementations registered there; one defined
    in a notebook travels by value."""
    import cloudpickle

    from dagflow.ops import backends, filters

    for func in (filters.gaussian_array, filters.median_array):
        assert pickle.loads(pickle.dumps(func)) is func
        assert cloudpickle.loads(cloudpickle.dumps(func)) is func
    local = backends.array_function(lambda arr: arr * 2)
    copy = cloudpickle.loads(cloudpickle.dumps(local))
    assert copy is not local and copy.backends == ("numpy",) and copy(3) == 6


def test_builtin_tilings_and_backends():
    kinds = {spec.name: spec.tiling.kind if spec.tiling else None for spec in list_ops()
             if spec.func.__module__.startswith("dagflow.")}
    assert kinds == {
        "load": "source", "save": "sink", "resize": "lazy", "crop": "lazy", "flip": "lazy",
        "rotate": "lazy", "gaussian": "overlap", "median": "overlap", "unsharp": "overlap",
        "convert": "pointwise", "grayscale": "pointwise", "threshold": "pointwise",
        "normalize": "reduction", "equalize": "reduction", "composite": None, "stats": None,
        "contact_sheet": None}
    on_gpu = {s.name for s in list_ops() if "cupy" in s.backends}
    assert on_gpu >= {"resize", "gaussian", "median", "unsharp", "normalize", "convert"}
    assert all(s.backends[0] == "numpy" for s in list_ops())


# --------------------------------------------------------------------------- the guard

#: Where op names may be switched on: an op's own module.
OWN_MODULES = ROOT / "ops"


def _builtin_names() -> set[str]:
    return {s.name for s in list_ops() if s.func.__module__.startswith("dagflow.")}


def _op_like(node: ast.AST) -> bool:
    """``op``, ``op_name``, ``task.op``, ``spec.name``...: an expression naming an op."""
    if isinstance(node, ast.Name):
        return node.id in ("op", "op_name", "op_id")
    if isinstance(node, ast.Attribute):
        return node.attr in ("op", "op_name") or (
            node.attr == "name" and isinstance(node.value, ast.Name)
            and "spec" in node.value.id)
    return False


def _names_in(node: ast.AST, names: set[str]) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value} & names
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return set().union(*(_names_in(e, names) for e in node.elts))
    if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("frozenset", "set"):
        return set().union(*(_names_in(a, names) for a in node.args))
    return set()


def op_name_switches(source: str, names: set[str]) -> list[str]:
    """Every place in ``source`` that decides by an op's name: a comparison of an op
    expression with built-in op names (``op == "resize"``, ``task.op in (...)``), and a
    collection or mapping of three or more built-in op names (a table of ops)."""
    found: dict[int, str] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_op_like(s) for s in sides) and any(_names_in(s, names) for s in sides):
                found.setdefault(node.lineno, ast.unparse(node))
        elif isinstance(node, ast.Tuple | ast.List | ast.Set | ast.Call):
            if len(_names_in(node, names)) >= 3:
                found.setdefault(node.lineno, "a collection of op names")
        elif isinstance(node, ast.Dict):
            keys = set().union(*(_names_in(k, names) for k in node.keys if k is not None))
            if len(keys) >= 3:
                found.setdefault(node.lineno, "a mapping by op name")
    return [f"line {line}: {what}" for line, what in sorted(found.items())]


def test_nothing_outside_the_ops_switches_on_op_names():
    names = _builtin_names()
    problems = {}
    for path in sorted(ROOT.rglob("*.py")):
        if OWN_MODULES in path.parents:
            continue
        found = op_name_switches(path.read_text(encoding="utf-8"), names)
        if found:
            problems[str(path.relative_to(ROOT))] = found
    assert problems == {}


def test_the_guard_finds_what_it_looks_for():
    names = _builtin_names()
    code = '''
TILED = frozenset({"gaussian", "median", "unsharp"})
OUT = {"resize": 1, "crop": 2, "rotate": 3}
def f(op, task, spec):
    if op == "resize": pass
    if task.op in ("normalize", "equalize"): pass
    if spec.name != "load": pass
    if op == "mine": pass
    if kind in ("sink", "aggregate"): pass
    bokeh(tools="save")
'''
    found = op_name_switches(code, names)
    assert [f.split(":")[0] for f in found] == [
        "line 2", "line 3", "line 5", "line 6", "line 7"]
