"""Benchmark: the microscopy workload, dagflow against a hand-written tifffile pool.

16-bit grey 2048x2048 TIFFs (a 12-bit signal on a dark offset, with shot-like noise) ->
normalize (1st to 99th percentile) -> Gaussian sigma 2 -> 8-bit PNG (zlib level 6,
run-length strategy, on both sides). Every baseline is a warmed
``ProcessPoolExecutor`` of one process per core, spawned with dagflow's worker
environment and one native thread, fed chunks of 2 images; the variants run in turn,
their order rotated every repetition:

=====================  ==============================================================
``tifffile-opencv``    ``tifffile.imread``, ``np.percentile``, the stretch in float32,
                       ``cv2.GaussianBlur`` (float32), ``cv2.imwrite`` -- what a user
                       writes with the fastest tools
``tifffile-scipy``     the same with ``scipy.ndimage.gaussian_filter``
``dagflow-kernels``    dagflow's op functions in the same pool (without the framework)
``dagflow``            ``dagflow.run`` (Python API) on a warm embedded ``LocalCluster``
=====================  ==============================================================

It prints images/s, dagflow's ratio to each (target >= 1.0 against the fastest), the
CPU time per image, where an image's CPU time goes (dagflow's nodes and the OpenCV
script's steps, in one process), and every variant's outputs against an exact
reference (float64 stretch and Gaussian): PSNR.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from functools import lru_cache
from itertools import repeat as _repeat
from pathlib import Path
from typing import Any

from benchmarks import kernels
from benchmarks.common import fmt_ratio, interleaved, load_average, print_table, save_results
from benchmarks.data import corpus_files, microscopy_corpus
from benchmarks.thumbnails import _fresh, spawn_pool, warm, worker_env

__all__ = ["ALL_VARIANTS", "run"]

LOW, HIGH = 1.0, 99.0
SIGMA = 2.0
PNG_LEVEL = 6
CHUNK = 2


def microscopy_workflow() -> Any:
    """load -> normalize 1..99 % -> gaussian 2 -> convert to 8 bits -> PNG."""
    from dagflow import Node, Workflow

    return Workflow("scans", [
        Node("load", "load"),
        Node("stretch", "normalize", {"low": LOW, "high": HIGH}, after=["load"]),
        Node("blur", "gaussian", {"sigma": SIGMA}, after=["stretch"]),
        Node("eight", "convert", {"dtype": "uint8"}, after=["blur"]),
        Node("save", "save", {"format": "png", "compression": PNG_LEVEL}, after=["eight"]),
    ])


@lru_cache(maxsize=1)
def _resolved() -> list[tuple[str, str, Any, dict[str, Any]]]:
    return kernels.resolve(microscopy_workflow())


def _dest(path: str, out_dir: str) -> str:
    return os.path.join(out_dir, Path(path).stem + ".png")


def dagflow_kernels(path: str, out_dir: str) -> str:
    """One scan through dagflow's op functions, as its nodes call them."""
    return kernels.run_nodes(_resolved(), path, out_dir)


def dagflow_chunk(paths: list[str], out_dir: str) -> int:
    """A chunk of scans, made durable together as a dagflow sink task does."""
    from dagflow.io.atomic import deferred_sync

    with deferred_sync():
        for path in paths:
            dagflow_kernels(path, out_dir)
    return len(paths)


