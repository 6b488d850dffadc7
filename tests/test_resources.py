"""The memory model: estimates from headers, chunking, worker budgets, annotations in a run."""

from __future__ import annotations

import contextlib
import os
import threading
import time
import tracemalloc
from pathlib import Path

import dask
import pyarrow.dataset as ds
import pytest
from distributed.diagnostics.plugin import SchedulerPlugin
from PIL import Image as PILImage

import dagflow
from dagflow import Node, Workflow
from dagflow.compile import node_tasks
from dagflow.compile.chunking import taper
from dagflow.image import Image
from dagflow.io import probe_header
from dagflow.ops import get_op
from dagflow.resources import (
    MEMORY,
    MemoryModel,
    Resources,
    header_fields,
    output_header,
    probe_headers,
    worker_budget,
)
from dagflow.runtime.capacity import ClusterCapacity, WorkerCapacity, local_capacity
from dagflow.runtime.plan import prepare_batch
from dagflow.testing import photo_like

MiB = 2**20


def items_of(n: int, width: int = 4000, height: int = 3000, **extra) -> list[dict]:
    return [{"item_id": i, "path": f"/in/{i}.png", "rel": f"{i}.png", "key": f"k{i}",
             "size": 1, "mtime_ns": 1, "width": width, "height": height, "channels": 3,
             "dtype": "uint8", "format": "png", **extra} for i in range(n)]


def capacity(*budgets: int, threads: int = 2, **resources) -> ClusterCapacity:
    return ClusterCapacity(tuple(
        WorkerCapacity(f"w{i}", threads, int(b / 0.8), {MEMORY: b, **resources})
        for i, b in enumerate(budgets)))


BLUR = Workflow("blur", [Node("load", "load"),
                         Node("blur", "gaussian", {"sigma": 2.0}, after="load"),
                         Node("save", "save", {"format": "png"}, after="blur")])


def test_resources_value_object_to_annotations():
    r = Resources(memory=3 * MiB, gpu=1) | Resources(memory=MiB, slots=(("dagflow-save", 1),))
    assert r.to_dict() == {"MEMORY": 3 * MiB, "GPU": 1, "dagflow-save": 1}
    assert r.annotations() == {"resources": r.to_dict()}
    assert Resources().annotations() == {}
    with pytest.raises(AttributeError):
        r.memory = 1  # frozen


def test_worker_budget_is_limit_less_margin_and_footprint():
    assert worker_budget(1000 * MiB, margin=0.2) == 800 * MiB
    assert worker_budget(1000 * MiB, margin=0.2, baseline=100 * MiB) == 700 * MiB
    # the footprint is capped at half the limit; no limit uses the machine's memory
    assert worker_budget(1000 * MiB, margin=0.2, baseline=10_000 * MiB) == 300 * MiB
    assert worker_budget(None, margin=0.5, total_memory=4000) == 2000
    assert worker_budget(0, margin=0.2) == 0


def test_output_headers_follow_the_ops():
    h = {"width": 4000, "height": 3000, "channels": 4, "itemsize": 1, "dtype": "uint8",
         "format": "jpeg", "orientation": 6}
    loaded = output_header("load", h, {"auto_orient": True, "reduce_to": 500})
    # turned upright, then JPEG draft decoding at 1/8 keeps the long side >= 500
    assert (loaded["width"], loaded["height"], loaded["orientation"]) == (375, 500, 1)
    assert output_header("crop", h, {"box": [3900, 0, 500, 500]})["width"] == 100
    assert output_header("rotate", h, {"angle": 90})["width"] == 3000
    assert output_header("rotate", h, {"angle": 45, "expand": True})["width"] == 4950
    assert output_header("grayscale", h, {"keep_alpha": True})["channels"] == 2
    assert output_header("threshold", h, {})["channels"] == 1
    out = output_header("convert", h, {"dtype": "float32", "space": "rgb"})
    assert (out["itemsize"], out["channels"]) == (4, 3)
    assert output_header("gaussian", h, {"sigma": 1}) == h


