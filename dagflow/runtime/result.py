"""The outcome of a run: :class:`RunResult`, and the exit codes the CLI maps it to."""

from __future__ import annotations

import html
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["EXIT_BREAKER", "EXIT_FAILED_ITEMS", "EXIT_INTERRUPTED", "EXIT_INVALID", "EXIT_OK",
           "EXIT_STORAGE", "EXIT_TERMINATED", "RunResult"]

#: Every item succeeded (or was skipped by a condition or already done).
EXIT_OK = 0
#: The run finished but some items failed.
EXIT_FAILED_ITEMS = 1
#: Invalid workflow, configuration or usage: nothing ran.
EXIT_INVALID = 2
#: A circuit breaker opened and the run stopped early; re-run to finish the rest.
EXIT_BREAKER = 3
#: The output directory or the run's state could not be written (read-only, disk full):
#: the run stopped, what finished is recorded; fix the storage and re-run to resume.
EXIT_STORAGE = 5
#: Interrupted (Ctrl-C, SIGINT): what finished is recorded; re-run to finish the rest.
EXIT_INTERRUPTED = 130
#: Terminated (SIGTERM, as batch systems end a job): the same, by the shell's convention.
EXIT_TERMINATED = 143


@dataclass
class RunResult:
    """What happened in a run.

    Attributes
    ----------
    run_id, run_dir, output_dir, workflow
        Which run, and where its files are.
    items
        Input items in the run's input set.
    executed
        Items processed in this run (the others were already done).
    already_done
        Items whose every node was finished by an earlier run into the same output.
    succeeded, failed, skipped, not_run
        Items of this run by outcome (``skipped``: a condition excluded every output;
        ``not_run``: held back by an open circuit breaker, run again by the next run).
    nodes
        Per node id, counts by status (``ok``, ``failed``, ``skipped``, ``upstream_failed``).
    node_seconds
        Per node id, the seconds its op ran, summed over the items of this run.
    failures
        Records of failed items as dicts by column (up to a bound; all are in the
        records).
    aggregates
        Output path of each aggregate node.
    errors
        Run-level problems (a failed aggregate, a stopped breaker).
    duration_s
        Wall time of the run.
    dashboard
        Link to the Dask dashboard while the cluster was up.
    stopped
        Why the run stopped early, if it did.
    tiled
        Items larger than any worker's memory, processed tiled (see :mod:`dagflow.tiled`).
    estimate
        The plan's estimate (``duration_s``, ``compute_s``, ``peak_task``,
        ``peak_worker``, per node ``nodes`` seconds) with what happened under ``actual``.
    own_cpu_s
        CPU seconds dagflow spent on its safety features, by feature: ``checkpoint``
        (the records parts; reading them to resume) and ``monitoring`` (the metrics, the
        scheduler plugin, the report and history), each measured in the thread that did
        the work, on the workers, the scheduler and the client. A feature that is off
        costs 0.
    """

    run_id: str
    run_dir: Path
    output_dir: Path
    workflow: str
    items: int = 0
    executed: int = 0
    already_done: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    not_run: int = 0
    quarantined: int = 0
    nodes: dict[str, dict[str, int]] = field(default_factory=dict)
    node_seconds: dict[str, float] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    aggregates: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    dashboard: str | None = None
    stopped: str | None = None
    chunk_size: int = 0
    chunks: int = 0
    tiled: int = 0
    estimate: dict[str, Any] | None = None
    own_cpu_s: dict[str, float] = field(
        default_factory=lambda: {"checkpoint": 0.0, "monitoring": 0.0})

    #: Most failed records a result keeps (all are in the records parts).
    MAX_FAILURES = 1000

    def add(self, summary: Any) -> int:
        """Count a finished chunk's :class:`~dagflow.execute.ChunkSummary` in; returns
        its failed items. Its ``not_run`` items are not counted: the run loop knows
        whether they run again before the run ends (:attr:`not_run` is set then)."""
        failed = 0
        self.succeeded += summary.items - len(summary.item_status)
        for status in summary.item_status.values():
            if status == "failed":
                failed += 1
            if status != "not_run":
                setattr(self, status, getattr(self, status) + 1)
        for (node, status), n in summary.counts.items():
            counts = self.nodes.setdefault(node, {})
            counts[status] = counts.get(status, 0) + n
        for node, seconds in summary.seconds.items():
            self.node_seconds[node] = self.node_seconds.get(node, 0.0) + seconds
        for feature, seconds in summary.own_cpu_s.items():
            self.own_cpu_s[feature] = self.own_cpu_s.get(feature, 0.0) + seconds
        room = max(0, self.MAX_FAILURES - len(self.failures))
        self.failures.extend(r._asdict() for r in summary.failures[:room])
        return failed

    @property
    def exit_code(self) -> int:
        """The CLI's exit code for this result (see the README)."""
        if self.stopped:
            return EXIT_BREAKER
        if self.failed or self.errors:
            return EXIT_FAILED_ITEMS
        return EXIT_OK

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (what ``dagflow run --json`` prints)."""
        out = asdict(self)
        out["run_dir"] = str(self.run_dir)
        out["output_dir"] = str(self.output_dir)
        out["exit_code"] = self.exit_code
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def records(self) -> pd.DataFrame:
        """Every record of this run (one row per item and node) as a DataFrame.

        ``output_path`` is given absolute here, resolved against the output directory
        (the records parts keep it relative to it).
        """
        import pyarrow.dataset as ds

        from dagflow.recovery.checkpoint import RECORD_SCHEMA

        if isinstance(self.run_dir, str):  # a run into a store: its records there
            from dagflow.runtime.storeoutput import store_records

            dataset = store_records(self.run_dir, RECORD_SCHEMA)
        else:
            records_dir = self.run_dir / "records"
            if not records_dir.exists():
                return RECORD_SCHEMA.empty_table().to_pandas()
            dataset = ds.dataset(records_dir, format="parquet", schema=RECORD_SCHEMA)
        df = dataset.to_table().to_pandas()
        root = os.fspath(self.output_dir)
        df["output_path"] = [os.path.join(root, p) if isinstance(p, str) else p
                             for p in df["output_path"]]
        return df

    def item_outcomes(self) -> pd.DataFrame:
        """One row per item of this run: its path and its worst status across nodes."""
        df = self.records()
        rank = {"ok": 0, "skipped": 1, "upstream_failed": 2, "failed": 3}
        df = df.assign(_rank=df["status"].map(rank))
        worst = df.sort_values("_rank").groupby("item_id").tail(1)
        return worst[["item_id", "input_path", "status", "node_id", "error_class",
                      "error_message"]].sort_values("item_id").reset_index(drop=True)

    def report(self, path: str | Path | None = None) -> Path:
        """Write this run's HTML report (default ``<run_dir>/report.html``); return its path.

        The same figures as data: :meth:`analysis`.
        """
        from dagflow.monitor.report import write_report
        from dagflow.runtime.storeoutput import remote_path, staged_view

        # a run into a store: read from a local copy, the report uploaded beside the run's
        with staged_view(self.run_dir, write_back=path is None) as local:
            written = write_report(local, path, duration_s=self.duration_s)
        if local == Path(self.run_dir):
            return written
        return remote_path(os.fspath(self.run_dir), local, written)  # type: ignore[return-value]

    def analysis(self) -> Any:
        """This run's analysis (:class:`dagflow.monitor.analysis.RunAnalysis`), for notebooks."""
        from dagflow.monitor.analysis import analyze
        from dagflow.runtime.storeoutput import staged_view

        with staged_view(self.run_dir) as local:  # a run into a store: a local copy
            return analyze(local)

    def __str__(self) -> str:
        lines = [
            f"run {self.run_id} of workflow {self.workflow!r}: {self.items} items, "
            f"{self.executed} executed, {self.already_done} already done",
            f"  succeeded {self.succeeded}, failed {self.failed} "
            f"(quarantined {self.quarantined}), skipped {self.skipped}, not run {self.not_run} "
            f"in {self.duration_s:.1f} s",
        ]
        for node, counts in self.nodes.items():
            lines.append(f"  {node}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        for f in self.failures[:10]:
            lines.append(f"  failed: {f['input_path']} at {f['node_id']}: "
                         f"[{f['error_class']}] {f['error_message']}")
        if len(self.failures) > 10:
            lines.append(f"  ... {len(self.failures) - 10} more failures in the records")
        for node, path in self.aggregates.items():
            lines.append(f"  {node}: {path}")
        lines.extend(f"  error: {e}" for e in self.errors)
        if self.tiled:
            lines.append(f"  {self.tiled} items larger than any worker's memory ran tiled")
        lines.extend(_estimate_lines(self.estimate))
        if any(self.own_cpu_s.values()):
            lines.append("  safety features' own CPU: " + ", ".join(
                f"{name} {seconds:.2f} s" for name, seconds in self.own_cpu_s.items()))
        if self.stopped:
            lines.append(f"  STOPPED: {self.stopped}")
        lines.append(f"  run directory: {self.run_dir}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        # Jupyter: counts per node with p50 / p99 duration, the failed items with their
        # reasons, and links to the report and the run directory
        durations = self._node_percentiles()
        rows = "".join(
            f"<tr><td>{html.escape(n)}</td>"
            + "".join(f"<td>{c.get(s, 0)}</td>" for s in ("ok", "failed", "skipped",
                                                          "upstream_failed"))
            + "".join(f"<td>{_seconds(q)}</td>" for q in durations.get(n, (None, None)))
            + "</tr>"
            for n, c in self.nodes.items()
        )
        fails = "".join(
            f"<li>{html.escape(str(f['input_path']))} at <b>{html.escape(f['node_id'])}</b>: "
            f"[{html.escape(str(f['error_class']))}"
            + (f", {html.escape(str(f['reason']))}" if f.get("reason") else "")
            + f"] {html.escape(str(f['error_message']))}</li>"
            for f in self.failures[:20]
        )
        if len(self.failures) > 20:
            fails += f"<li>... {len(self.failures) - 20} more in the records</li>"
        notes = "".join(f'<p style="color:#c0392b">{html.escape(e)}</p>' for e in
                        [*self.errors, *([f"STOPPED: {self.stopped}"] if self.stopped else [])])
        links = [("run directory", self.run_dir)]
        for name in ("report.html", "quarantine.parquet"):
            if (Path(self.run_dir) / name).exists():
                links.insert(len(links) - 1, (name.split(".")[0], Path(self.run_dir) / name))
        return (
            f"<div><b>Run {html.escape(self.run_id)}</b> of {html.escape(self.workflow)}: "
            f"{self.succeeded} succeeded, {self.failed} failed "
            f"({self.quarantined} quarantined), {self.skipped} skipped, "
            + (f"{self.not_run} not run, " if self.not_run else "")
            + f"{self.already_done} already done, in {self.duration_s:.1f} s{notes}"
            "<table><tr><th>node</th><th>ok</th><th>failed</th><th>skipped</th>"
            "<th>upstream failed</th><th>p50</th><th>p99</th></tr>"
            f"{rows}</table>"
            + (f"<p>Failed items:</p><ul>{fails}</ul>" if fails else "")
            + "<p>" + " &middot; ".join(
                f'<a href="{html.escape(_file_href(path))}" target="_blank">{text}</a>'
                for text, path in links)
            + f": <code>{html.escape(str(self.run_dir))}</code></p></div>"
        )

    def _node_percentiles(self) -> dict[str, tuple[float, float]]:
        """Per node, p50 and p99 duration (s) of the items its op ran on, from the records."""
        try:
            import pyarrow.compute as pc
            import pyarrow.dataset as ds

            from dagflow.recovery.checkpoint import RECORD_SCHEMA

            records_dir = Path(self.run_dir) / "records"
            if not records_dir.exists():
                return {}
            table = ds.dataset(records_dir, format="parquet", schema=RECORD_SCHEMA).to_table(
                columns=["node_id", "duration_s"],
                filter=pc.field("status").isin(["ok", "failed"]))
            grouped = table.group_by("node_id").aggregate(
                [("duration_s", "tdigest", pc.TDigestOptions(q=[0.5, 0.99]))])
        except Exception:  # a display must not raise: the counts are shown without them
            return {}
        return {row["node_id"]: tuple(row["duration_s_tdigest"])
                for row in grouped.to_pylist() if row["duration_s_tdigest"]}


def _seconds(value: float | None) -> str:
    """A duration for a table cell: ``12.3 ms``, ``1.25 s``; empty when unknown."""
    if value is None or value != value:
        return ""
    return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"


def _file_href(path: str | Path) -> str:
    """A link to a local file: relative below the working directory (Jupyter serves it),
    else a ``file://`` URI."""
    p = Path(path).absolute()
    cwd = Path.cwd()
    return Path(os.path.relpath(p, cwd)).as_posix() if p.is_relative_to(cwd) else p.as_uri()


def _estimate_lines(estimate: dict[str, Any] | None) -> list[str]:
    """The plan's estimate next to what happened, for the summary."""
    if not estimate:
        return []
    from dagflow.resources import format_bytes

    actual = estimate.get("actual", {})
    lines = []
    if estimate.get("duration_s") is not None:
        lines.append(f"  estimate: {estimate['duration_s']:.1f} s (from "
                     f"{estimate.get('history_runs', 0)} earlier runs), actual "
                     f"{actual.get('duration_s', 0.0):.1f} s; compute "
                     f"{estimate.get('compute_s') or 0.0:.1f} s estimated, "
                     f"{actual.get('compute_s', 0.0):.1f} s actual")
    peak = actual.get("peak_worker")
    lines.append(f"  memory: estimated peak {format_bytes(estimate.get('peak_task'))} per task, "
                 f"{format_bytes(estimate.get('peak_worker'))} per worker"
                 + (f"; workers peaked at {format_bytes(peak)}" if peak else ""))
    return lines
