"""``dagflow report RUN_DIR``: the run report as HTML, or its analysis as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from dagflow.cli import RUN_LOCATION, main
from dagflow.runtime.result import EXIT_INVALID

__all__ = ["report"]


@main.command()
@click.argument("run_dir", type=RUN_LOCATION)
@click.option("--json", "as_json", is_flag=True,
              help="Print the analysis as JSON on stdout instead of writing HTML.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="Where to write the HTML (default: RUN_DIR/report.html); with --json, "
                   "where to write the JSON.")
def report(run_dir: str, as_json: bool, output: str | None) -> None:
    """Analyse a run: per-node percentiles, anomalies, trend, critical path, resources,
    errors and recommendations.

    RUN_DIR is a run directory (OUTPUT/_dagflow/runs/RUN_ID) or an output directory,
    whose latest run is taken. The HTML is self-contained: it opens offline.
    """
    from dagflow.runtime.storeoutput import staged_view

    # an output on a store: a local copy to read, the report uploaded beside the run's
    upload = output is None and not as_json
    with staged_view(run_dir, write_back=upload) as local:
        written = _report(local, run_dir, as_json, output)
    if written is not None:
        if local != Path(run_dir):  # the copy's, uploaded: say where it went
            from dagflow.runtime.storeoutput import remote_path

            written = remote_path(run_dir, local, written)
        click.echo(str(written))


def _report(local: Path, run_dir: str, as_json: bool, output: str | None) -> Path | None:
    from dagflow.monitor.analysis import analyze, find_run_dir
    from dagflow.monitor.report import write_report

    path = find_run_dir(local)
    if not (path / "records").is_dir() and not (path / "metrics").is_dir():
        click.echo(f"error: {run_dir} is neither a run directory nor an output directory "
                   "with runs", err=True)
        sys.exit(EXIT_INVALID)
    analysis = analyze(path)
    if as_json:
        text = json.dumps(analysis.to_dict(), indent=2, default=str)
        if output:
            from dagflow.io.atomic import atomic_write

            atomic_write(Path(output), text.encode())
            click.echo(f"wrote {output}", err=True)
        else:
            click.echo(text)
        return None
    return write_report(path, output, analysis=analysis)