def test_estimates_cover_what_the_ops_allocate(tmp_path):
    """Each estimate is at least what the op really allocates (numpy reports to
    tracemalloc), so MEMORY annotations do not under-commit."""
    arr = photo_like(600, 800, channels=3, seed=1)
    path = tmp_path / "a.png"
    PILImage.fromarray(arr).save(path)
    header = header_fields(probe_header(path))
    cases = [("load", {}), ("gaussian", {"sigma": 2.0}), ("median", {"size": 5}),
             ("unsharp", {"sigma": 2.0}), ("resize", {"long_side": 300}), ("normalize", {}),
             ("equalize", {}), ("grayscale", {}), ("convert", {"dtype": "float32"}),
             ("rotate", {"angle": 30}), ("save", {"format": "jpeg"})]
    for op, params in cases:
        spec = get_op(op)
        full, _ = spec.resolve_params(params)
        image = Image(arr.copy(), {"space": "rgb"})
        tracemalloc.start()
        try:
            if op == "load":
                spec.func(str(path), **full)
            elif op == "save":
                spec.func(image, str(tmp_path / "out"), **full)
            else:
                spec.func(image, **full)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        held = 0 if op == "load" else arr.nbytes  # the input exists before the call
        assert peak + held <= spec.estimate_memory(header, full) * 1.05, op


def test_chunk_task_estimate_holds_every_image_of_the_chunk():
    tasks = node_tasks(BLUR)
    model = MemoryModel(tasks)
    item = items_of(1)[0]
    decoded = 4000 * 3000 * 3
    load, blur, save = model.estimates(item)
    assert (load.inputs, load.output) == (0, decoded)
    assert (blur.inputs, blur.output, blur.megapixels) == (decoded, decoded, 12.0)
    assert save.output == 0
    peaks = model.chunk_peaks(items_of(4))
    assert peaks["blur"] == 4 * blur.hold + blur.extra
    # cached per header signature: one estimate for a batch of same-sized images
    assert model.estimates(items_of(2)[1]) is model.estimates(item)
    assert len(model._cache) == 1


def test_chunks_stay_within_the_task_limit():
    model = MemoryModel(node_tasks(BLUR))
    big, small = items_of(6), items_of(20, 400, 300)
    mixed = [*small[:10], *big, *small[10:]]
    limit = 200 * MiB
    chunks = model.make_chunks(mixed, 8, limit)
    assert [i["item_id"] for c in chunks for i in c.items] == [i["item_id"] for i in mixed]
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert len(c) <= 8
        assert len(c) == 1 or max(model.chunk_peaks(c.items).values()) <= limit
    assert max(len(c) for c in chunks) == 8  # small images still share chunks
    assert sum(1 for c in chunks if c.items[0]["width"] == 4000) >= 3


def test_probe_headers_fills_items_and_samples_large_batches(tmp_path, make_photos):
    paths = make_photos(tmp_path / "in", 6)
    (tmp_path / "in" / "bad.jpg").write_bytes(b"not an image")
    items = [{"path": str(p)} for p in [*paths, tmp_path / "in" / "bad.jpg"]]
    counts = probe_headers(items, threads=4)
    assert counts == {"probed": 6, "failed": 1, "missing": 1}
    assert all(i["width"] and i["channels"] == 3 for i in items[:6])
    fresh = [{"path": str(p)} for p in paths]
    counts = probe_headers(fresh, limit=3, sample=2)
    assert counts["probed"] == 2 and counts["missing"] == 4


def test_batch_refuses_oversize_items_before_decoding_with_estimate_and_limit():
    cap = capacity(400 * MiB, 400 * MiB)
    items = [*items_of(3, 800, 600), *items_of(1, 8000, 6000)]
    items[-1].update(item_id=3, path="/in/huge.png")
    batch = prepare_batch(BLUR, node_tasks(BLUR), items, cap, probe=False)
    assert [i["item_id"] for i in batch.items] == [0, 1, 2]
    ((item, node, estimate, limit, why),) = batch.refused
    assert item["path"] == "/in/huge.png" and node == "blur"
    assert estimate > limit == 400 * MiB
    assert "exceeds the largest worker budget 400.0 MiB" in why and "not a TIFF" in why
    (row,) = batch.plan.oversize
    assert row["action"] == "refused" and row["estimate"] == estimate
    # a TIFF in a chain of tiled ops ending in a TIFF save is processed tiled instead
    tiff_wf = Workflow("t", [Node("load", "load"),
                             Node("blur", "gaussian", {"sigma": 2.0}, after="load"),
                             Node("save", "save", {"format": "tiff"}, after="blur")])
    items[-1]["format"] = "tiff"
    batch = prepare_batch(tiff_wf, node_tasks(tiff_wf), items, cap, probe=False)
    assert [i["path"] for i in batch.tiled] == ["/in/huge.png"] and not batch.refused


