"""The runner: runs a planned batch on a cluster, as its :class:`RunLoop` says.

It compiles and submits the graphs the loop hands out (:mod:`dagflow.compile`), turns
each outcome into a call on the loop (a chunk finished: its records part is written and
its summary counted; a chunk's task failed as a whole; a worker died,
:mod:`dagflow.runtime.deaths`), cancels what the loop gives up, tells the workers when a
breaker opens or closes (:mod:`dagflow.runtime.breakers`), has workers that hold threads
of timed-out items replaced (:mod:`dagflow.recovery.recycle`), records what no task can
(refused, tiled, failed-as-a-whole items), and reduces the aggregates.
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

from distributed import Client, Future
from distributed.scheduler import KilledWorker

from dagflow import config
from dagflow.compile import NodeTask, RunContext, compile_chunks, layer_name
from dagflow.exceptions import CircuitOpenError, StorageError
from dagflow.execute import ChunkSummary, NodeTaskError, item_summary, reduce_aggregate
from dagflow.inputs import fill_fingerprint
from dagflow.io.atomic import atomic_write
from dagflow.monitor import hooks
from dagflow.recovery import faults
from dagflow.recovery.breaker import BreakerSettings, CircuitBreaker
from dagflow.recovery.events import EventLog
from dagflow.recovery.inflight import ItemSuspected, create_table
from dagflow.recovery.records import new_record
from dagflow.runtime.deaths import Deaths
from dagflow.runtime.loop import RunLoop
from dagflow.runtime.plan import Batch, refuse, run_tiled_item
from dagflow.runtime.result import RunResult

__all__ = ["Progress", "Runner"]

logger = logging.getLogger(__name__)


def _chunk_priority(key: tuple[str, int]) -> int:
    """Dask priority of a node's task for a chunk: earlier chunks first."""
    return -int(key[1])


@dataclass
class Progress:
    """The run's progress bar on stderr (optional) and its listeners (a notebook's
    handle)."""

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
        The cluster's worker threads (the first submission gives each two chunks, and
        one more right after them).
    """

    def __init__(self, client: Client, batch: Batch, ctx: RunContext, result: RunResult,
                 events: EventLog, progress: Progress, *, threads: int = 1) -> None:
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
        settings = BreakerSettings.from_config(config.get("breaker"))
        self.loop = RunLoop(
            batch.run_chunks(), {nid: CircuitBreaker(nid, settings) for nid in self.tasks},
            window=int(config.get("runtime.window")), first=2 * max(1, threads),
            reserve=max(1, threads),
            graph_items=int(config.get("runtime.graph-items")),
            alone_tries=int(config.get("runtime.lost-worker-retries")))
        self.deaths = Deaths(ctx, self.tasks, self.token, self.loop, events, self.record_item)
        self.stride = max(1, ctx.nodes)
        self.table_chunks = 0  # chunks the in-flight table holds
        self.futures: dict[int, Future] = {}
        self.outcomes: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.told = False  # the workers were told of breakers (a plugin to remove)
        #: Whether a chunk's records part was written to a store by a worker that does
        #: not see the run's local copy (:func:`dagflow.io.stage.part_location`).
        self.parts_on_store = False

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        """Submit, wait, record, until the loop is done; then the items planning kept
        out of the graph (refused, tiled) and the aggregates."""
        loop = self.loop
        if loop.pending:
            with self.deaths.heard(self.client, self.outcomes), self._released_on_error():
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
                        self.deaths.worker_died(*payload)
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

    @contextlib.contextmanager
    def _released_on_error(self) -> Iterator[None]:
        """A run that stops on an error (its storage failing, an interruption) lets go
        of its chunks in flight, so that the cluster does not go on with them."""
        try:
            yield
        except BaseException:
            for future in self.futures.values():
                with contextlib.suppress(Exception):
                    future.release()
            self.futures.clear()
            raise

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
            if not self.deaths.killed(index, exc):
                self._failed(index, exc)  # which item is unknown: split the chunk
            return
        except ItemSuspected as exc:  # run again after its worker died on that item
            self.deaths.suspected(index, exc)
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
            self.parts_on_store = self.parts_on_store or "://" in summary.part
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
            self.record_item(single.items[0], node, "bug", type(exc).__name__, message,
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

    def record_item(self, item: Mapping[str, Any], node: str, error_class: str,
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
