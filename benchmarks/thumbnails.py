"""Benchmark 1: the thumbnail workload, dagflow against what people use instead.

auto-orient -> resize to a 512 px long side (antialiased) -> Gaussian sigma 1.5 -> JPEG
quality 85, over generated 2048x1536 photo-like JPEGs (quality 90, a quarter of them
with an EXIF rotation). Variants, timed in turn repetition after repetition:

``loop``            dagflow's kernels in a plain loop, this process, one core
``ppe``             ``ProcessPoolExecutor(n_cores)`` (fork) with dagflow's kernels: the
                    20-line script
``ppe-env``         the same with the worker environment dagflow gives its workers
                    (spawned with ``dagflow.cluster.worker-env``): the strict baseline for
                    the framework's own cost
``naive-pillow``    full decode, ``resize``, ``GaussianBlur``, save, in the same pool
``client.map``      one Dask task per image on a plain ``LocalCluster``
``pyvips``          ``thumbnail`` + ``gaussblur`` + save in a process pool (spawned with
                    the same worker environment, ``VIPS_CONCURRENCY=1``)
``dagflow``         ``dagflow.run`` on dagflow's embedded cluster (default settings),
                    the cluster kept between repetitions (``client=``)
``dagflow-cold``    ``dagflow.run`` with nothing given: it starts its own cluster, runs,
                    and closes it (start-up included)

Every pool and cluster is started, and has imported its modules, before timing, except
in ``dagflow-cold``. Outputs are checked against an exact reference thumbnail (full
decode, pure Lanczos, float64 Gaussian): size, orientation and PSNR.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from itertools import repeat as _repeat
from pathlib import Path
from typing import Any

from benchmarks import kernels
from benchmarks.common import (
    DATA,
    fmt_ratio,
    interleaved,
    load_average,
    print_table,
    save_results,
)
from benchmarks.data import ORIENTATIONS, corpus_files, photo_corpus
from benchmarks.overhead import phases

__all__ = ["ALL_VARIANTS", "run"]

ALL_VARIANTS = ("loop", "ppe", "ppe-env", "naive-pillow", "client.map", "pyvips", "dagflow",
                "dagflow-cold")

OUT = DATA / "out"


def _fresh(name: str) -> str:
    path = OUT / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return os.fspath(path)


def _warm(pool: ProcessPoolExecutor, fn: Callable[[str, str], str], sample: str,
          workers: int) -> None:
    """Start every process of ``pool`` and run ``fn`` once in each (imports, first call)."""
    out = _fresh("warmup")
    list(pool.map(_warm_one, _repeat(fn, workers * 2), _repeat(sample, workers * 2),
                  _repeat(out, workers * 2)))


def _warm_one(fn: Callable[[str, str], str], sample: str, out: str) -> int:
    fn(sample, out)
    time.sleep(0.2)  # keep this process busy so that the pool starts the others
    return os.getpid()


@contextmanager
def _environ(**env: str | None):
    saved = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _worker_env() -> dict[str, str]:
    from dagflow import config

    return {str(k): str(v) for k, v in (config.get("cluster.worker-env") or {}).items()}


def _plain_env() -> dict[str, None]:
    return dict.fromkeys(_worker_env())


def _spawn_pool(workers: int, env: dict[str, str | None], stack: ExitStack
                ) -> ProcessPoolExecutor:
    with _environ(**env):
        pool = stack.enter_context(ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn")))
        pool.submit(os.getpid).result()
        return pool


def check_outputs(outputs: dict[str, str], files: list[Path]) -> list[list[Any]]:
    """Compare each variant's outputs for one image of every orientation with the reference."""
    import numpy as np
    from PIL import Image

    picks = [files[i] for i in range(min(len(files), len(ORIENTATIONS)))]
    rows = []
    for name, out_dir in outputs.items():
        values, shapes_ok = [], True
        for path in picks:
            ref = kernels.reference_thumbnail(os.fspath(path))
            found = Path(out_dir, path.stem + ".jpg")
            if not found.exists():
                shapes_ok = False
                continue
            with Image.open(found) as im:
                got = np.asarray(im.convert("RGB"))
            shapes_ok &= got.shape == ref.shape
            values.append(kernels.psnr(got, ref))
        rows.append([name, "yes" if shapes_ok else "NO",
                     f"{min(values):.1f}" if values else "n/a",
                     f"{float(np.median(values)):.1f}" if values else "n/a"])
    return rows


