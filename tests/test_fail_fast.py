"""Invalid configurations and workflows fail before anything is made, with every problem
in one message; a script without a main guard says why in its first line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dask.config
import pytest
from _processes import WORKFLOW
from click.testing import CliRunner

import dagflow
from dagflow import Node, Workflow
from dagflow.cli import main
from dagflow.exceptions import ConfigError, WorkflowValidationError
from dagflow.runtime.plan import plan
from dagflow.workflow.conditions import MAX_DEPTH, ConditionError, parse_condition

DAGFLOW = Path(sys.executable).parent / "dagflow"


@pytest.fixture
def workflow_file(tmp_path) -> Path:
    path = tmp_path / "thumbs.yaml"
    path.write_text(WORKFLOW)
    return path


# -- configuration ----------------------------------------------------------------------


def test_a_bad_value_in_the_environment_exits_2_naming_it_before_anything_is_made(
        tmp_path, workflow_file, photos):
    """The variable is read by Dask at import: a real process, as a user's shell gives it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env["DASK_DAGFLOW__RETRY__ATTEMPTS"] = "abc"
    out = tmp_path / "out"
    done = subprocess.run([str(DAGFLOW), "run", str(workflow_file), "-i", str(photos),
                           "-o", str(out)], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[0] == (
        "error: invalid dagflow configuration: dagflow.retry.attempts: 'abc' is not of type "
        "'integer' (set by the environment variable DASK_DAGFLOW__RETRY__ATTEMPTS)")
    assert not out.exists()  # no output directory, no run directory


@pytest.mark.parametrize("command", ["run", "plan", "submit", "validate"])
def test_every_command_checks_the_configuration_first(tmp_path, workflow_file, photos,
                                                      monkeypatch, command):
    monkeypatch.setenv("DASK_DAGFLOW__RUNTIME__WINDOW", "many")
    out = tmp_path / "out"
    args = [command, str(workflow_file)]
    if command != "validate":
        args += ["-i", str(photos), "-o", str(out)]
    with dask.config.set({"dagflow.runtime.window": "many"}):
        result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "dagflow.runtime.window: 'many' is not of type 'integer' (set by the environment " \
           "variable DASK_DAGFLOW__RUNTIME__WINDOW)" in result.output
    assert not out.exists()


def test_python_run_and_plan_check_the_configuration_first(tmp_path, workflow_file, photos):
    out = tmp_path / "out"
    with dask.config.set({"dagflow.breaker.failures": -1}):
        for call in (dagflow.run, plan):
            with pytest.raises(ConfigError, match=r"dagflow\.breaker\.failures: -1"):
                call(workflow_file, photos, out)
    assert not out.exists()


# -- workflows --------------------------------------------------------------------------

EIGHT_PROBLEMS = """\
name: t
nodes:
  - {id: load, op: lod}
  - {id: a, op: resize, after: [load], params: {long_sid: 3}, when: "width >> 3"}
  - {id: b, op: resize, after: [nope], params: {long_side: -3}}
  - {id: c, op: gaussian, after: [a], when: "colour == 'red'"}
  - {id: save, op: save, after: [a], params: {format: bmp}}
  - {id: save2, op: save, after: [b], params: {quality: 500}}
"""


def test_a_bad_condition_does_not_hide_the_other_problems(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(EIGHT_PROBLEMS)
    with pytest.raises(WorkflowValidationError) as info:
        Workflow.from_yaml(path)
    problems = info.value.problems
    expected = ["node 'a': 'when': unsupported syntax BinOp",
                "node 'c': 'when': unknown field 'colour'",
                "'after' names 'nope'", "unknown op 'lod'", "unknown parameter 'long_sid'",
                "parameter 'long_side': expected a value >= 1",
                "parameter 'format': expected one of", "parameter 'quality'"]
    for text in expected:
        assert sum(text in p for p in problems) == 1, (text, problems)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2
    assert "problems:" in result.output and all(t in result.output for t in expected)


def test_a_node_that_cannot_be_built_is_not_blamed_twice():
    """A node whose declaration is broken is reported once: its children's 'after' and a
    missing source are not further problems."""
    with pytest.raises(WorkflowValidationError) as info:
        Workflow.from_dict({"name": "t", "nodes": [
            {"id": "load", "op": "load", "params": "auto_orient"},
            {"id": "small", "op": "resize", "after": ["load"], "params": {"long_side": 0}}]})
    assert info.value.problems == [
        "node 'load': 'params' must be a mapping, got 'auto_orient'",
        "node 'small' (op 'resize'): parameter 'long_side': expected a value >= 1, got 0"]


DEEP = "not " * 5000 + "true"


def test_deeply_nested_conditions_are_a_validation_error_not_a_recursion_error(
        tmp_path, photos):
    for depth in (MAX_DEPTH + 1, 900, 5000, 100_000):
        with pytest.raises(ConditionError, match="nested"):
            parse_condition("not " * depth + "true")
    assert parse_condition("not " * (MAX_DEPTH - 2) + "true")({}) is True  # evaluates too
    text = f"name: t\nnodes:\n  - {{id: load, op: load}}\n  - {{id: s, op: save, after: " \
           f"[load], when: '{DEEP}'}}\n"
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2 and "nested too deeply" in result.output
    assert "RecursionError" not in result.output
    out = tmp_path / "out"
    for workflow in (path, text):
        with pytest.raises(WorkflowValidationError, match="nested too deeply"):
            dagflow.run(workflow, photos, out)
    result = CliRunner().invoke(main, ["run", str(path), "-i", str(photos), "-o", str(out)])
    assert result.exit_code == 2 and "nested too deeply" in result.output
    assert not out.exists()
    with pytest.raises(ConditionError, match="nested too deeply"):
        Node("s", "save", after="load", when=DEEP)


def test_deeply_nested_yaml_is_a_validation_error():
    with pytest.raises(WorkflowValidationError, match="nested too deeply"):
        Workflow.from_yaml("name: t\nnodes: " + "[" * 20000 + "]" * 20000 + "\n")


# -- a script without a main guard ------------------------------------------------------

UNGUARDED = """\
import sys
import dagflow
from dagflow.runtime.plan import plan
from dagflow import Node, Workflow

wf = Workflow("thumbnails", [
    Node("load", "load", {"auto_orient": True}),
    Node("small", "resize", {"long_side": 512}, after=["load"]),
    Node("save", "save", {"format": "jpeg", "quality": 85}, after=["small"]),
])
result = dagflow.run(wf, sys.argv[1], sys.argv[2])
print(result)
"""


@pytest.mark.slow
def test_the_quickstart_without_a_main_guard_says_why_in_its_first_line(tmp_path, photos):
    """The README's quickstart pasted into a script: the worker processes, importing it
    again, end with the reason as their only line (no traceback of their own), and start
    no run of their own (no run directory)."""
    script = tmp_path / "quickstart.py"
    script.write_text(UNGUARDED)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env["DASK_DAGFLOW__CLUSTER__N_WORKERS"] = "1"
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(script), str(photos), str(out)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    first = done.stderr.splitlines()[0]
    assert first.startswith("ConfigError: dagflow starts worker processes"), done.stderr
    assert 'under `if __name__ == "__main__":`' in first
    assert len(list((out / "_dagflow" / "runs").iterdir())) == 1  # the script's own only
