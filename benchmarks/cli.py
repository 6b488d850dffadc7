"""The command line: ``python -m benchmarks [benchmark ...] [options]``.

With no benchmark named, ``all`` runs. ``--quick`` shrinks every workload so that the
whole set finishes in a few minutes (figures from it are indicative only).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import time
from typing import Any

__all__ = ["main"]

BENCHMARKS = ("thumbnails", "cold", "s3", "microscopy", "overhead", "planning", "safety",
              "memory", "large-image", "gpu", "env", "prediction", "advice")

#: Benchmarks owned by other modules that may not exist yet: name -> (module, what it needs).
OPTIONAL = {
    "prediction": ("benchmarks.prediction", "benchmarks/prediction.py"),
    "advice": ("benchmarks.advice", "benchmarks/advice.py"),
    "large-image": ("benchmarks.large_image",
                    "benchmarks/large_image.py with run(**options): peak worker RSS on a "
                    "large-image workload (images above a worker's budget, processed tiled) "
                    "against the configured budget"),
    "gpu": ("benchmarks.gpu",
            "benchmarks/gpu.py with run(**options), a CUDA GPU, cupy and dask-cuda "
            "(pip install -e '.[gpu]'): the thumbnail and a filter-heavy workload on "
            "--cluster local-cuda against the CPU, per device"),
}

QUICK = {"images": 80, "items": 10_000, "planning_items": 100_000, "repeat": 3}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="dagflow's benchmarks, side by side with their baselines; results are "
                    "printed as tables and written to benchmarks/results/*.json.")
    p.add_argument("benchmarks", nargs="*", metavar="benchmark",
                   help=f"any of: all, {', '.join(BENCHMARKS)} (default: all; 'all' skips "
                        "'env', which is run on request)")
    p.add_argument("--quick", action="store_true",
                   help="small workloads (80 images, 10,000 items, 100,000 planned items)")
    p.add_argument("--images", type=int, help="images for thumbnails (default 480), s3 "
                   "(160), safety, memory (400), microscopy (64 scans)")
    p.add_argument("--items", type=int, help="items for the no-op workload (overhead: "
                   "100,000; safety: 20,000)")
    p.add_argument("--planning-items", type=int, default=None,
                   help="items for planning (default 1,000,000)")
    p.add_argument("--repeat", type=int, default=None, help="repetitions (default 3)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes for the baselines (default: the number of cores)")
    p.add_argument("--variants", default=None,
                   help="thumbnails, microscopy: comma-separated variants to run (default: "
                        "all)")
    p.add_argument("--memory-limit", default="1GiB",
                   help="memory: the tight per-worker limit (default 1GiB)")
    p.add_argument("--wait-for-load", type=float, default=None, metavar="LOAD",
                   help="before each benchmark, wait (up to 10 minutes) until the 1-minute "
                        "load average is below LOAD")
    return p


def _wait_for_load(limit: float | None) -> None:
    if limit is None:
        return
    deadline = time.monotonic() + 600
    while os.getloadavg()[0] >= limit and time.monotonic() < deadline:
        print(f"waiting for the load average ({os.getloadavg()[0]:.1f}) to drop below "
              f"{limit}", flush=True)
        time.sleep(15)


def _run_one(name: str, args: argparse.Namespace) -> Any:
    quick = QUICK if args.quick else {}
    repeat = args.repeat or quick.get("repeat") or 3
    images = args.images or quick.get("images") or 400
    if name == "thumbnails":
        from benchmarks import thumbnails

        variants = tuple(v.strip() for v in args.variants.split(",")) if args.variants else None
        return thumbnails.run(images=args.images or quick.get("images") or 480, repeat=repeat,
                              variants=variants, workers=args.workers)
    if name == "cold":
        from benchmarks import cold

        return cold.run(images=args.images or 480, repeat=repeat, quick=args.quick,
                        workers=args.workers)
    if name == "s3":
        from benchmarks import s3

        return s3.run(images=args.images or (24 if args.quick else 160), repeat=repeat,
                      quick=args.quick)
    if name == "microscopy":
        from benchmarks import microscopy

        variants = tuple(v.strip() for v in args.variants.split(",")) if args.variants else None
        return microscopy.run(images=args.images or (16 if args.quick else 64), repeat=repeat,
                              variants=variants, workers=args.workers, quick=args.quick)
    if name == "overhead":
        from benchmarks import overhead

        return overhead.run(items=args.items or quick.get("items") or 100_000, repeat=repeat,
                            workers=args.workers)
    if name == "planning":
        from benchmarks import planning

        return planning.run(items=args.planning_items or quick.get("planning_items")
                            or 1_000_000)
    if name == "safety":
        from benchmarks import safety

        return safety.run(images=images, items=args.items or quick.get("items") or 20_000,
                          repeat=repeat)
    if name == "memory":
        from benchmarks import memory

        return memory.run(images=images, memory_limit=args.memory_limit)
    if name == "env":
        from benchmarks import envbench

        return envbench.run(images=min(images, 100), repeat=repeat)
    module, needs = OPTIONAL[name]
    if importlib.util.find_spec(module) is None:
        print(f"\n### {name}: not measured\n\nThis benchmark needs {needs}.", flush=True)
        return None
    return importlib.import_module(module).run(images=images, repeat=repeat,
                                               quick=args.quick)


def main(argv: list[str] | None = None) -> int:
    # One BLAS/OpenMP thread per process, as Dask gives its workers, so that the process
    # pools compared with dagflow run the same kernels the same way.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    args = _parser().parse_args(argv)
    from benchmarks import common

    given = sys.argv[1:] if argv is None else argv
    common.COMMAND = " ".join(["python -m benchmarks", *given])
    names = args.benchmarks or ["all"]
    unknown = [n for n in names if n != "all" and n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from all, "
              f"{', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    if "all" in names:
        names = [n for n in BENCHMARKS if n != "env"]
    from benchmarks.common import machine

    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items() if v is not None),
          flush=True)
    for name in names:
        _wait_for_load(args.wait_for_load)
        _run_one(name, args)
    return 0
