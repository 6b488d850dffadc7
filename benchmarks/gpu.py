"""Benchmark 6: the GPU implementations against the CPU, per op and on workloads.

Needs a CUDA GPU, cupy and dask-cuda (``pip install -e '.[gpu]'``, or on a machine
without network ``scripts/gpu-check.sh run``); without them it says so and measures
nothing. ``python -m benchmarks gpu``, or ``python -m benchmarks.gpu --quick --json
FILE`` to write the results to FILE as each section finishes (a run stopped at a time
limit keeps what it measured).

1. ``kernels``: each op with a cupy implementation on one photo-like RGB image, CPU
   implementation (one core: BLAS, OpenMP and OpenCV held to one thread) against GPU
   implementation (host-to-device and back included, as dagflow runs them), median of
   ``repeat`` runs after a warm-up; the largest difference from the CPU, and the
   device memory the op held at its peak against the model
   (:func:`dagflow.resources.device_bytes`).
2. ``filters16``: a filter-heavy 16-bit chain (gaussian 3, unsharp, median 5,
   normalize) on a 2048x2048 16-bit grey image: one CPU core against the GPU as dagflow
   runs it (each op copies to the device and back) and with the image kept on the
   device between ops (what a fused chain could reach). Target: >= 10x one core.
3. ``decoders``: the GPU JPEG decoders found (nvImageCodec's ``nvidia.nvimgcodec``,
   torchvision's ``decode_jpeg(device="cuda")``): images per second decoding the
   thumbnail corpus in batches, file bytes already in memory; absent ones are recorded
   with the reason. dagflow itself decodes on the CPU.
4. ``workloads`` through ``dagflow.run``: the thumbnail workflow of benchmark 1 (load,
   resize 512, gaussian 1.5, JPEG) over 2048x1536 JPEGs on a dask-cuda cluster (target:
   >= 1,000 images/s on one device; needs GPU decode), and the 16-bit filter workflow
   over 16-bit TIFFs on the dask-cuda cluster against one CPU core (a ``LocalCluster``
   of one single-threaded worker that is told not to look for a GPU); the records say
   on which device each item ran.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["run"]

OPS = [("resize", {"long_side": 512}), ("gaussian", {"sigma": 3.0}), ("median", {"size": 5}),
       ("unsharp", {"sigma": 2.0, "amount": 1.0}), ("normalize", {}),
       ("convert", {"dtype": "float32"})]
#: The filter-heavy 16-bit chain: (op, params).
FILTERS16 = [("gaussian", {"sigma": 3.0}), ("unsharp", {"sigma": 2.0, "amount": 1.0}),
             ("median", {"size": 5}), ("normalize", {})]


def _available() -> str | None:
    for module, what in (("cupy", "cupy"), ("dask_cuda", "dask-cuda")):
        if importlib.util.find_spec(module) is None:
            return f"{what} is not installed (pip install -e '.[gpu]')"
    from dagflow.ops.dispatch import gpu_problem

    problem = gpu_problem()
    return f"the GPU is not usable: {problem}" if problem else None


@contextlib.contextmanager
def _one_core() -> Iterator[None]:
    """Hold the CPU implementations to one thread (BLAS, OpenMP, OpenCV)."""
    stack = contextlib.ExitStack()
    with stack:
        with contextlib.suppress(ImportError):
            from threadpoolctl import threadpool_limits

            stack.enter_context(threadpool_limits(1))
        cv2_threads = None
        with contextlib.suppress(ImportError):
            import cv2

            cv2_threads = cv2.getNumThreads()
            cv2.setNumThreads(1)
        try:
            yield
        finally:
            if cv2_threads is not None:
                import cv2

                cv2.setNumThreads(cv2_threads)


def _time(func: Callable[[], Any], repeat: int) -> float:
    func()  # warm-up: kernels compiled, memory pool filled
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _synchronized(func: Callable[..., Any]) -> Callable[..., Any]:
    import cupy

    def run(*args: Any, **kwargs: Any) -> Any:
        out = func(*args, **kwargs)
        cupy.cuda.Device().synchronize()
        return out

    return run


def _as_dagflow_runs_it(gpu_ops: Any, func: Callable[..., Any], image: Any, **params: Any
                        ) -> Any:
    """The op's function on the device, as a GPU node runs it (to the device and back)."""
    return gpu_ops.run_on_device(func, (image,), params)


