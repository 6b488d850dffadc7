"""A run's analysis as data: :func:`analyze` reads a run directory into a :class:`RunAnalysis`.

The report (:mod:`dagflow.monitor.report`), ``dagflow report --json`` and notebooks all
use this object. Item outcomes and durations come from the records (the source of
truth), whose parts also hold the metrics' columns (bytes, megapixels; see
:mod:`dagflow.monitor.store`); the scheduler's files add resource samples per worker,
the queue depth and Dask's CPU / non-CPU seconds per node. Figures come from
:mod:`dagflow.monitor.metrics`. No Bokeh here.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dagflow.monitor import metrics as M
from dagflow.monitor.store import metrics_dir, read_json, read_metrics, read_table

__all__ = ["RunAnalysis", "analyze", "find_run_dir", "load_plan", "load_rows"]

logger = logging.getLogger(__name__)


def find_run_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` if it is a run directory, else the latest run under an output directory
    (or under a state directory)."""
    from dagflow import config

    path = Path(path)
    if (path / "records").is_dir() or (path / "metrics").is_dir():
        return path
    for runs in (path / str(config.get("state-dir")) / "runs", path / "runs"):
        if runs.is_dir():
            found = sorted(p for p in runs.iterdir() if p.is_dir())
            if found:
                return found[-1]
    return path


