"""The scheduler plugin: payloads from tasks, transitions, sampling, bounds, Prometheus."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import dask
import pyarrow.parquet as pq
import pytest
from distributed.utils_test import gen_cluster

from dagflow.monitor import hooks
from dagflow.monitor import plugin as P
from dagflow.monitor.plugin import PLUGIN_NAME, DagflowMonitor, ensure_plugin, payload_durations
from dagflow.monitor.preload import install

NODES = {"load": {"op": "load", "kind": "source", "parents": []},
         "blur": {"op": "gaussian", "kind": "transform", "parents": ["load"]},
         "save": {"op": "save", "kind": "sink", "parents": ["blur"]}}


def ctx(tmp_path, run_id="run-1"):
    return SimpleNamespace(run_id=run_id, run_dir=str(tmp_path / "run"),
                           output_dir=str(tmp_path), state_dir=str(tmp_path / "_dagflow"),
                           workflow="wf")


def chunk_rows(run_id: str, first: int, n: int, *, fail: int | None = None,
               duration: float = 0.01) -> list[dict]:
    """Records of one chunk: every item through load, blur and save."""
    out = []
    for i in range(first, first + n):
        for node, op in (("load", "load"), ("blur", "gaussian"), ("save", "save")):
            failed = fail == i and node == "blur"
            status = "failed" if failed else ("upstream_failed" if fail == i and node == "save"
                                              else "ok")
            out.append({"run_id": run_id, "item_id": i, "rel": f"img{i}.jpg",
                        "input_path": None, "node_id": node, "op": op, "status": status,
                        "error_class": "bad_input" if failed else None,
                        "attempts": 2 if (node == "load" and i == first) else 1,
                        "duration_s": 0.0 if status == "upstream_failed" else duration,
                        "started": time.time(), "worker": "w", "device": "cpu",
                        "output_path": None, "width": 100, "height": 50})
    return out


def test_payload_is_compact_and_columnar(tmp_path):
    metrics = hooks.metric_rows(ctx(tmp_path), chunk_rows("r", 0, 4, fail=2))
    payload = hooks.chunk_payload(ctx(tmp_path), metrics, "tcp://w")
    assert payload["items"] == 4 and payload["failed"] == 1
    blur = payload["nodes"]["blur"]
    assert blur["s"] == {"ok": 3, "failed": 1} and blur["e"] == {"bad_input": 1}
    assert payload_durations(blur) == [0.01] * 4 and isinstance(blur["d"], bytes)
    assert payload["nodes"]["save"]["s"] == {"ok": 3, "upstream_failed": 1}
    assert payload["nodes"]["load"]["r"] == 1
    assert payload["nodes"]["load"]["mp"] == pytest.approx(4 * 0.005)
    from distributed.protocol import serialize  # msgpack-friendly: what log_event needs
    from distributed.worker import _is_dumpable

    assert _is_dumpable(payload)
    assert serialize(payload)


def _reference_nodes(metrics):
    """The payload's per-node entries computed row by row, the plain way."""
    nodes = {}
    for m in metrics:
        e = nodes.setdefault(m["node_id"], {"op": m["op"], "d": [], "s": {}, "e": {}, "r": 0,
                                            "bi": 0, "bo": 0, "mp": 0.0, "dev": {}})
        e["s"][m["status"]] = e["s"].get(m["status"], 0) + 1
        if m["status"] in ("ok", "failed"):
            e["d"].append(m["duration_s"] or 0.0)
            e["r"] += max(0, (m["attempts"] or 0) - 1)
            if m["device"]:
                e["dev"][m["device"]] = e["dev"].get(m["device"], 0) + 1
        if m["status"] in ("failed", "upstream_failed"):
            cls = m["error_class"] or m["status"]
            e["e"][cls] = e["e"].get(cls, 0) + 1
        e["bi"] += m["bytes_in"] or 0
        e["bo"] += m["bytes_out"] or 0
        e["mp"] += m["megapixels"] or 0.0
    return nodes


