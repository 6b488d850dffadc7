"""``dagflow.run``: validate, plan, submit in windows, record, summarise.

The only layer (with :mod:`dagflow.runtime.cluster`) that talks to a live cluster. What
runs is decided before anything is submitted (:mod:`dagflow.runtime.selection`, which
items and nodes; :mod:`dagflow.runtime.plan`, the chunks and their resources); the
:class:`Runner` then runs it: it submits what its :class:`~dagflow.runtime.loop.RunLoop`
says, as compiled graphs, and feeds the loop every outcome: a chunk finished (its
records part written by the workers), a chunk whose task failed as a whole, a worker
that died (the scheduler's ``remove-worker`` events, and the run's in-flight table of
which item each task was on, :mod:`dagflow.recovery.inflight`). The client never
touches pixels.

A worker that dies under an item (a segfault, ``os._exit``, its nanny killing it for
memory) costs one worker's life in its chunk, which goes on without that item, and one
more when the item runs alone at the end: only then is it recorded, failed at the node
that was running (``lost_worker``, or ``resource`` for memory).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.config
from distributed import Client, Future
from distributed.scheduler import KilledWorker

from dagflow import config
from dagflow.compile import NodeTask, RunContext, compile_chunks, layer_name, node_tasks
from dagflow.exceptions import CircuitOpenError, StorageError
from dagflow.execute import ChunkSummary, NodeTaskError, item_summary, reduce_aggregate
from dagflow.inputs import InputSet, fill_fingerprint
from dagflow.io.atomic import atomic_write, find_temporaries
from dagflow.monitor import hooks
from dagflow.recovery import faults
from dagflow.recovery.breaker import BreakerSettings, CircuitBreaker
from dagflow.recovery.checkpoint import Checkpoint, load_done
from dagflow.recovery.events import EventLog
from dagflow.recovery.inflight import TABLE, ItemSuspected, create_table, read_cell
from dagflow.recovery.records import new_record
from dagflow.runtime import signals
from dagflow.runtime.capacity import prepare_cluster
from dagflow.runtime.cluster import connect, dashboard_link, resolve_local_sizes
from dagflow.runtime.handle import RunHandle
from dagflow.runtime.loop import Conviction, RunLoop
from dagflow.runtime.plan import (
    Batch,
    check_chunk_size,
    compare,
    prepare_batch,
    refuse,
    run_tiled_item,
)
from dagflow.runtime.result import RunResult
from dagflow.runtime.selection import (
    WorkflowLike,
    fingerprints_needed,
    load_workflow,
    run_inputs,
    select_items,
)
from dagflow.workflow import Workflow

__all__ = ["RunHandle", "Runner", "fingerprints_needed", "load_workflow", "new_run_id", "run",
           "run_inputs", "select_items"]

logger = logging.getLogger(__name__)

#: Seconds a conviction waits for the nanny's word that it killed the worker for memory
#: (its event and the worker's removal reach the client by different ways).
MEMORY_WORD_S = 0.5


def new_run_id() -> str:
    """A run id that sorts by start time: ``YYYYmmdd-HHMMSS-xxxxxx``."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def _chunk_priority(key: tuple[str, int]) -> int:
    """Dask priority of a node's task for a chunk: earlier chunks first."""
    return -int(key[1])


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


