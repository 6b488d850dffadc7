"""The allocator environment of worker processes (``MALLOC_*``) on the thumbnail kernels.

glibc reads ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` once, when a process
starts, so each setting runs in a fresh interpreter (the way a Dask nanny spawns its
worker after applying ``distributed.nanny.pre-spawn-environ``). Setting either one also
switches off glibc's dynamic mmap threshold: with a small threshold every image-sized
buffer is a fresh ``mmap`` that is page-faulted in again for every image.

The child loops over the images with :func:`benchmarks.kernels.dagflow_kernels` and
reports the time of the loop alone (imports excluded). Settings run in turn,
repetition after repetition.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any

from benchmarks.common import Measure, fmt_ratio, print_table, save_results
from benchmarks.data import corpus_files, photo_corpus

__all__ = ["SETTINGS", "run"]

#: name -> environment for the worker process (None: variable removed).
SETTINGS: dict[str, dict[str, str | None]] = {
    "glibc default (no MALLOC_*)": {"MALLOC_MMAP_THRESHOLD_": None,
                                    "MALLOC_TRIM_THRESHOLD_": None},
    "Dask default (TRIM=64 KiB)": {"MALLOC_MMAP_THRESHOLD_": None,
                                   "MALLOC_TRIM_THRESHOLD_": "65536"},
    "MMAP=64 KiB, TRIM=0": {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"},
    "MMAP=32 MiB, TRIM=128 MiB": {"MALLOC_MMAP_THRESHOLD_": "33554432",
                                  "MALLOC_TRIM_THRESHOLD_": "134217728"},
}

_CHILD = """
import json, os, sys, time, tempfile
from benchmarks.kernels import dagflow_kernels
files = sys.argv[1:]
out = tempfile.mkdtemp(prefix="envbench-")
dagflow_kernels(files[0], out)  # imports and first-call costs
t0 = time.perf_counter(); c0 = time.process_time()
for f in files:
    dagflow_kernels(f, out)
wall = time.perf_counter() - t0
cpu = time.process_time() - c0
import resource
ru = resource.getrusage(resource.RUSAGE_SELF)
hwm = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")]
print(json.dumps({"seconds": wall, "cpu_s": cpu, "minflt": ru.ru_minflt,
                  "maxrss_kib": hwm[0] if hwm else ru.ru_maxrss}))
"""


def _child(files: list[str], env: dict[str, str | None]) -> dict[str, Any]:
    environ = dict(os.environ)
    for key, value in env.items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", _CHILD, *files], env=environ, cwd=root,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(images: int = 100, repeat: int = 3, **_: Any) -> dict[str, Any]:
    files = [os.fspath(p) for p in corpus_files(photo_corpus(images), images)]
    results = {name: Measure(name) for name in SETTINGS}
    faults: dict[str, list[int]] = {name: [] for name in SETTINGS}
    names = list(SETTINGS)
    with tempfile.TemporaryDirectory():
        for r in range(repeat):
            for name in names[r % len(names):] + names[:r % len(names)]:
                out = _child(files, SETTINGS[name])
                results[name].seconds.append(out["seconds"])
                results[name].extra = out
                faults[name].append(out["minflt"])
                print(f"  [{r + 1}/{repeat}] {name}: {out['seconds']:.2f} s, "
                      f"{out['minflt']} page faults", flush=True)
    base = results[names[0]].median
    rows = []
    for name, m in results.items():
        rows.append([name, f"{images / m.median:.1f}", fmt_ratio(base / m.median),
                     f"{min(faults[name]) / images:.0f}",
                     f"{m.extra.get('maxrss_kib', 0) / 1024:.0f}"])
    print_table(f"Allocator environment, dagflow kernels, one process, {images} images",
                ["setting", "images/s", "vs glibc default", "page faults/image",
                 "max RSS MiB"], rows)
    payload = {"images": images, "repeat": repeat,
               "results": {n: {**m.as_dict(), "minflt": faults[n]} for n, m in results.items()}}
    print("results:", save_results("env", payload))
    return payload
