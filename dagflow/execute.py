"""What runs inside a task on a worker: one node over one chunk of items.

Each task takes the chunk's state from its parent nodes, runs its op on every item that
is still alive, and returns a new :class:`ChunkState`. One item's failure is recorded
for that item and node; its descendants record ``upstream_failed`` and every other item
goes on. A false ``when:`` condition records ``skipped`` for the node and its
descendants. Each op runs on its node's device through :func:`dagflow.ops.dispatch.call`;
the record says where it ran (``device``: ``cpu``, ``gpu``, or ``cpu-fallback`` with
``degraded`` set when a GPU node had to use the CPU). The last task of a chunk
(:func:`commit_chunk`) writes the chunk's records, with the metrics' columns, as one
Parquet part and returns only counts and failures to the client, so pixels never travel
to the client.

Three things the client decided reach the loop: an item may name nodes it skips (done by
an earlier run and needed by nothing that runs now: a sink is neither rewritten nor
recorded again); a node whose breaker the client opened runs no further item
(:func:`~dagflow.recovery.breaker.open_nodes`); and a sink's record carries what proves
its output (its path relative to the output root, size, modification time, a digest on
request). Each task also writes which item it is on into the run's in-flight table
(:mod:`dagflow.recovery.inflight`), so that a worker that dies leaves word of the item
it died on, and a task run again after that refuses the item instead of dying again.
An item that overran its node's ``timeout`` leaves its thread running: the worker is
then replaced once the client has the chunk's records (:mod:`dagflow.recovery.recycle`).

This module imports no Dask at import time: it runs on workers and under the
synchronous scheduler alike.
"""

from __future__ import annotations

import collections
import functools
import math
import os
import socket
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagflow.compile.spec import Chunk, NodeTask, RunContext
from dagflow.exceptions import BadInputError, StorageError
from dagflow.image import Image
from dagflow.inputs import fill_fingerprint
from dagflow.io.storage import is_remote, listed_size
from dagflow.monitor import hooks
from dagflow.ops.dispatch import call
from dagflow.recovery import inflight
from dagflow.recovery.breaker import consecutive_failures, counts_against_breaker, open_nodes
from dagflow.recovery.policy import Outcome, retry_after
from dagflow.recovery.records import (
    Record,
    new_record,
    ok_record,
    output_record,
    record_columns,
)
from dagflow.recovery.watch import run_watched

__all__ = ["ChunkState", "ChunkSummary", "NodeTaskError", "commit_chunk", "item_summary",
           "output_proof", "reduce_aggregate", "run_node", "write_chunk"]

_FAILED = frozenset({"failed", "upstream_failed"})

#: Most failed records a chunk sends back to the client (all are in the Parquet part).
MAX_FAILURES_RETURNED = 50


class NodeTaskError(Exception):
    """A node's task failed as a whole (an error outside the per-item guard): the client
    splits the chunk, and records a single item failed at ``node``."""

    def __init__(self, node: str, error: str) -> None:
        self.node, self.error = node, error
        super().__init__(node, error)

    def __str__(self) -> str:
        return f"node {self.node!r}: {self.error}"


@dataclass
class ChunkState:
    """A chunk after one node: images of the items still alive, and every record so far.

    It carries the chunk's items on to the node's children and the commit: only the tasks
    of root nodes get them from the graph, so that a chunk's items are serialised once
    per chunk, not once per node.
    """

    chunk: Chunk
    images: dict[int, Image] = field(default_factory=dict)
    blocked: dict[int, str] = field(default_factory=dict)
    records: dict[str, list[Record]] = field(default_factory=dict)
    #: Workers that hold threads of timed-out items (to be replaced).
    stuck: set[str] = field(default_factory=set)


@dataclass
class ChunkSummary:
    """What the client gets back for a finished chunk."""

    index: int
    items: int
    counts: dict[tuple[str, str], int]
    #: The items that did not succeed, by id: ``failed``, ``not_run`` or ``skipped``.
    item_status: dict[int, str]
    failures: list[Record]
    part: str | None
    duration_s: float
    #: Per node, the seconds its op ran over the chunk's items.
    seconds: dict[str, float] = field(default_factory=dict)
    #: CPU seconds the chunk's commit spent on ``checkpoint`` and ``monitoring``.
    own_cpu_s: dict[str, float] = field(default_factory=dict)
    #: Workers that hold threads of the chunk's timed-out items, still running.
    stuck: frozenset[str] = frozenset()


