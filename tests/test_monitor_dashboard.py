"""The dashboard page's components: update() and their sources' data, no browser."""

from __future__ import annotations

import asyncio

import pytest
from distributed import Event
from distributed.utils_test import gen_cluster

pytest.importorskip("bokeh")

from dagflow.monitor.dashboard import (
    PAGE,
    ChunksInFlight,
    DagflowPage,
    ErrorRates,
    NodeDurations,
    NodeProgress,
    QueueDepth,
    Throughput,
    WorkerResources,
    register_page,
)
from dagflow.monitor.plugin import PLUGIN_NAME

NODES = {"load": {"op": "load", "parents": []}, "blur": {"op": "gaussian",
                                                          "parents": ["load"]}}


def feed(plugin, *, items=10, failed=2):
    plugin.begin_run({"run_id": "r1", "workflow": "wf", "items": 20, "nodes": NODES})
    plugin.ingest({"run": "r1", "items": items, "failed": failed, "nodes": {
        "load": {"op": "load", "d": [0.1] * items, "s": {"ok": items}},
        "blur": {"op": "gaussian", "d": [0.2] * (items - failed) + [1.0] * failed,
                 "s": {"ok": items - failed, "failed": failed}, "e": {"bad_input": failed},
                 "r": 3}}})


def blocked(x):
    from distributed import Event

    Event("dagflow-test-go").wait(timeout=30)
    return x


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)])
async def test_components_install_the_plugin_and_update(c, s, a):
    assert PLUGIN_NAME not in s.plugins
    progress = NodeProgress(s)
    assert PLUGIN_NAME in s.plugins  # the component installed its own plugin
    plugin = progress.plugin
    feed(plugin)
    progress.update()
    d = progress.source.data
    assert d["node"] == ["blur", "load"]  # listed top-down in workflow order
    assert d["ok"] == [8, 10] and d["failed"] == [2, 0] and d["pending"] == [10, 10]
    assert list(progress.root.y_range.factors) == ["blur", "load"]

    durations = NodeDurations(s)
    durations.update()
    d = durations.source.data
    assert d["node"] == ["blur", "load"]
    assert d["p50"] == [pytest.approx(0.2), pytest.approx(0.1)]
    assert d["p99"][0] == pytest.approx(1.0)

    throughput = Throughput(s)
    throughput.update()
    assert sum(throughput.source.data["items"]) > 0
    errors = ErrorRates(s)
    errors.update()
    assert sum(errors.source.data["errors"]) > 0 and sum(errors.source.data["retries"]) > 0

    plugin.sample()
    resources = WorkerResources(s)
    resources.update()
    assert resources.source.data["worker"] == [a.address.split("://")[-1]]
    assert 0 <= resources.source.data["memory_fraction"][0] < 1
    assert resources.gpu.visible is False  # no GPU here

    futures = [c.submit(blocked, i, key=(f"load-0abc{i}", i)) for i in range(2)]
    while plugin.queue_depth()["processing"] < 2:  # both running, held by the event
        await asyncio.sleep(0.01)
    chunks = ChunksInFlight(s)
    chunks.update()
    assert sorted(chunks.source.data["chunk"]) == ["chunk 0", "chunk 1"]
    assert chunks.source.data["running"] == ["load", "load"]
    assert chunks.source.data["progress"] == [0.0, 0.0]
    plugin.sample()
    queue = QueueDepth(s)
    queue.update()
    assert queue.source.data["processing"][-1] == 2
    await Event("dagflow-test-go").set()
    await c.gather(futures)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_page_updates_every_component(c, s, a):
    page = DagflowPage(s)
    page.update()  # before any run
    assert "waiting for a run" in page.header.text
    feed(page.plugin)
    page.update()
    assert "r1" in page.header.text and "10 of 20 items done" in page.header.text
    assert page.progress.source.data["node"] == ["blur", "load"]
    assert page.durations.source.data["node"] == ["blur", "load"]
    names = {m.name for m in page.root.references() if getattr(m, "name", None)}
    assert {"dagflow-progress", "dagflow-throughput", "dagflow-queue", "dagflow-durations",
            "dagflow-cpu", "dagflow-memory", "dagflow-chunks", "dagflow-errors"} <= names


def test_register_page():
    from distributed.dashboard.scheduler import applications

    assert register_page()
    assert PAGE in applications
