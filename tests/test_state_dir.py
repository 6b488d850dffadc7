"""dagflow's state directory in an output directory is never a symlink: a run refuses it
before anything is written, as it refuses to write an output through one."""

from __future__ import annotations

import importlib

import pytest
from click.testing import CliRunner

import dagflow
from dagflow import Node, Workflow
from dagflow.cli import main
from dagflow.exceptions import UnsafeStateError
from dagflow.runtime.statedir import check_state_dir

STATS = Workflow("w", [Node("load", "load"), Node("stats", "stats", after="load")])


@pytest.mark.parametrize("link", ["_dagflow", "_dagflow/runs", "_dagflow/aggregates",
                                  "_dagflow/aggregates/stats", "_dagflow/runs/old-run"])
def test_a_symlink_in_the_state_directory_is_refused_before_anything_is_written(
        tmp_path, photos, link, monkeypatch):
    def no_cluster(*args, **kwargs):
        raise AssertionError("a cluster started for a run that is refused")

    monkeypatch.setattr(importlib.import_module("dagflow.runtime.run"), "LocalClusterStart",
                        no_cluster)
    out = tmp_path / "out"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / link).parent.mkdir(parents=True, exist_ok=True)
    (out / link).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafeStateError, match="is a symlink") as info:
        dagflow.run(STATS, photos, out)
    assert str(out / link) in str(info.value) and str(elsewhere) in str(info.value)
    assert list(elsewhere.iterdir()) == []
    assert sorted(p.name for p in out.iterdir()) == ["_dagflow"]  # no output either


def test_the_cli_refuses_a_symlinked_state_directory_with_exit_2(tmp_path, photos):
    out = tmp_path / "out"
    out.mkdir()
    (out / "_dagflow").symlink_to(tmp_path, target_is_directory=True)
    wf = tmp_path / "wf.yaml"
    wf.write_text(STATS.to_yaml())
    for command in ("run", "submit"):
        result = CliRunner().invoke(main, [command, str(wf), "-i", str(photos), "-o", str(out)])
        assert result.exit_code == 2, result.output
        assert "_dagflow (dagflow's state directory) is a symlink" in result.output
    assert not (tmp_path / "runs").exists()
    (out / "_dagflow").unlink()
    (out / "_dagflow").write_text("a file")
    result = CliRunner().invoke(main, ["run", str(wf), "-i", str(photos), "-o", str(out)])
    assert result.exit_code == 2 and "is not a directory" in result.output


def test_a_plain_state_directory_passes(tmp_path):
    assert check_state_dir(tmp_path / "missing") == tmp_path / "missing" / "_dagflow"
    for part in ("runs/r1/records", "aggregates/stats", "history"):
        (tmp_path / "_dagflow" / part).mkdir(parents=True)
    (tmp_path / "_dagflow" / "runs" / "notes.txt").write_text("a file is no symlink")
    assert check_state_dir(tmp_path, "_dagflow") == tmp_path / "_dagflow"
