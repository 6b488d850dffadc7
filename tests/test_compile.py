"""Compiling workflows into Dask graphs: layers, keys, annotations, laziness, execution."""

from __future__ import annotations

import asyncio
import tempfile
import threading

import numpy as np
import pytest
from dask.local import get_sync
from dask.utils import key_split
from distributed.utils_test import gen_cluster

from dagflow import Image, Node, Param, Workflow, register_op
from dagflow.compile import (
    COMMIT_PREFIX,
    RunContext,
    compile_chunks,
    make_chunks,
    node_tasks,
)
from dagflow.execute import ChunkSummary

CALLS: list[str] = []
CALLS_LOCK = threading.Lock()


@register_op("synthetic", kind="source", params=[Param("fail_on", str, "")], replace=True)
def synthetic(path: str, fail_on: str = "") -> Image:
    """A source that makes a small image from the item's path (no files needed)."""
    with CALLS_LOCK:
        CALLS.append(path)
    if fail_on and fail_on in path:
        raise ValueError(f"synthetic failure for {path}")
    seed = sum(map(ord, path))
    return Image(np.full((4 + seed % 5, 6, 3), seed % 256, dtype=np.uint8), {"format": "png"})


def items(n: int) -> list[dict]:
    return [{"item_id": i, "path": f"/in/img{i}.png", "rel": f"img{i}.png", "key": f"k{i}",
             "size": 1, "mtime_ns": 1} for i in range(n)]


def dag() -> Workflow:
    return Workflow("dag", [
        Node("src", "synthetic", {"fail_on": "img3."}),
        Node("blur", "gaussian", {"sigma": 1.0}, after="src"),
        Node("gray", "grayscale", after="src", when="height > 6"),
        Node("flip", "flip", {"axis": "horizontal"}, after="blur"),
    ]).validate()


def context(tmp_path, checkpoint=False) -> RunContext:
    return RunContext(run_id="r1", run_dir=str(tmp_path / "run"), output_dir=str(tmp_path),
                      state_dir=str(tmp_path / "_dagflow"), workflow="dag",
                      checkpoint=checkpoint)


def test_one_layer_per_node_keys_named_by_node(tmp_path):
    tasks = node_tasks(dag())
    compiled = compile_chunks(tasks, context(tmp_path), make_chunks(items(10), 4), token="ab12")
    layers = compiled.graph.layers
    assert len(layers) == len(tasks) + 1
    for nid, name in compiled.layers.items():
        keys = list(layers[name])
        assert len(keys) == 3  # 10 items in chunks of 4
        assert {key_split(k) for k in keys} == {nid}
    assert {key_split(k) for k in compiled.commit_keys} == {COMMIT_PREFIX}
    deps = compiled.graph.dependencies
    assert deps[compiled.layers["flip"]] == {compiled.layers["blur"]}


def test_a_chunk_passes_through_a_scheduler_as_bytes(monkeypatch):
    """Unpickled and pickled again without its items being used (as a scheduler passing a
    task on does), a chunk's items are not unpickled; where they are used they are all
    there, and a change made to them (a fingerprint filled in) travels on."""
    import pickle

    from dagflow.compile import Chunk

    chunk = Chunk(7, items(5))
    sent = pickle.dumps(chunk, protocol=5)
    loads = []
    real_loads = pickle.loads
    monkeypatch.setattr(pickle, "loads", lambda b: loads.append(1) or real_loads(b))
    passed_on = pickle.dumps(real_loads(sent), protocol=5)  # the scheduler
    assert loads == [] and len(passed_on) < len(sent) + 64
    received = real_loads(passed_on)  # the worker
    assert received == chunk and received.index == 7 and len(received) == 5
    assert loads == [1]
    received.items[0]["key"] = "filled"
    again = real_loads(pickle.dumps(received, protocol=5))
    assert again.items[0]["key"] == "filled" and again.items[1:] == chunk.items[1:]


def test_compiling_computes_nothing(tmp_path):
    CALLS.clear()
    tasks = node_tasks(dag())
    compile_chunks(tasks, context(tmp_path), make_chunks(items(50), 8), token="ab12")
    assert CALLS == []


def test_a_chunks_items_travel_once_in_its_root_tasks(tmp_path):
    import pickle

    from dagflow.compile import Chunk

    tasks = node_tasks(dag())
    chunks = make_chunks(items(10), 4)
    compiled = compile_chunks(tasks, context(tmp_path), chunks, token="ab12")
    carrying = {}
    for layer in compiled.graph.layers.values():
        for key, task in layer.items():
            held = [a for a in task.args if isinstance(a, Chunk)]
            if held:
                carrying[key] = held
    # only the root node ("src") holds the chunk; its children and the commit read it from
    # the state they are given, so each task sent to a worker pickles its items at most once
    assert sorted(carrying) == sorted((compiled.layers["src"], c.index) for c in chunks)
    assert all(held == [chunks[key[1]]] for key, held in carrying.items())
    flip = compiled.graph.layers[compiled.layers["flip"]][(compiled.layers["flip"], 0)]
    assert b"img0.png" not in pickle.dumps(flip)


