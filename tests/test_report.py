"""The run report: HTML from a real run, the same analysis as JSON, 1000 items."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dask
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import dagflow
from dagflow.cli import main
from dagflow.monitor.analysis import RunAnalysis, analyze
from dagflow.monitor.report import FIGURES, SECTIONS, structure, write_report
from dagflow.monitor.store import write_json, write_metrics
from dagflow.recovery.checkpoint import write_records

WORKFLOW = """
name: rep
nodes:
  - {id: load, op: load}
  - {id: small, op: resize, after: [load], params: {long_side: 48}}
  - {id: soft, op: gaussian, after: [small], params: {sigma: 1.0}}
  - {id: save, op: save, after: [soft], params: {format: png}}
  - {id: stats, op: stats, after: [load]}
"""
MONITOR_ON = {"dagflow.monitor.enabled": True, "dagflow.monitor.report": True}


def assert_self_contained(text: str) -> None:
    assert not re.search(r"<script[^>]+src=", text)
    assert not re.search(r"<link[^>]+href=[\"']https?:", text)
    assert "Bokeh" in text and "embed_items" in text


def percentiles_from_records(run_dir: Path) -> dict[str, dict[str, float]]:
    table = pq.read_table(run_dir / "records").to_pandas()
    ran = table[table["status"].isin(["ok", "failed"])]
    out = {}
    for node, sub in ran.groupby("node_id"):
        d = sub["duration_s"].to_numpy()
        out[node] = {"count": len(d), "mean": d.mean(), "max": d.max(), "std": d.std(),
                     **{f"p{q}": np.percentile(d, q) for q in (50, 90, 95, 99)}}
    return out


@pytest.fixture(scope="module")
def two_runs(client, tmp_path_factory):
    """Two runs into one output (the second has a history to be predicted from)."""
    from conftest import write_photos

    base = tmp_path_factory.mktemp("report")
    photos = base / "in"
    write_photos(photos, 12)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = base / "out"
    with dask.config.set(MONITOR_ON):
        first = dagflow.run(WORKFLOW, photos, out, client=client)
        second = dagflow.run(WORKFLOW, photos, out, client=client, resume=False)
    return first, second


def test_report_written_at_the_end_of_a_run(two_runs):
    first, _ = two_runs
    html = (first.run_dir / "report.html").read_text()
    for section in SECTIONS:
        assert f"id='{section}'" in html, section
    assert_self_contained(html)
    for node in ("load", "small", "soft", "save", "stats"):
        assert node in html
    assert "bad_input" in html  # the broken file, in errors and retries


def test_a_resume_that_runs_nothing_has_its_report(two_runs, client):
    """A third run into the finished output executes nothing: its analysis and report
    are still written (no item ran, so no node has a time to show)."""
    out = two_runs[0].run_dir.parents[2]
    with dask.config.set(MONITOR_ON):
        third = dagflow.run(WORKFLOW, out.parent / "in", out, client=client)
    assert third.executed == 0
    assert analyze(third.run_dir).run["items"] == 0
    html = (third.run_dir / "report.html").read_text()
    assert_self_contained(html)


def test_json_percentiles_equal_numpy_on_the_records(two_runs):
    first, _ = two_runs
    result = CliRunner().invoke(main, ["report", str(first.run_dir), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    expected = percentiles_from_records(first.run_dir)
    nodes = {n["node_id"]: n for n in data["nodes"]}
    assert set(nodes) == set(expected)
    for node, exp in expected.items():
        for key, value in exp.items():
            assert nodes[node][key] == pytest.approx(value, rel=1e-12, abs=1e-15), (node, key)
    assert data["run"]["items"] == 13 and data["run"]["items_failed"] == 1
    assert data["critical_path"][0] == "load"
    assert data["bottleneck"]["node"] in nodes
    assert {e["error_class"] for e in data["errors"]} == {"bad_input"}
    assert data["resources"] and data["queue"]
    for rec in data["recommendations"]:
        assert rec["reason"] and rec["effect"]


def test_second_run_is_predicted_from_history(two_runs):
    first, second = two_runs
    history = first.output_dir / "_dagflow" / "history"
    assert sorted(p.name for p in history.iterdir()) == sorted(
        [f"run-{first.run_id}.parquet", f"run-{second.run_id}.parquet"])
    a = second.analysis()
    assert isinstance(a, RunAnalysis)
    assert set(a.prediction["node_id"]) == {"load", "small", "soft", "save", "stats"}
    assert (a.prediction["predicted_s"] > 0).all()
    # the numbers the run was planned with, as its summary keeps them
    planned = dict(zip(a.prediction["node_id"], a.prediction["predicted_s"], strict=True))
    assert planned == second.estimate["nodes"]
    assert first.analysis().prediction.empty  # nothing before the first run


def test_without_the_plan_file_the_summary_gives_the_prediction(two_runs, tmp_path):
    import shutil

    _, second = two_runs
    run_dir = Path(shutil.copytree(second.run_dir, tmp_path / "run"))
    plan_file = run_dir / "metrics" / "run.json"
    plan = json.loads(plan_file.read_text())
    del plan["prediction"]
    plan_file.write_text(json.dumps(plan))
    a = analyze(run_dir, history_dir=tmp_path / "none")
    assert dict(zip(a.prediction["node_id"], a.prediction["predicted_s"], strict=True)) == \
        second.estimate["nodes"]
    assert a.prediction_total["compute_s"] == second.estimate["compute_s"]


def test_run_result_report_and_cli_output(two_runs, tmp_path):
    first, _ = two_runs
    target = first.report(tmp_path / "r.html")
    assert target == tmp_path / "r.html" and "id='nodes'" in target.read_text()
    out = CliRunner().invoke(main, ["report", str(first.output_dir), "-o",
                                    str(tmp_path / "latest.html")])
    assert out.exit_code == 0, out.output
    assert out.output.strip() == str(tmp_path / "latest.html")
    assert "id='critical-path'" in (tmp_path / "latest.html").read_text()
    bad = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert bad.exit_code == 2


def synthetic_run(run_dir: Path, n_items: int = 1000, *, seed: int = 0) -> Path:
    """A run directory with records and metrics of ``n_items`` items through 4 nodes."""
    rng = np.random.default_rng(seed)
    nodes = {"load": ("load", "source", [], 0.02), "blur": ("gaussian", "transform",
                                                            ["load"], 0.05),
             "small": ("resize", "transform", ["load"], 0.01),
             "save": ("save", "sink", ["blur"], 0.015)}
    t0 = 1_700_000_000.0
    chunk = 25
    for first in range(0, n_items, chunk):
        rows = []
        for i in range(first, min(first + chunk, n_items)):
            t = t0 + i * 0.01
            for node, (op, _kind, _parents, scale) in nodes.items():
                d = float(rng.gamma(4.0, scale / 4))
                if node == "blur" and i in (100, 500):
                    d *= 30  # two anomalies
                failed = node == "load" and i % 250 == 7
                rows.append({
                    "run_id": "synthetic", "item_id": i, "item_key": f"k{i}",
                    "input_path": f"/in/img{i}.jpg", "rel": f"img{i}.jpg", "node_id": node,
                    "node_key": node, "op": op,
                    "status": "failed" if failed else ("upstream_failed" if
                                                       node != "load" and i % 250 == 7
                                                       else "ok"),
                    "error_class": "bad_input" if failed else None,
                    "attempts": 1, "duration_s": 0.0 if (i % 250 == 7 and node != "load")
                    else d, "started": t, "worker": f"tcp://w{i % 4}", "device": "cpu",
                    "width": 4000, "height": 3000})
                t += d
        write_records(run_dir / "records" / f"part-{first // chunk:07d}.parquet", rows)
        from dagflow.monitor.hooks import metric_rows

        sample = {"time": t, "cpu": 90.0, "memory": 1e9, "worker": f"tcp://w{first % 3}"}
        write_metrics(run_dir, metric_rows(None, rows, sample))
    write_json(run_dir / "metrics" / "run.json", {
        "run_id": "synthetic", "workflow": "syn", "items": n_items, "started": t0,
        "nodes": {n: {"op": op, "kind": kind, "parents": parents, "device": "auto",
                      "timeout": None} for n, (op, kind, parents, _s) in nodes.items()}})
    return run_dir


def _bokeh_models(figures) -> int:
    return sum(len(f.references()) for f in figures.values())


def test_thousand_items_report_stays_the_same_size_of_page(tmp_path, monkeypatch):
    """A report draws its figures once, whatever the number of items: the same Bokeh
    models for 200 items as for 1,000, every line thinned to MAX_POINTS, and only the
    seeded slow items listed as anomalies."""
    from bokeh.models import Line

    from dagflow.monitor import report

    run_dir = synthetic_run(tmp_path / "_dagflow" / "runs" / "synthetic")
    a = analyze(run_dir)
    assert a.run["items"] == 1000 and a.run["items_failed"] == 4
    assert a.nodes.loc["blur", "count"] == 996
    assert set(a.anomalies["item_id"]) == {100, 500}  # the two seeded, nothing else
    assert a.critical_path == ["load", "blur", "save"]
    assert a.bottleneck["node"] == "blur"
    assert a.run["chunk_size"] == 25
    assert len(a.resources) == 40  # one sample per chunk from the workers themselves
    fewer = analyze(synthetic_run(tmp_path / "fewer" / "_dagflow" / "runs" / "synthetic", 200))
    figures = report._figures(a)
    assert sorted(figures) == sorted(report._figures(fewer))
    assert _bokeh_models(figures) == _bokeh_models(report._figures(fewer))
    monkeypatch.setattr(report, "MAX_POINTS", 10)  # below the points of the longest line
    lengths = [len(r.data_source.data["x"]) for f in report._figures(a).values()
               for r in f.renderers if isinstance(r.glyph, Line)]
    assert lengths and max(lengths) == 10
    html = write_report(run_dir, analysis=a).read_text()
    listed = re.search(r"<section id='anomalies'>(.*?)</section>", html, re.S).group(1)
    assert "img100.jpg" in listed and "img500.jpg" in listed
    assert listed.count("<tr>") == 1 + 2
    assert_self_contained(html)


def test_what_a_report_renders_does_not_grow_with_the_items(tmp_path):
    """The report runs at the end of every CLI run: its Bokeh part is a few figures, one
    line per node or worker, whatever the number of items; the rest is HTML."""
    big = analyze(synthetic_run(tmp_path / "big", 1000))
    small = analyze(synthetic_run(tmp_path / "small", 100, seed=1))
    shown = structure(big)
    assert shown["sections"] == list(SECTIONS)
    assert set(shown["figures"]) <= set(FIGURES) and len(shown["figures"]) <= 5
    assert shown["models"] == structure(small)["models"]
    assert shown["models"] <= 260


def test_report_from_records_only(tmp_path):
    """Without metrics files (monitoring off), the records still make a report."""
    run_dir = synthetic_run(tmp_path / "run", 60)
    for p in (run_dir / "metrics").iterdir():
        p.unlink()
    a = analyze(run_dir)
    assert a.nodes.loc["load", "count"] == 60
    assert a.plan["run_id"] == "run"
    assert "id='summary'" in write_report(run_dir, analysis=a).read_text()


@pytest.mark.slow
def test_report_cli_in_a_subprocess(tmp_path):
    run_dir = synthetic_run(tmp_path / "run", 100)
    out = subprocess.run([sys.executable, "-m", "dagflow.cli", "report", str(run_dir),
                          "--json"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if "No module named dagflow.cli.__main__" in out.stderr:
        bin_dir = Path(sys.executable).parent
        out = subprocess.run([str(bin_dir / "dagflow"), "report", str(run_dir), "--json"],
                             capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert {n["node_id"] for n in data["nodes"]} == {"load", "blur", "small", "save"}


def test_opentelemetry_spans(tmp_path):
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from dagflow.monitor import otel
    from dagflow.monitor.hooks import metric_rows

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    run_dir = synthetic_run(tmp_path / "run", 3)
    rows = pq.read_table(run_dir / "records").to_pylist()
    ctx = type("Ctx", (), {"run_id": "synthetic", "workflow": "syn"})()
    tracer = provider.get_tracer("dagflow")
    assert otel.emit_spans(ctx, metric_rows(ctx, rows), tracer=tracer) == 5
    spans = exporter.get_finished_spans()
    names = sorted(s.name for s in spans)
    assert names == ["dagflow.chunk"] + ["dagflow.node"] * 4
    chunk = next(s for s in spans if s.name == "dagflow.chunk")
    assert all(s.parent.span_id == chunk.context.span_id for s in spans if s is not chunk)
    # the columns a worker builds give the same spans
    from dagflow.monitor.hooks import metric_columns

    exporter.clear()
    assert otel.emit_spans(ctx, metric_columns(ctx, rows), tracer=tracer) == 5
    again = exporter.get_finished_spans()
    assert sorted((s.name, s.attributes.get("dagflow.items")) for s in again) == \
        sorted((s.name, s.attributes.get("dagflow.items")) for s in spans)


def test_history_from_the_plugin_equals_the_history_from_the_records(client, tmp_path):
    """At the end of a run whose records all came from the workers, the history is
    written from the scheduler plugin's figures (no records read back); they equal the
    figures computed from the records parts."""
    import pyarrow.parquet as pq
    from conftest import write_photos

    from dagflow import Node, Workflow
    from dagflow.monitor import history, hooks

    write_photos(tmp_path / "in", 6)
    wf = Workflow("hist", [Node("load", "load"),
                           Node("small", "resize", {"long_side": 32}, after="load"),
                           Node("save", "save", {"format": "png"}, after="small")])
    with dask.config.set({"dagflow.monitor.report": False}):
        result = dagflow.run(wf, tmp_path / "in", tmp_path / "out", client=client,
                             progress=False)
    assert result.succeeded == 6
    scheduler = json.loads((result.run_dir / "metrics" / "scheduler.json").read_text())
    assert hooks._covers(scheduler["nodes"], result.nodes)  # the plugin saw every record
    live = pq.read_table(tmp_path / "out" / "_dagflow" / "history"
                         / f"run-{result.run_id}.parquet").to_pandas().set_index("node_id")
    written = history.append_run(result.run_dir, history_dir=tmp_path / "from-parts")
    parts = pq.read_table(written).to_pandas().set_index("node_id")
    assert list(live.index) == list(parts.index) == ["load", "small", "save"]
    for column in ("op", "workflow", "items", "failed", "bytes_in", "bytes_out"):
        assert live[column].tolist() == parts[column].tolist(), column
    assert (live["bytes_in"]["load"], live["bytes_out"]["save"]) > (0, 0)
    for column in ("total_s", "mean_s", "p50_s", "p95_s", "megapixels", "s_per_mp",
                   "s_per_item"):
        assert live[column].tolist() == pytest.approx(parts[column].tolist(), rel=1e-9), \
            column
    # both keep a sample of every node's items: seconds, CPU seconds, units
    for table in (live, parts):
        for node in ("load", "small", "save"):
            n = len(table.loc[node, "sample_s"])
            assert n == 6 and len(table.loc[node, "sample_cpu_s"]) == n
            assert all(c is not None and c >= 0 for c in table.loc[node, "sample_cpu_s"])
        assert table.loc["small", "unit"] in ("item", "in_mp", "out_mp")
    # a count the plugin did not see sends the history back to the records
    assert not hooks._covers(scheduler["nodes"], {**result.nodes, "save": {"ok": 7}})
    assert not hooks._covers(None, result.nodes)


def test_a_torn_part_is_skipped_by_the_analysis(client, tmp_path):
    """A records part torn by a crash (unreadable) leaves the report of the other chunks."""
    from conftest import write_photos

    from dagflow import Node, Workflow
    from dagflow.monitor.analysis import analyze
    from dagflow.monitor.store import read_metrics

    write_photos(tmp_path / "in", 6)
    wf = Workflow("torn", [Node("load", "load"),
                           Node("save", "save", {"format": "png"}, after="load")])
    with dask.config.set({"dagflow.monitor.report": False}):
        result = dagflow.run(wf, tmp_path / "in", tmp_path / "out", client=client,
                             progress=False, chunk_size=2)
    parts = sorted((result.run_dir / "records").glob("part-*.parquet"))
    assert len(parts) == 3 and read_metrics(result.run_dir).num_rows == 12
    parts[1].write_bytes(parts[1].read_bytes()[:100])  # torn
    assert read_metrics(result.run_dir).num_rows == 8
    analysis = analyze(result.run_dir)
    assert analysis.nodes.loc["load", "count"] == 4 and analysis.nodes.loc["save", "ok"] == 4