class Runner:
    """Runs a planned batch on a cluster: the :class:`RunLoop`'s hands (see the module
    docstring).

    Parameters
    ----------
    client
        The run's client.
    batch
        What planning decided (:func:`~dagflow.runtime.plan.prepare_batch`): the nodes,
        the chunks, their annotations, the oversize items.
    ctx
        The run's context.
    result, events, progress
        Where the outcome is counted, logged and shown.
    threads
        The cluster's worker threads (the first submission gives each two chunks).
    """

    def __init__(self, client: Client, batch: Batch, ctx: RunContext, result: RunResult,
                 events: EventLog, progress: _Progress, *, threads: int = 1) -> None:
        self.client = client
        self.batch = batch
        self.tasks: dict[str, NodeTask] = batch.tasks
        self.ctx = ctx
        self.result = result
        self.events = events
        self.progress = progress
        self.token = secrets.token_hex(4)
        retries = int(config.get("runtime.dask-retries"))
        # chunks run in the order they were cut (the batch's tapered end last)
        self.annotations = batch.annotations(
            {nid: {"retries": retries, "priority": _chunk_priority} for nid in self.tasks})
        self.node_of = {layer_name(nid, self.token): nid for nid in self.tasks}
        self.by_position = {t.position: nid for nid, t in self.tasks.items()}
        settings = BreakerSettings.from_config(config.get("breaker"))
        self.loop = RunLoop(
            batch.run_chunks(), {nid: CircuitBreaker(nid, settings) for nid in self.tasks},
            window=int(config.get("runtime.window")), first=2 * max(1, threads),
            graph_items=int(config.get("runtime.graph-items")),
            alone_tries=int(config.get("runtime.lost-worker-retries")))
        self.stride = max(1, ctx.nodes)
        self.table_chunks = 0  # chunks the in-flight table holds
        self.futures: dict[int, Future] = {}
        self.outcomes: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        #: Workers their nanny killed for memory, with their last memory use.
        self.memory_killed: dict[str, int] = {}
        self.deaths = 0
        self.told = False  # the workers were told of breakers (a plugin to remove)

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        """Submit, wait, record, until the loop is done; then the items planning kept
        out of the graph (refused, tiled) and the aggregates."""
        loop = self.loop
        if loop.pending:
            with self._watching_workers():
                self._submit_next()
                while not loop.done():
                    wait = loop.seconds_to_probe()
                    try:  # awake every second: a stop signal is taken at once
                        kind, payload = self.outcomes.get(
                            timeout=1.0 if wait is None else min(wait, 1.0))
                    except queue.Empty:
                        if wait is None or wait > 1.0:
                            continue
                        kind, payload = "probe", None  # a breaker's cool-down is over
                    if kind == "done":
                        self._completed(payload)
                    elif kind == "death":
                        self._worker_died(*payload)
                    self._cancel_dropped()
                    self._breakers_changed()
                    self._submit_next()
        if loop.stopped is not None:
            self._stop()
        for item, node, peak, limit, why in self.batch.refused:
            self._absorb(refuse(self.ctx, self.tasks, item, node, peak, limit, why,
                                loop.new_index()))
        for item in self.batch.tiled:
            logger.info("processing %s tiled (larger than any worker's budget)", item["path"])
            self._absorb(run_tiled_item(self.ctx, self.tasks, item, self.client,
                                        loop.new_index()))
        self.result.tiled = len(self.batch.tiled)

    def _submit_next(self) -> None:
        graphs = self.loop.next_graphs()
        self._breakers_changed()  # a probe goes out once the workers let it through
        if graphs and self.loop.next_index > self.table_chunks:
            self.table_chunks = 2 * self.loop.next_index + 64
            create_table(self.ctx.run_dir, self.table_chunks * self.stride)
        for chunks in graphs:
            compiled = compile_chunks(self.tasks, self.ctx, chunks, token=self.token,
                                      annotations=self.annotations,
                                      chunk_annotations=self.batch.chunk_annotations)
            futures = self.client.get(compiled.graph, compiled.commit_keys, sync=False)
            for future in futures:
                self.futures[future.key[1]] = future
                future.add_done_callback(lambda f: self.outcomes.put(("done", f)))
            self.events.emit("chunks_submitted", chunks=[c.index for c in chunks],
                             items=sum(len(c) for c in chunks))

    def _completed(self, future: Future) -> None:
        index = future.key[1]
        if self.futures.get(index) is not future:
            return  # cancelled by the loop meanwhile
        del self.futures[index]
        try:
            summary = future.result()
        except CancelledError:
            if index in self.loop.running:
                # the client was closed or the run cancelled: an interruption, not a
                # failure of these items; the next run picks them up
                raise
            return
        except StorageError:
            raise  # nothing more can be recorded: the run stops (see _run)
        except KilledWorker as exc:
            self._killed(index, exc)
            return
        except ItemSuspected as exc:  # run again after its worker died on that item
            self._lost(index, exc.item_id, self.by_position.get(exc.position), "a worker")
            return
        except Exception as exc:
            self._failed(index, exc)
            return
        finally:
            future.release()
        if self.loop.finished(index, summary) is not None:
            self._absorb(summary)

    def _absorb(self, summary: ChunkSummary) -> None:
        if summary.stuck:
            self._replace(summary.stuck)
        failed = self.result.add(summary)
        self.events.emit("chunk_finished", chunk=summary.index, items=summary.items,
                         failed=failed, part=summary.part)
        held = sum(1 for s in summary.item_status.values() if s == "not_run")
        self.progress.update(summary.items - held, failed)
        if summary.part is not None:
            faults.reached("after-part", os.path.basename(summary.part))

    def _failed(self, index: int, exc: BaseException) -> None:
        """A chunk's task failed as a whole, not by one item's error."""
        chunk = self.loop.running.get(index)
        if chunk is None:
            return
        logger.warning("chunk %d failed as a whole (%s: %s)", index, type(exc).__name__, exc)
        self.events.emit("chunk_split" if len(chunk) > 1 else "chunk_failed", chunk=index,
                         error=repr(exc)[:500])
        single = self.loop.failed(index)
        if single is not None:
            # the node whose task raised, when it says so; else the first
            node = exc.node if isinstance(exc, NodeTaskError) else next(iter(self.tasks))
            message = f"the task for this item failed as a whole: {type(exc).__name__}: {exc}"
            self._record_item(single.items[0], node, "bug", type(exc).__name__, message,
                              attempts=1)

    def _replace(self, workers: Iterable[str]) -> None:
        """Have workers that hold threads of timed-out items replaced, now that the
        chunk's records are in (:mod:`dagflow.recovery.recycle`)."""
        from dagflow.recovery.recycle import replace_worker

        live = set(self.client.nthreads())
        for worker in sorted(set(workers) & live):
            self.events.emit("worker_replaced", worker=worker,
                             why="it holds threads of timed-out items")
            self.client.run(replace_worker, workers=[worker], wait=False)

    # ------------------------------------------------------------------ worker deaths

    @contextlib.contextmanager
    def _watching_workers(self) -> Iterator[None]:
        """Hear of every worker that leaves (the scheduler's ``remove-worker`` events)
        and of every worker a nanny kills for memory, while the block runs."""
        def removed(event: tuple[float, Any]) -> None:
            msg = event[1]
            if isinstance(msg, dict) and msg.get("action") == "remove-worker" \
                    and not msg.get("expected"):
                self.outcomes.put(("death", (msg.get("worker"),
                                             list(msg.get("processing-tasks") or ()))))

        def memory(event: tuple[float, Any]) -> None:
            msg = event[1]
            if isinstance(msg, dict) and msg.get("worker"):
                self.memory_killed[msg["worker"]] = int(msg.get("rss") or 0)

        topics = {"all": removed, "worker-restart-memory": memory}
        for topic, handler in topics.items():
            self.client.subscribe_topic(topic, handler)
        try:
            yield
        finally:
            for topic in topics:
                with contextlib.suppress(Exception):
                    self.client.unsubscribe_topic(topic)

    def _worker_died(self, worker: str | None, keys: list[Any]) -> None:
        """A worker left unexpectedly: the chunks it was running learn which item."""
        if not worker:
            return
        self.deaths += 1
        running = []
        for key in keys:
            if not (isinstance(key, list | tuple) and len(key) == 2):
                continue
            node = self.node_of.get(key[0])
            index = key[1]
            if node is None or index not in self.loop.running:
                continue  # another layer (the commit), another run, a chunk given up
            item = read_cell(self.ctx.run_dir,
                             index * self.stride + self.tasks[node].position)
            if item is not None or index in self.loop.alone:
                running.append((index, item, node))
        self.events.emit("worker_died", worker=worker, running=running)
        for index, item, node in running:
            # the item running alone dies with its worker, whichever cell it left
            self._lost(index, item, node, worker)

    def _killed(self, index: int, exc: KilledWorker) -> None:
        """Dask gave up on a chunk's task: its workers kept dying under it."""
        worker = getattr(getattr(exc, "last_worker", None), "address", None) or "a worker"
        task = getattr(exc, "task", None)
        node = self.node_of.get(task[0]) if isinstance(task, tuple) else None
        item = read_cell(self.ctx.run_dir, index * self.stride + self.tasks[node].position) \
            if node is not None else None
        chunk = self.loop.running.get(index)
        if chunk is not None and item is None and len(chunk) == 1:
            item = chunk.items[0]["item_id"]
        if item is None:
            self._failed(index, exc)  # which item is unknown: split the chunk
            return
        self._lost(index, item, node, worker)

    def _lost(self, index: int, item_id: int | None, node: str | None, worker: str) -> None:
        chunk = self.loop.running.get(index)
        if chunk is None:
            return
        alone = index in self.loop.alone
        where = f"running node {node!r}" if node else "running"
        company = "alone" if alone else f"in chunk {index} of {len(chunk)} items"
        memory = worker in self.memory_killed
        how = "was killed by its nanny for exceeding its memory limit" if memory else "died"
        why = f"KilledWorker: worker {worker} {how} {where} this item, {company}"
        conviction = self.loop.worker_lost(index, item_id, node, why=why, memory=memory)
        if index not in self.loop.running and not alone:
            self.events.emit("suspect", item=item_id, chunk=index, node=node, worker=worker)
        if conviction is not None:
            self._convict(conviction, worker)

    def _convict(self, conviction: Conviction, worker: str) -> None:
        """Record an item that killed its worker while it ran alone."""
        deadline = time.monotonic() + MEMORY_WORD_S
        while worker not in self.memory_killed and time.monotonic() < deadline:
            time.sleep(0.05)  # the nanny's event may trail the worker's removal
        memory = worker in self.memory_killed
        suspect = conviction.suspect
        node = conviction.node or next(iter(self.tasks))
        if memory:
            rss = self.memory_killed[worker]
            suspect.log[-1]["error"] = suspect.log[-1]["error"].replace(
                " died ", " was killed by its nanny for exceeding its memory limit ")
            message = (f"the worker running node {node!r} on this item, alone, was killed by "
                       f"its nanny for exceeding its memory limit (it used {rss:,} bytes)")
        else:
            message = (f"the worker running node {node!r} on this item, alone, died "
                       f"({len(suspect.log)} worker(s) lost with it): a crash in the op "
                       "or what it calls (a segfault, an exit)")
        self.events.emit("convicted", item=suspect.item["item_id"], node=node,
                         error_class="resource" if memory else "lost_worker")
        self._record_item(suspect.item, node, "resource" if memory else "lost_worker",
                          "KilledWorker", message, attempts=len(suspect.log),
                          log=suspect.log, worker=worker)

    def _record_item(self, item: Mapping[str, Any], node: str, error_class: str,
                     error_type: str, message: str, *, attempts: int,
                     log: list[dict[str, Any]] | None = None, worker: str | None = None
                     ) -> None:
        """Records, made here, of an item whose task failed as a whole: failed at
        ``node``, ``upstream_failed`` after it (nothing is claimed of the nodes before
        it: their work died with the task)."""
        fill_fingerprint(item)  # type: ignore[arg-type]  # a first run defers it to here
        blamed = {node}
        for nid, task in self.tasks.items():
            if any(p in blamed for p in task.parents):
                blamed.add(nid)
        records = [new_record(self.ctx, task, item, "failed" if nid == node else
                              "upstream_failed", worker=worker,
                              error_class=error_class if nid == node else None,
                              error_type=error_type if nid == node else None,
                              error_message=message[:2000] if nid == node else None,
                              attempts=attempts if nid == node else 0, started=time.time(),
                              attempt_log=log if nid == node else None)
                   for nid, task in self.tasks.items() if nid in blamed]
        self._absorb(item_summary(self.ctx, self.loop.new_index(), item, records, "failed"))

    # ------------------------------------------------------------------ cancellation

    def _cancel_dropped(self) -> None:
        """Cancel the chunks the loop took apart or gave up."""
        if len(self.futures) == len(self.loop.running):
            return
        dropped = [i for i in self.futures if i not in self.loop.running]
        for index in dropped:
            # released, its tasks are forgotten: those not started never run (the client
            # does not wait for the scheduler, as a cancel would)
            self.futures.pop(index).release()
        if dropped:
            self.events.emit("chunks_cancelled", chunks=dropped)

    # ------------------------------------------------------------------ breakers

    def _breakers_changed(self) -> None:
        changed, self.loop.changed = self.loop.changed, []
        recount, self.loop.recount = self.loop.recount, False
        if not changed and not recount:
            return
        for breaker in changed:
            why = breaker.transitions[-1][1] if breaker.transitions else None
            self.events.emit("breaker", node=breaker.name, state=breaker.state, why=why)
            hooks.breaker_changed(self.client, self.ctx, breaker.name, breaker.state)
        self._tell_workers({b.name for b in self.loop.breakers.values() if b.state == "open"})

    def _tell_workers(self, nodes: set[str]) -> None:
        """Every worker, now and later: these nodes are open, the others may be tried
        again (their counts of consecutive failures start afresh)."""
        from dagflow.runtime.breakers import OpenBreakers

        self.told = True
        try:
            self.client.register_plugin(OpenBreakers(self.ctx.run_id, nodes))
        except Exception as exc:  # the chunks in flight finish; nothing new is sent
            logger.warning("could not tell the workers about the open breakers: %s", exc)

    def _stop(self) -> None:
        breaker = self.loop.stopped
        assert breaker is not None
        error = CircuitOpenError(breaker.name, list(breaker.last_errors))
        self.result.stopped = str(error)
        self.events.emit("run_stopped", node=breaker.name, reason=str(error),
                         not_run=len(self.loop.not_run()))

    def finish(self) -> None:
        """Forget the run on the cluster: the workers' open breakers, its leftovers."""
        from dagflow.runtime.breakers import plugin_name

        self.result.not_run = len(self.loop.not_run())
        if self.told:
            with contextlib.suppress(Exception):
                self._tell_workers(set())
                self.client.unregister_worker_plugin(plugin_name(self.ctx.run_id))

    # ------------------------------------------------------------------ aggregates

    def reduce_aggregates(self, all_item_keys: frozenset[str]) -> None:
        """Combine each aggregate node's partials into its output, unless nothing it
        depends on changed since the last time (see :func:`_reduced_before`)."""
        for t in self.tasks.values():
            if t.kind != "aggregate":
                continue
            digest = _items_digest(t.key, all_item_keys)
            unchanged = None if self.result.nodes.get(t.id) else \
                _reduced_before(self.ctx, t.id, digest)
            if unchanged is not None:
                self.result.aggregates[t.id] = unchanged
                self.events.emit("aggregate_unchanged", node=t.id, path=unchanged)
                continue
            key = layer_name(f"{t.id}-reduce", self.token)
            future = self.client.submit(reduce_aggregate, t, self.ctx, all_item_keys, key=key,
                                        pure=False)
            try:
                path = self.result.aggregates[t.id] = future.result()
                self.events.emit("aggregate_written", node=t.id, path=path)
            except Exception as exc:
                message = f"aggregate {t.id!r} failed: {type(exc).__name__}: {exc}"
                self.result.errors.append(message)
                self.events.emit("aggregate_failed", node=t.id, error=message)
            else:
                _note_reduced(self.ctx, t.id, digest, path)