def load_rows(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per item and node: the records, with the metrics' extra columns."""
    from dagflow.monitor.store import PART_SCHEMA

    df = read_metrics(run_dir, PART_SCHEMA).to_pandas()
    if "megapixels" not in df:
        df["megapixels"] = np.nan
    if {"width", "height"} <= set(df.columns):
        wh = df["width"].astype(float) * df["height"].astype(float) / 1e6
        df["megapixels"] = df["megapixels"].astype(float).fillna(wh)
    for col in ("duration_s", "started"):
        if col in df:
            df[col] = df[col].astype(float).fillna(0.0)
    return df.reset_index(drop=True)


def load_plan(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The run's plan: ``metrics/run.json``, else rebuilt from ``workflow.yaml``."""
    plan = read_json(metrics_dir(run_dir) / "run.json")
    if plan:
        return plan
    plan = {"run_id": Path(run_dir).name, "nodes": {}}
    wf_path = Path(run_dir, "workflow.yaml")
    if wf_path.exists():
        try:
            import yaml

            from dagflow.ops.registry import get_op

            spec = yaml.safe_load(wf_path.read_text(encoding="utf-8")) or {}
            plan["workflow"] = spec.get("name")
            for node in spec.get("nodes", []):
                after = node.get("after") or []
                try:
                    kind = get_op(node["op"]).kind
                except Exception:
                    kind = None
                plan["nodes"][node["id"]] = {"op": node.get("op"), "kind": kind,
                                             "parents": [after] if isinstance(after, str)
                                             else list(after),
                                             "device": node.get("device", "auto")}
        except Exception as exc:
            logger.warning("could not read %s: %s", wf_path, exc)
    return plan


def _records(df: pd.DataFrame, limit: int | None = None) -> list[dict[str, Any]]:
    if df is None or len(df) == 0:
        return []
    if limit is not None:
        df = df.head(limit)
    out = df.replace({np.nan: None}).to_dict(orient="records")
    return [{k: _clean(v) for k, v in row.items()} for row in out]


def _clean(v: Any) -> Any:
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        v = float(v)
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, np.ndarray):
        return [_clean(x) for x in v.tolist()]
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    return v


@dataclass
class RunAnalysis:
    """Everything the report shows, as data.

    Attributes
    ----------
    run
        Run-level facts: ``run_id``, ``workflow``, ``items``, ``items_failed``,
        ``wall_s``, ``throughput`` (items per second), ``chunk_size``, ``threads``...
    nodes
        Per node statistics (:func:`dagflow.monitor.metrics.node_stats`).
    anomalies
        Items far outside their node's distribution.
    trend, trend_findings
        Median duration per node over time, and warm-up / slow-down per node.
    throughput
        Items finished per second over time.
    critical_path, critical_path_s, bottleneck
        The heaviest path through the workflow by node seconds, its length, and the
        bottleneck node with its share and why.
    resources
        Samples per worker over time: ``cpu``, ``memory``, ``memory_limit``,
        ``gpu_utilization``, ``gpu_memory``.
    queue
        Queue depth over time (when the scheduler plugin ran).
    waiting
        Where the run waited (:func:`dagflow.monitor.metrics.waiting`).
    errors
        Failures and retries by node and error class.
    recommendations
        :class:`~dagflow.monitor.metrics.Recommendation` list.
    prediction
        Per node predicted (from the history) and actual seconds, when a history exists.
    rows
        The joined rows everything was computed from.
    """

    run: dict[str, Any]
    nodes: pd.DataFrame
    anomalies: pd.DataFrame
    trend: pd.DataFrame
    trend_findings: dict[str, dict[str, Any]]
    throughput: pd.DataFrame
    critical_path: list[str]
    critical_path_s: float
    bottleneck: dict[str, Any] | None
    resources: pd.DataFrame
    queue: pd.DataFrame
    waiting: dict[str, Any]
    errors: pd.DataFrame
    recommendations: list[M.Recommendation]
    prediction: pd.DataFrame
    plan: dict[str, Any] = field(default_factory=dict)
    rows: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (what ``dagflow report --json`` prints)."""
        nodes = self.nodes.reset_index()
        return _clean({
            "run": self.run,
            "nodes": _records(nodes),
            "anomalies": _records(self.anomalies),
            "trend": _records(self.trend),
            "trend_findings": self.trend_findings,
            "throughput": _records(self.throughput),
            "critical_path": self.critical_path,
            "critical_path_s": self.critical_path_s,
            "bottleneck": self.bottleneck,
            "resources": _records(self.resources, limit=20_000),
            "queue": _records(self.queue, limit=20_000),
            "waiting": self.waiting,
            "errors": _records(self.errors),
            "recommendations": [r.to_dict() for r in self.recommendations],
            "prediction": _records(self.prediction),
            "plan": self.plan,
        })


def _resources(run_dir: str | os.PathLike[str], df: pd.DataFrame) -> pd.DataFrame:
    columns = ["worker", "time", "cpu", "memory", "memory_limit", "gpu_utilization",
               "gpu_memory", "nthreads"]
    t = read_table(metrics_dir(run_dir) / "workers.parquet")
    if t is not None and t.num_rows:
        res = t.to_pandas()
        return res.reindex(columns=columns)
    if "sample_time" in df and df["sample_time"].notna().any():
        who = "sample_worker" if "sample_worker" in df else "worker"
        s = df.dropna(subset=["sample_time"]).drop_duplicates([who, "sample_time"])
        return pd.DataFrame({"worker": s[who], "time": s["sample_time"],
                             "cpu": s["worker_cpu"], "memory": s["worker_memory"],
                             "memory_limit": np.nan, "gpu_utilization": s["worker_gpu"],
                             "gpu_memory": np.nan, "nthreads": np.nan},
                            columns=columns).sort_values("time").reset_index(drop=True)
    return pd.DataFrame(columns=columns)


def _cpu_split(ran: pd.DataFrame, sched: dict[str, Any],
               nodes_plan: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per node, seconds on and off the CPU while its op ran.

    From the rows' ``cpu_s`` where the records carry it; otherwise from Dask's
    per-task ``thread-cpu`` / ``thread-noncpu`` seconds, only for nodes without a
    per-item timeout (with one, the op runs in another thread than the task's, so the
    task's thread only waits and Dask's split says nothing about the op).
    """
    out: dict[str, dict[str, float]] = {}
    if "cpu_s" in ran and ran["cpu_s"].notna().any():
        measured = ran.dropna(subset=["cpu_s"])
        for node, sub in measured.groupby("node_id"):
            cpu = float(sub["cpu_s"].sum())
            total = float(sub["duration_s"].sum())
            out[str(node)] = {"thread-cpu": cpu, "thread-noncpu": max(0.0, total - cpu)}
    dask_split: dict[str, dict[str, float]] = {}
    for row in sched.get("fine_metrics") or []:
        node = str(row["node_id"])
        if node not in out and nodes_plan.get(node, {}).get("timeout", "?") is None:
            dask_split.setdefault(node, {})[row["activity"]] = float(row["seconds"])
    out.update(dask_split)
    return out


def _gpu_capable(ops: set[str]) -> dict[str, bool]:
    out = {}
    for op in ops:
        try:
            from dagflow.ops.dispatch import runs_on_gpu
            from dagflow.ops.registry import get_op

            out[op] = runs_on_gpu(get_op(op))
        except Exception:
            out[op] = False
    return out


def analyze(run_dir: str | os.PathLike[str], *, duration_s: float | None = None,
            history_dir: str | os.PathLike[str] | None = None) -> RunAnalysis:
    """Analyse a run directory.

    Parameters
    ----------
    run_dir
        The run directory (``<output>/_dagflow/runs/<run id>``).
    duration_s
        The run's wall time, when known (else from ``summary.json`` or the records).
    history_dir
        Where earlier runs' figures are (default: see
        :func:`dagflow.monitor.history.default_history_dir`).
    """
    from dagflow.monitor import history

    run_dir = Path(run_dir)
    plan = load_plan(run_dir)
    df = load_rows(run_dir)
    nodes_plan: dict[str, dict[str, Any]] = plan.get("nodes") or {}
    order = list(nodes_plan)
    summary = read_json(run_dir / "summary.json") or {}
    sched = read_json(metrics_dir(run_dir) / "scheduler.json") or {}

    if df.empty:
        df = pd.DataFrame({c: pd.Series(dtype=float if c in ("duration_s", "started")
                                        else object)
                           for c in ("item_id", "node_id", "status", "duration_s",
                                     "started", "worker", "error_class", "attempts", "rel")})
    stats = M.node_stats(df, order=order)
    ran = M.ran(df)
    started = float(df.loc[df["started"] > 0, "started"].min()) if (df["started"] > 0).any() \
        else None
    ended = float((ran["started"] + ran["duration_s"]).max()) if len(ran) else None
    sched_run = sched.get("run") or {}
    if duration_s:
        wall = float(duration_s)
    elif plan.get("started") and sched_run.get("finished"):
        # from the submission of the first chunk to the end of the last (summary.json's
        # duration also counts starting the cluster and writing this report)
        wall = float(sched_run["finished"]) - float(plan["started"])
    elif started is not None and ended is not None:
        wall = ended - started
    else:
        wall = float(summary.get("duration_s") or 0.0)
    items = int(df["item_id"].nunique()) if len(df) else 0
    failed_items = int(df.loc[df["status"].isin(("failed", "upstream_failed")), "item_id"]
                       .nunique()) if len(df) else 0

    resources = _resources(run_dir, df)
    threads = None
    worker_cpu: dict[str, float] = {}
    memory_peak = None
    if len(resources):
        res = resources.copy()
        nthreads = res.groupby("worker")["nthreads"].max()
        if nthreads.notna().any():
            threads = int(nthreads.fillna(0).sum()) or None
        for w, sub in res.groupby("worker"):
            cpu = sub["cpu"].dropna()
            if len(cpu):
                per = float(nthreads.get(w) or 1) if nthreads.notna().any() else 1.0
                worker_cpu[str(w)] = float(cpu.mean()) / max(1.0, per)
        frac = res["memory"].astype(float) / res["memory_limit"].astype(float)
        frac = frac.replace([np.inf, -np.inf], np.nan).dropna()
        memory_peak = float(frac.max()) if len(frac) else None
    fine = _cpu_split(ran, sched, nodes_plan)
    busy = float(ran["duration_s"].sum())
    wait = M.waiting(wall_s=float(wall or 0.0), busy_s=busy, threads=threads, fine=fine,
                     worker_cpu=worker_cpu)

    parents = {n: list(v.get("parents") or []) for n, v in nodes_plan.items()}
    for n in stats.index:
        parents.setdefault(str(n), [])
    weights = stats["total_s"].to_dict()
    path, path_s = M.critical_path(parents, weights)
    bottleneck = None
    if len(stats) and busy > 0:
        on_path = stats.loc[[n for n in path if n in stats.index]]
        pool = on_path if len(on_path) else stats
        top = str(pool["share"].idxmax())
        why = f"{top!r} takes {100 * stats.loc[top, 'share']:.0f}% of all compute time"
        if top in wait["io_bound"]:
            why += f" and waits off the CPU {100 * wait['io_bound'][top]:.0f}% of it (I/O)"
        elif top in wait["cpu_fraction"]:
            why += f" and is CPU-bound ({100 * wait['cpu_fraction'][top]:.0f}% on the CPU)"
        bottleneck = {"node": top, "share": float(stats.loc[top, "share"]),
                      "op": nodes_plan.get(top, {}).get("op"), "why": why}

    trend_df, findings = M.trend(df)
    errors = M.errors_table(df)
    chunk_size = None
    if "chunk" in df and df["chunk"].notna().any():
        chunk_size = float(df.dropna(subset=["chunk"]).groupby("chunk")["item_id"].nunique()
                           .mean())
    elif summary.get("chunk_size"):
        chunk_size = float(summary["chunk_size"])
    ops = {v.get("op") for v in nodes_plan.values() if v.get("op")}
    from dagflow import config

    recs = M.recommendations(
        stats, nodes=nodes_plan, chunk_size=chunk_size,
        tasks_per_chunk=max(1, len(nodes_plan) or len(stats)) + 1, wait=wait,
        memory_peak_fraction=memory_peak, trend_findings=findings, errors=errors,
        gpu_capable=_gpu_capable(ops), items=items,
        max_chunk_size=int(config.get("max-chunk-size", 64)))

    prediction = pd.DataFrame(columns=["node_id", "predicted_s", "actual_s", "ratio",
                                       "basis", "runs"])
    try:
        hdir = Path(history_dir) if history_dir is not None else \
            history.default_history_dir(run_dir)
        if hdir.is_dir():
            hist = history.load(hdir, workflow=plan.get("workflow"),
                                exclude_run=str(plan.get("run_id") or run_dir.name),
                                before=started)
            node_ops = {str(n): nodes_plan.get(str(n), {}).get("op") or "" for n in stats.index}
            est = history.estimate(
                hist, node_ops, items={str(n): int(stats.loc[n, "count"]) for n in stats.index},
                megapixels={str(n): float(stats.loc[n, "megapixels"]) for n in stats.index})
            prediction = pd.DataFrame([
                {"node_id": n, "predicted_s": e["seconds"],
                 "actual_s": float(stats.loc[n, "total_s"]),
                 "ratio": float(stats.loc[n, "total_s"]) / e["seconds"] if e["seconds"] else None,
                 "basis": e["basis"], "runs": e["runs"]}
                for n, e in est.items()], columns=prediction.columns)
    except Exception as exc:
        logger.warning("could not compare with the history: %s", exc)

    workers = sorted({str(w) for w in df["worker"].dropna().unique()}) if "worker" in df else []
    run = {
        "run_id": plan.get("run_id") or run_dir.name, "workflow": plan.get("workflow"),
        "run_dir": str(run_dir), "items": items, "items_failed": failed_items,
        "records": len(df), "started": started, "wall_s": float(wall or 0.0),
        "busy_s": busy,
        "throughput": (items / wall) if wall else None,
        "chunk_size": chunk_size, "chunks": int(df["chunk"].nunique()) if "chunk" in df
        and df["chunk"].notna().any() else summary.get("chunks"),
        "threads": threads, "workers": workers, "memory_peak_fraction": memory_peak,
        "task_counts": sched.get("tasks"), "breakers": sched.get("breakers"),
    }
    queue = read_table(metrics_dir(run_dir) / "queue.parquet")
    return RunAnalysis(
        run=run, nodes=stats, anomalies=M.anomalies(df), trend=trend_df,
        trend_findings=findings, throughput=M.throughput_series(df), critical_path=path,
        critical_path_s=path_s, bottleneck=bottleneck, resources=resources,
        queue=queue.to_pandas() if queue is not None else pd.DataFrame(
            columns=["time", "queued", "processing", "in_memory", "chunks_in_flight"]),
        waiting=wait, errors=errors, recommendations=recs, prediction=prediction,
        plan=plan, rows=df)
