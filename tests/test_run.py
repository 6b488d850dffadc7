"""End to end: dagflow.run on real clusters over real files, records, resume, inputs."""

from __future__ import annotations

import csv
import json
import os
import re

import dask
import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from _workflows import THUMBS, run
from PIL import Image as PILImage

import dagflow
from dagflow import Node, Workflow
from dagflow.io import read_image
from dagflow.recovery.checkpoint import RECORD_SCHEMA


def test_thumbnails_end_to_end_in_process(photos_with_bad, tmp_path, client):
    out = tmp_path / "out"
    result = run(THUMBS, photos_with_bad, out, client)
    assert (result.items, result.succeeded, result.failed) == (14, 12, 2)
    assert result.exit_code == 1 and result.quarantined == 2
    # outputs mirror the input tree, with the new extension
    for src in photos_with_bad.rglob("img*"):
        rel = src.relative_to(photos_with_bad).with_suffix(".png")
        img = read_image(out / rel)
        assert max(img.width, img.height) == 32
    # records: one row per item and node, readable as a dataset
    table = ds.dataset(result.run_dir / "records").to_table()
    assert set(RECORD_SCHEMA.names) <= set(table.column_names)
    assert table.num_rows == 14 * 3
    rows = table.to_pylist()
    broken = [r for r in rows if r["input_path"].endswith("broken.jpg")]
    assert {r["node_id"]: r["status"] for r in broken} == {
        "load": "failed", "small": "upstream_failed", "save": "upstream_failed"}
    assert broken[0]["error_class"] == "bad_input" or any(
        r["error_class"] == "bad_input" for r in broken)
    ok = [r for r in rows if r["status"] == "ok" and r["node_id"] == "save"]
    # outputs are recorded relative to the output root, with what proves them
    assert len(ok) == 12 and all(not os.path.isabs(r["output_path"]) for r in ok)
    assert all((out / r["output_path"]).stat().st_size == r["output_size"]
               and (out / r["output_path"]).stat().st_mtime_ns == r["output_mtime_ns"]
               and r["output_hash"] is None for r in ok)
    assert all(r["worker"] and r["duration_s"] >= 0 for r in ok)
    quarantine = pq.read_table(result.run_dir / "quarantine.parquet").to_pylist()
    assert {os.path.basename(q["input_path"]) for q in quarantine} == {"broken.jpg", "empty.png"}
    assert all(q["reason"] for q in quarantine)


def test_a_run_counts_the_cpu_of_its_checkpoints_and_monitoring(photos, tmp_path, client):
    """``own_cpu_s``: each feature's CPU where it ran (workers, scheduler, client), in the
    result and its summary.json; a feature switched off costs nothing."""
    both = run(THUMBS, photos, tmp_path / "both", client)
    assert both.own_cpu_s["checkpoint"] > 0 and both.own_cpu_s["monitoring"] > 0
    summary = json.loads((both.run_dir / "summary.json").read_text())
    assert summary["own_cpu_s"] == pytest.approx(both.own_cpu_s)
    assert "safety features' own CPU: checkpoint" in str(both)
    monitoring = run(THUMBS, photos, tmp_path / "monitoring", client, checkpoint=False,
                     resume=False)
    assert monitoring.own_cpu_s["checkpoint"] == 0 < monitoring.own_cpu_s["monitoring"]
    with dask.config.set({"dagflow.monitor.enabled": False}):
        checkpoints = run(THUMBS, photos, tmp_path / "checkpoints", client)
    assert checkpoints.own_cpu_s["monitoring"] == 0 < checkpoints.own_cpu_s["checkpoint"]
    # resuming reads the checkpoint: that is its cost too
    again = run(THUMBS, photos, tmp_path / "both", client, resume=True)
    assert again.executed == 0 and again.own_cpu_s["checkpoint"] > 0