def _items_digest(node_key: str, item_keys: frozenset[str]) -> str:
    digest = hashlib.blake2b(node_key.encode(), digest_size=16)
    for key in sorted(k for k in item_keys if k):
        digest.update(key.encode())
    return digest.hexdigest()


def _reduced_path(ctx: RunContext, node: str) -> Path:
    return Path(ctx.state_dir, "reduced", f"{node}.json")


def _reduced_before(ctx: RunContext, node: str, digest: str) -> str | None:
    """The output of aggregate ``node`` when an earlier run reduced it from the same
    items with the same node key and it is still as written (``None`` otherwise): a run
    that sent no item through the node need not write it again."""
    from dagflow.recovery.checkpoint import OutputProof, check_output

    try:
        noted = json.loads(_reduced_path(ctx, node).read_text())
    except (OSError, ValueError):
        return None
    if noted.get("digest") != digest or not noted.get("path"):
        return None
    proof = OutputProof(noted["path"], noted.get("size"), noted.get("mtime_ns"))
    if check_output(ctx.output_dir, proof) is not None:
        return None
    return os.path.join(ctx.output_dir, noted["path"])


def _note_reduced(ctx: RunContext, node: str, digest: str, path: str) -> None:
    from dagflow.execute import output_proof

    rel, size, mtime, _ = output_proof(ctx, path)
    atomic_write(_reduced_path(ctx, node), json.dumps(
        {"digest": digest, "path": rel, "size": size, "mtime_ns": mtime}).encode())


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
    wf = load_workflow(workflow)
    check_chunk_size(chunk_size)
    if client is None and cluster in (None, "local") and scheduler_file is None:
        resolve_local_sizes(local_options)  # the embedded cluster's, before anything
    output = Path(os.path.abspath(output))
    input_set = run_inputs(wf, inputs, output, resume or retry_failed)
    options = dict(client=client, cluster=cluster, scheduler_file=scheduler_file,
                   chunk_size=chunk_size, resume=resume, retry_failed=retry_failed,
                   checkpoint=checkpoint, local_options=local_options, run_id=run_id)
    if not wait:
        return RunHandle(lambda handle: _run(wf, input_set, output, progress=False,
                                             handle=handle, **options))
    return _run(wf, input_set, output, progress=progress, **options)


