"""``dagflow status``: a run's state rebuilt from its event log and records.

Works on a finished run and on one whose driver died: the event log says what was
submitted and whether the run finished; the records say what each item did; the output
directory is checked for leftovers (temporary files, outputs without records, records
whose outputs are missing).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dagflow import config
from dagflow.exceptions import InputError
from dagflow.recovery.checkpoint import read_records
from dagflow.recovery.events import read_events

__all__ = ["RunStatus", "find_run_dir", "run_status"]


@dataclass
class RunStatus:
    """The reconstructed state of a run."""

    run_id: str
    run_dir: str
    state: str  # "finished", "running or died", "interrupted", "unknown"
    items: int = 0
    to_run: int = 0
    done: int = 0
    failed: int = 0
    quarantined: int = 0
    pending: int = 0
    chunks_submitted: int = 0
    chunks_finished: int = 0
    inconsistencies: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        lines = [f"run {self.run_id}: {self.state}",
                 f"  items {self.items} (to run {self.to_run}): done {self.done}, "
                 f"failed {self.failed} (quarantined {self.quarantined}), pending {self.pending}",
                 f"  chunks: {self.chunks_finished} finished of {self.chunks_submitted} submitted"]
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
    return max(logs, key=lambda log: log.stat().st_mtime_ns).parent


def run_status(run_dir: str | os.PathLike[str]) -> RunStatus:
    """Rebuild the state of a run: ``run_dir`` is its run directory, or the output
    directory it wrote into (its latest run; see :func:`find_run_dir`)."""
    from dagflow.io.atomic import find_temporaries

    run_dir = find_run_dir(run_dir)
    events = list(read_events(run_dir / "events.jsonl"))
    kinds = [e.get("event") for e in events]
    if "run_finished" in kinds:
        state = "finished"
    elif "run_interrupted" in kinds:
        state = "interrupted"
    elif "run_started" in kinds:
        state = "running or died"
    else:
        state = "unknown"
    start = next((e for e in events if e.get("event") == "run_started"), {})
    status = RunStatus(run_id=run_dir.name, run_dir=str(run_dir), state=state,
                       items=int(start.get("items", 0)), to_run=int(start.get("to_run", 0)))
    status.chunks_submitted = sum(len(e.get("chunks", [])) for e in events
                                  if e.get("event") == "chunks_submitted")
    status.chunks_finished = kinds.count("chunk_finished")
    table, bad = read_records(sorted((run_dir / "records").glob("part-*.parquet")))
    for p in bad:
        status.inconsistencies.append(f"unreadable records part {p}")
    rows = table.select(["item_id", "status", "error_class", "output_path"]).to_pylist()
    worst: dict[int, str] = {}
    quarantined: set[int] = set()
    for r in rows:
        if r["status"] in ("failed", "upstream_failed"):
            worst[r["item_id"]] = "failed"
            if r["error_class"] == "bad_input":
                quarantined.add(r["item_id"])
        else:
            worst.setdefault(r["item_id"], "done")
        out = r["output_path"]
        if r["status"] == "ok" and out and not os.path.exists(out):
            status.inconsistencies.append(f"record without output: {out}")
    status.done = sum(1 for v in worst.values() if v == "done")
    status.failed = sum(1 for v in worst.values() if v == "failed")
    status.quarantined = len(quarantined)
    status.pending = max(0, status.to_run - len(worst))
    output_dir = run_dir.parent.parent.parent
    for tmp in find_temporaries(output_dir):
        status.inconsistencies.append(f"temporary file left behind: {tmp}")
    status.inconsistencies.extend(
        f"output without a record: {p}" for p in outputs_without_records(output_dir, run_dir))
    return status


def outputs_without_records(output_dir: Path, run_dir: Path) -> list[Path]:
    """Files in the output directory that no run's records claim.

    Aggregate outputs and dagflow's own state are not counted.
    """
    state_dir = run_dir.parent.parent
    table, _ = read_records(sorted(state_dir.glob("runs/*/records/part-*.parquet")),
                            ["output_path", "node_id"])
    claimed = {os.path.abspath(p) for p in table.column("output_path").to_pylist() if p}
    nodes = set(table.column("node_id").to_pylist())
    stray = []
    for path in sorted(output_dir.rglob("*")):
        if state_dir in path.parents or not path.is_file() or path.name.endswith(".tmp"):
            continue
        if path.parent == output_dir and path.stem in nodes:
            continue  # an aggregate's output, named after its node
        if os.path.abspath(path) not in claimed:
            stray.append(path)
    return stray
