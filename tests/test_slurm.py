"""dagflow on a real Slurm: the one-node Slurm of scripts/slurm-up.sh (`make test` starts
it), with the shipped `slurm` profile sized to the machine through its environment
variables.

`dagflow run --cluster slurm` submits worker jobs through dask-jobqueue and leaves none
behind; the batch script runs a workflow whose exit code becomes the job's; a worker
job cancelled mid-run loses no item; workers leave before their job's time limit,
finish what they run, hand their results over, and are replaced; a submission Slurm
refuses stops the run at once with what sbatch said; a job Slurm accepted whose worker
never connects (no Python on the node, a prologue that fails) stops the run when the
job ends, quoting its error log; a job held in the queue is waited for, the run saying
so and why. Marked `slurm`; every test skips, saying why, where no such Slurm runs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from pathlib import Path

import dask.config
import pyarrow.dataset as ds
import pytest
import yaml
from _processes import BIN, WORKFLOW
from _slurm import executions, job_state, squeue, unavailable, wait_until
from click.testing import CliRunner

import dagflow
from dagflow import Node, Workflow
from dagflow.cli import main
from dagflow.runtime.cluster import cluster_from_profile

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]
BATCH_SCRIPT = ROOT / "cluster-configs" / "slurm-batch.sh"
WORKER_JOBS = "dagflow-worker"  # the profile's job_name

#: The shipped profile, sized to this machine: one core and 2 GiB per worker job, at most
#: two jobs, the scheduler and workers on loopback, a free dashboard port.
SIZED = {
    "DAGFLOW_SLURM_CORES": "1",
    "DAGFLOW_SLURM_MEMORY": "2GiB",
    "DAGFLOW_SLURM_PROCESSES": "1",
    "DAGFLOW_SLURM_MAX_WORKERS": "2",
    "DAGFLOW_SLURM_INTERFACE": "lo",
    "DAGFLOW_DASHBOARD_ADDRESS": "127.0.0.1:0",
}


@pytest.fixture(scope="module", autouse=True)
def slurm():
    """Skip, saying why, where the one-node Slurm does not run; leave no job behind."""
    why = unavailable()
    if why:
        pytest.skip(why)
    assert not squeue(WORKER_JOBS), "worker jobs of an earlier run are still queued"
    yield
    subprocess.run(["scancel", "--name", WORKER_JOBS], check=False, timeout=30)


@pytest.fixture
def sized(monkeypatch):
    """The profile's size for this machine; ``tests/`` on the jobs' PYTHONPATH (sbatch
    passes the environment on), so that worker jobs find the test ops of _slurm.py."""
    for name, value in SIZED.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    # a worker that left is replaced after 1 s, not Dask's 15 s
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "1s"}):
        yield


def no_worker_jobs() -> bool:
    return not squeue(WORKER_JOBS)


def jobs_seen(log: Path) -> set[str]:
    """The jobs whose workers executed an item, from an op's log."""
    return {job for jobs in executions(log).values() for job in jobs}


def records(run_dir: Path) -> list[dict]:
    return ds.dataset(Path(run_dir) / "records").to_table().to_pylist()


def check_once(run_dir: Path, out: Path, items: int, nodes: list[str]) -> None:
    """One `ok` record per item and node, and one output per item."""
    rows = records(run_dir)
    keys = [(r["input_path"], r["node_id"]) for r in rows]
    assert len(keys) == len(set(keys)) == items * len(nodes)
    assert {r["status"] for r in rows} == {"ok"}
    outputs = [p for p in out.rglob("*.png") if "_dagflow" not in p.parts]
    assert len(outputs) == items


def logged_workflow(op: str, **params) -> Workflow:
    """load, then one of _slurm.py's ops (which logs where each item ran), then save."""
    return Workflow("logged", [
        Node("load", "load"),
        Node("hold", op, {k: str(v) if isinstance(v, Path) else v for k, v in params.items()},
             after="load"),
        Node("save", "save", {"format": "png"}, after="hold"),
    ])