@pytest.mark.parametrize("nodes", [("load",), ("load", "blur", "save")])
def test_payload_matches_a_row_by_row_count(tmp_path, nodes):
    rows = [r for r in chunk_rows("r", 0, 30, fail=7) if r["node_id"] in nodes]
    rows[3] = {**rows[3], "status": "not_run", "error_class": "breaker"}
    rows[4] = {**rows[4], "status": "skipped", "duration_s": None, "attempts": 0}
    rows[5] = {**rows[5], "attempts": 4, "device": "cpu-fallback"}
    metrics = hooks.metric_rows(ctx(tmp_path), rows)
    for given in (metrics, hooks.metric_columns(ctx(tmp_path), rows)):
        payload = hooks.chunk_payload(ctx(tmp_path), given, "tcp://w")
        got = {n: {**e, "d": payload_durations(e)} for n, e in payload["nodes"].items()}
        assert got == _reference_nodes(metrics)
        assert payload["items"] == 30 and payload["failed"] == (1 if "blur" in nodes else 0)


def test_chunk_done_outside_a_worker_only_writes(tmp_path):
    c = ctx(tmp_path)
    hooks.chunk_done(c, chunk_rows("r", 10, 3))
    parts = list((tmp_path / "run" / "metrics").glob("part-*.parquet"))
    assert [p.name for p in parts] == ["part-000000010-000000012.parquet"]
    table = pq.read_table(parts[0])
    assert table.num_rows == 9 and set(table.column("chunk").to_pylist()) == {10}


def test_chunk_done_disabled(tmp_path):
    with dask.config.set({"dagflow.monitor.enabled": False}):
        hooks.chunk_done(ctx(tmp_path), chunk_rows("r", 0, 2))
    assert not (tmp_path / "run").exists()


def test_plugin_module_never_imports_bokeh():
    code = ("import sys, dagflow.monitor.plugin, dagflow.monitor.hooks, "
            "dagflow.monitor.metrics, dagflow.monitor.analysis, dagflow.monitor.http, "
            "dagflow.monitor.prometheus; print('bokeh' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.stdout.strip() == "False"


def test_bounded_buffers():
    p = DagflowMonitor()
    payload = {"run": "r", "items": 1, "failed": 0,
               "nodes": {"n": {"op": "x", "d": [0.5] * 100, "s": {"ok": 100}}}}
    for _ in range(100):
        p.ingest(payload)
    assert p.runs["r"].stats["n"].count == 10_000
    assert len(p.runs["r"].stats["n"].recent) == P.RESERVOIR
    assert p.totals["n"].histogram()[-1] == 10_000
    for i in range(P.MAX_RUNS + 5):
        p.ingest({**payload, "run": f"run-{i}"})
    assert len(p.runs) == P.MAX_RUNS
    # a malformed payload is dropped, never raised into the scheduler
    p.log_event(P.METRICS_TOPIC, {"run": "r", "nodes": {"bad": "not a dict"}})
    p.log_event(P.METRICS_TOPIC, {"nodes": 5})


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)])
async def test_tasks_feed_the_plugin(c, s, a):
    tmp = Path(tempfile.mkdtemp())
    plugin = ensure_plugin(s)
    assert ensure_plugin(s) is plugin  # idempotent
    await c.register_plugin(DagflowMonitor())  # a second registration keeps the first
    assert s.plugins[PLUGIN_NAME] is plugin
    plugin.begin_run({"run_id": "run-1", "workflow": "wf", "items": 8, "nodes": NODES})
    c1 = ctx(tmp)
    futures = [c.submit(hooks.chunk_done, c1, chunk_rows("run-1", first, 4, fail=5),
                        pure=False) for first in (0, 4)]
    await c.gather(futures)
    while plugin.runs["run-1"].chunks_done < 2:
        await asyncio.sleep(0.01)
    snap = plugin.snapshot()
    nodes = {n["node"]: n for n in snap["nodes"]}
    assert list(nodes) == ["load", "blur", "save"]
    assert nodes["blur"]["ok"] == 7 and nodes["blur"]["failed"] == 1
    assert nodes["save"]["upstream_failed"] == 1
    assert nodes["blur"]["errors"] == {"bad_input": 1}
    assert nodes["load"]["item_retries"] == 2
    assert nodes["load"]["pending"] == 0
    assert nodes["blur"]["p50"] == pytest.approx(0.01)
    assert snap["run"]["items_done"] == 8 and snap["run"]["items_failed"] == 1
    assert sum(snap["throughput"]["items_done"]) == 8
    assert sum(snap["throughput"]["errors"]) == 1
    assert len(list((tmp / "run" / "metrics").glob("part-*.parquet"))) == 2
    json.dumps(snap)


def work(x):
    time.sleep(0.05)
    return x


