"""GPU support: array functions dispatched by array type, the device a node runs on, the
fall back to the CPU, routing to GPU workers, annotations at the scheduler, and (on a
machine with a GPU) cupy against numpy.

Without a GPU, the cupy implementations are still exercised: :mod:`tests._numpy_cupy`
stands a numpy-backed ``cupy``/``cupyx`` in for the real modules, as strict as cupy
about moving data between host and device, so the GPU path (the op's own function on
the device, its array functions picking :mod:`dagflow.ops.gpu`'s implementations) runs
and is compared with the CPU ops. The real comparison runs under the ``gpu`` marker
(``scripts/gpu-check.sh run``); the tests that bind dagflow's calls against the real
cupy and dask-cuda signatures run wherever those import, a GPU or not
(``scripts/gpu-check.sh extra``).
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import importlib
import importlib.machinery
import importlib.util
import inspect
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

import dask
import numpy as np
import pyarrow.dataset as ds
import pytest
import scipy.ndimage
from _numpy_cupy import DeviceArray, numpy_as_cupy
from distributed.utils_test import gen_cluster
from PIL import Image as PILImage

import dagflow
import dagflow.ops
from dagflow import Node, Workflow
from dagflow.compile import RunContext, compile_chunks, node_tasks
from dagflow.image import Image
from dagflow.ops import dispatch, filters, geometry, get_op, register_op
from dagflow.ops.backends import array_function, common_backends
from dagflow.ops.dispatch import call, is_cuda_oom, is_gpu_unusable
from dagflow.resources import MEMORY, device_bytes, output_header
from dagflow.runtime.capacity import ClusterCapacity, WorkerCapacity, local_capacity
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
GPU_MODULE = Path(dagflow.ops.__file__).parent / "gpu.py"
#: The built-in ops whose array functions have cupy implementations.
GPU_OPS = ("convert", "gaussian", "median", "normalize", "resize", "unsharp")


def as_a_gpu_node_runs(gpu, op):
    """``op`` as a GPU node runs it: its own function on the device, back on the host."""
    func = get_op(op).func
    return lambda image, **params: gpu.run_on_device(func, (image,), params)


def fails_on_the_device(spec, error, tries=None):
    """``spec`` whose function raises ``error`` when its image is on the device (and
    counts it in ``tries``), and is the op's own on the host."""

    def func(image, **params):
        if not isinstance(image.data, np.ndarray):
            if tries is not None:
                tries.append(1)
            raise error
        return spec.func(image, **params)

    return dataclasses.replace(spec, func=func)


def tolerance(op: str, dtype, channels: int) -> float:
    """How far a GPU result may be from the CPU one, in levels of the dtype."""
    if op == "gaussian" and dtype == np.uint8:
        return 0  # the CPU's fixed-point arithmetic, on the device
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
    limit = tolerance(op, dtype, channels)
    if op == "unsharp" and params.get("threshold"):
        # two blurs a float rounding apart put a pixel whose detail is the threshold on
        # either side of it: that pixel differs by the sharpening, amount x threshold
        top = np.iinfo(dtype).max if np.dtype(dtype).kind in "ui" else 1.0
        limit += params["amount"] * params["threshold"] * top / 255
    assert diff.max() <= limit, (op, params, diff.max())
    if np.dtype(dtype).kind == "f":
        assert diff.mean() <= 1e-5
    elif op != "resize":
        assert diff.mean() <= 0.05
    else:  # 8-bit rounding between the passes and in the box reduction, on tiny outputs
        assert diff.mean() <= (1.0 if channels == 4 else 0.3), (op, params, diff.mean())


@pytest.fixture
def lost_gpu_restored():
    """Put back the dispatch layer's "this process lost its GPU" after the test."""
    saved = dispatch._gpu_lost
    yield
    dispatch._gpu_lost = saved


# --------------------------------------------------------------------------- dispatch


