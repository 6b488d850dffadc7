"""What the cluster's workers can hold, and telling them to say so.

A run asks every worker to advertise, as Dask resources:

* ``MEMORY``: its budget, :func:`dagflow.resources.worker_budget` of its own memory limit
  (computed on the worker: a heterogeneous cluster gets one budget per worker); a
  worker that already declares ``MEMORY`` (``dask worker --resources MEMORY=...``) keeps
  its own figure;
* ``dagflow-<node>: n`` for every node with ``concurrency: n``, so that at most ``n`` of
  that node's tasks run at once per worker;
* ``GPU: 1`` when the worker sees a CUDA device and does not declare ``GPU`` itself
  (``dagflow.resources.detect-gpu``); dask-cuda workers started by dagflow declare it.

This is done by a :class:`AdvertiseResources` worker plugin (``Client.register_plugin``),
so that it also reaches workers that join later or are restarted by their nanny, on
the embedded cluster and on any existing one alike. Dask's scheduler places its waiting
(``no-worker``) tasks when a worker joins, not when a worker's resources change, so the
plugin then calls a small scheduler handler (installed by :func:`advertise`) that does it:
without it, tasks restricted to ``MEMORY`` would wait forever for a restarted worker.
:func:`cluster_capacity` then reads back, from the scheduler, every worker's threads,
memory limit and resources.

:func:`local_capacity` describes the embedded ``LocalCluster`` a run *would* start,
without starting it (for ``dagflow plan``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from dagflow import config
from dagflow.resources import GPU, MEMORY, worker_budget

__all__ = ["AdvertiseResources", "ClusterCapacity", "WorkerCapacity", "advertise",
           "cluster_capacity", "local_capacity", "prepare_cluster"]

logger = logging.getLogger(__name__)

PLUGIN_NAME = "dagflow-resources"


@dataclass(frozen=True)
class WorkerCapacity:
    """One worker: ``name``, ``nthreads``, ``memory_limit`` (bytes or 0) and ``resources``."""

    name: str
    nthreads: int
    memory_limit: int
    resources: Mapping[str, float] = field(default_factory=dict)

    @property
    def budget(self) -> int:
        """The ``MEMORY`` it advertises (0 when it advertises none)."""
        return int(self.resources.get(MEMORY, 0))

    @property
    def gpus(self) -> float:
        return float(self.resources.get(GPU, 0))


@dataclass(frozen=True)
class ClusterCapacity:
    """The workers a run can use."""

    workers: tuple[WorkerCapacity, ...]

    @property
    def threads(self) -> int:
        return sum(w.nthreads for w in self.workers) or 1

    @property
    def has_memory(self) -> bool:
        """Whether every worker advertises ``MEMORY`` (so tasks may be annotated with it)."""
        return bool(self.workers) and all(w.budget > 0 for w in self.workers)

    @property
    def has_gpu(self) -> bool:
        return any(w.gpus > 0 for w in self.workers)

    @property
    def min_budget(self) -> int:
        return min((w.budget for w in self.workers if w.budget > 0), default=0)

    @property
    def max_budget(self) -> int:
        return max((w.budget for w in self.workers), default=0)

    def has_resource(self, name: str) -> bool:
        """Whether some worker advertises ``name``."""
        return any(w.resources.get(name, 0) > 0 for w in self.workers)

    def to_dict(self) -> dict[str, Any]:
        return {"workers": len(self.workers), "threads": self.threads,
                "min_budget": self.min_budget, "max_budget": self.max_budget,
                "gpus": sum(w.gpus for w in self.workers),
                "memory_limits": sorted({w.memory_limit for w in self.workers})}


def _total_memory() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # psutil comes with distributed; be safe anyway
        return 0


class AdvertiseResources(WorkerPlugin):
    """Worker plugin: advertise ``MEMORY``, concurrency slots and ``GPU`` (see module doc).

    Parameters
    ----------
    margin
        Fraction of the memory limit kept free.
    slots
        Resource name to amount, e.g. ``{"dagflow-save": 2}``.
    detect_gpu
        Advertise ``GPU: 1`` when a CUDA device is visible and ``GPU`` is not declared.
    """

    name = PLUGIN_NAME
    idempotent = False

    def __init__(self, margin: float, slots: Mapping[str, float] | None = None,
                 detect_gpu: bool = True) -> None:
        self.margin = float(margin)
        self.slots = dict(slots or {})
        self.detect_gpu = bool(detect_gpu)

    async def setup(self, worker: Any) -> None:
        total = worker.state.total_resources
        ours = getattr(worker, "_dagflow_advertised", set())
        wanted: dict[str, float] = dict(self.slots)
        if MEMORY not in total or MEMORY in ours:
            limit = getattr(worker.memory_manager, "memory_limit", None)
            baseline = 0.0
            try:
                baseline = float(worker.monitor.get_process_memory())
            except Exception:
                logger.debug("no process memory for %s", worker.address, exc_info=True)
            wanted[MEMORY] = worker_budget(limit, margin=self.margin, baseline=baseline,
                                           total_memory=_total_memory())
        if self.detect_gpu and (GPU not in total or GPU in ours):
            from dagflow.ops.dispatch import gpu_available

            if gpu_available():
                wanted[GPU] = 1
        worker._dagflow_advertised = ours | set(wanted)
        if wanted:
            await worker.set_resources(**wanted)
            try:  # let the scheduler place tasks that were waiting for these resources
                await worker.scheduler.dagflow_resources_changed(worker=worker.address)
            except Exception as exc:
                logger.debug("the scheduler has no dagflow resources handler: %s", exc)


HANDLER = "dagflow_resources_changed"


def _resources_changed(scheduler: Any, worker: str) -> str:
    """Scheduler handler: a worker's resources changed, place the tasks waiting for them.

    Dask's scheduler looks for a worker for its unrunnable (``no-worker``) tasks when a
    worker joins, not when a worker's resources change: a worker restarted by its nanny
    joins without ``MEMORY`` and gets it from the plugin a moment later, and the tasks
    waiting for it would wait forever.
    """
    import time as _time

    ws = scheduler.workers.get(worker)
    if ws is None or not scheduler.unrunnable:
        return "OK"
    stimulus_id = f"dagflow-resources-{_time.time()}"
    scheduler.transitions(scheduler.bulk_schedule_unrunnable_after_adding_worker(ws),
                          stimulus_id)
    return "OK"


def _install_handler(dask_scheduler: Any = None) -> bool:
    scheduler = dask_scheduler

    def dagflow_resources_changed(worker: str) -> str:
        return _resources_changed(scheduler, worker)

    scheduler.handlers[HANDLER] = dagflow_resources_changed
    return True


def advertise(client: Any, slots: Mapping[str, float] | None = None, *,
              margin: float | None = None) -> None:
    """Register :class:`AdvertiseResources` on ``client``'s cluster (waits for the
    current workers)."""
    if margin is None:
        margin = float(config.get("resources.memory-margin"))
    plugin = AdvertiseResources(margin, slots, bool(config.get("resources.detect-gpu")))
    try:
        client.run_on_scheduler(_install_handler)
        client.register_plugin(plugin, name=PLUGIN_NAME)
    except Exception as exc:  # an old or locked-down scheduler: run without MEMORY
        logger.warning("workers could not be told their memory budget (%s: %s); tasks run "
                       "without MEMORY restrictions", type(exc).__name__, exc)


def _worker_table(dask_scheduler: Any = None) -> list[dict[str, Any]]:
    return [{"name": str(ws.name), "nthreads": int(ws.nthreads),
             "memory_limit": int(ws.memory_limit or 0), "resources": dict(ws.resources)}
            for ws in dask_scheduler.workers.values()]


def cluster_capacity(client: Any) -> ClusterCapacity:
    """Every worker's threads, memory limit and resources, from the scheduler."""
    rows = client.run_on_scheduler(_worker_table)
    return ClusterCapacity(tuple(WorkerCapacity(**r) for r in rows))