def test_memory_annotations_only_when_memory_can_bind():
    tasks = node_tasks(BLUR)
    roomy = prepare_batch(BLUR, tasks, items_of(64, 400, 300), capacity(8000 * MiB),
                          chunk_size=8, probe=False)
    assert not roomy.annotate_memory and roomy.chunk_annotations(
        roomy.tasks["blur"], roomy.make_chunks(roomy.items, 8)[0]) == {}
    tight = prepare_batch(BLUR, tasks, items_of(16, 6000, 4500), capacity(600 * MiB, 1200 * MiB),
                          chunk_size=8, probe=False)
    assert tight.annotate_memory and tight.task_limit == 300 * MiB
    chunks = tight.make_chunks(tight.items, 8)
    assert all(len(c) < 8 for c in chunks)
    for c in chunks:
        for nid, task in tight.tasks.items():
            need = tight.chunk_annotations(task, c)["resources"][MEMORY]
            assert need <= 1200 * MiB  # never more than the largest worker advertises
            assert need == min(tight.model.chunk_peaks(c.items)[nid], 1200 * MiB)
    # the run reuses the plan's cut; tapered (renumbered) chunks get their own peaks
    mixed = [*items_of(8, 6000, 4500), *items_of(8, 400, 300)]
    for k, item in enumerate(mixed):
        item["item_id"] = k
    tight = prepare_batch(BLUR, tasks, mixed, capacity(600 * MiB, 1200 * MiB),
                          chunk_size=8, probe=False)
    cut = tight.make_chunks(tight.items, 8)
    assert [c.items for c in cut] == [c.items for c in tight.make_chunks(tight.items, 8)]
    for c in taper(cut, 4):
        need = tight.chunk_annotations(tight.tasks["blur"], c)["resources"][MEMORY]
        assert need == min(tight.model.chunk_peaks(c.items)["blur"], 1200 * MiB)


def test_static_resources_for_gpu_and_concurrency():
    wf = Workflow("g", [Node("load", "load"),
                        Node("blur", "gaussian", {"sigma": 1.0}, after="load", device="auto"),
                        Node("save", "save", after="blur", concurrency=2)])
    cap = capacity(8000 * MiB, GPU=1, **{"dagflow-save": 2})
    batch = prepare_batch(wf, node_tasks(wf), items_of(4, 100, 100), cap, probe=False)
    assert batch.tasks["blur"].device == "gpu" and batch.tasks["load"].device == "cpu"
    ann = batch.annotations({nid: {"retries": 1} for nid in batch.tasks})
    assert ann["blur"] == {"retries": 1, "resources": {"GPU": 1}}
    assert ann["save"] == {"retries": 1, "resources": {"dagflow-save": 1}}
    assert ann["load"] == {"retries": 1}
    # a cluster without GPUs (or without the slot) gets no such annotations
    plain = prepare_batch(wf, node_tasks(wf), items_of(4, 100, 100), capacity(8000 * MiB),
                          probe=False)
    assert plain.tasks["blur"].device == "cpu" and plain.node_resources == {}


def test_local_capacity_matches_what_a_local_cluster_advertises():
    cap = local_capacity({"n_workers": 2, "threads_per_worker": 3, "memory_limit": "1GiB"})
    assert cap.threads == 6 and len(cap.workers) == 2
    assert cap.min_budget == worker_budget(2**30)


# --------------------------------------------------------------------------- in a run


class Restrictions(SchedulerPlugin):
    """Scheduler plugin recording each task's resource restrictions as it is placed."""

    name = "test-restrictions"

    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler
        self.seen: dict[str, dict] = {}

    def transition(self, key, start, finish, *args, **kwargs):
        if finish == "processing":
            ts = self.scheduler.tasks.get(key)
            if ts is not None:
                self.seen[str(key)] = dict(ts.resource_restrictions or {})


def _write_pngs(directory: Path, n: int, size: tuple[int, int]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        PILImage.fromarray(photo_like(size[1], size[0], seed=i)).save(directory / f"{i}.png",
                                                                       compress_level=1)


def test_run_annotates_memory_and_workers_advertise_it(tmp_path):
    from distributed import Client, LocalCluster

    _write_pngs(tmp_path / "in", 8, (450, 300))
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address="127.0.0.1:0", resources={"MEMORY": 3 * MiB}) as cluster, \
            Client(cluster) as c:
        plugin = Restrictions(cluster.scheduler)
        cluster.scheduler.add_plugin(plugin)
        wf = Workflow("m", [Node("load", "load"),
                            Node("blur", "gaussian", {"sigma": 1.0}, after="load"),
                            Node("save", "save", {"format": "png"}, after="blur",
                                 concurrency=1)])
        with dask.config.set({"dagflow.monitor.report": False}):
            result = dagflow.run(wf, tmp_path / "in", tmp_path / "out", client=c,
                                 progress=False, chunk_size=4)
        worker = next(iter(cluster.scheduler.workers.values()))
        assert worker.resources == {"MEMORY": 3 * MiB, "dagflow-save": 1}  # declared kept
    assert result.succeeded == 8 and result.failed == 0
    blur = {k: v for k, v in plugin.seen.items() if "blur" in k}
    saves = [v for k, v in plugin.seen.items() if "'save" in k]
    assert blur and all(0 < v[MEMORY] <= 3 * MiB for v in blur.values())
    assert saves and all(v.get("dagflow-save") == 1 for v in saves)
    assert result.chunks > 3  # chunks cut below 4 items to fit half the budget
    assert result.estimate["peak_task"] <= 3 * MiB
    assert "estimated peak" in str(result)


