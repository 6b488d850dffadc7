"""A run's analysis as data: :func:`analyze` reads a run directory into a :class:`RunAnalysis`.

The report (:mod:`dagflow.monitor.report`), ``dagflow report --json`` and notebooks all
use this object. Item outcomes and durations come from the records (the source of
truth), whose parts also hold the metrics' columns (bytes, megapixels, the workers'
counters; see :mod:`dagflow.monitor.store`); the scheduler's files add resource samples
per worker and the queue depth; the run's plan (``metrics/run.json``) holds the
prediction it was made with; the history holds earlier runs' items. Figures come from
:mod:`dagflow.monitor.metrics` (statistics, anomalies), :mod:`~dagflow.monitor.prediction`
(units and cost models), :mod:`~dagflow.monitor.significance` (trend, comparison with
earlier runs), :mod:`~dagflow.monitor.evidence` (off-CPU time) and
:mod:`~dagflow.monitor.advice`. No Bokeh here.
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
from dagflow.monitor.advice import Finding, Recommendation
from dagflow.monitor.store import metrics_dir, read_json, read_metrics, read_table

__all__ = ["RunAnalysis", "analyze", "find_run_dir", "load_plan", "load_rows"]

logger = logging.getLogger(__name__)


def find_run_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` if it is a run directory, else the latest run under an output directory
    (or under a state directory)."""
    from dagflow import config
    from dagflow.recovery.events import latest_run_dir

    path = Path(path)
    if (path / "records").is_dir() or (path / "metrics").is_dir():
        return path
    for runs in (path / str(config.get("state-dir")) / "runs", path / "runs"):
        latest = latest_run_dir(runs)
        if latest is not None:
            return latest
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
        ``wall_s`` (processing: first chunk submitted to last finished), ``duration_s``
        (the whole run, when known), ``throughput`` (items per second), ``chunk_size``,
        ``threads``...
    nodes
        Per node statistics (:func:`dagflow.monitor.metrics.node_stats`) with the cost
        model the items were judged by (``unit``, ``fixed_s``, ``per_unit_s``).
    anomalies
        Items far slower than their node's other items for the work they brought.
    trend, trend_findings
        Per node, the normalised time of its chunks over the run, and the trend test's
        verdict (:func:`dagflow.monitor.significance.trend`).
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
        Where the run's time went: ``idle_fraction`` of the threads, ``machine`` (the
        workers' counters: :class:`~dagflow.monitor.evidence.Machine`) and, per node,
        its time on, waiting for and blocked off the CPU with its class
        (:func:`dagflow.monitor.evidence.classify`).
    errors
        Failures and retries by node and error class.
    recommendations, findings
        :class:`~dagflow.monitor.advice.Recommendation` and
        :class:`~dagflow.monitor.advice.Finding` lists.
    prediction, prediction_total
        Per node, the seconds the run's plan predicted (the same numbers ``dagflow
        plan`` printed and the summary keeps) and what it took; the same in total.
    comparison
        Per node, this run against the earlier runs of the workflow
        (:func:`dagflow.monitor.significance.compare`).
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
    recommendations: list[Recommendation]
    prediction: pd.DataFrame
    findings: list[Finding] = field(default_factory=list)
    prediction_total: dict[str, Any] = field(default_factory=dict)
    comparison: pd.DataFrame = field(default_factory=pd.DataFrame)
    plan: dict[str, Any] = field(default_factory=dict)
    rows: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)
    #: what the advice was judged on (:class:`~dagflow.monitor.advice.RunFacts`)
    facts: Any = field(default=None, repr=False)

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
            "findings": [f.to_dict() for f in self.findings],
            "prediction": _records(self.prediction),
            "prediction_total": self.prediction_total,
            "comparison": _records(self.comparison),
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


_PREDICTION_COLUMNS = ["node_id", "predicted_s", "actual_s", "error", "unit", "fixed_s",
                       "per_unit_s", "units", "items", "actual_items", "skipped", "runs",
                       "match"]