def _stretch(pixels: Any) -> Any:
    import numpy as np

    lo, hi = np.percentile(pixels, (LOW, HIGH))
    scaled = (pixels.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.clip(scaled, 0.0, 255.0, out=scaled)


def _write_png(dest: str, pixels: Any) -> None:
    import cv2

    cv2.imwrite(dest, pixels, [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL,
                               cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE])


def tifffile_opencv(path: str, out_dir: str, spent: dict[str, float] | None = None) -> str:
    """tifffile, numpy's percentiles, OpenCV's float32 Gaussian and PNG writer."""
    import cv2
    import numpy as np
    import tifffile

    marks = [time.process_time()]
    pixels = tifffile.imread(path)
    marks.append(time.process_time())
    scaled = _stretch(pixels)
    marks.append(time.process_time())
    blurred = cv2.GaussianBlur(scaled, (0, 0), SIGMA)
    out = (blurred + np.float32(0.5)).astype(np.uint8)
    marks.append(time.process_time())
    dest = _dest(path, out_dir)
    _write_png(dest, out)
    marks.append(time.process_time())
    if spent is not None:
        for name, a, b in zip(("read", "stretch", "blur", "write"), marks, marks[1:],
                              strict=False):
            spent[name] = spent.get(name, 0.0) + b - a
    return dest


def tifffile_scipy(path: str, out_dir: str) -> str:
    """tifffile, numpy's percentiles, scipy's float32 Gaussian, OpenCV's PNG writer."""
    import numpy as np
    import tifffile
    from scipy import ndimage

    scaled = _stretch(tifffile.imread(path))
    blurred = ndimage.gaussian_filter(scaled, SIGMA)
    dest = _dest(path, out_dir)
    _write_png(dest, (blurred + np.float32(0.5)).astype(np.uint8))
    return dest


def reference(path: str) -> Any:
    """The exact output: float64 stretch and Gaussian (truncate 4, reflected edges)."""
    import numpy as np
    import tifffile
    from scipy import ndimage

    pixels = tifffile.imread(path).astype(np.float64)
    lo, hi = np.percentile(pixels, (LOW, HIGH))
    scaled = np.clip((pixels - lo) / (hi - lo), 0.0, 1.0) * 255.0
    return np.rint(ndimage.gaussian_filter(scaled, SIGMA, mode="reflect")).astype(np.uint8)


POOLS: dict[str, Callable[..., str]] = {
    "tifffile-opencv": tifffile_opencv,
    "tifffile-scipy": tifffile_scipy,
    "dagflow-kernels": dagflow_kernels,
}
ALL_VARIANTS = (*POOLS, "dagflow")


def _stages(paths: list[str]) -> dict[str, dict[str, float]]:
    out = _fresh("scan-stages")
    dagflow_kernels(paths[0], out)
    tifffile_opencv(paths[0], out)
    found: dict[str, dict[str, float]] = {"dagflow": {}, "tifffile-opencv": {}}
    for path in paths:
        kernels.run_nodes(_resolved(), path, out, found["dagflow"])
        tifffile_opencv(path, out, found["tifffile-opencv"])
    return {name: {k: v / len(paths) * 1e3 for k, v in stages.items()}
            for name, stages in found.items()}


def _quality(outputs: dict[str, str], paths: list[str]) -> list[list[Any]]:
    import numpy as np

    from benchmarks.kernels import psnr
    from dagflow.io import read_image

    picks = paths[:3]
    refs = {p: reference(p) for p in picks}
    rows = []
    for name, out_dir in outputs.items():
        values = [psnr(read_image(_dest(p, out_dir)).data[:, :, 0], refs[p]) for p in picks]
        rows.append([name, f"{min(values):.1f}", f"{float(np.median(values)):.1f}"])
    return rows


def run(images: int = 64, repeat: int = 3, variants: tuple[str, ...] | None = None,
        workers: int | None = None, quick: bool = False, **_: Any) -> dict[str, Any]:
    """Run the microscopy benchmark and print its tables."""
    from distributed import Client

    import dagflow
    from dagflow.runtime.cluster import start_local_cluster

    if quick:
        images = min(images, 16)
    variants = tuple(v for v in (variants or ALL_VARIANTS) if v in ALL_VARIANTS)
    n = workers or os.cpu_count() or 1
    paths = [os.fspath(p) for p in corpus_files(microscopy_corpus(images), images,
                                                pattern="img_*.tif")]
    env = worker_env()
    print(f"microscopy: {images} scans of 2048x2048 16-bit, {n} processes, chunks of "
          f"{CHUNK}, {repeat} repetitions, load {load_average():.1f}", flush=True)
    outputs: dict[str, str] = {}
    with ExitStack() as stack:
        calls: dict[str, Callable[[], Any]] = {}
        for name, fn in POOLS.items():
            if name not in variants:
                continue
            pool = spawn_pool(n, env, stack)
            warm(pool, fn, paths[0], n)

            def in_pool(pool: Any = pool, fn: Callable = fn,
                        name: str = name) -> dict[str, float]:
                out = outputs[name] = _fresh(f"scans-{name}")  # before the clock starts
                t0 = time.perf_counter()
                if name == "dagflow-kernels":
                    chunks = [paths[i:i + CHUNK] for i in range(0, len(paths), CHUNK)]
                    list(pool.map(dagflow_chunk, chunks, _repeat(out)))
                else:
                    list(pool.map(fn, paths, _repeat(out), chunksize=CHUNK))
                return {"seconds": time.perf_counter() - t0}
            calls[name] = in_pool
        if "dagflow" in variants:
            cluster = stack.enter_context(start_local_cluster())
            client = stack.enter_context(Client(cluster))
            workflow = microscopy_workflow()
            dagflow.run(workflow, paths[:n], _fresh("scans-warmup"), client=client,
                        progress=False)

            def dagflow_warm() -> dict[str, float]:
                out = outputs["dagflow"] = _fresh("scans-dagflow")
                t0 = time.perf_counter()
                result = dagflow.run(workflow, paths, out, client=client, progress=False)
                assert result.succeeded == images, result
                return {"seconds": time.perf_counter() - t0}
            calls["dagflow"] = dagflow_warm
        load_before = load_average()
        measured = interleaved(calls, repeat, log=lambda s: print(s, flush=True))
        load_after = load_average()
    rate = {k: images / m.median for k, m in measured.items()}
    cpu = {k: m.cpu / images * 1e3 for k, m in measured.items()}
    rows, summary = [], {}
    for name, m in measured.items():
        ratio = rate["dagflow"] / rate[name] if "dagflow" in rate else float("nan")
        by_cpu = cpu[name] / cpu["dagflow"] if "dagflow" in cpu else float("nan")
        rows.append([name, f"{m.median:.2f}", f"{rate[name]:.2f}", fmt_ratio(ratio),
                     f"{cpu[name]:.0f}", fmt_ratio(by_cpu), f"{m.spread:.0%}"])
        summary[name] = {"images_per_s": rate[name], "cpu_ms_per_image": cpu[name],
                         "dagflow_ratio": ratio, "dagflow_ratio_by_cpu": by_cpu}
    print_table(f"Microscopy: {images} x 2048x2048 16-bit TIFF -> normalize -> Gaussian 2 -> "
                f"8-bit PNG; {n} processes; median of {repeat}",
                ["variant", "median s", "images/s", "dagflow ÷ variant", "CPU ms/image",
                 "by CPU: dagflow ÷ variant", "spread"], rows)
    baselines = {k: v for k, v in rate.items() if k.startswith("tifffile")}
    if baselines and "dagflow" in rate:
        fastest = max(baselines, key=baselines.get)
        leanest = min((k for k in baselines), key=cpu.get)
        print_table("Target", ["measure", "value"],
                    [[f"dagflow ÷ the fastest hand-written pool ({fastest}), target >= 1.0",
                      fmt_ratio(rate["dagflow"] / baselines[fastest])],
                     [f"by CPU: dagflow ÷ the leanest hand-written pool ({leanest})",
                      fmt_ratio(cpu[leanest] / cpu["dagflow"])]])
    stages = _stages(paths[: min(len(paths), 6)])
    print_table("CPU ms a scan spends per stage (one process, mean over 6 scans)",
                ["pipeline", "stages", "total"],
                [[name, ", ".join(f"{k} {v:.1f}" for k, v in st.items()),
                  f"{sum(st.values()):.1f}"] for name, st in stages.items()])
    quality = _quality(outputs, paths)
    print_table("Outputs against the exact reference (float64; 3 scans)",
                ["variant", "min PSNR dB", "median PSNR dB"], quality)
    payload = {"images": images, "processes": n, "chunk": CHUNK, "repeat": repeat,
               "load": [load_before, load_after], "summary": summary, "stages_ms": stages,
               "results": {k: m.as_dict() for k, m in measured.items()}, "quality": quality}
    print("results:", save_results("microscopy", payload))
    return payload
