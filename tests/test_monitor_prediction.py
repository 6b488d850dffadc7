"""The prediction model: the unit a node's time scales with, chosen from the evidence;
skipped items; warm-up; one prediction from the history (synthetic histories, no run)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dagflow import Node, Workflow
from dagflow.compile import node_tasks
from dagflow.monitor import costmodel, prediction
from dagflow.monitor.history import HISTORY_SCHEMA
from dagflow.resources import MemoryModel


def sizes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Input megapixels, output megapixels (a resize to a fixed size) and file bytes of
    ``n`` items of mixed sizes."""
    rng = np.random.default_rng(seed)
    in_mp = rng.uniform(0.5, 12.0, n)
    out_mp = np.full(n, 0.25) * rng.uniform(0.98, 1.02, n)
    return in_mp, out_mp, in_mp * 250_000 * rng.uniform(0.8, 1.2, n)


def noisy(x: np.ndarray, seed: int = 1, spread: float = 0.05) -> np.ndarray:
    return x * np.random.default_rng(seed).lognormal(0.0, spread, x.size)


@pytest.mark.parametrize("unit", ["in_mp", "out_mp", "item"])
def test_the_unit_that_explains_the_time_is_chosen(unit):
    in_mp, out_mp, _ = sizes(200)
    # a node whose output size varies independently of its input
    out_mp = np.random.default_rng(5).uniform(0.1, 4.0, 200)
    truth = {"in_mp": 0.002 + 0.03 * in_mp, "out_mp": 0.002 + 0.05 * out_mp,
             "item": np.full(200, 0.04)}[unit]
    model = costmodel.fit(noisy(truth), {"in_mp": in_mp, "out_mp": out_mp},
                          kind="transform")
    assert model.unit == unit and model.chosen == "evidence"
    if unit == "in_mp":
        assert model.per_unit_s == pytest.approx(0.03, rel=0.1)
        assert model.fixed_s == pytest.approx(0.002, abs=0.003)
    expected = model.expected({"in_mp": in_mp, "out_mp": out_mp}, 200)
    assert np.median(np.abs(expected / truth - 1)) < 0.06


def test_a_source_may_scale_with_its_file_bytes():
    in_mp, _, nbytes = sizes(300)
    seconds = noisy(0.001 + 4e-8 * nbytes)
    out_mp = in_mp * np.random.default_rng(2).uniform(0.5, 2.0, 300)  # a poor proxy
    model = costmodel.fit(seconds, {"out_mp": out_mp, "bytes_in": nbytes}, kind="source")
    assert model.unit == "bytes_in"
    assert model.per_unit_s == pytest.approx(4e-8, rel=0.1)


def test_one_image_size_cannot_choose_so_the_natural_unit_is_taken_through_the_origin():
    n = 50
    in_mp = np.full(n, 3.0)
    model = costmodel.fit(noisy(np.full(n, 0.09)), {"in_mp": in_mp, "out_mp": in_mp},
                          kind="transform")
    assert (model.unit, model.chosen, model.fixed_s) == ("in_mp", "default", 0.0)
    assert model.per_unit_s == pytest.approx(0.03, rel=0.05)
    # an aggregate's natural unit is the item
    agg = costmodel.fit(noisy(np.full(n, 0.01)), {"in_mp": in_mp}, kind="aggregate")
    assert agg.unit == "item"


def test_first_items_and_outliers_are_left_out_of_the_fit():
    in_mp, out_mp, _ = sizes(120)
    seconds = 0.01 + 0.02 * in_mp
    first = np.zeros(120, dtype=bool)
    first[[0, 60]] = True
    seconds = np.where(first, seconds + 0.5, seconds)  # imports on each worker
    seconds[30] *= 20  # one anomaly
    model = costmodel.fit(seconds, {"in_mp": in_mp, "out_mp": out_mp}, kind="transform",
                          first=first)
    assert model.unit == "in_mp"
    assert model.per_unit_s == pytest.approx(0.02, rel=1e-6)
    assert model.fixed_s == pytest.approx(0.01, rel=1e-6)
    assert model.warmup_s == pytest.approx(0.5, rel=1e-6)
    assert model.samples == 117


