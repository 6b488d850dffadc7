"""One run per output directory: the lock, its holder named, waited for when asked,
broken only on evidence (a process gone, a reboot, a heartbeat silent too long)."""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask.config
import psutil
import pyarrow.parquet as pq
import pytest
from _processes import WORKFLOW

from dagflow.exceptions import OutputLockedError
from dagflow.runtime.lock import (
    OutputLock,
    _identity,
    check_unlocked,
    holder_alive,
    lock_status,
    read_holder,
)

DAGFLOW = Path(sys.executable).parent / "dagflow"


def lock_file(out: Path) -> Path:
    return out / "_dagflow" / "lock"


def plant(out: Path, **fields) -> dict:
    """A lock record as another process would have left it."""
    record = {"run_id": "other-run", "pid": os.getpid(), "host": socket.gethostname(),
              "process_started": None, "boot_id": None, "pid_namespace": None,
              "since": time.time() - 60, "token": "0" * 16, **fields}
    lock_file(out).parent.mkdir(parents=True, exist_ok=True)
    lock_file(out).write_text(json.dumps(record))
    return record


def this_machine() -> dict:
    """The fields that say which machine (and pid namespace) a record comes from."""
    record = _identity("x", "t")
    return {k: record[k] for k in ("host", "boot_id", "pid_namespace")}


