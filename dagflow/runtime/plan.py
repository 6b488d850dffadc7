"""Planning a batch: what runs, where, in what chunks, with how much memory, for how long.

One function, :func:`prepare_batch`, decides for a run (and for ``dagflow plan``, which
prints the same decisions without running anything):

* each node's device (``auto`` becomes ``gpu`` on a cluster with GPU workers for an op
  with a GPU implementation, see :func:`dagflow.ops.dispatch.resolve_device`);
* each item's estimated peak per node (:class:`dagflow.resources.MemoryModel`, from
  headers: a manifest's columns, else :func:`dagflow.resources.probe_headers`);
* which items are too large for any worker's budget (or the decoder's pixel limit):
  processed tiled (:mod:`dagflow.tiled`; a TIFF, a workflow that is a chain of tiled
  ops ending in ``save`` as TIFF) or refused before decoding, ``bad_input`` /
  ``oversize``, with the estimate and the limit in the message;
* the chunks: count-based size (:func:`dagflow.compile.choose_chunk_size`), cut so that
  each node's task estimate stays within ``dagflow.resources.chunk-memory-fraction`` of
  the smallest worker budget;
* the Dask annotations: ``MEMORY`` per chunk and node (the estimate, never above the
  largest budget, so that no task waits for a worker that cannot exist) whenever a
  worker running its largest tasks on all its threads could exceed its budget (where it
  cannot, the restriction would hold nothing back and only cost Dask its queuing of root
  tasks, so it is left out); ``GPU: 1`` for GPU nodes; ``dagflow-<node>: 1`` for nodes
  with ``concurrency``;
* the estimate: per node, items to run and to skip (already done, condition false,
  oversize), peak memory per task and per worker, seconds from the history of earlier
  runs (:mod:`dagflow.monitor.history`, seconds per megapixel); and the wall time for
  the cluster's threads.

After a run, :func:`compare` puts the estimate next to what happened (duration, compute
seconds per node, the workers' peak memory sampled by the monitor) in the run's summary.

Header probing happens on the client, in a thread pool, for the items that lack a
header and still have to run (none on a re-run of a finished batch); above
``dagflow.resources.probe-limit`` items (``probe-store`` for objects on a store, whose
every header costs a request), a sample is probed and the rest are estimated from it
(a pixel limit from the sample, and the decoder's, guard those on the workers).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagflow import config
from dagflow.compile import Chunk, NodeTask, choose_chunk_size
from dagflow.compile.chunking import taper
from dagflow.exceptions import ConfigError
from dagflow.execute import ChunkSummary, item_summary
from dagflow.inputs import fill_fingerprint
from dagflow.ops.dispatch import resolve_device
from dagflow.recovery.records import Record, new_record
from dagflow.resources import (
    MemoryModel,
    Resources,
    concurrency_resource,
    condition_fields,
    format_bytes,
    has_size,
    probe_headers,
)
from dagflow.runtime.capacity import ClusterCapacity

__all__ = ["Batch", "BatchPlan", "NodePlan", "check_chunk_size", "compare", "plan",
           "prepare_batch"]

logger = logging.getLogger(__name__)


@dataclass
class NodePlan:
    """One node's part of a plan."""

    node: str
    op: str
    device: str
    run: int = 0
    skip_done: int = 0
    skip_condition: int = 0
    oversize: int = 0
    tiled: int = 0
    peak_task: int = 0
    peak_worker: int = 0
    megapixels: float = 0.0
    seconds: float | None = None
    basis: str | None = None


