"""Benchmark 6: the GPU implementations against the CPU, per op and on a workload.

Needs a CUDA GPU, cupy and dask-cuda (``pip install -e '.[gpu]'``, or
``scripts/gpu-check.sh``); without them it says so and measures nothing.

1. Kernels: each op with a cupy implementation (resize, gaussian, median, unsharp,
   normalize, convert) on one photo-like RGB image, CPU implementation against GPU
   implementation (host-to-device and back included, as dagflow runs them), median of
   ``repeat`` runs after a warm-up; the largest difference from the CPU result is shown.
2. Workload: ``load -> gaussian 3 -> unsharp -> resize 1024 -> save JPEG`` over
   generated 2048x1536 JPEGs, ``dagflow.run`` on ``--cluster local-cuda`` (every filter
   node ``device: auto``, so on the GPU) against the embedded CPU cluster; the records say
   on which device each item ran.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from typing import Any

import numpy as np

__all__ = ["run"]

OPS = [("resize", {"long_side": 1024}), ("gaussian", {"sigma": 3.0}), ("median", {"size": 5}),
       ("unsharp", {"sigma": 2.0, "amount": 1.0}), ("normalize", {}),
       ("convert", {"dtype": "float32"})]


def _available() -> str | None:
    for module, what in (("cupy", "cupy"), ("dask_cuda", "dask-cuda")):
        if importlib.util.find_spec(module) is None:
            return f"{what} is not installed (pip install -e '.[gpu]')"
    from dagflow.ops.dispatch import gpu_available

    if not gpu_available():
        return "cupy sees no CUDA device"
    return None


def _time(func: Any, repeat: int) -> float:
    func()  # warm-up: kernels compiled, memory pool filled
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def kernels(size: int, repeat: int) -> list[list[Any]]:
    import cupy

    from dagflow.image import Image
    from dagflow.ops import get_op
    from dagflow.ops.gpu import IMPLEMENTATIONS
    from dagflow.testing import photo_like

    image = Image(photo_like(size, size, channels=3, seed=0), {"space": "rgb"})
    rows = []
    for op, params in OPS:
        spec = get_op(op)
        full, _ = spec.resolve_params(params)
        gpu_func = IMPLEMENTATIONS[op]

        def on_gpu(gpu_func: Any = gpu_func, full: dict = full) -> Any:
            out = gpu_func(image, **full)
            cupy.cuda.Device().synchronize()
            return out

        cpu_s = _time(lambda spec=spec, full=full: spec.func(image, **full), repeat)
        gpu_s = _time(on_gpu, repeat)
        diff = np.abs(spec.func(image, **full).data.astype(np.float64)
                      - on_gpu().data.astype(np.float64)).max()
        rows.append([op, f"{cpu_s * 1e3:.1f}", f"{gpu_s * 1e3:.1f}", f"{cpu_s / gpu_s:.1f}x",
                     f"{diff:g}"])
    return rows


def workload(images: int) -> list[list[Any]]:
    import pyarrow.dataset as ds

    import dagflow
    from benchmarks.common import DATA
    from benchmarks.data import photo_corpus
    from dagflow import Node, Workflow

    source = photo_corpus(images)
    wf = Workflow("gpu-filters", [
        Node("load", "load"),
        Node("blur", "gaussian", {"sigma": 3.0}, after="load"),
        Node("sharp", "unsharp", {"sigma": 2.0}, after="blur"),
        Node("small", "resize", {"long_side": 1024}, after="sharp"),
        Node("save", "save", {"format": "jpeg", "quality": 85}, after="small"),
    ])
    rows = []
    baseline = None
    for name, cluster in (("cpu (local)", "local"), ("gpu (local-cuda)", "local-cuda")):
        out = DATA / f"gpu-out-{cluster}"
        t0 = time.perf_counter()
        result = dagflow.run(wf, sorted(source.glob("img_*.jpg"))[:images], out,
                             cluster=cluster, resume=False, progress=False)
        seconds = time.perf_counter() - t0
        baseline = baseline or seconds
        table = ds.dataset(result.run_dir / "records").to_table(columns=["device"])
        devices = {d: table["device"].to_pylist().count(d)
                   for d in set(table["device"].to_pylist())}
        rows.append([name, f"{seconds:.1f}", f"{images / seconds:.1f}",
                     f"{baseline / seconds:.2f}x", result.succeeded, devices])
    return rows


def run(images: int = 400, repeat: int = 3, quick: bool = False, **_: Any) -> Any:
    """The benchmark (``python -m benchmarks gpu``)."""
    from benchmarks.common import print_table, save_results

    missing = _available()
    if missing:
        print(f"\n### gpu: not measured\n\n{missing}.", flush=True)
        return None
    size = 2048 if quick else 4096
    kernel_rows = kernels(size, repeat)
    print_table(f"GPU kernels on a {size}x{size} RGB image (ms, transfers included)",
                ["op", "cpu ms", "gpu ms", "speed-up", "max diff"], kernel_rows)
    images = min(images, 40) if quick else images
    workload_rows = workload(images)
    print_table(f"GPU workload: {images} 2048x1536 JPEGs, blur + sharpen + resize",
                ["cluster", "seconds", "img/s", "speed-up", "succeeded", "records by device"],
                workload_rows)
    return save_results("gpu", {"kernels": kernel_rows, "workload": workload_rows})
