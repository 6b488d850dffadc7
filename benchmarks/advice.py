"""Benchmark: every recommendation kind, applied where it fires, measured.

For each kind of :mod:`dagflow.monitor.advice`, a workload on which the report's
evidence calls for it: the workload runs with its baseline setting; the benchmark checks
that the run's analysis recommends the kind (with its evidence) and takes the setting it
names; then baseline and recommended setting run side by side, alternated, on warm
clusters (2 worker processes), and the medians are compared.

=================  ============================================================
kind               workload (baseline -> the recommended setting)
=================  ============================================================
``larger-chunks``  tiny JPEGs loaded and saved as PNG, one item per task
``smaller-chunks`` a handful of 2048x1536 photos blurred (sigma 6), all in one chunk
``more-threads``   tiny JPEGs through an op that waits 25 ms per item (the latency of
                   a remote store) on one thread per worker
``gpu``            not measured here without a CUDA GPU (never recommended until it is)
=================  ============================================================

A kind whose recommended setting made the runs slower (or no faster) is a defect of the
recommendation. The measured effects are written, with how they were measured, to
``dagflow/monitor/effects.json`` (not with ``--quick``), which the report reads: what a
recommendation promises is what was measured here.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import interleaved, load_average, machine, print_table, save_results
from dagflow import Image, Param, register_op

__all__ = ["KINDS", "run"]

KINDS = ("larger-chunks", "smaller-chunks", "more-threads")


@register_op("bench_latency", params=[Param("seconds", float, 0.025)], replace=True)
def latency(image: Image, seconds: float = 0.025) -> Image:
    """Waits ``seconds`` per item, off the CPU: a read from a remote store."""
    time.sleep(seconds)
    return image


def _workflow(kind: str) -> Any:
    from dagflow import Node, Workflow

    if kind == "larger-chunks":
        return Workflow("advice-chunks", [
            Node("load", "load"), Node("save", "save", {"format": "png"}, after="load")])
    if kind == "smaller-chunks":
        return Workflow("advice-few", [
            Node("load", "load"), Node("blur", "gaussian", {"sigma": 6.0}, after="load"),
            Node("save", "save", {"format": "jpeg"}, after="blur")])
    return Workflow("advice-latency", [
        Node("load", "load"), Node("fetch", "bench_latency", after="load"),
        Node("save", "save", {"format": "png"}, after="fetch")])


#: Per kind: items (full, quick), baseline chunk size, threads per worker.
SETUP = {"larger-chunks": ((1000, 800), 1, 1), "smaller-chunks": ((32, 32), 32, 1),
         "more-threads": ((240, 120), 16, 1)}


def _inputs(kind: str, quick: bool) -> list[str]:
    from benchmarks.data import corpus_files, photo_corpus, tiny_files

    n = SETUP[kind][0][1 if quick else 0]
    if kind == "smaller-chunks":
        return [os.fspath(p) for p in corpus_files(photo_corpus(n), n)]
    return tiny_files(n)


def _fires(analysis: Any, kind: str) -> Any:
    """The recommendation of ``kind`` on this analysis, judged as if every kind had been
    measured as a gain (what fires then depends on the evidence alone)."""
    from dagflow.monitor.advice import advise

    gains = {k: {"change": -1.0, "baseline_s": 1.0, "applied_s": 0.0, "baseline": "-",
                 "applied": "-", "workload": "-", "how": "-"}
             for k in ("larger-chunks", "smaller-chunks", "more-threads", "gpu")}
    recs, _ = advise(analysis.facts, effects=gains)
    return next((r for r in recs if r.kind == kind), None)


def measure(kind: str, repeat: int, quick: bool, root: Path) -> dict[str, Any]:
    """Run ``kind``'s workload with its baseline, apply the recommendation, compare."""
    import dask
    from distributed import Client

    import dagflow
    from dagflow.runtime.cluster import start_local_cluster

    wf = _workflow(kind)
    inputs = _inputs(kind, quick)
    _, chunk, threads = SETUP[kind]
    counter = iter(range(10_000))

    def runner(client: Any, chunk_size: int) -> Callable[[], dict[str, Any]]:
        def go() -> dict[str, Any]:
            out = root / f"out-{next(counter)}"
            result = dagflow.run(wf, inputs, out, client=client, progress=False,
                                 chunk_size=chunk_size)
            assert result.succeeded == len(inputs), result
            return {"seconds": result.duration_s, "run_dir": os.fspath(result.run_dir)}
        return go

    with dask.config.set({"dagflow.monitor.history-dir": os.fspath(root / "history"),
                          "dagflow.monitor.report": False}), \
            start_local_cluster(n_workers=2, threads_per_worker=threads) as base_cluster, \
            Client(base_cluster) as base:
        baseline = runner(base, chunk)
        baseline()  # warm the workers up
        first = baseline()
        from dagflow.monitor.analysis import analyze

        rec = _fires(analyze(first["run_dir"]), kind)
        if rec is None:
            return {"kind": kind, "fired": False, "items": len(inputs),
                    "note": "the baseline run did not call for it"}
        target = int(rec.evidence["target"])
        if kind == "more-threads":
            applied_cluster = start_local_cluster(n_workers=2, threads_per_worker=target)
            applied_client = Client(applied_cluster)
            applied = runner(applied_client, chunk)
            baseline_label, applied_label = (f"{threads} thread per worker",
                                             f"{target} threads per worker")
        else:
            applied_cluster = applied_client = None
            applied = runner(base, target)
            baseline_label, applied_label = f"chunk size {chunk}", f"chunk size {target}"
        try:
            applied()  # warm
            load_before = load_average()
            results = interleaved({"baseline": baseline, "applied": applied}, repeat,
                                  log=print)
            load_after = load_average()
            again = _fires(analyze(results["applied"].extra["run_dir"]), kind)
        finally:
            if applied_client is not None:
                applied_client.close()
                applied_cluster.close()
    b, a = results["baseline"], results["applied"]
    change = a.median / b.median - 1.0
    return {
        "kind": kind, "fired": True, "items": len(inputs), "reason": rec.reason,
        "setting": rec.setting, "baseline": baseline_label, "applied": applied_label,
        "baseline_s": round(b.median, 3), "applied_s": round(a.median, 3),
        "baseline_runs": [round(x, 3) for x in b.seconds],
        "applied_runs": [round(x, 3) for x in a.seconds],
        "change": round(change, 4), "still_fires_after": again is not None,
        "load": [round(load_before, 2), round(load_after, 2)], "repeat": repeat,
    }


