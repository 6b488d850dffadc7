"""``dagflow status``: a run's state rebuilt from its event log and records.

Works on a finished run and on one whose driver died: the event log says what was
submitted and how the run ended (finished, stopped by a breaker, its storage failing,
interrupted); the records say what each item did (its latest record per node: an item a
breaker held back and ran again later counts once); the output directory is checked
against every run's records: outputs missing or changed since they were recorded (a
resume runs their items again), outputs no record claims, temporary files left behind.
The counts are the summary's: done, failed, not run (held back or never submitted by a
run that ended), pending (a run still going), with the exit code of a finished run.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dagflow import config
from dagflow.exceptions import InputError
from dagflow.recovery.checkpoint import check_output, load_done, read_records, record_parts
from dagflow.recovery.events import read_events, started_at

__all__ = ["RunStatus", "find_run_dir", "run_status"]

#: Failed items shown with their attempts.
SHOWN_FAILURES = 10


@dataclass
class RunStatus:
    """The reconstructed state of a run.

    ``state`` is ``finished`` (``stopped`` says why when a breaker ended it early),
    ``failed`` (its storage could not be written), ``interrupted``, ``running or died``
    or ``unknown``.
    """

    run_id: str
    run_dir: str
    state: str
    items: int = 0
    to_run: int = 0
    done: int = 0
    failed: int = 0
    quarantined: int = 0
    not_run: int = 0
    pending: int = 0
    exit_code: int | None = None
    stopped: str | None = None
    error: str | None = None
    chunks_submitted: int = 0
    chunks_finished: int = 0
    #: The failed items (up to :data:`SHOWN_FAILURES`) with each attempt.
    failures: list[dict[str, Any]] = field(default_factory=list)
    #: Outputs missing or changed since recorded: ``(path, what happened)``.
    outputs_changed: list[tuple[str, str]] = field(default_factory=list)
    inconsistencies: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        ended = f", exit code {self.exit_code}" if self.exit_code is not None else ""
        lines = [f"run {self.run_id}: {self.state}{ended}",
                 f"  items {self.items} (to run {self.to_run}): done {self.done}, "
                 f"failed {self.failed} (quarantined {self.quarantined}), not run "
                 f"{self.not_run}, pending {self.pending}",
                 f"  chunks: {self.chunks_finished} finished of {self.chunks_submitted} "
                 "submitted"]
        if self.stopped:
            lines.append(f"  stopped: {self.stopped}")
        if self.error:
            lines.append(f"  error: {self.error}")
        for f in self.failures:
            lines.append(f"  failed: {f['input_path']} at {f['node_id']}: "
                         f"[{f['error_class']}] {f['error_message']}")
            for n, attempt in enumerate(f.get("attempt_log") or (), 1):
                delay = attempt.get("delay_s")
                then = f", then {delay:g} s" if delay is not None else ""
                lines.append(f"    attempt {n}: {attempt['error']}{then}")
        if self.failed > len(self.failures):
            lines.append(f"  ... {self.failed - len(self.failures)} more failed items in "
                         "the records")
        lines.extend(f"  output {what} (a resume runs it again): {path}"
                     for path, what in self.outputs_changed)
        lines.extend(f"  inconsistency: {i}" for i in self.inconsistencies)
        return "\n".join(lines)


def find_run_dir(path: str | os.PathLike[str]) -> Path:
    """The run directory ``path`` names: itself when it holds a run's event log, else the
    run of the output directory it is that was written to last.

    Raises
    ------
    InputError
        When ``path`` is neither: the output directory two levels up would otherwise be
        searched for leftovers as if it were the run's.
    """
    path = Path(path)
    if (path / "events.jsonl").is_file():
        return path
    runs = path / config.get("state-dir") / "runs"
    logs = list(runs.glob("*/events.jsonl")) if runs.is_dir() else []
    if not logs:
        raise InputError(f"{path} is neither a run directory (no events.jsonl in it) nor an "
                         f"output directory with runs (nothing in {runs}): give the output "
                         "directory of a run, or one of its run directories")
    return max((log.parent for log in logs), key=lambda d: (started_at(d) or 0.0, d.name))


def run_status(run_dir: str | os.PathLike[str]) -> RunStatus:
    """Rebuild the state of a run: ``run_dir`` is its run directory, or the output
    directory it wrote into (its latest run; see :func:`find_run_dir`)."""
    from dagflow.io.atomic import find_temporaries
    from dagflow.io.stage import store_of

    run_dir = find_run_dir(run_dir)
    events = list(read_events(run_dir / "events.jsonl"))
    last = {e.get("event"): e for e in events}
    if "run_finished" in last:
        state = "finished"
    elif "run_failed" in last:
        state = "failed"
    elif "run_interrupted" in last:
        state = "interrupted"
    elif "run_started" in last:
        state = "running or died"
    else:
        state = "unknown"
    start = last.get("run_started", {})
    status = RunStatus(run_id=run_dir.name, run_dir=str(run_dir), state=state,
                       items=int(start.get("items", 0)), to_run=int(start.get("to_run", 0)))
    finished = last.get("run_finished", {})
    status.exit_code = finished.get("exit_code")
    status.stopped = finished.get("stopped") or last.get("run_stopped", {}).get("reason")
    status.error = last.get("run_failed", {}).get("error")
    status.chunks_submitted = sum(len(e.get("chunks", [])) for e in events
                                  if e.get("event") == "chunks_submitted")
    status.chunks_finished = sum(1 for e in events if e.get("event") == "chunk_finished")
    table, bad = read_records(sorted((run_dir / "records").glob("part-*.parquet")))
    for p in bad:
        status.inconsistencies.append(f"unreadable records part {p}")
    _count_items(status, table.to_pylist(), ended=state != "running or died")
    output_dir = run_dir.parent.parent.parent
    store = store_of(output_dir)  # a store's output, of which this is a local copy
    status.outputs_changed = outputs_changed(store or output_dir, run_dir.parent.parent)
    for tmp in find_temporaries(output_dir):
        status.inconsistencies.append(f"temporary file left behind: {tmp}")
    if store is None:  # a store's outputs are not listed for strays (yet)
        status.inconsistencies.extend(f"output without a record: {p}"
                                      for p in outputs_without_records(output_dir, run_dir))
    return status


def _count_items(status: RunStatus, rows: list[dict[str, Any]], *, ended: bool) -> None:
    """Each item's outcome from its latest record per node (parts in chunk order)."""
    latest: dict[tuple[int, str], dict[str, Any]] = {}
    for r in rows:
        latest[(r["item_id"], r["node_id"])] = r
    outcome: dict[int, str] = {}
    failures: dict[int, dict[str, Any]] = {}
    quarantined: set[int] = set()
    rank = {"done": 0, "not_run": 1, "failed": 2}
    for (item, _), r in latest.items():
        if r["status"] in ("failed", "upstream_failed"):
            verdict = "failed"
            if r["status"] == "failed":
                failures.setdefault(item, r)
                if r["error_class"] == "bad_input":
                    quarantined.add(item)
        elif r["status"] == "not_run":
            verdict = "not_run"
        else:
            verdict = "done"
        if rank[verdict] >= rank[outcome.get(item, "done")]:
            outcome[item] = verdict
    status.done = sum(1 for v in outcome.values() if v == "done")
    status.failed = sum(1 for v in outcome.values() if v == "failed")
    status.quarantined = len(quarantined)
    unrecorded = max(0, status.to_run - len(outcome))
    status.not_run = sum(1 for v in outcome.values() if v == "not_run")
    if ended:  # what a run that ended never recorded, it never ran
        status.not_run += unrecorded
    else:
        status.pending = unrecorded
    keep = ("input_path", "node_id", "error_class", "error_message", "attempts", "attempt_log")
    status.failures = [{k: r.get(k) for k in keep}
                       for _, r in sorted(failures.items())[:SHOWN_FAILURES]]