def test_run_with_the_slurm_profile_submits_worker_jobs_and_leaves_none(
        sized, photos, tmp_path):
    """The real command, in a process of its own: worker jobs go through sbatch, every
    item is done once, and no job is left once the run ends."""
    (tmp_path / "thumbs.yaml").write_text(WORKFLOW)
    done = subprocess.run(
        [str(BIN / "dagflow"), "run", "thumbs.yaml", "-i", str(photos), "-o", "out",
         "--cluster", "slurm", "--json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["items"], summary["succeeded"], summary["failed"]) == (12, 12, 0)
    check_once(tmp_path / summary["run_dir"], tmp_path / "out", 12, ["load", "small", "save"])
    # the workers were Slurm jobs, started from here (their logs: slurm-<job id>.out)
    logs = sorted(tmp_path.glob("slurm-*.out"))
    assert logs and all("Start worker" in p.read_text() for p in logs)
    jobs = [p.stem.removeprefix("slurm-") for p in logs]
    assert {job_state(j)["JobName"] for j in jobs} == {WORKER_JOBS}
    assert {job_state(j)["WorkDir"] for j in jobs} == {str(tmp_path)}
    wait_until(no_worker_jobs, 30, "the worker jobs to leave the queue")


def test_the_batch_script_runs_a_workflow_and_its_exit_code_becomes_the_jobs(
        photos_with_bad, tmp_path, monkeypatch):
    """`sbatch slurm-batch.sh`: scheduler, worker and `dagflow run` in one allocation. Two
    corrupt images make dagflow exit 1, which Slurm records as the job's exit code."""
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")  # dask, dagflow
    (tmp_path / "thumbs.yaml").write_text(WORKFLOW)
    out = tmp_path / "out"
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--nodes=1", "--cpus-per-task=1", "--mem=2G",
         f"--output={tmp_path}/batch-%j.log",
         f"--export=ALL,WORKFLOW={tmp_path / 'thumbs.yaml'},INPUT={photos_with_bad},"
         f"OUTPUT={out},WORKERS_PER_NODE=1", str(BATCH_SCRIPT)],
        cwd=tmp_path, capture_output=True, text=True, check=True, timeout=30)
    job = submitted.stdout.strip().split(";")[0]
    wait_until(lambda: not squeue() or job not in {j["id"] for j in squeue()}, 150,
               f"batch job {job} to end")
    state = job_state(job)
    log = next(tmp_path.glob("batch-*.log")).read_text()
    assert (state["JobState"], state["ExitCode"]) == ("FAILED", "1:0"), log
    with open("/var/log/dagflow-slurm/jobcomp.log", encoding="utf-8") as f:
        assert any(f"JobId={job} " in line and "ExitCode=1:0" in line for line in f)
    # `dagflow status` reports the run from the output directory alone
    status = CliRunner().invoke(main, ["status", str(out), "--json"])
    assert status.exit_code == 0, status.output
    report = json.loads(status.stdout)
    assert (report["state"], report["done"], report["failed"], report["pending"]) == \
        ("finished", 12, 2, 0)


def test_a_worker_job_cancelled_mid_run_loses_nothing(sized, monkeypatch, photos, tmp_path):
    """Two worker jobs each hold a chunk (the op waits on a file); one is cancelled with
    scancel. Its chunk runs again on the other (or a replacement): every item once."""
    monkeypatch.setenv("DAGFLOW_SLURM_MIN_WORKERS", "2")
    log, gate = tmp_path / "executions.log", tmp_path / "gate"
    gate.touch()
    with cluster_from_profile("slurm", log_directory=str(tmp_path / "logs")) as cluster:
        handle = dagflow.run(logged_workflow("slurm_hold", log=log, gate=gate), photos,
                             tmp_path / "out",
                             cluster=cluster, wait=False, chunk_size=2)
        busy = wait_until(lambda: len(jobs_seen(log)) == 2 and jobs_seen(log), 120,
                          "both worker jobs to hold a chunk")
        victim = min(busy)
        held_by_victim = {i for i, js in executions(log).items() if victim in js}
        subprocess.run(["scancel", victim], check=True, timeout=30)
        wait_until(lambda: victim not in {j["id"] for j in squeue()}, 60,
                   f"job {victim} to end")
        gate.unlink()
        result = handle.result(timeout=150)
    assert (result.succeeded, result.failed) == (12, 0)
    check_once(result.run_dir, tmp_path / "out", 12, ["load", "hold", "save"])
    runs = executions(log)
    assert len(runs) == 12
    assert held_by_victim and all(len(runs[i]) == 2 and runs[i][0] == victim
                                  for i in held_by_victim)  # recovered elsewhere
    assert all(victim not in runs[i][1:] for i in runs)
    assert job_state(victim)["JobState"] == "CANCELLED"
    wait_until(no_worker_jobs, 30, "the worker jobs to leave the queue")


