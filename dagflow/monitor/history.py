"""The history of finished runs, per node: their figures and a sample of their items.

Every run appends one Parquet file ``run-<run id>.parquet`` to the history directory
(``dagflow.monitor.history-dir``; by default ``<output>/<state-dir>/history``) with a
row per node: items (ran, failed, skipped by a condition), seconds and percentiles,
megapixels in and out, bytes, the node's own cost model for that run
(:mod:`dagflow.monitor.costmodel`), and a sample of its items (:data:`MAX_SAMPLES` at
most: each item's seconds, input and output megapixels, input bytes, and whether it was
the first on its worker process; its CPU seconds) from which later runs fit the cost model
(:mod:`dagflow.monitor.prediction`) and compare their own items. Columns ``run_*``
repeat the run's wall time, processing time, compute seconds and threads on every row.
Files are written atomically and never rewritten, so concurrent runs into the same output
do not collide; files written before these columns existed read with them empty.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from dagflow import config

__all__ = ["HISTORY_SCHEMA", "MAX_SAMPLES", "append_run", "default_history_dir", "load"]

logger = logging.getLogger(__name__)

#: Most items of a node a history row keeps (the first on each worker always among them).
MAX_SAMPLES = 2000
#: Most chunk parts read back for the sample when the figures come from the plugin.
MAX_PARTS = 48

_SAMPLE = pa.list_(pa.float64())

HISTORY_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("workflow", pa.string()),
    ("node_id", pa.string()),
    ("op", pa.string()),
    ("kind", pa.string()),
    ("finished", pa.float64()),
    ("items", pa.int64()),
    ("failed", pa.int64()),
    ("skipped", pa.int64()),
    ("total_s", pa.float64()),
    ("mean_s", pa.float64()),
    ("p50_s", pa.float64()),
    ("p95_s", pa.float64()),
    # output megapixels (a sink: those it encoded)
    ("megapixels", pa.float64()),
    ("in_mp", pa.float64()),
    ("s_per_mp", pa.float64()),
    ("s_per_item", pa.float64()),
    ("bytes_in", pa.int64()),
    ("bytes_out", pa.int64()),
    # the node's cost model fitted on this run's items alone
    ("unit", pa.string()),
    ("fixed_s", pa.float64()),
    ("per_unit_s", pa.float64()),
    ("spread", pa.float64()),
    ("warmup_s", pa.float64()),
    ("workers", pa.int64()),
    ("sample_s", _SAMPLE),
    ("sample_cpu_s", _SAMPLE),
    ("sample_in_mp", _SAMPLE),
    ("sample_out_mp", _SAMPLE),
    ("sample_bytes_in", _SAMPLE),
    ("sample_first", pa.list_(pa.bool_())),
    ("run_duration_s", pa.float64()),
    ("run_processing_s", pa.float64()),
    ("run_busy_s", pa.float64()),
    ("run_threads", pa.int64()),
])


def default_history_dir(run_dir: str | os.PathLike[str]) -> Path:
    """The configured history directory, else ``<state dir>/history`` beside ``runs/``."""
    configured = config.get("monitor.history-dir")
    if configured:
        return Path(os.path.expanduser(str(configured)))
    return Path(run_dir).resolve().parent.parent / "history"


def _nan_to_none(x: Any) -> Any:
    return None if isinstance(x, float) and math.isnan(x) else x


_ROW_COLUMNS = ("item_id", "node_id", "op", "status", "attempts", "duration_s", "cpu_s",
                "started", "worker", "width", "height", "megapixels", "bytes_in", "bytes_out",
                "chunk")


def _metric_rows(run_dir: str | os.PathLike[str], *, limit: int | None = None) -> Any:
    """The node-figure columns of a run's metrics parts (``None`` without any, or when
    a part is unreadable); with ``limit``, of that many parts at most: the first ones
    (each worker's first items are there) and others spread over the run."""
    from dagflow.monitor.store import METRICS_SCHEMA, metric_parts, read_parts

    parts = metric_parts(run_dir)
    if not parts:
        return None
    if limit is not None and len(parts) > limit:
        head = limit // 4
        rest = parts[head:]
        picks = np.linspace(0, len(rest) - 1, limit - head).round().astype(int)
        parts = parts[:head] + [rest[i] for i in sorted(set(picks.tolist()))]
    table = read_parts(parts, pa.schema([METRICS_SCHEMA.field(c) for c in _ROW_COLUMNS]))
    if table is None or table.num_rows == 0:
        return None
    df = table.to_pandas()
    for col in ("duration_s", "started"):
        df[col] = df[col].astype(float).fillna(0.0)
    wh = df["width"].astype(float) * df["height"].astype(float) / 1e6
    df["megapixels"] = df["megapixels"].astype(float).fillna(wh)
    return df.drop_duplicates(["item_id", "node_id"], keep="last").reset_index(drop=True)


def append_run(run_dir: str | os.PathLike[str], *,
               history_dir: str | os.PathLike[str] | None = None,
               analysis: Any = None,
               live: Mapping[str, Mapping[str, Any]] | None = None,
               duration_s: float | None = None) -> Path | None:
    """Append this run's per-node figures and item samples to the history; returns the
    file written.

    ``analysis`` (a :class:`~dagflow.monitor.analysis.RunAnalysis` of the run) saves
    reading the run directory again; so do ``live``, the scheduler plugin's figures per
    node (:meth:`~dagflow.monitor.plugin.NodeStats.to_dict`), when they cover every
    record of the run (the caller checks): then only a few chunk parts are read, for the
    sample. ``duration_s`` is the run's wall time, start to end.
    """
    from dagflow.monitor.analysis import load_plan, load_rows
    from dagflow.monitor.metrics import node_stats
    from dagflow.monitor.store import read_json, write_table

    plan = load_plan(run_dir)
    run_id = _run_id(plan, run_dir)
    if analysis is None and live is not None:
        sample_rows = _metric_rows(run_dir, limit=MAX_PARTS)
        figures = _live_figures(live)
        processing = _processing_s(plan, run_dir, None)
    else:
        if analysis is not None:
            df, plan, stats = analysis.rows, analysis.plan, analysis.nodes
            processing = _processing_s(plan, run_dir, df)
        else:
            # the chunks' parts carry every column the node figures need: read those alone
            df = _metric_rows(run_dir)
            if df is None:
                df = load_rows(run_dir)
            stats = node_stats(df, order=list(plan.get("nodes", {}))) if len(df) else None
            processing = _processing_s(plan, run_dir, df)
        if df.empty or stats is None:
            return None
        sample_rows = df
        figures = _stats_figures(df, stats)
    if not figures:
        return None
    if duration_s is None:
        duration_s = (read_json(Path(run_dir) / "summary.json") or {}).get("duration_s")
    samples = node_samples(sample_rows, plan) if sample_rows is not None else {}
    now = time.time()
    busy = math.fsum(float(f["total_s"]) for f in figures.values())
    nodes_plan = plan.get("nodes") or {}
    rows = []
    for node, f in figures.items():
        meta = nodes_plan.get(node, {})
        s = samples.get(node, {})
        rows.append({
            "run_id": run_id, "workflow": plan.get("workflow"), "node_id": str(node),
            "op": meta.get("op") or f.get("op"), "kind": meta.get("kind"),
            "finished": now, **{k: f.get(k) for k in (
                "items", "failed", "skipped", "total_s", "mean_s", "p50_s", "p95_s",
                "megapixels", "s_per_mp", "s_per_item", "bytes_in", "bytes_out")},
            "in_mp": s.get("in_mp_total"),
            **{k: s.get(k) for k in ("unit", "fixed_s", "per_unit_s", "spread", "warmup_s",
                                     "workers", "sample_s", "sample_cpu_s", "sample_in_mp",
                                     "sample_out_mp", "sample_bytes_in", "sample_first")},
            "run_duration_s": _number(duration_s), "run_processing_s": _number(processing),
            "run_busy_s": busy,
            "run_threads": plan.get("threads") or (plan.get("prediction") or {}).get("threads"),
        })
    directory = Path(history_dir) if history_dir is not None else default_history_dir(run_dir)
    return write_table(directory / f"run-{run_id}.parquet",
                       pa.Table.from_pylist(rows, schema=HISTORY_SCHEMA))


def _number(x: Any) -> float | None:
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _run_id(plan: Mapping[str, Any], run_dir: str | os.PathLike[str]) -> str:
    return str(plan.get("run_id") or Path(run_dir).name)


def _processing_s(plan: Mapping[str, Any], run_dir: str | os.PathLike[str],
                  df: pd.DataFrame | None) -> float | None:
    """From the submission of the first chunk to the end of the last."""
    from dagflow.monitor.store import metrics_dir, read_json

    sched = (read_json(metrics_dir(run_dir) / "scheduler.json") or {}).get("run") or {}
    if plan.get("started") and sched.get("finished"):
        return float(sched["finished"]) - float(plan["started"])
    if df is not None and len(df) and (df["started"] > 0).any():
        r = df[df["started"] > 0]
        return float((r["started"] + r["duration_s"]).max() - r["started"].min())
    return None


def _stats_figures(df: pd.DataFrame, stats: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per node figures from the node statistics computed from the run's records."""
    out = {}
    for node, s in stats.iterrows():
        if not s["count"]:
            continue
        ops = df.loc[df["node_id"] == node, "op"].dropna() if "op" in df else ()
        out[str(node)] = {
            "op": str(ops.iloc[0]) if len(ops) else None,
            "items": int(s["count"]), "failed": int(s["failed"]),
            "skipped": int(s["skipped"]),
            "total_s": float(s["total_s"]), "mean_s": _nan_to_none(float(s["mean"])),
            "p50_s": _nan_to_none(float(s["p50"])), "p95_s": _nan_to_none(float(s["p95"])),
            "megapixels": float(s["megapixels"]),
            "s_per_mp": _nan_to_none(float(s["s_per_mp"])),
            "s_per_item": float(s["total_s"]) / float(s["count"]),
            "bytes_in": int(s["bytes_in"]), "bytes_out": int(s["bytes_out"]),
        }
    return out


def _live_figures(live: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per node figures from the scheduler plugin's (durations of the items the op ran
    on; percentiles over the latest few thousand of them)."""
    out = {}
    for node, s in live.items():
        count = int(s.get("count") or 0)
        if not count:
            continue
        total = float(s.get("total_s") or 0.0)
        mp = float(s.get("megapixels") or 0.0)
        out[str(node)] = {
            "op": s.get("op"), "items": count, "failed": int(s.get("failed") or 0),
            "skipped": int(s.get("skipped") or 0),
            "total_s": total, "mean_s": total / count, "p50_s": s.get("p50"),
            "p95_s": s.get("p95"), "megapixels": mp,
            "s_per_mp": total / mp if mp > 0 else None, "s_per_item": total / count,
            "bytes_in": int(s.get("bytes_in") or 0), "bytes_out": int(s.get("bytes_out") or 0),
        }
    return out


def node_samples(rows: pd.DataFrame, plan: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per node: its cost model on these rows, and a sample of its items as lists."""
    from dagflow.monitor.costmodel import fit
    from dagflow.monitor.prediction import item_units

    units = item_units(rows, plan.get("nodes") or {})
    out: dict[str, dict[str, Any]] = {}
    kinds = {n: v.get("kind") for n, v in (plan.get("nodes") or {}).items()}
    for node, sub in units.groupby("node_id", sort=False):
        node = str(node)
        model = fit(sub["duration_s"].to_numpy(), {u: sub[u].to_numpy() for u in
                                                    ("in_mp", "out_mp", "bytes_in")},
                    kind=kinds.get(node), first=sub["first"].to_numpy())
        if model is None:
            continue
        # of all the node's items, before the sample
        workers = int(sub["worker"].nunique()) if "worker" in sub else None
        in_mp_total = float(sub["in_mp"].sum())
        if len(sub) > MAX_SAMPLES:
            firsts = sub[sub["first"]]
            others = sub[~sub["first"]]
            keep = others.sample(max(0, MAX_SAMPLES - len(firsts)), random_state=0)
            sub = pd.concat([firsts, keep]).sort_values("started")
        out[node] = {
            "unit": model.unit, "fixed_s": model.fixed_s, "per_unit_s": model.per_unit_s,
            "spread": model.spread, "warmup_s": model.warmup_s,
            "workers": workers, "in_mp_total": in_mp_total,
            "sample_s": sub["duration_s"].astype(float).tolist(),
            "sample_cpu_s": _list(sub["cpu_s"]) if "cpu_s" in sub else None,
            "sample_in_mp": _list(sub["in_mp"]), "sample_out_mp": _list(sub["out_mp"]),
            "sample_bytes_in": _list(sub["bytes_in"]),
            "sample_first": sub["first"].astype(bool).tolist(),
        }
    return out


def _list(col: pd.Series) -> list[float | None]:
    return [None if v != v else float(v) for v in col.astype(float).tolist()]


def load(history_dir: str | os.PathLike[str], *, workflow: str | None = None,
         exclude_run: str | None = None, before: float | None = None) -> pd.DataFrame:
    """The history as a DataFrame, oldest run first (empty when there is none).

    Parameters
    ----------
    workflow
        Keep only this workflow's runs.
    exclude_run
        Leave this run out (the one being judged).
    before
        Keep only runs finished before this time.
    """
    from dagflow.monitor.store import read_table

    tables = []
    for p in sorted(Path(history_dir).glob("run-*.parquet")):
        t = read_table(p)
        if t is not None:
            tables.append(t)
    if not tables:
        return HISTORY_SCHEMA.empty_table().to_pandas()
    df = pa.concat_tables(tables, promote_options="default").to_pandas()
    for name in HISTORY_SCHEMA.names:  # files written before a column existed
        if name not in df:
            df[name] = None
    if workflow is not None:
        df = df[df["workflow"] == workflow]
    if exclude_run is not None:
        df = df[df["run_id"] != exclude_run]
    if before is not None:
        df = df[df["finished"] < before]
    return df.sort_values("finished", kind="stable").reset_index(drop=True)
