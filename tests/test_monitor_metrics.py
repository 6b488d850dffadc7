"""Pure aggregation: statistics, robust z, anomalies, trend, critical path, advice, history."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dagflow.monitor import history
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
    found = M.anomalies(df)
    assert found["item_id"].tolist() == [80]
    assert found.loc[0, "rel"] == "img80.jpg"
    assert found.loc[0, "ratio"] == pytest.approx(5.0 / np.median(d))
    assert M.anomalies(rows("few", [1, 1, 100])).empty  # too few items to judge


def test_trend_finds_warmup_and_slowdown():
    warm = [2.0] * 5 + [0.2] * 95
    slow = list(np.linspace(0.1, 0.1, 50)) + list(np.linspace(0.1, 0.5, 50))
    df = pd.concat([rows("load", warm), rows("filter", slow)], ignore_index=True)
    series, findings = M.trend(df, bins=10)
    assert findings["load"]["kind"] == "warm-up"
    assert findings["filter"]["kind"] == "slow-down"
    assert set(series["node_id"]) == {"load", "filter"}
    assert series["count"].sum() == 200


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


NO_ERRORS = pd.DataFrame(columns=["node_id", "error_class", "failed", "retried_items",
                                  "retries"])


def _stats(shares: dict[str, float], count: int = 100) -> pd.DataFrame:
    frames = [rows(n, [s / count] * count) for n, s in shares.items()]
    return M.node_stats(pd.concat(frames, ignore_index=True))


def test_recommendations_each_with_reason_and_effect():
    stats = _stats({"load": 0.4, "blur": 0.5, "save": 0.1})  # ms per item
    nodes = {"load": {"op": "load", "kind": "source"},
             "blur": {"op": "gaussian", "kind": "transform", "device": "auto"},
             "save": {"op": "save", "kind": "sink"}}
    wait = M.waiting(wall_s=100, busy_s=100, threads=4,
                     fine={"load": {"thread-cpu": 8, "thread-noncpu": 32},
                           "blur": {"thread-cpu": 49, "thread-noncpu": 1}})
    recs = M.recommendations(
        stats, nodes=nodes, chunk_size=1, tasks_per_chunk=4, wait=wait,
        memory_peak_fraction=0.9, trend_findings={}, errors=NO_ERRORS,
        gpu_capable={"gaussian": True}, items=100)
    titles = [r.title for r in recs]
    assert "Use larger chunks" in titles
    assert "Run fewer tasks at once per worker" in titles
    assert "Run 'blur' on the GPU" in titles
    assert "More I/O threads for 'load'" in titles
    for r in recs:
        assert r.reason and r.effect
    # a healthy run gets no advice
    calm = M.recommendations(
        _stats({"a": 100.0}), nodes={"a": {"op": "resize"}}, chunk_size=64, tasks_per_chunk=2,
        wait=M.waiting(wall_s=26, busy_s=100, threads=4), memory_peak_fraction=0.3,
        trend_findings={}, errors=NO_ERRORS,
        gpu_capable={}, items=100)
    assert calm == []


def test_waiting_fractions():
    w = M.waiting(wall_s=10, busy_s=10, threads=4, fine={"io": {"thread-cpu": 1,
                                                                "thread-noncpu": 9}},
                  worker_cpu={"w1": 5.0, "w2": 90.0})
    assert w["idle_fraction"] == pytest.approx(0.75)
    assert w["io_bound"] == {"io": pytest.approx(0.9)}
    assert w["idle_workers"] == ["w1"]


def test_history_estimate_prefers_node_then_op():
    h = pd.DataFrame({"node_id": ["blur", "blur", "other"], "op": ["gaussian"] * 3,
                      "s_per_mp": [1.0, 3.0, 10.0], "s_per_item": [0.1, 0.3, 1.0]})
    est = history.estimate(h, {"blur": "gaussian", "new": "gaussian", "x": "resize"},
                           items=10, megapixels={"blur": 2.0})
    assert est["blur"] == {"seconds": 4.0, "basis": "s_per_mp", "runs": 2, "match": "node"}
    assert est["new"]["match"] == "op" and est["new"]["basis"] == "s_per_item"
    assert est["new"]["seconds"] == pytest.approx(3.0)
    assert "x" not in est
    assert history.estimate(h.iloc[:0], {"blur": "gaussian"}, items=1) == {}
