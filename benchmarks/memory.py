"""Benchmark 5 (thumbnail part): peak resident memory of each worker against its budget.

dagflow's embedded cluster runs the thumbnail workload twice: with the default memory
limit (Dask's ``auto``: the machine's memory shared among the workers) and with a tight,
configured one (``--memory-limit``, default 1 GiB per worker). A thread samples every
worker process's resident memory (RSS) every 20 ms; the table compares each worker's
peak with its limit and with the budget dagflow plans against (the limit less the
configured margin and the worker's own footprint, from the worker's ``MEMORY``
resource when dagflow advertises it).

The large-image part belongs to ``benchmarks/large_image.py`` (``python -m benchmarks
large-image``).
"""

from __future__ import annotations

import os
import time
from typing import Any

from benchmarks.common import DATA, PeakRSS, load_average, print_table, save_results

__all__ = ["run"]


def _parse_bytes(value: str | int | None) -> int | None:
    if value is None or value == "auto":
        return None
    from dask.utils import parse_bytes

    return int(parse_bytes(value)) if isinstance(value, str) else int(value)


def run(images: int = 400, memory_limit: str = "1GiB", **_: Any) -> dict[str, Any]:
    from distributed import Client

    import dagflow
    from benchmarks.data import corpus_files, photo_corpus
    from benchmarks.kernels import thumbnail_workflow
    from dagflow.runtime.cluster import start_local_cluster

    paths = [os.fspath(p) for p in corpus_files(photo_corpus(images), images)]
    workflow = thumbnail_workflow()
    rows, payload = [], {"images": images, "runs": []}
    for limit in ("auto", memory_limit):
        print(f"memory: {images} images, memory limit {limit}, load {load_average():.1f}",
              flush=True)
        options = {} if limit == "auto" else {"memory_limit": limit}
        with start_local_cluster(**options) as cluster, Client(cluster) as client:
            pids = client.run(os.getpid)
            out = DATA / "out" / f"memory-{time.time_ns()}"
            with PeakRSS(lambda pids=pids: pids.values(), interval=0.02) as sampler:
                result = dagflow.run(workflow, paths, os.fspath(out), client=client,
                                     progress=False)
            assert result.succeeded == images, result
            # MEMORY is advertised by the run; asked of the scheduler itself (scheduler_info()
            # may return the client's periodic refresh, without workers, when they race)
            info = client.sync(client.scheduler.identity, n_workers=-1)["workers"]
            for address, pid in sorted(pids.items()):
                limit_bytes = info[address].get("memory_limit") or 0
                budget = (info[address].get("resources") or {}).get("MEMORY")
                peak = sampler.peaks.get(pid, 0)
                rows.append([limit, address.rsplit(":", 1)[-1], f"{peak / 2**20:.0f}",
                             f"{limit_bytes / 2**20:.0f}" if limit_bytes else "none",
                             f"{budget / 2**20:.0f}" if budget else "n/a",
                             f"{peak / limit_bytes:.0%}" if limit_bytes else "n/a",
                             "yes" if not limit_bytes or peak <= limit_bytes else "NO"])
                payload["runs"].append({"limit": limit, "worker": address, "peak_rss": peak,
                                        "memory_limit": limit_bytes, "budget": budget})
    print_table(f"Peak worker RSS, thumbnail workload ({images} images)",
                ["memory limit", "worker port", "peak RSS MiB", "limit MiB",
                 "planning budget MiB", "peak / limit", "within limit"], rows)
    print("results:", save_results("memory", payload))
    return payload
