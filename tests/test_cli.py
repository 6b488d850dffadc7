"""The command line: commands, exit codes, JSON summary; one real subprocess run each way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dagflow.cli import main

BIN = Path(sys.executable).parent
WORKFLOW = """
name: thumbs
nodes:
  - {id: load, op: load, params: {auto_orient: true}}
  - {id: small, op: resize, after: [load], params: {long_side: 32}}
  - {id: save, op: save, after: [small], params: {format: jpeg, quality: 85}}
"""


@pytest.fixture
def workflow_file(tmp_path) -> Path:
    path = tmp_path / "thumbs.yaml"
    path.write_text(WORKFLOW)
    return path


def dagflow_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "DASK_DAGFLOW__CLUSTER__N_WORKERS": "1",
           "DASK_DAGFLOW__CLUSTER__THREADS_PER_WORKER": "2"}
    return subprocess.run([str(BIN / "dagflow"), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_run_json_summary_and_exit_codes(workflow_file, photos, tmp_path):
    done = dagflow_cli("run", str(workflow_file), "--input", str(photos),
                       "--output", str(tmp_path / "out"), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    for key in ("items", "succeeded", "failed", "skipped", "run_dir", "duration_s"):
        assert key in summary
    assert (summary["items"], summary["succeeded"], summary["failed"]) == (12, 12, 0)
    assert Path(summary["run_dir"], "records").is_dir()
    report = Path(summary["run_dir"], "report.html")  # the command writes the report
    assert report.stat().st_size > 10_000 and "bokeh" in report.read_text().lower()
    assert "it/s" not in done.stderr and "img/s" not in done.stderr  # no bar off a terminal

    (photos / "broken.jpg").write_bytes(b"nope")
    some_failed = dagflow_cli("run", str(workflow_file), "-i", str(photos),
                              "-o", str(tmp_path / "out2"), "--json")
    assert some_failed.returncode == 1
    assert json.loads(some_failed.stdout)["failed"] == 1

    bad = tmp_path / "bad.yaml"
    bad.write_text(WORKFLOW.replace("op: resize", "op: resise"))
    invalid = dagflow_cli("run", str(bad), "-i", str(photos), "-o", str(tmp_path / "out3"))
    assert invalid.returncode == 2
    assert "unknown op 'resise'" in invalid.stderr and "'resize'" in invalid.stderr
    assert not (tmp_path / "out3").exists()


def test_dask_dagflow_subcommand():
    done = subprocess.run([str(BIN / "dask"), "dagflow", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for command in ("run", "validate", "ops", "sample-data", "status"):
        assert command in done.stdout


def test_validate(workflow_file, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(main, ["validate", str(workflow_file)])
    assert ok.exit_code == 0 and "thumbs" in ok.output
    cyclic = tmp_path / "cyclic.yaml"
    cyclic.write_text("name: c\nnodes:\n  - {id: load, op: load}\n"
                      "  - {id: a, op: flip, after: [b]}\n  - {id: b, op: flip, after: [a]}\n")
    bad = runner.invoke(main, ["validate", str(cyclic)])
    assert bad.exit_code == 2 and "cycle" in bad.output and "a" in bad.output


def test_usage_errors_exit_2(workflow_file):
    result = CliRunner().invoke(main, ["run", str(workflow_file)])  # no --input/--output
    assert result.exit_code == 2


@pytest.mark.parametrize("command", ["run", "plan"])
@pytest.mark.parametrize("option,value,message", [
    ("--n-workers", "0", "n-workers must be a whole number >= 1, got 0"),
    ("--threads-per-worker", "-1", "threads-per-worker must be a whole number >= 1, got -1"),
    ("--memory-limit", "banana", "memory-limit 'banana' is not a size"),
])
def test_bad_cluster_sizes_exit_2_before_anything_starts(workflow_file, photos, tmp_path,
                                                        command, option, value, message):
    result = CliRunner().invoke(main, [command, str(workflow_file), "-i", str(photos),
                                       "-o", str(tmp_path / "out"), option, value])
    assert result.exit_code == 2 and f"error: {message}" in result.output
    assert not (tmp_path / "out").exists()


def test_cluster_sizes_dask_accepts_pass():
    from dagflow.runtime.cluster import check_local_sizes

    for limit in ("4GiB", 0.5, "0.5", "auto", 0, 2**30, None):
        assert check_local_sizes(n_workers=2, threads_per_worker=1,
                                 memory_limit=limit)["memory_limit"] == limit


def test_ops_lists_every_op_with_parameters():
    result = CliRunner().invoke(main, ["ops", "--json"])
    listing = {op["name"]: op for op in json.loads(result.output)}
    for name in ("load", "resize", "crop", "rotate", "flip", "gaussian", "median", "unsharp",
                 "normalize", "convert", "grayscale", "equalize", "threshold", "composite",
                 "save", "stats", "contact_sheet"):
        assert name in listing and listing[name]["doc"]
    assert any(p["name"] == "long_side" for p in listing["resize"]["params"])
    text = CliRunner().invoke(main, ["ops"]).output
    assert "resize (transform)" in text and "long_side" in text


def test_sample_data_and_status(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["sample-data", str(tmp_path / "s"), "--photos", "2"])
    assert result.exit_code == 0, result.output
    assert len([p for p in (tmp_path / "s").rglob("*") if p.is_file()]) >= 10


#: What the command line must not import before a subcommand needs it (its start-up is
#: every command's, and every embedded worker's: a spawned worker imports the command's
#: module again).
HEAVY = ("dask", "distributed", "numpy", "scipy", "PIL", "cv2", "pyarrow", "yaml",
         "dagflow.ops", "dagflow.config", "dagflow.runtime.run")


def test_help_imports_nothing_heavy():
    """``dagflow --help`` and ``dagflow run --help`` load click and the command modules,
    not Dask, numpy or the ops; a lazy name still resolves when used."""
    probe = (
        "import sys\n"
        "from dagflow.cli import main\n"
        "for args in (['--help'], ['run', '--help'], ['report', '--help']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
        "import dagflow\n"
        "from dagflow.runtime import run, plan\n"
        "import dagflow.runtime.run, dagflow.runtime.plan\n"
        "from dagflow.runtime import run as again\n"
        "assert dagflow.run is run is again and callable(plan), (run, plan)\n"
        "assert dagflow.Workflow.__name__ == 'Workflow' and dagflow.config.get('state-dir')\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout, done.stdout


def test_run_prints_its_summary_before_writing_its_report(workflow_file, photos, tmp_path,
                                                          client, monkeypatch):
    """The summary (and so the exit code) comes first; the report after it, still
    written by the command where README says."""
    import click
    import dask

    import dagflow.monitor.report as report_module

    order: list[tuple[str, str]] = []
    echo, write_report = click.echo, report_module.write_report

    def recording_echo(message=None, *args, **kwargs):
        order.append(("echo", str(message)))
        return echo(message, *args, **kwargs)

    def recording_report(*args, **kwargs):
        order.append(("report", ""))
        return write_report(*args, **kwargs)

    monkeypatch.setattr(click, "echo", recording_echo)
    monkeypatch.setattr(report_module, "write_report", recording_report)
    out = tmp_path / "out"
    with dask.config.set({"dagflow.monitor.report": "cli"}):
        result = CliRunner().invoke(main, ["run", str(workflow_file), "-i", str(photos),
                                           "-o", str(out), "--cluster",
                                           client.scheduler.address])
    assert result.exit_code == 0, result.output
    summary = next(i for i, (kind, text) in enumerate(order)
                   if kind == "echo" and "run directory:" in text)
    assert [kind for kind, _ in order].index("report") > summary, order
    assert len(list(out.glob("_dagflow/runs/*/report.html"))) == 1