def dead_process() -> dict:
    """The pid and start time of a process that has ended (a reused pid would have
    another start time, so the test does not depend on the pid staying free)."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    started = psutil.Process(proc.pid).create_time()
    proc.communicate(b"")
    return {"pid": proc.pid, "process_started": started}


# -- in one process ---------------------------------------------------------------------


def test_held_while_the_run_runs_then_released(tmp_path):
    with OutputLock(tmp_path, "run-a") as lock:
        holder = read_holder(tmp_path)
        assert (holder["run_id"], holder["pid"], holder["host"]) == \
            ("run-a", os.getpid(), socket.gethostname())
        assert holder_alive(holder) is True and lock.held
        with pytest.raises(OutputLockedError) as info:
            OutputLock(tmp_path, "run-b").acquire()
        message = str(info.value)
        for text in ("is in use by run run-a", f"pid {os.getpid()} on {socket.gethostname()}",
                     "since ", "running", "--wait-for-lock", str(lock_file(tmp_path))):
            assert text in message
        assert info.value.holder["run_id"] == "run-a"
    assert read_holder(tmp_path) is None


def test_a_run_into_a_held_output_is_refused_before_its_cluster_starts(
        tmp_path, photos, monkeypatch):
    from _workflows import THUMBS

    import dagflow

    def no_cluster(*args, **kwargs):
        raise AssertionError("a cluster started for a run that is refused")

    monkeypatch.setattr(importlib.import_module("dagflow.runtime.run"), "LocalClusterStart",
                        no_cluster)
    with OutputLock(tmp_path / "out", "run-a"), \
            pytest.raises(OutputLockedError, match="is in use by run run-a"):
        dagflow.run(THUMBS, photos, tmp_path / "out")
    assert not (tmp_path / "out" / "_dagflow" / "runs").exists()  # no run directory


def test_only_one_of_many_takes_it_at_once(tmp_path):
    barrier = threading.Barrier(8)
    won: list[str] = []

    def contend(i: int) -> None:
        lock = OutputLock(tmp_path, f"run-{i}")
        barrier.wait()
        try:
            lock.acquire()
        except OutputLockedError:
            return
        won.append(lock.run_id)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and read_holder(tmp_path)["run_id"] == won[0]


@pytest.mark.parametrize("why", ["gone", "reused", "rebooted"])
def test_a_holder_on_this_machine_that_is_gone_is_broken(tmp_path, caplog, why):
    here = this_machine()
    fields = {"gone": {**here, **dead_process()},
              "reused": {**here, "process_started": time.time() - 10**6},  # our own pid
              "rebooted": {**here, "boot_id": "another-boot"}}[why]
    plant(tmp_path, **fields)
    if why == "rebooted":
        # refreshed since this machine booted: another machine of the same host name,
        # whose process cannot be checked from here
        assert holder_alive(read_holder(tmp_path)) is None
        before = psutil.boot_time() - 3600  # last refreshed before the reboot
        os.utime(lock_file(tmp_path), (before, before))
    assert holder_alive(read_holder(tmp_path)) is False
    with caplog.at_level(logging.WARNING, logger="dagflow.runtime.lock"), \
            OutputLock(tmp_path, "mine"):
        assert read_holder(tmp_path)["run_id"] == "mine"
    assert "breaking the lock" in caplog.text and "other-run" in caplog.text


def test_a_holder_on_another_host_is_broken_only_after_its_heartbeat_stops(tmp_path):
    plant(tmp_path, host="elsewhere.example", pid=1)
    assert holder_alive(read_holder(tmp_path)) is None
    with pytest.raises(OutputLockedError) as info:
        OutputLock(tmp_path, "mine").acquire()
    assert "cannot be checked from this machine" in str(info.value)
    assert "stale after 600 s without a refresh" in str(info.value)
    old = time.time() - 3600  # an hour without a refresh, by the file system's clock
    os.utime(lock_file(tmp_path), (old, old))
    with dask.config.set({"dagflow.lock.stale-after": None}), \
            pytest.raises(OutputLockedError):
        OutputLock(tmp_path, "mine").acquire()  # null: never broken
    with OutputLock(tmp_path, "mine"):
        assert read_holder(tmp_path)["run_id"] == "mine"


def test_the_holder_refreshes_its_lock_and_notices_losing_it(tmp_path, caplog):
    with dask.config.set({"dagflow.lock.heartbeat": 0.05}), OutputLock(tmp_path, "a"):
        old = time.time() - 3600
        os.utime(lock_file(tmp_path), (old, old))
        deadline = time.monotonic() + 120  # only: not hung (a beat is due every 0.05 s)
        while lock_file(tmp_path).stat().st_mtime < time.time() - 60:
            assert time.monotonic() < deadline, "no heartbeat"
            time.sleep(0.02)
        with caplog.at_level(logging.ERROR, logger="dagflow.runtime.lock"):
            plant(tmp_path, host="elsewhere.example")  # broken and taken meanwhile
            deadline = time.monotonic() + 120  # only: not hung
            while "no longer this run's" not in caplog.text:
                assert time.monotonic() < deadline, "the lost lock went unnoticed"
                time.sleep(0.02)
    assert read_holder(tmp_path)["run_id"] == "other-run"  # not released: not ours


def test_waits_when_asked(tmp_path, caplog):
    holder = OutputLock(tmp_path, "first")
    holder.acquire()
    released = threading.Event()

    class ReleaseWhenWaiting(logging.Handler):
        def emit(self, record):
            if "waiting for run first" in record.getMessage():
                holder.release()
                released.set()

    handler = ReleaseWhenWaiting()
    logger = logging.getLogger("dagflow.runtime.lock")
    logger.addHandler(handler)
    try:
        with dask.config.set({"dagflow.lock.wait": True, "dagflow.lock.poll-interval": 0.01}), \
                OutputLock(tmp_path, "second"):
            assert released.is_set()
            assert read_holder(tmp_path)["run_id"] == "second"
    finally:
        logger.removeHandler(handler)
    with OutputLock(tmp_path, "third"), dask.config.set({"dagflow.lock.wait": 0.05,
                                                         "dagflow.lock.poll-interval": 0.01}):
        with caplog.at_level(logging.WARNING, logger="dagflow.runtime.lock"), \
                pytest.raises(OutputLockedError, match="in use by run third"):
            OutputLock(tmp_path, "fourth").acquire()
        # it waited (said so once) before giving up, rather than refusing at once
        assert caplog.text.count("waiting for run third") == 1


def test_an_unreadable_lock_is_held_and_says_which_file(tmp_path):
    lock_file(tmp_path).parent.mkdir(parents=True)
    lock_file(tmp_path).write_text("{not json")
    with pytest.raises(OutputLockedError, match="unreadable lock"):
        OutputLock(tmp_path, "mine").acquire()
    lock_file(tmp_path).unlink()
    lock_file(tmp_path).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OutputLockedError, match=f"delete {lock_file(tmp_path)}"):
        OutputLock(tmp_path, "mine").acquire()
    assert not (tmp_path / "elsewhere").exists()


def test_status_names_the_holder(tmp_path):
    assert lock_status(tmp_path) is None
    with OutputLock(tmp_path, "run-a"):
        run_dir = tmp_path / "_dagflow" / "runs" / "run-a"
        run_dir.mkdir(parents=True)
        for where in (tmp_path, run_dir):
            status = lock_status(where)
            assert (status["run_id"], status["alive"]) == ("run-a", True)
            assert "token" not in status
    check_unlocked(tmp_path)
    plant(tmp_path, host="elsewhere.example")
    with pytest.raises(OutputLockedError):
        check_unlocked(tmp_path)
    with dask.config.set({"dagflow.lock.wait": True}):
        check_unlocked(tmp_path)  # the driver will wait for it


# -- real processes ---------------------------------------------------------------------

HOLDER = """\
import os, sys, time
from pathlib import Path
from distributed import Client, LocalCluster
import dagflow
from dagflow import Node, Workflow
from dagflow.ops.registry import register_op