def test_workers_retire_before_their_time_limit_and_are_replaced(sized, monkeypatch, make_photos,
                                                                  tmp_path):
    """Jobs limited to a minute, workers living 8 s, items taking 0.5 s each until a
    replacement worker has taken over: each worker finishes its running tasks, hands its
    results over and leaves before its limit; replacements finish the batch; no item is
    computed twice."""
    make_photos(tmp_path / "in", 64, size=(32, 24))
    for name, value in {"DAGFLOW_SLURM_MIN_WORKERS": "2", "DAGFLOW_SLURM_WALLTIME": "00:01:00",
                        "DAGFLOW_SLURM_LIFETIME": "8s",
                        "DAGFLOW_SLURM_LIFETIME_STAGGER": "1s"}.items():
        monkeypatch.setenv(name, value)
    log, slow = tmp_path / "executions.log", tmp_path / "slow"
    slow.touch()
    wf = logged_workflow("slurm_slow", log=log, seconds=0.5, while_exists=slow)
    with cluster_from_profile("slurm", log_directory=str(tmp_path / "logs")) as cluster:
        handle = dagflow.run(wf, tmp_path / "in", tmp_path / "out", cluster=cluster,
                             chunk_size=1, wait=False)
        # two workers cannot finish 64 x 0.5 s within their 8 s: a third job takes over
        wait_until(lambda: len(jobs_seen(log)) >= 3, 120, "a replacement worker job")
        slow.unlink()
        result = handle.result(timeout=150)
        retired = [e for _, e in cluster.scheduler.get_events("all")
                   if isinstance(e, dict) and e.get("action") == "retire-workers"
                   and e["stimulus_id"].startswith("dagflow-retire") and e["retired"]]
    assert (result.succeeded, result.failed) == (64, 0)
    check_once(result.run_dir, tmp_path / "out", 64, ["load", "hold", "save"])
    runs = executions(log)
    assert sorted(len(jobs) for jobs in runs.values()) == [1] * 64  # nothing twice
    assert retired, "no worker retired at the end of its lifetime"
    jobs = jobs_seen(log)
    wait_until(no_worker_jobs, 30, "the worker jobs to leave the queue")
    # none was killed by its limit or failed: each ended on its own, or was cancelled
    # by the cluster once its worker had left
    states = [job_state(j) for j in jobs]
    assert {s["TimeLimit"] for s in states} == {"00:01:00"}
    assert {s["JobState"] for s in states} <= {"COMPLETED", "CANCELLED"}


