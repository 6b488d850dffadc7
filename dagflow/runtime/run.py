"""``dagflow.run``: validate, plan, submit in windows, record, summarise.

The only layer (with :mod:`dagflow.runtime.cluster`) that talks to a live cluster. What
runs is decided before anything is submitted (:mod:`dagflow.runtime.selection`, which
items and nodes; :mod:`dagflow.runtime.plan`, the chunks and their resources); the
:class:`Runner` then runs it: it submits what its :class:`~dagflow.runtime.loop.RunLoop`
says, as compiled graphs, and feeds the loop every outcome: a chunk finished (its
records part written by the workers), a chunk whose task failed as a whole, a worker
that died (the scheduler's ``remove-worker`` events, and the run's in-flight table of
which item each task was on, :mod:`dagflow.runtime.deaths`). The client never touches
pixels. This module starts and ends the run: its run directory and event log, the
cluster, the summary; :class:`~dagflow.runtime.runner.Runner` runs it.

A worker that dies under an item (a segfault, ``os._exit``, its nanny killing it for
memory) costs one worker's life in its chunk, which goes on without that item, and one
more when the item runs alone at the end: only then is it recorded, failed at the node
that was running (``lost_worker``, or ``resource`` for memory).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dask.config
from distributed import Client

from dagflow import config
from dagflow.compile import NodeTask, RunContext, node_tasks
from dagflow.exceptions import StorageError
from dagflow.inputs import InputSet
from dagflow.io.atomic import atomic_path, atomic_write, find_temporaries
from dagflow.io.stage import fetch_run_records, output_location
from dagflow.monitor import hooks
from dagflow.recovery.checkpoint import Checkpoint, load_done
from dagflow.recovery.events import EventLog
from dagflow.recovery.inflight import TABLE
from dagflow.runtime import signals
from dagflow.runtime.capacity import prepare_cluster
from dagflow.runtime.cluster import (
    LocalClusterStart,
    connect,
    dashboard_link,
    refuse_while_bootstrapping,
    resolve_local_sizes,
)
from dagflow.runtime.collisions import check_outputs
from dagflow.runtime.environ import environment
from dagflow.runtime.handle import RunHandle
from dagflow.runtime.lock import OutputLock, check_unlocked
from dagflow.runtime.plan import check_chunk_size, compare, prepare_batch
from dagflow.runtime.result import RunResult
from dagflow.runtime.runner import Progress, Runner
from dagflow.runtime.selection import (
    WorkflowLike,
    fingerprints_needed,
    load_workflow,
    run_inputs,
    select_items,
)
from dagflow.runtime.statedir import check_state_dir
from dagflow.workflow import Workflow

__all__ = ["RunHandle", "fingerprints_needed", "load_workflow", "new_run_id", "run",
           "run_inputs", "select_items"]

logger = logging.getLogger(__name__)


def new_run_id() -> str:
    """A run id that names its start: ``YYYYmmdd-HHMMSS-xxxxxx``."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def write_quarantine(run_dir: Path) -> int:
    """List this run's bad inputs, with the reason, in ``quarantine.parquet``."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from dagflow.recovery.checkpoint import read_records

    table, _ = read_records(sorted((run_dir / "records").glob("part-*.parquet")))
    mask = pc.and_(pc.equal(table["status"], "failed"), pc.equal(table["error_class"], "bad_input"))
    bad = table.filter(mask).select(["item_id", "input_path", "node_id", "reason", "error_type",
                                     "error_message", "run_id"])
    if bad.num_rows:
        with atomic_path(run_dir / "quarantine.parquet") as tmp:
            pq.write_table(bad, tmp)
    return len(set(bad.column("item_id").to_pylist()))


def _prepare_run_dir(output: Path, run_id: str, workflow: Workflow,
                     inputs: InputSet) -> tuple[Path, Path]:
    state_dir = output / config.get("state-dir")
    run_dir = state_dir / "runs" / run_id
    (run_dir / "records").mkdir(parents=True, exist_ok=True)
    try:
        name, text = "workflow.yaml", workflow.to_yaml()
    except ValueError:  # a Python predicate has no YAML form
        name, text = "workflow.txt", str(workflow)
    # what the run is running, for its reports: not flushed to the disk, no more than
    # the events and records written after it (two fsyncs before the first chunk)
    with atomic_path(run_dir / name, sync=False) as tmp:
        tmp.write_bytes(text.encode())
    return state_dir, run_dir


def run(
    workflow: WorkflowLike,
    inputs: Any,
    output: str | os.PathLike[str],
    *,
    client: Client | None = None,
    cluster: str | Any | None = None,
    scheduler_file: str | os.PathLike[str] | None = None,
    chunk_size: int | None = None,
    resume: bool = True,
    retry_failed: bool = False,
    checkpoint: bool = True,
    progress: bool | None = None,
    local_options: Mapping[str, Any] | None = None,
    wait: bool = True,
    run_id: str | None = None,
) -> RunResult | RunHandle:
    """Run ``workflow`` over ``inputs``, writing into ``output``.

    Parameters
    ----------
    workflow
        A :class:`Workflow`, or the path of (or text of) a YAML workflow.
    inputs
        A directory, glob, manifest, image path, list of those, or an :class:`InputSet`.
    output
        The output directory. dagflow's state (run directories, checkpoints) goes in its
        ``_dagflow`` sub-directory; recorded paths are relative to it, so a run resumes
        from any working directory.
    client, cluster, scheduler_file
        Where to run (see :func:`dagflow.runtime.cluster.connect`); by default
        ``DASK_SCHEDULER_ADDRESS`` if set, else an embedded ``LocalCluster``.
    chunk_size
        Items per task; ``None`` uses ``dagflow.chunk-size`` ("auto" by default).
    resume
        Skip what earlier runs into ``output`` finished (same inputs, same nodes, outputs
        still as they were written).
    retry_failed
        Run only the items that failed in earlier runs.
    checkpoint
        Write records as Parquet parts as chunks finish (needed for resume).
    progress
        Progress bar on stderr; ``None`` shows it when stderr is a terminal.
    local_options
        Keyword arguments for the embedded cluster.
    wait
        ``False`` returns a :class:`RunHandle` at once and runs in the background.
    run_id
        The run's id, which names its directory (``<output>/_dagflow/runs/<run_id>``);
        by default a new one. ``dagflow submit`` chooses it so that it can print the
        run directory before the run starts.

    Returns
    -------
    RunResult
        What happened to every item (or a :class:`RunHandle` when ``wait=False``).

    Raises
    ------
    WorkflowValidationError, InputError, ConfigError
        Before anything runs.
    StorageError
        The output directory or the run's state could not be written (read-only, disk
        full): what finished is recorded, nothing else is claimed.
    """
    refuse_while_bootstrapping()  # a worker process importing an unguarded script
    config.validate_config()  # the configuration in force, environment variables included
    wf = load_workflow(workflow)
    check_chunk_size(chunk_size)
    if client is None and cluster in (None, "local") and scheduler_file is None:
        resolve_local_sizes(local_options)  # the embedded cluster's, before anything
    output = output_location(output)  # a store's URL stays one
    options = dict(client=client, cluster=cluster, scheduler_file=scheduler_file,
                   chunk_size=chunk_size, resume=resume, retry_failed=retry_failed,
                   checkpoint=checkpoint, local_options=local_options, run_id=run_id)
    if not wait:
        input_set = run_inputs(wf, inputs, output, resume or retry_failed)
        check_outputs(wf, input_set.items, output)  # no two writers of one output file
        return RunHandle(lambda handle: _run(wf, input_set, output, progress=False,
                                             handle=handle, **options))
    _refuse_early(output)
    with _embedded_cluster_starting(client, cluster, scheduler_file, local_options) as starting:
        input_set = run_inputs(wf, inputs, output, resume or retry_failed)
        check_outputs(wf, input_set.items, output)
        return _run(wf, input_set, output, progress=progress, starting=starting, **options)


def _refuse_early(output: Path | str) -> None:
    """Refuse a local output directory whose state directory is a symlink, or that
    another run holds (and is not to be waited for), before a cluster starts for nothing.

    :func:`_run` checks both again where it takes the lock: this only says it sooner.
    """
    if isinstance(output, Path):
        check_state_dir(output, config.get("state-dir"))
        check_unlocked(output, state_dir=config.get("state-dir"))


@contextlib.contextmanager
def _embedded_cluster_starting(client: Any, cluster: Any, scheduler_file: Any,
                               local_options: Mapping[str, Any] | None
                               ) -> Iterator[LocalClusterStart | None]:
    """The embedded cluster, starting in the background while the run is planned (the
    workflow and the configuration are valid by then); ``None`` for any other cluster.

    Whatever stops the run before it takes the cluster (no inputs, colliding outputs, a
    locked output directory, Ctrl-C) closes it on the way out, and is what is raised.
    """
    if not (client is None and scheduler_file is None and cluster in (None, "local")
            and not (cluster is None and dask.config.get("scheduler-address", None))):
        yield None
        return
    with _local_cluster_kept():  # from before its nannies set the spawn environment
        starting = LocalClusterStart(local_options)
        try:
            yield starting
        finally:
            starting.close()  # a no-op once the run has taken (and closed) it


def _local(client: Any, cluster: Any, scheduler_file: Any) -> bool:
    """Whether the run's cluster is a ``LocalCluster`` in this process: the embedded one,
    or one the caller started and passed as its client's."""
    from distributed import LocalCluster

    if client is not None:
        return isinstance(getattr(client, "cluster", None), LocalCluster)
    return (cluster in (None, "local") and scheduler_file is None
            and not (cluster is None and dask.config.get("scheduler-address", None)))