def test_gpu_nodes_fall_back_to_cpu_and_are_recorded_degraded(tmp_path, client,
                                                             monkeypatch):
    from dagflow.ops import dispatch

    # the workers are threads of this process: no GPU for them, on any machine
    monkeypatch.setattr(dispatch, "gpu_problem", lambda: "no GPU in this test")
    _write_pngs(tmp_path / "in", 3, (64, 48))
    wf = Workflow("g", [Node("load", "load"),
                        Node("blur", "gaussian", {"sigma": 1.0}, after="load", device="gpu"),
                        Node("save", "save", {"format": "png"}, after="blur")])
    with dask.config.set({"dagflow.resources.detect-gpu": False}):
        result = dagflow.run(wf, tmp_path / "in", tmp_path / "out", client=client,
                             progress=False)
    assert result.succeeded == 3 and result.failed == 0
    rows = ds.dataset(result.run_dir / "records").to_table().to_pylist()
    blur = [r for r in rows if r["node_id"] == "blur"]
    assert {(r["status"], r["device"], r["degraded"]) for r in blur} == {
        ("ok", "cpu-fallback", True)}
    assert {(r["device"], r["degraded"]) for r in rows if r["node_id"] == "load"} == {
        ("cpu", False)}


@pytest.mark.slow
def test_memory_limit_holds_under_load_measured_by_sampled_rss(tmp_path):
    """A batch that would need more than a worker's memory limit if every thread took a
    chunk at once: MEMORY annotations pace it; the workers' sampled RSS stays under the
    limit and the nanny kills no worker."""
    import psutil
    from distributed import Client, LocalCluster

    _write_pngs(tmp_path / "in", 10, (3200, 2400))  # 23 MB decoded, ~140 MB to blur
    limit = 600 * MiB
    wf = Workflow("m", [Node("load", "load"),
                        Node("blur", "gaussian", {"sigma": 3.0}, after="load"),
                        Node("save", "save", {"format": "png", "compression": 1},
                             after="blur")])
    with LocalCluster(n_workers=1, threads_per_worker=4, memory_limit=limit,
                      dashboard_address="127.0.0.1:0", host="127.0.0.1") as cluster, \
            Client(cluster) as c:
        pids = c.run(os.getpid)
        procs = [psutil.Process(p) for p in pids.values()]
        peak = {"rss": 0}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                for p in procs:
                    with contextlib.suppress(psutil.Error):  # a worker that just died
                        peak["rss"] = max(peak["rss"], p.memory_info().rss)
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            result = dagflow.run(wf, tmp_path / "in", tmp_path / "out", client=c,
                                 progress=False, chunk_size=5)
        finally:
            stop.set()
            sampler.join()
        assert c.run(os.getpid) == pids  # no worker was restarted
    assert result.succeeded == 10 and result.failed == 0
    assert result.chunks >= 4  # 5-item chunks would not fit; cut to the task limit
    assert peak["rss"] < 0.95 * limit, (peak["rss"], limit)


def _plus_one(x: int) -> int:
    return x + 1


@pytest.mark.slow
def test_tasks_waiting_for_memory_run_on_a_restarted_worker():
    """A worker restarted by its nanny joins without MEMORY and gets it from the plugin a
    moment later: the scheduler is told, so tasks waiting for MEMORY do not wait forever."""
    from distributed import Client, LocalCluster

    from dagflow.runtime.capacity import advertise, cluster_capacity

    with LocalCluster(n_workers=1, threads_per_worker=1, memory_limit="1GiB",
                      dashboard_address="127.0.0.1:0", host="127.0.0.1") as cluster, \
            Client(cluster) as c:
        advertise(c)
        assert cluster_capacity(c).has_memory
        with contextlib.suppress(Exception):  # the worker dies before it answers
            c.run(os._exit, 1)
        future = c.submit(_plus_one, 1, resources={MEMORY: 1000}, pure=False)
        assert future.result(timeout=60) == 2
        assert cluster_capacity(c).has_memory


