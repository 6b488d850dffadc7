"""Trend within a run and comparison between runs: only what a test says is more than
noise, on normalised times; the tests themselves against scipy's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dagflow.monitor import significance as S
from dagflow.monitor.metrics import anomalies


def chunks(medians, *, per_chunk: int = 8, seconds: float = 0.5, seed: int = 0,
           node: str = "blur") -> pd.DataFrame:
    """Items of chunks run one after the other, each chunk's normalised times around
    its median."""
    rng = np.random.default_rng(seed)
    rows = []
    for c, m in enumerate(medians):
        for k in range(per_chunk):
            rows.append({"node_id": node, "chunk": c * per_chunk, "item_id": c * per_chunk + k,
                         "started": 1000.0 + c * seconds + k * seconds / per_chunk,
                         "norm": m * rng.lognormal(0, 0.1)})
    return pd.DataFrame(rows)


def test_no_trend_is_judged_on_a_handful_of_chunks():
    """A 5-second run of four chunks whose last one is 40x slower: not judged (today's
    "slow-down x4248")."""
    units = chunks([1.0, 1.0, 1.0, 40.0], per_chunk=10)
    _, findings = S.trend(units)
    assert findings["blur"]["kind"] is None and not findings["blur"]["judged"]
    assert "4 chunks" in findings["blur"]["why"]


def test_a_real_drift_is_found_with_its_interval():
    drift = np.linspace(1.0, 1.8, 40)  # 80 % slower by the end
    series, findings = S.trend(chunks(drift))
    f = findings["blur"]
    assert f["kind"] == "slow-down" and f["p_value"] < 1e-6
    assert f["ci"][0] > 0 and f["ci"][0] <= f["change"] <= f["ci"][1]
    assert f["change"] == pytest.approx(0.8 / np.median(drift), rel=0.2)
    assert len(series) == 40
    speed = S.trend(chunks(drift[::-1]))[1]["blur"]
    assert speed["kind"] == "speed-up"


@pytest.mark.parametrize("seed", range(5))
def test_noise_alone_is_no_trend(seed):
    rng = np.random.default_rng(seed)
    _, findings = S.trend(chunks(rng.lognormal(0, 0.2, 40), seed=seed))
    assert findings["blur"]["judged"] and findings["blur"]["kind"] is None


def test_a_small_significant_drift_is_not_reported():
    """Significant but under MIN_CHANGE: a few percent over a run is not a slow-down."""
    _, findings = S.trend(chunks(np.linspace(1.0, 1.1, 60), seed=3))
    assert findings["blur"]["judged"] and findings["blur"]["kind"] is None


def test_the_tests_agree_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(7)
    for _ in range(10):
        a = np.round(rng.gamma(2, 1, 40), 1)
        b = np.round(rng.gamma(2, 1.3, 55), 1)
        u, p = S.mann_whitney(a, b)
        ref = stats.mannwhitneyu(a, b, alternative="two-sided")
        assert (u, p) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-9)
        y = np.round(rng.normal(size=40) + 0.03 * np.arange(40), 1)
        _, tau, p_mk = S.mann_kendall(y)
        assert tau == pytest.approx(ref_tau_of(y), abs=0.02)
        ref_tau = stats.kendalltau(np.arange(40), y)
        assert p_mk == pytest.approx(ref_tau.pvalue, rel=0.15, abs=1e-4)
        slope, low, high = S.theil_sen(y, np.arange(40.0))
        ref_ts = stats.theilslopes(y, np.arange(40.0), method="joint")
        assert slope == pytest.approx(ref_ts.slope)
        assert low <= ref_ts.low_slope + 0.02 and high >= ref_ts.high_slope - 0.02


def test_comparison_finds_a_slower_node_and_not_a_size_mix():
    rng = np.random.default_rng(0)
    before = rng.lognormal(0, 0.1, 300)
    same = rng.lognormal(0, 0.1, 200)
    slower = 1.3 * rng.lognormal(0, 0.1, 200)
    out = S.compare({"a": same, "b": slower}, {"a": before, "b": before},
                    runs={"a": 2, "b": 2}, units={"a": "in_mp", "b": "in_mp"}).set_index("node_id")
    assert out.loc["a", "verdict"] == "no significant change" and not out.loc["a",
                                                                               "significant"]
    assert out.loc["b", "verdict"] == "slower" and out.loc["b", "p_value"] < 1e-10
    assert out.loc["b", "change"] == pytest.approx(0.3, abs=0.05)
    few = S.compare({"a": same[:3]}, {"a": before})
    assert few.loc[0, "verdict"] == "too few items"


def test_normalised_times_make_a_mix_of_sizes_comparable():
    """Raw seconds of a run over larger images differ; normalised by the node's cost
    model they do not."""
    from dagflow.monitor.costmodel import NodeFit
    from dagflow.monitor.prediction import normalised

    rng = np.random.default_rng(1)
    model = NodeFit("in_mp", 0.002, 0.03, 100)
    small = pd.DataFrame({"node_id": "blur", "in_mp": rng.uniform(0.5, 2, 200)})
    large = pd.DataFrame({"node_id": "blur", "in_mp": rng.uniform(4, 12, 200)})
    for df in (small, large):
        df["out_mp"] = df["in_mp"]
        df["bytes_in"] = np.nan
        df["duration_s"] = (0.002 + 0.03 * df["in_mp"]) * rng.lognormal(0, 0.1, 200)
    raw = S.compare({"blur": large["duration_s"].to_numpy()},
                    {"blur": small["duration_s"].to_numpy()})
    assert raw.loc[0, "verdict"] == "slower"  # what raw seconds would say
    norm = S.compare({"blur": normalised(large, {"blur": model}).to_numpy()},
                     {"blur": normalised(small, {"blur": model}).to_numpy()})
    assert norm.loc[0, "verdict"] == "no significant change"


def mixed(n: int = 120, *, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    in_mp = rng.uniform(0.5, 2.0, n)  # mostly phone-sized images ...
    in_mp[::15] = rng.uniform(20.0, 40.0, len(in_mp[::15]))  # ... and a few scans
    expected = 0.004 + 0.02 * in_mp
    d = expected * rng.lognormal(0, 0.08, n)
    return pd.DataFrame({"node_id": "blur", "item_id": np.arange(n), "duration_s": d,
                         "cpu_s": 0.9 * d, "norm": d / expected, "cpu_norm": d / expected,
                         "started": 1000 + np.arange(n) * 0.1})


def test_anomalies_are_judged_per_unit_of_work():
    units = mixed()
    assert anomalies(units).empty  # large images are not anomalous for being large
    raw = units.assign(norm=units["duration_s"])  # raw seconds would flag them
    assert set(anomalies(raw)["item_id"]) == set(range(0, 120, 15))
    slow = units.copy()
    slow.loc[17, ["duration_s", "cpu_s", "norm", "cpu_norm"]] *= 10
    assert slow.loc[17, "duration_s"] < units["duration_s"].max()  # not the longest item
    found = anomalies(slow)
    assert found["item_id"].tolist() == [17]
    assert found.loc[0, "ratio"] == pytest.approx(10, rel=0.2)


def test_on_a_busy_machine_only_items_that_did_more_work_are_anomalies():
    units = mixed()
    waited = units.copy()  # slow on the wall clock, ordinary on the CPU: a CPU wait
    waited.loc[5, ["duration_s", "norm"]] *= 10
    assert list(anomalies(waited)["item_id"]) == [5]
    assert anomalies(waited, contended=True).empty
    worked = units.copy()
    worked.loc[5, ["duration_s", "cpu_s", "norm", "cpu_norm"]] *= 10
    assert list(anomalies(worked, contended=True)["item_id"]) == [5]


def ref_tau_of(y: np.ndarray) -> float:
    """Kendall's tau-a of ``y`` against its order, counted pair by pair."""
    n = len(y)
    s = sum(np.sign(y[j] - y[i]) for i in range(n) for j in range(i + 1, n))
    return float(s / (n * (n - 1) / 2))