def test_rerun_executes_nothing_and_changes_rerun_only_what_they_affect(photos_with_bad,
                                                                        tmp_path, client):
    out = tmp_path / "out"
    first = run(THUMBS, photos_with_bad, out, client)
    assert first.executed == 14
    second = run(THUMBS, photos_with_bad, out, client)
    assert (second.executed, second.already_done) == (0, 14)
    # a changed input file re-runs that item only
    target = next(photos_with_bad.glob("img001.jpg"))
    PILImage.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(target)
    third = run(THUMBS, photos_with_bad, out, client)
    assert third.executed == 1 and third.succeeded == 1
    # a deleted output re-runs its item
    (out / "img002.png").unlink()
    fourth = run(THUMBS, photos_with_bad, out, client)
    assert fourth.executed == 1 and (out / "img002.png").exists()
    # a changed parameter re-runs every item of the nodes it affects
    bigger = Workflow("thumbs", [
        Node("load", "load"),
        Node("small", "resize", {"long_side": 24}, after="load"),
        Node("save", "save", {"format": "png"}, after="small"),
    ])
    fifth = run(bigger, photos_with_bad, out, client)
    assert fifth.executed == 12  # the two bad inputs stay quarantined
    assert max(read_image(out / "img002.png").data.shape[:2]) == 24
    # --retry-failed runs exactly the quarantined ones
    retried = run(bigger, photos_with_bad, out, client, retry_failed=True)
    assert retried.executed == 2 and retried.failed == 2


def test_dag_with_fan_out_fan_in_condition_and_aggregates(photos, tmp_path, client):
    wf = Workflow("dag", [
        Node("load", "load"),
        Node("small", "resize", {"size": [40, 30]}, after="load"),
        Node("blur", "gaussian", {"sigma": 2.0}, after="small"),
        Node("gray", "grayscale", after="small"),
        Node("mix", "composite", {"mode": "blend", "alpha": 0.5}, after=["blur", "gray"]),
        Node("save", "save", {"format": "png"}, after="mix"),
        Node("pngs_only", "flip", {"axis": "horizontal"}, after="load", when="format == 'png'"),
        Node("save_png", "save", {"format": "png", "subdir": "flipped"}, after="pngs_only"),
        Node("stats", "stats", after="load"),
        Node("sheet", "contact_sheet", {"thumb": 16, "format": "png"}, after="small"),
    ])
    result = run(wf, photos, tmp_path / "out", client)
    assert result.failed == 0 and result.succeeded == 12
    n_png = len(list(photos.rglob("*.png")))
    assert result.nodes["save_png"] == {"ok": n_png, "skipped": 12 - n_png}
    assert len(list((tmp_path / "out" / "flipped").rglob("*.png"))) == n_png
    mixed = read_image(tmp_path / "out" / "img001.png")
    assert (mixed.width, mixed.height, mixed.channels) == (40, 30, 3)
    stats = pq.read_table(result.aggregates["stats"]).to_pandas()
    assert len(stats) == 12
    sheet = read_image(result.aggregates["sheet"])
    assert sheet.width >= 16 * 3 and sheet.height >= 16 * 3


@pytest.mark.parametrize("kind", ["glob", "list", "csv", "parquet", "file"])
def test_inputs_glob_list_and_manifests(kind, photos, tmp_path, client):
    jpgs = sorted(photos.rglob("*.jpg"))
    if kind == "glob":
        inputs = str(photos / "**" / "*.jpg")
    elif kind == "list":
        inputs = [str(p) for p in jpgs]
    elif kind == "file":
        inputs, jpgs = str(jpgs[0]), jpgs[:1]
    else:
        manifest = photos / f"manifest.{kind}"
        rels = [str(p.relative_to(photos)) for p in jpgs]
        if kind == "csv":
            with open(manifest, "w", newline="") as f:
                csv.writer(f).writerows([["path"], *[[r] for r in rels]])
        else:
            import pyarrow as pa

            pq.write_table(pa.table({"path": rels}), manifest)
        inputs = str(manifest)
    result = run(THUMBS, inputs, tmp_path / "out", client)
    assert result.items == len(jpgs) and result.succeeded == len(jpgs)


def test_invalid_inputs_fail_before_anything_runs(tmp_path, client):
    with pytest.raises(dagflow.InputError, match="no images found"):
        run(THUMBS, tmp_path, tmp_path / "out", client)
    manifest = tmp_path / "m.csv"
    manifest.write_text("file\nx.jpg\n")
    with pytest.raises(dagflow.InputError, match="no 'path' column"):
        run(THUMBS, manifest, tmp_path / "out", client)
    bad = Workflow("w", [Node("load", "load"), Node("x", "resize", after="load")])
    with pytest.raises(dagflow.WorkflowValidationError):
        run(bad, tmp_path, tmp_path / "out", client)
    for size in ("banana", -5, 2.5, True):
        with pytest.raises(dagflow.ConfigError, match="chunk size must be 'auto' or a whole"):
            run(THUMBS, tmp_path, tmp_path / "out", client, chunk_size=size)
    assert not (tmp_path / "out").exists()


