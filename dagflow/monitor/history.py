"""The history of finished runs, per node, for planning: seconds per megapixel and per item.

Every run appends one Parquet file ``run-<run id>.parquet`` to the history directory
(``dagflow.monitor.history-dir``; by default ``<output>/<state-dir>/history``) with a
row per node: items, total seconds, percentiles, megapixels, seconds per megapixel and
per item. Files are written atomically and never rewritten, so concurrent runs into the
same output do not collide. :func:`estimate` predicts a node's seconds for a new batch
from the median of earlier runs (same workflow and node, else the same op).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from dagflow import config

__all__ = ["HISTORY_SCHEMA", "append_run", "default_history_dir", "estimate", "load"]

logger = logging.getLogger(__name__)

HISTORY_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("workflow", pa.string()),
    ("node_id", pa.string()),
    ("op", pa.string()),
    ("finished", pa.float64()),
    ("items", pa.int64()),
    ("failed", pa.int64()),
    ("total_s", pa.float64()),
    ("mean_s", pa.float64()),
    ("p50_s", pa.float64()),
    ("p95_s", pa.float64()),
    ("megapixels", pa.float64()),
    ("s_per_mp", pa.float64()),
    ("s_per_item", pa.float64()),
    ("bytes_in", pa.int64()),
    ("bytes_out", pa.int64()),
])


def default_history_dir(run_dir: str | os.PathLike[str]) -> Path:
    """The configured history directory, else ``<state dir>/history`` beside ``runs/``."""
    configured = config.get("monitor.history-dir")
    if configured:
        return Path(os.path.expanduser(str(configured)))
    return Path(run_dir).resolve().parent.parent / "history"


def _nan_to_none(x: Any) -> Any:
    return None if isinstance(x, float) and math.isnan(x) else x


_STATS_COLUMNS = ("item_id", "node_id", "op", "status", "attempts", "duration_s", "started",
                  "megapixels", "bytes_in", "bytes_out")


def _metric_rows(run_dir: str | os.PathLike[str]) -> Any:
    """The node-figure columns of a run's metrics parts (``None`` without any, or when
    a part is unreadable)."""
    from dagflow.monitor.store import METRICS_SCHEMA, metric_parts, read_parts

    parts = metric_parts(run_dir)
    if not parts:
        return None
    table = read_parts(parts, pa.schema([METRICS_SCHEMA.field(c) for c in _STATS_COLUMNS]))
    if table is None or table.num_rows == 0:
        return None
    df = table.to_pandas()
    for col in ("duration_s", "started"):
        df[col] = df[col].astype(float).fillna(0.0)
    return df.drop_duplicates(["item_id", "node_id"], keep="last").reset_index(drop=True)


def append_run(run_dir: str | os.PathLike[str], *,
               history_dir: str | os.PathLike[str] | None = None,
               analysis: Any = None,
               live: Mapping[str, Mapping[str, Any]] | None = None) -> Path | None:
    """Append this run's per-node figures to the history; returns the file written.

    ``analysis`` (a :class:`~dagflow.monitor.analysis.RunAnalysis` of the run) saves
    reading the run directory again; so do ``live``, the scheduler plugin's figures per
    node (:meth:`~dagflow.monitor.plugin.NodeStats.to_dict`), when they cover every
    record of the run (the caller checks).
    """
    from dagflow.monitor.analysis import load_plan, load_rows
    from dagflow.monitor.metrics import node_stats
    from dagflow.monitor.store import write_table

    if analysis is None and live is not None:
        plan = load_plan(run_dir)
        rows = _live_rows(plan, live, _run_id(plan, run_dir))
    else:
        if analysis is not None:
            df, plan, stats = analysis.rows, analysis.plan, analysis.nodes
        else:
            # the chunks' parts carry every column the node figures need: read those alone
            df = _metric_rows(run_dir)
            if df is None:
                df = load_rows(run_dir)
            plan = load_plan(run_dir)
            stats = node_stats(df, order=list(plan.get("nodes", {}))) if len(df) else None
        empty = df.empty or stats is None
        rows = [] if empty else _stats_rows(plan, df, stats, _run_id(plan, run_dir))
    if not rows:
        return None
    directory = Path(history_dir) if history_dir is not None else default_history_dir(run_dir)
    return write_table(directory / f"run-{rows[0]['run_id']}.parquet",
                       pa.Table.from_pylist(rows, schema=HISTORY_SCHEMA))


def _run_id(plan: Mapping[str, Any], run_dir: str | os.PathLike[str]) -> str:
    return str(plan.get("run_id") or Path(run_dir).name)


def _stats_rows(plan: Mapping[str, Any], df: pd.DataFrame, stats: pd.DataFrame,
                run_id: str) -> list[dict[str, Any]]:
    """History rows from the node figures computed from the run's records."""
    rows = []
    now = time.time()
    for node, s in stats.iterrows():
        if not s["count"]:
            continue
        op = plan.get("nodes", {}).get(node, {}).get("op")
        if op is None and "op" in df:
            ops = df.loc[df["node_id"] == node, "op"].dropna()
            op = str(ops.iloc[0]) if len(ops) else None
        rows.append({
            "run_id": run_id, "workflow": plan.get("workflow"), "node_id": str(node), "op": op,
            "finished": now, "items": int(s["count"]), "failed": int(s["failed"]),
            "total_s": float(s["total_s"]), "mean_s": _nan_to_none(float(s["mean"])),
            "p50_s": _nan_to_none(float(s["p50"])), "p95_s": _nan_to_none(float(s["p95"])),
            "megapixels": float(s["megapixels"]),
            "s_per_mp": _nan_to_none(float(s["s_per_mp"])),
            "s_per_item": float(s["total_s"]) / float(s["count"]),
            "bytes_in": int(s["bytes_in"]), "bytes_out": int(s["bytes_out"]),
        })
    return rows