def test_gpu_ops_are_registered_without_importing_cupy():
    """Which ops run on a GPU is their declaration (``backends``), known without cupy:
    the built-in array functions name a lazy cupy loader, which nothing runs on a
    machine without cupy arrays."""
    code = ("import sys, dagflow.ops as o\n"
            "from dagflow.ops.dispatch import call\n"
            "from dagflow.image import Image\n"
            "import numpy as np\n"
            "used = {}\n"
            "call(o.get_op('gaussian'), 'gpu', (Image(np.zeros((8, 8, 3), np.uint8)),),"
            " {'sigma': 1.0}, used)\n"
            "print(sorted(s.name for s in o.list_ops() if 'cupy' in s.backends),"
            " used['device'], 'cupy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    expected = sorted(GPU_OPS)
    if importlib.util.find_spec("cupy") is None:
        assert out == f"{expected} cpu-fallback False"
    else:  # pragma: no cover - a machine with cupy
        assert out.startswith(str(expected))
    assert get_op("resize").backends == ("numpy", "cupy") == geometry.resize_array.backends
    assert get_op("flip").backends == ("numpy",)


def test_array_functions_dispatch_by_array_type(stand_in):
    """One array function, an implementation per array type: numpy arrays (and what
    numpy takes) to numpy's, the device's arrays to cupy's, loaded on the first one."""
    arr = photo_like(20, 30, seed=1)
    cpu = filters.median_array(arr, 3)
    np.testing.assert_array_equal(filters.median_array(arr.tolist(), 3), cpu)
    assert filters.median_array.dispatch(np.ndarray) is not stand_in.median_array
    on_device = filters.median_array(stand_in.cp.asarray(arr), 3)
    assert isinstance(on_device, DeviceArray)
    assert filters.median_array.dispatch(DeviceArray) is stand_in.median_array
    np.testing.assert_array_equal(stand_in.cp.asnumpy(on_device), cpu)
    # a function without a cupy implementation refuses the device's array, as cupy does
    host_only = array_function(lambda arr: arr + 1)
    assert host_only.backends == ("numpy",)
    with pytest.raises(TypeError, match="Implicit conversion"):
        host_only(stand_in.cp.asarray(arr))
    assert common_backends(filters.median_array, host_only) == ("numpy",)


def test_device_choice_and_fall_back_without_a_gpu(monkeypatch):
    monkeypatch.setattr(dispatch, "gpu_available", lambda: False)
    spec = get_op("gaussian")
    image = Image(photo_like(20, 30, seed=1))
    expected = spec.func(image, sigma=1.0)
    for device, recorded in [("cpu", ("cpu", False)), ("auto", ("cpu", False)),
                             ("gpu", ("cpu-fallback", True)),
                             ("cpu-fallback", ("cpu-fallback", True))]:
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


class CUSPARSEError(RuntimeError):
    """Stands in for cupy_backends.cuda.libs.cusparse.CUSPARSEError."""


CUSPARSEError.__module__ = "cupy_backends.cuda.libs.cusparse"


def test_cuda_out_of_memory_falls_back_to_the_cpu_other_errors_do_not(stand_in,
                                                                       lost_gpu_restored):
    spec = get_op("gaussian")
    image = Image(photo_like(20, 30, seed=1))
    oom = OutOfMemoryError("Out of memory allocating 1,073,741,824 bytes")
    used: dict = {}
    out = call(fails_on_the_device(spec, oom), "gpu", (image,), {"sigma": 1.0}, used)
    np.testing.assert_array_equal(out.data, spec.func(image, sigma=1.0).data)
    assert used["device"] == "cpu-fallback" and used["degraded"]
    assert "out of memory" in used["fallback"]
    assert dispatch._gpu_lost is None  # one item too large: the GPU stays in use
    used = {}
    call(spec, "gpu", (image,), {"sigma": 1.0}, used)
    assert used == {"device": "gpu", "degraded": False}

    broken = fails_on_the_device(spec, ValueError("a bug in a GPU kernel"))
    with pytest.raises(ValueError, match="a bug"):
        call(broken, "gpu", (image,), {"sigma": 1.0}, {})
    assert is_cuda_oom(MemoryError("std::bad_alloc: out_of_memory: RMM failure"))
    assert not is_cuda_oom(MemoryError("host memory"))


@pytest.mark.parametrize("error", [
    OSError("libnvrtc.so.12: cannot open shared object file: No such file or directory"),
    RuntimeError("CuPy failed to load libcusparse.so.12: OSError: libcusparse.so.12: "
                 "cannot open shared object file: No such file or directory"),
    ModuleNotFoundError("No module named 'cuda.bindings'"),
    CUSPARSEError("CUSPARSE_STATUS_NOT_INITIALIZED"),
], ids=["nvrtc", "cusparse-load", "import", "cusparse-status"])
def test_a_gpu_stack_that_cannot_run_falls_back_and_is_not_tried_again(stand_in, error,
                                                                        lost_gpu_restored):
    """An import or CUDA library error is the worker's, not the item's: the item runs on
    the CPU, recorded degraded with the reason, and so do the next ones without trying."""
    spec = get_op("gaussian")
    image = Image(photo_like(20, 30, seed=1))
    tries: list = []
    broken = fails_on_the_device(spec, error, tries)
    for _ in range(2):
        used: dict = {}
        out = call(broken, "gpu", (image,), {"sigma": 1.0}, used)
        np.testing.assert_array_equal(out.data, spec.func(image, sigma=1.0).data)
        assert used["device"] == "cpu-fallback" and used["degraded"]
        assert str(error).split(":")[0] in used["fallback"]
    assert len(tries) == 1  # the second item did not try the GPU
    assert is_gpu_unusable(error)
    assert not is_gpu_unusable(ValueError("sigma must be positive"))
    assert not is_gpu_unusable(OSError("No such file or directory: 'a.png'"))


# --------------------------------------------------------------------------- the lazy loader


class FakeArray:
    """An array of a library that registers its implementations lazily."""


FakeArray.__module__ = "fakelib.arrays"


def test_concurrent_first_lookups_wait_for_the_lazy_loader():
    """Four threads give at once an array whose library's implementations load slowly:
    every one gets that library's implementation (none falls to numpy's while the loader
    runs), and the loader runs once."""
    func = array_function(lambda arr: "numpy")
    runs = []
    started = threading.Event()

    @func.register_lazy("fakelib")
    def _load():
        runs.append(1)
        started.set()
        time.sleep(0.2)
        func.register(FakeArray, lambda arr: "fakelib")

    assert func.backends == ("numpy", "fakelib")
    barrier = threading.Barrier(4)
    found = []

    def lookup():
        barrier.wait()
        found.append(func(FakeArray()))

    threads = [threading.Thread(target=lookup) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert started.is_set()
    assert found == ["fakelib"] * 4
    assert runs == [1]
    assert func(np.zeros(2)) == "numpy"


def test_a_failing_loader_raises_its_own_error_and_is_tried_again(stand_in,
                                                                  lost_gpu_restored):
    missing = OSError("libcusparse.so.12: cannot open shared object file")
    attempts = []

    def load():
        attempts.append(1)
        raise missing

    func = array_function(lambda arr: arr, lazy={"fakelib": load})
    for _ in range(2):
        with pytest.raises(OSError, match="libcusparse"):
            func(FakeArray())
    assert len(attempts) == 2
    # through an op on the GPU: the loader's reason is recorded, not a misleading one
    double = array_function(lambda arr: arr * 2, lazy={"cupy": load})
    spec = dataclasses.replace(get_op("gaussian"),
                               func=lambda image, **params: image.replace(double(image.data)))
    image = Image(photo_like(20, 30, seed=1))
    used: dict = {}
    out = call(spec, "gpu", (image,), {"sigma": 1.0}, used)
    assert used["device"] == "cpu-fallback" and "libcusparse.so.12" in used["fallback"]
    np.testing.assert_array_equal(out.data, image.data * 2)


# --------------------------------------------------------------------------- stand-in


@pytest.fixture
def stand_in():
    """A fresh dagflow.ops.gpu on the numpy-backed cupy (see tests/_numpy_cupy.py)."""
    with numpy_as_cupy() as gpu:
        yield gpu


def test_the_stand_in_refuses_silent_transfers_as_cupy_does(stand_in):
    cp = stand_in.cp
    dev = cp.asarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array"):
        np.asarray(dev)
    with pytest.raises(TypeError, match="Implicit conversion"):
        scipy.ndimage.gaussian_filter(dev, 1.0)  # scipy is not cupy-aware
    with pytest.raises(TypeError, match="Unsupported type"):
        dev + np.ones((3, 4), np.float32)  # a host array in a device ufunc
    with pytest.raises(TypeError, match="Unsupported type"):
        stand_in.cndi.gaussian_filter(np.ones((3, 4), np.float32), 1.0)
    with pytest.raises(TypeError, match="Unsupported type"):
        dev[0] = np.zeros(4, np.float32)
    # what cupy allows: numpy functions it overrides, scalars, explicit copies
    assert isinstance(np.clip(dev, 1, 5), DeviceArray)
    assert isinstance(dev * np.float32(2) + 1, DeviceArray)
    np.testing.assert_array_equal(cp.asnumpy(dev.T), np.arange(12).reshape(3, 4).T)
    assert float(dev.max()) == 11.0


def _array_function_state():
    return [(dict(f._registry), dict(f._lazy)) for f in dagflow.ops.backends.array_functions()]


def test_the_stand_in_leaves_nothing_behind():
    """After the stand-in, ``dagflow.ops.gpu`` is what it was: on a machine with cupy,
    a later import gets the real module, not the one built on numpy, and the array
    functions know no stand-in implementation."""
    before = (sys.modules.get("dagflow.ops.gpu"), getattr(dagflow.ops, "gpu", None),
              sys.modules.get("cupy"), _array_function_state())
    with numpy_as_cupy() as gpu:
        assert dagflow.ops.gpu is gpu and isinstance(gpu.cp.ndarray, type)
        assert gpu.cp.ndarray is DeviceArray
        filters.median_array(gpu.cp.asarray(np.zeros((4, 4, 1))), 3)  # registers them
        assert DeviceArray in filters.median_array._registry
    after = (sys.modules.get("dagflow.ops.gpu"), getattr(dagflow.ops, "gpu", None),
             sys.modules.get("cupy"), _array_function_state())
    assert after == before
    assert DeviceArray not in filters.median_array._registry
    assert "cupy" in filters.median_array.backends
    if importlib.util.find_spec("cupy") is None:
        with pytest.raises(ModuleNotFoundError):
            from dagflow.ops import gpu as again
    else:  # pragma: no cover - a machine with cupy
        from dagflow.ops import gpu as again

        assert again.cp.ndarray is not DeviceArray


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_gpu_code_on_a_numpy_stand_in_matches_the_cpu(stand_in, dtype, channels):
    for op, params in CASES:
        if op == "convert" and params.get("space") == "gray" and channels == 1:
            continue
        compare(op, params, dtype, channels, as_a_gpu_node_runs(stand_in, op))


def test_lazy_registration_imports_the_gpu_module_on_first_call(stand_in):
    """The cupy implementations are registered when the first device array reaches an
    array function: before, the op's function only declares them."""
    assert DeviceArray not in filters.median_array._registry
    assert "cupy" in filters.median_array._lazy
    used: dict = {}
    image = Image(photo_like(40, 50, seed=2))
    out = call(get_op("median"), "gpu", (image,), {"size": 3}, used)
    assert used == {"device": "gpu", "degraded": False}
    assert isinstance(out.data, np.ndarray)
    assert filters.median_array.dispatch(DeviceArray) is stand_in.median_array
    assert geometry.resize_array._registry[DeviceArray] is stand_in.resize_array  # all at once
    np.testing.assert_array_equal(out.data, get_op("median").func(image, size=3).data)


def test_a_users_op_runs_on_the_gpu_when_it_declares_cupy(stand_in):
    """The backend is chosen in one place, from the declaration: a user's op written
    for any array (``backends=("numpy", "cupy")``) runs on the device; the same function
    declared for numpy only falls back, recorded."""

    def invert(image):
        """Invert 8-bit levels."""
        return image.replace(255 - image.data)

    register_op("invert_anywhere", backends=("numpy", "cupy"), replace=True)(invert)
    register_op("invert_host", replace=True)(invert)
    image = Image(photo_like(40, 50, seed=2))
    used: dict = {}
    out = call(get_op("invert_anywhere"), "gpu", (image,), {}, used)
    assert used == {"device": "gpu", "degraded": False}
    assert isinstance(out.data, np.ndarray)
    np.testing.assert_array_equal(out.data, 255 - image.data)
    used = {}
    call(get_op("invert_host"), "gpu", (image,), {}, used)
    assert used == {"device": "cpu-fallback", "degraded": True,
                    "fallback": "no GPU implementation"}
    with pytest.raises(ValueError, match="must include 'numpy'"):
        register_op("gpu_only", backends=("cupy",))(invert)


def test_a_gpu_is_usable_only_once_its_kernels_and_sparse_products_run():
    """cupy that imports and sees a device, but whose sparse products fail (cuSPARSE
    missing): not usable; its GPU nodes fall back, recorded with the reason."""
    with numpy_as_cupy():
        assert dispatch.gpu_problem() is None and dispatch.gpu_available()
    missing = OSError("libcusparse.so.12: cannot open shared object file")
    with numpy_as_cupy(sparse_error=missing):
        problem = dispatch.gpu_problem()
        assert problem is not None and "libcusparse.so.12" in problem
        assert not dispatch.gpu_available()
        used: dict = {}
        call(get_op("gaussian"), "gpu", (Image(photo_like(20, 30, seed=1)),),
             {"sigma": 1.0}, used)
        assert used["device"] == "cpu-fallback" and "libcusparse.so.12" in used["fallback"]
        used = {}
        call(get_op("gaussian"), "auto", (Image(photo_like(20, 30, seed=1)),),
             {"sigma": 1.0}, used)
        assert used == {"device": "cpu", "degraded": False}


def test_the_gpu_check_compares_with_the_cpu(monkeypatch):
    with numpy_as_cupy() as gpu:
        monkeypatch.setattr(gpu, "resize_array", lambda arr, w, h, **kw: arr[:h, :w] // 2)
        with pytest.raises(RuntimeError, match="resize differs from the CPU's"):
            gpu.check_device()


def test_an_item_too_large_for_the_device_runs_on_the_cpu():
    """The device memory model: an item whose GPU working set exceeds the device's
    memory (less the margin) goes to the CPU at once, recorded with both figures."""
    small, large = Image(photo_like(40, 50, seed=2)), Image(photo_like(400, 500, seed=2))
    header = {"width": 500, "height": 400, "channels": 3, "itemsize": 1}
    need = device_bytes(header, output_header("gaussian", header, {"sigma": 1.0}))
    with numpy_as_cupy(total_memory=need):  # less the 20% margin: too small for it
        used: dict = {}
        call(get_op("gaussian"), "gpu", (small,), {"sigma": 1.0}, used)
        assert used == {"device": "gpu", "degraded": False}
        out = call(get_op("gaussian"), "gpu", (large,), {"sigma": 1.0}, used)
        assert used["device"] == "cpu-fallback" and "of GPU memory" in used["fallback"]
        np.testing.assert_array_equal(out.data, get_op("gaussian").func(large, sigma=1.0).data)


def test_device_memory_is_estimated_from_the_header():
    h = {"width": 4000, "height": 3000, "channels": 3, "itemsize": 1}
    out = output_header("resize", h, {"long_side": 1000})
    need = device_bytes(h, out)
    # the image and its result, and float32 working planes of the larger
    assert need == 36_000_000 + 2_250_000 + 4 * 12_000_000 * (2 * 3 + 4)
    assert device_bytes(dict(h, itemsize=2), out) > need  # 16-bit input holds more


# --------------------------------------------------------------------------- planning


def test_plan_says_where_gpu_nodes_will_really_run(monkeypatch):
    """``dagflow plan`` shows the device the run will record: ``cpu-fallback`` for a
    ``gpu`` node on a cluster without GPUs or an op without a GPU implementation."""
    wf = Workflow("g", [Node("load", "load"),
                        Node("blur", "gaussian", {"sigma": 1.0}, after="load", device="gpu"),
                        Node("flip", "flip", after="blur", device="gpu"),
                        Node("sharp", "unsharp", {"sigma": 1.0}, after="flip", device="auto"),
                        Node("save", "save", after="sharp")])
    items = [{"item_id": i, "path": f"/in/{i}.png", "width": 64, "height": 48,
              "channels": 3, "dtype": "uint8", "format": "png"} for i in range(4)]

    def devices(resources):
        cap = ClusterCapacity((WorkerCapacity("w", 2, 2**30, resources),))
        batch = prepare_batch(wf, node_tasks(wf), items, cap, probe=False)
        assert {n: t.device for n, t in batch.tasks.items()} == {
            n: p.device for n, p in batch.plan.nodes.items()}
        return {n: p.device for n, p in batch.plan.nodes.items()}, str(batch.plan)

    plain, text = devices({MEMORY: 2**29})
    assert plain == {"load": "cpu", "blur": "cpu-fallback", "flip": "cpu-fallback",
                     "sharp": "cpu", "save": "cpu"}
    assert "cpu-fallback" in text
    with_gpu, _ = devices({MEMORY: 2**29, "GPU": 1})
    assert with_gpu == {"load": "cpu", "blur": "gpu", "flip": "cpu-fallback",
                        "sharp": "gpu", "save": "cpu"}
    # the embedded cluster's workers advertise a GPU where this machine has a usable one
    monkeypatch.setattr(dispatch, "gpu_available", lambda: True)
    assert local_capacity({"n_workers": 1, "threads_per_worker": 1}).has_gpu
    monkeypatch.setattr(dispatch, "gpu_available", lambda: False)
    assert not local_capacity({"n_workers": 1, "threads_per_worker": 1}).has_gpu


# --------------------------------------------------------------------------- routing


def _write_pngs(directory, n):
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        PILImage.fromarray(photo_like(48, 64, seed=i)).save(directory / f"{i}.png")


def test_gpu_nodes_run_on_gpu_workers_only(tmp_path):
    """An in-process cluster with one worker declaring ``GPU: 1``, in a process whose
    cupy (the stand-in) is usable: GPU nodes run there, on the "GPU"; the "cpu" worker
    is told not to look for a GPU, so it advertises none (in one process, both workers
    see the same device)."""
    from distributed import Client, Scheduler, SpecCluster, Worker

    _write_pngs(tmp_path / "in", 8)
    spec = {"cpu": {"cls": Worker, "options": {"nthreads": 1, "host": "127.0.0.1"}},
            "gpu": {"cls": Worker, "options": {"nthreads": 1, "host": "127.0.0.1",
                                               "resources": {"GPU": 1}}}}
    wf = Workflow("g", [Node("load", "load"),
                        Node("blur", "gaussian", {"sigma": 1.0}, after="load"),
                        Node("sharp", "unsharp", {"sigma": 1.0}, after="blur", device="cpu"),
                        Node("save", "save", {"format": "png"}, after="sharp")])
    with numpy_as_cupy(), SpecCluster(workers=spec, scheduler={"cls": Scheduler, "options": {
            "host": "127.0.0.1", "dashboard": False, "dashboard_address": "127.0.0.1:0"}}
            ) as cluster, Client(cluster) as c:
        # the scheduler's own answer: scheduler_info() may return the client's periodic
        # refresh, which lists no workers, when the two race
        workers = c.sync(c.scheduler.identity, n_workers=-1)["workers"]
        gpu_worker = next(a for a, w in workers.items() if w["resources"].get("GPU"))
        with dask.config.set({"dagflow.monitor.report": True,
                              "dagflow.resources.detect-gpu": False}):
            result = dagflow.run(wf, tmp_path / "in", tmp_path / "out", client=c,
                                 progress=False, chunk_size=1)
        after = c.sync(c.scheduler.identity, n_workers=-1)["workers"]
    assert result.succeeded == 8
    assert [a for a, w in after.items() if w["resources"].get("GPU")] == [gpu_worker]
    rows = ds.dataset(result.run_dir / "records").to_table().to_pylist()
    blur = [r for r in rows if r["node_id"] == "blur"]
    assert {r["worker"] for r in blur} == {gpu_worker}  # auto + GPU cluster = GPU node
    assert {(r["device"], r["degraded"]) for r in blur} == {("gpu", False)}
    sharp = [r for r in rows if r["node_id"] == "sharp"]
    assert {(r["device"], r["degraded"]) for r in sharp} == {("cpu", False)}
    assert result.nodes["blur"] == {"ok": 8}
    report = result.report().read_text()
    assert "Devices: where each item ran" in report


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)],
             worker_kwargs={"resources": {"GPU": 1, "MEMORY": 35e6, "dagflow-save": 2}})