def test_run_in_the_background_returns_a_handle(photos, tmp_path, client):
    handle = dagflow.run(THUMBS, photos, tmp_path / "out", client=client, wait=False)
    result = handle.result(timeout=60)
    assert handle.done() and result.succeeded == 12
    assert handle.done_items == 12
    assert "12 succeeded" in result._repr_html_()


@pytest.mark.slow
def test_embedded_local_cluster_with_worker_processes(photos_with_bad, tmp_path):
    result = dagflow.run(THUMBS, photos_with_bad, tmp_path / "out", progress=False,
                         local_options={"n_workers": 2, "threads_per_worker": 1})
    assert (result.succeeded, result.failed) == (12, 2)
    workers = {r for r in result.records()["worker"] if r}
    assert len(workers) >= 1 and all(w.startswith("tcp://127.0.0.1:") for w in workers)
    assert result.dashboard and result.dashboard.startswith("http://127.0.0.1:")


def test_outputs_inside_the_input_tree_are_never_inputs(photos, tmp_path, client):
    first = run(THUMBS, photos, photos / "thumbs", client)
    again = run(THUMBS, photos, photos / "thumbs", client)
    assert first.items == again.items == 12 and again.executed == 0
    with pytest.raises(dagflow.InputError, match="also an input directory"):
        run(THUMBS, photos, photos, client)


@pytest.mark.parametrize("exclude", [False, True])
def test_mixed_inputs_resolve_to_the_paths_and_common_root_of_their_files(tmp_path,
                                                                          monkeypatch,
                                                                          exclude):
    """Directories (one with files only below it), a glob, single files and a manifest
    together: every path absolute and normal, in order, once; the root the deepest
    directory common to the files kept (checked against os.path), relative paths from
    it; an output directory inside an input directory left out."""
    from dagflow.inputs import resolve_inputs

    data = tmp_path / "data"
    files = ["x/a.jpg", "x/deep/b.png", "y/only/below/c.jpg", "z/d.jpg", "z/e.tif",
             "x/out/old.jpg"]
    for name in files:
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes(b"x")
    (data / "list.csv").write_text("path\nz/d.jpg\nx/../z/e.tif\n")
    monkeypatch.chdir(data)
    specs = [str(data / "x"), "y", "z/*.jpg", "./z/e.tif", str(data / "list.csv"),
             str(data / "x")]  # x again: its files once
    got = resolve_inputs(specs, exclude=data / "x" / "out" if exclude else None)
    expected = []
    for name in ["x/a.jpg", "x/deep/b.png", "x/out/old.jpg", "y/only/below/c.jpg",
                 "z/d.jpg", "z/e.tif"]:
        path = os.path.abspath(data / name)
        if path not in expected and not (exclude and "/out/" in path):
            expected.append(path)
    assert [i["path"] for i in got.items] == expected
    root = os.path.commonpath([os.path.dirname(p) for p in expected])
    assert str(got.root) == root
    assert [i["rel"] for i in got.items] == [os.path.relpath(p, root) for p in expected]
    assert [i["item_id"] for i in got.items] == list(range(len(expected)))
    # a directory whose files are all further down: the root is where the files are
    below = resolve_inputs([str(data / "y"), "y/only/below/c.jpg"])
    assert str(below.root) == str(data / "y" / "only" / "below")
    assert [i["rel"] for i in below.items] == ["c.jpg"]


def test_resolved_paths_are_normal_and_absolute(tmp_path, monkeypatch):
    """Every spelling of an input resolves to the one absolute, normal path (checked
    against os.path.abspath), dot-directories included."""
    from dagflow.inputs import resolve_inputs

    root = tmp_path / ".data" / "in"
    (root / "sub").mkdir(parents=True)
    for name in ("a.jpg", "sub/b.jpg"):
        (root / name).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    spellings = [f"{root}/sub/../a.jpg", f"{root}/./sub/b.jpg", f"{root}//a.jpg",
                 ".data/in/sub/b.jpg", f"{root}/sub/b.jpg"]
    items = resolve_inputs(spellings, root=root).items
    assert [i["path"] for i in items] == [os.path.abspath(f"{root}/a.jpg"),
                                         os.path.abspath(f"{root}/sub/b.jpg")]
    assert [i["rel"] for i in items] == ["a.jpg", "sub/b.jpg"]
    scanned = resolve_inputs(".data/in").items  # a relative directory, a dot-directory
    assert [i["path"] for i in scanned] == [str(root / "a.jpg"), str(root / "sub" / "b.jpg")]
    manifest = root / "m.csv"
    manifest.write_text("path\n./a.jpg\nsub/b.jpg\nsub/../a.jpg\n")
    listed = resolve_inputs(str(manifest)).items
    assert [i["path"] for i in listed] == [str(root / "a.jpg"), str(root / "sub" / "b.jpg")]


