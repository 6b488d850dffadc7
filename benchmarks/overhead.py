"""Benchmark 2: framework overhead, a no-op workflow over many items.

The workflow has one node, ``bench_header`` (:mod:`benchmarks.noop`): read the image's
header, record the item, nothing else. dagflow runs it over ``--items`` tiny JPEGs (in
directories of 1,000) on its embedded cluster, kept warm between repetitions; the
baseline is the same header read over the same files in a ``ProcessPoolExecutor`` with
large chunks (the kernel's own cost on the same cores, with next to no per-item IPC).

dagflow's cost per item is ``(dagflow wall time - baseline wall time) / items`` (the
medians' difference; the median of each repetition's difference, the two run back to
back, is printed beside it): its scheduling, per-item loop, records, checkpoint parts,
monitoring and client-side planning together, amortised. The run's event log splits
dagflow's time into planning on the client (before the first chunk is submitted),
processing (first submit to last chunk) and finishing (last chunk to the end of ``run``).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Measure,
    interleaved,
    load_average,
    print_table,
    save_results,
)
from benchmarks.data import tiny_files

__all__ = ["phases", "run"]


def phases(output: str | os.PathLike[str]) -> dict[str, float]:
    """Planning / processing / finishing seconds of the latest run under ``output``."""
    runs = sorted(Path(output, "_dagflow", "runs").iterdir())
    events = [json.loads(line) for line in (runs[-1] / "events.jsonl").read_text().splitlines()]
    t = {e["event"]: e["t"] for e in reversed(events)}  # first occurrence of each
    start = t["run_started"]
    submit = t.get("chunks_submitted", start)
    last_chunk = max((e["t"] for e in events if e["event"] == "chunk_finished"), default=submit)
    end = events[-1]["t"]
    return {"planning_s": submit - start, "processing_s": last_chunk - submit,
            "finishing_s": end - last_chunk}


def _chunked_kernel(paths: list[str]) -> int:
    from benchmarks.noop import header_kernel

    for p in paths:
        header_kernel(p)
    return len(paths)


def run(items: int = 100_000, repeat: int = 3, workers: int | None = None,
        **_: Any) -> dict[str, Any]:
    from distributed import Client

    import dagflow
    from benchmarks.noop import noop_workflow
    from dagflow.runtime.cluster import start_local_cluster

    n = workers or os.cpu_count() or 1
    paths = tiny_files(items)
    dirs = sorted({os.path.dirname(p) for p in paths})
    per_task = max(1, math.ceil(items / (n * 8)))
    batches = [paths[i:i + per_task] for i in range(0, items, per_task)]
    workflow = noop_workflow()
    out_root = Path(paths[0]).parents[2] / "out" / "noop"
    print(f"overhead: {items} items, {n} processes, {repeat} repetitions, "
          f"load {load_average():.1f}", flush=True)
    info: dict[str, Any] = {}
    with ProcessPoolExecutor(n) as pool, start_local_cluster() as cluster, \
            Client(cluster) as client:
        list(pool.map(_chunked_kernel, [paths[:10]] * n))
        client.run(_chunked_kernel, paths[:10])
        dagflow.run(workflow, paths[:100], os.fspath(out_root / "warmup"), client=client,
                    progress=False)

        def baseline() -> None:
            assert sum(pool.map(_chunked_kernel, batches)) == items

        def with_dagflow_phases() -> dict[str, Any]:
            out = out_root / f"run-{time.time_ns()}"
            t0 = time.perf_counter()
            result = dagflow.run(workflow, dirs, os.fspath(out), client=client, progress=False)
            seconds = time.perf_counter() - t0
            assert result.succeeded == items, result
            info.update(chunk_size=result.chunk_size, chunks=result.chunks)
            found = phases(out)
            found["setup_s"] = seconds - sum(found.values())
            for key, value in found.items():
                info.setdefault(key, []).append(value)
            _remove(out)
            return {"seconds": seconds}

        measured = interleaved({"kernel, ProcessPoolExecutor": baseline,
                                "dagflow": with_dagflow_phases}, repeat,
                               log=lambda s: print(s, flush=True))
    return report(measured, items, n, info)


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def report(measured: dict[str, Measure], items: int, n: int, info: dict[str, Any]
           ) -> dict[str, Any]:
    kernel = measured["kernel, ProcessPoolExecutor"]
    base = kernel.median
    dag = measured["dagflow"]
    per_item = (dag.median - base) / items * 1e6
    # each repetition runs the two back to back: their difference moves less with the
    # machine's slow and fast phases than the difference of the two medians
    paired = statistics.median(d - k for d, k in zip(dag.seconds, kernel.seconds,
                                                     strict=True))
    paired_per_item = paired / items * 1e6
    rows = [
        ["kernel only (ProcessPoolExecutor, large chunks)", f"{base:.2f}",
         f"{base / items * 1e6:.1f}", ""],
        ["dagflow, whole run", f"{dag.median:.2f}", f"{dag.median / items * 1e6:.1f}",
         f"{per_item:.1f}"],
        ["  paired: median of (dagflow - kernel) per repetition", f"{paired:.2f}", "",
         f"{paired_per_item:.1f}"],
    ]
    for key, label in (("setup_s", "  setup on the client (inputs, checkpoint)"),
                       ("planning_s", "  planning on the client (headers, chunks)"),
                       ("processing_s", "  processing (first submit to last chunk)"),
                       ("finishing_s", "  finishing (records, monitoring, report)")):
        if info.get(key):
            value = statistics.median(info[key])
            rows.append([label, f"{value:.2f}", f"{value / items * 1e6:.1f}", ""])
    print_table(f"Framework overhead: no-op workflow (read header, record) over {items} items, "
                f"{n} processes, chunk size {info.get('chunk_size')}, median of "
                f"{len(dag.seconds)}",
                ["", "seconds", "us per item", "dagflow's cost, us per item"],
                rows)
    payload = {"items": items, "processes": n, "overhead_us_per_item": per_item,
               "paired_overhead_us_per_item": paired_per_item, **info,
               "results": {k: m.as_dict() for k, m in measured.items()}}
    print("results:", save_results("overhead", payload))
    return payload
