"""The scheduler plugin that collects dagflow's measurements: :class:`DagflowMonitor`.

Tasks send one compact, columnar payload per chunk (``log_event`` under
:data:`METRICS_TOPIC`: per node, the chunk's item durations, statuses, attempts, error
classes, bytes and megapixels). The plugin also follows the task transitions it needs
(queued, processing, memory, erred, Dask retries) to know the queue depth and the chunks
in flight, and samples every worker's CPU, memory and GPU from the heartbeats the
scheduler already receives, so that sampling costs the workers nothing.

Everything it holds is bounded: per node a fixed histogram and a reservoir of recent
durations, per worker a ring of samples, one-second bins for the timelines, a capped
number of runs, nodes, workers and chunks in flight.

This module collects only. It never imports Bokeh (the dashboard page, the JSON routes
and the Prometheus collector read :meth:`DagflowMonitor.snapshot` and the counters).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import functools
import logging
import math
import time
from array import array
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from distributed.diagnostics.plugin import SchedulerPlugin

from dagflow.monitor.sampling import worker_sample

__all__ = [
    "BREAKER_TOPIC",
    "DURATION_BUCKETS",
    "METRICS_TOPIC",
    "PLUGIN_NAME",
    "DagflowMonitor",
    "NodeStats",
    "ensure_plugin",
]

logger = logging.getLogger(__name__)

PLUGIN_NAME = "dagflow-monitor"
#: ``log_event`` topic of the per-chunk payloads sent by tasks.
METRICS_TOPIC = "dagflow-metrics"
#: ``log_event`` topic of circuit-breaker changes sent by the runtime.
BREAKER_TOPIC = "dagflow-breaker"
#: Name of the task layer that commits a chunk's records (see ``dagflow.compile``).
COMMIT_NODE = "dagflow-records"

#: Upper bounds (seconds) of the item-duration histogram, as Prometheus ``le`` buckets.
DURATION_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0, 600.0, math.inf,
)
#: Recent item durations kept per node for live percentiles.
RESERVOIR = 4096
#: One-second bins kept for the throughput and queue timelines (an hour).
TIMELINE = 3600
#: Samples kept per worker.
WORKER_SAMPLES = 900
MAX_RUNS = 16
MAX_NODES = 512
MAX_WORKERS = 2048
MAX_CHUNKS = 20_000
#: Task states that count as waiting for a thread (the queue).
QUEUED_STATES = ("waiting", "queued", "no-worker")
TASK_STATES = (*QUEUED_STATES, "processing", "memory", "erred")
STATUSES = ("ok", "failed", "skipped", "upstream_failed")


def _counted(method: Any) -> Any:
    """Add the CPU a plugin method takes (the scheduler thread's clock) to its ``cpu_s``."""
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any) -> Any:
        t0 = time.thread_time()
        try:
            return method(self, *args)
        finally:
            self.cpu_s += time.thread_time() - t0
    return wrapper