def kernels(size: int, repeat: int) -> list[dict[str, Any]]:
    from dagflow.image import Image
    from dagflow.ops import get_op
    from dagflow.ops import gpu as gpu_ops
    from dagflow.resources import device_bytes
    from dagflow.testing import photo_like

    image = Image(photo_like(size, size, channels=3, seed=0), {"space": "rgb"})
    header = {"width": size, "height": size, "channels": 3, "itemsize": 1, "dtype": "uint8"}
    rows = []
    for op, params in OPS:
        spec = get_op(op)
        full, _ = spec.resolve_params(params)
        on_gpu = _synchronized(functools.partial(_as_dagflow_runs_it, gpu_ops, spec.func))
        with _one_core():
            cpu_s = _time(lambda spec=spec, full=full: spec.func(image, **full), repeat)
        gpu_s = _time(lambda on_gpu=on_gpu, full=full: on_gpu(image, **full), repeat)
        gpu_ops.cp.get_default_memory_pool().free_all_blocks()
        got, peak = gpu_ops.device_peak(on_gpu, image, **full)
        diff = np.abs(spec.func(image, **full).data.astype(np.float64)
                      - got.data.astype(np.float64)).max()
        model = device_bytes(header, spec.output_header(header, full))
        rows.append({"op": op, "cpu_ms": cpu_s * 1e3, "gpu_ms": gpu_s * 1e3,
                     "speedup": cpu_s / gpu_s, "max_diff": float(diff),
                     "device_peak_mb": peak / 1e6, "device_model_mb": model / 1e6})
    return rows


def filters16(size: int, repeat: int) -> dict[str, Any]:
    import cupy

    from dagflow.image import Image
    from dagflow.ops import get_op
    from dagflow.ops import gpu as gpu_ops
    from dagflow.testing import photo_like

    image = Image(photo_like(size, size, channels=1, dtype=np.uint16, seed=1),
                  {"space": "gray"})
    chain = [(get_op(op), get_op(op).resolve_params(params)[0]) for op, params in FILTERS16]

    def on_cpu() -> Any:
        img = image
        for spec, params in chain:
            img = spec.func(img, **params)
        return img

    @_synchronized
    def dagflow_gpu() -> Any:
        img = image
        for spec, params in chain:
            img = _as_dagflow_runs_it(gpu_ops, spec.func, img, **params)
        return img

    @_synchronized
    def on_device() -> Any:  # the image stays on the device between the ops
        arr = cupy.asarray(image.data)
        arr = gpu_ops.gaussian_array(arr, 3.0)
        arr = gpu_ops.unsharp_array(arr, 2.0, 1.0)
        arr = gpu_ops.median_array(arr, 5)
        arr = gpu_ops.normalize_array(arr)
        return cupy.asnumpy(arr)

    with _one_core():
        cpu_s = _time(on_cpu, repeat)
    gpu_s = _time(dagflow_gpu, repeat)
    device_s = _time(on_device, repeat)
    diff = np.abs(on_cpu().data.astype(np.int64) - dagflow_gpu().data.astype(np.int64)).max()
    return {"image": f"{size}x{size} uint16 grey", "chain": [op for op, _ in FILTERS16],
            "cpu_one_core_ms": cpu_s * 1e3, "gpu_dagflow_ms": gpu_s * 1e3,
            "gpu_on_device_ms": device_s * 1e3, "speedup_dagflow": cpu_s / gpu_s,
            "speedup_on_device": cpu_s / device_s, "max_diff": int(diff), "target": 10.0}