def _live_rows(plan: Mapping[str, Any], live: Mapping[str, Mapping[str, Any]],
               run_id: str) -> list[dict[str, Any]]:
    """History rows from the scheduler plugin's node figures (durations of the items the
    op ran on; percentiles over the latest few thousand of them)."""
    rows = []
    now = time.time()
    for node, s in live.items():
        count = int(s.get("count") or 0)
        if not count:
            continue
        total = float(s.get("total_s") or 0.0)
        mp = float(s.get("megapixels") or 0.0)
        rows.append({
            "run_id": run_id, "workflow": plan.get("workflow"), "node_id": str(node),
            "op": plan.get("nodes", {}).get(node, {}).get("op") or s.get("op"),
            "finished": now, "items": count, "failed": int(s.get("failed") or 0),
            "total_s": total, "mean_s": total / count, "p50_s": s.get("p50"),
            "p95_s": s.get("p95"), "megapixels": mp,
            "s_per_mp": total / mp if mp > 0 else None, "s_per_item": total / count,
            "bytes_in": int(s.get("bytes_in") or 0), "bytes_out": int(s.get("bytes_out") or 0),
        })
    return rows


def load(history_dir: str | os.PathLike[str], *, workflow: str | None = None,
         exclude_run: str | None = None, before: float | None = None) -> pd.DataFrame:
    """The history as a DataFrame (empty when there is none).

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
    if workflow is not None:
        df = df[df["workflow"] == workflow]
    if exclude_run is not None:
        df = df[df["run_id"] != exclude_run]
    if before is not None:
        df = df[df["finished"] < before]
    return df.reset_index(drop=True)


def estimate(history: pd.DataFrame, nodes: Mapping[str, str], *,
             items: int | Mapping[str, int], megapixels: Mapping[str, float] | None = None
             ) -> dict[str, dict[str, Any]]:
    """Predicted seconds per node for a batch, from earlier runs.

    Parameters
    ----------
    history
        From :func:`load`.
    nodes
        Node id to op.
    items
        Items per node (or one count for all).
    megapixels
        Megapixels per node; used with seconds per megapixel when the history has it.

    Returns
    -------
    dict
        Per node with a history: ``seconds``, ``basis`` (``"s_per_mp"`` or
        ``"s_per_item"``), ``runs`` (how many earlier runs it rests on), ``match``
        (``"node"`` or ``"op"``).

    Examples
    --------
    >>> h = pd.DataFrame({"node_id": ["blur"], "op": ["gaussian"], "s_per_mp": [0.5],
    ...                   "s_per_item": [0.1]})
    >>> estimate(h, {"blur": "gaussian"}, items=10, megapixels={"blur": 4.0})["blur"]
    {'seconds': 2.0, 'basis': 's_per_mp', 'runs': 1, 'match': 'node'}
    """
    out: dict[str, dict[str, Any]] = {}
    if history.empty:
        return out
    for node, op in nodes.items():
        match = "node"
        rows = history[(history["node_id"] == node) & (history["op"] == op)]
        if rows.empty:
            rows, match = history[history["op"] == op], "op"
        if rows.empty:
            continue
        n_items = items[node] if isinstance(items, Mapping) else items
        mp = (megapixels or {}).get(node)
        spm = rows["s_per_mp"].dropna()
        if mp and len(spm):
            out[node] = {"seconds": float(spm.median() * mp), "basis": "s_per_mp",
                         "runs": len(spm), "match": match}
        elif n_items:
            spi = rows["s_per_item"].dropna()
            if len(spi):
                out[node] = {"seconds": float(spi.median() * n_items), "basis": "s_per_item",
                             "runs": len(spi), "match": match}
    return out
