"""Planning: ``dagflow plan`` / ``run --dry-run``, estimates from the history, and the
summary's comparison of the estimate with what happened."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import dask
import pytest
from click.testing import CliRunner
from PIL import Image as PILImage

import dagflow
from dagflow.cli import main
from dagflow.runtime.plan import plan
from dagflow.testing import photo_like

WORKFLOW = """
name: plan-me
nodes:
  - {id: load, op: load}
  - {id: blur, op: gaussian, after: [load], params: {sigma: 1.0}, when: "width > 80"}
  - {id: save, op: save, after: [blur], params: {format: png}, concurrency: 2}
"""


@pytest.fixture
def setup(tmp_path):
    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    (tmp_path / "in").mkdir()
    for i, width in enumerate([64, 96, 128, 96]):
        PILImage.fromarray(photo_like(48, width, seed=i)).save(tmp_path / "in" / f"{i}.png")
    # a "huge" PNG: a header declaring 20000 x 20000 RGB pixels, and nothing else
    (tmp_path / "in" / "huge.png").write_bytes(png_header(20000, 20000))
    return tmp_path


def png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_plan_per_node_and_in_total(setup):
    p = plan(setup / "wf.yaml", setup / "in", setup / "out",
             local_options={"n_workers": 2, "threads_per_worker": 1, "memory_limit": "1GiB"})
    assert (p.items, p.to_run, p.already_done, p.refused, p.tiled) == (5, 5, 0, 1, 0)
    assert (p.workers, p.threads) == (2, 2)
    assert p.budget_min == int(2**30 * 0.8) and p.task_limit == p.budget_min // 2
    assert p.nodes["load"].run == 4 and p.nodes["load"].oversize == 1
    assert (p.nodes["blur"].run, p.nodes["blur"].skip_condition) == (3, 1)
    assert p.nodes["save"].skip_condition == 1  # skipped with the node it follows
    blur = p.nodes["blur"]
    assert blur.peak_task > 0 and blur.peak_worker == blur.peak_task  # one thread each
    assert p.chunks >= 1 and p.chunk_size >= 1
    (over,) = p.oversize
    assert over["action"] == "refused" and over["path"].endswith("huge.png")
    assert "estimated peak memory" in over["why"] and "not a TIFF" in over["why"]
    assert p.duration_s is None  # no history yet
    text = str(p)
    assert "estimated duration: unknown" in text and "refused: " in text


def test_plan_after_a_run_uses_the_history_and_skips_what_is_done(setup, client):
    with dask.config.set({"dagflow.monitor.report": False}):
        result = dagflow.run(setup / "wf.yaml", setup / "in", setup / "out", client=client,
                             progress=False)
    assert result.succeeded == 3 and result.skipped == 1 and result.failed == 1
    assert result.estimate is not None and result.estimate["actual"]["duration_s"] > 0
    assert set(result.estimate["actual"]["nodes"]) == {"load", "blur", "save"}
    # seconds per node summed from the chunks' summaries, as the records say
    from_records = result.records().groupby("node_id")["duration_s"].sum().to_dict()
    assert result.node_seconds == pytest.approx(from_records, rel=1e-9)
    assert result.estimate["actual"]["nodes"] == {
        n: round(s, 3) for n, s in result.node_seconds.items()}
    assert "memory: estimated peak" in str(result)
    history = setup / "out" / "_dagflow" / "history"
    assert any(history.glob("run-*.parquet"))

    again = plan(setup / "wf.yaml", setup / "in", setup / "out", client=client)
    assert (again.to_run, again.already_done) == (0, 5)
    assert again.nodes["blur"].skip_done == 5
    # given a directory around the output, the outputs are not inputs (as for a run)
    around = plan(setup / "wf.yaml", setup, setup / "out", client=client)
    assert (around.items, around.already_done) == (5, 5)

    # the same batch into a new output: everything to run, durations from the history
    fresh = plan(setup / "wf.yaml", setup / "in", setup / "out2", client=client,
                 history_dir=history)
    assert fresh.to_run == 5 and fresh.history_runs == 1
    assert fresh.nodes["blur"].seconds is not None and fresh.nodes["blur"].basis == "s_per_mp"
    # both are rounded to the millisecond
    assert fresh.duration_s == pytest.approx(fresh.compute_s / fresh.threads, abs=1e-3)
    assert "estimated duration:" in str(fresh) and "unknown" not in str(fresh)


def test_plan_cli_and_dry_run(setup):
    runner = CliRunner()
    options = ["-i", str(setup / "in"), "-o", str(setup / "out"), "--n-workers", "1",
               "--threads-per-worker", "2", "--memory-limit", "2GiB"]
    shown = runner.invoke(main, ["plan", str(setup / "wf.yaml"), *options])
    assert shown.exit_code == 0, shown.output
    assert "plan for workflow 'plan-me': 5 items, 5 to run" in shown.output
    assert "blur" in shown.output and "peak/task" in shown.output
    as_json = runner.invoke(main, ["plan", str(setup / "wf.yaml"), *options, "--json"])
    data = json.loads(as_json.output)
    assert data["nodes"]["blur"]["skip_condition"] == 1 and data["refused"] == 1
    assert data["threads"] == 2
    dry = runner.invoke(main, ["run", str(setup / "wf.yaml"), *options, "--dry-run", "--json"])
    assert dry.exit_code == 0 and json.loads(dry.output)["to_run"] == 5
    assert not (setup / "out").exists()  # nothing ran, nothing was written


def test_plan_command_in_a_real_process(setup):
    done = subprocess.run([str(Path(sys.executable).parent / "dagflow"), "plan",
                           str(setup / "wf.yaml"), "-i", str(setup / "in"), "-o",
                           str(setup / "out"), "--json"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DASK_DAGFLOW__CLUSTER__N_WORKERS": "1"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["workers"] == 1


def test_auto_chunks_hold_at_most_chunk_megapixels_of_work(tmp_path):
    """"auto" caps a chunk by the megapixels its items go through (every node), as well as
    by count: costly items get small chunks, cheap ones large."""
    (tmp_path / "wf.yaml").write_text("name: mp\nnodes:\n  - {id: load, op: load}\n"
                                      "  - {id: save, op: save, after: [load]}\n")
    rows = ["path,width,height,channels,format"]
    rows += [f"img{i}.png,200,100,3,PNG" for i in range(10_000)]  # 0.02 MP, through 2 nodes
    (tmp_path / "items.csv").write_text("\n".join(rows) + "\n")
    options = {"n_workers": 2, "threads_per_worker": 1, "memory_limit": "2GiB"}
    with dask.config.set({"dagflow.chunk-megapixels": 1.0}):
        capped = plan(tmp_path / "wf.yaml", tmp_path / "items.csv", tmp_path / "out",
                      local_options=options)
    with dask.config.set({"dagflow.chunk-megapixels": None}):
        by_count = plan(tmp_path / "wf.yaml", tmp_path / "items.csv", tmp_path / "out",
                        local_options=options)
    assert capped.chunk_size == 25  # 1 MP / (2 nodes x 0.02 MP)
    assert by_count.chunk_size == 1250  # 10,000 items / (2 threads x 4 chunks each)
    assert capped.chunks >= 10_000 // 25
