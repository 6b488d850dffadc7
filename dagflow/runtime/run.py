"""``dagflow.run``: validate, plan, compile in windows, submit, record, summarise.

The only layer (with :mod:`dagflow.runtime.cluster`) that talks to a live cluster. The
client never touches pixels: it submits compiled windows of chunks, waits on each
chunk's records task, and keeps counts. At most ``dagflow.runtime.window`` chunks are in
flight; new ones are compiled and submitted as others finish, so memory on the client
and the scheduler stays bounded whatever the batch size.

A chunk whose task fails as a whole (a worker killed by one poison image, a bug outside
the per-item guard) is split in two and resubmitted, down to single items, so that only
the item at fault is recorded as failed (``lost_worker`` after Dask's allowed failures).
"""

from __future__ import annotations

import collections
import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed import Client, as_completed
from distributed.scheduler import KilledWorker

from dagflow import config
from dagflow.compile import (
    Chunk,
    NodeTask,
    RunContext,
    compile_chunks,
    layer_name,
    make_chunks,
    node_tasks,
)
from dagflow.compile.chunking import taper
from dagflow.exceptions import CircuitOpenError
from dagflow.execute import ChunkSummary, item_summary, reduce_aggregate
from dagflow.inputs import InputSet, fill_fingerprint, resolve_inputs
from dagflow.io.atomic import atomic_write, find_temporaries
from dagflow.monitor import hooks
from dagflow.ops.registry import get_op
from dagflow.recovery.breaker import BreakerSettings, CircuitBreaker, counts_against_breaker
from dagflow.recovery.checkpoint import Checkpoint, load_done, record_parts
from dagflow.recovery.events import EventLog
from dagflow.runtime import signals
from dagflow.runtime.capacity import prepare_cluster
from dagflow.runtime.cluster import (
    connect,
    dashboard_link,
    refuse_while_bootstrapping,
    resolve_local_sizes,
)
from dagflow.runtime.collisions import check_outputs
from dagflow.runtime.lock import OutputLock
from dagflow.runtime.plan import check_chunk_size, compare, prepare_batch
from dagflow.runtime.result import RunResult
from dagflow.runtime.statedir import check_state_dir
from dagflow.workflow import Workflow

__all__ = ["RunHandle", "new_run_id", "run", "select_items"]

logger = logging.getLogger(__name__)

WorkflowLike = Workflow | str | os.PathLike[str]


def new_run_id() -> str:
    """A run id that sorts by start time: ``YYYYmmdd-HHMMSS-xxxxxx``."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def load_workflow(workflow: WorkflowLike) -> Workflow:
    """A validated workflow from a :class:`Workflow`, a YAML path or YAML text."""
    if not isinstance(workflow, Workflow):
        workflow = Workflow.from_yaml(Path(workflow) if not isinstance(workflow, str)
                                      or "\n" not in workflow else workflow)
    return workflow.validate()


def select_items(
    items: Sequence[Mapping[str, Any]],
    tasks: Mapping[str, NodeTask],
    checkpoint: Checkpoint,
    *,
    retry_failed: bool = False,
) -> tuple[list[Mapping[str, Any]], int]:
    """The items to run, and how many are already done.

    An item is done when every node's ``(item key, node key)`` is done in the checkpoint
    and each output it wrote still exists, or when it was quarantined as a bad input and
    the file has not changed since (a fixed file has a new fingerprint, so it runs).
    With ``retry_failed``, only items with a failure on record are run, quarantined ones
    included.
    """
    if not retry_failed and not checkpoint.done and not checkpoint.failed:
        return list(items), 0  # nothing on record (a first run): every item runs
    to_run, done = [], 0
    for item in items:
        ik = item["key"]
        if not retry_failed and any(checkpoint.failed.get((ik, t.key)) == "bad_input"
                                    for t in tasks.values()):
            done += 1
            continue
        finished = all(
            checkpoint.is_done(ik, t.key)
            and (t.kind not in ("sink",) or _output_exists(checkpoint, ik, t.key))
            for t in tasks.values()
        )
        if finished:
            done += 1
            continue
        if retry_failed and not any((ik, t.key) in checkpoint.failed for t in tasks.values()):
            continue
        to_run.append(item)
    return to_run, done


def _chunk_priority(key: tuple[str, int]) -> int:
    """Dask priority of a node's task for a chunk: earlier chunks first."""
    return -int(key[1])