@contextlib.contextmanager
def _local_cluster_kept() -> Iterator[None]:
    """A local cluster in this process, for the length of a run: it keeps every nanny
    however long its worker takes to come back, and leaves this process's environment
    as it found it.

    A ``LocalCluster`` closes a nanny whose worker has not registered again
    ``distributed.deploy.lost-worker-timeout`` (15 s) after it left: a worker killed
    again and again by a poison item, restarting slowly on a busy machine, lost its
    nanny for good, and the run waited for ever on a cluster without workers. And a
    nanny sets its workers' spawn environment (``distributed.nanny.pre-spawn-environ``,
    with ``dagflow.cluster.worker-env``: glibc's allocator settings) in this process each
    time it starts one, and never takes it back: after a worker restart, every process
    this one started later (another cluster's workers) inherited them.
    """
    keys = {str(k) for k in (dask.config.get("distributed.nanny.pre-spawn-environ", None)
                             or {})}
    keys |= {str(k) for k in (config.get("cluster.worker-env") or {})}
    with environment(keep=keys), \
            dask.config.set({"distributed.deploy.lost-worker-timeout": "30 days"}):
        yield


@contextlib.contextmanager
def _cluster_closed_quietly(cm: Any, events: EventLog) -> Iterator[Client]:
    """``cm`` (a :func:`connect`), whose closing cannot fail a run that finished: a
    cluster that does not close cleanly is logged, the run's result stands."""
    client = cm.__enter__()
    try:
        yield client
    except BaseException:
        if not cm.__exit__(*sys.exc_info()):
            raise
    else:
        try:
            cm.__exit__(None, None, None)
        except Exception as exc:
            logger.warning("the cluster did not close cleanly: %s: %s", type(exc).__name__, exc)
            events.emit("cluster_close_failed", error=repr(exc)[:500])


