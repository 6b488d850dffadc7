"""Pure aggregation of a run's measurements: statistics, anomalies, critical path,
throughput, errors.

Every function takes plain data (a DataFrame of metric rows, dicts) and returns plain
data; nothing here reads files, talks to a cluster or imports Bokeh, so the report, the
JSON output and a notebook all share the same figures.

*Item durations* are those of the rows where a node's op ran on an item (status ``ok``
or ``failed``); ``skipped`` and ``upstream_failed`` rows took no time. Percentiles use
numpy's default (linear) method, ``std`` is the population standard deviation (numpy's
``ddof=0``).
"""

from __future__ import annotations

import graphlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "RAN_STATUSES",
    "anomalies",
    "critical_path",
    "errors_table",
    "idle_fraction",
    "node_stats",
    "robust_z",
    "throughput_series",
]

RAN_STATUSES = ("ok", "failed")
QUANTILES = {"p50": 0.50, "p90": 0.90, "p95": 0.95, "p99": 0.99}
#: Robust z-score above which an item is an anomaly (Iglewicz and Hoaglin's 3.5).
ANOMALY_Z = 3.5
#: An anomaly also takes at least this many times its node's typical normalised time.
ANOMALY_RATIO = 3.0


def ran(df: pd.DataFrame) -> pd.DataFrame:
    """The rows where the op ran on the item."""
    return df[df["status"].isin(RAN_STATUSES)]


def node_stats(df: pd.DataFrame, order: Sequence[str] | None = None) -> pd.DataFrame:
    """Per node: counts by status, duration statistics, throughput, time share.

    Parameters
    ----------
    df
        Metric (or record) rows: ``node_id``, ``status``, ``duration_s``, ``started``,
        optionally ``megapixels``, ``bytes_in``, ``bytes_out``, ``attempts``.
    order
        Node ids in the order to list them (topological); others follow.

    Returns
    -------
    pandas.DataFrame
        Indexed by node: ``count`` (items the op ran on), ``ok``, ``failed``, ``skipped``,
        ``upstream_failed``, ``mean``, ``p50``, ``p90``, ``p95``, ``p99``, ``max``,
        ``std``, ``total_s``, ``share`` (of all nodes' seconds), ``throughput`` (items
        per second while the node was active), ``retries``, ``megapixels``,
        ``s_per_mp``, ``bytes_in``, ``bytes_out``.

    Examples
    --------
    >>> df = pd.DataFrame({"node_id": ["a"] * 4, "status": ["ok"] * 4,
    ...                    "duration_s": [1.0, 2.0, 3.0, 4.0], "started": [0, 1, 2, 3]})
    >>> node_stats(df).loc["a", ["count", "p50", "max", "total_s"]].tolist()
    [4.0, 2.5, 4.0, 10.0]
    """
    nodes = list(order or [])
    nodes += [n for n in pd.unique(df["node_id"]) if n not in nodes]
    rows = []
    grand = float(ran(df)["duration_s"].sum()) or 1.0
    for node in nodes:
        sub = df[df["node_id"] == node]
        r = ran(sub)
        d = r["duration_s"].to_numpy(dtype=float)
        status = sub["status"].value_counts()
        row: dict[str, Any] = {"node_id": node, "count": float(len(d))}
        for s in ("ok", "failed", "skipped", "upstream_failed"):
            row[s] = int(status.get(s, 0))
        if len(d):
            qs = np.percentile(d, [q * 100 for q in QUANTILES.values()])
            row.update(mean=float(d.mean()), **{k: float(v) for k, v in zip(QUANTILES, qs,
                                                                               strict=True)},
                       max=float(d.max()), std=float(d.std()))
            span = float((r["started"] + r["duration_s"]).max() - r["started"].min())
            row["throughput"] = len(d) / span if span > 0 else math.nan
        else:
            row.update(mean=math.nan, max=math.nan, std=math.nan, throughput=math.nan,
                       **dict.fromkeys(QUANTILES, math.nan))
        row["total_s"] = float(d.sum())
        row["share"] = row["total_s"] / grand
        row["retries"] = int((r["attempts"].fillna(0) - 1).clip(lower=0).sum()) \
            if "attempts" in r else 0
        mp = float(r["megapixels"].fillna(0).sum()) if "megapixels" in r else 0.0
        row["megapixels"] = mp
        row["s_per_mp"] = row["total_s"] / mp if mp > 0 else math.nan
        for col in ("bytes_in", "bytes_out"):
            row[col] = int(sub[col].fillna(0).sum()) if col in sub else 0
        rows.append(row)
    columns = ["node_id", "count", "ok", "failed", "skipped", "upstream_failed", "mean",
               *QUANTILES, "max", "std", "total_s", "share", "throughput", "retries",
               "megapixels", "s_per_mp", "bytes_in", "bytes_out"]
    return pd.DataFrame(rows, columns=columns).set_index("node_id")