def _local(client: Any, cluster: Any, scheduler_file: Any) -> bool:
    """Whether the run's cluster is a ``LocalCluster`` in this process: the embedded one,
    or one the caller started and passed as its client's."""
    from distributed import LocalCluster

    if client is not None:
        return isinstance(getattr(client, "cluster", None), LocalCluster)
    return (cluster in (None, "local") and scheduler_file is None
            and not (cluster is None and dask.config.get("scheduler-address", None)))


@contextlib.contextmanager
def _keep_nannies() -> Iterator[None]:
    """A local cluster keeps every nanny however long its worker takes to come back.

    A ``LocalCluster`` closes a nanny whose worker has not registered again
    ``distributed.deploy.lost-worker-timeout`` (15 s) after it left: a worker killed
    again and again by a poison item, restarting slowly on a busy machine, lost its
    nanny for good, and the run waited for ever on a cluster without workers.
    """
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "30 days"}):
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


def _run(wf: Workflow, input_set: InputSet, output: Path, *, client, cluster, scheduler_file,
         chunk_size, resume, retry_failed, checkpoint, progress, local_options,
         handle: RunHandle | None = None, run_id: str | None = None) -> RunResult:
    start = time.perf_counter()
    run_id = run_id or new_run_id()
    try:
        output.mkdir(parents=True, exist_ok=True)
        state_dir, run_dir = _prepare_run_dir(output, run_id, wf, input_set)
        events = EventLog(run_dir / "events.jsonl")
    except OSError as exc:
        raise StorageError.from_os_error(exc, output) from None
    tasks = node_tasks(wf)
    for leftover in find_temporaries(output):
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
    keep = _keep_nannies() if _local(client, cluster, scheduler_file) \
        else contextlib.nullcontext()
    with events, keep:
        events.emit("run_started", run_id=run_id, workflow=wf.name, items=len(input_set.items),
                    to_run=len(to_run), already_done=already_done,
                    corrupt_parts=[str(p) for p in previous.corrupt_parts])
        bar = _Progress(total=len(to_run), show=bool(show))
        if handle is not None:
            bar.listeners.append(handle._on_progress)
            handle._begin(result)
        runner: Runner | None = None
        try:
            with _cluster_closed_quietly(connect(client, cluster=cluster,
                                                 scheduler_file=scheduler_file,
                                                 local_options=local_options), events) as c:
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
            _finish(runner, result, output, run_dir, events, start)
        except OSError as exc:
            raise StorageError.from_os_error(exc, run_dir) from None
    return result


def _run_on(c: Client, wf: Workflow, tasks: dict[str, NodeTask], ctx: RunContext,
            to_run: list[Mapping[str, Any]], input_set: InputSet, result: RunResult,
            events: EventLog, bar: _Progress, *, chunk_size: Any, already_done: int,
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
                          output=ctx.output_dir, client=c)
    result.chunk_size, result.chunks = batch.chunk_size, len(batch.run_chunks())
    events.emit("batch_planned", chunks=batch.plan.chunks, chunk_size=batch.chunk_size,
                tiled=len(batch.tiled), refused=len(batch.refused),
                peak_task=batch.plan.peak_task, budget=batch.plan.budget_min,
                estimate_s=batch.plan.duration_s)
    runner = Runner(c, batch, ctx, result, events, bar,
                    threads=sum(nthreads.values()) or 1)
    monitor_cpu = time.thread_time()
    hooks.run_started(c, ctx, batch.tasks, items=len(batch.items))
    if hooks.enabled():
        result.own_cpu_s["monitoring"] += time.thread_time() - monitor_cpu
    try:
        runner.run()
    finally:
        runner.finish()
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
    if runner is not None and runner.deaths:
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
