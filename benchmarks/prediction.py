"""Benchmark: predicted against actual seconds, per node and workload.

Three workloads of different shapes, each run twice on one warm cluster (2 worker
processes, 1 thread each) into new outputs, with a history of their own: the first run
fills the history, the second is planned from it (:func:`dagflow.runtime.plan.plan`,
what ``dagflow plan --json`` prints, then the run, whose summary keeps the same
prediction) and measured.

* ``thumbnails``: 2048x1536 photo-like JPEGs, auto-orient, 512 px, Gaussian, JPEG;
* ``filters16``: 1024x768 16-bit RGB TIFFs through Gaussian, unsharp mask, median and
  normalise, saved as 16-bit TIFF (filter-heavy);
* ``mixed``: JPEGs of mixed sizes (long side 600 to 2600 px): every image to a 512 px
  preview, and only those at least 1600 px wide through a detail branch (a condition)
  at full size.

Printed per node and in total (the nodes' op seconds; the processing wall time, first
chunk submitted to last finished; the run's whole wall time): predicted, actual and the
error (actual / predicted - 1). The targets: the total within 20 %, each node within
30 %. A third run, the same as the second, gives the noise floor: how much two identical
runs differ on this machine at this time, beside which the error is to be read. On a
machine other work keeps busy, wall seconds follow that work as much as the model; the
same cost models fitted on the items' CPU seconds (which other processes do not
inflate) and multiplied by the same per-node work are printed too: their error is the
model's own (the unit chosen, the skipped items, the fixed cost per item).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import DATA, load_average, print_table, save_results

__all__ = ["WORKLOADS", "run"]

WORKLOADS = ("thumbnails", "filters16", "mixed")


def _tiff16(n: int) -> list[Path]:
    """``n`` 1024x768 16-bit RGB TIFFs (deterministic)."""
    import numpy as np
    import tifffile

    from dagflow.testing import photo_like

    directory = DATA / "tiff16-1024x768"
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        path = directory / f"img_{i:05d}.tif"
        if not path.exists():
            pixels = photo_like(768, 1024, seed=1000 + i).astype(np.uint16) * 257
            tmp = path.with_suffix(".tmp")
            tifffile.imwrite(tmp, pixels, photometric="rgb")
            os.replace(tmp, path)
        out.append(path)
    return out


def _mixed(n: int) -> list[Path]:
    """``n`` photo-like JPEGs with long sides from 600 to 2600 px (deterministic)."""
    import numpy as np

    from dagflow.testing import jpeg_with_orientation, photo_like

    directory = DATA / "mixed-600-2600"
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20)
    sides = rng.integers(600, 2601, max(n, 1))
    out = []
    for i in range(n):
        path = directory / f"img_{i:05d}.jpg"
        if not path.exists():
            w = int(sides[i])
            h = int(w * 3 / 4)
            data = jpeg_with_orientation(photo_like(h, w, seed=2000 + i), 1, quality=90)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        out.append(path)
    return out


def workload(name: str, images: int) -> tuple[Any, list[Path]]:
    """The workflow and the input files of a workload."""
    from dagflow import Node, Workflow

    if name == "thumbnails":
        from benchmarks.data import corpus_files, photo_corpus
        from benchmarks.kernels import thumbnail_workflow

        return thumbnail_workflow(), corpus_files(photo_corpus(images), images)
    if name == "filters16":
        wf = Workflow("filters16", [
            Node("load", "load"),
            Node("blur", "gaussian", {"sigma": 2.0}, after="load"),
            Node("sharpen", "unsharp", {"sigma": 1.5, "amount": 1.0}, after="blur"),
            Node("denoise", "median", {"size": 3}, after="sharpen"),
            Node("stretch", "normalize", after="denoise"),
            Node("save", "save", {"format": "tiff"}, after="stretch"),
        ])
        return wf, _tiff16(max(8, images // 3))
    if name == "mixed":
        wf = Workflow("mixed", [
            Node("load", "load"),
            Node("preview", "resize", {"long_side": 512}, after="load"),
            Node("save_preview", "save", {"format": "jpeg", "quality": 85,
                                          "subdir": "preview"}, after="preview"),
            Node("detail", "unsharp", {"sigma": 2.0, "amount": 0.8}, after="load",
                 when="width >= 1600"),
            Node("save_detail", "save", {"format": "jpeg", "quality": 90,
                                         "subdir": "detail"}, after="detail"),
        ])
        return wf, _mixed(images)
    raise ValueError(f"unknown workload {name!r}")


def wf_kind(wf: Any, node: str) -> str | None:
    """A node's op kind (``source``, ``transform``...)."""
    from dagflow.ops.registry import get_op

    return get_op(next(n.op for n in wf.nodes if n.id == node)).kind