def flaky(x, path):
    # fails on its first attempt only
    if not os.path.exists(path):
        open(path, "w").close()
        raise OSError("flaky storage")
    return x


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)])
async def test_transitions_queue_chunks_and_retries(c, s, a):
    plugin = ensure_plugin(s)
    plugin.begin_run({"run_id": "r", "items": 4, "nodes": NODES})
    futures = [c.submit(work, i, key=(f"load-1a2b{i}", i)) for i in range(4)]
    while len(s.tasks) < 4 or not plugin.queue_depth()["processing"]:
        await asyncio.sleep(0.005)
    q = plugin.queue_depth()
    assert q["processing"] + q["queued"] + q["in_memory"] == 4
    assert q["by_node"]["load"]["processing"] == q["processing"]
    chunks = plugin.snapshot()["chunks"]
    assert {ch["chunk"] for ch in chunks} <= {0, 1, 2, 3} and chunks
    await c.gather(futures)
    assert plugin.tasks["load"]["memory"] == 4
    done = plugin.snapshot()["chunks"]
    assert all(ch["nodes_done"] == 1 and ch["progress"] == pytest.approx(1 / 3)
               for ch in done)
    path = os.path.join(tempfile.mkdtemp(), "marker")
    f = c.submit(flaky, 1, path, key=("blur-9f9f", 0), retries=1)
    assert await f == 1
    assert plugin.task_retries == 1 and plugin.tasks["blur"]["retry"] == 1
    commit = c.submit(work, 0, key=("dagflow-records-1a2b0", 0))
    await commit
    assert ("1a2b0", 0) not in plugin.chunks
    # unrelated tasks are ignored
    await c.submit(work, 1, key="something-else")
    assert "something" not in plugin.tasks


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_sampling_and_end_run(c, s, a):
    plugin = ensure_plugin(s)
    plugin.begin_run({"run_id": "r", "items": 2, "nodes": NODES})
    plugin.sample()
    snap = plugin.snapshot()
    assert [w["worker"] for w in snap["workers"]] == [a.address]
    assert snap["workers"][0]["nthreads"] == 1
    assert snap["queue"]["time"]
    plugin.breakers["blur"] = "open"
    # the plugin counts its own CPU (sampling, payloads, transitions) for the run
    before = plugin.cpu_s
    plugin.log_event(P.METRICS_TOPIC, hooks.chunk_payload(
        ctx(Path(tempfile.mkdtemp()), "r"),
        hooks.metric_rows(ctx(Path(tempfile.mkdtemp()), "r"), chunk_rows("r", 0, 4)), "w"))
    assert plugin.cpu_s > before > 0
    data = plugin.end_run("r")
    assert 0 < data["cpu_s"] <= plugin.cpu_s
    assert data["run"]["finished"] is not None
    assert data["workers"]["worker"] == [a.address] * len(data["workers"]["time"])
    assert data["breakers"] == {"blur": "open"}
    assert plugin.end_run("unknown") == {}


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_breaker_events_reach_the_plugin(c, s, a):
    plugin = ensure_plugin(s)
    await hooks.breaker_changed(c, SimpleNamespace(run_id="r"), "save", "open", "disk full")
    while "save" not in plugin.breakers:
        await asyncio.sleep(0.01)
    assert plugin.breakers == {"save": "open"}


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_prometheus_text(c, s, a):
    prometheus_client = pytest.importorskip("prometheus_client")
    plugin = install(s, page=False, routes=False)
    plugin.begin_run({"run_id": "r", "items": 4, "nodes": NODES})
    plugin.ingest({"run": "r", "items": 4, "failed": 1, "nodes": {
        "blur": {"op": "gaussian", "d": [0.002, 0.2, 3.0], "s": {"ok": 3, "failed": 1},
                 "e": {"timeout": 1}, "r": 2, "bi": 10, "bo": 0, "mp": 1.5}}})
    plugin.breakers["blur"] = "half-open"
    text = prometheus_client.generate_latest().decode()
    assert 'dagflow_items_total{node="blur",status="ok"} 3.0' in text
    assert 'dagflow_item_duration_seconds_bucket{le="0.0025",node="blur"} 1.0' in text
    assert 'dagflow_item_duration_seconds_count{node="blur"} 3.0' in text
    assert 'dagflow_item_retries_total{node="blur"} 2.0' in text
    assert 'dagflow_errors_total{error_class="timeout",node="blur"} 1.0' in text
    assert 'dagflow_breaker_state{node="blur",state="half-open"} 1.0' in text
    assert "dagflow_chunks_in_flight 0.0" in text
