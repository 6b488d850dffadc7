"""Pure aggregation of a run's measurements: statistics, anomalies, trend, critical path,
where the run waited, and the recommendations derived from them.

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
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "RAN_STATUSES",
    "Recommendation",
    "anomalies",
    "critical_path",
    "errors_table",
    "node_stats",
    "recommendations",
    "robust_z",
    "throughput_series",
    "trend",
    "waiting",
]

RAN_STATUSES = ("ok", "failed")
QUANTILES = {"p50": 0.50, "p90": 0.90, "p95": 0.95, "p99": 0.99}
#: Robust z-score above which an item is an anomaly (Iglewicz and Hoaglin's 3.5).
ANOMALY_Z = 3.5
#: Scheduling cost of one Dask task, seconds (measured; see DESIGN.md).
TASK_OVERHEAD_S = 0.0015


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


def anomalies(df: pd.DataFrame, *, threshold: float = ANOMALY_Z, limit: int = 200,
              min_items: int = 8, min_excess_s: float = 0.005) -> pd.DataFrame:
    """Items whose duration is far outside their node's distribution, worst first.

    An item is an anomaly when its robust z-score exceeds ``threshold`` *and* it is at
    least ``min_excess_s`` seconds away from its node's median (so that microsecond
    jitter in a fast node is not reported). Only nodes with at least ``min_items``
    durations are judged; ``ratio`` is the item's duration over its node's median.
    """
    out = []
    for node, sub in ran(df).groupby("node_id", sort=False):
        if len(sub) < min_items:
            continue
        d = sub["duration_s"].to_numpy(dtype=float)
        z = robust_z(d)
        med = float(np.median(d))
        hit = (np.abs(z) > threshold) & (np.abs(d - med) >= min_excess_s)
        if not hit.any():
            continue
        cols = [c for c in ("item_id", "rel", "worker", "started", "duration_s") if c in sub]
        picked = sub.loc[hit, cols].copy()
        picked.insert(0, "node_id", node)
        picked["z"] = z[hit]
        picked["median_s"] = med
        picked["ratio"] = picked["duration_s"] / med if med > 0 else math.inf
        out.append(picked)
    columns = ["node_id", "item_id", "rel", "worker", "started", "duration_s", "z",
               "median_s", "ratio"]
    if not out:
        return pd.DataFrame(columns=columns)
    result = pd.concat(out, ignore_index=True)
    result = result.reindex(columns=[c for c in columns if c in result])
    order = result["z"].abs().sort_values(ascending=False).index
    return result.loc[order].head(limit).reset_index(drop=True)


def trend(df: pd.DataFrame, *, bins: int = 20) -> tuple[pd.DataFrame, dict[str, dict]]:
    """Median duration per node over time, and what it says (warm-up, slow-down).

    Returns
    -------
    series : pandas.DataFrame
        ``node_id``, ``t`` (seconds since the run's first item, bin centre), ``median_s``,
        ``count``.
    findings : dict
        Per node: ``warmup`` (first bin's median over the node's median), ``slowdown``
        (the last quarter's median over the first half's), and ``kind`` (``"warm-up"``,
        ``"slow-down"`` or ``None``).
    """
    r = ran(df)
    if r.empty:
        return pd.DataFrame(columns=["node_id", "t", "median_s", "count"]), {}
    t0 = float(r["started"].min())
    span = max(float(r["started"].max()) - t0, 1e-9)
    edges = np.linspace(0.0, span, bins + 1)
    series, findings = [], {}
    for node, sub in r.groupby("node_id", sort=False):
        t = sub["started"].to_numpy(dtype=float) - t0
        d = sub["duration_s"].to_numpy(dtype=float)
        idx = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, bins - 1)
        for b in np.unique(idx):
            sel = d[idx == b]
            series.append({"node_id": node, "t": float((edges[b] + edges[b + 1]) / 2),
                           "median_s": float(np.median(sel)), "count": int(sel.size)})
        order = np.argsort(t)
        d_sorted = d[order]
        med = float(np.median(d)) if d.size else 0.0
        info: dict[str, Any] = {"warmup": None, "slowdown": None, "kind": None}
        if d.size >= 8 and med > 0:
            head = d_sorted[: max(2, d.size // 10)]
            info["warmup"] = float(np.median(head) / med)
            first_half = float(np.median(d_sorted[: d.size // 2]))
            last_quarter = float(np.median(d_sorted[-max(2, d.size // 4):]))
            info["slowdown"] = last_quarter / first_half if first_half > 0 else None
            if info["warmup"] >= 2.0:
                info["kind"] = "warm-up"
            if info["slowdown"] is not None and info["slowdown"] >= 1.3:
                info["kind"] = "slow-down"
        findings[str(node)] = info
    return pd.DataFrame(series, columns=["node_id", "t", "median_s", "count"]), findings


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


def waiting(*, wall_s: float, busy_s: float, threads: int | None,
            fine: Mapping[str, Mapping[str, float]] | None = None,
            worker_cpu: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Where the run waited.

    Parameters
    ----------
    wall_s
        The run's wall time.
    busy_s
        Seconds the ops ran, summed over items and nodes.
    threads
        Worker threads of the cluster (``None`` when unknown).
    fine
        Per node, Dask's execute seconds by activity (``thread-cpu``,
        ``thread-noncpu``): a node whose threads spent most of their time off the CPU
        waited on I/O (or on the GIL).
    worker_cpu
        Per worker, mean CPU use in percent of its threads.

    Returns
    -------
    dict
        ``idle_fraction`` of thread time no op ran, ``io_bound`` nodes with their
        non-CPU fraction, ``cpu_fraction`` per node, ``idle_workers`` (mean CPU under
        20 %).
    """
    out: dict[str, Any] = {"wall_s": wall_s, "busy_s": busy_s, "threads": threads,
                           "idle_fraction": None, "cpu_fraction": {}, "io_bound": {},
                           "idle_workers": []}
    if threads and wall_s > 0:
        out["idle_fraction"] = max(0.0, 1.0 - busy_s / (threads * wall_s))
    for node, acts in (fine or {}).items():
        cpu = float(acts.get("thread-cpu", 0.0))
        noncpu = float(acts.get("thread-noncpu", 0.0))
        if cpu + noncpu <= 0:
            continue
        out["cpu_fraction"][node] = cpu / (cpu + noncpu)
        if noncpu / (cpu + noncpu) > 0.5:
            out["io_bound"][node] = noncpu / (cpu + noncpu)
    out["idle_workers"] = sorted(w for w, c in (worker_cpu or {}).items() if c < 20.0)
    return out


@dataclass(frozen=True)
class Recommendation:
    """What to change, why (the figures), and what it should bring."""

    title: str
    reason: str
    effect: str
    setting: str | None = None
    node: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def recommendations(
    stats: pd.DataFrame,
    *,
    nodes: Mapping[str, Mapping[str, Any]],
    chunk_size: float | None,
    tasks_per_chunk: int,
    wait: Mapping[str, Any],
    memory_peak_fraction: float | None,
    trend_findings: Mapping[str, Mapping[str, Any]],
    errors: pd.DataFrame,
    gpu_capable: Mapping[str, bool],
    items: int,
    max_chunk_size: int = 64,
) -> list[Recommendation]:
    """Concrete changes derived from the run's figures, each with reason and effect.

    Parameters
    ----------
    stats
        From :func:`node_stats`.
    nodes
        The run's plan: per node ``op``, ``kind``, ``device``.
    chunk_size
        Items per chunk in this run (mean).
    tasks_per_chunk
        Dask tasks per chunk (nodes plus the records task).
    wait
        From :func:`waiting`.
    memory_peak_fraction
        Highest worker memory over its limit during the run.
    trend_findings
        From :func:`trend`.
    errors
        From :func:`errors_table`.
    gpu_capable
        Per op, whether it has a GPU implementation.
    items
        Items the run processed.
    """
    out: list[Recommendation] = []
    busy = float(stats["total_s"].sum()) if len(stats) else 0.0
    ran_nodes = stats[stats["count"] > 0]
    # 1. scheduling overhead: tasks too short for what a task costs to schedule
    if chunk_size and items and busy > 0:
        chunks = max(1.0, items / chunk_size)
        per_task = busy / (chunks * max(1, len(ran_nodes)))
        overhead = (TASK_OVERHEAD_S * tasks_per_chunk * chunks) / (busy + TASK_OVERHEAD_S
                                                                  * tasks_per_chunk * chunks)
        if overhead > 0.03 and chunk_size < max(max_chunk_size, 256):
            target = int(min(max(2 * chunk_size, math.ceil(chunk_size * 0.05 / per_task)),
                             max(max_chunk_size, 2 * chunk_size), max(1, items)))
            new_overhead = overhead * chunk_size / target
            out.append(Recommendation(
                "Use larger chunks",
                f"a node's task ran {per_task * 1e3:.1f} ms on average for "
                f"{chunk_size:.0f} items, while scheduling a task costs about "
                f"{TASK_OVERHEAD_S * 1e3:.1f} ms: scheduling is about {_pct(overhead)} of "
                "the compute time",
                f"chunk size {target} cuts the overhead to about {_pct(new_overhead)}: "
                f"+{_pct(overhead - new_overhead)} throughput",
                setting=f"--chunk-size {target} (dagflow.chunk-size / max-chunk-size)"))
    # 2. memory pressure
    if memory_peak_fraction is not None and memory_peak_fraction > 0.8:
        out.append(Recommendation(
            "Run fewer tasks at once per worker",
            f"worker memory peaked at {_pct(memory_peak_fraction)} of its limit; Dask "
            "spills at 60-70%, pauses the worker at 80% and restarts it at 95%",
            "fewer threads per worker (or a MEMORY resource per task) keeps workers "
            "below the pause threshold: no spilling, pauses or killed workers",
            setting="--threads-per-worker (dagflow.cluster.threads-per-worker) lower, or "
                    "a larger --memory-limit"))
    # 3. a CPU-bound op that has a GPU implementation
    for node, row in ran_nodes.iterrows():
        plan = nodes.get(str(node), {})
        op = plan.get("op")
        cpu_frac = wait.get("cpu_fraction", {}).get(node)
        if (op and gpu_capable.get(op) and plan.get("device") != "gpu"
                and row["share"] >= 0.25 and (cpu_frac is None or cpu_frac >= 0.6)):
            gain = row["share"] * (1 - 1 / 5)
            out.append(Recommendation(
                f"Run {node!r} on the GPU",
                f"{node!r} ({op}) took {_pct(row['share'])} of all compute time on the CPU"
                + (f", {_pct(cpu_frac)} of it on the CPU" if cpu_frac is not None else "")
                + f"; {op} has a GPU implementation",
                f"at a typical 5x speed-up for filters, about {_pct(gain)} less compute "
                "time for the run",
                setting=f"device: gpu on node {node!r}, on a dask-cuda cluster", node=str(node)))
    # 4. I/O-bound source or sink
    for node, frac in wait.get("io_bound", {}).items():
        if node not in stats.index:
            continue
        row = stats.loc[node]
        kind = nodes.get(node, {}).get("kind")
        if row["share"] < 0.2:
            continue
        verb = "reading" if kind == "source" else "writing" if kind == "sink" else "waiting"
        gain = row["share"] * frac * 0.5
        out.append(Recommendation(
            f"More I/O threads for {node!r}",
            f"{node!r} spent {_pct(frac)} of its time off the CPU ({verb}) and took "
            f"{_pct(row['share'])} of all compute time",
            f"more threads per worker than cores (e.g. 2x) overlap the {verb}: about "
            f"{_pct(gain)} less wall time if the storage keeps up",
            setting="--threads-per-worker (dagflow.cluster.threads-per-worker) up to 2x "
                    "the cores", node=node))
    # 5. idle threads
    idle = wait.get("idle_fraction")
    threads = wait.get("threads")
    if idle is not None and idle > 0.4 and threads and chunk_size:
        chunks = items / chunk_size if chunk_size else 0
        if chunks < 2 * threads:
            smaller = max(1, int(items // (4 * threads)))
            out.append(Recommendation(
                "Use smaller chunks",
                f"threads were idle {_pct(idle)} of the run with only {chunks:.0f} chunks "
                f"for {threads} threads",
                f"chunk size {smaller} gives every thread about 4 chunks: up to "
                f"{_pct(idle * 0.5)} shorter runs",
                setting=f"--chunk-size {smaller}"))
        else:
            out.append(Recommendation(
                "Fewer workers, or find the stall",
                f"threads were idle {_pct(idle)} of the run although there were "
                f"{chunks:.0f} chunks for {threads} threads",
                "a cluster sized to the work costs less for the same run time; if the "
                "idle time comes from I/O, see the I/O recommendation",
                setting="--n-workers"))
    # 6. slow-down and warm-up
    for node, info in trend_findings.items():
        if info.get("kind") == "slow-down" and node in stats.index \
                and stats.loc[node, "share"] >= 0.1:
            out.append(Recommendation(
                f"{node!r} slowed down during the run",
                f"its items took {info['slowdown']:.1f}x longer at the end than in the "
                "first half",
                "restarting workers periodically (distributed.worker.lifetime) or checking "
                "memory growth and storage latency restores the early speed",
                setting="distributed.worker.lifetime.duration", node=node))
        elif info.get("kind") == "warm-up" and node in stats.index \
                and stats.loc[node, "share"] >= 0.1:
            out.append(Recommendation(
                f"{node!r} warms up",
                f"its first items took {info['warmup']:.1f}x its median",
                "a worker preload that imports and warms the op up removes this from "
                "every run; negligible for long runs",
                setting="distributed.worker.preload", node=node))
    # 7. errors
    if len(errors) and items:
        transient = errors[errors["error_class"] == "transient"]
        retries = int(errors["retries"].sum())
        if retries > 0.05 * items:
            out.append(Recommendation(
                "Check the storage behind the retries",
                f"{retries} retries for {items} items"
                + (f", {int(transient['failed'].sum())} items failed transiently"
                   if len(transient) else ""),
                "fixing the flaky storage saves the backoff delays and the failed items",
                setting="dagflow.retry.*"))
        timeouts = errors[errors["error_class"] == "timeout"]
        if len(timeouts) and int(timeouts["failed"].sum()):
            out.append(Recommendation(
                "Look at the timed-out items",
                f"{int(timeouts['failed'].sum())} items hit the per-item timeout",
                "a larger timeout (or tiling for large images) finishes them",
                setting="dagflow.timeout or a node's timeout"))
    return out
