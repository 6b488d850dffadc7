"""``dagflow report RUN_DIR``: the run report as HTML, or its analysis as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from dagflow.cli import main
from dagflow.runtime.result import EXIT_INVALID

__all__ = ["report"]


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
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
    from dagflow.monitor.analysis import analyze, find_run_dir
    from dagflow.monitor.report import write_report

    path = find_run_dir(run_dir)
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
        return
    written = write_report(path, output, analysis=analysis)
    click.echo(str(written))
