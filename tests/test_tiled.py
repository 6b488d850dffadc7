"""Images larger than memory: lazy TIFF reading, tiled ops equal to whole-image ops,
tiled (Big/OME-)TIFF writing, and oversize items routed through the tiled path in a run."""

from __future__ import annotations

import importlib
import os
import pickle
from pathlib import Path

import cloudpickle
import dask
import numpy as np
import pyarrow.dataset as ds
import pytest
import tifffile
from PIL import Image as PILImage

import dagflow
from dagflow import Node, Workflow
from dagflow.exceptions import BadInputError
from dagflow.image import Image
from dagflow.io import read_image
from dagflow.io.lazy import TiffBlockReader, open_image
from dagflow.ops import get_op
from dagflow.ops.geometry import resize_array
from dagflow.testing import photo_like
from dagflow.tiled import apply_op, chain_problem, not_tileable, tiled_ops, write_tiff

ROOT = Path(__file__).resolve().parent.parent


def write(path: Path, data: np.ndarray, **kwargs) -> Path:
    tifffile.imwrite(path, data, **kwargs)
    return path


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return photo_like(300, 410, channels=3, seed=2)


LAYOUTS = {
    "tiled-zlib-bigtiff": dict(tile=(64, 64), compression="zlib", bigtiff=True,
                               photometric="rgb"),
    "striped": dict(rowsperstrip=17, photometric="rgb"),
    "one-strip": dict(photometric="rgb"),
    "separate-planes": dict(planarconfig="separate", tile=(64, 48), photometric="rgb"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_open_image_reads_every_layout_like_read_image(tmp_path, rgb, layout):
    options = LAYOUTS[layout]
    data = np.ascontiguousarray(rgb.transpose(2, 0, 1)) if layout == "separate-planes" \
        else rgb
    path = write(tmp_path / "a.tif", data, **options)
    img = open_image(path, chunks=100)
    assert img.dims == ("y", "x", "c") and img.shape == (300, 410, 3)
    assert img.attrs["space"] == "rgb" and img.attrs["format"] == "tiff"
    assert img.attrs["bigtiff"] is (layout == "tiled-zlib-bigtiff")
    np.testing.assert_array_equal(img.data.compute(scheduler="sync"), read_image(path).data)
    if "tile" in options:  # blocks aligned to whole tiles
        th, tw = options["tile"]
        assert all(c % th == 0 for c in img.data.chunks[0][:-1])
        assert all(c % tw == 0 for c in img.data.chunks[1][:-1])


@pytest.mark.parametrize("dtype,channels", [(np.uint16, 1), (np.float32, 1), (np.uint8, 4),
                                            (np.uint16, 3)])
def test_open_image_dtypes_and_channels(tmp_path, dtype, channels):
    data = photo_like(130, 90, channels=channels, dtype=dtype, seed=3)
    extra = {"extrasamples": ("unassalpha",)} if channels == 4 else {}
    path = write(tmp_path / "a.tif", data[:, :, 0] if channels == 1 else data,
                 tile=(32, 32), photometric="rgb" if channels >= 3 else "minisblack", **extra)
    img = open_image(path, chunks=64)
    assert img.dtype == dtype and img.shape == (130, 90, channels)
    np.testing.assert_array_equal(img.values, read_image(path).data)


def test_open_image_is_lazy_and_its_graph_pickles(tmp_path, rgb, monkeypatch):
    path = write(tmp_path / "a.tif", rgb, tile=(64, 64), photometric="rgb")
    calls = []
    original = TiffBlockReader.read
    monkeypatch.setattr(TiffBlockReader, "read",
                        lambda self, *a: calls.append(a) or original(self, *a))
    img = dagflow.open_image(path, chunks=128)
    blurred = apply_op(img, "gaussian", {"sigma": 2.0})
    assert calls == []  # nothing decoded to open it or to build on it
    # the graph holds paths and layouts, no open file: it travels to any worker
    graph = dict(blurred.data.__dask_graph__())
    assert pickle.loads(cloudpickle.dumps(graph)).keys() == graph.keys()
    region = img[128:192, 64:128].values
    assert len(calls) == 1 and calls[0] == (128, 256, 0, 128)
    np.testing.assert_array_equal(region, rgb[128:192, 64:128])


def test_orientation_is_applied_lazily(tmp_path, rgb):
    path = write(tmp_path / "a.tif", rgb, tile=(32, 32), photometric="rgb",
                 extratags=[(274, 3, 1, 6, True)])
    img = open_image(path, chunks=64)
    assert img.attrs["source_orientation"] == 6 and img.shape == (410, 300, 3)
    np.testing.assert_array_equal(img.values, read_image(path).data)


def test_open_image_refuses_what_it_cannot_read_lazily(tmp_path, rgb):
    palette = write(tmp_path / "p.tif", rgb[:, :, 0], photometric="palette",
                    colormap=np.tile(np.arange(256, dtype=np.uint16) * 257, (3, 1)))
    with pytest.raises(BadInputError, match="unsupported_mode"):
        open_image(palette)
    with pytest.raises(BadInputError, match="missing"):
        open_image(tmp_path / "nope.tif")
    (tmp_path / "x.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(BadInputError):
        open_image(tmp_path / "x.tif")


def test_a_file_changed_under_a_lazy_image_is_not_mixed(tmp_path, rgb):
    path = write(tmp_path / "a.tif", rgb, tile=(64, 64), photometric="rgb")
    img = open_image(path, chunks=64)
    os.utime(path, ns=(1, 1))
    with pytest.raises(BadInputError, match="changed"):
        _ = img.values


# --------------------------------------------------------------------------- ops


@pytest.fixture(scope="module")
def lazy(tmp_path_factory, rgb):
    path = write(tmp_path_factory.mktemp("t") / "a.tif", rgb, tile=(32, 32),
                 compression="zlib", photometric="rgb")
    return open_image(path, chunks=64)


EXACT = [
    ("gaussian", {"sigma": 2.5}), ("gaussian", {"sigma": 9.0, "truncate": 3.0}),
    ("median", {"size": 5}), ("unsharp", {"sigma": 1.5, "amount": 1.5, "threshold": 2.0}),
    ("convert", {"dtype": "uint16"}), ("convert", {"space": "rgba"}),
    ("grayscale", {}), ("threshold", {"value": 120}),
    ("normalize", {"low": 2, "high": 98}), ("normalize", {"per_channel": True}),
    ("equalize", {}), ("crop", {"box": [10, 20, 300, 250]}), ("flip", {"axis": "both"}),
    ("rotate", {"angle": 270}),
]


@pytest.mark.parametrize("op,params", EXACT, ids=[f"{o}-{i}" for i, (o, _) in enumerate(EXACT)])
def test_tiled_ops_equal_the_whole_image_result(lazy, rgb, op, params):
    spec = get_op(op)
    full, _ = spec.resolve_params(params)
    expected = spec.func(Image(rgb.copy(), {"space": "rgb"}), **full)
    out = apply_op(lazy, op, params)
    np.testing.assert_array_equal(out.values, expected.data)  # filters too: exact kernels
    assert out.attrs["space"] == expected.meta["space"]
    assert (out.attrs["width"], out.attrs["height"]) == (expected.width, expected.height)


@pytest.mark.parametrize("params", [{"scale": 0.5}, {"scale": 0.3}, {"long_side": 123},
                                    {"scale": 1.7, "allow_upscale": True},
                                    {"size": [400, 90]}])
def test_tiled_resize_by_any_factor_matches_pure_lanczos(lazy, rgb, params):
    out = apply_op(lazy, "resize", params).values
    h, w = out.shape[:2]
    expected = resize_array(rgb, w, h, reducing_gap=None)
    # Pillow's 8-bit resample rounds to 8 bits between its two passes; a block's weights
    # come from box offsets that differ from the whole image's in the last float bits,
    # which can move either rounding by one level: one level after the first pass,
    # amplified by the sum of the Lanczos weights' magnitudes (< 1.3), plus one
    np.testing.assert_allclose(out, expected, rtol=0, atol=2)


def test_tiled_ops_keep_alpha_and_16_bit(tmp_path):
    data = photo_like(150, 170, channels=4, dtype=np.uint16, seed=5)
    path = write(tmp_path / "a.tif", data, tile=(32, 32), photometric="rgb",
                 extrasamples=("unassalpha",))
    img = open_image(path, chunks=64)
    assert img.attrs["space"] == "rgba"
    expected = get_op("gaussian").func(Image(data, {"space": "rgba"}), sigma=3.0)
    blurred = apply_op(img, "gaussian", {"sigma": 3.0}).values
    np.testing.assert_array_equal(blurred, expected.data)
    np.testing.assert_array_equal(blurred[:, :, 3], data[:, :, 3])
    small = apply_op(img, "resize", {"scale": 0.5}).values
    ref = resize_array(data, 85, 75, alpha=True, reducing_gap=None)
    assert np.abs(small.astype(int) - ref.astype(int)).max() <= 2


def test_what_cannot_run_tiled_says_why(lazy):
    assert not_tileable("composite", {}) == "op 'composite' has no tiled implementation"
    assert "otsu" in not_tileable("threshold", {"method": "otsu"})
    assert "8- or 16-bit" in not_tileable("normalize", {}, np.float32)
    assert "90" in not_tileable("rotate", {"angle": 30})
    with pytest.raises(ValueError, match="otsu"):
        apply_op(lazy, "threshold", {"method": "otsu"})
    # turned a quarter without expanding, the whole-image op keeps a non-square size
    with pytest.raises(ValueError, match="square"):
        apply_op(lazy, "rotate", {"angle": 90, "expand": False})
    # the tiled ops are those whose declaration tiles (the old constant reads them)
    assert {"gaussian", "median", "unsharp", "convert", "grayscale", "threshold",
            "normalize", "equalize", "resize", "crop", "flip", "rotate"} <= tiled_ops()
    assert not {"composite", "load", "save", "stats"} & tiled_ops()
    assert tiled_ops() == dagflow.tiled.TILED_OPS


def test_tiled_ops_compute_on_a_cluster(lazy, rgb, client):
    out = apply_op(lazy, "gaussian", {"sigma": 2.0}).data
    result = client.compute(out).result()
    np.testing.assert_array_equal(result, get_op("gaussian").func(Image(rgb), sigma=2.0).data)


# --------------------------------------------------------------------------- writing


@pytest.mark.parametrize("ome", [False, True])
def test_write_tiff_tile_by_tile(tmp_path, lazy, rgb, ome):
    out = apply_op(lazy, "flip", {"axis": "vertical"})
    path = write_tiff(out, tmp_path / "out.tif", tile=(48, 80), compression="zlib", ome=ome,
                      band_bytes=100_000)  # bands not aligned with the tiles
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (48, 80)
        assert tif.is_bigtiff and tif.is_ome is ome
        np.testing.assert_array_equal(tif.asarray(), out.values)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]  # no temporary left
    np.testing.assert_array_equal(read_image(path).data, out.values)


def test_bands_computed_on_a_cluster_keep_one_task_per_key(tmp_path):
    """The next band is submitted while this one computes and they share blocks: each
    shared key must come with the same task (Dask warns that it may deadlock otherwise)."""
    import logging

    from distributed import Client, LocalCluster

    class Count(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.n = 0

        def emit(self, record: logging.LogRecord) -> None:
            self.n += "different `run_spec`" in record.getMessage()

    data = photo_like(600, 800, seed=1)
    path = write(tmp_path / "a.tif", data, tile=(64, 64), photometric="rgb")
    counter = Count()
    logger = logging.getLogger("distributed.scheduler")
    logger.addHandler(counter)
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                          dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as c:
            img = apply_op(open_image(path, chunks=128), "gaussian", {"sigma": 2.0})
            out = write_tiff(img, tmp_path / "o.tif", client=c, band_bytes=100_000)
            expected = img.values
    finally:
        logger.removeHandler(counter)
    assert counter.n == 0
    np.testing.assert_array_equal(tifffile.imread(out), expected)


def test_write_tiff_gray_16_bit_uncompressed(tmp_path):
    data = photo_like(100, 130, channels=1, dtype=np.uint16, seed=7)
    path = write(tmp_path / "in.tif", data[:, :, 0], tile=(16, 16))
    out = write_tiff(open_image(path, chunks=32), tmp_path / "o.tif", tile=(32, 32),
                     compression=None)
    np.testing.assert_array_equal(read_image(out).data, data)


def test_write_zarr_keeps_pixels_dims_and_metadata(tmp_path, lazy, rgb):
    import zarr

    from dagflow.tiled import write_zarr

    out = write_zarr(lazy, tmp_path / "o.zarr")
    stored = zarr.open_array(out, mode="r")
    np.testing.assert_array_equal(stored[:], rgb)
    assert stored.chunks == (64, 64, 3)  # one zarr chunk per dask block
    assert stored.attrs["dims"] == ["y", "x", "c"]
    assert stored.attrs["space"] == "rgb" and stored.attrs["format"] == "tiff"


def test_write_zarr_on_a_cluster_replaces_a_store_only_when_complete(tmp_path, lazy, rgb,
                                                                     client):
    import dask.array as da
    import zarr

    from dagflow.tiled import write_zarr

    target = tmp_path / "o.zarr"
    write_zarr(da.zeros((10, 10), chunks=5, dtype=np.uint8), target, client=client)
    blurred = apply_op(lazy, "gaussian", {"sigma": 2.0})
    write_zarr(blurred, target, client=client)
    expected = get_op("gaussian").func(Image(rgb), sigma=2.0).data
    np.testing.assert_array_equal(zarr.open_array(target, mode="r")[:], expected)

    def fail(block: np.ndarray) -> np.ndarray:
        raise OSError("disk full")

    broken = lazy.data.map_blocks(fail, dtype=np.uint8)
    with pytest.raises(OSError, match="disk full"):
        write_zarr(broken, target, client=client)
    np.testing.assert_array_equal(zarr.open_array(target, mode="r")[:], expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.zarr"]  # no partial store


def test_write_zarr_rechunks_irregular_blocks(tmp_path, rgb):
    import dask.array as da
    import zarr

    from dagflow.tiled import write_zarr

    irregular = da.from_array(rgb, chunks=((100, 50, 150), (200, 210), (3,)))
    stored = zarr.open_array(write_zarr(irregular, tmp_path / "o.zarr"), mode="r")
    np.testing.assert_array_equal(stored[:], rgb)
    assert stored.attrs["dims"] == ["y", "x", "c"]


# --------------------------------------------------------------------------- in a run

TILED_WF = Workflow("big", [Node("load", "load"),
                            Node("blur", "gaussian", {"sigma": 2.0}, after="load"),
                            Node("save", "save", {"format": "tiff", "compression": "zlib"},
                                 after="blur")])


def test_chain_problem_names_what_blocks_tiling():
    from dagflow.compile import node_tasks

    assert chain_problem(list(node_tasks(TILED_WF).values())) is None
    jpeg = Workflow("j", [Node("load", "load"), Node("save", "save", after="load")])
    assert "format: tiff" in chain_problem(list(node_tasks(jpeg).values()))
    fan = Workflow("f", [Node("load", "load"), Node("a", "flip", after="load"),
                         Node("s1", "save", {"format": "tiff"}, after="a"),
                         Node("s2", "save", {"format": "tiff"}, after="load")])
    assert "single chain" in chain_problem(list(node_tasks(fan).values()))


def test_oversize_items_run_tiled_or_are_refused_in_a_run(tmp_path, client):
    from distributed import Client, LocalCluster

    big = photo_like(1000, 1400, channels=3, seed=9)  # 4.2 MB decoded, ~25 MB to blur
    (tmp_path / "in").mkdir()
    write(tmp_path / "in" / "big.tif", big, tile=(128, 128), photometric="rgb")
    PILImage.fromarray(big).save(tmp_path / "in" / "wide.png", compress_level=1)
    PILImage.fromarray(big[:100, :100]).save(tmp_path / "in" / "small.png")
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address="127.0.0.1:0", resources={"MEMORY": 15e6}) as cluster, \
            Client(cluster) as c, \
            dask.config.set({"dagflow.resources.tile-chunk": 256}):
        result = dagflow.run(TILED_WF, tmp_path / "in", tmp_path / "out", client=c,
                             progress=False)
    assert (result.succeeded, result.failed, result.tiled) == (2, 1, 1)
    expected = get_op("gaussian").func(Image(big), sigma=2.0).data
    with tifffile.TiffFile(tmp_path / "out" / "big.tif") as tif:
        assert tif.pages.first.is_tiled and tif.is_bigtiff
        np.testing.assert_array_equal(tif.asarray(), expected)
    rows = ds.dataset(result.run_dir / "records").to_table().to_pylist()
    by = {(Path(r["input_path"]).name, r["node_id"]): r for r in rows}
    assert by[("big.tif", "save")]["status"] == "ok"
    assert by[("big.tif", "save")]["output_path"].endswith("big.tif")
    refused = by[("wide.png", "load")]
    assert (refused["status"], refused["error_class"], refused["reason"]) == (
        "failed", "bad_input", "oversize")
    assert "estimated peak memory" in refused["error_message"]
    assert "exceeds the largest worker budget 14.3 MiB" in refused["error_message"]
    assert by[("wide.png", "blur")]["status"] == "upstream_failed"
    # a re-run does nothing: the tiled item is done, the refused one quarantined
    again = dagflow.run(TILED_WF, tmp_path / "in", tmp_path / "out", client=client,
                        progress=False)
    assert (again.executed, again.already_done) == (0, 3)


def test_an_image_over_the_pixel_limit_runs_tiled(tmp_path, client):
    data = photo_like(300, 200, channels=3, seed=4)
    (tmp_path / "in").mkdir()
    write(tmp_path / "in" / "a.tif", data, tile=(64, 64), photometric="rgb")
    wf = Workflow("p", [Node("load", "load", {"max_pixels": 10_000}),
                        Node("half", "resize", {"scale": 0.5}, after="load"),
                        Node("save", "save", {"format": "tiff", "tile": [64, 32]},
                             after="half")])
    result = dagflow.run(wf, tmp_path / "in", tmp_path / "out", client=client, progress=False)
    assert (result.succeeded, result.tiled) == (1, 1)
    out = read_image(tmp_path / "out" / "a.tif").data
    assert out.shape == (150, 100, 3)
    ref = resize_array(data, 100, 150, reducing_gap=None)
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 2


def _benchmark(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("benchmarks.large_image")


@pytest.mark.slow
def test_large_tiff_on_workers_below_its_size(tmp_path, monkeypatch):
    """The benchmark's code path at 5000 x 5000 (75 MB decoded, ~430 MiB to blur whole)
    on workers limited to well below what decoding it whole would need with the blur: it
    runs tiled, the output equals the whole-image blur, and no worker exceeds its limit."""
    bench = _benchmark(monkeypatch)
    path = bench.make_tiff(tmp_path / "in" / "big.tif", 5000, 5000, tile=256)
    report = bench.measure(path, tmp_path / "out", workers=2, threads=2,
                           memory_limit="500MiB", sigma=2.0, chunk=512)
    assert report["succeeded"] == 1 and report["tiled"] == 1
    # the nanny restarts a worker whose RSS it finds above 95 % of the limit: none was;
    # the test's own sampling, more frequent, may catch a brief peak just above that
    assert report["restarts"] == 0
    assert report["peak_rss"] < report["memory_limit"], report
    big = read_image(path).data
    expected = get_op("gaussian").func(Image(big), sigma=2.0).data
    with tifffile.TiffFile(report["output"]) as tif:
        np.testing.assert_array_equal(tif.asarray(), expected)


def _darken(image: Image, *, radius: int = 1) -> Image:
    """Grey erosion over a square of side 2 radius + 1 (a user's neighbourhood op)."""
    from scipy import ndimage

    size = (2 * radius + 1, 2 * radius + 1, 1)
    return image.replace(ndimage.minimum_filter(np.asarray(image.data), size=size,
                                                mode="reflect"))


def test_a_users_op_runs_tiled_in_a_run_by_declaring_its_tiling(tmp_path):
    """An op the runtime knows nothing of, declared ``overlap`` with its depth: an item
    too large for the worker runs tiled through it, and equals the whole-image result."""
    from distributed import Client, LocalCluster

    from dagflow.compile import node_tasks
    from dagflow.ops import Param, register_op, tiling

    register_op("darken_demo", params=[Param("radius", int, 1, "pixels", minimum=0)],
                memory_factor=3.0, tiling=tiling.overlap(lambda params: params["radius"]),
                replace=True)(_darken)
    big = photo_like(600, 800, channels=3, seed=9)  # 1.4 MB decoded
    (tmp_path / "in").mkdir()
    write(tmp_path / "in" / "big.tif", big, tile=(64, 64), photometric="rgb")
    wf = Workflow("d", [Node("load", "load"),
                        Node("dark", "darken_demo", {"radius": 3}, after="load"),
                        Node("save", "save", {"format": "tiff"}, after="dark")])
    assert chain_problem(list(node_tasks(wf).values())) is None
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address="127.0.0.1:0", resources={"MEMORY": 2e6}) as cluster, \
            Client(cluster) as c, dask.config.set({"dagflow.resources.tile-chunk": 128}):
        result = dagflow.run(wf, tmp_path / "in", tmp_path / "out", client=c, progress=False)
    assert (result.succeeded, result.tiled) == (1, 1)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "big.tif"),
                                  _darken(Image(big), radius=3).data)