def decoders(files: list[Path], batch: int = 32) -> dict[str, Any]:
    """Images per second of each GPU JPEG decoder found, on ``files`` (bytes in memory)."""
    blobs = [p.read_bytes() for p in files]
    found: dict[str, Any] = {}

    def measure(decode_batch: Callable[[list[bytes]], Any]) -> dict[str, Any]:
        decode_batch(blobs[:batch])  # warm-up
        t0 = time.perf_counter()
        for i in range(0, len(blobs), batch):
            decode_batch(blobs[i:i + batch])
        seconds = time.perf_counter() - t0
        return {"images": len(blobs), "batch": batch, "images_per_s": len(blobs) / seconds}

    try:
        import cupy
        from nvidia import nvimgcodec

        try:  # on the GPU (nvJPEG, hybrid Huffman decoding) only, not its CPU backend
            decoder = nvimgcodec.Decoder(backends=[
                nvimgcodec.Backend(nvimgcodec.BackendKind.GPU_ONLY),
                nvimgcodec.Backend(nvimgcodec.BackendKind.HYBRID_CPU_GPU)])
            backends = "GPU_ONLY, HYBRID_CPU_GPU"
        except (AttributeError, TypeError):
            decoder, backends = nvimgcodec.Decoder(), "default"

        def nvimgcodec_batch(data: list[bytes]) -> Any:
            out = decoder.decode(data)
            cupy.cuda.Device().synchronize()
            return out

        first = nvimgcodec_batch(blobs[:1])[0]
        found["nvimgcodec"] = {"version": getattr(nvimgcodec, "__version__", None),
                               "backends": backends,
                               "buffer_kind": str(getattr(first, "buffer_kind", None)),
                               **measure(nvimgcodec_batch)}
    except Exception as exc:
        found["nvimgcodec"] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        import torch
        import torchvision
        from torchvision.io import decode_jpeg

        tensors = {id(b): torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs}

        def torchvision_batch(data: list[bytes]) -> Any:
            out = decode_jpeg([tensors[id(b)] for b in data], device="cuda")
            torch.cuda.synchronize()
            return out

        found["torchvision"] = {"version": torchvision.__version__,
                                **measure(torchvision_batch)}
    except Exception as exc:
        found["torchvision"] = {"error": f"{type(exc).__name__}: {exc}"}
    return found


def _devices(result: Any) -> dict[str, int]:
    import pyarrow.dataset as ds

    devices = ds.dataset(result.run_dir / "records").to_table(columns=["device"])
    values = devices["device"].to_pylist()
    return {d: values.count(d) for d in sorted(set(values), key=str)}


def _tiffs16(n: int, size: int) -> list[Path]:
    import tifffile

    from benchmarks.common import DATA
    from dagflow.testing import photo_like

    directory = DATA / f"gray16-{size}"
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = directory / f"img_{i:04d}.tif"
        if not path.exists():
            tifffile.imwrite(path, photo_like(size, size, channels=1, dtype=np.uint16,
                                              seed=i)[:, :, 0])
        paths.append(path)
    return paths