@pytest.mark.timeout(60)  # dask-jobqueue alone would retry the submission for ever
@pytest.mark.parametrize("variable, value, said", [
    ("DAGFLOW_SLURM_PARTITION", "nope",
     "sbatch: error: invalid partition specified: nope"),
    ("DAGFLOW_SLURM_ACCOUNT", "nope", "sbatch: error: invalid account: nope"),
    ("DAGFLOW_SLURM_MEMORY", "9000GiB", "Requested node configuration is not available"),
])
def test_a_submission_slurm_refuses_stops_the_run_naming_what_sbatch_said(
        sized, monkeypatch, variable, value, said, photos, tmp_path):
    monkeypatch.setenv(variable, value)
    (tmp_path / "thumbs.yaml").write_text(WORKFLOW)
    result = CliRunner().invoke(main, ["run", str(tmp_path / "thumbs.yaml"), "-i", str(photos),
                                       "-o", str(tmp_path / "out"), "--cluster", "slurm"])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert line.startswith("error: cluster profile 'slurm'") and "\n" not in line
    assert "the first worker job could not be submitted: sbatch (exit code 1) said:" in line
    assert said in line
    assert not list((tmp_path / "out").rglob("*.png"))
    assert no_worker_jobs()


def changed_profile(tmp_path: Path, name: str, **options) -> Path:
    """The shipped slurm profile with ``options`` changed, written as ``name``.yaml."""
    data = yaml.safe_load((ROOT / "cluster-configs" / "slurm.yaml").read_text())
    data["options"].update(options)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def failed_job(line: str, profile: str, state: str) -> tuple[str, str, str]:
    """The job, its log and the log's last lines from the run's error line."""
    found = re.fullmatch(
        rf"error: cluster profile '{profile}' \(.*?\): worker job (\d+) ended \({state}\) "
        r"before its worker connected to the scheduler; (\S+) ends: (.*)", line)
    assert found, line
    return found.group(1), found.group(2), found.group(3)


@pytest.mark.timeout(120)  # the run would wait for ever for a worker that cannot start
def test_a_worker_job_whose_python_is_missing_stops_the_run_naming_the_job_and_its_error(
        sized, photos, tmp_path):
    """The real command: Slurm runs the job, whose `python -m dask worker` is not there;
    the run stops with exit code 2 once the job has ended, in one line naming the job,
    its state and exit code, and quoting its error log (Slurm's slurm-<id>.out)."""
    profile = changed_profile(tmp_path, "nopython", python="/nonexistent/bin/python")
    (tmp_path / "thumbs.yaml").write_text(WORKFLOW)
    done = subprocess.run(
        [str(BIN / "dagflow"), "run", "thumbs.yaml", "-i", str(photos), "-o", "out",
         "--cluster", str(profile)],
        cwd=tmp_path, capture_output=True, text=True, timeout=100,
        env={**os.environ, "DASK_DAGFLOW__CLUSTER__JOB_POLL_INTERVAL": "1"})
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    job, log, said = failed_job(line, "nopython", "FAILED, exit code 127")
    assert log == str(tmp_path / f"slurm-{job}.out")
    assert said.endswith("/nonexistent/bin/python: No such file or directory")
    assert "Traceback" not in done.stderr
    state = job_state(job)
    assert (state["JobState"], state["ExitCode"]) == ("FAILED", "127:0")
    assert not list((tmp_path / "out").rglob("*.png"))
    wait_until(no_worker_jobs, 30, "the worker jobs to leave the queue")


@pytest.mark.timeout(120)
def test_a_failing_prologue_stops_the_run_quoting_the_jobs_error_log(sized, photos, tmp_path):
    """A job script prologue that fails (an environment missing on the node): exit code
    2, the job's own error file in the profile's log_directory quoted."""
    logs = tmp_path / "logs"
    profile = changed_profile(tmp_path, "noenv", log_directory=str(logs), job_script_prologue=[
        "echo 'activate: no environment /shared/envs/dagflow on this node' >&2", "exit 1"])
    (tmp_path / "thumbs.yaml").write_text(WORKFLOW)
    with dask.config.set({"dagflow.cluster.job-poll-interval": 1}):
        result = CliRunner().invoke(main, ["run", str(tmp_path / "thumbs.yaml"), "-i",
                                           str(photos), "-o", str(tmp_path / "out"),
                                           "--cluster", str(profile)])
    assert result.exit_code == 2, result.output
    job, log, said = failed_job(result.stderr.strip().splitlines()[-1], "noenv",
                                "FAILED, exit code 1")
    assert log == str(logs / f"{WORKER_JOBS}-{job}.err")
    assert said == "activate: no environment /shared/envs/dagflow on this node"
    assert not list((tmp_path / "out").rglob("*.png"))
    wait_until(no_worker_jobs, 30, "the worker jobs to leave the queue")