def test_the_first_submission_gives_each_worker_thread_two_chunks_the_rest_follows(
        photos, tmp_path, client):
    """Two chunks per worker thread go first, so that the workers start while the rest is
    sent, and one more each right behind them, in a graph of its own, before any chunk
    has finished; the rest follows as chunks finish, every chunk once."""
    import json

    threads = sum(client.nthreads().values())
    result = run(THUMBS, photos, tmp_path / "out", client, chunk_size=1)
    assert result.succeeded == 12 and result.chunks == 12
    events = [json.loads(line) for line in
              (result.run_dir / "events.jsonl").read_text().splitlines()]
    submitted = [e["chunks"] for e in events if e["event"] == "chunks_submitted"]
    assert submitted[0] == list(range(2 * threads))
    assert submitted[1] == list(range(2 * threads, 3 * threads))  # the reserve
    assert sorted(c for chunks in submitted for c in chunks) == list(range(12))
    first_finished = next(i for i, e in enumerate(events) if e["event"] == "chunk_finished")
    reserve = next(i for i, e in enumerate(events)
                   if e["event"] == "chunks_submitted" and e["chunks"] == submitted[1])
    later = next(i for i, e in enumerate(events)
                 if e["event"] == "chunks_submitted" and e["chunks"][0] >= 3 * threads)
    assert reserve < first_finished < later


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names fsynced files by /proc")
def test_a_run_flushes_its_state_to_the_disk_and_not_its_measurements(photos, tmp_path,
                                                                      client, monkeypatch):
    """The summary and the event log are made durable; the run's copy of its workflow
    and its monitoring files (the plan, the scheduler's data, the history) are written
    whole but not flushed, nor are records parts (outputs are, by their sink tasks)."""
    flushed: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # a file is flushed as its temporary, before its rename
        flushed.append(re.sub(r"/\.([^/]+)\.[0-9a-f]+\.tmp$", r"/\1",
                              os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    result = run(THUMBS, photos, tmp_path / "out", client)
    assert result.succeeded == 12
    run_dir = str(result.run_dir)
    assert {run_dir + "/summary.json", run_dir + "/events.jsonl"} <= set(flushed)
    state = str(tmp_path / "out" / "_dagflow")
    assert (result.run_dir / "workflow.yaml").is_file()
    assert (result.run_dir / "metrics" / "scheduler.json").is_file()
    assert list((tmp_path / "out" / "_dagflow" / "history").glob("run-*.parquet"))
    unflushed = [p for p in flushed if p.startswith(state) and (
        "/metrics" in p or "/history" in p or "/records" in p or p.endswith("workflow.yaml"))]
    assert unflushed == []


def test_a_deferred_fingerprint_is_the_one_the_client_would_read(tmp_path):
    """Resolved with the fingerprint deferred, scanned files are not read (no key yet);
    filled in later, each item equals the item resolved the usual way, a file that
    vanished meanwhile included (its manifest's size and time, or -1, as usual)."""
    from dagflow.inputs import fill_fingerprint, item_key, resolve_inputs

    data = tmp_path / "in"
    (data / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.jpg", "sub/b.png", "sub/c.jpg"]):
        (data / name).write_bytes(b"x" * (10 + i))
    (data / "m.csv").write_text("path,size,mtime_ns\nsub/c.jpg,7,8\ngone.jpg,5,6\n")
    specs = [str(data), str(data / "m.csv"), str(data / "a.jpg")]
    deferred = resolve_inputs(specs[:2], defer_fingerprint=True).items
    assert [i["key"] for i in deferred] == [None] * 4  # nothing read: gone.jpg is kept
    single = resolve_inputs(specs[2], defer_fingerprint=True).items
    assert single[0]["key"] is not None  # a file named by its path is read anyway
    os.utime(data / "a.jpg", ns=(1, 2))  # changed after resolving: the new time counts
    usual = resolve_inputs(specs[:2], stat=True).items
    for item in deferred:
        fill_fingerprint(item)
    assert deferred == usual
    gone = deferred[-1]
    assert (gone["size"], gone["mtime_ns"]) == (5, 6)
    assert gone["key"] == item_key(gone["path"], 5, 6)
    timed_out = resolve_inputs(specs[0], defer_fingerprint=True).items[0]
    fill_fingerprint(timed_out, stat=False)  # its file never answered: hashed unread
    assert timed_out["key"] == item_key(timed_out["path"], -1, -1)


def test_directories_resolved_without_fingerprints_give_the_usual_items(tmp_path):
    """Directories only (the items built in one pass): a directory given twice, or inside
    another given, lists its files once; outputs inside are left out; the relative paths,
    ids and, once filled in, fingerprints are those of the usual resolve."""
    from dagflow.inputs import fill_fingerprint, resolve_inputs

    data = tmp_path / "in"
    for name in ["x/a.jpg", "x/sub/b.png", "y/c.tif", "y/out/old.jpg"]:
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes(name.encode())
    specs = [data / "x", data / "y", data / "x" / "sub", data / "y"]
    deferred = resolve_inputs(specs, defer_fingerprint=True, exclude=data / "y" / "out")
    usual = resolve_inputs(specs, exclude=data / "y" / "out")
    assert [i["rel"] for i in deferred.items] == ["x/a.jpg", "x/sub/b.png", "y/c.tif"]
    assert deferred.root == usual.root == data
    assert all(i["key"] is None for i in deferred.items)
    for item in deferred.items:
        fill_fingerprint(item)
    assert deferred.items == usual.items


def test_a_first_run_leaves_fingerprints_to_its_tasks_and_the_next_run_matches_them(
        photos, tmp_path, client):
    """A first run reads no fingerprint before it starts; its records carry the ones its
    tasks read, equal to what a resuming run reads on the client, so that run executes
    nothing; a run with an aggregate node reads them first."""
    from dagflow.inputs import item_key
    from dagflow.runtime.run import fingerprints_needed

    out = tmp_path / "out"
    assert not fingerprints_needed(THUMBS, out, resume=True)
    first = run(THUMBS, photos, out, client)
    assert first.succeeded == 12
    records = first.records()
    for path, key in zip(records["input_path"], records["item_key"], strict=True):
        st = os.stat(path)
        assert key == item_key(path, st.st_size, st.st_mtime_ns)
    assert fingerprints_needed(THUMBS, out, resume=True)
    assert not fingerprints_needed(THUMBS, out, resume=False)
    again = run(THUMBS, photos, out, client)
    assert (again.executed, again.already_done) == (0, 12)
    stats = Workflow("s", [Node("load", "load"), Node("stats", "stats", after="load")])
    assert fingerprints_needed(stats, tmp_path / "empty", resume=True)


@pytest.mark.slow
def test_an_error_while_the_cluster_starts_closes_it_and_is_the_one_raised(tmp_path,
                                                                          monkeypatch):
    """The embedded cluster starts in the background while the run is planned: a run
    stopped before it uses the cluster (here: no inputs) closes it, worker processes
    included, and raises its own error, nothing written."""
    import psutil
    from distributed.core import Status

    import dagflow.runtime.cluster as cluster_module

    started, workers = [], []
    start = cluster_module.start_local_cluster

    def recording(**kwargs):
        started.append(start(**kwargs))
        workers.extend(psutil.Process(nanny.process.pid)
                       for nanny in started[-1].workers.values())
        return started[-1]

    monkeypatch.setattr(cluster_module, "start_local_cluster", recording)
    (tmp_path / "in").mkdir()
    with pytest.raises(dagflow.InputError, match="no images found"):
        dagflow.run(THUMBS, tmp_path / "in", tmp_path / "out", progress=False,
                    local_options={"n_workers": 1, "threads_per_worker": 1})
    assert len(started) == 1 and started[0].status == Status.closed
    assert len(workers) == 1
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
    assert not (tmp_path / "out").exists()
    with pytest.raises(dagflow.WorkflowValidationError):  # before any cluster starts
        dagflow.run(Workflow("w", [Node("load", "load"), Node("x", "resize", after="load")]),
                    tmp_path / "in", tmp_path / "out", progress=False)
    assert len(started) == 1
