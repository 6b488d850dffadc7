"""Changes that are more than noise: a trend within a run, a difference between runs.

Both work on items' *normalised* times (seconds over what the node's cost model expects
for the item, :func:`dagflow.monitor.prediction.normalised`), so that a run whose large
images come last, or a run over larger images than the last one, is not read as a
slow-down.

* :func:`trend`: within a run, per node, the Mann-Kendall test (Kendall's tau of the
  chunk medians against time) and the Theil-Sen slope with its 95 % confidence interval,
  on the medians of the node's chunks (items of one chunk run together and are not
  independent). Judged only with at least :data:`MIN_CHUNKS` chunks and
  :data:`MIN_ITEMS` items; reported only when the test rejects "no trend" at
  :data:`ALPHA`, the interval excludes 0 and the change over the run is at least
  :data:`MIN_CHANGE`.
* :func:`compare`: between this run and earlier runs of the workflow, per node, the
  Mann-Whitney U test on the items' normalised times; the change is the ratio of the
  medians.

The tests are written here in numpy (:func:`mann_kendall`, :func:`theil_sen`,
:func:`mann_whitney`: normal approximations with the tie corrections, as in scipy's),
because importing ``scipy.stats`` takes longer than the whole report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["ALPHA", "MIN_CHANGE", "MIN_CHUNKS", "MIN_ITEMS", "compare", "mann_kendall",
           "mann_whitney", "theil_sen", "trend"]

#: Fewest chunks of a node a trend is judged on.
MIN_CHUNKS = 12
#: Fewest items of a node a trend is judged on.
MIN_ITEMS = 40
#: Significance level of both tests.
ALPHA = 0.01
#: Smallest change over a run reported as a trend (0.25: a quarter slower or faster).
MIN_CHANGE = 0.25
#: Smallest difference between runs called faster or slower.
MIN_DIFFERENCE = 0.10
#: Items per group when the records do not say which chunk an item was in.
_WINDOW = 8
#: Most groups a trend is tested on (consecutive chunks are merged above it).
_MAX_GROUPS = 600
#: The normal distribution's 97.5 % quantile (a two-sided 95 % interval).
_Z975 = 1.959963984540054


def _two_sided_p(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2.0))


def _ties(x: np.ndarray) -> np.ndarray:
    """The sizes of the groups of equal values in ``x``."""
    _, counts = np.unique(x, return_counts=True)
    return counts[counts > 1].astype(float)


def mann_kendall(y: np.ndarray) -> tuple[float, float, float]:
    """The Mann-Kendall trend test of ``y`` in its order: ``(S, tau, p)``.

    ``S`` sums the signs of all later-minus-earlier differences; its variance carries the
    tie correction, and ``p`` (two-sided) is from the normal approximation with a
    continuity correction.

    Examples
    --------
    >>> s, tau, p = mann_kendall(np.arange(20.0))
    >>> s, tau, p < 1e-6
    (190.0, 1.0, True)
    """
    y = np.asarray(y, dtype=float)
    n = y.size
    if n < 3:
        return 0.0, 0.0, 1.0
    i, j = np.triu_indices(n, k=1)
    s = float(np.sign(y[j] - y[i]).sum())
    t = _ties(y)
    var = (n * (n - 1) * (2 * n + 5) - float((t * (t - 1) * (2 * t + 5)).sum())) / 18.0
    if var <= 0:
        return s, 0.0, 1.0
    z = (s - math.copysign(1.0, s)) / math.sqrt(var) if s else 0.0
    return s, s / (n * (n - 1) / 2), _two_sided_p(z)


def theil_sen(y: np.ndarray, x: np.ndarray) -> tuple[float, float, float]:
    """The Theil-Sen slope of ``y`` against ``x`` with Sen's 95 % confidence interval:
    ``(slope, low, high)``.

    Examples
    --------
    >>> x = np.arange(30.0)
    >>> slope, low, high = theil_sen(2.0 * x + np.sin(x), x)
    >>> round(slope, 1), low < 2.0 < high
    (2.0, True)
    """
    y, x = np.asarray(y, dtype=float), np.asarray(x, dtype=float)
    i, j = np.triu_indices(x.size, k=1)
    dx = x[j] - x[i]
    ok = dx != 0
    slopes = np.sort((y[j] - y[i])[ok] / dx[ok])
    m = slopes.size
    if m == 0:
        return math.nan, math.nan, math.nan
    n = x.size
    t = _ties(x)
    var = (n * (n - 1) * (2 * n + 5) - float((t * (t - 1) * (2 * t + 5)).sum())) / 18.0
    c = _Z975 * math.sqrt(max(var, 0.0))
    low = int(np.clip(round((m - c) / 2.0), 0, m - 1))
    high = int(np.clip(round((m + c) / 2.0) - 1, 0, m - 1))
    return float(np.median(slopes)), float(slopes[low]), float(slopes[high])


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    first = np.r_[True, sorted_x[1:] != sorted_x[:-1]]
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], x.size]
    average = (starts + ends + 1) / 2.0  # ranks starts+1 .. ends, averaged
    ranks = np.empty(x.size)
    ranks[order] = average[group]
    return ranks


def mann_whitney(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The Mann-Whitney U test of ``a`` against ``b``: ``(U of a, p)``, two-sided, from
    the normal approximation with the tie and continuity corrections.

    Examples
    --------
    >>> u, p = mann_whitney(np.arange(30.0), np.arange(30.0) + 15)
    >>> u, p < 1e-5
    (112.5, True)
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n1, n2 = a.size, b.size
    if n1 == 0 or n2 == 0:
        return math.nan, 1.0
    ranks = _ranks(np.concatenate([a, b]))
    u = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2.0)
    n = n1 + n2
    t = _ties(np.concatenate([a, b]))
    var = n1 * n2 / 12.0 * ((n + 1) - float((t ** 3 - t).sum()) / (n * (n - 1)))
    if var <= 0:
        return u, 1.0
    z = (abs(u - n1 * n2 / 2.0) - 0.5) / math.sqrt(var)
    return u, min(1.0, _two_sided_p(max(z, 0.0)))

TEST = ("Mann-Kendall test (Kendall's tau of chunk medians against time), Theil-Sen slope "
        "with a 95% confidence interval")


def _groups(sub: pd.DataFrame) -> pd.Series:
    if "chunk" in sub and sub["chunk"].notna().any() and sub["chunk"].nunique() > 1:
        return sub["chunk"]
    order = sub["started"].rank(method="first").astype(int) - 1
    return order // _WINDOW


def trend(units: pd.DataFrame, *, t0: float | None = None
          ) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """Per node, the normalised time of its chunks over the run, and whether it drifts.

    Parameters
    ----------
    units
        Items with ``node_id``, ``started``, ``norm`` (normalised time) and ``chunk``.
    t0
        The run's start (default: its first item's).

    Returns
    -------
    series : pandas.DataFrame
        ``node_id``, ``t`` (seconds since ``t0``, the chunk's median start),
        ``median`` (the chunk's median normalised time), ``count``.
    findings : dict
        Per node: ``kind`` (``"slow-down"``, ``"speed-up"`` or ``None``), ``change``
        (over the run, relative to the node's median), ``ci`` (its 95 % interval),
        ``p_value``, ``tau``, ``chunks``, ``items``, ``judged`` and, when not judged,
        ``why``.
    """
    columns = ["node_id", "t", "median", "count"]
    r = units[np.isfinite(units["norm"].astype(float))] if len(units) else units
    if r.empty:
        return pd.DataFrame(columns=columns), {}
    t0 = float(r["started"].min()) if t0 is None else t0
    series, findings = [], {}
    for node, sub in r.groupby("node_id", sort=False):
        g = sub.groupby(_groups(sub))
        per = pd.DataFrame({"t": g["started"].median() - t0, "median": g["norm"].median(),
                            "count": g.size()}).sort_values("t").reset_index(drop=True)
        if len(per) > _MAX_GROUPS:  # merge consecutive chunks
            merged = per.groupby(np.arange(len(per)) * _MAX_GROUPS // len(per))
            per = pd.DataFrame({"t": merged["t"].median(), "median": merged["median"].median(),
                                "count": merged["count"].sum()})
        series.append(per.assign(node_id=node))
        info: dict[str, Any] = {"kind": None, "change": None, "ci": None, "p_value": None,
                                "tau": None, "chunks": len(per), "items": len(sub),
                                "judged": False, "test": TEST}
        if len(per) < MIN_CHUNKS or len(sub) < MIN_ITEMS:
            info["why"] = (f"{len(per)} chunks and {len(sub)} items: a trend is judged on "
                           f"at least {MIN_CHUNKS} chunks and {MIN_ITEMS} items")
            findings[str(node)] = info
            continue
        t = per["t"].to_numpy(dtype=float)
        v = per["median"].to_numpy(dtype=float)
        level = float(np.median(v))
        span = float(t.max() - t.min())
        if level <= 0 or span <= 0 or np.ptp(v) == 0:
            info.update(judged=True, why="no variation to judge")
            findings[str(node)] = info
            continue
        _, tau, p = mann_kendall(v)
        slope, low, high = theil_sen(v, t)
        change, ci = slope * span / level, (low * span / level, high * span / level)
        info.update(judged=True, change=float(change), ci=[float(ci[0]), float(ci[1])],
                    p_value=float(p), tau=float(tau))
        if p < ALPHA and ci[0] > 0 and change >= MIN_CHANGE:
            info["kind"] = "slow-down"
        elif p < ALPHA and ci[1] < 0 and change <= -MIN_CHANGE:
            info["kind"] = "speed-up"
        findings[str(node)] = info
    out = pd.concat(series, ignore_index=True)[columns] if series else \
        pd.DataFrame(columns=columns)
    return out, findings


def compare(current: Mapping[str, np.ndarray], previous: Mapping[str, np.ndarray], *,
            runs: Mapping[str, int] | None = None, units: Mapping[str, str] | None = None
            ) -> pd.DataFrame:
    """This run's items against earlier runs', per node (Mann-Whitney U, two-sided).

    Parameters
    ----------
    current, previous
        Per node, the items' normalised times in this run and in the earlier runs (the
        same cost model for both).
    runs
        Per node, how many earlier runs ``previous`` pools.
    units
        Per node, the unit its times were normalised by.

    Returns
    -------
    pandas.DataFrame
        ``node_id``, ``runs``, ``items``, ``previous_items``, ``median``,
        ``previous_median``, ``change`` (this run's median over the earlier one's, less
        1: +0.2 is 20 % slower), ``p_value``, ``significant``, ``verdict`` (``slower``,
        ``faster``, ``no significant change``, ``too few items``), ``unit``.
    """
    columns = ["node_id", "runs", "items", "previous_items", "median", "previous_median",
               "change", "p_value", "significant", "verdict", "unit"]
    rows = []
    for node, cur in current.items():
        prev = previous.get(node)
        if prev is None:
            continue
        a = np.asarray(cur, dtype=float)
        b = np.asarray(prev, dtype=float)
        a, b = a[np.isfinite(a) & (a > 0)], b[np.isfinite(b) & (b > 0)]
        row: dict[str, Any] = {"node_id": node, "runs": (runs or {}).get(node),
                               "items": a.size, "previous_items": b.size,
                               "unit": (units or {}).get(node)}
        if a.size < 5 or b.size < 5:
            row.update(median=float(np.median(a)) if a.size else math.nan,
                       previous_median=float(np.median(b)) if b.size else math.nan,
                       change=math.nan, p_value=math.nan, significant=False,
                       verdict="too few items")
            rows.append(row)
            continue
        ma, mb = float(np.median(a)), float(np.median(b))
        _, p = mann_whitney(a, b)
        change = ma / mb - 1.0 if mb > 0 else math.nan
        significant = bool(p < ALPHA and abs(change) >= MIN_DIFFERENCE)
        verdict = ("slower" if change > 0 else "faster") if significant else \
            "no significant change"
        row.update(median=ma, previous_median=mb, change=change, p_value=p,
                   significant=significant, verdict=verdict)
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)
