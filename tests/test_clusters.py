"""Clusters: real `dask scheduler` / `dask worker` processes, cluster profiles, job
scripts, and the `dask dagflow` entry point (Kubernetes manifests:
test_kubernetes_manifests.py; a real Slurm: test_slurm.py)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import dask.config
import dask.utils
import pyarrow.parquet as pq
import pytest
import yaml
from _processes import BIN, WORKFLOW, DaskProcesses
from click.testing import CliRunner
from distributed.core import Status

import dagflow
from dagflow.cli import main
from dagflow.exceptions import ConfigError
from dagflow.runtime.cluster import cluster_from_profile
from dagflow.runtime.profiles import SHIPPED_DIR, list_profiles, load_profile

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "cluster-configs"
PRELOAD = "dagflow.monitor.preload"


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """A real `dask scheduler` (with dagflow's monitor preloaded) and two `dask worker`
    processes on 127.0.0.1."""
    with DaskProcesses(tmp_path_factory.mktemp("dask")) as procs:
        procs.start_scheduler("--preload", PRELOAD)
        procs.start_worker("w1")
        procs.start_worker("w2")
        procs.workers = procs.wait_for_workers(2)
        yield procs


@pytest.fixture
def workflow_file(tmp_path) -> Path:
    path = tmp_path / "thumbs.yaml"
    path.write_text(WORKFLOW)
    return path


def check_run(summary: dict, photos: Path, workers: list[str] | None = None) -> None:
    """Outputs for every input, and one `ok` record per item and node, from ``workers``."""
    assert (summary["items"], summary["succeeded"], summary["failed"]) == (12, 12, 0)
    out = Path(summary["output_dir"])
    for src in photos.rglob("img*"):
        assert (out / src.relative_to(photos).with_suffix(".png")).is_file()
    table = pq.read_table(Path(summary["run_dir"]) / "records").to_pylist()
    assert len(table) == 12 * 3
    assert {r["status"] for r in table} == {"ok"}
    assert sorted(r["node_id"] for r in table) == ["load"] * 12 + ["save"] * 12 + ["small"] * 12
    if workers is not None:
        assert {r["worker"] for r in table} <= set(workers)


def _dead_address() -> str:
    """A loopback TCP address nothing listens on (a port just freed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def test_an_unreachable_scheduler_is_named_before_anything_runs(workflow_file, photos,
                                                                tmp_path):
    dead = _dead_address()
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(dagflow.ClusterUnreachableError,
                           match=rf"no Dask scheduler answered at {dead} within 1s"):
            dagflow.run(workflow_file, photos, tmp_path / "out", cluster=dead,
                        progress=False)
        scheduler_file = tmp_path / "scheduler.json"
        scheduler_file.write_text(json.dumps({"type": "Scheduler", "address": dead}))
        with pytest.raises(ConnectionError, match="the scheduler file"):
            dagflow.run(workflow_file, photos, tmp_path / "out",
                        scheduler_file=scheduler_file, progress=False)
        with dask.config.set({"scheduler-address": dead}), \
                pytest.raises(dagflow.ClusterUnreachableError, match="DASK_SCHEDULER_ADDRESS"):
            dagflow.run(workflow_file, photos, tmp_path / "out", progress=False)
        result = CliRunner().invoke(main, [
            "run", str(workflow_file), "-i", str(photos), "-o", str(tmp_path / "out"),
            "--cluster", dead])
    assert result.exit_code == 2 and result.exception.code == 2
    assert f"error: no Dask scheduler answered at {dead}" in result.output
    assert "Traceback" not in result.output
    assert not list(tmp_path.glob("out/**/*.png"))  # nothing ran


# -- real scheduler and workers ------------------------------------------------------------


@pytest.mark.slow
def test_run_on_scheduler_address(dask_cluster, workflow_file, photos, tmp_path):
    result = CliRunner().invoke(main, [
        "run", str(workflow_file), "-i", str(photos), "-o", str(tmp_path / "out"),
        "--cluster", dask_cluster.address, "--json"])
    assert result.exit_code == 0, result.output
    check_run(json.loads(result.stdout), photos, dask_cluster.workers)


@pytest.mark.slow
def test_run_with_scheduler_file(dask_cluster, workflow_file, photos, tmp_path):
    result = CliRunner().invoke(main, [
        "run", str(workflow_file), "-i", str(photos), "-o", str(tmp_path / "out"),
        "--scheduler-file", str(dask_cluster.scheduler_file), "--json"])
    assert result.exit_code == 0, result.output
    check_run(json.loads(result.stdout), photos, dask_cluster.workers)
    # the same run again: nothing left to do
    again = CliRunner().invoke(main, [
        "run", str(workflow_file), "-i", str(photos), "-o", str(tmp_path / "out"),
        "--scheduler-file", str(dask_cluster.scheduler_file), "--json"])
    assert json.loads(again.stdout)["already_done"] == 12


@pytest.mark.slow
def test_python_batch_script_uses_dask_scheduler_address(dask_cluster, workflow_file, photos,
                                                          tmp_path):
    script = CONFIGS / "batch_run.py"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    done = subprocess.run(
        [sys.executable, str(script), str(workflow_file), str(photos), str(tmp_path / "out")],
        env={**env, "DASK_SCHEDULER_ADDRESS": dask_cluster.address},
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "succeeded 12, failed 0" in done.stdout
    run_dir = next((tmp_path / "out" / "_dagflow" / "runs").iterdir())
    workers = {r["worker"] for r in pq.read_table(run_dir / "records").to_pylist()}
    assert workers <= set(dask_cluster.workers)
    # without an address or a scheduler file it refuses instead of starting a cluster
    refused = subprocess.run(
        [sys.executable, str(script), str(workflow_file), str(photos), str(tmp_path / "o2")],
        env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "DASK_SCHEDULER_ADDRESS" in refused.stderr


SCRIPT_RUN = """
import sys
import dagflow

result = dagflow.run(sys.argv[1], sys.argv[2], sys.argv[3], progress=False)
print(f"succeeded {result.succeeded}")
"""


@pytest.mark.slow
def test_a_script_without_a_main_guard_fails_fast_saying_why(workflow_file, photos, tmp_path):
    """Worker processes import the script again: unguarded, each would start a cluster of
    its own while the first waits for them. They refuse, naming the fix, and the script
    ends instead of hanging; guarded, the same script runs."""
    args = [str(workflow_file), str(photos), str(tmp_path / "out")]
    unguarded = tmp_path / "unguarded.py"
    unguarded.write_text(SCRIPT_RUN)
    done = subprocess.run([sys.executable, str(unguarded), *args], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert "ConfigError: dagflow starts worker processes" in done.stderr
    assert 'under `if __name__ == "__main__":`' in done.stderr
    guarded = tmp_path / "guarded.py"
    body = SCRIPT_RUN.split("import dagflow\n", 1)[1]
    guarded.write_text("import sys\nimport dagflow\n\nif __name__ == '__main__':\n"
                       + "".join(f"    {line}\n" for line in body.strip().splitlines()))
    done = subprocess.run([sys.executable, str(guarded), *args], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "succeeded 12" in done.stdout


@pytest.mark.slow
def test_a_scheduler_without_workers_is_said_and_waited_for(tmp_path, workflow_file, photos,
                                                           caplog):
    """Workers may join late (queued batch jobs): the run says it is waiting, then runs."""
    with DaskProcesses(tmp_path / "dask") as procs:
        address = procs.start_scheduler()
        with caplog.at_level("WARNING", logger="dagflow.runtime.run"):
            handle = dagflow.run(workflow_file, photos, tmp_path / "out", cluster=address,
                                 wait=False)
            deadline = time.monotonic() + 30
            while "waits for workers" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.1)
        assert f"no worker is connected to the scheduler at {address} yet" in caplog.text
        assert not handle.done()
        procs.start_worker("late")
        result = handle.result(timeout=120)
    assert result.succeeded == 12 and result.failed == 0
    events = [json.loads(line) for line in (result.run_dir / "events.jsonl").read_text()
              .splitlines()]
    assert {"event": "waiting_for_workers", "scheduler": address}.items() <= \
        next(e for e in events if e["event"] == "waiting_for_workers").items()


@pytest.mark.slow
def test_client_configuration_reaches_remote_workers(dask_cluster, workflow_file, photos,
                                                     tmp_path):
    """The workers run with Dask's defaults; the client's value still applies, because
    it is resolved on the client and passed into the tasks."""
    with dask.config.set({"dagflow.max-pixels": 100}):
        result = dagflow.run(workflow_file, photos, tmp_path / "out",
                             cluster=dask_cluster.address, progress=False)
    assert result.failed == 12
    assert {f["error_class"] for f in result.failures} == {"bad_input"}


@pytest.mark.slow
def test_scheduler_preloads_the_monitor(dask_cluster):
    from distributed import Client

    def plugins(dask_scheduler):
        return sorted(dask_scheduler.plugins)

    with Client(dask_cluster.address) as client:
        assert "dagflow-monitor" in client.run_on_scheduler(plugins)


# -- profiles -----------------------------------------------------------------------------


def write_profile(path: Path, **fields) -> Path:
    path.write_text(yaml.safe_dump(fields))
    return path


def _worker_settings() -> tuple[bool, str, str | None]:
    import dask

    return (dask.config.get("distributed.worker.profile.enabled"),
            dask.config.get("distributed.admin.tick.interval"),
            os.environ.get("MALLOC_MMAP_THRESHOLD_"))


@pytest.mark.slow
def test_embedded_cluster_takes_dagflows_dask_settings_into_every_worker_process(
        monkeypatch):
    """``cluster.dask-config`` reaches the scheduler and every worker, restarted ones too;
    ``{}`` leaves Dask's defaults."""
    from distributed import Client

    from dagflow.runtime.cluster import start_local_cluster

    # a nanny that restarts its worker sets the spawn environment in this process and
    # never takes it back: undone after the test (later clusters would inherit it)
    for key in dask.config.get("dagflow.cluster.worker-env"):
        monkeypatch.setenv(key, os.environ.get(key, ""))  # restored (or removed) after
        monkeypatch.delenv(key)

    with start_local_cluster(n_workers=1, threads_per_worker=1) as cluster, \
            Client(cluster) as client:
        assert cluster.scheduler._tick_interval == 0.2  # the default is 20 ms
        assert list(client.run(_worker_settings).values()) == [(False, "200ms", "33554432")]
        client.restart()  # the nanny starts a new worker process
        assert list(client.run(_worker_settings).values()) == [(False, "200ms", "33554432")]
    with dask.config.set({"dagflow.cluster.dask-config": {}}), \
            start_local_cluster(n_workers=1, threads_per_worker=1) as cluster, \
            Client(cluster) as client:
        assert cluster.scheduler._tick_interval == 0.02
        assert list(client.run(_worker_settings).values()) == [(True, "20ms", "33554432")]
    # the settings were set for the clusters only
    assert dask.config.get("distributed.worker.profile.enabled") is True


def test_shipped_profiles_load():
    names = {p.name for p in list_profiles()}
    assert {"local", "local-tls", "local-cuda", "slurm", "slurm-gpu", "slurm-tls", "pbs",
            "lsf", "kubernetes", "gateway"} <= names
    for p in list_profiles():
        assert p.description, p.name
        assert p.path.parent == SHIPPED_DIR or p.path.parent == Path.cwd() / "cluster-configs"
    assert load_profile("slurm").adapt == {"minimum": 0, "maximum": 40}
    assert load_profile(CONFIGS / "pbs.yaml").cls == "dask_jobqueue.PBSCluster"


def test_profile_lookup_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown cluster 'nope'.*slurm"):
        load_profile("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        load_profile(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not a cluster profile"):
        load_profile(CONFIGS / "monitoring.yaml")
    bad = write_profile(tmp_path / "bad.yaml", **{"class": "distributed.LocalCluster",
                                                  "optons": {}})
    with pytest.raises(ConfigError, match=r"unknown key.*optons"):
        load_profile(bad)
    both = write_profile(tmp_path / "both.yaml", **{"class": "distributed.LocalCluster",
                                                    "scale": 2, "adapt": {"maximum": 2}})
    with pytest.raises(ConfigError, match="not both"):
        load_profile(both)
    upside = write_profile(tmp_path / "upside.yaml", **{"class": "distributed.LocalCluster",
                                                        "adapt": {"minimum": 3, "maximum": 1}})
    with pytest.raises(ConfigError, match="minimum <= maximum"):
        load_profile(upside)


def test_missing_cluster_package_names_the_extra():
    for name, extra in [("kubernetes", "dagflow[cluster]"), ("gateway", "dagflow[cluster]"),
                        ("local-cuda", "dagflow[gpu]")]:
        profile = load_profile(name)
        module = profile.cls.split(".")[0]
        try:
            __import__(module)
        except Exception:
            with pytest.raises(ConfigError, match=re.escape(f"pip install '{extra}'")), \
                    cluster_from_profile(profile):
                pass
        else:  # pragma: no cover - the package is installed here
            pass


def test_an_rmm_pool_without_rmm_is_refused_before_any_cluster_starts():
    from dagflow.runtime.cluster import start_cuda_cluster

    if importlib.util.find_spec("rmm") is not None:  # pragma: no cover - a GPU machine
        pytest.skip("rmm is installed here")
    with pytest.raises(ConfigError, match=r"rmm-pool-size is '1GB' but rmm is not installed"):
        start_cuda_cluster(rmm_pool_size="1GB")
    with dask.config.set({"dagflow.cluster.cuda.rmm-pool-size": 0.9}), \
            pytest.raises(ConfigError, match=r"rmm-pool-size is 0.9 .*pip install rmm-cu12"):
        start_cuda_cluster()


def test_adapt_needs_a_class_that_supports_it(tmp_path, monkeypatch):
    (tmp_path / "fixedcluster.py").write_text(
        "class FixedCluster:\n"
        "    scheduler_address = 'tcp://127.0.0.1:1'\n"
        "    def __init__(self, **kw):\n        self.kw = kw\n"
        "    def scale(self, n):\n        self.n = n\n"
        "    def close(self):\n        pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    adaptive = write_profile(tmp_path / "a.yaml", **{"class": "fixedcluster.FixedCluster",
                                                     "adapt": {"minimum": 0, "maximum": 4}})
    with pytest.raises(ConfigError, match="does not support adaptive scaling"), \
            cluster_from_profile(adaptive):
        pass
    fixed = write_profile(tmp_path / "f.yaml", **{"class": "fixedcluster.FixedCluster",
                                                  "options": {"x": "$HOME/./a"}, "scale": 3})
    with cluster_from_profile(fixed) as c:
        assert c.n == 3 and c.kw == {"x": os.environ["HOME"] + "/./a"}
    typo = write_profile(tmp_path / "t.yaml", **{"class": "distributed.LocalCluster",
                                                 "options": {"n_wrokers": 1, "processes": False,
                                                             "dashboard_address": "127.0.0.1:0"}})
    with pytest.raises(ConfigError, match=r"cluster profile 't'.*n_wrokers"), \
            cluster_from_profile(typo):
        pass


@pytest.mark.slow
def test_run_with_a_profile_file_and_name(tmp_path, workflow_file, photos):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    write_profile(profiles / "two.yaml", **{
        "description": "two thread workers", "class": "distributed.LocalCluster",
        "options": {"n_workers": 2, "threads_per_worker": 1, "processes": False,
                    "dashboard_address": "127.0.0.1:0"}})
    result = CliRunner().invoke(main, [
        "run", str(workflow_file), "-i", str(photos), "-o", str(tmp_path / "a"),
        "--cluster", str(profiles / "two.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    check_run(json.loads(result.stdout), photos)
    with dask.config.set({"dagflow.cluster.profile-path": [str(profiles)]}):
        assert "two" in {p.name for p in list_profiles()}
        summary = dagflow.run(workflow_file, photos, tmp_path / "b", cluster="two",
                              progress=False)
    assert summary.succeeded == 12


@pytest.mark.slow
def test_adaptive_profile_scales_up_from_zero(tmp_path, workflow_file, photos):
    profile = write_profile(tmp_path / "adaptive.yaml", **{
        "class": "distributed.LocalCluster",
        "options": {"n_workers": 0, "threads_per_worker": 1, "processes": False,
                    "dashboard_address": "127.0.0.1:0"},
        "adapt": {"minimum": 0, "maximum": 2, "interval": "200ms"}})
    with cluster_from_profile(profile) as cluster:
        assert cluster._adaptive is not None
        assert cluster._adaptive.maximum == 2
        result = dagflow.run(workflow_file, photos, tmp_path / "out", cluster=cluster,
                             progress=False)
    assert result.succeeded == 12


@pytest.mark.slow
def test_shipped_local_profile_preloads_the_monitor(tmp_path, workflow_file, photos):
    with dask.config.set({"dagflow.cluster.n-workers": 1,
                          "dagflow.cluster.threads-per-worker": 2}), \
            cluster_from_profile("local", dashboard_address="127.0.0.1:0") as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        assert "dagflow-monitor" in cluster.scheduler.plugins
        result = dagflow.run(workflow_file, photos, tmp_path / "out", cluster=cluster,
                             progress=False)
    assert result.succeeded == 12


# -- batch job scripts (dask-jobqueue) ------------------------------------------------------


def parse_job_script(script: str, prefix: str) -> tuple[list[str], list[str]]:
    """A batch job script's directives (``#SBATCH ...`` lines, without the prefix) and its
    worker command, split as the shell would."""
    lines = script.splitlines()
    directives = [line[len(prefix):].strip() for line in lines if line.startswith(prefix)]
    [command] = [shlex.split(line) for line in lines if " -m dask " in line]
    return directives, command


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def seconds(walltime: str) -> float:
    """``HH:MM:SS`` (Slurm, PBS) or ``HH:MM`` (LSF) in seconds."""
    parts = [int(p) for p in walltime.split(":")]
    return sum(p * 60 ** i for i, p in enumerate(reversed(parts if len(parts) == 3
                                                          else [*parts, 0])))


# PBS and LSF have no server package on Debian: their job scripts are checked here by
# parsing (directives, resources, the worker command); Slurm's also run (test_slurm.py).
@pytest.mark.parametrize("name, prefix, directives", [
    ("slurm", "#SBATCH", ["-J dagflow-worker", "-n 1", "--cpus-per-task=16", "--mem=64G",
                          "-t 04:00:00"]),
    ("slurm-tls", "#SBATCH", ["--cpus-per-task=16", "--mem=64G", "-t 04:00:00"]),
    ("slurm-gpu", "#SBATCH", ["--cpus-per-task=8", "--mem=64G", "--gres=gpu:1"]),
    ("pbs", "#PBS", ["-N dagflow-worker", "-l select=1:ncpus=16:mem=64GB",
                     "-l walltime=04:00:00"]),
    ("lsf", "#BSUB", ["-J dagflow-worker", "-n 16", '-R "span[hosts=1]"', "-M 64000000",
                      "-W 04:00"]),
])
def test_jobqueue_profiles_render_job_scripts(name, prefix, directives, monkeypatch):
    pytest.importorskip("dask_jobqueue")
    monkeypatch.setenv("DAGFLOW_TLS_DIR", "/secure/tls")
    monkeypatch.delenv("LSF_ENVDIR", raising=False)  # LSF's memory unit: KB
    profile = load_profile(name)
    script = profile.job_script("tcp://10.0.0.1:8786")
    found, command = parse_job_script(script, prefix)
    assert set(directives) <= set(found), found
    _python, m, *worker = command
    assert (m, *worker[:2]) == ("-m", "dask", "cuda" if "gpu" in name else "worker")
    assert "tcp://10.0.0.1:8786" in worker and "distributed.cli" not in script
    assert "export MALLOC_MMAP_THRESHOLD_=33554432" in script
    if "gpu" in name:
        assert option(command, "--resources") == "GPU=1,MEMORY=51e9"
    else:  # 4 processes of 4 threads and a quarter of the memory each
        assert (option(command, "--nworkers"), option(command, "--nthreads")) == ("4", "4")
        assert option(command, "--memory-limit") in ("16.00GiB", "14.90GiB")
        # the worker leaves (its tasks finished) before the batch system kills its job
        assert option(command, "--worker-class") == "dagflow.runtime.retire.RetiringWorker"
        walltime = next(d.split()[-1].split("=")[-1] for d in found
                        if d.startswith(("-t ", "-l walltime", "-W ")))
        lifetime = dask.utils.parse_timedelta(option(command, "--lifetime"))
        stagger = dask.utils.parse_timedelta(option(command, "--lifetime-stagger"))
        assert lifetime + stagger < seconds(walltime)
    if name == "slurm-tls":
        assert option(command, "--protocol") == "tls://"
        assert option(command, "--tls-ca-file") == "/secure/tls/ca.pem"
        assert option(command, "--tls-cert") == "/secure/tls/worker.pem"
    # the preload is the scheduler's (it runs in the driving process, not in the jobs)
    assert profile.options["scheduler_options"]["preload"] == [PRELOAD]


def test_profile_values_come_from_the_environment_with_defaults(monkeypatch):
    """`${VAR:-default}`: the shipped Slurm profile sized to a 2-core machine by its
    environment variables, typed as YAML would type the value."""
    pytest.importorskip("dask_jobqueue")
    for variable in ("DAGFLOW_SLURM_PARTITION", "DAGFLOW_SLURM_MIN_WORKERS"):
        monkeypatch.delenv(variable, raising=False)
    sized = {"DAGFLOW_SLURM_CORES": "2", "DAGFLOW_SLURM_MEMORY": "6GiB",
             "DAGFLOW_SLURM_PROCESSES": "1", "DAGFLOW_SLURM_WALLTIME": "00:30:00",
             "DAGFLOW_SLURM_LIFETIME": "25m", "DAGFLOW_SLURM_MAX_WORKERS": "3",
             "DAGFLOW_SLURM_ACCOUNT": ""}  # empty: the default
    for variable, value in sized.items():
        monkeypatch.setenv(variable, value)
    profile = load_profile("slurm")
    options = profile.resolved_options()
    assert (options["cores"], options["memory"], options["processes"]) == (2, "6GiB", 1)
    assert (options["queue"], options["account"], options["walltime"]) == (None, None,
                                                                          "00:30:00")
    assert profile.adapt == {"minimum": 0, "maximum": 3}
    found, command = parse_job_script(profile.job_script("tcp://10.0.0.1:8786"), "#SBATCH")
    assert {"--cpus-per-task=2", "--mem=6G", "-t 00:30:00"} <= set(found)
    assert not [d for d in found if d.startswith(("-p ", "-A "))]  # Slurm's defaults
    assert (option(command, "--nthreads"), option(command, "--nworkers")) == ("2", "1")
    assert (option(command, "--memory-limit"), option(command, "--lifetime")) == \
        ("6.00GiB", "25m")
    # a value that is more than one reference stays a string; an unset one is left as is
    path = write_profile(Path(os.environ.get("TMPDIR", "/tmp")) / "env-profile.yaml", **{
        "class": "distributed.LocalCluster", "scale": "${DAGFLOW_TEST_UNSET:-2}",
        "options": {"name": "w${DAGFLOW_SLURM_CORES:-9}", "ratio": "${DAGFLOW_TEST_UNSET:-0.5}",
                    "flag": "${DAGFLOW_TEST_UNSET:-true}", "kept": "$DAGFLOW_TEST_UNSET"}})
    try:
        env_profile = load_profile(path)
    finally:
        path.unlink()
    assert env_profile.scale == 2
    assert env_profile.resolved_options() == {"name": "w2", "ratio": 0.5, "flag": True,
                                              "kept": "$DAGFLOW_TEST_UNSET"}


@pytest.mark.timeout(60)  # dask-jobqueue alone would retry the submission for ever
@pytest.mark.parametrize("name, command", [("slurm", "sbatch"), ("pbs", "qsub"),
                                           ("lsf", "bsub")])
def test_a_missing_submission_command_stops_the_run_at_once(name, command, monkeypatch,
                                                            workflow_file, photos, tmp_path):
    """No batch system here: the first worker job cannot be submitted, and the run stops
    with exit code 2 and one line naming the command, instead of waiting for ever."""
    pytest.importorskip("dask_jobqueue")
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("DAGFLOW_DASHBOARD_ADDRESS", "127.0.0.1:0")
    for prefix in ("SLURM", "PBS", "LSF"):
        monkeypatch.setenv(f"DAGFLOW_{prefix}_INTERFACE", "lo")
    result = CliRunner().invoke(main, ["run", str(workflow_file), "-i", str(photos),
                                       "-o", str(tmp_path / "out"), "--cluster", name])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert line.startswith(f"error: cluster profile {name!r}") and "\n" not in line, line
    assert "the first worker job could not be submitted:" in line
    assert f"{command!r} was not found on PATH" in line  # (bsub through a shell: 127)
    assert "Traceback" not in result.output
    assert not list((tmp_path / "out").rglob("*.png"))


FAKE_BATCH_SYSTEM = {  # submit, cancel, what the submit command answers
    "slurm": ("sbatch", "scancel", "Submitted batch job 42"),
    "pbs": ("qsub", "qdel", "42.pbs-server"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["slurm", "pbs"])
def test_jobqueue_profile_starts_its_scheduler_and_submits_its_first_job(name, tmp_path,
                                                                        monkeypatch):
    """The real cluster class, built from the profile, against a stand-in for the batch
    system's commands (PBS has no server package here; the real Slurm is in
    test_slurm.py): its scheduler (in this process) preloaded dagflow's monitor, the first
    worker job is submitted when the cluster starts, and it runs `dask worker` against
    that scheduler; closing the cluster cancels the job."""
    pytest.importorskip("dask_jobqueue")
    submit, cancel, answer = FAKE_BATCH_SYSTEM[name]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / submit).write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\n'
                                  f'echo "{answer}"\n')
    (bin_dir / cancel).write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/cancelled\n')
    for script in bin_dir.iterdir():
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    profile = load_profile(name)
    options = {**profile.options["scheduler_options"], "host": "127.0.0.1",
               "dashboard_address": "127.0.0.1:0"}
    with cluster_from_profile(profile, scheduler_options=options) as cluster:
        assert "dagflow-monitor" in cluster.scheduler.plugins
        deadline = time.monotonic() + 10
        while not cluster.workers and time.monotonic() < deadline:  # being registered
            time.sleep(0.05)
        assert [job.job_id for job in cluster.workers.values()] == ["42"]
        script = (tmp_path / "submitted.sh").read_text()
        assert f"-m dask worker {cluster.scheduler_address}" in script
        assert "--worker-class dagflow.runtime.retire.RetiringWorker" in script
        assert cluster._adaptive is not None
    assert (tmp_path / "cancelled").read_text().split() == ["42"]


@pytest.mark.slow
def test_a_batch_system_slow_to_answer_is_waited_for_not_refused(tmp_path, monkeypatch, caplog):
    """An `sbatch` that answers after the first-submission timeout: a warning, and the
    cluster goes on (its job is registered when the answer comes)."""
    pytest.importorskip("dask_jobqueue")
    from dagflow.runtime import jobqueue

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\nsleep 1\necho "Submitted batch job 7"\n')
    (bin_dir / "scancel").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/cancelled\n')
    for script in bin_dir.iterdir():
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(jobqueue, "FIRST_SUBMISSION_TIMEOUT", 0.2)
    options = {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}
    with caplog.at_level("WARNING", logger="dagflow.runtime.jobqueue"), \
            cluster_from_profile("slurm", scheduler_options=options) as cluster:
        assert "sbatch has not answered within 0.2 s; the run waits for its workers" in \
            caplog.text
        deadline = time.monotonic() + 10
        while not cluster.workers and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [job.job_id for job in cluster.workers.values()] == ["7"]
    assert (tmp_path / "cancelled").read_text().split() == ["7"]


#: Stand-ins for PBS and LSF (no server package here) that accept worker job 42 and then
#: say, in their real formats (qstat -f -x; bjobs -json), that it ended with exit code 127
#: before its worker started: its error file is ERROR.
FAILED_JOB_BATCH_SYSTEMS = {
    "pbs": {
        "qsub": 'cp "$1" {tmp}/submitted.sh\necho 42.pbs-server\n',
        "qdel": 'echo "$@" >> {tmp}/cancelled\n',
        "qstat": textwrap.dedent("""\
            case "$*" in *42*) ;; *) echo "qstat: Unknown Job Id $*" >&2; exit 153 ;; esac
            cat <<EOF
            Job Id: 42.pbs-server
                Job_Name = dagflow-worker
                Job_Owner = alice@login01
                job_state = F
                queue = workq
                Error_Path = login01:{tmp}/dagflow-worker.e42
                exec_host = node07/0*16
                Join_Path = n
                Output_Path = login01:{tmp}/dagflow-worker.o42
                comment = Job run at Mon Dec 07 at 20:29 on (node07:ncpus=16:mem=67108864kb) a
            \tnd failed
                Exit_status = 127
            EOF
            """),
        "log": "dagflow-worker.e42", "state": "F, exit code 127",
    },
    "lsf": {
        "bsub": 'cat > {tmp}/submitted.sh\necho "Job <42> is submitted to default queue '
                '<normal>."\n',
        "bkill": 'echo "$@" >> {tmp}/cancelled\n',
        "bjobs": textwrap.dedent("""\
            cat <<EOF
            {{
              "COMMAND":"bjobs",
              "JOBS":1,
              "RECORDS":[
                {{
                  "JOBID":"42",
                  "STAT":"EXIT",
                  "EXIT_CODE":"127",
                  "PEND_REASON":"",
                  "ERROR_FILE":"{tmp}/dagflow-worker-%J.err",
                  "JOB_NAME":"dagflow-worker"
                }}
              ]
            }}
            EOF
            """),
        "log": "dagflow-worker-42.err", "state": "EXIT, exit code 127",
    },
}


@pytest.mark.timeout(60)  # without the watch the run would wait for ever
@pytest.mark.parametrize("name", ["pbs", "lsf"])
def test_a_worker_job_that_ended_without_its_worker_stops_the_run_quoting_its_error(
        name, tmp_path, monkeypatch, workflow_file, photos):
    """PBS and LSF, through their real cluster classes and the command line, against
    stand-in commands that answer in the real formats: the job the batch system accepted
    ended before its worker connected; the run stops with exit code 2, in one line naming
    the job, its state and exit code, and the last lines of its error file; the job is
    cancelled with the cluster."""
    pytest.importorskip("dask_jobqueue")
    commands = FAILED_JOB_BATCH_SYSTEMS[name]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command, script in commands.items():
        if command not in ("log", "state"):
            (bin_dir / command).write_text("#!/bin/sh\n" + script.format(tmp=tmp_path))
            (bin_dir / command).chmod(0o755)
    (tmp_path / commands["log"]).write_text(
        "/var/spool/jobs/42.SC: line 12: /opt/envs/dagflow/bin/python: No such file or "
        "directory\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DAGFLOW_DASHBOARD_ADDRESS", "127.0.0.1:0")
    monkeypatch.setenv(f"DAGFLOW_{name.upper()}_INTERFACE", "lo")
    with dask.config.set({"dagflow.cluster.job-poll-interval": 0.2}):
        result = CliRunner().invoke(main, ["run", str(workflow_file), "-i", str(photos),
                                           "-o", str(tmp_path / "out"), "--cluster", name])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"error: cluster profile '{name}' \(.*\): worker job 42 ended \({commands['state']}\) "
        rf"before its worker connected to the scheduler; {tmp_path}/{commands['log']} ends: "
        r"/var/spool/jobs/42\.SC: line 12: /opt/envs/dagflow/bin/python: No such file or "
        r"directory", line), line
    assert "Traceback" not in result.output
    assert (tmp_path / "cancelled").read_text().split() == ["42"]
    assert not list((tmp_path / "out").rglob("*.png"))


@pytest.mark.timeout(60)
def test_submit_follow_says_why_the_driver_could_not_start_the_cluster(
        monkeypatch, workflow_file, photos, tmp_path):
    """`dagflow submit --follow` of a run whose worker jobs cannot be submitted (no sbatch
    here): the run is interrupted before any item, and the follow ends with the driver's
    error line (as `dagflow run` prints it) and exit code 4."""
    pytest.importorskip("dask_jobqueue")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    monkeypatch.setenv("DAGFLOW_DASHBOARD_ADDRESS", "127.0.0.1:0")
    monkeypatch.setenv("DAGFLOW_SLURM_INTERFACE", "lo")
    result = CliRunner().invoke(main, ["submit", str(workflow_file), "-i", str(photos),
                                       "-o", str(tmp_path / "out"), "--cluster", "slurm",
                                       "--follow"])
    assert result.exit_code == 4, result.output
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("error: cluster profile 'slurm' (") and last.endswith(
        "the first worker job could not be submitted: 'sbatch' was not found on PATH: is "
        "this a login node of the batch system, with its commands installed?"), last


def test_cluster_profiles_cli(tmp_path):
    runner = CliRunner()
    listing = runner.invoke(main, ["cluster-profiles"])
    assert listing.exit_code == 0
    for name in ("local", "slurm", "pbs", "kubernetes", "gateway", "local-cuda"):
        assert re.search(rf"^{re.escape(name)}\s", listing.stdout, re.M), listing.stdout
    shown = runner.invoke(main, ["cluster-profiles", "slurm", "--json"])
    assert json.loads(shown.stdout)["class"] == "dask_jobqueue.SLURMCluster"
    script = runner.invoke(main, ["cluster-profiles", "pbs", "--job-script"])
    assert script.exit_code == 0 and "#PBS" in script.stdout
    unknown = runner.invoke(main, ["run", str(CONFIGS / "local.yaml"), "-i", str(tmp_path),
                                   "-o", str(tmp_path / "o"), "--cluster", "nope"])
    assert unknown.exit_code == 2


def test_importing_cluster_packages_writes_nothing_home(tmp_path):
    pytest.importorskip("dask_jobqueue")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    home = tmp_path / "home"
    home.mkdir()
    done = subprocess.run(
        [str(BIN / "dagflow"), "cluster-profiles", "slurm", "--job-script"],
        env={**env, "HOME": str(home)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert list(home.rglob("*")) == []


# -- gateway, Slurm batch script (Kubernetes: test_kubernetes_manifests.py) ---------------


def test_gateway_server_config_uses_the_dask_command():
    text = (CONFIGS / "gateway" / "dask_gateway_config.py").read_text()
    assert 'scheduler_cmd = ["dask", "scheduler", "--preload", "dagflow.monitor.preload"]' in text
    assert 'worker_cmd = ["dask", "worker"]' in text
    assert '"--resources", f"MEMORY=' in text
    compile(text, "dask_gateway_config.py", "exec")


def test_slurm_batch_script():
    """Its form; test_slurm.py runs it on a real Slurm."""
    script = CONFIGS / "slurm-batch.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "dask scheduler --scheduler-file" in text and "--port 0" in text
    assert f"--preload {PRELOAD}" in text
    # workers sized from the allocation, advertising MEMORY themselves
    assert re.search(r"srun .*dask worker --scheduler-file", text)
    assert '--nthreads "$THREADS" --memory-limit "${MEMORY_MB}MB"' in text
    assert re.search(r"^dagflow run .*--scheduler-file", text, re.M)


def test_no_file_uses_the_removed_hyphenated_scripts():
    """`dask scheduler`, `dask worker`, `dask cuda worker`: the hyphenated scripts (and the
    old submit script) were removed from distributed and dask-cuda."""
    names = "|".join(["scheduler", "worker", "cuda-worker", "submit", "ssh", "spec"])
    pattern = re.compile(r"(?<![\w.-])dask" + "-" + rf"(?:{names})(?![\w-])")
    try:
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        files = [os.path.relpath(p, ROOT) for p in ROOT.rglob("*")
                 if ".venv" not in p.parts and ".git" not in p.parts]
    offenders = []
    for rel in files:
        path = ROOT / rel
        if not path.is_file() or path.suffix in {".png", ".jpg", ".parquet", ".tif"}:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# -- the dask CLI ----------------------------------------------------------------------------


def test_dask_dagflow_help_lists_the_commands():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    done = subprocess.run([str(BIN / "dask"), "dagflow", "--help"], capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    for command in ("run", "submit", "status", "validate", "ops", "cluster-profiles", "config"):
        assert re.search(rf"^\s+{re.escape(command)}\s", done.stdout, re.M), done.stdout


# -- workers at the end of their lifetime (dagflow.runtime.retire) ---------------------------

_GO = threading.Event()
_STARTED = threading.Event()
_RUNS: list[int] = []


def _held(x: int) -> int:
    """A task that says it started, waits for the test, and counts its executions."""
    _STARTED.set()
    _GO.wait(30)
    _RUNS.append(x)
    return x


@pytest.mark.parametrize("worker_class, executions", [("retiring", 1), ("dask", 2)])
def test_a_worker_at_the_end_of_its_lifetime_finishes_its_task_and_hands_over(
        worker_class, executions):
    """The task running on a worker whose lifetime ends runs once, on that worker, and its
    other results move to the other worker. Dask's own worker drops the task (it runs
    again elsewhere): the reason for RetiringWorker."""
    from distributed import Worker
    from distributed.utils_test import gen_cluster

    from dagflow.runtime.retire import END_OF_LIFETIME, RetiringWorker

    cls = RetiringWorker if worker_class == "retiring" else Worker

    @gen_cluster(client=True, Worker=cls, nthreads=[("127.0.0.1", 1)] * 2)
    async def scenario(c, s, a, b):
        kept = c.submit(lambda: "kept", workers=[a.address], pure=False)
        await kept
        held = c.submit(_held, 1, workers=[a.address], allow_other_workers=True)
        await asyncio.get_running_loop().run_in_executor(None, _STARTED.wait, 30)
        closing = asyncio.ensure_future(a.close_gracefully(reason=END_OF_LIFETIME))
        while a.status == Status.running:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # time enough to hand the task elsewhere, if it would
        _GO.set()
        assert await held == 1
        await closing
        assert a.address not in s.workers
        assert await kept == "kept"  # handed to b, not computed again
        assert {ws.address for ws in s.tasks[kept.key].who_has} == {b.address}
        assert sorted(_RUNS) == [1] * executions

    _GO.clear()
    _STARTED.clear()
    _RUNS.clear()
    scenario()


def test_the_last_worker_works_on_until_another_can_take_its_results(monkeypatch):
    """No other worker to hand its results to: the worker goes back to work, and retires
    once a replacement has joined."""
    from distributed.utils_test import gen_cluster, inc

    from dagflow.runtime import retire

    monkeypatch.setattr(retire, "RETRY", 0.2)

    @gen_cluster(client=True, Worker=retire.RetiringWorker, nthreads=[("127.0.0.1", 1)])
    async def scenario(c, s, a):
        kept = c.submit(inc, 1, pure=False)
        await kept
        closing = asyncio.ensure_future(a.close_gracefully(reason=retire.END_OF_LIFETIME))
        declined = ("could-not-retire", [a.address])
        while not any(isinstance(e, dict) and (e.get(declined[0]) == declined[1])
                      for _, e in s.get_events("all")):
            await asyncio.sleep(0.02)
        assert await c.submit(inc, 10, pure=False) == 11  # it still takes tasks
        assert not closing.done()
        async with retire.RetiringWorker(s.address, nthreads=1) as b:
            await closing
            assert a.address not in s.workers
            assert await kept == 2
            assert {ws.address for ws in s.tasks[kept.key].who_has} == {b.address}

    scenario()


def test_dashboard_address_null_switches_the_dashboard_off_and_binds_no_fixed_port():
    """``dashboard-address: null`` serves no dashboard, and the scheduler's own HTTP
    routes (which Dask starts even without one) stay on a free port of 127.0.0.1, not on
    8787 of every interface."""
    import urllib.error
    import urllib.request

    import dask

    from dagflow.runtime.cluster import start_local_cluster

    with dask.config.set({"dagflow.cluster.dashboard-address": None}), \
            start_local_cluster(n_workers=1, threads_per_worker=1, processes=False) as cluster:
        server = cluster.scheduler.http_server
        bound = {sock.getsockname()[:2] for sock in server._sockets.values()}
        assert bound and all(host == "127.0.0.1" and port != 8787 for host, port in bound)
        port = next(iter(bound))[1]
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as reply:
            assert reply.read() == b"ok"


def _imported(*names: str) -> dict[str, bool]:
    return {name: name in sys.modules for name in names}


@pytest.mark.slow
def test_embedded_workers_import_what_chunks_need_as_they_start():
    """dagflow.cluster.worker-preload: the ops, codecs and Parquet are imported before
    any task or plugin reaches the worker (not on its first chunk); false leaves them."""
    from distributed import Client

    from dagflow.runtime.cluster import start_local_cluster

    wanted = ("dagflow.ops", "dagflow.execute", "dagflow.recovery.checkpoint", "cv2")
    for preload in (True, False):
        with dask.config.set({"dagflow.cluster.worker-preload": preload}), \
                start_local_cluster(n_workers=1, threads_per_worker=1) as cluster, \
                Client(cluster) as client:
            (found,) = client.run(_imported, *wanted).values()
        assert found == dict.fromkeys(wanted, preload), (preload, found)


FORKED_WORKERS = '''
import os, sys
from multiprocessing import forkserver

from distributed import Client

from dagflow.runtime.cluster import start_local_cluster, start_worker_forkserver


def at_start():
    with open("/proc/self/environ", "rb") as f:  # as the process started: what glibc read
        env = dict(e.split(b"=", 1) for e in f.read().split(bytes(1)) if b"=" in e)
    return {"parent": os.getppid(), "preloaded": "dagflow.ops" in sys.modules,
            "malloc": env.get(b"MALLOC_MMAP_THRESHOLD_", b"").decode(),
            "omp": env.get(b"OMP_NUM_THREADS", b"").decode(),
            "seed": env.get(b"PYTHONHASHSEED", b"").decode(),
            "late": os.environ.get("DAGFLOW_TEST_LATE", "")}


if __name__ == "__main__":
    assert start_worker_forkserver() and "MALLOC_MMAP_THRESHOLD_" not in os.environ
    with start_local_cluster(n_workers=2, threads_per_worker=1) as cluster:
        with Client(cluster) as client:
            found = list(client.run(at_start).values())
            assert client.submit(sum, [1, 2]).result() == 3
    print("SERVER", forkserver._forkserver._forkserver_pid, "WORKERS", found)
    os.environ["DAGFLOW_TEST_LATE"] = "set after the server started"
    with start_local_cluster(n_workers=1, threads_per_worker=1) as cluster:
        with Client(cluster) as client:
            print("LATE", list(client.run(at_start).values()))
'''


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/environ")
def test_workers_fork_from_the_preloaded_server_in_the_workers_environment(tmp_path):
    """`dagflow run` starts the forkserver first: the embedded cluster's workers are its
    forks, with the ops imported and, from their first instruction, the environment a
    nanny gives a spawned worker (glibc's MALLOC_* from dagflow.cluster.worker-env,
    OMP_NUM_THREADS, Dask's hash seed); the command's own environment is left alone; a
    cluster started after the environment changed spawns its workers, which see it."""
    script = tmp_path / "forked.py"
    script.write_text(FORKED_WORKERS)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, env={k: v for k, v in os.environ.items()
                                            if not k.startswith(("MALLOC_", "PYTHONHASHSEED"))})
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("SERVER"))
    server, workers = line.split(" WORKERS ")
    found = eval(workers)  # the repr of a list of dicts of str, int and bool
    assert len(found) == 2
    threshold = str(dask.config.get("dagflow.cluster.worker-env")["MALLOC_MMAP_THRESHOLD_"])
    for worker in found:
        assert worker["parent"] == int(server.split()[1])
        assert worker["preloaded"] is True
        assert (worker["malloc"], worker["omp"], worker["seed"]) == (threshold, "1", "6640")
    # a cluster started once the environment changed spawns its workers: they see it
    late = eval(next(x for x in done.stdout.splitlines() if x.startswith("LATE "))[5:])
    assert [(w["parent"] == int(server.split()[1]), w["late"]) for w in late] == \
        [(False, "set after the server started")]