@pytest.mark.timeout(150)
def test_a_held_worker_job_is_waited_for_saying_why_and_the_run_goes_on_once_released(
        sized, photos, tmp_path, caplog):
    """Worker jobs held in the queue (sbatch --hold): no error, the run says once that it
    waits, for which jobs and why (Slurm's reason, JobHeldUser); released, they run and
    the run completes."""
    queued = re.compile(r"cluster profile 'slurm' \(.*?\): the run waits for \d+ worker "
                        r"jobs? queued in Slurm: (.*)")
    with dask.config.set({"dagflow.cluster.job-poll-interval": 0.5}), \
            caplog.at_level(logging.WARNING, logger="dagflow.runtime.jobqueue"), \
            cluster_from_profile("slurm", job_extra_directives=["--hold"],
                                 log_directory=str(tmp_path / "logs")) as cluster:
        handle = dagflow.run(logged_workflow("slurm_slow", log=tmp_path / "executions.log",
                                             seconds=0, while_exists=tmp_path / "no"),
                             photos, tmp_path / "out", cluster=cluster, wait=False)
        said = wait_until(lambda: [m for r in caplog.records
                                   if (m := queued.fullmatch(r.getMessage()))], 60,
                          "the run to say that it waits for queued jobs")
        named = dict(re.findall(r"(\d+) \((\w+)\)", said[0].group(1)))
        held = {j["id"] for j in squeue(WORKER_JOBS) if j["state"] == "PENDING"}
        assert named and set(named) <= held and set(named.values()) == {"JobHeldUser"}
        assert not handle.done() and not jobs_seen(tmp_path / "executions.log")
        subprocess.run(["scontrol", "release", ",".join(sorted(held))], check=True, timeout=30)
        result = handle.result(timeout=120)
        assert len([r for r in caplog.records if queued.fullmatch(r.getMessage())]) == 1
    assert (result.succeeded, result.failed) == (12, 0)
    assert jobs_seen(tmp_path / "executions.log") <= held
    wait_until(no_worker_jobs, 30, "the worker jobs to leave the queue")


@pytest.mark.timeout(120)
def test_a_worker_job_running_without_its_worker_past_the_timeout_stops_the_run(
        sized, photos, tmp_path):
    """A job that runs but whose worker does not connect (here its prologue waits; on a
    real cluster, a worker that cannot reach the scheduler): after
    dagflow.cluster.worker-connect-timeout the run stops, exit code 2, naming the job and
    quoting its error log; the job is cancelled with the cluster."""
    logs = tmp_path / "logs"
    profile = changed_profile(tmp_path, "stuck", log_directory=str(logs), job_script_prologue=[
        "echo 'waiting for /shared/envs to be mounted' >&2", "sleep 300"])
    (tmp_path / "thumbs.yaml").write_text(WORKFLOW)
    with dask.config.set({"dagflow.cluster.job-poll-interval": 0.5,
                          "dagflow.cluster.worker-connect-timeout": 3}):
        result = CliRunner().invoke(main, ["run", str(tmp_path / "thumbs.yaml"), "-i",
                                           str(photos), "-o", str(tmp_path / "out"),
                                           "--cluster", str(profile)])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    found = re.fullmatch(
        r"error: cluster profile 'stuck' \(.*?\): worker job (\d+) has been running for \d+ s "
        r"and its worker has not connected to the scheduler \(dagflow\.cluster\."
        r"worker-connect-timeout: 3 s\); (\S+) ends: waiting for /shared/envs to be mounted",
        line)
    assert found, line
    job, log = found.groups()
    assert log == str(logs / f"{WORKER_JOBS}-{job}.err")
    wait_until(no_worker_jobs, 30, "the worker jobs to leave the queue")
    assert job_state(job)["JobState"] == "CANCELLED"