def history_rows(node: str, op: str, kind: str, seconds, in_mp, out_mp, *, run="r1",
                 workflow="wf", first=None, bytes_in=None, processing_s=None) -> dict:
    n = len(seconds)
    return {"run_id": run, "workflow": workflow, "node_id": node, "op": op, "kind": kind,
            "finished": 1.0, "items": n, "total_s": float(np.sum(seconds)),
            "s_per_item": float(np.mean(seconds)), "sample_s": list(map(float, seconds)),
            "sample_in_mp": list(map(float, in_mp)), "sample_out_mp": list(map(float, out_mp)),
            "sample_bytes_in": list(map(float, bytes_in)) if bytes_in is not None
            else [None] * n,
            "sample_first": list(first) if first is not None else [False] * n,
            "run_processing_s": processing_s or float(np.sum(seconds)),
            "run_duration_s": (processing_s or float(np.sum(seconds))) + 2.0,
            "run_threads": 2}


def as_history(rows: list[dict]) -> pd.DataFrame:
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=HISTORY_SCHEMA).to_pandas()


def test_prediction_counts_only_the_items_that_pass_the_condition():
    in_mp, out_mp, _ = sizes(100)
    hist = as_history([history_rows("blur", "gaussian", "transform", 0.05 * in_mp, in_mp,
                                    out_mp)])
    nodes = {"blur": ("gaussian", "transform")}
    all_items = prediction.NodeWork(items=100, in_mp=float(in_mp.sum()))
    half = prediction.NodeWork(items=50, skipped=50, in_mp=float(in_mp[:50].sum()))
    full = prediction.predict(hist, nodes, {"blur": all_items}, threads=2, workers=1,
                              chunks=4)
    part = prediction.predict(hist, nodes, {"blur": half}, threads=2, workers=1, chunks=4)
    assert full["nodes"]["blur"]["seconds"] == pytest.approx(0.05 * in_mp.sum(), rel=1e-3)
    assert part["nodes"]["blur"]["seconds"] == pytest.approx(0.05 * in_mp[:50].sum(),
                                                             rel=1e-3)
    assert (part["nodes"]["blur"]["items"], part["nodes"]["blur"]["skipped"]) == (50, 50)
    assert part["compute_s"] == part["nodes"]["blur"]["seconds"]
    # the wall time: compute over the threads at the earlier run's efficiency (its 2
    # threads were busy half its processing time), plus the time that run spent outside
    # processing (2 s)
    assert full["efficiency"] == pytest.approx(0.5)
    assert full["processing_s"] == pytest.approx(full["compute_s"] / (2 * 0.5), rel=1e-3)
    assert full["duration_s"] == pytest.approx(full["processing_s"] + 2.0, rel=1e-3)
    # a node without history is named, not guessed
    other = prediction.predict(hist, {**nodes, "save": ("save", "sink")},
                               {"blur": all_items}, threads=2, workers=1, chunks=4)
    assert other["missing"] == ["save"] and "save" not in other["nodes"]


def test_prediction_multiplies_by_the_unit_the_time_was_measured_in():
    """The bug this model replaces: seconds per output megapixel times input
    megapixels. A resize's time follows its input; its output is a fixed thumbnail."""
    in_mp, out_mp, _ = sizes(200)
    seconds = noisy(0.001 + 0.004 * in_mp)
    hist = as_history([history_rows("small", "resize", "transform", seconds, in_mp, out_mp)])
    new_in, new_out, _ = sizes(80, seed=9)
    work = {"small": prediction.NodeWork(items=80, in_mp=float(new_in.sum()),
                                         out_mp=float(new_out.sum()))}
    p = prediction.predict(hist, {"small": ("resize", "transform")}, work, threads=1,
                           workers=1, chunks=1)
    truth = float((0.001 + 0.004 * new_in).sum())
    assert p["nodes"]["small"]["unit"] == "in_mp"
    assert p["nodes"]["small"]["seconds"] == pytest.approx(truth, rel=0.05)