def test_large_batches_are_probed_on_the_workers(tmp_path, make_photos, client):
    paths = make_photos(tmp_path / "in", 5)
    (tmp_path / "in" / "bad.jpg").write_bytes(b"not an image")
    items = [{**items_of(1)[0], "item_id": i, "path": str(p), "width": None, "height": None}
             for i, p in enumerate([*paths, tmp_path / "in" / "bad.jpg"])]
    with dask.config.set({"dagflow.resources.probe-limit": 2,
                          "dagflow.resources.probe-large": "cluster"}):
        batch = prepare_batch(BLUR, node_tasks(BLUR), items, capacity(8000 * MiB),
                              client=client)
    assert batch.plan.probe == {"probed": 5, "failed": 1, "missing": 1, "on_workers": 6}
    assert all(i["width"] and i["format"] for i in items[:5])
    assert len(batch.items) == 6  # the unreadable one runs, and fails at load with why


@pytest.mark.slow
def test_large_batch_planned_from_a_sample_guards_the_unprobed_items(tmp_path):
    """Above probe-limit only a sample of headers is read before the run; an unsampled
    image too large for the workers is refused on the worker before it is decoded."""
    from distributed import Client, LocalCluster

    from dagflow.testing.badcorpus import _png_bomb

    _write_pngs(tmp_path / "in", 12, (200, 150))
    (tmp_path / "in" / "00-huge.png").write_bytes(_png_bomb(14000, 14000))  # 196 MB decoded
    wf = Workflow("g", [Node("load", "load"), Node("save", "save", {"format": "png"},
                                                   after="load")])
    settings = {"dagflow.resources.probe-limit": 4, "dagflow.resources.probe-sample": 2}
    with dask.config.set(settings), \
            LocalCluster(n_workers=1, threads_per_worker=1, memory_limit="1GiB",
                         dashboard_address="127.0.0.1:0", host="127.0.0.1") as cluster, \
            Client(cluster) as c:
        pids = c.run(os.getpid)
        result = dagflow.run(wf, tmp_path / "in", tmp_path / "out", client=c, progress=False)
        assert c.run(os.getpid) == pids  # no worker died decoding it
    rows = {(Path(r["input_path"]).name, r["node_id"]): r
            for r in ds.dataset(result.run_dir / "records").to_table().to_pylist()}
    huge = rows[("00-huge.png", "load")]
    assert (huge["status"], huge["error_class"], huge["reason"]) == (
        "failed", "bad_input", "oversize")
    assert "sampled image" in huge["error_message"]
    assert result.succeeded == 12 and result.failed == 1


def _reference_chunks(model, items, size, limit):
    """The chunk cut spelled out item by item and node by node: the specification."""
    out, current, hold, extra = [], [], {}, {}
    for item in items:
        est = model.estimates(item) or ()
        if current:
            fits = len(current) < size and all(
                hold[k] + e.hold + max(extra[k], e.extra) <= limit for k, e in enumerate(est))
            if not fits:
                out.append((current, [hold[k] + extra[k] for k in range(len(model.node_ids))]))
                current, hold, extra = [], {}, {}
        current.append(item["item_id"])
        for k, e in enumerate(est):
            hold[k] = hold.get(k, 0) + e.hold
            extra[k] = max(extra.get(k, 0), e.extra)
    if current:
        out.append((current, [hold.get(k, 0) + extra.get(k, 0)
                              for k in range(len(model.node_ids))]))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_chunk_cut_equals_the_item_by_item_cut(seed):
    """Runs of items sharing one estimate (those planned without a header share the
    default) are cut arithmetically; the chunks and their peaks are the same as the
    item-by-item cut's, at limits that split the runs anywhere."""
    import random

    rng = random.Random(seed)
    model = MemoryModel(node_tasks(BLUR))
    sizes = [(4000, 3000), (400, 300), (1200, 900)]
    kinds = [rng.choice(["none", "none", "none", 0, 1, 2]) for _ in range(300)]
    items = [{"item_id": i, "path": f"/x/{i}.jpg"} if k == "none" else
             {**items_of(1, *sizes[k])[0], "item_id": i} for i, k in enumerate(kinds)]
    model.set_default(items)
    for size in (1, 3, 8, 64):
        for limit in (1, 20 * MiB, 100 * MiB, 250 * MiB, 10**12):
            peaks = {}
            chunks = model.make_chunks(items, size, limit, peaks=peaks)
            got = [([i["item_id"] for i in c.items], list(peaks[c.index].values()))
                   for c in chunks]
            assert got == _reference_chunks(model, items, size, limit), (size, limit)
