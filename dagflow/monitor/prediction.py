"""A batch's duration predicted from the history: the one place a prediction is made.

:func:`predict` takes what a batch will do, per node (:func:`batch_work`: the items that
reach the node and pass its condition, and the megapixels and bytes they bring), and the
cost models fitted on earlier runs' items (:func:`history_fits`, with
:mod:`dagflow.monitor.costmodel`), and returns the prediction as JSON-ready data.
``dagflow plan`` prints it, a run keeps it in its plan (``metrics/run.json``) and its
summary, and the report shows it beside what happened: the same numbers everywhere.

:func:`item_units` gives the same units for the items of a finished run, so that its
items can be judged against their expected time (:func:`normalised`): anomalies, trend
and the comparison with earlier runs in :mod:`dagflow.monitor.analysis`.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dagflow.monitor.costmodel import NodeFit, fit

__all__ = ["NodeWork", "batch_work", "history_fits", "history_samples", "item_units",
           "latest_runs", "normalised", "own_fits", "predict", "predict_from"]

#: Earlier runs of a node pooled for its cost model (the latest ones).
POOLED_RUNS = 5
#: Statuses whose items the op ran on.
_RAN = ("ok", "failed")


@dataclass
class NodeWork:
    """What a batch asks of one node: items to run, items a condition skips, and the
    sum of each unit over the items it runs."""

    items: int = 0
    skipped: int = 0
    in_mp: float = 0.0
    out_mp: float = 0.0
    bytes_in: float = 0.0

    def unit_total(self, unit: str) -> float:
        return float(self.items) if unit == "item" else float(getattr(self, unit))


def _mp(header: Mapping[str, Any] | None) -> float:
    if not header:
        return 0.0
    return int(header.get("width") or 0) * int(header.get("height") or 0) / 1e6


def batch_work(tasks: Mapping[str, Any], model: Any, items: Sequence[Mapping[str, Any]], *,
               passes: Callable[[Mapping[str, Any]], Sequence[bool]] | None = None
               ) -> dict[str, NodeWork]:
    """Per node, the work of a batch, judged on the items' headers.

    Parameters
    ----------
    tasks
        Node id to resolved node (``op``, ``kind``, ``params``), in topological order.
    model
        The batch's :class:`~dagflow.resources.MemoryModel` (headers through the nodes).
    items
        The items to run.
    passes
        For an item, whether each node runs on it (reached and its condition true); by
        default every node runs on every item.

    Items sharing a header are judged once. An item without a header counts like the
    average of those with one; a source's bytes are the files' sizes (those unknown
    counted at the average of the known; with none known, of :data:`SIZE_SAMPLE` files
    read).
    """
    from dagflow.resources import output_header

    ids = list(tasks)
    work = {nid: NodeWork() for nid in ids}
    groups: Counter[Any] = Counter()
    first: dict[Any, Mapping[str, Any]] = {}
    sizes = 0.0
    sized = 0
    for item in items:
        sig = model.signature(item)
        groups[sig] += 1
        if sig not in first:
            first[sig] = item
        size = item.get("size")
        if size is not None and size >= 0:
            sizes += size
            sized += 1
    known = 0
    source_items = dict.fromkeys(ids, 0)
    for sig, count in groups.items():
        if sig is None:
            continue
        item = first[sig]
        received = model.headers_through(item) or {}
        runs = list(passes(item)) if passes is not None else [True] * len(ids)
        known += count
        for nid, ran in zip(ids, runs, strict=True):
            w = work[nid]
            if not ran:
                w.skipped += count
                continue
            task = tasks[nid]
            in_h = received.get(nid)
            out_h = in_h if task.kind in ("sink", "aggregate") else \
                output_header(task.op, in_h or {}, task.params)
            w.items += count
            w.in_mp += count * _mp(in_h)
            w.out_mp += count * _mp(out_h)
            if task.kind == "source":
                source_items[nid] += count
    unknown = groups.get(None, 0)
    if unknown:
        for w in work.values():
            share = w.items / known if known else 1.0
            extra = unknown * share
            if known:
                w.in_mp += extra * w.in_mp / max(1, w.items)
                w.out_mp += extra * w.out_mp / max(1, w.items)
            w.items += round(extra)
    if not sized and items:
        sizes, sized = _sampled_sizes(items)
    mean_size = sizes / sized if sized else 0.0
    for nid, task in tasks.items():
        if task.kind == "source":
            w = work[nid]
            w.bytes_in = mean_size * w.items
    return work


#: Files whose sizes are read when the items do not carry them (a deterministic sample).
SIZE_SAMPLE = 256


def _sampled_sizes(items: Sequence[Mapping[str, Any]]) -> tuple[float, int]:
    """The summed size and count of a sample of the items' files (their sizes unknown:
    inputs resolved without reading the files' metadata)."""
    step = max(1, len(items) // SIZE_SAMPLE)
    total, count = 0.0, 0
    for item in items[::step][:SIZE_SAMPLE]:
        try:
            total += os.stat(item["path"]).st_size
            count += 1
        except (OSError, KeyError, TypeError):
            continue
    return total, count


def item_units(rows: Any, nodes: Mapping[str, Mapping[str, Any]]) -> Any:
    """The rows where an op ran, with each item's units in the node.

    Parameters
    ----------
    rows
        Records with the metrics' columns (``item_id``, ``node_id``, ``status``,
        ``duration_s``, ``started``, ``worker``, ``megapixels`` or ``width`` /
        ``height``, ``bytes_in``).
    nodes
        The run's plan nodes (``kind``, ``parents``).

    Returns
    -------
    pandas.DataFrame
        The ran rows with ``out_mp`` (the image the node produced; a sink's, the one it
        encoded), ``in_mp`` (its first parent's ``out_mp``; NaN for a source), ``bytes_in``
        (a source's input file; NaN elsewhere) and ``first`` (the first item the node ran
        on its worker process).

    Notes
    -----
    Computed on arrays of codes rather than with pandas' merge and groupby: every run
    appends its sample to the history this way as it ends, and on a run's few hundred
    rows pandas' fixed cost per operation made this the largest part of that (15 ms of
    the 45), with the run's workers idle.
    """
    import pandas as pd

    df = rows
    n = len(df)
    mp = df["megapixels"].astype(float).to_numpy() if "megapixels" in df else \
        np.full(n, np.nan)
    if {"width", "height"} <= set(df.columns):
        wh = df["width"].astype(float).to_numpy() * df["height"].astype(float).to_numpy() / 1e6
        mp = np.where(np.isnan(mp), wh, mp)
    node_str = df["node_id"].astype(str)
    node_all = node_str.to_numpy()
    ran = df["status"].isin(_RAN).to_numpy()
    cols = [c for c in ("item_id", "node_id", "status", "duration_s", "started", "worker",
                        "rel", "chunk", "cpu_s") if c in df]
    out = df.loc[ran, cols].reset_index(drop=True)
    out["node_id"] = node_str[ran].reset_index(drop=True)
    out["out_mp"] = mp[ran]
    # each ran row's first parent, and whether it is a source, decided once per node
    kinds = {str(n): v.get("kind") for n, v in nodes.items()}
    parents = {str(n): (list(v.get("parents") or []) or [None])[0] for n, v in nodes.items()}
    codes, names = pd.factorize(node_all[ran])
    parent_of = [parents.get(name) or "" for name in names]
    source_of = [kinds.get(name) == "source" or parent_of[k] == ""
                 for k, name in enumerate(names)]
    parent = np.array(parent_of, dtype=object)[codes]
    is_source = np.array(source_of, dtype=bool)[codes]
    # in_mp: the out_mp of the item's row at the parent node (its last row there)
    keys, key_names = pd.factorize(np.concatenate([node_all, parent]))
    items, _ = pd.factorize(np.concatenate([df["item_id"].to_numpy(), out["item_id"].to_numpy()]))
    width = max(1, len(key_names))
    pair = items.astype(np.int64) * width + keys
    produced = pd.Series(mp, index=pair[:n])
    produced = produced[~produced.index.duplicated(keep="last")]
    in_mp = produced.reindex(pair[n:]).to_numpy(dtype=float, copy=True)
    in_mp[is_source] = np.nan
    out["in_mp"] = in_mp
    out["bytes_in"] = np.where(is_source, df["bytes_in"].astype(float).to_numpy()[ran], np.nan) \
        if "bytes_in" in df else np.nan
    out["duration_s"] = out["duration_s"].astype(float).fillna(0.0)
    first = np.zeros(len(out), dtype=bool)
    if "worker" in out and "started" in out and len(out):
        worker = out["worker"]
        started = out["started"].astype(float).to_numpy()
        # the earliest start per node and worker (a missing worker counted as "")
        group, _ = pd.factorize(codes * (len(out) + 1) + pd.factorize(worker.fillna(""))[0])
        earliest = np.full(group.max() + 1, np.nan)
        np.fmin.at(earliest, group, started)
        first = started == earliest[group]
        # one first item per node and worker, even where two started at the same time
        same, _ = pd.factorize(codes * (len(out) + 2) + pd.factorize(worker)[0] + 1)
        rows_first = np.flatnonzero(first)
        keep = rows_first[np.unique(same[rows_first], return_index=True)[1]]
        first = np.zeros(len(out), dtype=bool)
        first[keep] = True
    out["first"] = first
    return out


def normalised(units: Any, fits: Mapping[str, NodeFit]) -> Any:
    """Each item's seconds over what its node's cost model expects for it (1: as
    expected); NaN for a node without a model."""
    import pandas as pd

    out = pd.Series(np.nan, index=units.index, dtype=float)
    for node, sub in units.groupby("node_id", sort=False):
        model = fits.get(str(node))
        if model is None:
            continue
        expected = model.expected({u: sub[u].to_numpy() for u in ("in_mp", "out_mp",
                                                                   "bytes_in")}, len(sub))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = sub["duration_s"].to_numpy(dtype=float) / expected
        out.loc[sub.index] = np.where(expected > 0, ratio, np.nan)
    return out


def history_samples(rows: Any) -> Any:
    """The item samples of history rows, pooled: ``duration_s``, ``cpu_s``, ``in_mp``,
    ``out_mp``, ``bytes_in`` and ``first`` (the first item on its worker process), one row
    per item."""
    import pandas as pd

    frames = []
    for _, row in rows.iterrows():
        s = row.get("sample_s")
        if s is None or not len(s):
            continue
        n = len(s)
        frame: dict[str, Any] = {"duration_s": np.asarray(s, dtype=float)}
        for unit in ("cpu_s", "in_mp", "out_mp", "bytes_in"):
            col = row.get(f"sample_{unit}")
            frame[unit] = (np.asarray([np.nan if v is None else v for v in col], dtype=float)
                           if col is not None and len(col) == n else np.full(n, np.nan))
        first = row.get("sample_first")
        frame["first"] = (np.asarray(first, dtype=bool) if first is not None
                          and len(first) == n else np.zeros(n, dtype=bool))
        frames.append(pd.DataFrame(frame))
    if not frames:
        return pd.DataFrame(columns=["duration_s", "cpu_s", "in_mp", "out_mp", "bytes_in",
                                     "first"])
    return pd.concat(frames, ignore_index=True)


def latest_runs(rows: Any, runs: int = POOLED_RUNS) -> Any:
    """The history rows of the latest ``runs`` runs among ``rows`` (oldest first)."""
    return rows[rows["run_id"].isin(list(dict.fromkeys(rows["run_id"]))[-runs:])]


def history_fits(history: Any, nodes: Mapping[str, tuple[str, str | None]], *,
                 runs: int = POOLED_RUNS, measure: str = "duration_s"
                 ) -> dict[str, dict[str, Any]]:
    """Per node, its cost model from the items of its latest earlier runs.

    Parameters
    ----------
    history
        From :func:`dagflow.monitor.history.load` (oldest first).
    nodes
        Node id to ``(op, kind)``.
    measure
        What the model predicts: the items' seconds (``duration_s``) or their CPU
        seconds (``cpu_s``: what the work costs whatever else ran on the machine).

    Returns
    -------
    dict
        Per node with a history: ``fit`` (:class:`~dagflow.monitor.costmodel.NodeFit`),
        ``runs`` (how many runs it rests on), ``match`` (``"node"``: this node's runs;
        ``"op"``: other nodes with the same op).
    """
    out: dict[str, dict[str, Any]] = {}
    if history is None or len(history) == 0:
        return out
    for node, (op, kind) in nodes.items():
        match = "node"
        rows = history[(history["node_id"] == node) & (history["op"] == op)]
        if rows.empty:
            rows, match = history[history["op"] == op], "op"
        if rows.empty:
            continue
        rows = latest_runs(rows, runs)
        items = history_samples(rows)
        if measure != "duration_s":
            items = items[np.isfinite(items[measure].astype(float))]
        model = fit(items[measure].to_numpy(dtype=float),
                    {u: items[u].to_numpy(dtype=float) for u in ("in_mp", "out_mp",
                                                                  "bytes_in")},
                    kind=kind, first=items["first"].to_numpy(dtype=bool)) if len(items) \
            else None
        if model is None and measure == "duration_s":  # a history without samples
            spi = rows["s_per_item"].dropna()
            if not len(spi):
                continue
            model = NodeFit("item", float(spi.median()), 0.0, int(rows["items"].sum()),
                            chosen="aggregate")
        if model is None:
            continue
        out[node] = {"fit": model, "runs": int(rows["run_id"].nunique()), "match": match}
    return out


def _run_level(history: Any) -> dict[str, float] | None:
    """The latest run's wall time split: processing, compute, threads, overhead."""
    if history is None or len(history) == 0 or "run_processing_s" not in history:
        return None
    runs = history.dropna(subset=["run_processing_s"]).drop_duplicates("run_id", keep="last")
    if runs.empty:
        return None
    last = runs.iloc[-1]
    processing = float(last["run_processing_s"])
    threads = last.get("run_threads")
    busy = float(history.loc[history["run_id"] == last["run_id"], "total_s"].sum())
    out = {"processing_s": processing, "busy_s": busy,
           "threads": float(threads) if threads is not None and threads == threads else None}
    duration = last.get("run_duration_s")
    if duration is not None and duration == duration:
        out["overhead_s"] = max(0.0, float(duration) - processing)
    return out


def predict(history: Any, nodes: Mapping[str, tuple[str, str | None]],
            work: Mapping[str, NodeWork], *, threads: int, workers: int,
            chunks: int) -> dict[str, Any]:
    """The batch's prediction, per node and in total (JSON-ready, seconds rounded to the
    millisecond).

    Parameters
    ----------
    history
        From :func:`dagflow.monitor.history.load`.
    nodes
        Node id to ``(op, kind)``, in topological order.
    work
        From :func:`batch_work`.
    threads, workers, chunks
        The cluster's threads and worker processes, and the batch's chunks.

    Returns
    -------
    dict
        ``nodes``: per node with a history, ``seconds`` (``fixed_s x items + per_unit_s x
        units + warmup_s x`` the worker processes it will run on), ``unit``,
        ``fixed_s``, ``per_unit_s``, ``units`` (the unit summed over its items),
        ``items``, ``skipped``, ``work`` (every unit summed), ``warmup_s``, ``spread``,
        ``runs``, ``match``, ``chosen``; ``compute_s`` (their sum), ``processing_s``
        (the compute spread over the threads as efficiently as the latest earlier run
        managed), ``duration_s``
        (with that run's time outside processing: cluster start, planning, finishing),
        ``history_runs``, ``missing`` (nodes without a history), ``threads``,
        ``workers``.
    """
    fits = history_fits(history, nodes)
    out: dict[str, Any] = {"nodes": {}, "threads": int(threads), "workers": int(workers),
                           "missing": [n for n in nodes if n not in fits]}
    for node, entry in fits.items():
        model: NodeFit = entry["fit"]
        w = work.get(node) or NodeWork()
        units = w.unit_total(model.unit)
        running_on = min(max(1, workers), max(1, chunks)) if w.items else 0
        seconds = model.total(w.items, units) + model.warmup_s * running_on
        out["nodes"][node] = {
            "seconds": round(seconds, 3), "unit": model.unit,
            "fixed_s": model.fixed_s, "per_unit_s": model.per_unit_s,
            "units": round(units, 6), "items": w.items, "skipped": w.skipped,
            "work": {"in_mp": round(w.in_mp, 6), "out_mp": round(w.out_mp, 6),
                     "bytes_in": round(w.bytes_in)},
            "warmup_s": round(model.warmup_s, 6), "spread": round(model.spread, 4),
            "runs": entry["runs"], "match": entry["match"], "chosen": model.chosen,
        }
    out["history_runs"] = max((e["runs"] for e in fits.values()), default=0)
    if not out["nodes"]:
        out.update(compute_s=None, processing_s=None, duration_s=None)
        return out
    compute = math.fsum(e["seconds"] for e in out["nodes"].values())
    run = _run_level(history[history["node_id"].isin(list(nodes))]
                     if history is not None and len(history) else history)
    efficiency = 1.0
    if run and run["threads"] and run["processing_s"] > 0 and run["busy_s"] > 0:
        efficiency = min(1.0, max(0.05, run["busy_s"] / (run["threads"] * run["processing_s"])))
    processing = compute / (max(1, threads) * efficiency)
    overhead = (run or {}).get("overhead_s", 0.0)
    out.update(compute_s=round(compute, 3), processing_s=round(processing, 3),
               duration_s=round(processing + overhead, 3),
               efficiency=round(efficiency, 4), overhead_s=round(overhead, 3))
    return out


def predict_from(history_dir: str | os.PathLike[str], workflow: str | None,
                 tasks: Mapping[str, Any], work: Mapping[str, NodeWork], *, threads: int,
                 workers: int, chunks: int) -> dict[str, Any]:
    """:func:`predict` from a history directory: this workflow's runs, else any run with
    the same ops."""
    from dagflow.monitor import history as hist

    h = hist.load(Path(history_dir), workflow=workflow)
    if h.empty:
        h = hist.load(Path(history_dir))
    nodes = {nid: (t.op, t.kind) for nid, t in tasks.items()}
    return predict(h, nodes, work, threads=threads, workers=workers, chunks=chunks)


def own_fits(units: Any, kinds: Mapping[str, str | None],
             prefer: Mapping[str, NodeFit] | None = None) -> dict[str, NodeFit]:
    """Each node's cost model fitted on a run's own items (:func:`item_units`); with
    ``prefer``, in the unit the history chose for the node."""
    out: dict[str, NodeFit] = {}
    for node, sub in units.groupby("node_id", sort=False):
        node = str(node)
        cols = {u: sub[u].to_numpy() for u in ("in_mp", "out_mp", "bytes_in")}
        chosen = (prefer or {}).get(node)
        if chosen is not None and chosen.unit != "item" and chosen.unit in cols:
            cols = {chosen.unit: cols[chosen.unit]}
        model = fit(sub["duration_s"].to_numpy(), cols, kind=kinds.get(node),
                    first=sub["first"].to_numpy())
        if model is not None:
            out[node] = model
    return out