def test_warm_up_is_added_once_per_worker_process_that_runs_the_node():
    in_mp, out_mp, _ = sizes(60)
    first = np.zeros(60, dtype=bool)
    first[:2] = True
    seconds = 0.01 * in_mp + np.where(first, 0.3, 0.0)
    hist = as_history([history_rows("blur", "gaussian", "transform", seconds, in_mp, out_mp,
                                    first=first)])
    work = {"blur": prediction.NodeWork(items=60, in_mp=float(in_mp.sum()))}
    one = prediction.predict(hist, {"blur": ("gaussian", "transform")}, work, threads=4,
                             workers=4, chunks=1)
    four = prediction.predict(hist, {"blur": ("gaussian", "transform")}, work, threads=4,
                              workers=4, chunks=8)
    assert four["nodes"]["blur"]["seconds"] - one["nodes"]["blur"]["seconds"] == \
        pytest.approx(3 * 0.3, abs=2e-3)


def test_the_latest_runs_are_pooled_and_a_node_falls_back_to_its_op():
    in_mp, out_mp, _ = sizes(50)
    rows = [history_rows("blur", "gaussian", "transform", 0.02 * in_mp, in_mp, out_mp,
                         run=f"r{i}") for i in range(7)]
    hist = as_history(rows)
    fits = prediction.history_fits(hist, {"blur": ("gaussian", "transform"),
                                          "soft": ("gaussian", "transform"),
                                          "x": ("resize", "transform")})
    assert fits["blur"]["runs"] == prediction.POOLED_RUNS and fits["blur"]["match"] == "node"
    assert fits["soft"]["match"] == "op" and "x" not in fits
    # a history written before samples were kept: seconds per item
    old = hist.assign(sample_s=None)
    assert prediction.history_fits(old, {"blur": ("gaussian", "transform")})["blur"]["fit"] \
        .unit == "item"