def _quantile(sorted_values: list[float], q: float) -> float | None:
    """Linear-interpolated quantile of sorted values (numpy's default method)."""
    n = len(sorted_values)
    if n == 0:
        return None
    pos = q * (n - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


_bucket = functools.partial(bisect.bisect_left, DURATION_BUCKETS)


def payload_durations(entry: Mapping[str, Any]) -> list[float]:
    """The durations of a node's entry in a chunk's payload: float64 bytes (or a list).

    Examples
    --------
    >>> from array import array
    >>> payload_durations({"d": array("d", [0.25, 1.5]).tobytes()})
    [0.25, 1.5]
    """
    values = entry.get("d") or ()
    if isinstance(values, bytes | bytearray | memoryview):
        return array("d", bytes(values)).tolist()
    return [float(v) for v in values]


class NodeStats:
    """What is known about one node: counts, a fixed histogram, recent durations.

    Examples
    --------
    >>> s = NodeStats("resize")
    >>> s.add_durations([0.1, 0.2, 0.3])
    >>> s.count, round(s.quantile(0.5), 3), s.histogram()[-1]
    (3, 0.2, 3)
    """

    __slots__ = ("bytes_in", "bytes_out", "count", "counts", "devices", "errors", "hist",
                 "item_retries", "megapixels", "name", "op", "recent", "sum", "task_retries")

    def __init__(self, name: str, op: str | None = None) -> None:
        self.name = name
        self.op = op
        self.counts: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.devices: dict[str, int] = {}
        self.hist = [0] * len(DURATION_BUCKETS)
        self.sum = 0.0
        self.count = 0
        self.recent: deque[float] = deque(maxlen=RESERVOIR)
        self.item_retries = 0
        self.task_retries = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.megapixels = 0.0

    def add_durations(self, durations: Iterable[float]) -> None:
        # a chunk's thousand durations at C speed: this runs on the scheduler's loop
        values = list(map(float, durations))
        for bucket, n in collections.Counter(map(_bucket, values)).items():
            self.hist[bucket] += n
        self.sum += math.fsum(values)
        self.count += len(values)
        self.recent.extend(values)

    def add_counts(self, target: dict[str, int], counts: Mapping[str, int]) -> None:
        for k, n in counts.items():
            target[k] = target.get(k, 0) + int(n)

    def ingest(self, entry: Mapping[str, Any]) -> None:
        """Add one chunk's entry for this node (see :func:`dagflow.monitor.hooks`)."""
        if entry.get("op") and not self.op:
            self.op = entry["op"]
        self.add_durations(payload_durations(entry))
        self.add_counts(self.counts, entry.get("s", {}))
        self.add_counts(self.errors, entry.get("e", {}))
        self.add_counts(self.devices, entry.get("dev", {}))
        self.item_retries += int(entry.get("r", 0))
        self.bytes_in += int(entry.get("bi", 0))
        self.bytes_out += int(entry.get("bo", 0))
        self.megapixels += float(entry.get("mp", 0.0))

    def quantile(self, q: float) -> float | None:
        """Quantile ``q`` of the recent durations (``None`` before any)."""
        return _quantile(sorted(self.recent), q)

    def histogram(self) -> list[int]:
        """Cumulative bucket counts, aligned with :data:`DURATION_BUCKETS`."""
        out, total = [], 0
        for n in self.hist:
            total += n
            out.append(total)
        return out

    def to_dict(self) -> dict[str, Any]:
        recent = sorted(self.recent)
        done = sum(self.counts.values())
        return {
            "node": self.name, "op": self.op, "done": done,
            **{s: self.counts.get(s, 0) for s in STATUSES},
            "count": self.count,
            "mean": self.sum / self.count if self.count else None,
            "p50": _quantile(recent, 0.5), "p90": _quantile(recent, 0.9),
            "p95": _quantile(recent, 0.95), "p99": _quantile(recent, 0.99),
            "max": recent[-1] if recent else None, "total_s": self.sum,
            "errors": dict(self.errors), "item_retries": self.item_retries,
            "task_retries": self.task_retries, "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out, "megapixels": self.megapixels,
            "devices": dict(self.devices),
        }


class RunState:
    """One run as the plugin sees it."""

    def __init__(self, run_id: str, info: Mapping[str, Any] | None = None) -> None:
        info = dict(info or {})
        self.run_id = run_id
        self.workflow = info.get("workflow")
        self.run_dir = info.get("run_dir")
        self.items = info.get("items")
        self.nodes: dict[str, dict[str, Any]] = dict(info.get("nodes") or {})
        self.started = float(info.get("started") or time.time())
        self.finished: float | None = None
        self.stats: dict[str, NodeStats] = {}
        self.items_done = 0
        self.items_failed = 0
        self.chunks_done = 0
        self.fine_start: dict[tuple[str, str], float] = {}
        self.cpu_start = 0.0

    def node(self, name: str, op: str | None = None) -> NodeStats | None:
        stats = self.stats.get(name)
        if stats is None:
            if len(self.stats) >= MAX_NODES:
                return None
            if op is None:
                op = self.nodes.get(name, {}).get("op")
            stats = self.stats[name] = NodeStats(name, op)
        return stats

    def describe(self) -> dict[str, Any]:
        end = self.finished or time.time()
        return {"run_id": self.run_id, "workflow": self.workflow, "run_dir": self.run_dir,
                "items": self.items, "items_done": self.items_done,
                "items_failed": self.items_failed, "chunks_done": self.chunks_done,
                "started": self.started, "finished": self.finished,
                "elapsed_s": end - self.started,
                "nodes": {k: dict(v) for k, v in self.nodes.items()}}


class DagflowMonitor(SchedulerPlugin):
    """Collects per-node, per-item measurements of dagflow runs on the scheduler.

    Install it with :func:`ensure_plugin` (server side), ``client.register_plugin`` or the
    scheduler preload :mod:`dagflow.monitor.preload`; installing it twice keeps the first.

    Parameters
    ----------
    scheduler
        The scheduler; ``None`` until :meth:`start` (when registered from a client).
    sample_interval
        Seconds between samples of worker resources and queue depth.
    """

    name: ClassVar[str] = PLUGIN_NAME
    idempotent: ClassVar[bool] = True

    def __init__(self, scheduler: Any = None, *, sample_interval: float | None = None) -> None:
        self.scheduler = None
        self.sample_interval = sample_interval
        self._callback: Any = None
        self._reset()
        if scheduler is not None:
            self._bind(scheduler)

    # --- lifecycle ------------------------------------------------------------------

    def _reset(self) -> None:
        self.runs: OrderedDict[str, RunState] = OrderedDict()
        self.current: str | None = None
        #: Cumulative per node over every run (what Prometheus exports).
        self.totals: dict[str, NodeStats] = {}
        self.breakers: dict[str, str] = {}
        self.timeline: deque[list[float]] = deque(maxlen=TIMELINE)  # t, done, failed, err, retry
        self.queue: deque[tuple[float, int, int, int, int]] = deque(maxlen=TIMELINE)
        self.workers: OrderedDict[str, deque[tuple]] = OrderedDict()
        self.chunks: OrderedDict[tuple[str, int], dict[str, Any]] = OrderedDict()
        self.tasks: dict[str, dict[str, int]] = {}
        self.task_retries = 0
        self.events_seen = 0
        self._layers: dict[str, str | None] = {}
        #: CPU seconds the plugin has spent in the scheduler's thread (its own cost).
        self.cpu_s = 0.0

    def _bind(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        if self._callback is None:
            from tornado.ioloop import PeriodicCallback

            from dagflow import config

            interval = self.sample_interval or float(config.get("monitor.sample-interval", 1.0))
            self.sample_interval = interval
            try:
                asyncio.get_running_loop()
            except RuntimeError:  # no running loop: a plugin driven by hand, in tests
                return
            self._callback = PeriodicCallback(self.sample, max(50.0, interval * 1000))
            self._callback.start()

    async def start(self, scheduler: Any) -> None:
        self._bind(scheduler)

    async def close(self) -> None:
        if self._callback is not None:
            self._callback.stop()
            self._callback = None

    def restart(self, scheduler: Any) -> None:
        self.chunks.clear()

    # --- runs -----------------------------------------------------------------------

    def begin_run(self, info: Mapping[str, Any]) -> None:
        """A run starts (called through ``run_on_scheduler`` by the runtime)."""
        run_id = str(info["run_id"])
        state = self.runs.get(run_id) or RunState(run_id, info)
        if run_id in self.runs:  # learnt from payloads first: keep counts, add the plan
            state.nodes.update(info.get("nodes") or {})
            state.workflow = info.get("workflow", state.workflow)
            state.run_dir = info.get("run_dir", state.run_dir)
            state.items = info.get("items", state.items)
        self.runs[run_id] = state
        self.runs.move_to_end(run_id)
        while len(self.runs) > MAX_RUNS:
            self.runs.popitem(last=False)
        self.current = run_id
        self._layers.clear()
        state.fine_start = self._fine_metrics(state.nodes)
        state.cpu_start = self.cpu_s

    def end_run(self, run_id: str) -> dict[str, Any]:
        """A run ends: mark it and return what only the scheduler knows, as columns."""
        state = self.runs.get(run_id)
        if state is None:
            return {}
        state.finished = time.time()
        self.sample()
        start = state.started - 1.0
        fine_end = self._fine_metrics(state.nodes)
        fine = [
            {"node_id": node, "activity": activity,
             "seconds": value - state.fine_start.get((node, activity), 0.0)}
            for (node, activity), value in fine_end.items()
        ]
        timeline = [row for row in self.timeline if row[0] >= start]
        queue = [row for row in self.queue if row[0] >= start]
        workers = []
        for address, samples in self.workers.items():
            for s in samples:
                if s[0] >= start:
                    workers.append((address, *s))
        return {
            "run": state.describe(),
            "nodes": {name: s.to_dict() for name, s in state.stats.items()},
            "tasks": {k: dict(v) for k, v in self.tasks.items()},
            "breakers": dict(self.breakers),
            "timeline": _columns(timeline, ("time", "items_done", "items_failed", "errors",
                                            "retries")),
            "queue": _columns(queue, ("time", "queued", "processing", "in_memory",
                                      "chunks_in_flight")),
            "workers": _columns(workers, ("worker", "time", "cpu", "memory", "memory_limit",
                                          "gpu_utilization", "gpu_memory", "nthreads",
                                          "executing")),
            "fine_metrics": fine,
            # the plugin's CPU while the run ran (other runs' share included, if any)
            "cpu_s": self.cpu_s - state.cpu_start,
        }

    def _fine_metrics(self, nodes: Mapping[str, Any]) -> dict[tuple[str, str], float]:
        """Dask's per-prefix execute seconds (thread CPU vs not) for the run's nodes."""
        out: dict[tuple[str, str], float] = {}
        metrics = getattr(self.scheduler, "cumulative_worker_metrics", None) or {}
        for key, value in list(metrics.items()):
            if (isinstance(key, tuple) and len(key) == 4 and key[0] == "execute"
                    and key[3] == "seconds" and key[1] in nodes):
                out[(key[1], key[2])] = float(value)
        return out

    def _run(self, run_id: str | None) -> RunState | None:
        if run_id is None:
            run_id = self.current
        return self.runs.get(run_id) if run_id is not None else None

    # --- collection -----------------------------------------------------------------

    @_counted
    def log_event(self, topic: str, msg: Any) -> None:
        if topic == METRICS_TOPIC:
            try:
                self.ingest(msg)
            except Exception:  # a malformed payload must never hurt the scheduler
                logger.debug("ignored a malformed dagflow metrics payload", exc_info=True)
        elif topic == BREAKER_TOPIC and isinstance(msg, Mapping):
            node = str(msg.get("node"))
            if node in self.breakers or len(self.breakers) < MAX_NODES:
                self.breakers[node] = str(msg.get("state"))

    def ingest(self, payload: Mapping[str, Any]) -> None:
        """Add one chunk's payload (see :func:`dagflow.monitor.hooks.chunk_payload`)."""
        self.events_seen += 1
        run_id = str(payload.get("run"))
        state = self.runs.get(run_id)
        if state is None:
            state = self.runs[run_id] = RunState(run_id)
            while len(self.runs) > MAX_RUNS:
                self.runs.popitem(last=False)
            if self.current is None or self.current not in self.runs:
                self.current = run_id
        retries = 0
        errors = 0
        for name, entry in (payload.get("nodes") or {}).items():
            stats = state.node(name, entry.get("op"))
            if stats is not None:
                stats.ingest(entry)
            total = self.totals.get(name)
            if total is None and len(self.totals) < MAX_NODES:
                total = self.totals[name] = NodeStats(name, entry.get("op"))
                self._layers.clear()  # layers of this node may have been cached as foreign
            if total is not None:
                total.ingest(entry)
            retries += int(entry.get("r", 0))
            errors += int(entry.get("s", {}).get("failed", 0))
        items = int(payload.get("items", 0))
        failed = int(payload.get("failed", 0))
        state.items_done += items
        state.items_failed += failed
        state.chunks_done += 1
        row = self._bin(time.time())
        row[1] += items
        row[2] += failed
        row[3] += errors
        row[4] += retries

    def _bin(self, now: float) -> list[float]:
        t = float(math.floor(now))
        if not self.timeline or self.timeline[-1][0] != t:
            self.timeline.append([t, 0, 0, 0, 0])
        return self.timeline[-1]

    def _node_of(self, layer: str) -> str | None:
        """The dagflow node of a task layer, or ``None`` for other tasks."""
        try:
            return self._layers[layer]
        except KeyError:
            pass
        from dask.utils import key_split

        name = key_split(layer)
        state = self._run(None)
        known = name == COMMIT_NODE or (state is not None and name in state.nodes) \
            or name in self.totals
        node = name if known else None
        if len(self._layers) > 10_000:
            self._layers.clear()
        self._layers[layer] = node
        return node

    def transition(self, key: Any, start: str, finish: str, *args: Any,
                   stimulus_id: str | None = None, **kwargs: Any) -> None:
        if not (isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], str)):
            return  # not a dagflow task: the cheap test, outside the count
        self._transition(key, start, finish, stimulus_id)

    @_counted
    def _transition(self, key: tuple[str, Any], start: str, finish: str,
                    stimulus_id: str | None) -> None:
        layer = key[0]
        node = self._node_of(layer)
        if node is None:
            return
        counts = self.tasks.get(node)
        if counts is None:
            if len(self.tasks) >= MAX_NODES:
                return
            counts = self.tasks[node] = {}
        counts[finish] = counts.get(finish, 0) + 1
        chunk_id = (layer[len(node) + 1:], key[1])
        if node == COMMIT_NODE:
            if finish in ("memory", "erred", "forgotten", "released"):
                self.chunks.pop(chunk_id, None)
            return
        if start == "processing" and finish in ("waiting", "released") and stimulus_id \
                and stimulus_id.startswith("task-erred"):
            self.task_retries += 1
            counts["retry"] = counts.get("retry", 0) + 1
            state = self._run(None)
            stats = state.node(node) if state is not None else None
            if stats is not None:
                stats.task_retries += 1
            total = self.totals.get(node)
            if total is not None:
                total.task_retries += 1
            self._bin(time.time())[4] += 1
        if finish == "processing":
            chunk = self.chunks.get(chunk_id)
            if chunk is None:
                state = self._run(None)
                total = len(state.nodes) if state is not None and state.nodes else None
                chunk = self.chunks[chunk_id] = {"started": time.time(), "done": 0,
                                                 "total": total, "running": set()}
                while len(self.chunks) > MAX_CHUNKS:
                    self.chunks.popitem(last=False)
            chunk["running"].add(node)
        elif start == "processing":
            chunk = self.chunks.get(chunk_id)
            if chunk is not None:
                chunk["running"].discard(node)
                if finish == "memory":
                    chunk["done"] += 1
                elif finish == "erred":
                    chunk["erred"] = True

    # --- sampling -------------------------------------------------------------------

    def sample(self) -> None:
        """Sample worker resources and the queue depth (a periodic callback)."""
        scheduler = self.scheduler
        if scheduler is None:
            return
        self._sample(scheduler)

    @_counted
    def _sample(self, scheduler: Any) -> None:
        now = time.time()
        try:
            for address, ws in list(scheduler.workers.items()):
                ring = self.workers.get(address)
                if ring is None:
                    ring = self.workers[address] = deque(maxlen=WORKER_SAMPLES)
                    while len(self.workers) > MAX_WORKERS:
                        self.workers.popitem(last=False)
                s = worker_sample(ws)
                ring.append((now, s["cpu"], s["memory"], s["memory_limit"],
                             s["gpu_utilization"], s["gpu_memory"], s["nthreads"],
                             s["executing"]))
            q = self.queue_depth()
            self.queue.append((now, q["queued"], q["processing"], q["in_memory"],
                               len(self.chunks)))
        except Exception:
            logger.debug("dagflow monitor sampling failed", exc_info=True)

    def queue_depth(self) -> dict[str, Any]:
        """Tasks of dagflow's nodes by state, now, from the scheduler's task groups."""
        by_node: dict[str, dict[str, int]] = {}
        scheduler = self.scheduler
        groups = getattr(scheduler, "task_groups", {}) if scheduler is not None else {}
        for name, tg in list(groups.items()):
            node = self._node_of(name) if isinstance(name, str) else None
            if node is None:
                continue
            row = by_node.setdefault(node, dict.fromkeys(TASK_STATES, 0))
            for st in TASK_STATES:
                row[st] += tg.states.get(st, 0)
        total = {st: sum(r[st] for r in by_node.values()) for st in TASK_STATES}
        return {"queued": sum(total[s] for s in QUEUED_STATES),
                "processing": total["processing"], "in_memory": total["memory"],
                "erred": total["erred"], "by_node": by_node}

    # --- reading --------------------------------------------------------------------

    def snapshot(self, run_id: str | None = None, *, window: float = 300.0) -> dict[str, Any]:
        """Everything the dashboard page and the JSON routes show, JSON-ready."""
        now = time.time()
        state = self._run(run_id)
        q = self.queue_depth()
        nodes = []
        if state is not None:
            names = list(state.nodes) or list(state.stats)
            names += [n for n in state.stats if n not in names]
            for name in names:
                stats = state.stats.get(name) or NodeStats(name, state.nodes.get(name, {})
                                                           .get("op"))
                row = stats.to_dict()
                done = row["done"]
                row["pending"] = max(0, int(state.items) - done) if state.items is not None \
                    else None
                row["tasks"] = q["by_node"].get(name, dict.fromkeys(TASK_STATES, 0))
                row["breaker"] = self.breakers.get(name, "closed")
                nodes.append(row)
        timeline = [r for r in self.timeline if r[0] >= now - window]
        queue = [r for r in self.queue if r[0] >= now - window]
        workers = []
        for address, ring in self.workers.items():
            if not ring or (self.scheduler is not None and address not in self.scheduler.workers):
                continue
            t, cpu, mem, limit, gpu, gpu_mem, nthreads, executing = ring[-1]
            workers.append({"worker": address, "time": t, "cpu": cpu, "memory": mem,
                            "memory_limit": limit, "gpu_utilization": gpu,
                            "gpu_memory": gpu_mem, "nthreads": nthreads,
                            "executing": executing})
        chunks = []
        for (token, index), c in list(self.chunks.items())[-200:]:
            total = c["total"] or max(1, c["done"] + len(c["running"]))
            chunks.append({"chunk": index, "token": token, "started": c["started"],
                           "elapsed_s": now - c["started"], "nodes_done": c["done"],
                           "nodes_total": total, "running": sorted(c["running"]),
                           "progress": min(1.0, c["done"] / total),
                           "erred": bool(c.get("erred"))})
        return {
            "time": now,
            "run": state.describe() if state is not None else None,
            "runs": list(self.runs),
            "nodes": nodes,
            "queue_now": {k: v for k, v in q.items() if k != "by_node"},
            "throughput": _columns(timeline, ("time", "items_done", "items_failed", "errors",
                                              "retries")),
            "queue": _columns(queue, ("time", "queued", "processing", "in_memory",
                                      "chunks_in_flight")),
            "workers": workers,
            "chunks": chunks,
            "breakers": dict(self.breakers),
            "task_retries": self.task_retries,
        }


def _columns(rows: Iterable[Iterable[Any]], names: tuple[str, ...]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {n: [] for n in names}
    for row in rows:
        for n, v in zip(names, row, strict=True):
            out[n].append(v)
    return out


def ensure_plugin(scheduler: Any) -> DagflowMonitor:
    """The scheduler's :class:`DagflowMonitor`, added (and started) if it has none."""
    plugin = scheduler.plugins.get(PLUGIN_NAME)
    if plugin is None:
        plugin = DagflowMonitor(scheduler)
        scheduler.add_plugin(plugin, name=PLUGIN_NAME, idempotent=True)
    elif getattr(plugin, "scheduler", None) is None:
        plugin._bind(scheduler)
    return plugin