def robust_z(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Robust z-scores: ``0.6745 (x - median) / MAD``.

    With a zero MAD (more than half the values equal) the mean absolute deviation
    (scaled by 1.2533) stands in; with no spread at all every score is 0.

    Examples
    --------
    >>> robust_z([1.0, 1.1, 0.9, 1.0, 10.0]).round(1).tolist()
    [0.0, 0.7, -0.7, 0.0, 60.7]
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return x
    med = np.median(x)
    mad = np.median(np.abs(x - med))
    if mad > 0:
        return 0.6745 * (x - med) / mad
    meanad = np.mean(np.abs(x - med))
    if meanad > 0:
        return (x - med) / (1.2533 * meanad)
    return np.zeros_like(x)


def anomalies(units: pd.DataFrame, *, threshold: float = ANOMALY_Z,
              min_ratio: float = ANOMALY_RATIO, limit: int = 200, min_items: int = 8,
              min_excess_s: float = 0.02, contended: bool = False) -> pd.DataFrame:
    """Items far slower than their node's other items for the work they brought, worst
    first.

    Parameters
    ----------
    units
        The items where an op ran, with ``norm`` (seconds over what the node's cost model
        expects for the item: :func:`dagflow.monitor.prediction.normalised`),
        ``duration_s`` and optionally ``item_id``, ``rel``, ``worker``, ``started``,
        ``unit``.

    An item is an anomaly when the robust z-score of its log normalised time exceeds
    ``threshold``, its normalised time is at least ``min_ratio`` times its node's median,
    and it took at least ``min_excess_s`` seconds more than that median implies (so that
    microsecond jitter in a fast node is not reported). Only nodes with at least
    ``min_items`` items are judged. ``ratio`` is the item's normalised time over its
    node's median: how many times slower it was than its peers for its size;
    ``expected_s`` what it would have taken at their pace.

    With ``contended`` (other work held the CPUs: threads waited for a CPU as long as
    they ran or longer), wall times say more about the wait than about the item, so the
    items are judged on their CPU time instead: ``cpu_norm`` (CPU seconds over what the
    node's cost model fitted on CPU seconds expects) and ``cpu_s``. An item that waited
    on storage while the machine was busy is then not reported.
    """
    columns = ["node_id", "item_id", "rel", "worker", "started", "duration_s", "expected_s",
               "ratio", "z", "unit"]
    out = []
    by_cpu = contended and "cpu_norm" in units and "cpu_s" in units
    for node, sub in units.groupby("node_id", sort=False):
        norm = sub["cpu_norm" if by_cpu else "norm"].to_numpy(dtype=float)
        ok = np.isfinite(norm) & (norm > 0)
        if ok.sum() < min_items:
            continue
        sub, norm = sub[ok], norm[ok]
        z = robust_z(np.log(norm))
        med = float(np.median(norm))
        ratio = norm / med
        d = sub["cpu_s" if by_cpu else "duration_s"].to_numpy(dtype=float)
        typical = d / ratio  # what the item would have taken at its peers' pace
        hit = (z > threshold) & (ratio >= min_ratio) & (d - typical >= min_excess_s)
        if not hit.any():
            continue
        cols = [c for c in ("item_id", "rel", "worker", "started", "duration_s", "unit")
                if c in sub]
        picked = sub.loc[hit, cols].copy()
        picked.insert(0, "node_id", node)
        picked["expected_s"] = (sub["duration_s"].to_numpy(dtype=float) / ratio)[hit]
        picked["ratio"] = ratio[hit]
        picked["z"] = z[hit]
        out.append(picked)
    if not out:
        return pd.DataFrame(columns=columns)
    result = pd.concat(out, ignore_index=True)
    result = result.reindex(columns=[c for c in columns if c in result])
    order = result["z"].sort_values(ascending=False).index
    return result.loc[order].head(limit).reset_index(drop=True)


def critical_path(parents: Mapping[str, Sequence[str]],
                  weight: Mapping[str, float]) -> tuple[list[str], float]:
    """The heaviest path through the workflow's DAG.

    Parameters
    ----------
    parents
        Node id to its parents' ids.
    weight
        Node id to its cost (seconds); missing nodes weigh 0.

    Examples
    --------
    >>> critical_path({"load": [], "a": ["load"], "b": ["load"], "save": ["a"]},
    ...               {"load": 1, "a": 5, "b": 7, "save": 3})
    (['load', 'a', 'save'], 9.0)
    """
    order = list(graphlib.TopologicalSorter({n: list(p) for n, p in parents.items()})
                 .static_order())
    best: dict[str, float] = {}
    prev: dict[str, str | None] = {}
    for node in order:
        ps = [p for p in parents.get(node, ()) if p in best]
        top = max(ps, key=lambda p: best[p], default=None)
        best[node] = float(weight.get(node, 0.0)) + (best[top] if top is not None else 0.0)
        prev[node] = top
    if not best:
        return [], 0.0
    end: str | None = max(best, key=lambda n: best[n])
    length = best[end]
    path = []
    while end is not None:
        path.append(end)
        end = prev[end]
    return path[::-1], length


def throughput_series(df: pd.DataFrame, *, bins: int = 60) -> pd.DataFrame:
    """Items finished per second over the run (an item finishes with its last node).

    Returns ``t`` (seconds since the first item started, bin centre), ``items``,
    ``items_per_s``, ``failed``.
    """
    columns = ["t", "items", "items_per_s", "failed"]
    r = df[df["started"] > 0]
    if r.empty:
        return pd.DataFrame(columns=columns)
    end = (r["started"] + r["duration_s"]).groupby(r["item_id"]).max()
    failed = df[df["status"].isin(("failed", "upstream_failed"))]["item_id"].unique()
    t0 = float(r["started"].min())
    t = end.to_numpy(dtype=float) - t0
    span = max(float(t.max()), 1e-9)
    nb = max(1, min(bins, math.ceil(span) * 4, len(t)))
    edges = np.linspace(0.0, span, nb + 1)
    counts, _ = np.histogram(t, bins=edges)
    fcounts, _ = np.histogram(t[np.isin(end.index.to_numpy(), failed)], bins=edges)
    width = edges[1] - edges[0] if nb else span
    return pd.DataFrame({"t": (edges[:-1] + edges[1:]) / 2, "items": counts,
                         "items_per_s": counts / width if width > 0 else counts,
                         "failed": fcounts}, columns=columns)


def errors_table(df: pd.DataFrame) -> pd.DataFrame:
    """Failures and retries by node and error class."""
    failed = df[df["status"] == "failed"]
    rows: dict[tuple[str, str], dict[str, int]] = {}
    for (node, cls), n in failed.groupby(["node_id", failed["error_class"].fillna("unknown")],
                                         sort=False).size().items():
        rows.setdefault((node, cls), {"failed": 0, "retried_items": 0, "retries": 0})
        rows[(node, cls)]["failed"] = int(n)
    if "attempts" in df:
        retried = ran(df)[ran(df)["attempts"].fillna(0) > 1]
        for (node, cls), sub in retried.groupby(
                ["node_id", retried["error_class"].fillna("recovered")], sort=False):
            entry = rows.setdefault((node, cls), {"failed": 0, "retried_items": 0,
                                                  "retries": 0})
            entry["retried_items"] = len(sub)
            entry["retries"] = int((sub["attempts"] - 1).sum())
    out = [{"node_id": n, "error_class": c, **v} for (n, c), v in rows.items()]
    return pd.DataFrame(out, columns=["node_id", "error_class", "failed", "retried_items",
                                      "retries"])


def idle_fraction(*, wall_s: float, busy_s: float, threads: int | None) -> float | None:
    """Share of the threads' time no op ran (``None`` when the threads are unknown).

    Examples
    --------
    >>> idle_fraction(wall_s=10, busy_s=10, threads=4)
    0.75
    """
    if not threads or wall_s <= 0:
        return None
    return max(0.0, 1.0 - busy_s / (threads * wall_s))
