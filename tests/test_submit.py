"""`dagflow submit`: a detached driver, the run followed with `dagflow status`, against
real `dask scheduler` / `dask worker` processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import dask.config
import pyarrow.parquet as pq
import pytest
from _processes import BIN, WORKFLOW, DaskProcesses
from click.testing import CliRunner

from dagflow.cli import main
from dagflow.recovery.status import run_status
from dagflow.runtime.submit import driver_info

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """A `dask scheduler` and two `dask worker` processes on 127.0.0.1."""
    with DaskProcesses(tmp_path_factory.mktemp("dask")) as procs:
        procs.start_scheduler()
        procs.start_worker("w1")
        procs.start_worker("w2")
        procs.workers = procs.wait_for_workers(2)
        yield procs


@pytest.fixture
def workflow_file(tmp_path) -> Path:
    path = tmp_path / "thumbs.yaml"
    path.write_text(WORKFLOW)
    return path


def wait_for_state(run_dir: Path, states: set[str], timeout: float = 45):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run_status(run_dir)
        if status.state in states:
            return status
        time.sleep(0.2)
    log = (run_dir / "driver.log").read_text() if (run_dir / "driver.log").exists() else ""
    raise TimeoutError(f"run {run_dir.name} still {run_status(run_dir).state}:\n{log}")


def wait_for_exit(pid: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise TimeoutError(f"driver {pid} still running")


def submit_detached(workflow_file: Path, photos: Path, out: Path, address: str) -> dict:
    """`dagflow submit --json` to ``address`` in a clean environment; its JSON answer."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    done = subprocess.run(
        [str(BIN / "dagflow"), "submit", str(workflow_file), "--input", str(photos),
         "--output", str(out), "--cluster", address, "--json"],
        capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_submit_returns_before_the_run_ends_and_status_follows_it(tmp_path, workflow_file,
                                                                   photos):
    """The scheduler has no workers when the run is submitted, so the run cannot end
    before `dagflow submit` returns; the workers join afterwards and the run finishes."""
    with DaskProcesses(tmp_path / "dask") as procs:
        info = submit_detached(workflow_file, photos, tmp_path / "out",
                               procs.start_scheduler())
        run_dir = Path(info["run_dir"])
        assert run_dir == tmp_path / "out" / "_dagflow" / "runs" / info["run_id"]
        assert info["started"] and info["dashboard"].startswith("http://127.0.0.1:")

        # returned while the run goes on: the driver is alive, nothing is done yet
        status = run_status(run_dir)
        assert status.state == "running or died"
        assert (status.to_run, status.done, status.pending) == (12, 0, 12)
        assert driver_info(run_dir)["pid"] == info["pid"]
        os.kill(info["pid"], 0)
        shown = CliRunner().invoke(main, ["status", str(run_dir)])
        assert shown.exit_code == 0 and "running or died" in shown.stdout

        procs.start_worker("w1")
        procs.start_worker("w2")
        workers = procs.wait_for_workers(2)
        status = wait_for_state(run_dir, {"finished", "interrupted"})
        assert status.state == "finished", (run_dir / "driver.log").read_text()
        assert (status.done, status.failed, status.pending) == (12, 0, 0)
        shown = CliRunner().invoke(main, ["status", str(run_dir)])
        assert f"run {info['run_id']}: finished" in shown.stdout

        wait_for_exit(info["pid"])
        assert driver_info(run_dir)["exit_code"] == 0
        summary = json.loads((run_dir / "summary.json").read_text())
        assert (summary["succeeded"], summary["run_id"]) == (12, info["run_id"])
        records = pq.read_table(run_dir / "records").to_pylist()
        assert len(records) == 36 and {r["status"] for r in records} == {"ok"}
        assert {r["worker"] for r in records} <= set(workers)
        for src in photos.rglob("img*"):
            assert (tmp_path / "out" / src.relative_to(photos).with_suffix(".png")).is_file()
        assert "succeeded 12" in (run_dir / "driver.log").read_text()


