"""The ``dagflow`` command line (also ``dask dagflow ...`` through the ``dask_cli`` group).

Exit codes: 0 every item succeeded; 1 the run finished but some items failed; 2 invalid
workflow, configuration or usage, outputs that would collide, an output directory another
run holds, a cluster that could not start, or no scheduler at the address given (nothing
ran); 3 a circuit breaker stopped the run; 5 the output directory or the run's state could
not be written (read-only, disk full); 130 interrupted (Ctrl-C), 143 terminated (SIGTERM): what
finished is recorded and the same command resumes the rest.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from dagflow.cli.location import RunLocation
from dagflow.exceptions import (
    ClusterStartError,
    ClusterUnreachableError,
    ConfigError,
    InputError,
    OutputError,
    OutputLockedError,
    StorageError,
    WorkflowValidationError,
)
from dagflow.runtime.result import (
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_STORAGE,
    EXIT_TERMINATED,
)
from dagflow.runtime.signals import Terminated, sigterm_as_interrupt

__all__ = ["main"]


def _fail_invalid(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(EXIT_INVALID)


class _Group(click.Group):
    """Turns dagflow's validation errors (and an unreachable scheduler) into exit code 2
    with a clean message, storage that cannot be written into 5, an interrupt into 130
    and SIGTERM into 143."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with sigterm_as_interrupt(quiet=True):  # the run's cleanup runs on SIGTERM too
                return super().invoke(ctx)
        except (WorkflowValidationError, ConfigError, InputError, OutputError,
                OutputLockedError, ClusterUnreachableError, ClusterStartError) as exc:
            _fail_invalid(exc)
        except StorageError as exc:
            click.echo(f"error: {exc}; what finished is recorded: once the storage is "
                       "fixed, the same command resumes the rest", err=True)
            sys.exit(EXIT_STORAGE)
        except KeyboardInterrupt as exc:  # not click's "Aborted!" and 1 (failed items)
            what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
            click.echo(f"{what}: what finished is recorded; the same command resumes the "
                       "rest", err=True)
            sys.exit(EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED)


