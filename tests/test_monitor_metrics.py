"""Pure aggregation: statistics, robust z, anomalies, critical path, throughput, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dagflow.monitor import metrics as M


def rows(node: str, durations, *, start: float = 1000.0, status: str = "ok", **extra):
    durations = list(durations)
    return pd.DataFrame({
        "item_id": np.arange(len(durations)), "node_id": node, "status": status,
        "duration_s": durations, "started": start + np.arange(len(durations)) * 0.1,
        "attempts": extra.pop("attempts", 1), "error_class": extra.pop("error_class", None),
        "megapixels": extra.pop("megapixels", 1.0), **extra,
    })


def test_node_stats_match_numpy():
    rng = np.random.default_rng(1)
    a, b = rng.gamma(2.0, 0.05, 300), rng.gamma(5.0, 0.02, 120)
    df = pd.concat([rows("a", a), rows("b", b),
                    rows("b", [0.0] * 5, status="upstream_failed")], ignore_index=True)
    stats = M.node_stats(df, order=["b", "a"])
    assert list(stats.index) == ["b", "a"]
    for node, d in (("a", a), ("b", b)):
        s = stats.loc[node]
        assert s["count"] == len(d)
        for q, col in ((50, "p50"), (90, "p90"), (95, "p95"), (99, "p99")):
            assert s[col] == pytest.approx(np.percentile(d, q))
        assert s["mean"] == pytest.approx(d.mean())
        assert s["std"] == pytest.approx(d.std())
        assert s["max"] == pytest.approx(d.max())
    assert stats.loc["b", "upstream_failed"] == 5
    assert stats["share"].sum() == pytest.approx(1.0)
    assert stats.loc["a", "s_per_mp"] == pytest.approx(a.sum() / len(a))


def test_robust_z_and_anomalies():
    assert M.robust_z([]).size == 0
    assert (M.robust_z([2.0] * 10) == 0).all()
    d = [0.10] * 40 + [0.11] * 40 + [5.0]
    z = M.robust_z(d)
    assert abs(z[-1]) > 100 and np.abs(z[:-1]).max() < 3.5
    df = rows("blur", d, rel=[f"img{i}.jpg" for i in range(len(d))], worker="w1")
    found = M.anomalies(df.assign(norm=df["duration_s"] / 0.1))
    assert found["item_id"].tolist() == [80]
    assert found.loc[0, "rel"] == "img80.jpg"
    assert found.loc[0, "ratio"] == pytest.approx(5.0 / np.median(d))
    few = rows("few", [1, 1, 100])
    assert M.anomalies(few.assign(norm=few["duration_s"])).empty  # too few items to judge


def test_critical_path_diamond():
    parents = {"load": [], "a": ["load"], "b": ["load"], "join": ["a", "b"], "save": ["join"]}
    path, length = M.critical_path(parents, {"load": 1, "a": 2, "b": 5, "join": 1, "save": 1})
    assert path == ["load", "b", "join", "save"]
    assert length == 8
    assert M.critical_path({}, {}) == ([], 0.0)


def test_throughput_series_counts_every_item_once():
    df = pd.concat([rows("a", [0.1] * 50), rows("b", [0.2] * 50)], ignore_index=True)
    series = M.throughput_series(df, bins=10)
    assert series["items"].sum() == 50
    assert (series["items_per_s"] >= 0).all()


def test_errors_table():
    df = pd.concat([
        rows("load", [0.1] * 3, status="failed", error_class="bad_input"),
        rows("save", [0.1] * 2, status="ok", attempts=3),
        rows("save", [0.1] * 1, status="failed", error_class="transient", attempts=3),
    ], ignore_index=True)
    t = M.errors_table(df).set_index(["node_id", "error_class"])
    assert t.loc[("load", "bad_input"), "failed"] == 3
    assert t.loc[("save", "transient"), "retries"] == 2
    assert t.loc[("save", "recovered"), "retried_items"] == 2


def test_idle_fraction():
    assert M.idle_fraction(wall_s=10, busy_s=10, threads=4) == pytest.approx(0.75)
    assert M.idle_fraction(wall_s=10, busy_s=10, threads=None) is None