def test_a_driver_ended_by_sigterm_records_it(tmp_path, workflow_file, photos):
    """Batch systems end a job with SIGTERM: the driver records the interruption (its
    run's status and its own exit) instead of vanishing."""
    with DaskProcesses(tmp_path / "dask") as procs:
        # no workers: the run waits for them
        info = submit_detached(workflow_file, photos, tmp_path / "out",
                               procs.start_scheduler())
        run_dir = Path(info["run_dir"])
        os.kill(info["pid"], signal.SIGTERM)
        wait_for_exit(info["pid"])
    driver = driver_info(run_dir)
    assert driver["exit_code"] == 4 and driver["error"]["type"] == "Terminated"
    assert run_status(run_dir).state == "interrupted"


def test_submit_follow_exits_with_the_runs_code(dask_cluster, workflow_file, photos,
                                                tmp_path):
    result = CliRunner().invoke(main, [
        "submit", str(workflow_file), "-i", str(photos), "-o", str(tmp_path / "out"),
        "--scheduler-file", str(dask_cluster.scheduler_file), "--run-id", "nightly-1",
        "--follow"])
    assert result.exit_code == 0, result.output
    assert "run nightly-1 started" in result.stdout
    assert "run nightly-1: finished" in result.stdout
    run_dir = tmp_path / "out" / "_dagflow" / "runs" / "nightly-1"
    assert json.loads((run_dir / "summary.json").read_text())["succeeded"] == 12
    # the same run id again is refused before anything starts
    again = CliRunner().invoke(main, [
        "submit", str(workflow_file), "-i", str(photos), "-o", str(tmp_path / "out"),
        "--scheduler-file", str(dask_cluster.scheduler_file), "--run-id", "nightly-1"])
    assert again.exit_code == 2 and "already exists" in again.output


def test_driver_runs_with_the_submitters_configuration(dask_cluster, workflow_file, photos,
                                                       tmp_path):
    """A value set in the submitting process (not in the environment) reaches the
    driver, and through it the tasks on the workers."""
    with dask.config.set({"dagflow.max-pixels": 100}):
        result = CliRunner().invoke(main, [
            "submit", str(workflow_file), "-i", str(photos), "-o", str(tmp_path / "out"),
            "--cluster", dask_cluster.address, "--follow"])
    assert result.exit_code == 1, result.output
    assert "12 failed" in result.stdout


def test_submit_refuses_what_cannot_run(dask_cluster, workflow_file, photos, tmp_path):
    runner = CliRunner()
    bad = tmp_path / "bad.yaml"
    bad.write_text(WORKFLOW.replace("op: resize", "op: resise"))
    invalid = runner.invoke(main, ["submit", str(bad), "-i", str(photos),
                                   "-o", str(tmp_path / "o1"), "--cluster",
                                   dask_cluster.address])
    assert invalid.exit_code == 2 and "resise" in invalid.output
    assert not (tmp_path / "o1").exists()

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with dask.config.set({"dagflow.submit.connect-timeout": 1.0}):
        unreachable = runner.invoke(main, ["submit", str(workflow_file), "-i", str(photos),
                                           "-o", str(tmp_path / "o2"), "--cluster",
                                           f"tcp://127.0.0.1:{port}"])
    assert unreachable.exit_code == 2 and "cannot reach the scheduler" in unreachable.output
    assert not (tmp_path / "o2").exists()

    with dask.config.set({"dagflow.retry.attemps": 5}):
        typo = runner.invoke(main, ["submit", str(workflow_file), "-i", str(photos),
                                    "-o", str(tmp_path / "o3")])
    assert typo.exit_code == 2 and "dagflow.retry.attemps" in typo.output

    # the driver fails before the run starts (no images): submit says why, status too
    no_inputs = runner.invoke(main, ["submit", str(workflow_file), "-i",
                                     str(tmp_path / "nothing-here" / "*.jpg"),
                                     "-o", str(tmp_path / "o4"), "--cluster",
                                     dask_cluster.address, "--run-id", "empty"])
    assert no_inputs.exit_code == 2, no_inputs.output
    assert "driver log" in no_inputs.output
    run_dir = tmp_path / "o4" / "_dagflow" / "runs" / "empty"
    assert driver_info(run_dir)["exit_code"] == 2
    assert run_status(run_dir).state == "interrupted"
