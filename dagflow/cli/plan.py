"""``dagflow plan``: what a run would do, estimated before anything is decoded.

Prints, per node and in total, the items to run and to skip (already done, condition
false, oversize: tiled or refused), the chunk size, the estimated peak memory per task
and per worker, and an estimated duration from the history of earlier runs
(:func:`dagflow.runtime.plan.plan`). ``dagflow run --dry-run`` prints the same.
Registered on the ``dagflow`` group by importing this module.
"""

from __future__ import annotations

import click

from dagflow.cli import _local_options, cluster_options, main

__all__ = ["plan_command", "show_plan"]


def show_plan(workflow: str, inputs: tuple[str, ...], output: str, *, chunk_size: int | None,
              resume: bool, retry_failed: bool, as_json: bool, cluster: str | None,
              scheduler_file: str | None, local_options: dict, history_dir: str | None = None
              ) -> None:
    """Compute and print the plan (shared by ``plan`` and ``run --dry-run``)."""
    from dagflow.runtime.plan import plan

    result = plan(workflow, list(inputs), output, cluster=cluster,
                  scheduler_file=scheduler_file, local_options=local_options,
                  chunk_size=chunk_size, resume=resume, retry_failed=retry_failed,
                  history_dir=history_dir)
    click.echo(result.to_json() if as_json else str(result))


@main.command("plan")
@click.argument("workflow", type=click.Path(exists=True, dir_okay=False))
@click.option("--input", "-i", "inputs", multiple=True, required=True,
              help="Directory, glob, manifest (.csv/.parquet with a 'path' column) or image; "
                   "repeat for several.")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False),
              help="The output directory a run would write (its checkpoints say what is "
                   "already done).")
@click.option("--chunk-size", type=int, default=None, help="Items per task (default: auto).")
@click.option("--resume/--no-resume", default=True,
              help="Count items that earlier runs finished as done (default).")
@click.option("--retry-failed", is_flag=True, help="Plan only the items that failed before.")
@click.option("--history-dir", type=click.Path(file_okay=False), default=None,
              help="History of earlier runs (default: <output>/_dagflow/history).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@cluster_options
def plan_command(workflow: str, inputs: tuple[str, ...], output: str, chunk_size: int | None,
                 resume: bool, retry_failed: bool, history_dir: str | None, as_json: bool,
                 cluster: str | None, scheduler_file: str | None, n_workers: int | None,
                 threads_per_worker: int | None, memory_limit: str | None) -> None:
    """Plan WORKFLOW over the inputs without running it: items, chunks, memory, duration.

    The embedded cluster is described, not started; an existing cluster is asked for
    its workers only.
    """
    show_plan(workflow, inputs, output, chunk_size=chunk_size, resume=resume,
              retry_failed=retry_failed, as_json=as_json, cluster=cluster,
              scheduler_file=scheduler_file,
              local_options=_local_options(n_workers, threads_per_worker, memory_limit),
              history_dir=history_dir)