@register_op("wait_for_file", replace=True)
def wait_for_file(image):
    '''Blocks until the file named by DAGFLOW_TEST_RELEASE exists.'''
    Path(os.environ["DAGFLOW_TEST_STARTED"]).touch()
    while not Path(os.environ["DAGFLOW_TEST_RELEASE"]).exists():
        time.sleep(0.01)
    return image

if __name__ == "__main__":
    wf = Workflow("thumbs", [Node("load", "load"),
                             Node("hold", "wait_for_file", after="load"),
                             Node("save", "save", {"format": "png"}, after="hold")])
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        result = dagflow.run(wf, sys.argv[1], sys.argv[2], client=client, progress=False,
                             run_id="holder-run")
    print(result.succeeded, flush=True)
"""


def start_holder(tmp_path: Path, photos: Path, out: Path) -> tuple[subprocess.Popen, Path]:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    release = tmp_path / "release"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env.update(DAGFLOW_TEST_RELEASE=str(release),
               DAGFLOW_TEST_STARTED=str(tmp_path / "started"))
    proc = subprocess.Popen([sys.executable, str(script), str(photos), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists():  # the run holds the lock and runs
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return proc, release


def dagflow_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env["DASK_DAGFLOW__CLUSTER__N_WORKERS"] = "1"
    return subprocess.run([str(DAGFLOW), *args], env=env, capture_output=True, text=True,
                          timeout=120, **kwargs)


@pytest.mark.slow
def test_a_second_run_or_submit_exits_2_naming_the_first_or_waits(tmp_path, photos):
    """Two real processes: a run that holds its output (blocked in an op), and the CLI."""
    out = tmp_path / "out"
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(WORKFLOW)
    holder, release = start_holder(tmp_path, photos, out)
    try:
        second = dagflow_cli("run", str(workflow), "-i", str(photos), "-o", str(out))
        assert second.returncode == 2, second.stderr
        first_line = second.stderr.splitlines()[0]
        assert f"is in use by run holder-run (pid {holder.pid} on {socket.gethostname()}, " \
               "since " in first_line and "; running)" in first_line
        submitted = dagflow_cli("submit", str(workflow), "-i", str(photos), "-o", str(out))
        assert submitted.returncode == 2 and "in use by run holder-run" in submitted.stderr
        status = dagflow_cli("status", str(out))
        assert f"output directory held by run holder-run (pid {holder.pid}" in status.stdout
        assert sorted(p.name for p in (out / "_dagflow" / "runs").iterdir()) == ["holder-run"]
        # asked to wait, it starts once the first has finished
        log = tmp_path / "waiting.log"
        with open(log, "w") as f:
            waiting = subprocess.Popen(
                [str(DAGFLOW), "run", str(workflow), "-i", str(photos), "-o", str(out),
                 "--wait-for-lock", "--json"], stdout=subprocess.PIPE, stderr=f, text=True,
                env={**{k: v for k, v in os.environ.items() if not k.startswith("DASK_")},
                     "DASK_DAGFLOW__CLUSTER__N_WORKERS": "1",
                     "DASK_DAGFLOW__LOCK__POLL_INTERVAL": "0.05"})
        deadline = time.monotonic() + 60
        while "waiting for run holder-run" not in log.read_text():
            assert waiting.poll() is None, log.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        release.touch()
        assert holder.wait(timeout=60) == 0, holder.communicate()
        stdout, _ = waiting.communicate(timeout=120)
        assert waiting.returncode == 0, log.read_text()
    finally:
        release.touch()
        holder.kill()
    second_id = json.loads(stdout)["run_id"]
    runs = out / "_dagflow" / "runs"
    first_end = events(runs / "holder-run")["run_finished"]
    second_start = events(runs / second_id)["run_started"]
    assert second_start > first_end  # one after the other, not side by side
    records = [r for run in ("holder-run", second_id)
               for r in pq.read_table(runs / run / "records").to_pylist()]
    saves = {run: sum(r["run_id"] == run and r["node_id"] == "save" and r["status"] == "ok"
                      for r in records) for run in ("holder-run", second_id)}
    assert saves == {"holder-run": 12, second_id: 12}
    assert read_holder(out) is None


def events(run_dir: Path) -> dict[str, float]:
    """When each event of a run's log happened (the last of each kind)."""
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    return {e["event"]: e["t"] for e in map(json.loads, lines)}


@pytest.mark.slow
def test_a_run_killed_while_holding_it_does_not_block_the_next(tmp_path, photos):
    out = tmp_path / "out"
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(WORKFLOW)
    holder, _ = start_holder(tmp_path, photos, out)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert read_holder(out)["pid"] == holder.pid  # left behind by the crash
    done = dagflow_cli("run", str(workflow), "-i", str(photos), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert f"breaking the lock of {out} left by run holder-run" in done.stderr
    assert f"its process {holder.pid} on {socket.gethostname()} no longer exists" in done.stderr
    assert read_holder(out) is None