def test_batch_work_follows_headers_through_nodes_and_conditions():
    """Per node, the items that reach it and pass its condition, with the megapixels it
    receives and produces, from the headers alone."""
    from dagflow.runtime.plan import _condition_runs

    wf = Workflow("w", [
        Node("load", "load"),
        Node("small", "resize", {"long_side": 100}, after="load"),
        Node("big", "gaussian", {"sigma": 1.0}, after="load", when="width >= 1000"),
        Node("save", "save", {"format": "png"}, after="big"),
    ]).validate()
    tasks = node_tasks(wf)
    model = MemoryModel(tasks)
    items = [{"path": f"/x/{i}.png", "width": w, "height": w // 2, "channels": 3,
              "dtype": "uint8", "format": "PNG", "size": 1000 + i}
             for i, w in enumerate([400, 400, 1200, 2000])]
    import functools

    work = prediction.batch_work(tasks, model, items,
                                 passes=functools.partial(_condition_runs, tasks, model))
    mp = [w * (w // 2) / 1e6 for w in (400, 400, 1200, 2000)]
    assert (work["load"].items, work["load"].in_mp) == (4, pytest.approx(sum(mp)))
    assert work["load"].bytes_in == pytest.approx(sum(1000 + i for i in range(4)))
    assert work["small"].items == 4
    assert work["small"].out_mp == pytest.approx(4 * 100 * 50 / 1e6)
    assert (work["big"].items, work["big"].skipped) == (2, 2)
    assert work["big"].in_mp == pytest.approx(mp[2] + mp[3])
    assert (work["save"].items, work["save"].skipped) == (2, 2)


def test_a_model_of_cpu_seconds_from_the_same_samples():
    """The items' CPU seconds (what the work costs, whatever else ran on the machine)
    fit in the same way, for a check of the model that the machine's load does not
    blur."""
    in_mp, out_mp, _ = sizes(100)
    row = history_rows("blur", "gaussian", "transform", 0.02 * in_mp * 3.0, in_mp, out_mp)
    row["sample_cpu_s"] = list(map(float, 0.02 * in_mp))  # waited twice as long as it ran
    hist = as_history([row])
    wall = prediction.history_fits(hist, {"blur": ("gaussian", "transform")})["blur"]["fit"]
    cpu = prediction.history_fits(hist, {"blur": ("gaussian", "transform")},
                                  measure="cpu_s")["blur"]["fit"]
    assert (wall.unit, cpu.unit) == ("in_mp", "in_mp")
    assert cpu.per_unit_s == pytest.approx(0.02) and wall.per_unit_s == pytest.approx(0.06)
    no_cpu = as_history([history_rows("blur", "gaussian", "transform", 0.02 * in_mp, in_mp,
                                      out_mp)])
    assert prediction.history_fits(no_cpu, {"blur": ("gaussian", "transform")},
                                   measure="cpu_s") == {}


def test_item_units_of_a_finished_run():
    """Each ran row with its node's units: the image it made (megapixels, else width x
    height), its first parent's (that item's last row there; none for a source, or a
    node the plan lacks), a source's file bytes, and one first item per node and worker
    process (a missing worker counted as its own); rows the op did not run are left out."""
    nodes = {"load": {"kind": "source", "parents": []},
             "small": {"kind": "transform", "parents": ["load"]},
             "save": {"kind": "sink", "parents": ["small", "load"]}}
    rows = pd.DataFrame({
        "item_id": [1, 1, 2, 2, 1, 1, 2, 3, 3],
        "node_id": ["load", "small", "load", "small", "load", "save", "save", "load", "extra"],
        "status": ["ok", "ok", "ok", "failed", "ok", "ok", "upstream_failed", "ok", "ok"],
        "duration_s": [0.5, 0.1, 0.4, np.nan, 0.6, 0.2, 0.0, 0.3, 0.05],
        "started": [10.0, 11.0, 10.0, 12.0, 13.0, 12.0, 0.0, 10.0, 11.0],
        "worker": ["a", "a", "b", "b", "a", "a", None, None, None],
        "megapixels": [3.0, np.nan, 2.0, 0.5, 4.0, 0.25, np.nan, 1.0, np.nan],
        "width": [0, 500, 0, 0, 0, 0, 0, 0, 100],
        "height": [0, 500, 0, 0, 0, 0, 0, 0, 100],
        "bytes_in": [900.0, np.nan, 800.0, np.nan, 950.0, np.nan, np.nan, 700.0, 5.0],
    }, index=range(10, 19))
    units = prediction.item_units(rows, nodes)
    assert list(units.columns) == ["item_id", "node_id", "status", "duration_s", "started",
                                   "worker", "out_mp", "in_mp", "bytes_in", "first"]
    assert list(units.index) == list(range(8))  # the upstream_failed row left out
    assert units["item_id"].tolist() == [1, 1, 2, 2, 1, 1, 3, 3]
    np.testing.assert_array_equal(units["out_mp"], [3.0, 0.25, 2.0, 0.5, 4.0, 0.25, 1.0, 0.01])
    # small's parent is load: item 1's last load row (4.0), item 2's (2.0); save's first
    # parent is small; sources and the node the plan lacks have none
    np.testing.assert_array_equal(units["in_mp"],
                                  [np.nan, 4.0, np.nan, 2.0, np.nan, 0.25, np.nan, np.nan])
    np.testing.assert_array_equal(units["bytes_in"],
                                  [900.0, np.nan, 800.0, np.nan, 950.0, np.nan, 700.0, 5.0])
    assert units["duration_s"].tolist()[3] == 0.0
    # load on a: 10.0 (not 13.0); on b: 10.0; on no worker: item 3; small on a and b;
    # save on a; extra on no worker
    assert units["first"].tolist() == [True, True, True, True, False, True, True, True]
    tied = rows.iloc[[0, 4]].assign(started=[10.0, 10.0])
    assert prediction.item_units(tied, nodes)["first"].tolist() == [True, False]
    assert prediction.item_units(rows.iloc[:0], nodes).empty