def _prediction(plan: dict[str, Any], summary: dict[str, Any], stats: pd.DataFrame, *,
                wall_s: float, duration_s: float | None
                ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The plan's prediction beside what happened: per node and in total.

    The prediction is the one the run was planned with (``metrics/run.json``, else the
    per-node seconds of the summary's estimate), never made again here: the report shows
    the numbers ``dagflow plan`` printed and the summary keeps.
    """
    pred = plan.get("prediction") or {}
    estimate = summary.get("estimate") or {}
    if not pred and any(v is not None for v in (estimate.get("nodes") or {}).values()):
        # a run without monitoring's plan file: its summary keeps the same numbers
        pred = {"nodes": {n: {"seconds": v} for n, v in estimate["nodes"].items()
                          if v is not None},
                **{k: estimate.get(k) for k in ("compute_s", "duration_s", "history_runs")}}
    rows = []
    for node, e in (pred.get("nodes") or {}).items():
        actual = float(stats.loc[node, "total_s"]) if node in stats.index else 0.0
        predicted = e.get("seconds")
        rows.append({
            "node_id": node, "predicted_s": predicted, "actual_s": actual,
            "error": actual / predicted - 1 if predicted else None, "unit": e.get("unit"),
            "fixed_s": e.get("fixed_s"), "per_unit_s": e.get("per_unit_s"),
            "units": e.get("units"), "items": e.get("items"),
            "actual_items": int(stats.loc[node, "count"]) if node in stats.index else 0,
            "skipped": e.get("skipped"), "runs": e.get("runs"), "match": e.get("match")})
    table = pd.DataFrame(rows, columns=_PREDICTION_COLUMNS)
    total: dict[str, Any] = {}
    if rows:
        actual_compute = float(table["actual_s"].sum())
        total = {"compute_s": pred.get("compute_s"), "actual_compute_s": actual_compute,
                 "processing_s": pred.get("processing_s"), "actual_processing_s": wall_s,
                 "duration_s": pred.get("duration_s"), "actual_duration_s": duration_s,
                 "history_runs": pred.get("history_runs"), "missing": pred.get("missing")}
        for key, actual_key in (("compute_s", "actual_compute_s"),
                                ("processing_s", "actual_processing_s"),
                                ("duration_s", "actual_duration_s")):
            p, a = total.get(key), total.get(actual_key)
            total[key.replace("_s", "_error")] = a / p - 1 if p and a else None
    return table, total


def _comparison(units: pd.DataFrame, hist: pd.DataFrame | None,
                nodes_plan: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Per node, this run's items against the earlier runs' (the same cost model, fitted
    on the earlier runs, normalises both)."""
    from dagflow.monitor import significance
    from dagflow.monitor.prediction import (
        history_fits,
        history_samples,
        latest_runs,
        normalised,
    )

    if hist is None or hist.empty or units.empty:
        return significance.compare({}, {})
    spec = {str(n): (v.get("op") or "", v.get("kind")) for n, v in nodes_plan.items()}
    fits = {n: e["fit"] for n, e in history_fits(hist, spec).items() if e["match"] == "node"}
    current, previous, runs, unit_of = {}, {}, {}, {}
    warm = units[~units["first"]]
    for node, model in fits.items():
        rows = latest_runs(hist[(hist["node_id"] == node) & (hist["op"] == spec[node][0])])
        prev = history_samples(rows)
        if prev.empty:
            continue
        prev = prev[~prev["first"].astype(bool)].assign(node_id=node)
        n_runs = int(rows["run_id"].nunique())
        cur = warm[warm["node_id"] == node]
        current[node] = normalised(cur, {node: model}).to_numpy()
        previous[node] = normalised(prev, {node: model}).to_numpy()
        runs[node], unit_of[node] = n_runs, model.unit
    return significance.compare(current, previous, runs=runs, units=unit_of)


def analyze(run_dir: str | os.PathLike[str], *, duration_s: float | None = None,
            history_dir: str | os.PathLike[str] | None = None) -> RunAnalysis:
    """Analyse a run directory.

    Parameters
    ----------
    run_dir
        The run directory (``<output>/_dagflow/runs/<run id>``).
    duration_s
        The run's wall time, start to end, when known (else from ``summary.json``).
    history_dir
        Where earlier runs' figures are (default: see
        :func:`dagflow.monitor.history.default_history_dir`).
    """
    from dagflow import config
    from dagflow.monitor import evidence, history, significance
    from dagflow.monitor.advice import RunFacts, advise
    from dagflow.monitor.prediction import history_fits, item_units, normalised, own_fits

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
    if plan.get("started") and sched_run.get("finished"):
        # from the submission of the first chunk to the end of the last
        wall = float(sched_run["finished"]) - float(plan["started"])
    elif started is not None and ended is not None:
        wall = ended - started
    else:
        wall = float(duration_s or summary.get("duration_s") or 0.0)
    if duration_s is None:
        duration_s = summary.get("duration_s")
    items = int(df["item_id"].nunique()) if len(df) else 0
    failed_items = int(df.loc[df["status"].isin(("failed", "upstream_failed")), "item_id"]
                       .nunique()) if len(df) else 0

    resources = _resources(run_dir, df)
    threads = plan.get("threads")
    memory_peak = None
    if len(resources):
        res = resources.copy()
        nthreads = res.groupby("worker")["nthreads"].max()
        if threads is None and nthreads.notna().any():
            threads = int(nthreads.fillna(0).sum()) or None
        frac = res["memory"].astype(float) / res["memory_limit"].astype(float)
        frac = frac.replace([np.inf, -np.inf], np.nan).dropna()
        memory_peak = float(frac.max()) if len(frac) else None
    workers = sorted({str(w) for w in df["worker"].dropna().unique()}) if "worker" in df else []
    n_workers = plan.get("workers") or (len(workers) or None)
    busy = float(ran["duration_s"].sum())

    # the items in units of their work, judged by their node's cost model: the unit the
    # history chose for the node, fitted again on this run's own items
    kinds = {str(n): v.get("kind") for n, v in nodes_plan.items()}
    units = item_units(df, nodes_plan)
    hist = None
    prior: dict[str, Any] = {}
    try:
        hdir = Path(history_dir) if history_dir is not None else \
            history.default_history_dir(run_dir)
        if hdir.is_dir():
            hist = history.load(hdir, workflow=plan.get("workflow"),
                                exclude_run=str(plan.get("run_id") or run_dir.name),
                                before=started)
            spec = {str(n): (v.get("op") or "", v.get("kind")) for n, v in nodes_plan.items()}
            prior = {n: e["fit"] for n, e in history_fits(hist, spec).items()}
    except Exception as exc:
        logger.warning("could not read the history: %s", exc)
    fits = own_fits(units, kinds, prefer=prior)
    units["norm"] = normalised(units, fits)
    machine = evidence.summarize(evidence.intervals(df))
    contended = evidence.machine_busy(machine)
    if contended and "cpu_s" in units and units["cpu_s"].notna().any():
        # threads waited for a CPU: an item's CPU time says what it cost, its wall time
        # what it drew in the run queue
        on_cpu = units.dropna(subset=["cpu_s"]).assign(duration_s=lambda u: u["cpu_s"])
        cpu_fits = own_fits(on_cpu, kinds, prefer=fits)
        units["cpu_norm"] = normalised(units.assign(duration_s=units["cpu_s"]), cpu_fits)
    units["unit"] = units["node_id"].map({n: f.unit for n, f in fits.items()})
    for col in ("unit", "fixed_s", "per_unit_s"):
        stats[col] = [getattr(fits[n], col) if n in fits else None for n in stats.index]

    # on a contended machine a trend in wall time may be other work coming and going:
    # judge the items' CPU time then, as for anomalies
    by_cpu = contended and "cpu_norm" in units
    trend_df, findings = significance.trend(
        units.assign(norm=units["cpu_norm"]) if by_cpu else units, t0=started)
    for info in findings.values():
        info["basis"] = "cpu" if by_cpu else "wall"
    try:
        comparison = _comparison(units, hist, nodes_plan)
    except Exception as exc:
        logger.warning("could not compare with earlier runs: %s", exc)
        comparison = significance.compare({}, {})

    # where the time went: the workers' counters
    per_worker = (threads / n_workers) if threads and n_workers else None
    classes = evidence.classify(ran, machine, threads_per_worker=per_worker)
    idle = M.idle_fraction(wall_s=float(wall or 0.0), busy_s=busy, threads=threads)
    wait = {"wall_s": float(wall or 0.0), "busy_s": busy, "threads": threads,
            "idle_fraction": idle, "machine": machine.to_dict(), "nodes": classes}

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
        why = f"{top!r} takes {100 * stats.loc[top, 'share']:.0f}% of all op time"
        if top in classes:
            why += f" ({classes[top]['why']})"
        bottleneck = {"node": top, "share": float(stats.loc[top, "share"]),
                      "op": nodes_plan.get(top, {}).get("op"), "why": why,
                      "class": classes.get(top, {}).get("class")}

    errors = M.errors_table(df)
    chunk_size = None
    chunks = None
    if "chunk" in df and df["chunk"].notna().any():
        per_chunk = df.dropna(subset=["chunk"]).groupby("chunk")["item_id"].nunique()
        chunk_size, chunks = float(per_chunk.mean()), len(per_chunk)
    else:
        chunk_size = float(summary.get("chunk_size") or plan.get("chunk_size") or 0) or None
        chunks = summary.get("chunks") or plan.get("chunks")
    ops = {v.get("op") for v in nodes_plan.values() if v.get("op")}
    warmup = {}
    for node, model in fits.items():
        firsts = int(units.loc[units["node_id"] == node, "first"].sum())
        warmup[node] = model.warmup_s * firsts
    facts = RunFacts(
        stats=stats, nodes=nodes_plan, items=items, chunk_size=chunk_size, chunks=chunks,
        threads=threads, workers=n_workers, processing_s=float(wall or 0.0), busy_s=busy,
        idle_fraction=idle, machine=machine, classes=classes,
        memory_peak_fraction=memory_peak, gpu_capable=_gpu_capable(ops), trend=findings,
        warmup=warmup, errors=errors, max_chunk_size=int(config.get("max-chunk-size", 64)))
    recs, finds = advise(facts)
    prediction, prediction_total = _prediction(plan, summary, stats, wall_s=float(wall or 0.0),
                                               duration_s=duration_s)

    run = {
        "run_id": plan.get("run_id") or run_dir.name, "workflow": plan.get("workflow"),
        "run_dir": str(run_dir), "items": items, "items_failed": failed_items,
        "records": len(df), "started": started, "wall_s": float(wall or 0.0),
        "duration_s": duration_s, "busy_s": busy,
        "throughput": (items / wall) if wall else None,
        "chunk_size": chunk_size, "chunks": chunks, "threads": threads, "workers": workers,
        "memory_peak_fraction": memory_peak, "task_counts": sched.get("tasks"),
        "breakers": sched.get("breakers"),
    }
    queue = read_table(metrics_dir(run_dir) / "queue.parquet")
    return RunAnalysis(
        run=run, nodes=stats,
        anomalies=M.anomalies(units, contended=contended), trend=trend_df,
        trend_findings=findings, throughput=M.throughput_series(df), critical_path=path,
        critical_path_s=path_s, bottleneck=bottleneck, resources=resources,
        queue=queue.to_pandas() if queue is not None else pd.DataFrame(
            columns=["time", "queued", "processing", "in_memory", "chunks_in_flight"]),
        waiting=wait, errors=errors, recommendations=recs, findings=finds,
        prediction=prediction, prediction_total=prediction_total, comparison=comparison,
        plan=plan, rows=df, facts=facts)