def _run(wf: Workflow, input_set: InputSet, output: Path | str, *,
         run_id: str | None = None, **options: Any) -> RunResult:
    """The run, holding its output directory's lock (one run per output directory),
    in a state directory that is not a symlink."""
    if isinstance(output, str):  # a store's URL: its lock, its state staged locally
        from dagflow.runtime.storeoutput import check_store_run, remote_run_dir, store_output

        check_store_run(wf, output)
        run_id = run_id or new_run_id()
        with store_output(output, run_id) as state_root:
            result = _run_locked(wf, input_set, output, state_root=state_root,
                                 run_id=run_id, **options)
        result.run_dir = remote_run_dir(output, run_id)  # type: ignore[assignment]
        return result
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError.from_os_error(exc, output) from None
    check_state_dir(output, config.get("state-dir"))  # never state through a symlink
    run_id = run_id or new_run_id()
    lock = OutputLock(output, run_id)
    try:
        lock.acquire()
    except OSError as exc:  # a read-only or full output directory
        raise StorageError.from_os_error(exc, output) from None
    try:
        return _run_locked(wf, input_set, output, state_root=output, run_id=run_id,
                           **options)
    finally:
        lock.release()


def _run_locked(wf: Workflow, input_set: InputSet, output: Path | str, *, state_root: Path,
                client, cluster, scheduler_file, chunk_size, resume, retry_failed,
                checkpoint, progress, local_options, handle: RunHandle | None = None,
                run_id: str, starting: LocalClusterStart | None = None) -> RunResult:
    # state_root holds the state directory: the output directory, or a store's local copy
    start = time.perf_counter()
    try:
        state_dir, run_dir = _prepare_run_dir(state_root, run_id, wf, input_set)
        events = EventLog(run_dir / "events.jsonl")
    except OSError as exc:
        raise StorageError.from_os_error(exc, output) from None
    tasks = node_tasks(wf)
    for leftover in find_temporaries(state_root):
        logger.info("removing a temporary file left by an interrupted run: %s", leftover)
        leftover.unlink(missing_ok=True)
    ctx = RunContext(run_id=run_id, run_dir=os.fspath(run_dir), output_dir=os.fspath(output),
                     state_dir=os.fspath(state_dir), workflow=wf.name, checkpoint=checkpoint,
                     hash_outputs=bool(config.get("checkpoint.hash-outputs")),
                     nodes=len(tasks))
    read_cpu = time.thread_time()
    if resume or retry_failed:
        previous = load_done(state_dir)
        read_cpu = time.thread_time() - read_cpu  # the checkpoint's cost to a resume
    else:
        previous, read_cpu = Checkpoint(), 0.0
    to_run, already_done = select_items(input_set.items, tasks, previous,
                                        retry_failed=retry_failed, output=output)
    result = RunResult(run_id=run_id, run_dir=run_dir, output_dir=output, workflow=wf.name,
                       items=len(input_set.items), executed=len(to_run),
                       already_done=already_done)
    result.own_cpu_s["checkpoint"] += read_cpu
    show = sys.stderr.isatty() if progress is None else progress
    if show is None or config.get("runtime.progress") is False:
        show = False
    keep = _local_cluster_kept() if _local(client, cluster, scheduler_file) \
        else contextlib.nullcontext()
    with events, keep:
        events.emit("run_started", run_id=run_id, workflow=wf.name, items=len(input_set.items),
                    to_run=len(to_run), already_done=already_done,
                    corrupt_parts=[str(p) for p in previous.corrupt_parts])
        bar = Progress(total=len(to_run), show=bool(show))
        if handle is not None:
            bar.listeners.append(handle._on_progress)
            handle._begin(result)
        runner: Runner | None = None
        try:
            with _cluster_closed_quietly(connect(client, cluster=cluster,
                                                 scheduler_file=scheduler_file,
                                                 local_options=local_options,
                                                 starting=starting), events) as c:
                runner = _run_on(c, wf, tasks, ctx, to_run, input_set, result, events, bar,
                                 chunk_size=chunk_size, already_done=already_done,
                                 handle=handle, start=start)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                signals.stopping()  # arrived: the cleanup that follows is not to be cut
            with contextlib.suppress(Exception):
                events.emit("run_failed" if isinstance(exc, StorageError)
                            else "run_interrupted", error=repr(exc))
            raise
        finally:
            bar.close()
        try:
            _finish(runner, result, state_root, run_dir, events, start)
        except OSError as exc:
            raise StorageError.from_os_error(exc, run_dir) from None
    return result


