"""GPU support: the dispatch layer, the fall back to the CPU, routing to GPU workers,
annotations at the scheduler, and (on a machine with a GPU) numpy against cupy.

Without a GPU, the cupy implementations are still exercised: ``numpy_as_cupy`` stands a
numpy-backed ``cupy``/``cupyx`` in for the real modules, so the code of
:mod:`dagflow.ops.gpu` runs and is compared with the CPU ops. The real comparison runs
under the ``gpu`` marker (``scripts/gpu-check.sh``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import importlib.machinery
import subprocess
import sys
import tempfile
import types

import dask
import numpy as np
import pyarrow.dataset as ds
import pytest
import scipy.ndimage
import scipy.sparse
from distributed.utils_test import gen_cluster
from PIL import Image as PILImage

import dagflow
from dagflow import Node, Workflow
from dagflow.compile import RunContext, compile_chunks, node_tasks
from dagflow.image import Image
from dagflow.ops import dispatch, get_op
from dagflow.ops.dispatch import GPU_OPS, LazyGpuFunc, call, is_cuda_oom
from dagflow.resources import MEMORY
from dagflow.runtime.capacity import ClusterCapacity, WorkerCapacity
from dagflow.runtime.plan import prepare_batch
from dagflow.testing import photo_like

CASES = [
    ("gaussian", {"sigma": 1.5}), ("gaussian", {"sigma": 6.0, "truncate": 3.0}),
    ("median", {"size": 5}), ("unsharp", {"sigma": 2.0, "amount": 1.5, "threshold": 3.0}),
    ("normalize", {"low": 2, "high": 98}), ("normalize", {"per_channel": True}),
    ("convert", {"dtype": "uint16"}), ("convert", {"dtype": "float32", "space": "gray"}),
    ("convert", {"space": "rgba"}), ("resize", {"long_side": 60}),
    ("resize", {"scale": 0.37, "reducing_gap": None}),
    ("resize", {"size": [300, 200], "allow_upscale": True}), ("resize", {"long_side": 20}),
]
IDS = [f"{op}-{i}" for i, (op, _) in enumerate(CASES)]


def tolerance(op: str, dtype, channels: int) -> float:
    """How far a GPU result may be from the CPU one, in levels of the dtype."""
    if np.dtype(dtype).kind == "f":
        return 1e-4
    if op == "resize" and dtype == np.uint8 and channels in (2, 4):
        return 16  # premultiplied 8-bit alpha: the box reduction rounds differently
    return 2 if op == "resize" else 1


def compare(op, params, dtype, channels, gpu_impl):
    data = photo_like(123, 157, channels=channels, dtype=dtype, seed=channels)
    image = Image(data, {"space": {1: "gray", 3: "rgb", 4: "rgba"}[channels]})
    spec = get_op(op)
    full, _ = spec.resolve_params(params)
    expected = spec.func(image, **full)
    got = gpu_impl(image, **full)
    assert isinstance(got.data, np.ndarray)  # back on the host for the next node
    assert got.data.shape == expected.data.shape and got.data.dtype == expected.data.dtype
    assert got.meta.get("space") == expected.meta.get("space")
    diff = np.abs(got.data.astype(np.float64) - expected.data.astype(np.float64))
    assert diff.max() <= tolerance(op, dtype, channels), (op, params, diff.max())
    if np.dtype(dtype).kind == "f":
        assert diff.mean() <= 1e-5
    elif op != "resize":
        assert diff.mean() <= 0.05
    else:  # 8-bit rounding between the passes and in the box reduction, on tiny outputs
        assert diff.mean() <= (1.0 if channels == 4 else 0.3), (op, params, diff.mean())


# --------------------------------------------------------------------------- dispatch


def test_gpu_ops_are_registered_without_importing_cupy():
    code = ("import sys, dagflow.ops as o\n"
            "from dagflow.ops.dispatch import call\n"
            "from dagflow.image import Image\n"
            "import numpy as np\n"
            "used = {}\n"
            "call(o.get_op('gaussian'), 'gpu', (Image(np.zeros((8, 8, 3), np.uint8)),),"
            " {'sigma': 1.0}, used)\n"
            "print(sorted(s.name for s in o.list_ops() if s.gpu_func is not None),"
            " used['device'], 'cupy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    expected = sorted(GPU_OPS)
    if importlib.util.find_spec("cupy") is None:
        assert out == f"{expected} cpu-fallback False"
    else:  # pragma: no cover - a machine with cupy
        assert out.startswith(str(expected))
    assert get_op("resize").gpu_func == LazyGpuFunc("resize")


def test_device_choice_and_fall_back_without_a_gpu(monkeypatch):
    monkeypatch.setattr(dispatch, "gpu_available", lambda: False)
    spec = get_op("gaussian")
    image = Image(photo_like(20, 30, seed=1))
    expected = spec.func(image, sigma=1.0)
    for device, recorded in [("cpu", ("cpu", False)), ("auto", ("cpu", False)),
                             ("gpu", ("cpu-fallback", True))]:
        used: dict = {}
        out = call(spec, device, (image,), {"sigma": 1.0}, used)
        np.testing.assert_array_equal(out.data, expected.data)
        assert (used["device"], used["degraded"]) == recorded
    used = {}
    call(get_op("flip"), "gpu", (image,), {"axis": "vertical"}, used)
    assert used == {"device": "cpu-fallback", "degraded": True,
                    "fallback": "no GPU implementation"}


class OutOfMemoryError(Exception):
    """Stands in for cupy.cuda.memory.OutOfMemoryError."""


OutOfMemoryError.__module__ = "cupy.cuda.memory"


def test_cuda_out_of_memory_falls_back_to_the_cpu_other_errors_do_not(monkeypatch):
    monkeypatch.setattr(dispatch, "gpu_available", lambda: True)
    spec = get_op("gaussian")
    image = Image(photo_like(20, 30, seed=1))

    def oom(*args, **kwargs):
        raise OutOfMemoryError("Out of memory allocating 1,073,741,824 bytes")

    used: dict = {}
    out = call(dataclasses.replace(spec, gpu_func=oom), "gpu", (image,), {"sigma": 1.0}, used)
    np.testing.assert_array_equal(out.data, spec.func(image, sigma=1.0).data)
    assert used["device"] == "cpu-fallback" and used["degraded"]
    assert "out of memory" in used["fallback"]

    def broken(*args, **kwargs):
        raise ValueError("a bug in a GPU kernel")

    with pytest.raises(ValueError, match="a bug"):
        call(dataclasses.replace(spec, gpu_func=broken), "gpu", (image,), {"sigma": 1.0}, {})
    assert is_cuda_oom(MemoryError("std::bad_alloc: out_of_memory: RMM failure"))
    assert not is_cuda_oom(MemoryError("host memory"))


# --------------------------------------------------------------------------- stand-in


@pytest.fixture
def numpy_as_cupy(monkeypatch):
    """A numpy-backed stand-in for cupy and cupyx, and a fresh dagflow.ops.gpu on it."""
    cp = types.ModuleType("cupy")
    cp.__spec__ = importlib.machinery.ModuleSpec("cupy", None)
    for name in dir(np):
        if not name.startswith("__"):
            setattr(cp, name, getattr(np, name))
    cp.asnumpy = np.asarray
    cuda = types.ModuleType("cupy.cuda")
    cuda.runtime = types.SimpleNamespace(getDeviceCount=lambda: 1)
    cp.cuda = cuda
    cp.get_default_memory_pool = lambda: types.SimpleNamespace(free_all_blocks=lambda: None)
    cupyx = types.ModuleType("cupyx")
    cupyx_scipy = types.ModuleType("cupyx.scipy")
    sparse = types.ModuleType("cupyx.scipy.sparse")
    sparse.csr_matrix = scipy.sparse.csr_matrix
    cupyx.scipy, cupyx_scipy.ndimage, cupyx_scipy.sparse = cupyx_scipy, scipy.ndimage, sparse
    for name, module in {"cupy": cp, "cupy.cuda": cuda, "cupyx": cupyx,
                         "cupyx.scipy": cupyx_scipy, "cupyx.scipy.ndimage": scipy.ndimage,
                         "cupyx.scipy.sparse": sparse}.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "dagflow.ops.gpu", raising=False)
    gpu = importlib.import_module("dagflow.ops.gpu")
    yield gpu
    sys.modules.pop("dagflow.ops.gpu", None)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_gpu_code_on_a_numpy_stand_in_matches_the_cpu(numpy_as_cupy, dtype, channels):
    for op, params in CASES:
        if op == "convert" and params.get("space") == "gray" and channels == 1:
            continue
        compare(op, params, dtype, channels, numpy_as_cupy.IMPLEMENTATIONS[op])


def test_lazy_registration_imports_the_gpu_module_on_first_call(numpy_as_cupy,
                                                                 monkeypatch):
    monkeypatch.setattr(dispatch, "gpu_available", lambda: True)
    fresh = dispatch.Dispatcher("gpu")
    fresh.register_lazy("cupy")(dispatch._register_cupy)
    monkeypatch.setattr(dispatch, "gpu_dispatch", fresh)
    assert fresh._impls == {}  # nothing imported until a GPU op is asked for
    used: dict = {}
    image = Image(photo_like(40, 50, seed=2))
    out = call(get_op("median"), "gpu", (image,), {"size": 3}, used)
    assert used == {"device": "gpu", "degraded": False}
    assert fresh("median") is numpy_as_cupy.median
    np.testing.assert_array_equal(out.data, get_op("median").func(image, size=3).data)


# --------------------------------------------------------------------------- routing


def _write_pngs(directory, n):
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        PILImage.fromarray(photo_like(48, 64, seed=i)).save(directory / f"{i}.png")


def test_gpu_nodes_run_on_gpu_workers_only(tmp_path):
    """An in-process cluster with one worker faking ``GPU: 1``: GPU nodes go there (and,
    without cupy, fall back to its CPU, degraded); the others may run anywhere."""
    from distributed import Client, Scheduler, SpecCluster, Worker

    _write_pngs(tmp_path / "in", 8)
    spec = {"cpu": {"cls": Worker, "options": {"nthreads": 1}},
            "gpu": {"cls": Worker, "options": {"nthreads": 1, "resources": {"GPU": 1}}}}
    wf = Workflow("g", [Node("load", "load"),
                        Node("blur", "gaussian", {"sigma": 1.0}, after="load"),
                        Node("sharp", "unsharp", {"sigma": 1.0}, after="blur", device="cpu"),
                        Node("save", "save", {"format": "png"}, after="sharp")])
    with SpecCluster(workers=spec, scheduler={"cls": Scheduler, "options": {
            "dashboard_address": "127.0.0.1:0"}}) as cluster, Client(cluster) as c:
        # the scheduler's own answer: scheduler_info() may return the client's periodic
        # refresh, which lists no workers, when the two race
        workers = c.sync(c.scheduler.identity, n_workers=-1)["workers"]
        gpu_worker = next(a for a, w in workers.items() if w["resources"].get("GPU"))
        with dask.config.set({"dagflow.monitor.report": True}):
            result = dagflow.run(wf, tmp_path / "in", tmp_path / "out", client=c,
                                 progress=False, chunk_size=1)
    assert result.succeeded == 8
    rows = ds.dataset(result.run_dir / "records").to_table().to_pylist()
    blur = [r for r in rows if r["node_id"] == "blur"]
    assert {r["worker"] for r in blur} == {gpu_worker}  # auto + GPU cluster = GPU node
    assert {(r["device"], r["degraded"]) for r in blur} == {("cpu-fallback", True)}
    sharp = [r for r in rows if r["node_id"] == "sharp"]
    assert {(r["device"], r["degraded"]) for r in sharp} == {("cpu", False)}
    assert result.nodes["blur"] == {"ok": 8}
    report = result.report().read_text()
    assert "Devices: where each item ran" in report and "cpu-fallback" in report


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)],
             worker_kwargs={"resources": {"GPU": 1, "MEMORY": 35e6, "dagflow-save": 2}})
async def test_gpu_memory_concurrency_and_retries_reach_the_scheduler(c, s, a):
    wf = Workflow("a", [Node("load", "load"),
                        Node("blur", "gaussian", {"sigma": 1.0}, after="load", device="gpu"),
                        Node("save", "save", after="blur", concurrency=2)])
    capacity = ClusterCapacity((WorkerCapacity(a.address, 2, int(80e6),
                                               dict(a.state.total_resources)),))
    items = [{"item_id": i, "path": f"/in/{i}.png", "rel": f"{i}.png", "key": f"k{i}",
              "size": 1, "mtime_ns": 1, "width": 1200, "height": 1000, "channels": 3,
              "dtype": "uint8", "format": "png"} for i in range(8)]
    with dask.config.set({"dagflow.timeout": None}):  # no per-item timeout thread
        tasks = node_tasks(wf)
    batch = prepare_batch(wf, tasks, items, capacity, chunk_size=8, probe=False)
    assert batch.annotate_memory and not batch.refused
    tmp = tempfile.mkdtemp()
    ctx = RunContext("r", tmp + "/run", tmp, tmp + "/_dagflow", "a", checkpoint=False)
    chunks = batch.make_chunks(batch.items, 8)
    assert len(chunks) == 8  # one ~22 MB item per chunk: 2 at once would not fit
    compiled = compile_chunks(batch.tasks, ctx, chunks, token="ab12",
                              annotations=batch.annotations({n: {"retries": 3}
                                                             for n in batch.tasks}),
                              chunk_annotations=batch.chunk_annotations)
    futures = c.get(compiled.graph, compiled.commit_keys, sync=False)
    blur_key = (compiled.layers["blur"], chunks[0].index)
    save_key = (compiled.layers["save"], chunks[0].index)
    while blur_key not in s.tasks or save_key not in s.tasks:
        await asyncio.sleep(0.005)
    blur, save = s.tasks[blur_key], s.tasks[save_key]
    expected = batch.model.chunk_peaks(chunks[0].items)
    assert blur.resource_restrictions == {"GPU": 1, MEMORY: expected["blur"]}
    assert save.resource_restrictions == {"dagflow-save": 1, MEMORY: expected["save"]}
    assert blur.retries == 3 and save.retries == 3
    for f in futures:  # the paths do not exist: every item fails, and is recorded
        await f
    del futures


# --------------------------------------------------------------------------- a real GPU


def _real_cupy():
    cupy = pytest.importorskip("cupy", reason="cupy is not installed (pip install "
                                              "'dagflow[gpu]')")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("cupy sees no CUDA device")
    except Exception as exc:
        pytest.skip(f"no usable CUDA device: {exc}")
    from dagflow.ops import gpu

    return gpu


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("op,params", CASES, ids=IDS)
def test_cupy_matches_numpy(op, params, dtype, channels):
    gpu = _real_cupy()
    if op == "convert" and params.get("space") == "gray" and channels == 1:
        pytest.skip("gray to gray")
    compare(op, params, dtype, channels, gpu.IMPLEMENTATIONS[op])


@pytest.mark.gpu
def test_dispatch_uses_the_gpu_when_there_is_one():
    _real_cupy()
    dispatch.gpu_available.cache_clear()
    used: dict = {}
    image = Image(photo_like(256, 256, seed=1))
    out = call(get_op("gaussian"), "auto", (image,), {"sigma": 2.0}, used)
    assert used == {"device": "gpu", "degraded": False}
    assert np.abs(out.data.astype(int) - get_op("gaussian").func(image, sigma=2.0)
                  .data.astype(int)).max() <= 1