async def test_gpu_memory_concurrency_and_retries_reach_the_scheduler(c, s, a):
    wf = Workflow("a", [Node("load", "load"),
                        Node("blur", "gaussian", {"sigma": 1.0}, after="load", device="gpu"),
                        Node("save", "save", after="blur", concurrency=2)])
    capacity = ClusterCapacity((WorkerCapacity(a.address, 2, int(80e6),
                                               dict(a.state.total_resources)),))
    items = [{"item_id": i, "path": f"/in/{i}.png", "rel": f"{i}.png", "key": f"k{i}",
              "size": 1, "mtime_ns": 1, "width": 1500, "height": 1250, "channels": 3,
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


# --------------------------------------------------------------------------- local-cuda


class _Recorder:
    """Stands in for ``dask_cuda.LocalCUDACluster``: records its options, starts nothing."""

    options: dict = {}

    def __init__(self, **options):
        type(self).options = options
        raise _Recorded


class _Recorded(Exception):
    pass


def _cuda_options(monkeypatch, module, **kwargs) -> dict:
    from dagflow.runtime.cluster import start_cuda_cluster

    monkeypatch.setattr(module, "LocalCUDACluster", _Recorder, raising=False)
    with pytest.raises(_Recorded):
        start_cuda_cluster(**kwargs)
    return _Recorder.options


def test_cuda_workers_ignore_sigint_and_keep_the_configured_preloads(monkeypatch):
    """The local-cuda workers get the preload that makes the embedded cluster's workers
    leave Ctrl-C to the driver, as an option (dask-cuda's own preload option would hide
    the configured ones), after the configured preloads."""
    fake = types.ModuleType("dask_cuda")
    monkeypatch.setitem(sys.modules, "dask_cuda", fake)
    with dask.config.set({"distributed.worker.preload": ["my.preload"]}):
        options = _cuda_options(monkeypatch, fake, n_workers=1)
    assert options["preload"] == ["my.preload", "dagflow.runtime.signals"]
    assert options["resources"] == {"GPU": 1}
    options = _cuda_options(monkeypatch, fake, preload="mine")
    assert options["preload"] == ["mine", "dagflow.runtime.signals"]


def test_cuda_cluster_options_are_bound_against_local_cuda_cluster(monkeypatch):
    """Every option dagflow gives ``LocalCUDACluster`` (the local-cuda profile's, an RMM
    pool's) is one of its parameters, or of ``LocalCluster``'s or its workers' (where its
    ``**kwargs`` go): the real signatures, where dask-cuda imports."""
    dask_cuda = _real_dask_cuda()
    from distributed import LocalCluster, Nanny, Worker

    from dagflow.runtime.profiles import load_profile

    real = dask_cuda.LocalCUDACluster
    accepted = set()
    for cls in (real, LocalCluster, Nanny, Worker):
        accepted |= {name for name, p in inspect.signature(cls).parameters.items()
                     if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    profile = load_profile("local-cuda").resolved_options()
    rmm = types.ModuleType("rmm")  # an RMM pool is refused without rmm installed
    rmm.__spec__ = importlib.machinery.ModuleSpec("rmm", None)
    monkeypatch.setitem(sys.modules, "rmm", rmm)
    for kwargs in (profile, {"rmm_pool_size": "1GiB", "device_memory_limit": 0.8}):
        options = _cuda_options(monkeypatch, dask_cuda, **kwargs)
        assert set(options) <= accepted, set(options) - accepted
        inspect.signature(real).bind(**options)
        assert "dagflow.runtime.signals" in options["preload"]


# --------------------------------------------------------------------------- signatures


def _real_cupy_modules():
    try:
        cupy = importlib.import_module("cupy")
        ndimage = importlib.import_module("cupyx.scipy.ndimage")
        sparse = importlib.import_module("cupyx.scipy.sparse")
    except Exception as exc:  # not installed, or its CUDA libraries missing
        pytest.skip(f"cupy does not import here ({type(exc).__name__}: {exc}); "
                    "scripts/gpu-check.sh extra runs this")
    if isinstance(getattr(cupy, "ndarray", None), type) and cupy.ndarray is DeviceArray:
        pytest.fail("the numpy stand-in is still installed as cupy")
    return {"cp": cupy, "cndi": ndimage, "csparse": sparse}


def _real_dask_cuda():
    try:
        return importlib.import_module("dask_cuda")
    except Exception as exc:
        pytest.skip(f"dask_cuda does not import here ({type(exc).__name__}: {exc}); "
                    "scripts/gpu-check.sh extra runs this")


def _calls_on(tree: ast.AST, roots: set[str]):
    """Every call in ``tree`` of an attribute of one of ``roots`` (``cp.clip(...)``,
    ``cp.cuda.runtime.memGetInfo()``): the dotted path and the call."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            parts, func = [], node.func
            while isinstance(func, ast.Attribute):
                parts.append(func.attr)
                func = func.value
            if isinstance(func, ast.Name) and func.id in roots and parts:
                yield func.id, list(reversed(parts)), node


def test_every_cupy_call_is_bound_against_the_real_signature():
    """Each ``cp.*``, ``cndi.*`` and ``csparse.*`` call in dagflow/ops/gpu.py names a
    function the installed cupy has, with arguments its signature accepts (ufuncs: as
    many inputs as they take, and keywords ufuncs take)."""
    modules = _real_cupy_modules()
    tree = ast.parse(GPU_MODULE.read_text(encoding="utf-8"))
    checked = []
    for root, path, node in _calls_on(tree, set(modules)):
        target = modules[root]
        for part in path:
            target = getattr(target, part, None)
            assert target is not None, f"{root}.{'.'.join(path)} does not exist in cupy"
        if any(isinstance(a, ast.Starred) for a in node.args) or any(
                k.arg is None for k in node.keywords):
            continue
        args = [object()] * len(node.args)
        kwargs = {k.arg: object() for k in node.keywords}
        name = f"{root}.{'.'.join(path)}"
        if isinstance(target, type):  # a dtype (cp.float32(...)) or a class
            if issubclass(target, np.generic):
                assert len(args) <= 1 and not kwargs, name
                continue
            target = target.__init__
            args = [object(), *args]
        if hasattr(target, "nin") and hasattr(target, "nout"):  # a cupy ufunc
            assert target.nin <= len(args) <= target.nin + target.nout, name
            assert set(kwargs) <= {"out", "dtype", "casting", "where"}, name
        else:
            try:
                signature = inspect.signature(target)
            except (TypeError, ValueError):  # a compiled function without one
                checked.append(name + " (exists; no signature to bind)")
                continue
            signature.bind(*args, **kwargs)
        checked.append(name)
    # and the calls filters.fixed_point_gaussian makes on the modules gpu.py hands it
    # (xp=cp, ndimage=cndi) for the 8-bit Gaussian
    for name, target, args, kwargs in (
            ("cp.asarray", modules["cp"].asarray, 1, {"dtype"}),
            ("cndi.correlate1d", modules["cndi"].correlate1d, 2, {"axis", "mode"})):
        inspect.signature(target).bind(*[object()] * args, **dict.fromkeys(kwargs))
        checked.append(name + " (fixed_point_gaussian)")
    assert any(n.startswith("cndi.gaussian_filter") for n in checked)
    assert any(n.startswith("csparse.csr_matrix") for n in checked)
    assert len(checked) >= 20, checked


# --------------------------------------------------------------------------- a real GPU


def _real_cupy():
    """cupy and a device, or a skip: a device whose stack is broken is a failure (see
    test_the_gpu_is_usable), not a skip."""
    cupy = pytest.importorskip("cupy", reason="cupy is not installed (pip install "
                                              "'dagflow[gpu]')")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("cupy sees no CUDA device")
    except Exception as exc:
        pytest.skip(f"no usable CUDA device: {exc}")
    from dagflow.ops import gpu

    assert gpu.cp is cupy and gpu.cp.ndarray is not DeviceArray  # not the stand-in
    return gpu


@pytest.mark.gpu
def test_the_gpu_is_usable():
    _real_cupy()
    dispatch.gpu_problem.cache_clear()
    assert dispatch.gpu_problem() is None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("op,params", CASES, ids=IDS)
def test_cupy_matches_numpy(op, params, dtype, channels):
    gpu = _real_cupy()
    if op == "convert" and params.get("space") == "gray" and channels == 1:
        pytest.skip("gray to gray")
    compare(op, params, dtype, channels, as_a_gpu_node_runs(gpu, op))


@pytest.mark.gpu
def test_dispatch_uses_the_gpu_when_there_is_one():
    _real_cupy()
    dispatch.gpu_problem.cache_clear()
    used: dict = {}
    image = Image(photo_like(256, 256, seed=1))
    out = call(get_op("gaussian"), "auto", (image,), {"sigma": 2.0}, used)
    assert used == {"device": "gpu", "degraded": False}
    np.testing.assert_array_equal(out.data, get_op("gaussian").func(image, sigma=2.0).data)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("op,params", [c for c in CASES if c[0] != "resize"]
                         + [("resize", {"long_side": 300}), ("resize", {"scale": 0.5})])
def test_the_device_memory_model_bounds_what_the_gpu_ops_hold(op, params, dtype):
    """What cupy's memory pool lent an op at its peak, on a 600x800 image, is within the
    estimate planning and dispatch use (:func:`dagflow.resources.device_bytes`)."""
    gpu = _real_cupy()
    image = Image(photo_like(600, 800, dtype=dtype, seed=3))
    spec = get_op(op)
    full, _ = spec.resolve_params(params)
    header = {"width": 800, "height": 600, "channels": image.channels,
              "itemsize": image.data.dtype.itemsize, "dtype": str(image.data.dtype)}
    estimate = device_bytes(header, output_header(op, header, full))
    gpu.cp.get_default_memory_pool().free_all_blocks()
    _, peak = gpu.device_peak(gpu.run_on_device, spec.func, (image,), full)
    assert 0 < peak <= estimate, (op, params, peak, estimate)


@pytest.mark.gpu
def test_a_run_on_local_cuda_uses_the_gpu_and_its_workers_ignore_sigint(tmp_path):
    """The real thing: dask-cuda's cluster as dagflow starts it, a run whose GPU node
    runs on the device (recorded ``gpu``), workers that leave Ctrl-C to the driver."""
    _real_cupy()
    _real_dask_cuda()
    from distributed import Client

    from dagflow.runtime.cluster import start_cuda_cluster

    _write_pngs(tmp_path / "in", 6)
    wf = Workflow("g", [Node("load", "load"),
                        Node("blur", "gaussian", {"sigma": 2.0}, after="load", device="gpu"),
                        Node("small", "resize", {"long_side": 32}, after="blur"),
                        Node("save", "save", {"format": "png"}, after="small")])
    with start_cuda_cluster(n_workers=1, threads_per_worker=2, dashboard_address="127.0.0.1:0",
                            memory_limit="4GiB") as cluster, Client(cluster) as c:
        handlers = c.run(lambda: signal.getsignal(signal.SIGINT) == signal.SIG_IGN)
        assert list(handlers.values()) == [True]
        result = dagflow.run(wf, tmp_path / "in", tmp_path / "out", client=c, progress=False)
    assert result.succeeded == 6 and result.failed == 0
    rows = ds.dataset(result.run_dir / "records").to_table().to_pylist()
    assert {(r["device"], r["degraded"]) for r in rows
            if r["node_id"] in ("blur", "small")} == {("gpu", False)}