def run(images: int = 400, repeat: int = 3, variants: tuple[str, ...] | None = None,
        workers: int | None = None, **_: Any) -> dict[str, Any]:
    """Run benchmark 1 and print its table; returns what is written to the results file."""
    from distributed import Client, LocalCluster

    import dagflow
    from dagflow.runtime.cluster import start_local_cluster

    variants = tuple(variants or ALL_VARIANTS)
    n = workers or os.cpu_count() or 1
    files = corpus_files(photo_corpus(images), images)
    paths = [os.fspath(p) for p in files]
    sample = paths[0]
    workflow = kernels.thumbnail_workflow()
    os.environ.setdefault("VIPS_CONCURRENCY", "1")
    print(f"thumbnails: {images} images, {n} processes, {repeat} repetitions, "
          f"load {load_average():.1f}", flush=True)
    outputs: dict[str, str] = {}
    info: dict[str, Any] = {}
    with ExitStack() as stack:
        calls: dict[str, Callable[[], Any]] = {}
        if "loop" in variants:
            kernels.dagflow_kernels(sample, _fresh("warmup"))

            def loop() -> None:
                out = outputs["loop"] = _fresh("loop")
                for p in paths:
                    kernels.dagflow_kernels(p, out)
            calls["loop"] = loop
        if {"ppe", "naive-pillow"} & set(variants):
            with _environ(**_plain_env()):
                fork = stack.enter_context(ProcessPoolExecutor(
                    n, mp_context=multiprocessing.get_context("fork")))
            for name, fn in (("ppe", kernels.dagflow_kernels),
                             ("naive-pillow", kernels.naive_pillow)):
                if name in variants:
                    _warm(fork, fn, sample, n)

                    def ppe(fn: Callable[[str, str], str] = fn, name: str = name) -> None:
                        out = outputs[name] = _fresh(name)
                        list(fork.map(fn, paths, _repeat(out)))
                    calls[name] = ppe
        if {"ppe-env", "pyvips"} & set(variants):
            spawn = _spawn_pool(n, _worker_env(), stack)
            for name, fn in (("ppe-env", kernels.dagflow_kernels),
                             ("pyvips", kernels.vips_thumbnail)):
                if name in variants:
                    _warm(spawn, fn, sample, n)

                    def ppe_env(fn: Callable[[str, str], str] = fn, name: str = name) -> None:
                        out = outputs[name] = _fresh(name)
                        list(spawn.map(fn, paths, _repeat(out)))
                    calls[name] = ppe_env
        if "client.map" in variants:
            with _environ(**_plain_env()):
                plain = stack.enter_context(LocalCluster(
                    n_workers=n, threads_per_worker=1, host="127.0.0.1",
                    dashboard_address="127.0.0.1:0"))
            plain_client = stack.enter_context(Client(plain))
            plain_client.run(kernels.dagflow_kernels, sample, _fresh("warmup"))

            def client_map() -> None:
                out = outputs["client.map"] = _fresh("client.map")
                futures = plain_client.map(kernels.dagflow_kernels, paths,
                                           [out] * len(paths), pure=False)
                plain_client.gather(futures)
            calls["client.map"] = client_map
        if "dagflow" in variants:
            cluster = stack.enter_context(start_local_cluster())
            client = stack.enter_context(Client(cluster))
            client.run(kernels.dagflow_kernels, sample, _fresh("warmup"))
            dagflow.run(workflow, paths[: 2 * n], _fresh("dagflow-warmup"), client=client,
                        progress=False)

            def dagflow_warm() -> dict[str, Any]:
                out = outputs["dagflow"] = _fresh("dagflow")
                t0 = time.perf_counter()
                result = dagflow.run(workflow, paths, out, client=client, progress=False)
                seconds = time.perf_counter() - t0
                assert result.succeeded == images, result
                info["dagflow"] = {"chunk_size": result.chunk_size, "chunks": result.chunks}
                found = phases(out)
                found["setup_s"] = seconds - sum(found.values())
                for key, value in found.items():
                    info.setdefault("dagflow_phases", {}).setdefault(key, []).append(value)
                return {"seconds": seconds}
            calls["dagflow"] = dagflow_warm
        if "dagflow-cold" in variants:
            def dagflow_cold() -> None:
                out = outputs["dagflow-cold"] = _fresh("dagflow-cold")
                result = dagflow.run(workflow, paths, out, progress=False)
                assert result.succeeded == images, result
            calls["dagflow-cold"] = dagflow_cold
        load_before = load_average()
        measured = interleaved(calls, repeat, log=lambda s: print(s, flush=True))
        load_after = load_average()
    quality = check_outputs(outputs, files)
    rows, summary = _table(measured, images, n)
    print_table(f"Thumbnails: {images} x 2048x1536 JPEG -> 512 px, Gaussian 1.5, JPEG 85; "
                f"{n} processes; median of {repeat}", ["variant", "median s", "images/s",
                "vs ppe-env", "vs ppe", "vs pyvips", "vs naive", "CPU ms/image",
                "CPU: pyvips / variant", "spread"], rows)
    if info.get("dagflow_phases"):
        ph = {k: statistics.median(v) for k, v in info["dagflow_phases"].items()}
        print_table("dagflow's run (warm cluster), by phase (median seconds)",
                    ["setup (inputs, checkpoint)", "planning (headers, chunks)",
                     "processing (first submit to last chunk)",
                     "finishing (monitoring, report)", "processing images/s"],
                    [[f"{ph['setup_s']:.2f}", f"{ph['planning_s']:.2f}",
                      f"{ph['processing_s']:.2f}", f"{ph['finishing_s']:.2f}",
                      f"{images / ph['processing_s']:.1f}"]])
        info["dagflow_phases_median"] = ph
    print_table("Thumbnail outputs against the exact reference (8 images, one per "
                "orientation slot)", ["variant", "size+orientation ok", "min PSNR dB",
                                      "median PSNR dB"], quality)
    payload = {"images": images, "processes": n, "repeat": repeat,
               "load": [load_before, load_after], "summary": summary,
               "results": {k: m.as_dict() for k, m in measured.items()},
               "dagflow_run": info, "quality": quality}
    print("results:", save_results("thumbnails", payload))
    return payload


def _table(measured: dict[str, Any], images: int, n: int) -> tuple[list[list[Any]], dict]:
    med = {k: m.median for k, m in measured.items()}
    rate = {k: images / v for k, v in med.items()}
    cpu = {k: m.cpu / images * 1e3 for k, m in measured.items()}
    rows, summary = [], {}
    for name, m in measured.items():
        ratios = {ref: rate[name] / rate[ref] if ref in rate else float("nan")
                  for ref in ("ppe-env", "ppe", "pyvips", "naive-pillow")}
        cpu_vs_vips = cpu["pyvips"] / cpu[name] if "pyvips" in cpu else float("nan")
        rows.append([name, f"{m.median:.2f}", f"{rate[name]:.1f}",
                     *(fmt_ratio(r) for r in ratios.values()), f"{cpu[name]:.1f}",
                     fmt_ratio(cpu_vs_vips), f"{m.spread:.0%}"])
        summary[name] = {"images_per_s": rate[name], "cpu_ms_per_image": cpu[name],
                         "cpu_vs_pyvips": cpu_vs_vips,
                         **{f"vs_{k}": v for k, v in ratios.items()}}
    return rows, summary