@dataclass
class BatchPlan:
    """What a run of a batch will do, estimated before anything is decoded."""

    workflow: str
    items: int
    to_run: int
    already_done: int
    chunk_size: int
    chunks: int
    workers: int
    threads: int
    budget_min: int
    budget_max: int
    task_limit: int
    nodes: dict[str, NodePlan] = field(default_factory=dict)
    oversize: list[dict[str, Any]] = field(default_factory=list)
    peak_task: int = 0
    peak_worker: int = 0
    compute_s: float | None = None
    duration_s: float | None = None
    history_runs: int = 0
    probe: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: per node and in total, from :func:`dagflow.monitor.prediction.predict`
    prediction: dict[str, Any] = field(default_factory=dict)

    @property
    def tiled(self) -> int:
        return sum(1 for o in self.oversize if o["action"] == "tiled")

    @property
    def refused(self) -> int:
        return sum(1 for o in self.oversize if o["action"] == "refused")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["tiled"], out["refused"] = self.tiled, self.refused
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def estimate(self) -> dict[str, Any]:
        """The figures a run's summary compares with what happened."""
        return {"duration_s": self.duration_s, "compute_s": self.compute_s,
                "peak_task": self.peak_task, "peak_worker": self.peak_worker,
                "history_runs": self.history_runs,
                "nodes": {n: p.seconds for n, p in self.nodes.items()}}

    def __str__(self) -> str:
        lines = [
            f"plan for workflow {self.workflow!r}: {self.items} items, {self.to_run} to run, "
            f"{self.already_done} already done"
            + (f", {self.tiled} tiled, {self.refused} refused as oversize"
               if self.oversize else ""),
            f"  cluster: {self.workers} workers, {self.threads} threads, memory budget "
            f"{format_bytes(self.budget_min)}"
            + (f"-{format_bytes(self.budget_max)}" if self.budget_max != self.budget_min
               else "") + " per worker",
            f"  chunks: {self.chunks} of up to {self.chunk_size} items; a task may use up to "
            f"{format_bytes(self.task_limit)}",
        ]
        width = max([len(n) for n in self.nodes] + [4])
        dev = max([len(p.device) for p in self.nodes.values()] + [6])
        lines.append(f"  {'node':<{width}}  {'op':<10} {'device':<{dev}} {'run':>7} {'done':>7} "
                     f"{'cond':>6} {'over':>5}  {'peak/task':>10} {'peak/worker':>11} "
                     f"{'est. s':>8}")
        for n, p in self.nodes.items():
            secs = "-" if p.seconds is None else f"{p.seconds:.1f}"
            lines.append(f"  {n:<{width}}  {p.op:<10} {p.device:<{dev}} {p.run:>7} "
                         f"{p.skip_done:>7} {p.skip_condition:>6} {p.oversize:>5}  "
                         f"{format_bytes(p.peak_task):>10} {format_bytes(p.peak_worker):>11} "
                         f"{secs:>8}")
        if self.duration_s is not None:
            lines.append(f"  estimated duration: {self.duration_s:.1f} s ({self.compute_s:.1f} "
                         f"s of compute over {self.threads} threads, from "
                         f"{self.history_runs} earlier runs)")
        else:
            lines.append("  estimated duration: unknown (no history of earlier runs of "
                         "these nodes yet)")
        lines.append(f"  peak memory: {format_bytes(self.peak_task)} per task, "
                     f"{format_bytes(self.peak_worker)} per worker")
        for o in self.oversize[:10]:
            lines.append(f"  {o['action']}: {o['path']}: {o['why']}")
        if len(self.oversize) > 10:
            lines.append(f"  ... {len(self.oversize) - 10} more oversize items")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def _chunk_key(chunk: Chunk) -> tuple[int, int]:
    """A chunk's items, identified (chunks are runs of consecutive items; tapering and
    bisection renumber them)."""
    first = chunk.items[0] if chunk.items else None
    return (first.get("item_id", id(first)) if first is not None else -1, len(chunk))


