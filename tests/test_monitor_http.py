"""HTTP on a real cluster: the JSON routes, /metrics, the dashboard page and the preload."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import dask
import pytest

pytest.importorskip("bokeh")

import dagflow
from dagflow.monitor.dashboard import PAGE

WORKFLOW = """
name: mon
nodes:
  - {id: load, op: load}
  - {id: small, op: resize, after: [load], params: {long_side: 32}}
  - {id: save, op: save, after: [small], params: {format: png}}
"""


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def dashboard_base(client) -> str:
    port = client.scheduler_info()["services"]["dashboard"]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def live(monkeypatch):
    """A cluster whose dashboard started without dagflow's page (added at run time)."""
    from distributed import Client, LocalCluster
    from distributed.dashboard.scheduler import applications

    monkeypatch.delitem(applications, PAGE, raising=False)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as c:
        yield c


def test_routes_metrics_and_page_after_a_run(live, photos_with_bad, tmp_path):
    base = dashboard_base(live)
    assert get(base + PAGE)[0] == 404  # not there before dagflow.run installs it
    with dask.config.set({"dagflow.monitor.enabled": True, "dagflow.monitor.report": True}):
        result = dagflow.run(WORKFLOW, photos_with_bad, tmp_path / "out", client=live)
    assert result.failed == 2

    status, body = get(base + "/dagflow/api/")
    assert status == 200 and "dagflow/api/summary" in json.loads(body)["endpoints"]
    summary = json.loads(get(base + "/dagflow/api/summary")[1])
    assert summary["run"]["run_id"] == result.run_id
    assert summary["run"]["items_done"] == 14 and summary["run"]["items_failed"] == 2
    assert summary["totals"]["failed"] == 2
    nodes = json.loads(get(base + "/dagflow/api/nodes")[1])["nodes"]
    assert [n["node"] for n in nodes] == ["load", "small", "save"]
    assert nodes[0]["ok"] == 12 and nodes[0]["errors"] == {"bad_input": 2}
    assert nodes[1]["p50"] > 0 and nodes[0]["bytes_in"] > 0 and nodes[2]["bytes_out"] > 0
    timeline = json.loads(get(base + "/dagflow/api/timeline")[1])
    assert sum(timeline["throughput"]["items_done"]) == 14
    workers = json.loads(get(base + "/dagflow/api/workers")[1])["workers"]
    assert len(workers) == 1 and workers[0]["nthreads"] == 2
    assert "chunks" in json.loads(get(base + "/dagflow/api/chunks")[1])
    runs = json.loads(get(base + f"/dagflow/api/runs?run={result.run_id}")[1])
    assert runs["current"] == result.run_id
    assert get(base + "/dagflow/api/nope")[0] == 404

    status, metrics = get(base + "/metrics")
    assert status == 200
    assert 'dagflow_items_total{node="load",status="ok"} 12.0' in metrics
    assert 'dagflow_items_total{node="load",status="failed"} 2.0' in metrics
    assert 'dagflow_item_duration_seconds_count{node="small"} 12.0' in metrics
    assert "dagflow_errors_total" in metrics and "dagflow_chunks_in_flight" in metrics

    plots = json.loads(get(base + "/individual-plots.json")[1])
    assert plots["Individual Dagflow"] == PAGE
    status, page = get(base + PAGE)
    assert status == 200 and "bokeh" in page.lower()

    run_dir = result.run_dir
    assert (run_dir / "report.html").exists()
    assert sorted(p.name for p in (run_dir / "metrics").iterdir()
                  if not p.name.startswith("part-")) == [
        "queue.parquet", "run.json", "scheduler.json", "throughput.parquet",
        "workers.parquet"]


def test_monitoring_switched_off(live, photos, tmp_path):
    with dask.config.set({"dagflow.monitor.enabled": False}):
        result = dagflow.run(WORKFLOW, photos, tmp_path / "out", client=live)
    assert result.succeeded == 12
    assert not (result.run_dir / "metrics").exists()
    assert not (result.run_dir / "report.html").exists()
    assert "dagflow-monitor" not in live.run_on_scheduler(
        lambda dask_scheduler: list(dask_scheduler.plugins))


@pytest.mark.slow
def test_scheduler_preload_in_a_real_scheduler_process(tmp_path):
    """``dask scheduler --preload dagflow.monitor.preload``: page listed, plugin, routes."""
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", "0", "--dashboard-address", "127.0.0.1:0", "--scheduler-file",
         str(sched_file), "--preload", "dagflow.monitor.preload"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.1)
        port = json.loads(sched_file.read_text())["services"]["dashboard"]
        base = f"http://127.0.0.1:{port}"
        plots = json.loads(get(base + "/individual-plots.json")[1])
        assert plots["Individual Dagflow"] == PAGE
        status, runs = get(base + "/dagflow/api/runs")
        assert status == 200 and json.loads(runs)["runs"] == []
        assert "dagflow_chunks_in_flight 0.0" in get(base + "/metrics")[1]
        assert get(base + PAGE)[0] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_cluster_config_documents_the_preload():
    text = Path(__file__).parent.parent.joinpath("cluster-configs", "monitoring.yaml")
    assert "dagflow.monitor.preload" in text.read_text()
