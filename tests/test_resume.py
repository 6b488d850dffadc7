"""Resume: outputs verified, not trusted; paths relative to the output root; a changed
parameter re-runs what it affects and nothing else."""

from __future__ import annotations

import os
from pathlib import Path

import dask
import pyarrow.dataset as ds
import pytest
from _workflows import THUMBS, run
from click.testing import CliRunner

import dagflow
from dagflow import Node, Workflow
from dagflow.cli import main
from dagflow.recovery.status import run_status


def records(result) -> list[dict]:
    records_dir = result.run_dir / "records"
    if not records_dir.exists():
        return []
    return ds.dataset(records_dir).to_table().to_pylist()


def test_an_output_truncated_or_replaced_is_made_again_and_status_lists_it(photos, tmp_path,
                                                                          client):
    out = tmp_path / "out"
    first = run(THUMBS, photos, out, client)
    assert first.succeeded == 12
    truncated, replaced = out / "img001.png", out / "sub" / "img003.png"
    good = truncated.read_bytes()
    truncated.write_bytes(b"")
    replaced.write_bytes(good)  # another image's bytes in its place
    status = run_status(first.run_dir)
    assert {Path(p).name: what for p, what in status.outputs_changed} == {
        "img001.png": f"changed: 0 bytes, {len(good)} when recorded",
        "img003.png": status.outputs_changed[1][1]}
    assert status.outputs_changed[1][1].startswith("changed")
    shown = CliRunner().invoke(main, ["status", str(out)])
    assert f"output changed: 0 bytes, {len(good)} when recorded (a resume runs it again): " \
        f"{truncated}" in shown.output
    again = run(THUMBS, photos, out, client)
    assert (again.executed, again.already_done) == (2, 10)
    assert truncated.stat().st_size > 0 and replaced.read_bytes() != good
    nothing = run(THUMBS, photos, out, client)
    assert nothing.executed == 0
    # the latest run did nothing: nothing to report, no false "output without a record"
    status = run_status(out)
    assert status.run_id == nothing.run_id
    assert status.outputs_changed == [] and status.inconsistencies == []


@pytest.mark.parametrize("hash_outputs", [False, True])
def test_a_touched_output_is_made_again_unless_its_digest_proves_it(photos, tmp_path, client,
                                                                   hash_outputs):
    """Size and time decide; with ``hash-outputs`` a recorded digest settles an output
    whose time changed but whose content did not."""
    out = tmp_path / "out"
    with dask.config.set({"dagflow.checkpoint.hash-outputs": hash_outputs}):
        first = run(THUMBS, photos, out, client)
        saved = [r for r in records(first) if r["node_id"] == "save"]
        assert all((r["output_hash"] is not None) == hash_outputs for r in saved)
        os.utime(out / "img002.png", ns=(1, 1))
        again = run(THUMBS, photos, out, client)
    assert again.executed == (0 if hash_outputs else 1)


def test_resume_from_another_directory_or_with_an_absolute_output_replans_nothing(
        photos, tmp_path, client, monkeypatch):
    """Outputs are recorded relative to the output root: where the command runs from,
    and how the output is spelled, change nothing."""
    work = tmp_path / "work"
    (work / "a").mkdir(parents=True)
    (work / "b").mkdir()
    monkeypatch.chdir(work / "a")
    first = run(THUMBS, photos, "out", client)
    saved = [r["output_path"] for r in records(first) if r["node_id"] == "save"]
    assert len(saved) == 12 and not any(os.path.isabs(p) or p.startswith("out")
                                        for p in saved)
    monkeypatch.chdir(work / "b")
    spellings = [work / "a" / "out", "../a/out", "../a/./out/"]
    for output in spellings:
        again = run(THUMBS, photos, output, client)
        assert (again.executed, again.already_done) == (0, 12), output
    plan = dagflow.runtime.plan(THUMBS, photos, "../a/out", client=client)
    assert plan.to_run == 0 and plan.already_done == 12
    assert run_status(work / "a" / "out").inconsistencies == []


AGGREGATES = Workflow("thumbnails", [
    Node("load", "load"),
    Node("small", "resize", {"long_side": 48}, after="load"),
    Node("save", "save", {"format": "png"}, after="small"),
    Node("big_ones", "unsharp", {"sigma": 2.0, "amount": 0.8}, after="small",
         when="width >= 48"),
    Node("save_sharp", "save", {"format": "png", "subdir": "sharp"}, after="big_ones"),
    Node("stats", "stats", after="load"),
])


def _with_amount(amount: float) -> Workflow:
    return Workflow("thumbnails", [
        n if n.id != "big_ones" else Node("big_ones", "unsharp",
                                          {"sigma": 2.0, "amount": amount}, after="small",
                                          when="width >= 48")
        for n in AGGREGATES.nodes])


def _mtimes(out: Path) -> dict[str, int]:
    return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*")
            if p.is_file() and "_dagflow" not in p.parts}


def test_a_changed_parameter_reruns_its_node_and_leaves_other_sinks_alone(photos, tmp_path,
                                                                         client):
    """Changing ``big_ones`` re-runs it and ``save_sharp`` (upstream nodes recomputed in
    memory); ``save`` and ``stats``, whose inputs did not change, are neither written nor
    recorded again."""
    out = tmp_path / "out"
    first = run(AGGREGATES, photos, out, client)
    assert first.failed == 0
    before = _mtimes(out)
    sharp = sorted(k for k in before if k.startswith("sharp/"))
    assert sharp and "stats.parquet" in before
    changed = run(_with_amount(1.5), photos, out, client)
    assert changed.failed == 0
    after = _mtimes(out)
    for path, mtime in before.items():
        rewritten = after[path] != mtime
        assert rewritten == path.startswith("sharp/"), path
    nodes = {r["node_id"] for r in records(changed)}
    assert nodes == {"load", "small", "big_ones", "save_sharp"}  # no save, no stats
    assert "stats" not in changed.nodes and changed.aggregates["stats"].endswith("stats.parquet")
    # and the same change again runs nothing
    assert run(_with_amount(1.5), photos, out, client).executed == 0


def test_the_latest_record_is_the_latest_run_s_whatever_its_id(photos, tmp_path, client):
    """Records of later runs win over earlier ones by when the runs started: run ids sort
    by the second only (and an id given to ``dagflow submit`` not at all)."""
    out = tmp_path / "out"
    run(THUMBS, photos, out, client, run_id="zz-first")
    (out / "img001.png").unlink()
    remade = run(THUMBS, photos, out, client, run_id="aa-second")
    assert remade.executed == 1
    assert run(THUMBS, photos, out, client).executed == 0


def test_the_latest_run_is_the_one_that_started_last_whatever_its_id_or_file_times(
        photos, tmp_path, client):
    """``dagflow status`` and ``dagflow report`` of an output take its latest run by when
    the runs started: neither the id (sorted by the second, then at random) nor the event
    log's modification time (a state fetched from a store: the time of the copy)."""
    from dagflow.monitor.analysis import find_run_dir as report_run
    from dagflow.recovery.status import find_run_dir as status_run

    out = tmp_path / "out"
    run(THUMBS, photos, out, client, run_id="zz-first")
    run(THUMBS, photos, out, client, run_id="aa-second")
    runs = out / "_dagflow" / "runs"
    later = (runs / "aa-second" / "events.jsonl").stat().st_mtime_ns + 10**9
    os.utime(runs / "zz-first" / "events.jsonl", ns=(later, later))
    assert status_run(out).name == report_run(out).name == "aa-second"
    assert run_status(out).run_id == "aa-second"