def _error(predicted: float | None, actual: float | None) -> float | None:
    if not predicted or actual is None:
        return None
    return actual / predicted - 1.0


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.0f}%"


def measure(name: str, images: int, client: Any, root: Path) -> dict[str, Any]:
    """Two runs of a workload on ``client``; the second's prediction against its actual."""
    import dask

    import dagflow
    from dagflow.runtime.plan import plan

    wf, files = workload(name, images)
    inputs = [os.fspath(p) for p in files]
    with dask.config.set({"dagflow.monitor.history-dir": os.fspath(root / "warm-history"),
                          "dagflow.monitor.report": False}):
        dagflow.run(wf, inputs[:4], root / "warm", client=client, progress=False)
    with dask.config.set({"dagflow.monitor.history-dir": os.fspath(root / "history"),
                          "dagflow.monitor.report": False}):
        load_before = load_average()
        first = dagflow.run(wf, inputs, root / "first", client=client, progress=False)
        planned = plan(wf, inputs, root / "second", client=client)
        second = dagflow.run(wf, inputs, root / "second", client=client, progress=False)
        analysis = second.analysis()
    # the same run again (not into the history): how much identical runs differ
    with dask.config.set({"dagflow.monitor.history-dir": os.fspath(root / "other-history"),
                          "dagflow.monitor.report": False}):
        third = dagflow.run(wf, inputs, root / "third", client=client, progress=False)
    assert second.estimate is not None and second.estimate["nodes"] == {
        n: p.seconds for n, p in planned.nodes.items()}, "the run's prediction is the plan's"
    from dagflow.monitor import history
    from dagflow.monitor.prediction import history_fits

    # the same models fitted on CPU seconds, over the same work
    earlier = history.load(root / "history", exclude_run=second.run_id)
    spec = {n: (p.op, wf_kind(wf, n)) for n, p in planned.nodes.items()}
    cpu_fits = history_fits(earlier, spec, measure="cpu_s")
    records = second.records()
    cpu_actual = records[records["status"].isin(("ok", "failed"))].groupby(
        "node_id")["cpu_s"].sum().to_dict()
    nodes = []
    for node, p in planned.prediction.get("nodes", {}).items():
        cpu_predicted = None
        if node in cpu_fits:
            model = cpu_fits[node]["fit"]
            units = p["items"] if model.unit == "item" else p["work"][model.unit]
            cpu_predicted = model.total(p["items"], units) + model.warmup_s * min(
                planned.workers, planned.chunks)
        actual = second.node_seconds.get(node, 0.0)
        again = third.node_seconds.get(node, 0.0)
        cpu = float(cpu_actual.get(node, 0.0))
        nodes.append({"node": node, "unit": p["unit"], "items": p["items"],
                      "skipped": p["skipped"], "predicted_s": p["seconds"],
                      "actual_s": round(actual, 3), "error": _error(p["seconds"], actual),
                      "repeat_s": round(again, 3), "noise": _error(actual, again),
                      "cpu_predicted_s": cpu_predicted, "cpu_actual_s": round(cpu, 3),
                      "cpu_error": _error(cpu_predicted, cpu)})
    total = analysis.prediction_total
    cpu_pred = [n["cpu_predicted_s"] for n in nodes if n["cpu_predicted_s"] is not None]
    cpu_act = sum(n["cpu_actual_s"] for n in nodes if n["cpu_predicted_s"] is not None)
    return {
        "cpu": {"predicted_s": sum(cpu_pred) if cpu_pred else None, "actual_s": cpu_act,
                "error": _error(sum(cpu_pred), cpu_act) if cpu_pred else None},
        "workload": name, "items": len(inputs), "first_s": first.duration_s,
        "nodes": nodes,
        "compute": {"predicted_s": planned.compute_s,
                    "actual_s": round(sum(second.node_seconds.values()), 3),
                    "error": _error(planned.compute_s, sum(second.node_seconds.values())),
                    "repeat_s": round(sum(third.node_seconds.values()), 3),
                    "noise": _error(sum(second.node_seconds.values()),
                                    sum(third.node_seconds.values()))},
        "processing": {"predicted_s": planned.prediction.get("processing_s"),
                       "actual_s": total.get("actual_processing_s"),
                       "error": _error(planned.prediction.get("processing_s"),
                                       total.get("actual_processing_s"))},
        "duration": {"predicted_s": planned.duration_s, "actual_s": second.estimate[
            "actual"]["duration_s"], "error": _error(planned.duration_s, second.estimate[
                "actual"]["duration_s"]), "repeat_s": third.estimate["actual"]["duration_s"],
            "noise": _error(second.estimate["actual"]["duration_s"],
                            third.estimate["actual"]["duration_s"])},
        "load": [load_before, load_average()],
    }