def _run_on(c: Client, wf: Workflow, tasks: dict[str, NodeTask], ctx: RunContext,
            to_run: list[Mapping[str, Any]], input_set: InputSet, result: RunResult,
            events: EventLog, bar: Progress, *, chunk_size: Any, already_done: int,
            handle: RunHandle | None, start: float) -> Runner:
    """The part of a run that needs the cluster ``c``."""
    result.dashboard = dashboard_link(c)
    if handle is not None:
        handle.dashboard = result.dashboard
    nthreads = c.nthreads()
    if not nthreads:  # not an error: queued batch jobs, an adaptive cluster
        address = c.scheduler.address
        logger.warning("no worker is connected to the scheduler at %s yet: the run waits "
                       "for workers to join", address)
        events.emit("waiting_for_workers", scheduler=address)
    # workers advertise MEMORY; items are estimated from their headers, the oversize
    # ones tiled or refused, chunks cut to fit (dagflow.runtime.plan)
    batch = prepare_batch(wf, tasks, to_run, prepare_cluster(c, wf),
                          items=len(input_set.items), already_done=already_done,
                          chunk_size=config.resolve(chunk_size, "chunk-size"),
                          output=os.path.dirname(ctx.state_dir), client=c)  # its history
    result.chunk_size, result.chunks = batch.chunk_size, len(batch.run_chunks())
    events.emit("batch_planned", chunks=batch.plan.chunks, chunk_size=batch.chunk_size,
                tiled=len(batch.tiled), refused=len(batch.refused),
                peak_task=batch.plan.peak_task, budget=batch.plan.budget_min,
                estimate_s=batch.plan.duration_s)
    runner = Runner(c, batch, ctx, result, events, bar,
                    threads=sum(nthreads.values()) or 1)
    monitor_cpu = time.thread_time()
    hooks.run_started(c, ctx, batch.tasks, items=len(batch.items), batch_plan=batch.plan)
    if hooks.enabled():
        result.own_cpu_s["monitoring"] += time.thread_time() - monitor_cpu
    try:
        runner.run()
    finally:
        runner.finish()
    if runner.parts_on_store:  # by workers that do not see this machine's copy
        fetch_run_records(ctx.state_dir, ctx.run_id)
    if any(t.kind == "aggregate" for t in batch.tasks.values()):
        runner.reduce_aggregates(frozenset(i["key"] for i in input_set.items))
    result.duration_s = time.perf_counter() - start
    monitor_cpu = time.thread_time()
    plugin_cpu = hooks.run_finished(c, ctx, result)
    if hooks.enabled():
        result.own_cpu_s["monitoring"] += plugin_cpu + time.thread_time() - monitor_cpu
    result.estimate = compare(result, batch.plan, ctx.run_dir)
    return runner


def _finish(runner: Runner | None, result: RunResult, output: Path, run_dir: Path,
            events: EventLog, start: float) -> None:
    """After the cluster: leftovers, quarantine, summary, the last event."""
    if runner is not None and runner.deaths.count:
        # a worker killed mid-write leaves its temporary file: the run ends without it
        for leftover in find_temporaries(output):
            leftover.unlink(missing_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (run_dir / TABLE).unlink()
    # bad inputs are failures: a run without any has no records to search
    result.quarantined = write_quarantine(run_dir) if result.failed else 0
    result.duration_s = time.perf_counter() - start
    atomic_write(run_dir / "summary.json", result.to_json().encode())
    events.emit("run_finished", succeeded=result.succeeded, failed=result.failed,
                skipped=result.skipped, not_run=result.not_run,
                stopped=result.stopped, exit_code=result.exit_code,
                duration_s=result.duration_s)