def workloads(thumbnails: list[Path], tiffs: list[Path], threads: int) -> dict[str, Any]:
    import dask
    from distributed import Client

    import dagflow
    from benchmarks import kernels as cpu_kernels
    from benchmarks.common import DATA
    from dagflow import Node, Workflow
    from dagflow.runtime.cluster import start_cuda_cluster, start_local_cluster

    chain = ["load", *(op for op, _ in FILTERS16)]
    filters = Workflow("filters16", [
        Node("load", "load"),
        *(Node(op, op, params, after=parent)
          for (op, params), parent in zip(FILTERS16, chain[:-1], strict=True)),
        Node("save", "save", {"format": "tiff"}, after=chain[-1])])
    out: dict[str, Any] = {}

    def timed(name: str, wf: Any, files: list[Path], client: Any) -> None:
        t0 = time.perf_counter()
        result = dagflow.run(wf, files, DATA / f"gpu-out-{name}", client=client,
                             resume=False, progress=False)
        seconds = time.perf_counter() - t0
        out[name] = {"images": len(files), "seconds": seconds,
                     "images_per_s": len(files) / seconds, "succeeded": result.succeeded,
                     "devices": _devices(result)}

    with start_cuda_cluster(n_workers=1, threads_per_worker=threads, dashboard_address="127.0.0.1:0"
                            ) as cluster, Client(cluster) as client:
        timed("thumbnails-gpu", cpu_kernels.thumbnail_workflow(), thumbnails, client)
        timed("filters16-gpu", filters, tiffs, client)
    # one CPU core: one single-threaded worker that does not look for the GPU
    with dask.config.set({"dagflow.resources.detect-gpu": False}), start_local_cluster(
            n_workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:
        timed("filters16-cpu-one-core", filters, tiffs, client)
    out["filters16-speedup"] = (out["filters16-cpu-one-core"]["seconds"]
                                / out["filters16-gpu"]["seconds"])
    out["thumbnail-target-images-per-s"] = 1000
    return out


def run(images: int = 400, repeat: int = 3, quick: bool = False,
        json_path: str | os.PathLike[str] | None = None, **_: Any) -> Any:
    """The benchmark (``python -m benchmarks gpu``); results are written to
    ``json_path`` after each section, if given, and to ``benchmarks/results/``."""
    from benchmarks.common import machine, print_table, save_results
    from benchmarks.data import corpus_files, photo_corpus

    results: dict[str, Any] = {"machine": machine()}

    def keep(section: str, value: Any) -> None:
        results[section] = value
        if json_path is not None:
            Path(json_path).write_text(json.dumps(results, indent=2, default=str),
                                       encoding="utf-8")

    missing = _available()
    if missing:
        print(f"\n### gpu: not measured\n\n{missing}.", flush=True)
        keep("not_measured", missing)
        return None
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    keep("device", {"name": props["name"].decode() if isinstance(props["name"], bytes)
                    else str(props["name"]), "memory_gb": props["totalGlobalMem"] / 1e9,
                    "cupy": cupy.__version__})
    print(f"device: {results['device']}", flush=True)
    size = 1024 if quick else 4096
    rows = kernels(size, repeat)
    keep("kernels", rows)
    print_table(f"GPU kernels on a {size}x{size} RGB image (ms, transfers included; CPU "
                "on one core)",
                ["op", "cpu ms", "gpu ms", "speed-up", "max diff", "device MB", "model MB"],
                [[r["op"], f"{r['cpu_ms']:.1f}", f"{r['gpu_ms']:.2f}", f"{r['speedup']:.1f}x",
                  f"{r['max_diff']:g}", f"{r['device_peak_mb']:.1f}",
                  f"{r['device_model_mb']:.1f}"] for r in rows])
    chain = filters16(2048, repeat)
    keep("filters16", chain)
    print_table("16-bit filter chain on one image (gaussian 3, unsharp, median 5, normalize)",
                ["variant", "ms", "speed-up vs one core"],
                [["cpu, one core", f"{chain['cpu_one_core_ms']:.0f}", "1.0x"],
                 ["gpu, as dagflow runs it", f"{chain['gpu_dagflow_ms']:.1f}",
                  f"{chain['speedup_dagflow']:.1f}x"],
                 ["gpu, kept on the device", f"{chain['gpu_on_device_ms']:.1f}",
                  f"{chain['speedup_on_device']:.1f}x"]])
    n = min(images, 200) if quick else images
    thumbnails = corpus_files(photo_corpus(n), n)
    found = decoders(thumbnails)
    keep("decoders", found)
    print_table("GPU JPEG decoders (2048x1536, batches of 32, bytes in memory)",
                ["decoder", "images/s", "or why not"],
                [[name, f"{d['images_per_s']:.0f}" if "images_per_s" in d else "-",
                  d.get("error", "")] for name, d in found.items()])
    tiffs = _tiffs16(8 if quick else 64, 1024 if quick else 2048)
    flows = workloads(thumbnails, tiffs, threads=min(8, os.cpu_count() or 1))
    keep("workloads", flows)
    print_table("dagflow.run on the GPU (dask-cuda) and on one CPU core",
                ["workload", "images", "seconds", "images/s", "records by device"],
                [[name, w["images"], f"{w['seconds']:.1f}", f"{w['images_per_s']:.1f}",
                  w["devices"]] for name, w in flows.items() if isinstance(w, dict)])
    print(f"filters16 through dagflow: {flows['filters16-speedup']:.1f}x one CPU core "
          "(target 10x); thumbnails: "
          f"{flows['thumbnails-gpu']['images_per_s']:.0f} images/s (target 1,000)",
          flush=True)
    return save_results("gpu", results)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.gpu [--quick] [--json FILE]``."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args(argv)
    run(images=args.images, repeat=args.repeat, quick=args.quick, json_path=args.json_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
