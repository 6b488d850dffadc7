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


def test_compiling_computes_nothing(tmp_path):
    CALLS.clear()
    tasks = node_tasks(dag())
    compile_chunks(tasks, context(tmp_path), make_chunks(items(50), 8), token="ab12")
    assert CALLS == []


def test_executes_on_the_synchronous_scheduler_with_per_item_isolation(tmp_path):
    tasks = node_tasks(dag())
    compiled = compile_chunks(tasks, context(tmp_path), make_chunks(items(10), 4), token="ab12")
    summaries: list[ChunkSummary] = get_sync(dict(compiled.graph), compiled.commit_keys)
    status = {k: v for s in summaries for k, v in s.item_status.items()}
    assert status[3] == "failed"  # the item whose source raised
    assert all(status[i] == "succeeded" for i in range(10) if i != 3)
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
    assert failure["node_id"] == "src" and failure["error_class"] == "bug"
    assert "synthetic failure" in failure["error_message"]


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