def prepare_cluster(client: Any, workflow: Any) -> ClusterCapacity:
    """Tell the workers their resources for ``workflow`` (``MEMORY``, its nodes'
    concurrency slots, ``GPU``), freeze their startup objects out of full garbage
    collections (:mod:`dagflow.runtime.worker_gc`), and read back what every worker
    advertises."""
    from dagflow.resources import concurrency_resource

    slots = {concurrency_resource(n.id): int(n.concurrency)
             for n in workflow.nodes if n.concurrency}
    advertise(client, slots)
    if config.get("runtime.worker-gc-freeze"):
        from dagflow.runtime import worker_gc

        worker_gc.register(client)
    return cluster_capacity(client)


def local_capacity(local_options: Mapping[str, Any] | None = None) -> ClusterCapacity:
    """The embedded ``LocalCluster`` a run would start with ``local_options``, described
    without starting it (as :func:`~dagflow.runtime.cluster.start_local_cluster` and
    Dask would size it)."""
    from dask.system import CPU_COUNT
    from distributed.deploy.utils import nprocesses_nthreads
    from distributed.worker_memory import parse_memory_limit

    from dagflow.runtime.cluster import resolve_local_sizes

    sizes = resolve_local_sizes(local_options)
    n_workers, threads, limit = (sizes["n_workers"], sizes["threads_per_worker"],
                                 sizes["memory_limit"])
    if n_workers is None and threads is None:
        n_workers, threads = nprocesses_nthreads()
    elif n_workers is None:
        n_workers = max(1, CPU_COUNT // int(threads))
    elif threads is None:
        threads = max(1, -(-CPU_COUNT // int(n_workers)))
    if limit is None:  # LocalCluster's own default: the machine shared by the workers
        memory = parse_memory_limit("auto", 1, int(n_workers), logger=logger)
    else:  # what each Worker makes of the limit it is given
        memory = parse_memory_limit(limit, int(threads), logger=logger)
    memory = int(memory or 0)
    resources: dict[str, float] = {MEMORY: worker_budget(memory, total_memory=_total_memory())}
    if config.get("resources.detect-gpu"):  # as AdvertiseResources will find it
        from dagflow.ops.dispatch import gpu_available

        if gpu_available():
            resources[GPU] = 1
    workers = tuple(WorkerCapacity(f"local-{i}", int(threads), memory, dict(resources))
                    for i in range(int(n_workers)))
    return ClusterCapacity(workers)
