"""Commands about where runs go: ``dagflow submit``, ``dagflow cluster-profiles`` and
``dagflow config``.

``submit`` starts a run in a detached driver process and returns with its run id
(:mod:`dagflow.runtime.submit`); ``cluster-profiles`` lists the profiles ``--cluster
NAME`` can use and shows one (with its batch job script for Slurm or PBS);
``config`` shows the dagflow configuration in force and checks it against the schema.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from dagflow.cli import (
    _local_options,
    cluster_options,
    lock_settings,
    main,
    wait_for_lock_option,
)

__all__ = ["cluster_profiles", "config_group", "submit"]


@main.command()
@click.argument("workflow", type=click.Path(exists=True, dir_okay=False))
@click.option("--input", "-i", "inputs", multiple=True, required=True,
              help="Directory, glob, manifest or image; repeat for several.")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False),
              help="Output directory (the run directory goes in its _dagflow/runs/).")
@click.option("--chunk-size", type=int, default=None, help="Items per task (default: auto).")
@click.option("--resume/--no-resume", default=True,
              help="Skip items that earlier runs into the same output finished (default).")
@click.option("--retry-failed", is_flag=True, help="Run only the items that failed before.")
@click.option("--run-id", default=None, help="The run's id (default: a new one).")
@click.option("--follow", is_flag=True,
              help="Follow the run until it ends and exit with its exit code (Ctrl-C stops "
                   "following, not the run).")
@click.option("--json", "as_json", is_flag=True,
              help="Print run_id, run_dir, pid and log as JSON on stdout.")
@wait_for_lock_option
@cluster_options
def submit(workflow: str, inputs: tuple[str, ...], output: str, chunk_size: int | None,
           resume: bool, retry_failed: bool, run_id: str | None, follow: bool, as_json: bool,
           wait_for_lock: bool, cluster: str | None, scheduler_file: str | None,
           n_workers: int | None, threads_per_worker: int | None,
           memory_limit: str | None) -> None:
    """Start WORKFLOW over the inputs in the background and return with its run id.

    The run is driven by a detached process that lives as long as the run (its output
    goes to driver.log in the run directory), on a running scheduler (--cluster
    tcp://HOST:PORT, --scheduler-file, or DASK_SCHEDULER_ADDRESS), a cluster profile it
    starts, or an embedded cluster. Follow it with `dagflow status RUN_DIR`, the
    dashboard, or --follow. With --follow the exit code is the run's (0, 1, 3), 2 when
    the driver failed before the run started, 4 when the run did not finish.
    """
    import dask.config

    from dagflow.runtime.submit import follow as follow_run
    from dagflow.runtime.submit import submit as submit_run

    with dask.config.set(lock_settings(wait_for_lock)):  # the driver gets it too
        submission = submit_run(
            workflow, list(inputs), output, cluster=cluster, scheduler_file=scheduler_file,
            chunk_size=chunk_size, resume=resume, retry_failed=retry_failed,
            local_options=_local_options(n_workers, threads_per_worker, memory_limit),
            run_id=run_id,
        )
    if as_json:
        click.echo(json.dumps(submission.to_dict()))
    else:
        state = "started" if submission.started else "submitted (still starting)"
        click.echo(f"run {submission.run_id} {state}, driver pid {submission.pid}")
        click.echo(f"  run directory: {submission.run_dir}")
        click.echo(f"  driver log:    {submission.log}")
        if submission.dashboard:
            click.echo(f"  dashboard:     {submission.dashboard}")
        if not follow:
            click.echo(f"  follow it:     dagflow status {submission.run_dir}")
    if follow:
        echo = (lambda line: click.echo(line, err=True)) if as_json else click.echo
        try:
            code = follow_run(submission.run_dir, echo=echo)
        except KeyboardInterrupt:
            click.echo(f"stopped following; the run goes on: dagflow status "
                       f"{submission.run_dir}", err=True)
            code = 130
        sys.exit(code)


@main.command("cluster-profiles")
@click.argument("name", required=False)
@click.option("--job-script", is_flag=True,
              help="With NAME (a Slurm or PBS profile): print the batch job script.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable listing.")
def cluster_profiles(name: str | None, job_script: bool, as_json: bool) -> None:
    """List the cluster profiles `--cluster NAME` can use, or show profile NAME."""
    from dagflow.runtime.profiles import list_profiles, load_profile, profile_dirs

    if name is None:
        profiles = list_profiles()
        if as_json:
            click.echo(json.dumps([_profile_dict(p) for p in profiles], indent=2))
            return
        width = max((len(p.name) for p in profiles), default=0)
        for p in profiles:
            first = p.description.splitlines()[0] if p.description else ""
            click.echo(f"{p.name:<{width}}  {p.cls}  {first}")
        click.echo("searched: " + ", ".join(map(str, profile_dirs())), err=True)
        return
    profile = load_profile(name)
    if job_script:
        click.echo(profile.job_script(), nl=False)
        return
    if as_json:
        click.echo(json.dumps(_profile_dict(profile), indent=2, default=str))
        return
    click.echo(f"# {profile.path}")
    click.echo(profile.path.read_text(encoding="utf-8"), nl=False)


def _profile_dict(profile: Any) -> dict[str, Any]:
    return {"name": profile.name, "path": str(profile.path), "class": profile.cls,
            "description": profile.description, "install": profile.install_hint(),
            "options": dict(profile.options), "scale": profile.scale, "adapt": profile.adapt}


@main.group("config")
def config_group() -> None:
    """dagflow's configuration (defaults, Dask config files, DASK_DAGFLOW__... variables)."""


@config_group.command("show")
def config_show() -> None:
    """Print the dagflow configuration in force, as YAML."""
    import dask.config
    import yaml

    import dagflow.config  # noqa: F401  (dagflow's defaults, in Dask's configuration)

    click.echo(yaml.safe_dump({"dagflow": dask.config.get("dagflow")}, sort_keys=False),
               nl=False)


@config_group.command("validate")
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False))
def config_validate(file: str | None) -> None:
    """Check the configuration in force (or a YAML FILE) against dagflow's schema."""
    from dagflow.config import validate_config

    validate_config(file)
    click.echo(f"ok: {file or 'the dagflow configuration in force'}")
