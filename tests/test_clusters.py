"""Clusters: real `dask scheduler` / `dask worker` processes, cluster profiles, job
scripts, Kubernetes manifests, and the `dask dagflow` entry point."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import dask.config
import pyarrow.parquet as pq
import pytest
import yaml
from _processes import BIN, WORKFLOW, DaskProcesses
from click.testing import CliRunner

import dagflow
from dagflow.cli import main
from dagflow.exceptions import ConfigError
from dagflow.runtime.profiles import (
    SHIPPED_DIR,
    cluster_from_profile,
    list_profiles,
    load_profile,
)

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
            "kubernetes", "gateway"} <= names
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
            with pytest.raises(ConfigError, match=re.escape(f"pip install '{extra}'")):
                profile.create()
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
                                                             "dashboard_address": None}})
    with pytest.raises(ConfigError, match=r"cluster profile 't'.*n_wrokers"):
        load_profile(typo).create()


@pytest.mark.slow
def test_run_with_a_profile_file_and_name(tmp_path, workflow_file, photos):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    write_profile(profiles / "two.yaml", **{
        "description": "two thread workers", "class": "distributed.LocalCluster",
        "options": {"n_workers": 2, "threads_per_worker": 1, "processes": False,
                    "dashboard_address": None}})
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
                    "dashboard_address": None},
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


@pytest.mark.parametrize("name, worker, resources, directive", [
    ("slurm", "-m dask worker", "--resources MEMORY=13e9", "#SBATCH --mem=64G"),
    ("slurm-gpu", "-m dask cuda worker", "--resources GPU=1,MEMORY=51e9",
     "#SBATCH --gres=gpu:1"),
    ("slurm-tls", "-m dask worker", "--resources MEMORY=13e9", "#SBATCH --cpus-per-task=16"),
    ("pbs", "-m dask worker", "--resources MEMORY=12e9", "#PBS -l select=1:ncpus=16:mem=64GB"),
])
def test_jobqueue_profiles_render_job_scripts(name, worker, resources, directive, monkeypatch):
    pytest.importorskip("dask_jobqueue")
    monkeypatch.setenv("DAGFLOW_TLS_DIR", "/secure/tls")
    script = load_profile(name).job_script("tcp://10.0.0.1:8786")
    command = next(line for line in script.splitlines() if " -m dask " in line)
    assert worker + " tcp://10.0.0.1:8786" in command
    assert resources in command
    assert directive in script
    assert "export MALLOC_MMAP_THRESHOLD_=33554432" in script
    assert "distributed.cli" not in script
    if name == "slurm-tls":
        assert "--protocol tls://" in command
        assert "--tls-ca-file /secure/tls/ca.pem" in command
        assert "--tls-cert /secure/tls/worker.pem" in command
    if "gpu" not in name:
        assert "--nworkers 4" in command
    # the preload is the scheduler's (it runs in the driving process, not in the jobs)
    assert load_profile(name).options["scheduler_options"]["preload"] == [PRELOAD]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["slurm", "pbs"])
def test_jobqueue_profile_starts_its_scheduler_with_the_preload(name):
    """The real cluster class, built from the profile: its scheduler (in this process)
    preloaded dagflow's monitor, and its job script runs `dask worker` against it. No job
    is submitted (adaptive from zero, nothing to do)."""
    pytest.importorskip("dask_jobqueue")
    profile = load_profile(name)
    options = {**profile.options["scheduler_options"], "host": "127.0.0.1",
               "dashboard_address": "127.0.0.1:0"}
    with cluster_from_profile(profile, scheduler_options=options) as cluster:
        assert "dagflow-monitor" in cluster.scheduler.plugins
        script = cluster.job_script()
        assert f"-m dask worker {cluster.scheduler_address}" in script
        assert "--resources MEMORY=" in script
        assert cluster._adaptive is not None and not cluster.workers


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


# -- Kubernetes, Helm, gateway, Slurm batch script ------------------------------------------


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def containers(pod_spec: dict) -> dict[str, dict]:
    return {c["name"]: c for c in pod_spec["containers"]}


def check_dask_cluster_spec(spec: dict, cluster_name: str) -> None:
    worker = containers(spec["worker"]["spec"])["worker"]
    assert worker["args"][:2] == ["dask", "worker"]
    assert "--resources" in worker["args"]
    assert worker["args"][worker["args"].index("--resources") + 1].startswith("MEMORY=")
    scheduler = containers(spec["scheduler"]["spec"])["scheduler"]
    assert scheduler["args"][:2] == ["dask", "scheduler"]
    assert scheduler["args"][scheduler["args"].index("--preload") + 1] == PRELOAD
    service = spec["scheduler"]["service"]
    assert service["type"] == "ClusterIP"
    assert service["selector"]["dask.org/cluster-name"] == cluster_name


def test_kubernetes_manifests():
    k8s = CONFIGS / "kubernetes"
    [cluster] = load_all(k8s / "dask-cluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("kubernetes.dask.org/v1", "DaskCluster")
    check_dask_cluster_spec(cluster["spec"], cluster["metadata"]["name"])

    docs = {d["kind"]: d for d in load_all(k8s / "dask-job.yaml")}
    job = docs["DaskJob"]
    assert job["apiVersion"] == "kubernetes.dask.org/v1"
    check_dask_cluster_spec(job["spec"]["cluster"]["spec"], job["metadata"]["name"])
    runner = containers(job["spec"]["job"]["spec"])["job"]
    assert runner["args"][:2] == ["dagflow", "run"]
    # the workflow it runs is a valid dagflow workflow
    [workflow_text] = docs["ConfigMap"]["data"].values()
    dagflow.Workflow.from_yaml(workflow_text).validate()
    assert Path(runner["args"][2]).name in docs["ConfigMap"]["data"]

    policies = load_all(k8s / "network-policy.yaml")
    assert {p["kind"] for p in policies} == {"NetworkPolicy"}
    assert {p["spec"]["podSelector"]["matchLabels"]["dask.org/component"]
            for p in policies} == {"scheduler", "worker"}

    values = yaml.safe_load((k8s / "helm-values.yaml").read_text())
    assert values["scheduler"]["extraArgs"] == ["--preload", PRELOAD]
    assert values["scheduler"]["serviceType"] == "ClusterIP"
    assert values["worker"]["extraArgs"][0] == "--resources"
    assert values["jupyter"]["enabled"] is False

    profile = load_profile("kubernetes")
    spec_path = Path(profile.resolved_options()["custom_cluster_spec"])
    assert spec_path == (k8s / "dask-cluster.yaml").resolve()


def test_gateway_server_config_uses_the_dask_command():
    text = (CONFIGS / "gateway" / "dask_gateway_config.py").read_text()
    assert 'scheduler_cmd = ["dask", "scheduler", "--preload", "dagflow.monitor.preload"]' in text
    assert 'worker_cmd = ["dask", "worker"]' in text
    assert '"--resources", f"MEMORY=' in text
    compile(text, "dask_gateway_config.py", "exec")


def test_slurm_batch_script():
    script = CONFIGS / "slurm-batch.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "dask scheduler --scheduler-file" in text
    assert f"--preload {PRELOAD}" in text
    assert re.search(r"srun .*dask worker --scheduler-file", text)
    assert "--resources MEMORY=" in text
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