def run(images: int = 400, repeat: int = 1, quick: bool = False,
        workloads: tuple[str, ...] = WORKLOADS) -> dict[str, Any]:
    """Measure every workload ``repeat`` times (each time with a fresh history)."""
    from distributed import Client

    from dagflow.runtime.cluster import start_local_cluster

    images = min(images, 60) if quick else min(images, 160)
    results = []
    with tempfile.TemporaryDirectory(prefix="dagflow-prediction-") as tmp, \
            start_local_cluster(n_workers=2, threads_per_worker=1) as cluster, \
            Client(cluster) as client:
        for r in range(repeat):
            for name in workloads:
                t0 = time.perf_counter()
                out = measure(name, images, client, Path(tmp) / f"{name}-{r}")
                out["repeat"] = r
                results.append(out)
                print(f"  {name} (repetition {r + 1}/{repeat}): {time.perf_counter() - t0:.0f} s",
                      flush=True)
    payload = summarize(results, images, repeat)
    save_results("prediction", payload)
    return payload


def summarize(results: list[dict[str, Any]], images: int, repeat: int) -> dict[str, Any]:
    """Print the tables of ``results`` (as :func:`run` measured them); the payload to save."""
    rows = []
    for res in results:
        for n in res["nodes"]:
            rows.append([res["workload"], n["node"], n["unit"], n["items"], n["skipped"],
                         f"{n['predicted_s']:.3f}", f"{n['actual_s']:.3f}", _pct(n["error"]),
                         f"{n['repeat_s']:.3f}", _pct(n["noise"]),
                         "n/a" if n["cpu_predicted_s"] is None else
                         f"{n['cpu_predicted_s']:.3f}", f"{n['cpu_actual_s']:.3f}",
                         _pct(n["cpu_error"])])
        for key, label in (("compute", "TOTAL op time"), ("processing", "processing wall"),
                           ("duration", "whole run")):
            t = res[key]
            rows.append([res["workload"], f"**{label}**", "", "", "",
                         "n/a" if t["predicted_s"] is None else f"{t['predicted_s']:.3f}",
                         "n/a" if t["actual_s"] is None else f"{t['actual_s']:.3f}",
                         f"**{_pct(t['error'])}**",
                         "" if t.get("repeat_s") is None else f"{t['repeat_s']:.3f}",
                         _pct(t.get("noise")) if "noise" in t else "",
                         *((f"{res['cpu']['predicted_s']:.3f}", f"{res['cpu']['actual_s']:.3f}",
                            f"**{_pct(res['cpu']['error'])}**")
                           if key == "compute" and res["cpu"]["predicted_s"] is not None
                           else ("", "", ""))])
    print_table("Predicted against actual: the second run of each workload, planned from "
                "the first (2 workers x 1 thread)",
                ["workload", "node", "unit", "items", "skipped (condition)", "predicted s",
                 "actual s", "error", "same run again s", "noise", "CPU predicted s",
                 "CPU actual s", "CPU error"], rows)
    worst_node = max((abs(n["error"]) for r in results for n in r["nodes"]
                      if n["error"] is not None), default=None)
    worst_total = max((abs(r["compute"]["error"]) for r in results
                       if r["compute"]["error"] is not None), default=None)
    worst_noise = max((abs(r["compute"]["noise"]) for r in results
                       if r["compute"]["noise"] is not None), default=None)
    worst_cpu_node = max((abs(n["cpu_error"]) for r in results for n in r["nodes"]
                          if n["cpu_error"] is not None), default=None)
    worst_cpu_total = max((abs(r["cpu"]["error"]) for r in results
                           if r["cpu"]["error"] is not None), default=None)
    print(f"\nworst node error {_pct(worst_node)} (target 30%), worst total error "
          f"{_pct(worst_total)} (target 20%); identical runs differed by up to "
          f"{_pct(worst_noise)} in total; on CPU seconds, worst node {_pct(worst_cpu_node)}, "
          f"worst total {_pct(worst_cpu_total)}; load average during the runs "
          f"{min(x for r in results for x in r['load']):.1f}-"
          f"{max(x for r in results for x in r['load']):.1f}", flush=True)
    payload = {"images": images, "repeat": repeat, "results": results,
               "worst_node_error": worst_node, "worst_total_error": worst_total,
               "worst_total_noise": worst_noise, "worst_cpu_node_error": worst_cpu_node,
               "worst_cpu_total_error": worst_cpu_total}
    return payload
