"""Runs from a store to a store: ``dagflow run`` and ``dagflow.run`` with ``s3://``
inputs and output, against moto's S3 server on 127.0.0.1 (``_s3.py``).

Workers list, read and write the objects themselves; the run's state (records, events,
quarantine, summary) is uploaded under ``<output>/_dagflow/``; a second run resumes from
it, checking each output's size and ETag; ``status``, ``report`` and ``--retry-failed``
work on the store's output; the output's lock is an object made by a conditional write;
a missing bucket or refused credentials stop the run in one line before it starts.
"""

from __future__ import annotations

import collections
import io
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import dask
import numpy as np
import pyarrow.parquet as pq
import pytest
from _s3 import KEY, SECRET, s3_fixture, s3_server_fixture  # noqa: F401 - fixtures
from click.testing import CliRunner
from PIL import Image as PILImage

import dagflow
from dagflow import Node, Workflow
from dagflow.cli import main
from dagflow.exceptions import OutputLockedError, StorageError
from dagflow.runtime.result import EXIT_STORAGE

THUMBS = Workflow("thumbs", [
    Node("load", "load"),
    Node("small", "resize", {"long_side": 32}, after="load"),
    Node("save", "save", {"format": "png"}, after="small"),
])
WORKFLOW_YAML = THUMBS.to_yaml()
INPUTS = ["in/img1.jpg", "in/img2.jpg", "in/img4.jpg", "in/img5.jpg", "in/sub/img0.jpg",
          "in/sub/img3.jpg"]


