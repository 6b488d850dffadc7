"""What a node's time scales with: a per-node cost model fitted on per-item measurements.

A node's seconds for an item are modelled as ``fixed_s + per_unit_s * u``, where the
unit ``u`` is one of :data:`UNITS`:

``item``      nothing: every item costs the same (``per_unit_s`` is 0)
``in_mp``     megapixels of the image the node receives
``out_mp``    megapixels of the image it produces (a sink: the one it encodes)
``bytes_in``  bytes of the input file (a source)

The unit is chosen from the evidence: :func:`fit` fits each candidate that varies in the
samples (robustly: least squares, then again without the items more than 3.5 robust
standard deviations off, with both coefficients kept non-negative) and keeps the one
whose residuals are smallest, a slope only where it explains clearly more than a
constant does. Where no candidate varies (a corpus of one image size), the evidence
cannot choose, and the node's natural unit (:func:`default_unit`) is taken through the
origin, so that a batch of other sizes still scales.

The first item a node runs on each worker process carries one-time costs (imports,
caches): :func:`fit` leaves those items out and reports their excess as ``warmup_s`` per
worker. Pure numpy; no pandas, no files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["UNITS", "NodeFit", "candidate_units", "default_unit", "fit", "robust_scale"]

#: The units a node's time may scale with.
UNITS = ("item", "in_mp", "out_mp", "bytes_in")
#: Fewest samples a slope is fitted on.
MIN_SAMPLES = 6
#: A slope is kept only when it shrinks the residuals by at least this fraction.
MIN_GAIN = 0.15
#: Coefficient of variation below which a unit does not vary enough to be judged.
MIN_CV = 0.05
#: Residuals farther than this many robust standard deviations are left out of a refit.
OUTLIER_Z = 3.5


def default_unit(kind: str | None) -> str:
    """The unit a node's time is assumed to follow when the samples cannot tell:
    a source reads a file (``bytes_in``), an aggregate takes a row per item (``item``),
    every other node works on pixels (``in_mp``)."""
    if kind == "source":
        return "bytes_in"
    if kind == "aggregate":
        return "item"
    return "in_mp"


def candidate_units(kind: str | None) -> tuple[str, ...]:
    """The units judged for a node of ``kind`` (a source's input pixels are not known
    from its records; only a source reads a file)."""
    if kind == "source":
        return ("item", "out_mp", "bytes_in")
    return ("item", "in_mp", "out_mp")


def robust_scale(x: np.ndarray) -> float:
    """1.4826 x the median absolute deviation (a standard deviation for normal data)."""
    if x.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


@dataclass(frozen=True)
class NodeFit:
    """A node's cost model.

    Attributes
    ----------
    unit
        What its time scales with (one of :data:`UNITS`).
    fixed_s
        Seconds per item whatever its size.
    per_unit_s
        Seconds per unit (per megapixel, per byte; 0 for ``item``).
    samples
        Items the fit rests on (warm-up items and outliers excluded).
    spread
        Robust relative spread of the items around the fit (0.1: typically 10 % off).
    warmup_s
        Extra seconds of the first item on each worker process, on average.
    chosen
        ``"evidence"`` when the samples chose the unit, ``"default"`` when they could
        not (no unit varied).
    """

    unit: str
    fixed_s: float
    per_unit_s: float
    samples: int
    spread: float = 0.0
    warmup_s: float = 0.0
    chosen: str = "evidence"

    def expected(self, units: Mapping[str, Any] | None = None, n: int = 1) -> np.ndarray:
        """Expected seconds per item, from the items' units (columns by unit name)."""
        if self.unit == "item" or not self.per_unit_s:
            return np.full(n, self.fixed_s, dtype=float)
        u = np.asarray((units or {})[self.unit], dtype=float)
        return self.fixed_s + self.per_unit_s * np.nan_to_num(u, nan=0.0)

    def total(self, items: int, unit_total: float) -> float:
        """Seconds for ``items`` items whose units sum to ``unit_total``."""
        return self.fixed_s * items + (self.per_unit_s * unit_total
                                       if self.unit != "item" else 0.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _line(x: np.ndarray, y: np.ndarray, origin: bool) -> tuple[float, float]:
    """Least squares ``y = a + b x`` with ``a, b >= 0`` (``a = 0`` through the origin)."""
    if origin:
        sxx = float(np.dot(x, x))
        return 0.0, max(0.0, float(np.dot(x, y)) / sxx) if sxx > 0 else 0.0
    xm, ym = float(x.mean()), float(y.mean())
    sxx = float(np.dot(x - xm, x - xm))
    b = float(np.dot(x - xm, y - ym)) / sxx if sxx > 0 else 0.0
    a = ym - b * xm
    if b < 0:
        return max(0.0, ym), 0.0
    if a < 0:
        return _line(x, y, True)
    return a, b


def _robust_line(x: np.ndarray, y: np.ndarray, origin: bool = False
                 ) -> tuple[float, float, np.ndarray]:
    """:func:`_line`, then again without the outliers; returns ``a, b`` and the inliers."""
    a, b = _line(x, y, origin)
    keep = np.ones(len(y), dtype=bool)
    for _ in range(2):
        resid = y - (a + b * x)
        scale = robust_scale(resid)
        if scale <= 0:
            break
        inliers = np.abs(resid - np.median(resid)) <= OUTLIER_Z * scale
        if inliers.all() or inliers.sum() < max(3, len(y) // 2) or (inliers == keep).all():
            break
        keep = inliers
        a, b = _line(x[keep], y[keep], origin)
    return a, b, keep


def _score(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean absolute residual: what a fit leaves unexplained."""
    return float(np.mean(np.abs(y - pred))) if y.size else math.inf


def fit(seconds: Any, units: Mapping[str, Any], *, kind: str | None = None,
        first: Any = None) -> NodeFit | None:
    """The cost model that best explains ``seconds`` per item.

    Parameters
    ----------
    seconds
        Each item's seconds in the node.
    units
        The items' units, by unit name (:data:`UNITS` but ``item``); a unit missing, or
        unknown (NaN) for some item, is not a candidate.
    kind
        The node's kind (``source``, ``transform``, ``sink``, ``aggregate``): its
        candidates (:func:`candidate_units`) and its default unit.
    first
        Whether each item was the first the node ran on its worker process (left out of
        the fit; their excess becomes ``warmup_s``).

    Returns
    -------
    NodeFit or None
        ``None`` without any sample.

    Examples
    --------
    >>> import numpy as np
    >>> mp = np.array([1.0, 2.0, 4.0, 8.0, 1.5, 3.0, 6.0, 2.5])
    >>> f = fit(0.01 + 0.05 * mp, {"in_mp": mp, "out_mp": np.full(8, 0.2)})
    >>> f.unit, round(f.fixed_s, 4), round(f.per_unit_s, 4)
    ('in_mp', 0.01, 0.05)
    """
    y = np.asarray(seconds, dtype=float)
    if y.size == 0:
        return None
    warm = np.zeros(y.size, dtype=bool) if first is None else np.asarray(first, dtype=bool)
    if warm.all() or y.size - warm.sum() < 2:
        warm = np.zeros(y.size, dtype=bool)  # too few items to set the first ones aside
    yw = y[~warm]
    columns: dict[str, np.ndarray] = {}
    for unit in candidate_units(kind):
        if unit == "item" or unit not in units:
            continue
        col = np.asarray(units[unit], dtype=float)
        if col.shape != y.shape or not np.isfinite(col).all() or (col < 0).any():
            continue
        columns[unit] = col
    # a constant per item, robustly: the median of the warm items
    const = float(np.median(yw))
    best = ("item", const, 0.0, _score(yw, np.full(yw.size, const)), np.ones(yw.size, bool))
    varying = {u: c for u, c in columns.items()
               if c[~warm].mean() > 0 and c[~warm].std() / c[~warm].mean() >= MIN_CV}
    if yw.size >= MIN_SAMPLES:
        for unit, col in varying.items():
            x = col[~warm]
            a, b, keep = _robust_line(x, yw)
            if b <= 0:
                continue
            score = _score(yw, a + b * x)
            if score < best[3] * (1 - MIN_GAIN) or (best[0] != "item" and score < best[3]):
                best = (unit, a, b, score, keep)
    chosen = "evidence"
    if best[0] == "item" and not varying:
        unit = default_unit(kind)
        if unit in columns and columns[unit][~warm].mean() > 0:
            # the samples cannot tell: proportional to the node's natural unit
            x = columns[unit][~warm]
            _, b, keep = _robust_line(x, yw, origin=True)
            if b > 0:
                best = (unit, 0.0, b, _score(yw, b * x), keep)
                chosen = "default"
    unit, a, b, _, keep = best
    model = NodeFit(unit, a, b, int(np.count_nonzero(keep)), chosen=chosen)
    pred_w = model.expected({k: v[~warm] for k, v in columns.items()}, int(yw.size))
    rel = (yw - pred_w) / np.where(pred_w > 0, pred_w, np.nan)
    rel = rel[np.isfinite(rel)]
    spread = robust_scale(rel) if rel.size else 0.0
    warmup = 0.0
    if warm.any():
        pred_f = model.expected({k: v[warm] for k, v in columns.items()}, int(warm.sum()))
        warmup = float(np.mean(np.maximum(0.0, y[warm] - pred_f)))
    return NodeFit(unit, float(a), float(b), model.samples, float(spread), warmup, chosen)