_WORKLOADS = {
    "larger-chunks": "{items} tiny JPEGs loaded and saved as PNG",
    "smaller-chunks": "{items} 2048x1536 photos blurred (sigma 6) and saved",
    "more-threads": "{items} tiny JPEGs through an op waiting 25 ms per item",
}


def _write_effects(results: list[dict[str, Any]]) -> Path:
    from dagflow.io.atomic import atomic_write
    from dagflow.monitor.advice import EFFECTS_PATH

    info = machine()
    where = f"{info.get('cpu')}, {info.get('cores')} cores"
    try:  # the kinds not measured this time keep their effect
        effects = json.loads(EFFECTS_PATH.read_text(encoding="utf-8")).get("effects") or {}
    except (OSError, ValueError):
        effects = {}
    for r in results:
        if not r.get("fired"):  # an effect measured under other evidence no longer holds
            effects.pop(r["kind"], None)
            continue
        effects[r["kind"]] = {
            "change": r["change"], "baseline_s": r["baseline_s"], "applied_s": r["applied_s"],
            "baseline": r["baseline"], "applied": r["applied"],
            "workload": _WORKLOADS[r["kind"]].format(items=r["items"]) + " on 2 worker "
                        "processes",
            "how": f"python -m benchmarks advice, {time.strftime('%Y-%m-%d')}: medians of "
                   f"{r['repeat']} runs of each, alternated, on warm clusters; {where}; load "
                   f"average {r['load'][0]}-{r['load'][1]}",
        }
    body = {"note": "Written by `python -m benchmarks advice`: the effect of each "
                    "recommendation kind where the benchmark applied it (change: the "
                    "recommended setting's median run time over the baseline's, less 1).",
            "effects": effects}
    return atomic_write(EFFECTS_PATH, (json.dumps(body, indent=1) + "\n").encode())


def run(images: int = 400, repeat: int = 3, quick: bool = False,
        kinds: tuple[str, ...] = KINDS) -> dict[str, Any]:
    """Measure each kind; write the effects unless ``quick``."""
    del images  # each kind sizes its own workload
    repeat = max(3, repeat) if not quick else repeat
    results = []
    for kind in kinds:
        with tempfile.TemporaryDirectory(prefix=f"dagflow-advice-{kind}-") as tmp:
            t0 = time.perf_counter()
            results.append(measure(kind, repeat, quick, Path(tmp)))
            print(f"  {kind}: {time.perf_counter() - t0:.0f} s", flush=True)
    summarize(results)
    payload = {"results": results}
    if not quick:
        payload["effects_file"] = os.fspath(_write_effects(results))
        print(f"\nmeasured effects written to {payload['effects_file']}", flush=True)
    save_results("advice", payload)
    return payload


def summarize(results: list[dict[str, Any]]) -> None:
    """Print the table of ``results`` (as :func:`run` measured them)."""
    rows = []
    for r in results:
        if not r["fired"]:
            rows.append([r["kind"], r["note"], "", "", "", "", ""])
            continue
        rows.append([r["kind"], f"{r['baseline']} -> {r['applied']}",
                     f"{r['baseline_s']:.2f}", f"{r['applied_s']:.2f}",
                     f"{100 * r['change']:+.0f}%", "yes" if r["still_fires_after"] else "no",
                     f"{statistics.median(r['load']):.1f}"])
    rows.append(["gpu", "not measured: needs a CUDA GPU (the report does not recommend it "
                 "until it is measured)", "", "", "", "", ""])
    print_table("Each recommendation applied where it fires (medians, alternated runs)",
                ["kind", "baseline -> recommended", "baseline s", "recommended s", "change",
                 "fires again after", "load"], rows)
    slower = [r["kind"] for r in results if r.get("fired") and r["change"] >= 0]
    if slower:
        print(f"\nDEFECT: {', '.join(slower)} made the runs no faster", flush=True)