@click.group(cls=_Group, name="dagflow", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dagflow")
def main() -> None:
    """Batch image-processing workflows on Dask."""


def cluster_options(func: Any) -> Any:
    """The options that say where to run, shared by ``run``, ``plan`` and ``submit``."""
    options = [
        click.option("--cluster", default=None,
                     help="'local' (default), a scheduler address (tcp://host:port), or a "
                          "cluster profile name or YAML file."),
        click.option("--scheduler-file", type=click.Path(dir_okay=False), default=None,
                     help="Scheduler file written by 'dask scheduler --scheduler-file'."),
        click.option("--n-workers", type=int, default=None, help="Workers of the local cluster."),
        click.option("--threads-per-worker", type=int, default=None,
                     help="Threads per worker of the local cluster."),
        click.option("--memory-limit", default=None,
                     help="Memory limit per worker of the local cluster, e.g. '2GiB'."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def wait_for_lock_option(func: Any) -> Any:
    """``--wait-for-lock``, shared by ``run`` and ``submit``."""
    return click.option(
        "--wait-for-lock", is_flag=True,
        help="When another run holds the output directory, wait for it to finish instead "
             "of exiting 2 (dagflow.lock.wait).")(func)


def lock_settings(wait_for_lock: bool) -> dict[str, Any]:
    """The configuration ``--wait-for-lock`` sets (nothing without it)."""
    return {"dagflow.lock.wait": True} if wait_for_lock else {}


def _local_options(n_workers: int | None, threads_per_worker: int | None,
                   memory_limit: str | None) -> dict[str, Any]:
    return {k: v for k, v in {"n_workers": n_workers, "threads_per_worker": threads_per_worker,
                              "memory_limit": memory_limit}.items() if v is not None}


@main.command()
@click.argument("workflow", type=click.Path(exists=True, dir_okay=False))
@click.option("--input", "-i", "inputs", multiple=True, required=True,
              help="Directory, glob, manifest (.csv/.parquet with a 'path' column) or image; "
                   "repeat for several.")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False),
              help="Output directory (dagflow's state goes in its _dagflow/ sub-directory).")
@click.option("--chunk-size", type=int, default=None, help="Items per task (default: auto).")
@click.option("--resume/--no-resume", default=True,
              help="Skip items that earlier runs into the same output finished (default).")
@click.option("--retry-failed", is_flag=True, help="Run only the items that failed before.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: when stderr is a terminal).")
@click.option("--dry-run", is_flag=True,
              help="Print the plan (as 'dagflow plan') and run nothing.")
@wait_for_lock_option
@cluster_options
def run(workflow: str, inputs: tuple[str, ...], output: str, chunk_size: int | None,
        resume: bool, retry_failed: bool, as_json: bool, progress: bool | None,
        dry_run: bool, wait_for_lock: bool, cluster: str | None, scheduler_file: str | None,
        n_workers: int | None, threads_per_worker: int | None,
        memory_limit: str | None) -> None:
    """Run WORKFLOW (a YAML file) over the inputs."""
    if not dry_run:
        _start_workers_early(cluster, scheduler_file)
    from dagflow.runtime import run as run_workflow

    if dry_run:
        from dagflow.cli.plan import show_plan

        show_plan(workflow, inputs, output, chunk_size=chunk_size, resume=resume,
                  retry_failed=retry_failed, as_json=as_json, cluster=cluster,
                  scheduler_file=scheduler_file,
                  local_options=_local_options(n_workers, threads_per_worker, memory_limit))
        return

    import dask

    from dagflow import config

    # the command writes the run's report unless configured not to: after the summary,
    # off the run's critical path (the cluster is closed, the exit code known)
    report = config.get("monitor.report") in (True, "cli")
    with dask.config.set({"dagflow.monitor.report": False, **lock_settings(wait_for_lock)}):
        result = run_workflow(
            workflow, list(inputs), output, cluster=cluster, scheduler_file=scheduler_file,
            chunk_size=chunk_size, resume=resume, retry_failed=retry_failed,
            progress=progress,
            local_options=_local_options(n_workers, threads_per_worker, memory_limit),
        )
    if as_json:
        click.echo(result.to_json())
    else:
        click.echo(str(result))
    sys.stdout.flush()
    if report:
        _write_report(result)
    _exit(result.exit_code)


def _is_program() -> bool:
    """Whether this process is the ``dagflow`` program (not ``dask dagflow``, a test's
    runner or a caller's process): its only run is this command's, and it ends with it."""
    return getattr(sys.modules.get("__main__"), "main", None) is main


def _start_workers_early(cluster: str | None, scheduler_file: str | None) -> None:
    """For the embedded cluster, once the configuration is known to be valid: start the
    process its workers will be forked from, importing what they need while this one
    imports and plans (:func:`dagflow.runtime.cluster.start_worker_forkserver`). As the
    ``dagflow`` program only: the forkserver is the process's, for its every cluster."""
    import dask.config

    from dagflow.config import validate_config

    validate_config()  # an invalid configuration starts nothing
    if not _is_program() or cluster not in (None, "local") or scheduler_file is not None or (
            cluster is None and dask.config.get("scheduler-address", None)):
        return
    from dagflow.runtime.cluster import start_worker_forkserver

    start_worker_forkserver()


def _exit(code: int) -> None:
    """End the command with ``code``; as the ``dagflow`` program, without the
    interpreter's finalization.

    Tearing down the modules a run imports (numpy, scipy, pandas, pyarrow, distributed,
    bokeh) takes about 0.4 s after everything is written and the cluster is closed: the
    exit handlers run (logging, multiprocessing, Dask), then the process ends. Elsewhere
    (``dask dagflow``, a test's runner, a caller's process) it is ``sys.exit``.
    """
    if not _is_program():
        sys.exit(code)
    import atexit
    import contextlib
    import os

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe, as at exit
            stream.flush()
    os._exit(code)


def _write_report(result: Any) -> None:
    """The run's ``report.html``, written after its summary; a report that cannot be
    written is a warning, never the run's exit code."""
    try:
        result.report()  # a run into a store: uploaded beside the run's records
    except Exception as exc:
        click.echo(f"warning: could not write the run report: {type(exc).__name__}: {exc}; "
                   f"'dagflow report {result.run_dir}' writes it", err=True)


#: A run directory or an output directory: a local one that exists, or a store's URL.
RUN_LOCATION = RunLocation(click.Path(exists=True, file_okay=False))


@main.command()
@click.argument("workflow", type=click.Path(exists=True, dir_okay=False))
def validate(workflow: str) -> None:
    """Check WORKFLOW without running it; exit 2 with every problem if it is invalid."""
    from dagflow.config import validate_config
    from dagflow.workflow import Workflow

    validate_config()  # the configuration a run would use, environment included
    wf = Workflow.from_yaml(Path(workflow)).validate()
    click.echo(f"ok: {wf}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable listing.")
def ops(as_json: bool) -> None:
    """List the available ops and their parameters."""
    from dagflow.ops.registry import list_ops

    specs = list_ops()
    if as_json:
        click.echo(json.dumps([
            {"name": s.name, "kind": s.kind, "inputs": s.inputs, "doc": s.doc,
             "params": [{"name": p.name, "description": p.describe()} for p in s.params]}
            for s in specs
        ], indent=2))
        return
    for s in specs:
        click.echo(f"{s.name} ({s.kind}): {s.doc}")
        for p in s.params:
            click.echo(f"    {p.describe()}")


@main.command("sample-data")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--photos", type=int, default=24, help="Plain photo-like JPEGs to add.")
@click.option("--seed", type=int, default=0)
def sample_data(directory: str, photos: int, seed: int) -> None:
    """Write a deterministic sample corpus into DIRECTORY."""
    from dagflow.testing import make_sample_corpus

    paths = make_sample_corpus(directory, n_photos=photos, seed=seed)
    click.echo(f"wrote {len(paths)} files to {directory}")


@main.command()
@click.argument("run_dir", type=RUN_LOCATION)
@click.option("--json", "as_json", is_flag=True)
def status(run_dir: str, as_json: bool) -> None:
    """Reconstruct a run's state from its event log and records (also after a crash).

    RUN_DIR is a run directory (<output>/_dagflow/runs/<run id>) or an output directory
    (its latest run).
    """
    from dagflow.runtime.storeoutput import run_status_and_lock

    # and which run holds the output directory, if any
    state, lock = run_status_and_lock(run_dir)
    if as_json:
        click.echo(json.dumps({**state.to_dict(), "lock": lock}, indent=2, default=str))
        return
    click.echo(str(state))
    if lock is not None:
        click.echo(f"  output directory held by {lock['description']}")


from dagflow.cli import clusters as _clusters  # noqa: E402, F401  (submit, config...)
from dagflow.cli import plan as _plan  # noqa: E402, F401  (registers `dagflow plan`)
from dagflow.cli import report as _report  # noqa: E402, F401  (registers `dagflow report`)