def _worker_address() -> str | None:
    """The address of the Dask worker running this task (``None`` outside one)."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return None


def _worker_name(address: str | None) -> str:
    return address or f"{socket.gethostname()}:{os.getpid()}"


_STATUS, _DURATION = (Record._fields.index(n) for n in ("status", "duration_s"))


def _condition_fields(image: Image, item: Mapping[str, Any]) -> dict[str, Any]:
    fields = image.describe()
    fields.setdefault("format", item.get("format"))
    return fields


def _sink_dest(ctx: RunContext, task: NodeTask, item: Mapping[str, Any]) -> str:
    from dagflow.io import safe_join
    from dagflow.ops.naming import relative_output

    return os.fspath(safe_join(ctx.output_dir, relative_output(task.params, item, task.id)))


def output_proof(ctx: RunContext, written: Any) -> tuple[str, int | None, int | None,
                                                          str | None]:
    """An output as its record keeps it: its path relative to the output root (as
    given when it lies elsewhere), its size and modification time, and its digest when
    the run asks for one (``ctx.hash_outputs``)."""
    path = os.fspath(written)
    root = ctx.output_dir + os.sep
    rel = path[len(root):] if path.startswith(root) else path
    if is_remote(path):  # an object: its size and ETag
        from dagflow.recovery.checkpoint import object_proof

        return rel, *object_proof(path)
    try:
        st = os.stat(path)
    except OSError:
        return rel, None, None, None
    digest = None
    if ctx.hash_outputs and os.path.isfile(path):
        from dagflow.recovery.checkpoint import output_digest

        digest = output_digest(path)
    return rel, st.st_size, st.st_mtime_ns, digest


def _invoke(task: NodeTask, ctx: RunContext, item: Mapping[str, Any], inputs: list[Any],
            used: dict[str, Any] | None = None) -> Any:
    """Call the node's op on one item, on the node's device (``used`` says where it ran)."""
    spec = task.op_spec
    params = task.op_params
    kind = spec.kind
    if kind == "source":
        path = item["path"]
        if isinstance(path, str) and "://" in path:  # an object: its size as listed tells
            # the reader whether its first request can fetch it whole
            with listed_size(path, item.get("size")):
                return _invoke_source(task, item, (path,), used)
        return _invoke_source(task, item, (path,), used)
    args = (inputs[0], _sink_dest(ctx, task, item)) if kind == "sink" else tuple(inputs)
    if task.device == "cpu":  # resolved on the client: nothing to choose per item
        return spec.func(*args, **params)
    return call(spec, task.device, args, params, used)


def _invoke_source(task: NodeTask, item: Mapping[str, Any], args: tuple[Any, ...],
                   used: dict[str, Any] | None) -> Any:
    """A source op on one item, under the pixel guard of an item planned without its
    header."""
    spec, params = task.op_spec, task.op_params
    if task.guards_pixels:
        guard = item.get("guard_pixels")  # planned without its header: see plan.py
        limit = params.get("max_pixels")
        if guard and (limit is None or guard < limit):
            return _guarded_source(spec, task, args, params, guard, used)
    if task.device == "cpu":
        return spec.func(*args, **params)
    return call(spec, task.device, args, params, used)


def _guarded_source(spec: Any, task: NodeTask, args: tuple[Any, ...], params: dict[str, Any],
                    guard: int, used: dict[str, Any] | None) -> Any:
    """A source op under the pixel limit of an item planned without its header."""
    from dagflow.exceptions import OversizeError

    try:
        return call(spec, task.device, args, {**params, "max_pixels": guard}, used)
    except OversizeError as exc:
        raise OversizeError(
            f"{exc}; this limit is the smallest worker's memory budget over the bytes per "
            "pixel of the largest sampled image (the batch was too large to read every "
            "header before it ran): run again with --retry-failed, and it is planned from "
            "its own header, tiled or refused with its estimate") from None


def run_node(task: NodeTask, ctx: RunContext, source: Chunk | ChunkState,
             *parents: ChunkState) -> ChunkState:
    """Run ``task`` over every live item of a chunk; see the module docstring.

    A root node gets the chunk itself (``source``), any other node its parents' states
    (``source`` is the first). The loop runs under
    :func:`~dagflow.recovery.watch.run_watched`: each item has the node's timeout,
    watched once for the whole chunk rather than per call.
    """
    if isinstance(source, ChunkState):
        parents = (source, *parents)
        chunk = source.chunk
    else:
        chunk = source
    address = _worker_address()
    worker = _worker_name(address)
    records: dict[str, list[Record]] = {}
    stuck: set[str] = set()
    for parent in parents:
        records.update(parent.records)
        stuck.update(parent.stuck)
    state = ChunkState(chunk, records=records, stuck=stuck)
    own: list[Record] = []
    aggregate_inputs: list[tuple[Mapping[str, Any], Image]] = []
    # consecutive failures that count against the node's breaker, in this process
    failures = consecutive_failures(ctx.run_id, task.id)
    # a first run leaves the inputs' fingerprints to the tasks that read them: the root
    # nodes' (the chunk's items go on from here, fingerprinted, to the children and commit)
    deferred = not parents and any(item["key"] is None for item in chunk.items)
    # items done by an earlier run at this node and needed by nothing that runs now
    skip = {iid for iid, nodes in chunk.skips.items() if task.id in nodes}
    stopped = open_nodes(ctx.run_id)
    cell = inflight.open_cell(ctx.run_dir, address is not None, chunk.index, task.position,
                              ctx.nodes)
    cells, at = cell.cells, cell.index

    def step(item: Mapping[str, Any], restart: Callable[[], None]) -> _Step | None:
        iid = item["item_id"]
        cells[at] = iid + 1
        if skip and iid in skip:
            return None
        if deferred:
            fill_fingerprint(item)  # type: ignore[arg-type]
        return _step(task, ctx, item, parents, worker, failures[0], restart, stopped)

    def commit(item: Mapping[str, Any], result: _Step | None) -> None:
        if result is None:
            return
        record, image, blocked, breaker = result
        iid = item["item_id"]
        if blocked is not None:
            state.blocked[iid] = blocked
        if image is not None:
            if record is None:
                aggregate_inputs.append((item, image))
            else:
                state.images[iid] = image
        if record is not None:
            own.append(record)
        if breaker is True:
            failures[0] += 1
        elif breaker is False:
            failures[0] = 0

    def timed_out(item: Mapping[str, Any], elapsed: float) -> None:
        if deferred:
            fill_fingerprint(item, stat=False)  # type: ignore[arg-type]
        state.blocked[item["item_id"]] = "failed"
        failures[0] += counts_against_breaker("timeout")
        own.append(new_record(ctx, task, item, "failed", worker=worker, error_class="timeout",
                              error_type="ItemTimeoutError",
                              error_message=f"no result after {task.timeout:g} s "
                                            "(its thread was left running; the worker is "
                                            "replaced once its other work is done)",
                              attempts=1, duration_s=elapsed, started=time.time() - elapsed))

    try:
        if task.op_spec.kind == "sink":  # the chunk's outputs made durable together
            from dagflow.io.atomic import deferred_sync

            with deferred_sync():
                abandoned = run_watched(chunk.items, step, commit, timed_out, task.timeout)
        else:
            abandoned = run_watched(chunk.items, step, commit, timed_out, task.timeout)
        if aggregate_inputs:
            cells[at] = 0  # over all the chunk's items at once: no one item to blame
            own.extend(_run_aggregate_map(task, ctx, chunk, aggregate_inputs, worker))
    except (StorageError, NodeTaskError):
        raise
    except Exception as exc:  # outside the per-item guard: the node is to blame
        raise NodeTaskError(task.id, f"{type(exc).__name__}: {exc}") from exc
    finally:
        cell.close()
    if abandoned:
        from dagflow.recovery import recycle

        recycle.abandon(abandoned)
        stuck.add(worker)
    records[task.id] = own
    return state


#: What one item's step yields: its record (``None`` for an aggregate's input), its image
#: (or the aggregate's input), the status that blocks its descendants, and what it does
#: to the node's count of consecutive failures (``True`` one more, ``False`` reset).
_Step = tuple[Record | None, Image | None, str | None, bool | None]


def _step(task: NodeTask, ctx: RunContext, item: Mapping[str, Any],
          parents: tuple[ChunkState, ...], worker: str, consecutive_failures: int,
          restart: Callable[[], None], stopped: set[str]) -> _Step:
    """One item through one node; changes nothing shared (see :func:`run_watched`).

    It runs once per item and node between the ops' own work: the path of an item that
    succeeds is kept short (no closure, no dict of common fields, its record built by
    position).
    """
    iid = item["item_id"]
    if parents:
        blocked = [p.blocked[iid] for p in parents if iid in p.blocked]
        if blocked:
            status = _blocked_status(blocked)
            return new_record(ctx, task, item, status, worker=worker), None, status, None
        inputs = [p.images[iid] for p in parents]
    else:
        inputs = []
    if consecutive_failures >= task.breaker_failures or (stopped and task.id in stopped):
        if task.id in stopped:
            why = f"the circuit breaker of node {task.id!r} is open"
        else:
            why = (f"node {task.id!r} stopped after {consecutive_failures} consecutive "
                   "failures on this worker")
        return (new_record(ctx, task, item, "not_run", worker=worker, error_class="breaker",
                           error_message=why), None, "not_run", None)
    started = time.time()
    if task.when is not None and inputs:
        try:
            passed = task.when(_condition_fields(inputs[0], item))
        except Exception as exc:  # a user predicate that raises fails the item
            return (new_record(ctx, task, item, "failed", worker=worker, error_class="bug",
                               error_type=type(exc).__name__,
                               error_message=f"condition raised: {exc}"),
                    None, "failed", None)
        if not passed:
            return new_record(ctx, task, item, "skipped", worker=worker, started=started), \
                None, "skipped", None
    kind = task.op_spec.kind
    if kind == "aggregate":
        return None, inputs[0], None, None
    used: dict[str, Any] = {}
    # call_with_policy's first attempt, inline: most items succeed at once, and this is
    # their path (retries and failures go on in retry_after)
    wall0 = time.perf_counter()
    cpu0 = time.thread_time()
    outcome: Outcome | None = None
    log = None
    try:
        value = _invoke(task, ctx, item, inputs, used)
    except Exception as exc:
        outcome = retry_after(exc, functools.partial(_invoke, task, ctx, item, inputs, used),
                              task.policy, wall0, time.thread_time() - cpu0, restart=restart)
        value = outcome.value
    else:
        cpu = time.thread_time() - cpu0
        attempts, duration = 1, time.perf_counter() - wall0
    device, degraded = (used.get("device", "cpu"), used.get("degraded", False)) if used \
        else ("cpu", False)
    if outcome is not None:
        if outcome.error is not None:
            return _failed_step(task, ctx, item, worker, outcome, started, device, degraded)
        attempts, duration, cpu, log = (outcome.attempts, outcome.duration_s, outcome.cpu_s,
                                        outcome.log)
    if kind == "sink":
        source = inputs[0]
        return (output_record(ctx, task, item, worker, attempts, duration, cpu, started,
                              device, bool(degraded), source.width, source.height,
                              output_proof(ctx, value), log),
                None, None, False)
    if not isinstance(value, Image):
        value = Image(value) if hasattr(value, "shape") else value
        if not isinstance(value, Image):
            return (new_record(ctx, task, item, "failed", worker=worker, error_class="bug",
                               error_type="TypeError",
                               error_message=f"op {task.op!r} returned "
                                             f"{type(value).__name__}, not an Image",
                               attempts=attempts, duration_s=duration, cpu_s=cpu,
                               started=started, device=device, degraded=bool(degraded),
                               attempt_log=log),
                    None, "failed", None)
    shape = value.data.shape
    return (ok_record(ctx, task, item, worker, attempts, duration, cpu, started, device,
                      bool(degraded), int(shape[1]), int(shape[0]), log),
            value, None, False)


def _failed_step(task: NodeTask, ctx: RunContext, item: Mapping[str, Any], worker: str,
                 outcome: Outcome, started: float, device: str, degraded: bool) -> _Step:
    """The record and verdict of an item whose op failed (after its retries)."""
    exc = outcome.error
    assert exc is not None
    message = str(exc) or type(exc).__name__
    if outcome.error_class == "bug":
        frame = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        where = f" (at {frame[0].filename}:{frame[0].lineno})" if frame else ""
        message = f"{message}{where}"
    record = new_record(ctx, task, item, "failed", worker=worker,
                        error_class=outcome.error_class, error_type=type(exc).__name__,
                        error_message=message[:2000], reason=getattr(exc, "reason", None),
                        attempts=outcome.attempts, duration_s=outcome.duration_s,
                        cpu_s=outcome.cpu_s, started=started, device=device,
                        degraded=bool(degraded), attempt_log=outcome.log)
    return record, None, "failed", counts_against_breaker(outcome.error_class) or None


def _blocked_status(blocked: list[str]) -> str:
    """What a node records for an item its parents did not deliver."""
    if all(b == "skipped" for b in blocked):
        return "skipped"
    if "not_run" in blocked and "failed" not in blocked and "upstream_failed" not in blocked:
        return "not_run"
    return "upstream_failed"


def _aggregate_dir(ctx: RunContext, task: NodeTask) -> Path:
    return Path(ctx.state_dir, "aggregates", task.id)


def _run_aggregate_map(task: NodeTask, ctx: RunContext, chunk: Chunk,
                       inputs: list[tuple[Mapping[str, Any], Image]], worker: str
                       ) -> list[Record]:
    """Compute this chunk's partial for an aggregate node and store it, as data, for the
    reduce (:mod:`dagflow.ops.partials`)."""
    from dagflow.ops.partials import write_partial

    spec = task.op_spec
    started = time.time()
    t0 = time.perf_counter()
    items = [dict(item) for item, _ in inputs]
    try:
        partial = spec.func([img for _, img in inputs], items, **task.params)
        part = _aggregate_dir(ctx, task) / f"{ctx.run_id}-{chunk.index:06d}.parquet"
        write_partial(part, partial, [i["key"] for i in items], node_key=task.key, op=task.op,
                      root=ctx.state_dir)
        status, extra = "ok", {"output_path": output_proof(ctx, part)[0]}
    except Exception as exc:
        status = "failed"
        extra = {"error_class": "bug", "error_type": type(exc).__name__,
                 "error_message": str(exc)[:2000]}
    duration = (time.perf_counter() - t0) / max(1, len(inputs))
    return [new_record(ctx, task, item, status, worker=worker, attempts=1,
                       duration_s=duration, started=started, **extra) for item in items]


def reduce_aggregate(task: NodeTask, ctx: RunContext, item_keys: frozenset[str]) -> str:
    """Combine every stored partial of an aggregate node for the run's items; write the output.

    Partials come from this run and from earlier runs into the same output directory
    (items already done are not re-run, but still belong in the statistics); a partial
    computed with other parameters (another node key) is ignored. Partials are read as
    data only (:func:`dagflow.ops.partials.read_partial`): a file that is not one, or a
    pickle left by an earlier version, is never loaded.
    """
    from dagflow.ops.partials import collect_partials

    spec = task.op_spec
    partials = collect_partials(_aggregate_dir(ctx, task), task.key, item_keys, node=task.id)
    dest = os.fspath(Path(ctx.output_dir) / task.id)
    if not partials:
        raise BadInputError("no_items", f"aggregate {task.id!r} has no successful items to combine")
    return spec.reduce(partials, dest, **task.params)


def write_chunk(ctx: RunContext, index: int, columns: Mapping[str, list[Any]],
                sizes: Mapping[int, int] | None = None,
                own_cpu_s: dict[str, float] | None = None) -> str | None:
    """Write a chunk's records once and tell monitoring; returns the records part.

    One Parquet part per chunk holds its records (``columns``, from
    :func:`~dagflow.recovery.checkpoint.record_columns`: the checkpoint) and, with
    monitoring on, the metrics' columns beside them; without checkpoints, monitoring
    writes that part in the metrics directory instead. ``sizes`` are the input files'
    sizes by item. The CPU seconds each feature took are added to ``own_cpu_s``.

    Raises
    ------
    StorageError
        The part could not be written (a read-only or full disk): the run must stop,
        since nothing it does can be recorded.
    """
    from dagflow.recovery.checkpoint import write_part

    if not columns["item_id"] or not (ctx.checkpoint or hooks.enabled()):
        return None
    cpu = time.thread_time
    t0 = cpu()
    columns = hooks.with_metrics(ctx, columns, sizes)
    t1 = cpu()
    part = None
    if ctx.checkpoint:
        from dagflow.monitor.store import PART_SCHEMA

        part = os.fspath(Path(ctx.run_dir, "records", f"part-{index:07d}.parquet"))
        if is_remote(ctx.output_dir):  # on a machine without the run's local copy: the store
            from dagflow.io.stage import part_location

            part = part_location(ctx.output_dir, ctx.state_dir, ctx.run_id, part)
        try:
            write_part(part, columns, PART_SCHEMA)
        except OSError as exc:
            raise StorageError.from_os_error(exc, part) from None
    t2 = cpu()
    hooks.chunk_done(ctx, columns, sizes, chunk=index, written=part is not None)
    if own_cpu_s is not None:
        if part is not None:
            own_cpu_s["checkpoint"] = own_cpu_s.get("checkpoint", 0.0) + (t2 - t1)
        if hooks.enabled():
            own_cpu_s["monitoring"] = own_cpu_s.get("monitoring", 0.0) + (t1 - t0) \
                + (cpu() - t2)
    return part


def item_summary(ctx: RunContext, index: int, item: Mapping[str, Any],
                 records: Sequence[Record], status: str) -> ChunkSummary:
    """Write and summarise the records of one item made on the client (refused, tiled,
    or whose task failed as a whole), as a chunk of its own numbered ``index``."""
    own: dict[str, float] = {}
    part = write_chunk(ctx, index, record_columns(records), own_cpu_s=own)
    counts = collections.Counter((r.node_id, r.status) for r in records)
    seconds: dict[str, float] = {}
    for r in records:
        seconds[r.node_id] = seconds.get(r.node_id, 0.0) + float(r.duration_s or 0.0)
    failures = [r for r in records if r.status == "failed"]
    unsucceeded = {} if status == "succeeded" else {item["item_id"]: status}
    return ChunkSummary(index, 1, dict(counts), unsucceeded, failures, part, 0.0, seconds, own)


def commit_chunk(ctx: RunContext, leaves: tuple[str, ...], *states: ChunkState) -> ChunkSummary:
    """Merge the chunk's records (the states of its leaf nodes), write them as one Parquet
    part, summarise for the client."""
    t0 = time.perf_counter()
    chunk = states[0].chunk
    records: dict[str, list[Record]] = {}
    stuck: set[str] = set()
    for s in states:
        records.update(s.records)
        stuck.update(s.stuck)
    rows = [r for node_records in records.values() for r in node_records]
    columns = record_columns(rows)  # the part's, and the summary's below
    own: dict[str, float] = {}
    part = write_chunk(ctx, chunk.index, columns,
                       {i["item_id"]: i.get("size") for i in chunk.items}, own)
    nodes, statuses = columns["node_id"], columns["status"]
    counts = dict(collections.Counter(zip(nodes, statuses, strict=True)))
    failures = [r for r in rows if r[_STATUS] == "failed"][:MAX_FAILURES_RETURNED]
    seconds = dict.fromkeys(records, 0.0)
    for node, node_records in records.items():
        seconds[node] = math.fsum(r[_DURATION] for r in node_records)
    return ChunkSummary(chunk.index, len(chunk), counts,
                        _unsucceeded(columns["item_id"], nodes, statuses, leaves),
                        failures, part, time.perf_counter() - t0, seconds, own,
                        frozenset(stuck))


def _unsucceeded(ids: list[int], nodes: list[str], statuses: list[str],
                 leaves: tuple[str, ...]) -> dict[int, str]:
    """The items of a chunk that did not succeed: ``failed`` (a node failed), else
    ``not_run``, else ``skipped`` (every leaf record of the item is ``skipped``)."""
    leaf = set(leaves)
    skipped = {i for i, n, s in zip(ids, nodes, statuses, strict=True)
               if n in leaf and s == "skipped"}
    if skipped:
        skipped -= {i for i, n, s in zip(ids, nodes, statuses, strict=True)
                    if n in leaf and s != "skipped"}
    out = dict.fromkeys(skipped, "skipped")
    out.update((i, "not_run") for i, s in zip(ids, statuses, strict=True) if s == "not_run")
    out.update((i, "failed") for i, s in zip(ids, statuses, strict=True) if s in _FAILED)
    return out
