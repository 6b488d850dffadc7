"""Benchmark 4: what the safety features cost -- checkpoints and monitoring, on and off.

The same workload runs on dagflow's embedded cluster (kept warm) in four settings, in
turn, repetition after repetition:

==================  =========================================================
``both``            the defaults: checkpoints (a records part per chunk) and
                    monitoring (metrics parts, the scheduler plugin, the report)
``checkpoints``     ``dagflow.monitor.enabled: false``
``monitoring``      ``run(..., checkpoint=False)``
``neither``         both off
==================  =========================================================

Each feature's cost is its setting's time over ``neither``'s, less one. The monitoring
switch is set on the client and on every worker (tasks read their worker's
configuration). Workloads: ``thumbnails`` (benchmark 1's pipeline) and ``noop``
(benchmark 2's header-only node, where per-item costs show).

On a shared machine those differences move by more than the 3 % they are measured
against, so a second table gives each feature's cost measured where it is spent: the
run's ``own_cpu_s`` (CPU seconds of the features' own code, in the threads that ran it,
on the workers, the scheduler and the client) as a share of the CPU of the whole
process tree during the same run, median over the repetitions.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks.common import DATA, fmt_ratio, interleaved, load_average, print_table, save_results

__all__ = ["run"]

SETTINGS = {"both": (True, True), "checkpoints": (True, False), "monitoring": (False, True),
            "neither": (False, False)}


def _set_monitor(enabled: bool) -> None:
    import dask.config

    dask.config.set({"dagflow.monitor.enabled": enabled})


def run(images: int = 400, items: int = 20_000, repeat: int = 3,
        workloads: tuple[str, ...] = ("thumbnails", "noop"), **_: Any) -> dict[str, Any]:
    import dask.config
    from distributed import Client

    import dagflow
    from dagflow.runtime.cluster import start_local_cluster

    payload: dict[str, Any] = {"repeat": repeat, "workloads": {}}
    own: dict[tuple[str, bool, bool], list[dict[str, float]]] = {}
    with start_local_cluster() as cluster, Client(cluster) as client:
        for workload in workloads:
            if workload == "thumbnails":
                from benchmarks.data import corpus_files, photo_corpus
                from benchmarks.kernels import thumbnail_workflow

                inputs: Any = [os.fspath(p) for p in corpus_files(photo_corpus(images), images)]
                workflow, n = thumbnail_workflow(), images
            else:
                from benchmarks.data import tiny_files
                from benchmarks.noop import noop_workflow

                paths = tiny_files(items)
                inputs = sorted({os.path.dirname(p) for p in paths})
                workflow, n = noop_workflow(), items
            out_root = DATA / "out" / f"safety-{workload}"
            warm = inputs[: 4] if workload == "thumbnails" else [inputs[0]]
            dagflow.run(workflow, warm, os.fspath(out_root / "warmup"), client=client,
                        progress=False)
            print(f"safety ({workload}): {n} items, {repeat} repetitions, "
                  f"load {load_average():.1f}", flush=True)

            def one(checkpoint: bool, monitor: bool, workflow: Any = workflow,
                    inputs: Any = inputs, n: int = n, out_root: Any = out_root,
                    workload: str = workload) -> Callable[[], dict[str, Any]]:
                def call() -> dict[str, Any]:
                    _set_monitor(monitor)
                    client.run(_set_monitor, monitor)
                    out = out_root / f"run-{time.time_ns()}"
                    try:
                        t0 = time.perf_counter()
                        result = dagflow.run(workflow, inputs, os.fspath(out), client=client,
                                             checkpoint=checkpoint, progress=False)
                        seconds = time.perf_counter() - t0
                    finally:
                        _set_monitor(True)
                        client.run(_set_monitor, True)
                    assert result.succeeded == n, result
                    shutil.rmtree(out, ignore_errors=True)
                    own.setdefault((workload, checkpoint, monitor), []).append(
                        dict(result.own_cpu_s))
                    return {"seconds": seconds}
                return call

            with dask.config.set({"dagflow.monitor.enabled": True}):
                measured = interleaved({name: one(*flags) for name, flags in SETTINGS.items()},
                                       repeat, log=lambda s: print(s, flush=True))
            base = measured["neither"].median
            base_cpu = measured["neither"].cpu
            rows = []
            for name, m in measured.items():
                rows.append([name, f"{m.median:.2f}", f"{n / m.median:.1f}",
                             fmt_ratio(base / m.median), f"{(m.median / base - 1):+.1%}",
                             f"{m.cpu:.1f}", f"{(m.cpu / base_cpu - 1):+.1%}",
                             f"{m.spread:.0%}"])
            print_table(f"Safety features, {workload} ({n} items), median of {repeat}",
                        ["setting", "seconds", "items/s", "throughput vs neither",
                         "cost vs neither (wall)", "CPU s", "cost vs neither (CPU)",
                         "spread"], rows)
            shares = {name: _own_shares(own[(workload, *flags)],
                                        measured[name].extra["cpu_s"])
                      for name, flags in SETTINGS.items()}
            print_table(f"Safety features' own CPU, {workload}: share of the run's CPU "
                        f"(process tree), median of {repeat}",
                        ["setting", "checkpoints", "monitoring", "run CPU s"],
                        [[name, f"{s['checkpoint']:.2%}", f"{s['monitoring']:.2%}",
                          f"{measured[name].cpu:.1f}"] for name, s in shares.items()])
            payload["workloads"][workload] = {
                "items": n, "results": {k: m.as_dict() for k, m in measured.items()},
                "cost": {k: m.median / base - 1 for k, m in measured.items()},
                "cost_cpu": {k: m.cpu / base_cpu - 1 for k, m in measured.items()},
                "own_share": shares}
    print("results:", save_results("safety", payload))
    return payload


def _own_shares(owns: list[dict[str, float]], cpu: list[float]) -> dict[str, float]:
    """Per feature, the median over repetitions of its own CPU over the run's CPU."""
    return {feature: statistics.median(o.get(feature, 0.0) / c if c > 0 else 0.0
                                       for o, c in zip(owns, cpu, strict=True))
            for feature in ("checkpoint", "monitoring")}