def test_executes_on_the_synchronous_scheduler_with_per_item_isolation(tmp_path):
    tasks = node_tasks(dag())
    compiled = compile_chunks(tasks, context(tmp_path), make_chunks(items(10), 4), token="ab12")
    summaries: list[ChunkSummary] = get_sync(dict(compiled.graph), compiled.commit_keys)
    status = {k: v for s in summaries for k, v in s.item_status.items()}
    assert status == {3: "failed"}  # the item whose source raised; every other succeeded
    counts: dict = {}
    for s in summaries:
        for k, v in s.counts.items():
            counts[k] = counts.get(k, 0) + v
    assert counts[("src", "failed")] == 1
    assert counts[("blur", "upstream_failed")] == 1 and counts[("flip", "upstream_failed")] == 1
    assert counts[("flip", "ok")] == 9
    # "gray" runs only where height > 6: heights are 4 + seed % 5
    heights = {i: 4 + sum(map(ord, f"/in/img{i}.png")) % 5 for i in range(10) if i != 3}
    assert counts.get(("gray", "ok"), 0) == sum(h > 6 for h in heights.values())
    assert counts.get(("gray", "skipped"), 0) == sum(h <= 6 for h in heights.values()) + 0
    (failure,) = [f for s in summaries for f in s.failures]
    assert failure.node_id == "src" and failure.error_class == "bug"
    assert "synthetic failure" in failure.error_message


@pytest.mark.parametrize("checkpoint, monitoring, where", [
    (True, True, "records"), (True, False, "records"), (False, True, "metrics"),
    (False, False, None)])
def test_one_part_per_chunk_holds_records_and_metrics(tmp_path, checkpoint, monitoring, where):
    import dask
    import pyarrow.parquet as pq

    from dagflow.monitor.analysis import load_rows
    from dagflow.monitor.store import METRICS_SCHEMA, read_metrics
    from dagflow.recovery.checkpoint import RECORD_SCHEMA, load_done

    tasks = node_tasks(dag())
    run_dir = tmp_path / "_dagflow" / "runs" / "r1"
    ctx = RunContext(run_id="r1", run_dir=str(run_dir), output_dir=str(tmp_path),
                     state_dir=str(tmp_path / "_dagflow"), workflow="dag", checkpoint=checkpoint)
    compiled = compile_chunks(tasks, ctx, make_chunks(items(10), 4), token="ab12")
    with dask.config.set({"dagflow.monitor.enabled": monitoring}):
        summaries = get_sync(dict(compiled.graph), compiled.commit_keys)
    written = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*.parquet")) \
        if run_dir.exists() else []
    if where is None:
        assert written == [] and all(s.part is None for s in summaries)
        return
    # one file per chunk, whichever features are on
    assert written == [f"{where}/part-{i:07d}.parquet" for i in range(3)]
    table = pq.read_table(run_dir / written[0])
    assert set(RECORD_SCHEMA.names) <= set(table.column_names)
    assert ({"bytes_in", "megapixels", "chunk"} <= set(table.column_names)) == monitoring
    assert [s.part is not None for s in summaries] == [checkpoint] * 3
    if checkpoint:
        done = load_done(tmp_path / "_dagflow")
        assert len(done.done) == 9 * 4  # item 3 failed at its source, and so its descendants
    if monitoring:
        metrics = read_metrics(run_dir)
        assert metrics.schema == METRICS_SCHEMA and metrics.num_rows == 10 * 4
        rows = load_rows(run_dir)
        src = rows[(rows["node_id"] == "src") & (rows["status"] == "ok")]
        assert len(src) == 9 and (src["bytes_in"] == 1).all()
        assert rows["megapixels"].notna().sum() >= 9


