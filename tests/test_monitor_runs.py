"""On real runs: one prediction shown by the plan, the summary and the report; anomalies
judged per unit of work (a seeded slow item flagged, a uniform mix of sizes not); this
run against the earlier runs of its workflow."""

from __future__ import annotations

import json

import dask
import numpy as np
import pytest

import dagflow
from dagflow import Image, Node, Param, Workflow, register_op
from dagflow.monitor.report import render_html
from dagflow.runtime.plan import plan


@register_op("ev_work", params=[Param("passes", int, 200), Param("slow", str, "")],
             replace=True)
def work(image: Image, passes: int = 200, slow: str = "") -> Image:
    """Work in proportion to the pixels; ``passes`` times, ten times as often for the item
    whose path contains ``slow`` (a deterministic fault point naming the item)."""
    if slow and slow in str(image.meta.get("path", "")):
        passes *= 10
    data = image.data.astype(np.float32)
    for _ in range(passes):
        data = np.sqrt(data * data + 1.0)
    return image


def mixed_photos(directory, n: int = 40, seed: int = 0) -> None:
    """``n`` JPEGs whose sides vary fivefold."""
    from PIL import Image as PILImage

    from dagflow.testing import photo_like

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w = int(rng.integers(80, 400))
        h = int(w * 0.75)
        PILImage.fromarray(photo_like(h, w, seed=i)).save(directory / f"img{i:03d}.jpg",
                                                          quality=90)


def workflow(name: str = "mix", **params) -> Workflow:
    return Workflow(name, [
        Node("load", "load"),
        Node("work", "ev_work", params, after="load"),
        Node("big", "gaussian", {"sigma": 1.0}, after="work", when="width >= 200"),
        Node("save", "save", {"format": "png"}, after="big"),
    ])


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mixed") / "in"
    mixed_photos(directory)
    return directory


def test_plan_summary_and_report_show_one_prediction(client, photos, tmp_path):
    """After a run, ``dagflow plan`` of the same batch into a new output, then that run:
    the same numbers per node and in total in the plan's JSON, the run's summary and its
    report; the condition's skips are not counted as work."""
    with dask.config.set({"dagflow.monitor.history-dir": str(tmp_path / "history"),
                          "dagflow.monitor.report": True}):
        wf = workflow(passes=50)
        dagflow.run(wf, photos, tmp_path / "out-1", client=client, progress=False)
        shown = json.loads(plan(wf, photos, tmp_path / "out-2", client=client).to_json())
        second = dagflow.run(wf, photos, tmp_path / "out-2", client=client, progress=False)
    planned = {n: v["seconds"] for n, v in shown["nodes"].items()}
    assert all(v is not None and v > 0 for v in planned.values()), planned
    summary = json.loads((second.run_dir / "summary.json").read_text())["estimate"]
    assert summary["nodes"] == planned == second.estimate["nodes"]
    a = second.analysis()
    assert dict(zip(a.prediction["node_id"], a.prediction["predicted_s"], strict=True)) \
        == planned
    for key in ("compute_s", "duration_s"):
        assert shown[key] == summary[key] == a.prediction_total[key], key
    # the condition: 'big' runs only on the items at least 200 px wide, as planned
    ran = second.records()
    big = int((ran[ran["node_id"] == "big"]["status"] == "ok").sum())
    assert 0 < big < 40
    assert shown["prediction"]["nodes"]["big"]["items"] == big
    assert shown["prediction"]["nodes"]["big"]["skipped"] == 40 - big
    assert shown["nodes"]["big"]["basis"] == shown["prediction"]["nodes"]["big"]["unit"]
    # the report written at the end of the run shows them
    html = (second.run_dir / "report.html").read_text()
    for node, seconds in planned.items():
        assert f"predicted {seconds:.4f} s" in html, node


def test_a_seeded_slow_item_is_flagged_and_large_images_are_not(client, photos, tmp_path):
    uniform = dagflow.run(workflow("uni"), photos, tmp_path / "u", client=client,
                          progress=False, chunk_size=4)
    a = uniform.analysis()
    # the largest images took the longest; judged per megapixel they are ordinary
    w = a.rows[(a.rows["node_id"] == "work") & (a.rows["status"] == "ok")]
    assert w["duration_s"].max() > 3 * w["duration_s"].min()
    longest = set(w.sort_values("duration_s")["rel"].iloc[-len(w) // 4:])
    flagged = a.anomalies[a.anomalies["node_id"] == "work"]
    assert not longest & set(flagged["rel"]), flagged
    # nor did any item do more work than its size asks: an item flagged here waited (the
    # workers are threads of this process, which a collection or the scheduler can hold
    # for a while), its CPU time per megapixel its peers'
    per_mp = (w.set_index("rel")["cpu_s"] / w.set_index("rel")["megapixels"])
    assert (per_mp.reindex(flagged["rel"]) < 4 * per_mp.median()).all(), flagged
    # ten times the work for a middle-sized image: not the longest item, ten times its
    # peers' time per megapixel
    middle = w.sort_values("duration_s")["rel"].iloc[len(w) // 2]
    seeded = dagflow.run(workflow("seed", slow=middle), photos, tmp_path / "s",
                         client=client, progress=False, chunk_size=4)
    found = seeded.analysis().anomalies
    assert found["rel"].tolist() == [middle], found
    assert found.loc[0, "node_id"] == "work" and found.loc[0, "ratio"] > 4


def test_the_report_compares_with_the_earlier_runs(client, photos, tmp_path):
    """Per node, this run against the earlier runs of the workflow: a node doing three
    times the work per megapixel is slower, significantly."""
    with dask.config.set({"dagflow.monitor.history-dir": str(tmp_path / "history")}):
        first = dagflow.run(workflow("cmp", passes=50), photos, tmp_path / "o1",
                            client=client, progress=False, chunk_size=4)
        second = dagflow.run(workflow("cmp", passes=150), photos, tmp_path / "o2",
                             client=client, progress=False, chunk_size=4)
        assert first.analysis().comparison.empty  # nothing earlier
        analysis = second.analysis()
    c = analysis.comparison.set_index("node_id")
    assert set(c.index) == {"load", "work", "big", "save"}
    assert c.loc["work", "verdict"] == "slower" and c.loc["work", "significant"]
    assert c.loc["work", "change"] > 0.5 and c.loc["work", "p_value"] < 1e-4
    assert c.loc["work", "runs"] == 1
    html = render_html(analysis)
    assert "id='comparison'" in html and "slower" in html