def _output_exists(checkpoint: Checkpoint, item_key: str, node_key: str) -> bool:
    path = checkpoint.outputs.get((item_key, node_key))
    return path is None or os.path.exists(path)


@dataclass
class _Progress:
    total: int
    show: bool
    done: int = 0
    failed: int = 0
    bar: Any = None
    listeners: list[Callable[[int, int], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.show:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="img", file=sys.stderr, dynamic_ncols=True,
                            desc="dagflow")

    def update(self, items: int, failed: int) -> None:
        self.done += items
        self.failed += failed
        if self.bar is not None:
            self.bar.update(items)
            self.bar.set_postfix(failed=self.failed, refresh=False)
        for listener in self.listeners:
            listener(self.done, self.failed)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Runner:
    """Submits windows of chunks and accumulates their summaries into a result."""

    def __init__(self, client: Client, tasks: dict[str, NodeTask], ctx: RunContext,
                 result: RunResult, events: EventLog, progress: _Progress) -> None:
        self.client = client
        self.tasks = tasks
        self.ctx = ctx
        self.result = result
        self.events = events
        self.progress = progress
        self.token = secrets.token_hex(4)
        self.dask_retries = int(config.get("runtime.dask-retries"))
        # chunks run in the order they were cut (the batch's tapered end last)
        self.annotations = {nid: {"retries": self.dask_retries, "priority": _chunk_priority}
                            for nid in tasks}
        #: Threads to taper the chunks for (auto chunk size), or None to keep them as cut.
        self.taper_threads: int | None = None
        #: The cluster's worker threads: the first submission gives each two chunks.
        self.threads = 1
        self.chunks: dict[int, Chunk] = {}
        self.next_index = 0
        settings = BreakerSettings.from_config(config.get("breaker"))
        self.breakers = {nid: CircuitBreaker(nid, settings) for nid in tasks}
        self.probe_failed: CircuitBreaker | None = None
        self.lost_worker_retries = int(config.get("runtime.lost-worker-retries"))
        self.lost_worker_tries: dict[int, int] = {}
        # set by the memory model (dagflow.runtime.plan.Batch.attach): memory-aware
        # chunking and a MEMORY annotation per chunk and node
        self.chunk_annotations: Callable[[NodeTask, Chunk], Mapping[str, Any]] | None = None
        self.make_chunks: Callable[..., list[Chunk]] = make_chunks

    def _submit(self, chunks: list[Chunk], seq: as_completed) -> None:
        for c in chunks:
            self.chunks[c.index] = c
        compiled = compile_chunks(self.tasks, self.ctx, chunks, token=self.token,
                                  annotations=self.annotations,
                                  chunk_annotations=self.chunk_annotations)
        futures = self.client.get(compiled.graph, compiled.commit_keys, sync=False)
        seq.update(futures)
        self.events.emit("chunks_submitted", chunks=[c.index for c in chunks],
                         items=sum(len(c) for c in chunks))

    def _absorb(self, summary: ChunkSummary) -> None:
        r = self.result
        failed = 0
        r.succeeded += summary.items - len(summary.item_status)
        for status in summary.item_status.values():
            if status == "failed":
                failed += 1
            setattr(r, status, getattr(r, status) + 1)
        for (node, status), n in summary.counts.items():
            r.nodes.setdefault(node, {})
            r.nodes[node][status] = r.nodes[node].get(status, 0) + n
        for node, seconds in summary.seconds.items():
            r.node_seconds[node] = r.node_seconds.get(node, 0.0) + seconds
        for feature, seconds in summary.own_cpu_s.items():
            r.own_cpu_s[feature] = r.own_cpu_s.get(feature, 0.0) + seconds
        r.failures.extend(summary.failures[: max(0, 1000 - len(r.failures))])
        self._feed_breakers(summary)
        self.events.emit("chunk_finished", chunk=summary.index, items=summary.items,
                         failed=failed, part=summary.part)
        self.progress.update(summary.items, failed)

    def _feed_breakers(self, summary: ChunkSummary) -> None:
        for row in summary.failures:
            if counts_against_breaker(row["error_class"]):
                breaker = self.breakers[row["node_id"]]
                before = breaker.state
                breaker.failure(f"{row['error_type']}: {row['error_message']}"[:300])
                if breaker.state != before:
                    self.events.emit("breaker", node=breaker.name, state=breaker.state,
                                     why=breaker.transitions[-1][1])
                    hooks.breaker_changed(self.client, self.ctx, breaker.name, breaker.state)
                    if before == "half-open":
                        self.probe_failed = breaker
        for (node, status), n in summary.counts.items():
            breaker = self.breakers[node]
            if status == "ok" and n and breaker.state == "half-open":
                breaker.success()
                self.events.emit("breaker", node=node, state=breaker.state,
                                 why=breaker.transitions[-1][1])
                hooks.breaker_changed(self.client, self.ctx, node, breaker.state)

    def _open_breakers(self) -> list[CircuitBreaker]:
        return [b for b in self.breakers.values() if b.state != "closed"]

    def _fail_item(self, chunk: Chunk, exc: BaseException) -> ChunkSummary:
        """Record a single item whose task failed as a whole (its worker died, or worse)."""
        item = chunk.items[0]
        fill_fingerprint(item)  # type: ignore[arg-type]  # a first run defers it to here
        error_class = "lost_worker" if isinstance(exc, KilledWorker) else "bug"
        message = (f"the task for this item failed as a whole: {type(exc).__name__}: {exc}")[:2000]
        rows = [{
            "run_id": self.ctx.run_id, "item_id": item["item_id"], "item_key": item["key"],
            "input_path": item["path"], "rel": item["rel"], "node_id": t.id, "node_key": t.key,
            "op": t.op, "status": "failed" if i == 0 else "upstream_failed",
            "error_class": error_class if i == 0 else None,
            "error_type": type(exc).__name__ if i == 0 else None,
            "error_message": message if i == 0 else None, "attempts": self.dask_retries + 1,
            "duration_s": 0.0, "started": time.time(), "worker": None, "device": None,
        } for i, t in enumerate(self.tasks.values())]
        return item_summary(self.ctx, chunk.index, item, rows, "failed")

    def run(self, items: Sequence[Mapping[str, Any]], chunk_size: int) -> None:
        chunks = self.make_chunks(items, chunk_size)
        if self.taper_threads and chunks:
            chunks = taper(chunks, self.taper_threads)
            self.result.chunks = len(chunks)
        pending = collections.deque(chunks)
        self.next_index = len(pending)
        window = max(1, int(config.get("runtime.window")))
        batch = max(1, min(256, window // 4))
        seq = as_completed()
        in_flight = 0

        #: single items whose worker died under them, tried again alone at the end
        suspects: collections.deque[Chunk] = collections.deque()

        graph_items = max(1, int(config.get("runtime.graph-items")))

        def submit(n: int) -> int:
            """Submit up to ``n`` chunks, in graphs of at most ``graph_items`` items."""
            if isolating:
                return 0
            submitted = 0
            while pending and submitted < n:
                taken, items_taken = [], 0
                while pending and submitted + len(taken) < n and (
                        not taken or items_taken + len(pending[0]) <= graph_items):
                    items_taken += len(pending[0])
                    taken.append(pending.popleft())
                self._submit(taken, seq)
                submitted += len(taken)
            return submitted

        def submit_suspect() -> int:
            # a suspect runs with nothing else in flight, so a worker death is its own
            nonlocal isolating
            if in_flight or pending or not suspects or self._open_breakers():
                return 0
            isolating = True
            self._submit([suspects.popleft()], seq)
            return 1

        isolating = False

        # first two chunks for every worker thread, the rest once a chunk has finished:
        # sent together, every graph was serialised before the scheduler (often in this
        # process) dispatched the first, and the workers waited (~0.2 s per 100,000 items)
        first = min(window, 2 * self.threads)
        while pending and in_flight < first:
            in_flight += submit(min(batch, first - in_flight))
        for future in seq:
            in_flight -= 1
            isolating = False
            index = future.key[1]
            chunk = self.chunks.pop(index)
            try:
                summary = future.result()
            except CancelledError:
                # the client was closed or the run cancelled: an interruption, not a
                # failure of these items; the next run picks them up
                raise
            except Exception as exc:
                iid = chunk.items[0]["item_id"]
                if len(chunk) == 1 and isinstance(exc, KilledWorker) and \
                        self.lost_worker_tries.get(iid, 0) < self.lost_worker_retries:
                    # a worker death also blames the innocent tasks that shared the worker:
                    # the item is tried again alone on the cluster, once everything else
                    # has finished, and convicted only if it then kills workers by itself
                    self.lost_worker_tries[iid] = self.lost_worker_tries.get(iid, 0) + 1
                    suspects.append(Chunk(self.next_index, chunk.items))
                    self.next_index += 1
                    self.events.emit("suspect", item=iid, tries=self.lost_worker_tries[iid])
                    in_flight += submit_suspect()
                    continue
                if len(chunk) > 1:
                    logger.warning("chunk %d failed as a whole (%s: %s); splitting it",
                                   index, type(exc).__name__, exc)
                    half = len(chunk) // 2
                    for part in (chunk.items[:half], chunk.items[half:]):
                        pending.appendleft(Chunk(self.next_index, tuple(part)))
                        self.next_index += 1
                    self.events.emit("chunk_split", chunk=index, error=repr(exc))
                    in_flight += submit(2)
                    continue
                summary = self._fail_item(chunk, exc)
            finally:
                future.release()
            self._absorb(summary)
            if self.probe_failed is not None:
                break
            open_breakers = self._open_breakers()
            if open_breakers:
                if in_flight == 0 and pending:
                    # everything in flight has finished: wait out the cool-down, probe once
                    time.sleep(max(b.seconds_to_probe() for b in open_breakers))
                    for b in open_breakers:
                        b.ready_to_probe()
                        self.events.emit("breaker", node=b.name, state=b.state,
                                         why=b.transitions[-1][1])
                        hooks.breaker_changed(self.client, self.ctx, b.name, b.state)
                    taken = pending.popleft()
                    probe = Chunk(taken.index, taken.items[:1])
                    if len(taken) > 1:
                        pending.appendleft(Chunk(self.next_index, taken.items[1:]))
                        self.next_index += 1
                    self._submit([probe], seq)
                    in_flight += 1
                continue
            if pending and window - in_flight >= min(batch, len(pending)):
                in_flight += submit(min(batch, window - in_flight))
            in_flight += submit_suspect()
        if self.probe_failed is not None or self._open_breakers():
            breaker = self.probe_failed or self._open_breakers()[0]
            error = CircuitOpenError(breaker.name, list(breaker.last_errors))
            self.result.stopped = str(error)
            not_run = sum(len(c) for c in pending) + len(suspects)
            self.result.not_run += not_run
            self.events.emit("run_stopped", node=breaker.name, reason=str(error),
                             not_run=not_run)
            for future in list(seq.futures):
                future.cancel()

    def reduce_aggregates(self, all_item_keys: frozenset[str]) -> None:
        for t in self.tasks.values():
            if t.kind != "aggregate":
                continue
            key = layer_name(f"{t.id}-reduce", self.token)
            future = self.client.submit(reduce_aggregate, t, self.ctx, all_item_keys, key=key,
                                        pure=False)
            try:
                self.result.aggregates[t.id] = future.result()
                self.events.emit("aggregate_written", node=t.id, path=self.result.aggregates[t.id])
            except Exception as exc:
                message = f"aggregate {t.id!r} failed: {type(exc).__name__}: {exc}"
                self.result.errors.append(message)
                self.events.emit("aggregate_failed", node=t.id, error=message)


def write_quarantine(run_dir: Path) -> int:
    """List this run's bad inputs, with the reason, in ``quarantine.parquet``."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from dagflow.io.atomic import atomic_path
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
        atomic_write(run_dir / "workflow.yaml", workflow.to_yaml().encode())
    except ValueError:  # a Python predicate has no YAML form
        atomic_write(run_dir / "workflow.txt", str(workflow).encode())
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
        ``_dagflow`` sub-directory.
    client, cluster, scheduler_file
        Where to run (see :func:`dagflow.runtime.cluster.connect`); by default
        ``DASK_SCHEDULER_ADDRESS`` if set, else an embedded ``LocalCluster``.
    chunk_size
        Items per task; ``None`` uses ``dagflow.chunk-size`` ("auto" by default).
    resume
        Skip items that earlier runs into ``output`` finished (same inputs, same nodes).
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
    """
    refuse_while_bootstrapping()  # a worker process importing an unguarded script
    config.validate_config()  # the configuration in force, environment variables included
    wf = load_workflow(workflow)
    check_chunk_size(chunk_size)
    if client is None and cluster in (None, "local") and scheduler_file is None:
        resolve_local_sizes(local_options)  # the embedded cluster's, before anything
    input_set = run_inputs(wf, inputs, Path(output), resume or retry_failed)
    check_outputs(wf, input_set.items, output)  # no two writers of one output file
    options = dict(client=client, cluster=cluster, scheduler_file=scheduler_file,
                   chunk_size=chunk_size, resume=resume, retry_failed=retry_failed,
                   checkpoint=checkpoint, local_options=local_options, run_id=run_id)
    if not wait:
        return RunHandle(lambda handle: _run(wf, input_set, Path(output), progress=False,
                                             handle=handle, **options))
    return _run(wf, input_set, Path(output), progress=progress, **options)


def run_inputs(workflow: Workflow, inputs: Any, output: Path, resume: bool) -> InputSet:
    """``inputs`` resolved for a run of ``workflow`` into ``output`` (``run`` and ``plan``
    alike): the output directory left out, fingerprints read only where
    :func:`fingerprints_needed` says so; an :class:`InputSet` is taken as it is."""
    if isinstance(inputs, InputSet):
        return inputs
    return resolve_inputs(inputs, exclude=output,
                          defer_fingerprint=not fingerprints_needed(workflow, output, resume))


def fingerprints_needed(workflow: Workflow, output: Path, resume: bool) -> bool:
    """Whether a run must read its inputs' fingerprints before it starts.

    It must when it resumes or retries into an ``output`` that holds records (to compare
    them with those), and when the workflow has an aggregate node (its partials are
    combined by item at the end). A first run need not: its tasks read each item's
    fingerprint where they read the item (in parallel, on the workers), and the records
    carry it to the next run.
    """
    if any(get_op(n.op).kind == "aggregate" for n in workflow.nodes):
        return True
    return resume and bool(record_parts(output / config.get("state-dir")))


def _run(wf: Workflow, input_set: InputSet, output: Path, *, run_id: str | None = None,
         **options: Any) -> RunResult:
    """The run, holding its output directory's lock (one run per output directory),
    in a state directory that is not a symlink."""
    output.mkdir(parents=True, exist_ok=True)
    check_state_dir(output, config.get("state-dir"))  # never state through a symlink
    run_id = run_id or new_run_id()
    with OutputLock(output, run_id):
        return _run_locked(wf, input_set, output, run_id=run_id, **options)


def _run_locked(wf: Workflow, input_set: InputSet, output: Path, *, client, cluster,
                scheduler_file, chunk_size, resume, retry_failed, checkpoint, progress,
                local_options, handle: RunHandle | None = None, run_id: str) -> RunResult:
    start = time.perf_counter()
    state_dir, run_dir = _prepare_run_dir(output, run_id, wf, input_set)
    tasks = node_tasks(wf)
    for leftover in find_temporaries(output):
        logger.info("removing a temporary file left by an interrupted run: %s", leftover)
        leftover.unlink(missing_ok=True)
    ctx = RunContext(run_id=run_id, run_dir=os.fspath(run_dir), output_dir=os.fspath(output),
                     state_dir=os.fspath(state_dir), workflow=wf.name, checkpoint=checkpoint)
    read_cpu = time.thread_time()
    if resume or retry_failed:
        previous = load_done(state_dir)
        read_cpu = time.thread_time() - read_cpu  # the checkpoint's cost to a resume
    else:
        previous, read_cpu = Checkpoint(), 0.0
    to_run, already_done = select_items(input_set.items, tasks, previous,
                                        retry_failed=retry_failed)
    result = RunResult(run_id=run_id, run_dir=run_dir, output_dir=output, workflow=wf.name,
                       items=len(input_set.items), executed=len(to_run),
                       already_done=already_done)
    result.own_cpu_s["checkpoint"] += read_cpu
    show = sys.stderr.isatty() if progress is None else progress
    if show is None or config.get("runtime.progress") is False:
        show = False
    with EventLog(run_dir / "events.jsonl") as events:
        events.emit("run_started", run_id=run_id, workflow=wf.name, items=len(input_set.items),
                    to_run=len(to_run), already_done=already_done,
                    corrupt_parts=[str(p) for p in previous.corrupt_parts])
        bar = _Progress(total=len(to_run), show=bool(show))
        if handle is not None:
            bar.listeners.append(handle._on_progress)
            handle._begin(result)
        try:
            with connect(client, cluster=cluster, scheduler_file=scheduler_file,
                         local_options=local_options) as c:
                result.dashboard = dashboard_link(c)
                if handle is not None:
                    handle.dashboard = result.dashboard
                nthreads = c.nthreads()
                n_threads = sum(nthreads.values()) or 1
                if not nthreads:  # not an error: queued batch jobs, an adaptive cluster
                    address = c.scheduler.address
                    logger.warning("no worker is connected to the scheduler at %s yet: the "
                                   "run waits for workers to join", address)
                    events.emit("waiting_for_workers", scheduler=address)
                # workers advertise MEMORY; items are estimated from their headers, the
                # oversize ones tiled or refused, chunks cut to fit (dagflow.runtime.plan)
                batch = prepare_batch(wf, tasks, to_run, prepare_cluster(c, wf),
                                      items=len(input_set.items), already_done=already_done,
                                      chunk_size=config.resolve(chunk_size, "chunk-size"),
                                      output=output,
                                      client=c)
                tasks, to_run = batch.tasks, batch.items
                result.chunk_size, result.chunks = batch.chunk_size, batch.plan.chunks
                events.emit("batch_planned", chunks=batch.plan.chunks,
                            chunk_size=batch.chunk_size, tiled=len(batch.tiled),
                            refused=len(batch.refused), peak_task=batch.plan.peak_task,
                            budget=batch.plan.budget_min, estimate_s=batch.plan.duration_s)
                runner = _Runner(c, tasks, ctx, result, events, bar)
                runner.threads = n_threads
                batch.attach(runner)
                if config.resolve(chunk_size, "chunk-size") == "auto":
                    runner.taper_threads = n_threads
                monitor_cpu = time.thread_time()
                hooks.run_started(c, ctx, tasks, items=len(to_run), batch_plan=batch.plan)
                if hooks.enabled():
                    result.own_cpu_s["monitoring"] += time.thread_time() - monitor_cpu
                if to_run:
                    runner.run(to_run, result.chunk_size)
                for summary in batch.settle_oversize(ctx, c, runner):
                    runner._absorb(summary)
                result.tiled = len(batch.tiled)
                if any(t.kind == "aggregate" for t in tasks.values()):
                    runner.reduce_aggregates(frozenset(i["key"] for i in input_set.items))
                result.duration_s = time.perf_counter() - start
                monitor_cpu = time.thread_time()
                plugin_cpu = hooks.run_finished(c, ctx, result)
                if hooks.enabled():
                    result.own_cpu_s["monitoring"] += plugin_cpu + time.thread_time() \
                        - monitor_cpu
                result.estimate = compare(result, batch.plan, run_dir)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                signals.stopping()  # arrived: the cleanup that follows is not to be cut
            events.emit("run_interrupted", error=repr(exc))
            raise
        finally:
            bar.close()
        # bad inputs are failures: a run without any has no records to search
        result.quarantined = write_quarantine(run_dir) if result.failed else 0
        result.duration_s = time.perf_counter() - start
        atomic_write(run_dir / "summary.json", result.to_json().encode())
        events.emit("run_finished", succeeded=result.succeeded, failed=result.failed,
                    skipped=result.skipped, duration_s=result.duration_s)
    return result


class RunHandle:
    """A run going on in the background (``dagflow.run(..., wait=False)``).

    The notebook stays usable; :meth:`result` waits for the :class:`RunResult`.
    """

    def __init__(self, target: Callable[[RunHandle], RunResult]) -> None:
        self.done_items = 0
        self.failed_items = 0
        self.dashboard: str | None = None
        #: Items this run executes (known once the run has compared inputs and records).
        self.total_items: int | None = None
        self.run_id: str | None = None
        self.run_dir: Path | None = None
        self.started = time.time()
        self._result: RunResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(target,), daemon=True,
                                        name="dagflow-run")
        self._thread.start()

    def _main(self, target: Callable[[RunHandle], RunResult]) -> None:
        try:
            self._result = target(self)
        except BaseException as exc:
            self._error = exc

    def _on_progress(self, done: int, failed: int) -> None:
        self.done_items, self.failed_items = done, failed

    def _begin(self, result: RunResult) -> None:
        """The run knows what it will execute (called before its cluster connects)."""
        self.total_items = result.executed
        self.run_id, self.run_dir = result.run_id, result.run_dir

    def done(self) -> bool:
        """Whether the run has finished (or failed)."""
        return not self._thread.is_alive()

    def result(self, timeout: float | None = None) -> RunResult:
        """Wait for the run and return its result (or raise its error)."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the run is still going after {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def exception(self) -> BaseException | None:
        """The error the run raised, or ``None`` (while it runs, or when it finished)."""
        return None if self._thread.is_alive() else self._error

    def __repr__(self) -> str:
        state = "finished" if self.done() else "running"
        return f"<RunHandle {state}: {self.done_items} items done, {self.failed_items} failed>"

    def _repr_html_(self) -> str:
        from dagflow.notebook import handle_html

        return handle_html(self)

    def _ipython_display_(self) -> None:
        # In Jupyter: a progress bar that keeps updating until the run ends
        from dagflow.notebook import display_handle

        display_handle(self)