def test_one_record_type_in_schema_order(tmp_path):
    """Every record is a :class:`Record` built by one function: by keyword anywhere, by
    position on the item loop's short path, transposed into the schema's columns."""
    from dagflow.recovery.records import (
        RECORD_SCHEMA,
        Record,
        new_record,
        ok_record,
        output_record,
        record_columns,
    )

    assert list(Record._fields) == RECORD_SCHEMA.names
    task = node_tasks(dag())["blur"]
    ctx = context(tmp_path)
    item = items(1)[0]
    record = new_record(ctx, task, item, "failed", worker="tcp://w", error_class="bug",
                        error_type="ValueError", error_message="m", reason="r", attempts=2,
                        duration_s=0.5, cpu_s=0.25, started=1.0, device="cpu-fallback",
                        degraded=True, output_path="o.png", width=3, height=4,
                        attempt_log=[{"error": "OSError: x", "delay_s": 0.2}])
    as_row = record._asdict()
    assert as_row == {
        "run_id": "r1", "item_id": 0, "item_key": "k0", "input_path": "/in/img0.png",
        "rel": "img0.png", "node_id": "blur", "node_key": task.key, "op": "gaussian",
        "status": "failed", "error_class": "bug", "error_type": "ValueError",
        "error_message": "m", "reason": "r", "attempts": 2, "duration_s": 0.5,
        "cpu_s": 0.25, "started": 1.0, "worker": "tcp://w", "device": "cpu-fallback",
        "output_path": "o.png", "width": 3, "height": 4, "degraded": True,
        "output_size": None, "output_mtime_ns": None, "output_hash": None,
        "attempt_log": [{"error": "OSError: x", "delay_s": 0.2}]}
    assert record_columns([record, record]) == record_columns([as_row, as_row])
    # a success's record, built by position on the item loop's short path, is the same
    ok = ok_record(ctx, task, item, "tcp://w", 2, 0.5, 0.25, 1.0, "gpu", True, 3, 4)
    assert Record._make(ok) == new_record(
        ctx, task, item, "ok", worker="tcp://w", attempts=2, duration_s=0.5, cpu_s=0.25,
        started=1.0, device="gpu", degraded=True, width=3, height=4)
    ok = output_record(ctx, task, item, "tcp://w", 2, 0.5, 0.25, 1.0, "gpu", True, 3, 4,
                       ("o.png", 10, 20, "ab"))
    assert Record._make(ok) == new_record(ctx, task, item, "ok", worker="tcp://w", attempts=2,
                            duration_s=0.5, cpu_s=0.25, started=1.0, device="gpu",
                            degraded=True, output_path="o.png", width=3, height=4,
                            output_size=10, output_mtime_ns=20, output_hash="ab")


def test_node_keys_change_with_params_and_upstream():
    base = node_tasks(dag())
    changed = node_tasks(Workflow("dag", [
        Node("src", "synthetic", {"fail_on": "img3."}),
        Node("blur", "gaussian", {"sigma": 2.0}, after="src"),
        Node("gray", "grayscale", after="src", when="height > 6"),
        Node("flip", "flip", {"axis": "horizontal"}, after="blur"),
    ]))
    assert base["src"].key == changed["src"].key
    assert base["gray"].key == changed["gray"].key
    assert base["blur"].key != changed["blur"].key
    assert base["flip"].key != changed["flip"].key  # downstream of the change


def test_load_decodes_at_reduced_scale_when_a_resize_follows():
    wf = Workflow("t", [Node("load", "load"), Node("r", "resize", {"long_side": 300}, after="load"),
                        Node("s", "save", after="r")])
    assert node_tasks(wf)["load"].params["reduce_to"] == 300
    wf2 = Workflow("t", [Node("load", "load"), Node("g", "gaussian", {"sigma": 1}, after="load")])
    assert node_tasks(wf2)["load"].params["reduce_to"] is None


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)],
             worker_kwargs={"resources": {"MEMORY": 1e9, "GPU": 1}})
async def test_annotations_reach_the_scheduler(c, s, a):
    tmp = tempfile.mkdtemp()
    tasks = node_tasks(dag())
    compiled = compile_chunks(
        tasks, RunContext("r", tmp + "/run", tmp, tmp + "/_dagflow", "dag", checkpoint=False),
        make_chunks(items(6), 3), token="cd34",
        annotations={"blur": {"retries": 2, "resources": {"GPU": 1}}},
        chunk_annotations=lambda task, chunk: {"resources": {"MEMORY": 1000 * len(chunk)}},
    )
    futures = c.get(compiled.graph, compiled.commit_keys, sync=False)
    blur_key, src_key = (compiled.layers["blur"], 1), (compiled.layers["src"], 0)
    while blur_key not in s.tasks or src_key not in s.tasks:
        await asyncio.sleep(0.005)
    ts = s.tasks[blur_key]
    assert ts.resource_restrictions == {"GPU": 1, "MEMORY": 3000}
    assert ts.retries == 2
    assert s.tasks[src_key].resource_restrictions == {"MEMORY": 3000}
    assert ts.group.name == compiled.layers["blur"] and key_split(ts.key) == "blur"
    summaries = await c.gather(futures)
    assert sum(s_.items for s_ in summaries) == 6


@pytest.mark.parametrize("n,size,expected", [(0, 4, 0), (1, 4, 1), (8, 4, 2), (9, 4, 3)])
def test_make_chunks(n, size, expected):
    chunks = make_chunks(items(n), size)
    assert len(chunks) == expected
    assert [i["item_id"] for c in chunks for i in c.items] == list(range(n))