def jpeg(seed: int, size=(48, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture
def store(s3, client):
    """The bucket, with six photos under ``in/`` (two in ``in/sub/``) and a broken one;
    dagflow's storage options and its scheduler address pointing at the test's."""
    for i in range(6):
        s3.put(f"in/{'sub/' if i % 3 == 0 else ''}img{i}.jpg", jpeg(i))
    s3.put("in/broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
    with dask.config.set({"dagflow.storage.options": {"s3": s3.options},
                          "dagflow.storage.state-push-interval": 0.2,
                          "scheduler-address": client.scheduler.address}):
        yield s3


def keys(s3) -> list[str]:
    """Every object of the bucket."""
    return s3.keys()


def state_objects(s3) -> dict[str, bytes]:
    return {k: s3.get(k) for k in keys(s3) if k.startswith("out/_dagflow/")}


def records(s3) -> list[dict]:
    rows = []
    for key in keys(s3):
        if key.startswith("out/_dagflow/runs/") and "/records/part-" in key:
            rows.extend(pq.read_table(io.BytesIO(s3.get(key))).to_pylist())
    return rows


def etag(s3, key: str) -> str:
    return s3.server.client().head_object(Bucket=s3.bucket, Key=key)["ETag"].strip('"')


def test_a_run_from_a_store_to_a_store_resumes_checking_size_and_etag(store):
    out = store.url("out")
    result = dagflow.run(THUMBS, store.url("in/"), out, progress=False)
    assert (result.items, result.succeeded, result.failed) == (7, 6, 1)
    assert str(result.run_dir) == f"{out}/_dagflow/runs/{result.run_id}"
    # the outputs are objects, mirroring the input tree
    outputs = [k for k in keys(store) if k.startswith("out/") and "_dagflow" not in k]
    assert outputs == sorted(k.replace("in/", "out/").replace(".jpg", ".png") for k in INPUTS)
    assert max(PILImage.open(io.BytesIO(store.get("out/sub/img3.png"))).size) == 32
    # the state is on the store: records (output paths relative to the output, with
    # the object's size and ETag), events, quarantine, summary; the lock is given back
    run = f"out/_dagflow/runs/{result.run_id}/"
    state = state_objects(store)
    for name in ("events.jsonl", "summary.json", "quarantine.parquet", "workflow.yaml"):
        assert run + name in state, name
    assert "out/_dagflow/lock" not in keys(store)
    saved = {r["output_path"]: r for r in records(store) if r["node_id"] == "save"
             and r["status"] == "ok"}
    assert sorted(saved) == sorted(k[3:].replace(".jpg", ".png") for k in INPUTS)
    assert saved["sub/img0.png"]["output_hash"] == f"etag:{etag(store, 'out/sub/img0.png')}"
    assert saved["sub/img0.png"]["output_size"] == len(store.get("out/sub/img0.png"))
    quarantine = pq.read_table(io.BytesIO(state[run + "quarantine.parquet"])).to_pylist()
    assert [q["input_path"] for q in quarantine] == [store.url("in/broken.jpg")]
    # the result reads its records, analysis and report from the store
    frame = result.records()
    assert len(frame) == 7 * 3 and f"{out}/sub/img0.png" in set(frame["output_path"])
    assert result.analysis().to_dict()["run"]["items"] == 7
    assert result.report() == f"{result.run_dir}/report.html"
    assert f"{run}report.html" in keys(store)
    state = state_objects(store)
    # no credential anywhere in the state
    for key, data in state.items():
        assert KEY.encode() not in data and SECRET.encode() not in data, key

    store.proxy.clear()
    again = dagflow.run(THUMBS, store.url("in/"), out, progress=False)
    assert (again.executed, again.already_done) == (0, 7)
    # the six outputs are checked from one listing of the output, not one HEAD each
    outputs_headed = [r for r in store.proxy.requests
                      if r.method == "HEAD" and r.key.endswith(".png")]
    assert outputs_headed == []

    # an output replaced (another ETag, same size) or deleted runs its item again
    replaced = bytearray(store.get("out/img1.png"))
    replaced[-20] ^= 0xFF
    store.put("out/img1.png", bytes(replaced))
    store.server.client().delete_object(Bucket=store.bucket, Key="out/sub/img3.png")
    third = dagflow.run(THUMBS, store.url("in/"), out, progress=False)
    assert third.executed == 2 and third.succeeded == 2
    assert "out/sub/img3.png" in keys(store)


def _area(key: str) -> str:
    if key.startswith("many/"):
        return "inputs"
    if key.startswith("out/_dagflow/"):
        return "state"
    return "outputs" if key.startswith("out/") else "bucket"


def test_a_run_asks_the_store_once_per_input_and_output_and_a_few_times_per_chunk(store):
    """Every request of a run from a store to a store, counted at the proxy: each input
    read by one GET (small, as listed: fetched whole, with no HEAD and no header's block
    before it) and a sample of them probed by one GET each before the run; each output
    one PUT (its size and ETag for the record from the answer: no HEAD after it); the
    run's state one PUT per chunk (its records part) and a few per run. The connections
    are kept open, not one per image."""
    n, chunk_size, sample = 24, 4, 4
    for i in range(n):
        store.put(f"many/img{i:02d}.jpg", jpeg(100 + i))
    # only the run's last push of its state: the count does not depend on the timing
    with dask.config.set({"dagflow.storage.state-push-interval": 0,
                          "dagflow.resources.probe-store": sample}):
        result = dagflow.run(THUMBS, store.url("many/"), store.url("out"), progress=False,
                             chunk_size=chunk_size)
    assert (result.succeeded, result.chunks) == (n, n // chunk_size)
    seen = collections.Counter((r.method, _area(r.key)) for r in store.proxy.requests)
    assert {k: v for k, v in seen.items() if k[1] == "inputs"} == {("GET", "inputs"): n + sample}
    assert {k: v for k, v in seen.items() if k[1] == "outputs"} == {("PUT", "outputs"): n}
    parts = [r for r in store.proxy.requests if "/records/part-" in r.key]
    assert [r.method for r in parts] == ["PUT"] * result.chunks
    # the lock (taken, given back), three listings (inputs, state, unfinished uploads)
    # and the run's files at its end (events, summary, workflow, history, metrics): 14
    per_run = sum(v for k, v in seen.items() if k[1] in ("state", "bucket")) - len(parts)
    assert per_run <= 16, sorted(seen.items())
    assert store.proxy.connections <= n // 2


def test_cli_run_status_report_and_retry_failed_on_a_store(store, tmp_path):
    workflow = tmp_path / "thumbs.yaml"
    workflow.write_text(WORKFLOW_YAML)
    args = ["run", str(workflow), "-i", store.url("in/"), "-o", store.url("out/"), "--json"]
    with dask.config.set({"dagflow.monitor.report": "cli"}):  # the suite's default: off
        first = CliRunner().invoke(main, args)
    assert first.exit_code == 1, first.output
    summary = json.loads(first.stdout)
    assert (summary["succeeded"], summary["failed"]) == (6, 1)
    run_key = summary["run_dir"].removeprefix(store.url(""))
    assert f"{run_key}/report.html" in keys(store)  # written after the summary, uploaded

    shown = CliRunner().invoke(main, ["status", store.url("out"), "--json"])
    assert shown.exit_code == 0, shown.output
    status = json.loads(shown.stdout)
    assert (status["state"], status["done"], status["failed"], status["quarantined"]) == \
        ("finished", 6, 1, 1)
    assert status["outputs_changed"] == [] and status["lock"] is None
    assert status["run_dir"] == summary["run_dir"] == \
        f"{store.url('out')}/_dagflow/runs/{status['run_id']}"

    analysis = CliRunner().invoke(main, ["report", summary["run_dir"], "--json"])
    assert analysis.exit_code == 0, analysis.output
    assert json.loads(analysis.stdout)["run"]["items"] == 7

    retried = CliRunner().invoke(main, [*args, "--retry-failed"])  # the failed item only
    assert retried.exit_code == 1, retried.output
    assert (json.loads(retried.stdout)["executed"], json.loads(retried.stdout)["failed"]) \
        == (1, 1)
    store.put("in/broken.jpg", jpeg(99))  # repaired: a new input, and only it runs
    resumed = CliRunner().invoke(main, args)
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["executed"] == 1
    assert "out/broken.png" in keys(store)
    shown = CliRunner().invoke(main, ["status", store.url("out"), "--json"])
    assert json.loads(shown.stdout)["failed"] == 0


def test_one_run_per_output_on_a_store_and_a_dead_runs_lock_is_taken_over(store):
    lock = "out/_dagflow/lock"
    holder = {"run_id": "other", "pid": os.getpid(), "host": socket.gethostname(),
              "since": 0, "token": "x"}
    from dagflow.runtime.lock import _boot_id, _pid_namespace, _process_started

    holder.update(process_started=_process_started(os.getpid()), boot_id=_boot_id(),
                  pid_namespace=_pid_namespace())
    store.put(lock, json.dumps(holder).encode())
    with pytest.raises(OutputLockedError, match="run other") as refused:
        dagflow.run(THUMBS, store.url("in/"), store.url("out"), progress=False)
    assert "dagflow/lock" in str(refused.value)
    assert [k for k in keys(store) if k.startswith("out/")] == [lock]  # nothing ran

    # the same holder, whose process is gone (a pid no process has): stale, taken over
    store.put(lock, json.dumps({**holder, "pid": 2**22 + 17}).encode())
    result = dagflow.run(THUMBS, store.url("in/"), store.url("out"), progress=False)
    assert result.succeeded == 6 and lock not in keys(store)


def test_a_missing_bucket_or_refused_credentials_stop_the_run_before_it_starts(
        store, tmp_path):
    workflow = tmp_path / "thumbs.yaml"
    workflow.write_text(WORKFLOW_YAML)
    missing = CliRunner().invoke(main, ["run", str(workflow), "-i", store.url("in/"),
                                        "-o", "s3://no-such-bucket-dagflow/out"])
    assert missing.exit_code == EXIT_STORAGE, missing.output
    assert "no such bucket" in missing.stderr and len(missing.stderr.splitlines()) == 1

    wrong = {**store.options, "secret": "not-the-secret"}
    store.server.require_auth(True)
    try:
        with dask.config.set({"dagflow.storage.options": {"s3": wrong}}), \
                pytest.raises(StorageError) as refused:
            dagflow.run(THUMBS, store.url("in/"), store.url("out"), progress=False)
    finally:
        store.server.require_auth(False)
    assert refused.value.reason == "credentials"
    assert "not-the-secret" not in str(refused.value)
    assert not any(k.startswith("out/") for k in keys(store))


def test_a_driver_killed_mid_run_is_resumed_from_the_store(store, tmp_path):
    """The driver and its embedded cluster die at once right after taking in a records
    part (``DAGFLOW_FAULT``), leaving its lock object; the same command takes the dead
    run's lock over and finishes, every output once, and a third run has nothing to do."""
    store.server.client().delete_object(Bucket=store.bucket, Key="in/broken.jpg")
    for i in range(6, 12):
        store.put(f"in/more/img{i}.jpg", jpeg(i, size=(160, 120)))
    workflow = tmp_path / "thumbs.yaml"
    workflow.write_text(WORKFLOW_YAML)
    dagflow_bin = str(Path(sys.executable).parent / "dagflow")
    config = tmp_path / "dagflow.yaml"
    config.write_text(json.dumps({"dagflow": {
        "storage": {"options": {"s3": store.options}, "state-push-interval": 0.1},
        "cluster": {"n-workers": 1, "threads-per-worker": 2}}}))
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    env["DASK_CONFIG"] = str(tmp_path)

    def cli(fault: str | None = None) -> subprocess.CompletedProcess:
        args = [dagflow_bin, "run", str(workflow), "-i", store.url("in/"),
                "-o", store.url("out"), "--json", "--chunk-size", "2"]
        extra = {"DAGFLOW_FAULT": f"after-part:{fault}"} if fault else {}
        return subprocess.run(args, capture_output=True, text=True, env={**env, **extra},
                              timeout=120, start_new_session=True)

    crashed = cli("part-0000003.parquet")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert "out/_dagflow/lock" in keys(store)  # the dead run's
    resumed = cli()
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["executed"] + summary["already_done"] == 12
    outputs = [k for k in keys(store) if k.startswith("out/") and "_dagflow" not in k]
    assert len(outputs) == 12 and store.uploads() == []
    assert "out/_dagflow/lock" not in keys(store)
    again = dagflow.run(THUMBS, store.url("in/"), store.url("out"), progress=False)
    assert (again.executed, again.already_done) == (0, 12)


def test_plan_of_a_run_into_a_store_reads_its_records(store):
    """``dagflow plan`` (and ``run --dry-run``) into an output on a store: what earlier
    runs finished there is read from the store's records."""
    from dagflow.runtime.plan import plan

    out = store.url("out")
    assert plan(THUMBS, store.url("in/"), out).to_run == 7
    dagflow.run(THUMBS, store.url("in/"), out, progress=False)
    store.put("in/new.jpg", jpeg(42))
    again = plan(THUMBS, store.url("in/"), out)
    assert (again.to_run, again.already_done) == (1, 7)


def test_submit_into_a_store_is_refused_before_anything_starts(tmp_path):
    from dagflow.exceptions import ConfigError
    from dagflow.runtime.submit import submit

    workflow = tmp_path / "thumbs.yaml"
    workflow.write_text(WORKFLOW_YAML)
    with pytest.raises(ConfigError, match="not supported yet"):
        submit(workflow, str(tmp_path), "s3://bucket/out", cluster="tcp://127.0.0.1:9")


@pytest.fixture
def worker_elsewhere(store, tmp_path, monkeypatch):
    """A scheduler in this process and one ``dask worker`` process that does not see
    this process's temporary directory, where the run keeps the local copy of its state
    (its own mount namespace, a tmpfs over that directory): a worker on another machine,
    as far as that copy goes. Only that directory is hidden: the checkout and its
    environment may live under /tmp too."""
    import shutil
    import tempfile

    from distributed import Client, LocalCluster

    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs unshare -m (root in a container) for a worker without our /tmp")
    ours = tmp_path / "driver-tmp"
    ours.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(ours))  # the state's copy goes here
    with LocalCluster(n_workers=0, processes=False, protocol="tcp", host="127.0.0.1",
                      scheduler_port=0,
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as c:
        dask_bin = str(Path(sys.executable).parent / "dask")
        command = (f"mount -t tmpfs tmpfs {ours} && exec {dask_bin} worker "
                   f"{cluster.scheduler_address} --nthreads 2 --no-nanny "
                   "--host 127.0.0.1 --dashboard-address 127.0.0.1:0 "
                   f"--local-directory {ours}/w")
        # its configuration from the environment: it sees no file under our /tmp
        env = {**os.environ, "DASK_DAGFLOW__STORAGE__OPTIONS": repr({"s3": store.options})}
        worker = subprocess.Popen(["unshare", "-m", "sh", "-c", command], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            c.wait_for_workers(1, timeout=60)
            yield c
        finally:
            worker.terminate()
            worker.wait(timeout=30)


def test_workers_that_do_not_see_the_drivers_copy_write_records_to_the_store(
        store, worker_elsewhere):
    out = store.url("out")
    result = dagflow.run(THUMBS, store.url("in/"), out, client=worker_elsewhere,
                         progress=False, chunk_size=2)
    assert (result.succeeded, result.failed, result.quarantined) == (6, 1, 1)
    parts = [k for k in keys(store) if "/records/part-" in k]
    assert len(parts) == result.chunks
    quarantine = f"out/_dagflow/runs/{result.run_id}/quarantine.parquet"
    assert pq.read_table(io.BytesIO(store.get(quarantine))).num_rows == 1
    again = dagflow.run(THUMBS, store.url("in/"), out, client=worker_elsewhere,
                        progress=False)
    assert (again.executed, again.already_done) == (0, 7)


def test_an_aggregate_into_a_store_is_refused_before_anything_starts(store):
    from dagflow.exceptions import ConfigError

    with_stats = Workflow("stats", [Node("load", "load"), Node("st", "stats", after="load")])
    with pytest.raises(ConfigError, match=r"aggregate nodes \(st\)"):
        dagflow.run(with_stats, store.url("in/"), store.url("out"), progress=False)
    assert not any(k.startswith("out/") for k in keys(store))


@pytest.mark.parametrize("heads", [64, 0], ids=["head-each", "one-listing"])
def test_a_manifest_of_objects_on_a_store(store, tmp_path, monkeypatch, heads):
    """A local manifest whose ``path`` column holds URLs: its objects are the inputs,
    fingerprinted by a HEAD each or, for many, one listing; one that is not there is a
    recorded failure, not a refused run."""
    from dagflow.io import listing

    monkeypatch.setattr(listing.stat_objects, "__kwdefaults__", {"heads": heads})
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path\n" + "".join(f"{store.url(k)}\n" for k in INPUTS[:3])
                        + f"{store.url('in/gone.jpg')}\n")
    result = dagflow.run(THUMBS, manifest, store.url("out"), progress=False)
    assert (result.items, result.succeeded, result.failed) == (4, 3, 1)
    assert result.item_outcomes()["error_class"].tolist().count("bad_input") == 1
    assert sorted(k for k in keys(store) if k.endswith(".png")) == \
        ["out/img1.png", "out/img2.png", "out/img4.png"]