def outputs_changed(output_dir: Path | str, state_dir: Path) -> list[tuple[str, str]]:
    """The outputs that every run's records claim and that are missing or changed since
    (a resume runs their items again), with what happened to each."""
    checkpoint = load_done(state_dir)
    out = []
    for proof in checkpoint.outputs.values():
        what = check_output(output_dir, proof)
        if what is not None:
            out.append((os.path.join(output_dir, proof.path), what))
    return sorted(out)


def outputs_without_records(output_dir: Path, run_dir: Path) -> list[Path]:
    """Files in the output directory that no run's records claim.

    Aggregate outputs and dagflow's own state are not counted.
    """
    state_dir = run_dir.parent.parent
    table, _ = read_records(record_parts(state_dir), ["output_path", "node_id"])
    root = os.path.abspath(output_dir)
    claimed = {os.path.normpath(os.path.join(root, p))
               for p in table.column("output_path").to_pylist() if p}
    nodes = set(table.column("node_id").to_pylist())
    stray = []
    for path in sorted(output_dir.rglob("*")):
        if state_dir in path.parents or not path.is_file() or path.name.endswith(".tmp"):
            continue
        if path.parent == output_dir and path.stem in nodes:
            continue  # an aggregate's output, named after its node
        if os.path.normpath(os.path.abspath(path)) not in claimed:
            stray.append(path)
    return stray
