"""When the storage fails: a read-only output directory, a disk that fills up mid-run.

Real filesystems: a small tmpfs mounted for the test (read-only, or with little room),
which needs the right to mount (root in a container); elsewhere the tests say so and
skip.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from _processes import WORKFLOW
from click.testing import CliRunner

import dagflow
from dagflow import Node, Param, Workflow, register_op
from dagflow.cli import main
from dagflow.exceptions import StorageError
from dagflow.io.atomic import find_temporaries
from dagflow.recovery.checkpoint import check_output, load_done
from dagflow.recovery.events import read_events


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``path`` for the block."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"a tmpfs cannot be mounted here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _executing(dask_worker) -> int:
    return dask_worker.state.executing_count


def _wait_until_idle(client, timeout: float = 30) -> None:
    """Until no task runs on the cluster (a task let go of may still be running)."""
    import time

    deadline = time.monotonic() + timeout
    while any(client.run(_executing).values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(client.run(_executing).values())


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


def test_a_read_only_output_directory_is_one_line_and_exit_5_then_the_command_resumes(
        photos, tmp_path, client):
    wf = tmp_path / "wf.yaml"
    wf.write_text(WORKFLOW)
    with tmpfs(tmp_path / "out", "size=4m,ro") as out:
        args = ["run", str(wf), "-i", str(photos), "-o", str(out), "--cluster",
                client.scheduler.address]
        refused = CliRunner().invoke(main, args)
        assert refused.exit_code == 5, refused.output
        (line,) = refused.output.strip().splitlines()
        assert line.startswith(f"error: cannot write {out / '_dagflow'}: [Errno 30] ")
        assert "Read-only file system" in line and "the same command resumes" in line
        remount(out, "rw")
        fixed = CliRunner().invoke(main, args)
        assert fixed.exit_code == 0, fixed.output
        assert len(list(out.glob("**/img*.png"))) == 12


@register_op("fill_up", kind="sink", params=[Param("victim", str), Param("marker", str)],
             replace=True)
def fill_up(image, dest, victim, marker):
    """Save the image; after the one whose path contains ``victim``, fill the disk (while
    the file ``marker`` exists)."""
    from dagflow.io import write_image

    written = write_image(image, dest + ".png")
    if victim in image.meta["path"] and os.path.exists(marker):
        with contextlib.suppress(OSError), open(Path(dest).parent / "_filler", "wb") as f:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    return written


def test_a_disk_that_fills_up_stops_the_run_claims_nothing_and_the_command_resumes(
        tmp_path, client, make_photos):
    make_photos(tmp_path / "in", 12, size=(48, 32))
    marker = tmp_path / "fill"
    marker.touch()
    wf = Workflow("full", [Node("load", "load"),
                           Node("save", "fill_up", {"victim": "img005", "marker": str(marker)},
                                after="load")])
    with tmpfs(tmp_path / "out", "size=4m") as out:
        with pytest.raises(StorageError) as raised:
            dagflow.run(wf, tmp_path / "in", out, client=client, progress=False,
                        chunk_size=2)
        error = raised.value
        assert error.error.startswith(f"[Errno {errno.ENOSPC}] ")
        assert "No space left on device" in error.error
        assert "/records/part-" in error.path
        assert str(error).startswith(f"cannot write {out}")
        # the log says so (it keeps room for it) ...
        (run_dir,) = (out / "_dagflow" / "runs").iterdir()
        failed = [e for e in read_events(run_dir / "events.jsonl")
                  if e["event"] == "run_failed"]
        assert failed and "No space left on device" in failed[0]["error"]
        # ... and nothing unrecorded is claimed: every output on record is intact
        checkpoint = load_done(out / "_dagflow")
        assert all(check_output(out, p) is None for p in checkpoint.outputs.values())
        assert len(checkpoint.done) < 2 * 12
        _wait_until_idle(client)  # the chunks in flight were let go: none is left running
        assert find_temporaries(out) == []
        os.remove(out / "_filler")  # the disk is fixed
        marker.unlink()
        resumed = dagflow.run(wf, tmp_path / "in", out, client=client, progress=False,
                              chunk_size=2)
        assert resumed.exit_code == 0
        assert resumed.executed + resumed.already_done == 12 and resumed.executed > 0
        assert len(list(out.rglob("img*.png"))) == 12


def test_the_event_log_keeps_room_for_the_events_of_a_full_disk(tmp_path):
    """The log keeps room reserved beyond its end: once the disk is full to the byte,
    tens of kilobytes of events still go in (the ones that say what happened)."""
    from dagflow.recovery.events import EventLog

    with tmpfs(tmp_path / "disk", "size=1m") as disk, EventLog(disk / "events.jsonl") as log:
        log.emit("run_started")
        with open(disk / "_filler", "wb", buffering=0) as f:  # to the last byte
            for size in (65536, 4096, 512, 64, 8, 1):
                with contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * size)
        for n in range(60):  # 60 kB
            log.emit("chunk_finished", chunk=n, note="x" * 950)
        events = list(read_events(disk / "events.jsonl"))
    assert len(events) == 61