@dataclass
class Batch:
    """A run's decisions (see the module docstring); built by :func:`prepare_batch`."""

    tasks: dict[str, NodeTask]
    model: MemoryModel
    items: list[Mapping[str, Any]]
    chunk_size: int
    task_limit: int
    capacity: ClusterCapacity
    annotate_memory: bool
    node_resources: dict[str, Resources]
    refused: list[tuple[Mapping[str, Any], str, int, int, str]]
    tiled: list[Mapping[str, Any]]
    plan: BatchPlan
    #: Threads to taper the run's last chunks for (the chunk size is "auto"), or 0.
    taper_threads: int = 0
    #: each chunk's task peaks per node, by :func:`_chunk_key`
    _peaks: dict[tuple[int, int], dict[str, int]] = field(default_factory=dict, repr=False)

    #: the batch's own items as cut for the plan: (size, chunks)
    _cut: tuple[int, list[Chunk]] | None = field(default=None, repr=False)

    def make_chunks(self, items: Sequence[Mapping[str, Any]], size: int,
                    *, start: int = 0) -> list[Chunk]:
        """Chunks of at most ``size`` items within the task memory limit.

        The batch's own items are cut once (for the plan) and the run reuses that cut;
        each chunk's peaks are kept for its ``MEMORY`` annotations."""
        own = start == 0 and items is self.items
        if own and self._cut is not None and self._cut[0] == size:
            return list(self._cut[1])
        by_index: dict[int, dict[str, int]] = {}
        chunks = self.model.make_chunks(items, size, self.task_limit or None, start=start,
                                        peaks=by_index)
        for chunk in chunks:
            if chunk.index in by_index:
                self._peaks[_chunk_key(chunk)] = by_index[chunk.index]
        if own:
            self._cut = (size, chunks)
        return chunks

    def annotations(self, base: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        """Per node: ``base`` (retries) plus its static resources (GPU, concurrency)."""
        out = {nid: dict(base.get(nid, {})) for nid in self.tasks}
        for nid, res in self.node_resources.items():
            out.setdefault(nid, {}).update(res.annotations())
        return out

    def run_chunks(self) -> list[Chunk]:
        """The chunks a run submits: the plan's, the last ones tapered (smaller and
        smaller, so that the threads finish together) when the size is automatic."""
        chunks = self.make_chunks(self.items, self.chunk_size)
        if self.taper_threads and chunks:
            chunks = taper(chunks, self.taper_threads)
        return chunks

    def chunk_annotations(self, task: NodeTask, chunk: Chunk) -> dict[str, Any]:
        """``MEMORY`` for ``task`` over ``chunk``: its estimate, at most the largest budget."""
        if not self.annotate_memory:
            return {}
        key = _chunk_key(chunk)
        peaks = self._peaks.get(key)
        if peaks is None:
            peaks = self.model.chunk_peaks(chunk.items)
            self._peaks[key] = peaks
        need = min(max(1, peaks.get(task.id, 0)), self.capacity.max_budget)
        return Resources(memory=need).annotations()


def _history_dir(output: Path, history_dir: str | os.PathLike[str] | None) -> Path:
    if history_dir is not None:
        return Path(history_dir)
    configured = config.get("monitor.history-dir")
    if configured:
        return Path(os.path.expanduser(str(configured)))
    return Path(output) / config.get("state-dir") / "history"


def resolve_devices(tasks: Mapping[str, NodeTask], capacity: ClusterCapacity
                    ) -> dict[str, NodeTask]:
    """The nodes with ``device`` decided for this cluster: ``cpu``, ``gpu``, or
    ``cpu-fallback`` where a ``gpu`` node's items will run on the CPU (no GPU worker,
    or no GPU implementation), as the run then records them."""
    return {nid: dataclasses.replace(t, device=resolve_device(
        t.device, t.op_spec, cluster_has_gpu=capacity.has_gpu)) for nid, t in tasks.items()}


def _pixel_limit(tasks: Mapping[str, NodeTask]) -> int | None:
    limits = [t.params.get("max_pixels") for t in tasks.values() if t.kind == "source"]
    limits = [int(v) for v in limits if v]
    return min(limits) if limits else None


def prepare_batch(
    workflow: Any,
    tasks: Mapping[str, NodeTask],
    to_run: Sequence[dict[str, Any]],
    capacity: ClusterCapacity,
    *,
    items: int | None = None,
    already_done: int = 0,
    chunk_size: int | str | None = None,
    output: str | os.PathLike[str] = ".",
    history_dir: str | os.PathLike[str] | None = None,
    conditions: bool = False,
    probe: bool = True,
    client: Any = None,
) -> Batch:
    """Decide devices, estimates, oversize items, chunks and annotations for a batch.

    Parameters
    ----------
    workflow
        The validated :class:`~dagflow.workflow.Workflow` (for ``concurrency``).
    tasks
        Its resolved nodes.
    to_run
        The items that still have to run (header fields are added to them in place).
    capacity
        The cluster's workers (:func:`~dagflow.runtime.capacity.cluster_capacity`).
    items, already_done
        For the plan's counts.
    chunk_size
        Items per chunk, or ``"auto"`` / ``None`` (the configured default).
    output, history_dir
        Where the history of earlier runs is (for the duration estimate).
    conditions
        Evaluate ``when:`` conditions on the headers to count the skips (for the plan).
    probe
        Probe the headers of items that lack them: on the client, or, for more than
        ``dagflow.resources.probe-limit`` items and with a ``client``, on its workers.
    client
        The run's client (for probing a large batch on the workers).
    """
    from dagflow.tiled import chain_problem

    tasks = resolve_devices(tasks, capacity)
    model = MemoryModel(tasks)
    probed: dict[str, int] = {}
    sampled = False
    if probe and to_run:
        lacking = sum(1 for item in to_run if not has_size(item))
        limit, sample = _probe_limits(to_run)
        over = lacking > limit
        if over and client is not None and config.get("resources.probe-large") == "cluster":
            probed = probe_on_cluster(client, to_run)
        elif lacking:
            # above the limit: a random sample
            probed = probe_headers(to_run, limit=limit, sample=sample)
            sampled = over
    budget = capacity.max_budget
    # has_size is asked once more here and once in the loop below, not once per step
    sized = [item for item in to_run if has_size(item)]
    model.set_default(sized, limit=budget or None)
    guard = 0
    if sampled:
        guard = probed["guard_pixels"] = _guard_unprobed(model, sized, capacity.min_budget)
    annotate = capacity.has_memory
    fraction = float(config.get("resources.chunk-memory-fraction"))
    task_limit = int(capacity.min_budget * fraction) if annotate else 0
    pixel_limit = _pixel_limit(tasks)
    policy = str(config.get("resources.oversize"))
    ordered = list(tasks.values())
    tiled_why = chain_problem(ordered) if policy == "tiled" else \
        "dagflow.resources.oversize is 'refuse'"
    runnable: list[Mapping[str, Any]] = []
    refused: list[tuple[Mapping[str, Any], str, int, int, str]] = []
    tiled: list[Mapping[str, Any]] = []
    oversize_rows: list[dict[str, Any]] = []
    ids = list(tasks)
    megapixels = [0.0] * len(ids)
    worst_of: dict[int, tuple[str, int]] = {}  # per estimates tuple (items share them)
    unknown = 0  # items without a size: the default estimate, the decoder's limit
    for item in to_run:
        if not has_size(item):
            if guard:
                item[GUARD_KEY] = guard
            runnable.append(item)
            unknown += 1
            continue
        est = model.estimates(item)
        worst = worst_of.get(id(est))
        if worst is None:
            k_worst = max(range(len(est)), key=lambda k: est[k].single)
            worst = worst_of[id(est)] = (ids[k_worst], est[k_worst].single)
        node, peak = worst
        over_memory = annotate and peak > budget
        pixels = int(item.get("width") or 0) * int(item.get("height") or 0)
        over_pixels = pixel_limit is not None and pixels > pixel_limit
        if not over_memory and not over_pixels:
            runnable.append(item)
            for k, e in enumerate(est):  # type: ignore[arg-type]
                megapixels[k] += e.megapixels
            continue
        if over_memory:
            why = (f"estimated peak memory {format_bytes(peak)} for node {node!r} exceeds "
                   f"the largest worker budget {format_bytes(budget)} (memory limit less "
                   f"{config.get('resources.memory-margin'):.0%} and the worker's footprint)")
        else:
            why = (f"{item.get('width')}x{item.get('height')} = {pixels:,} pixels exceeds "
                   f"the decoder's limit of {pixel_limit:,} pixels")
        is_tiff = str(item.get("format") or "").lower() == "tiff"
        if tiled_why is None and is_tiff:
            tiled.append(item)
            oversize_rows.append({"path": item["path"], "action": "tiled", "node": node,
                                  "estimate": peak, "limit": budget, "why": why})
        else:
            reason = tiled_why if is_tiff else "not a TIFF, so it cannot be read tiled"
            refused.append((item, node, peak, budget, f"{why}; {reason}"))
            oversize_rows.append({"path": item["path"], "action": "refused", "node": node,
                                  "estimate": peak, "limit": budget,
                                  "why": f"{why}; {reason}"})
    for k, e in enumerate(model.estimates({}) or ()):  # the default, for each unknown item
        megapixels[k] += unknown * e.megapixels
    size = config.resolve(chunk_size, "chunk-size")
    auto = size == "auto"
    if auto:
        # the megapixels an item goes through, all nodes together, on average
        per_item = math.fsum(megapixels) / len(runnable) if runnable else None
        size = choose_chunk_size(len(runnable), capacity.threads,
                                 minimum=int(config.get("min-chunk-size")),
                                 maximum=int(config.get("max-chunk-size")),
                                 megapixels_per_item=per_item,
                                 chunk_megapixels=config.get("chunk-megapixels"))
    size = max(1, int(size))
    node_resources: dict[str, Resources] = {}
    for node in workflow.nodes:
        res = Resources()
        if tasks[node.id].device == "gpu" and capacity.has_gpu:
            res = res | Resources(gpu=1)
        if node.concurrency:
            slot = concurrency_resource(node.id)
            if capacity.has_resource(slot):
                res = res | Resources(slots=((slot, 1),))
        if res.to_dict():
            node_resources[node.id] = res
    batch = Batch(tasks=dict(tasks), model=model, items=runnable, chunk_size=size,
                  task_limit=task_limit, capacity=capacity, annotate_memory=annotate,
                  node_resources=node_resources, refused=refused, tiled=tiled,
                  plan=None, taper_threads=capacity.threads if auto else 0)  # type: ignore[arg-type]
    chunks = batch.make_chunks(runnable, size)  # within the task limit
    peaks = _largest_tasks(model, chunks, batch._peaks)
    largest = max(peaks.values(), default=0)
    # MEMORY restrictions only where they can hold a task back: a worker running its
    # largest tasks on every thread would exceed its budget. Elsewhere they would only
    # cost Dask its queuing (a task with restrictions is assigned to a worker at once,
    # and a dying worker then takes the blame for all of them).
    batch.annotate_memory = annotate and any(w.nthreads * largest > w.budget
                                             for w in capacity.workers)
    batch.plan = _make_plan(workflow, batch, chunks, peaks, dict(zip(ids, megapixels,
                                                                    strict=True)),
                            items if items is not None else len(to_run) + already_done,
                            already_done, oversize_rows,
                            _history_dir(Path(output), history_dir), conditions, probed)
    return batch


def _probe_limits(items: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """Items probed at most before a run, and the sample probed above that: for objects
    on a store, whose every header is a request beside the one that reads the image,
    ``dagflow.resources.probe-store`` for both."""
    from dagflow.io.storage import is_remote

    if is_remote(items[0].get("path")):
        store = int(config.get("resources.probe-store"))
        return store, store
    return int(config.get("resources.probe-limit")), int(config.get("resources.probe-sample"))


#: The item key that carries the pixel limit of an item planned without its header.
GUARD_KEY = "guard_pixels"


def _guard_unprobed(model: MemoryModel, sized: Sequence[Mapping[str, Any]], budget: int) -> int:
    """The pixel limit for the items still without a header: the largest pixel count
    that fits ``budget``.

    Planned from a sample of headers (``sized``: the items that have one), the others are
    estimated like the sample's largest item; an unsampled image far above it could
    exceed a worker's memory. Its source node refuses it before decoding instead
    (``oversize``), from this limit (:data:`GUARD_KEY` of each such item): the budget over
    the sample's largest bytes per pixel. Returns the limit (0: none, when the workers
    advertise no memory or no item could be probed).
    """
    if not budget or not model.estimates({}):
        return 0
    per_pixel = max((max(e.single for e in model.estimates(i) or ())
                     / max(1, int(i["width"]) * int(i["height"]))
                     for i in sized), default=0.0)
    return int(budget / per_pixel) if per_pixel > 0 else 0


def _probe_paths(paths: list[str]) -> list[dict[str, Any] | None]:
    """Task: the header fields of each file (``None`` for one that cannot be probed)."""
    from dagflow.io import probe_header
    from dagflow.resources import HEADER_KEYS

    out: list[dict[str, Any] | None] = []
    for path in paths:
        try:
            header = probe_header(path)
        except Exception:  # a bad input: its load reports it with the reason
            out.append(None)
            continue
        out.append({k: header[k] for k in HEADER_KEYS if header.get(k) is not None})
    return out


def probe_on_cluster(client: Any, items: Sequence[dict[str, Any]], *,
                     per_task: int = 1000) -> dict[str, int]:
    """Probe the items that lack a header on the cluster's workers, ``per_task`` files a
    task (the workers read where the data is, in parallel); header fields are added to
    the items in place. Returns ``probed``, ``failed`` and ``missing`` counts."""
    from distributed import as_completed

    lacking = [item for item in items if not has_size(item)]
    groups = [lacking[i:i + per_task] for i in range(0, len(lacking), per_task)]
    token = secrets.token_hex(4)
    futures = client.map(_probe_paths, [[item["path"] for item in g] for g in groups],
                         key=[f"dagflow-probe-{token}-{i}" for i in range(len(groups))])
    index = {f.key: g for f, g in zip(futures, groups, strict=True)}
    failed = 0
    for future in as_completed(futures):
        for item, header in zip(index[future.key], future.result(), strict=True):
            if header is None:
                failed += 1
            else:
                item.update(header)
        future.release()
    missing = sum(1 for item in items if not has_size(item))
    return {"probed": len(lacking) - failed, "failed": failed, "missing": missing,
            "on_workers": len(lacking)}


def _largest_tasks(model: MemoryModel, chunks: Sequence[Chunk],
                   known: Mapping[tuple[int, int], dict[str, int]]) -> dict[str, int]:
    """Per node, the largest task estimate over ``chunks`` (``known`` by :func:`_chunk_key`)."""
    peaks = dict.fromkeys(model.node_ids, 0)
    for chunk in chunks:
        chunk_peaks = known.get(_chunk_key(chunk)) or model.chunk_peaks(chunk.items)
        for nid, peak in chunk_peaks.items():
            if peak > peaks[nid]:
                peaks[nid] = peak
    return peaks


def _make_plan(workflow: Any, batch: Batch, chunks: Sequence[Chunk], peaks: dict[str, int],
               megapixels: dict[str, float], items: int, already_done: int,
               oversize_rows: list[dict[str, Any]], history_dir: Path, conditions: bool,
               probed: Mapping[str, int]) -> BatchPlan:
    tasks, model, capacity = batch.tasks, batch.model, batch.capacity
    nodes = {nid: NodePlan(nid, t.op, t.device) for nid, t in tasks.items()}
    per_thread = max((w.nthreads for w in capacity.workers), default=1)
    for nid, p in nodes.items():
        p.run = len(batch.items) + len(batch.tiled)
        p.skip_done = already_done
        p.oversize = len(batch.refused)
        p.tiled = len(batch.tiled)
        p.peak_task = peaks[nid]
        task_worker = peaks[nid] * per_thread
        p.peak_worker = min(task_worker, capacity.max_budget) if batch.annotate_memory \
            else task_worker
    ids = list(tasks)
    if conditions:
        cache: dict[Any, list[bool]] = {}
        for item in batch.items:
            sig = model.signature(item)
            runs = cache.get(sig) if sig is not None else None
            if runs is None:
                runs = _condition_runs(tasks, model, item)
                if sig is not None:
                    cache[sig] = runs
            for nid, ran in zip(ids, runs, strict=True):
                if not ran:
                    nodes[nid].run -= 1
                    nodes[nid].skip_condition += 1
    for nid in ids:
        nodes[nid].megapixels = round(megapixels[nid], 3)
    compute = duration = None
    runs = 0
    notes: list[str] = []
    prediction: dict[str, Any] = {}
    try:
        if not any(history_dir.glob("run-*.parquet")):  # no history: spare pandas' import
            raise FileNotFoundError(history_dir)
        from dagflow.monitor import prediction as forecast

        # per node: the items that reach it and pass its condition, their megapixels in
        # and out and their bytes, from the headers (dagflow.monitor.prediction)
        work = forecast.batch_work(tasks, model, batch.items,
                                   passes=functools.partial(_condition_runs, tasks, model))
        prediction = forecast.predict_from(history_dir, workflow.name, tasks, work,
                                           threads=capacity.threads,
                                           workers=len(capacity.workers), chunks=len(chunks))
    except FileNotFoundError:
        pass
    except Exception as exc:  # an unreadable history is no reason to refuse a plan
        logger.warning("could not read the history in %s: %s", history_dir, exc)
    if prediction.get("nodes"):
        for nid, e in prediction["nodes"].items():
            nodes[nid].seconds = e["seconds"]
            nodes[nid].basis = e["unit"]
        compute, duration = prediction["compute_s"], prediction["duration_s"]
        runs = int(prediction["history_runs"])
        if prediction["missing"]:
            notes.append(f"no history for {', '.join(prediction['missing'])}: not in the "
                         "duration")
    if probed.get("guard_pixels"):
        notes.append(f"headers read for a random sample of {probed['probed']} items; the "
                     f"other {probed.get('missing', 0)} are estimated from it and refused on "
                     f"the workers above {probed['guard_pixels']:,} pixels (what fits the "
                     "smallest worker budget)")
    if probed.get("failed"):
        notes.append(f"{probed['failed']} items could not be probed (they will fail at load "
                     "with the reason)")
    if not capacity.has_memory:
        notes.append("the workers advertise no MEMORY: tasks are not memory-annotated")
    elif not batch.annotate_memory:
        notes.append("no MEMORY annotations: every worker holds one of the largest tasks "
                     "per thread at once")
    peak_task = max(peaks.values(), default=0)
    peak_worker = max((p.peak_worker for p in nodes.values()), default=0)
    return BatchPlan(
        workflow=workflow.name, items=items, to_run=len(batch.items) + len(batch.tiled)
        + len(batch.refused), already_done=already_done, chunk_size=batch.chunk_size,
        chunks=len(chunks), workers=len(capacity.workers), threads=capacity.threads,
        budget_min=capacity.min_budget, budget_max=capacity.max_budget,
        task_limit=batch.task_limit, nodes=nodes, oversize=oversize_rows,
        peak_task=peak_task, peak_worker=peak_worker,
        compute_s=compute, duration_s=duration, history_runs=runs,
        probe=dict(probed), notes=notes, prediction=prediction)


def _condition_runs(tasks: Mapping[str, NodeTask], model: MemoryModel,
                    item: Mapping[str, Any]) -> list[bool]:
    """Per node, whether ``item`` reaches and passes it, judged on its headers (a
    condition the header cannot decide counts as passed)."""
    received = model.headers_through(item)
    ran: dict[str, bool] = {}
    for nid, task in tasks.items():
        alive = all(ran.get(p, True) for p in task.parents)
        if alive and task.when is not None and received is not None and task.parents:
            try:
                alive = bool(task.when(condition_fields(received[nid])))
            except Exception:
                alive = True
        ran[nid] = alive
    return [ran[nid] for nid in tasks]


# --------------------------------------------------------------------------- outside the graph


def _records(ctx: Any, tasks: Sequence[NodeTask], item: Mapping[str, Any], first: str,
             **failure: Any) -> list[Record]:
    """The records of an item that failed at its first node ``first`` (``failure``: its
    error fields), ``upstream_failed`` at every node after."""
    fill_fingerprint(item)  # type: ignore[arg-type]  # a first run defers it to here
    started = time.time()
    return [new_record(ctx, task, item, "failed", started=started, **failure)
            if task.id == first else
            new_record(ctx, task, item, "upstream_failed", started=started)
            for task in tasks]


def refuse(ctx: Any, tasks: Mapping[str, NodeTask], item: Mapping[str, Any], node: str,
           estimate: int, limit: int, why: str, index: int) -> ChunkSummary:
    """Record an item refused before decoding: ``bad_input`` / ``oversize`` at its source
    node (where it would have been decoded), ``upstream_failed`` after it; the message
    names the node whose estimate is too large, the estimate and the limit."""
    ordered = list(tasks.values())
    records = _records(ctx, ordered, item, ordered[0].id, error_class="bad_input",
                       error_type="OversizeError", reason="oversize",
                       error_message=f"oversize: {why}"[:2000])
    return item_summary(ctx, index, item, records, "failed")


def run_tiled_item(ctx: Any, tasks: Mapping[str, NodeTask], item: Mapping[str, Any],
                   client: Any, index: int) -> ChunkSummary:
    """Process an oversize TIFF tiled on the cluster and record it like any item."""
    from dagflow.execute import _sink_dest, output_proof
    from dagflow.recovery.policy import classify
    from dagflow.tiled import run_tiled

    ordered = list(tasks.values())
    sink = ordered[-1]
    started = time.time()
    try:
        dest = _sink_dest(ctx, sink, item)
        outcome = run_tiled(ordered, item, dest, client, fields=condition_fields,
                            key=f"dagflow-tiled-{ctx.run_id}-{item['item_id']}")
    except Exception as exc:
        logger.warning("tiled processing of %s failed: %s: %s", item["path"],
                       type(exc).__name__, exc)
        # its worker died under it: Dask gave up on a task of the tiled graph
        error_class = "lost_worker" if type(exc).__name__ == "KilledWorker" else classify(exc)
        records = _records(ctx, ordered, item, ordered[0].id, error_class=error_class,
                           error_type=type(exc).__name__, reason=getattr(exc, "reason", None),
                           error_message=(str(exc) or type(exc).__name__)[:2000], attempts=1)
        return item_summary(ctx, index, item, records, "failed")
    fill_fingerprint(item)  # type: ignore[arg-type]
    records = []
    for task in ordered:
        fields: dict[str, Any] = {"attempts": 1, "started": started, "device": "cpu"}
        size = outcome.sizes.get(task.id)
        if size:
            fields["width"], fields["height"] = size
        if task.kind == "sink" and outcome.output_path:
            path, out_size, mtime, digest = output_proof(ctx, outcome.output_path)
            fields.update(output_path=path, output_size=out_size, output_mtime_ns=mtime,
                          output_hash=digest, duration_s=outcome.duration_s)
        status = "skipped" if task.id in outcome.skipped else "ok"
        records.append(new_record(ctx, task, item, status, **(fields if status == "ok" else
                                                               {"started": started})))
    skipped = bool(outcome.skipped) and ordered[-1].id in outcome.skipped
    return item_summary(ctx, index, item, records, "skipped" if skipped else "succeeded")


def compare(result: Any, batch_plan: BatchPlan, run_dir: str | os.PathLike[str]) -> dict:
    """The plan's estimate next to what happened in the run (for its summary)."""
    out = batch_plan.estimate()
    actual: dict[str, Any] = {"duration_s": round(float(result.duration_s), 3)}
    try:
        import pyarrow.compute as pc

        # seconds per node summed from the chunks' summaries as they came in
        seconds = result.node_seconds
        actual["nodes"] = {n: round(v, 3) for n, v in seconds.items()}
        actual["compute_s"] = round(math.fsum(seconds.values()), 3)
        workers = Path(run_dir, "metrics", "workers.parquet")
        if workers.exists():
            import pyarrow.parquet as pq

            mem = pq.read_table(workers, columns=["memory"])["memory"]
            peak = pc.max(mem).as_py()
            actual["peak_worker"] = None if peak is None or math.isnan(peak) else int(peak)
    except Exception as exc:  # the comparison is informative; never fail a run on it
        logger.debug("could not compare the run with its estimate: %s", exc)
    out["actual"] = actual
    return out


def check_chunk_size(chunk_size: Any) -> None:
    """Refuse a ``chunk_size`` argument that is not ``None``, ``"auto"`` or an int >= 1
    (the configuration file's ``chunk-size`` is checked by its schema).

    Raises
    ------
    ConfigError
        Naming the value.
    """
    if chunk_size is None or chunk_size == "auto":
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"chunk size must be 'auto' or a whole number >= 1, "
                          f"got {chunk_size!r}")


def plan(workflow: Any, inputs: Any, output: str | os.PathLike[str], *,
         client: Any = None, cluster: Any = None, scheduler_file: Any = None,
         local_options: Mapping[str, Any] | None = None, chunk_size: int | None = None,
         resume: bool = True, retry_failed: bool = False,
         history_dir: str | os.PathLike[str] | None = None) -> BatchPlan:
    """What :func:`dagflow.run` would do with these arguments, without running anything.

    The embedded cluster is described without being started; an existing cluster
    (``client``, an address, a scheduler file) is asked for its workers, and is told
    nothing.

    Returns
    -------
    BatchPlan
        Per node and in total: items to run and to skip (already done, condition false,
        oversize), chunk size, peak memory per task and per worker, estimated seconds.
    """
    from dagflow.compile import node_tasks
    from dagflow.io.stage import output_location
    from dagflow.recovery.checkpoint import Checkpoint, load_done
    from dagflow.runtime.capacity import cluster_capacity, local_capacity
    from dagflow.runtime.collisions import check_outputs
    from dagflow.runtime.selection import load_workflow, run_inputs, select_items
    from dagflow.runtime.storeoutput import staged_view

    config.validate_config()  # the configuration in force, environment variables included
    wf = load_workflow(workflow)
    check_chunk_size(chunk_size)
    output = output_location(output)  # a store's URL stays one
    input_set = run_inputs(wf, inputs, output, resume or retry_failed)  # as run() does
    check_outputs(wf, input_set.items, output)  # no two writers of one output file
    tasks = node_tasks(wf)
    with staged_view(output) as state_root:  # a store's output: a local copy of its state
        state_dir = state_root / config.get("state-dir")
        previous = load_done(state_dir) if (resume or retry_failed) and state_dir.exists() \
            else Checkpoint()
        to_run, done = select_items(input_set.items, tasks, previous,
                                    retry_failed=retry_failed, output=output)
        remote = (client is not None or scheduler_file is not None
                  or cluster not in (None, "local")
                  or (cluster is None and _dask_scheduler_address() is not None))
        if remote:
            from dagflow.runtime.cluster import connect

            with connect(client, cluster=cluster, scheduler_file=scheduler_file) as c:
                capacity = cluster_capacity(c)
                if not capacity.has_memory:
                    capacity = _assumed_budgets(capacity)
        else:
            capacity = local_capacity(local_options)
        batch = prepare_batch(wf, tasks, [dict(i) for i in to_run], capacity,
                              items=len(input_set.items), already_done=done,
                              chunk_size=chunk_size, output=state_root,
                              history_dir=history_dir, conditions=True)
    return batch.plan


def _dask_scheduler_address() -> str | None:
    import dask.config

    return dask.config.get("scheduler-address", None)


def _assumed_budgets(capacity: ClusterCapacity) -> ClusterCapacity:
    """The budgets the workers will advertise when the run tells them (see
    :class:`~dagflow.runtime.capacity.AdvertiseResources`), from their memory limits."""
    from dagflow.resources import MEMORY, worker_budget
    from dagflow.runtime.capacity import WorkerCapacity

    return ClusterCapacity(tuple(
        WorkerCapacity(w.name, w.nthreads, w.memory_limit,
                       {**w.resources, MEMORY: w.resources.get(MEMORY) or worker_budget(
                           w.memory_limit)})
        for w in capacity.workers))
