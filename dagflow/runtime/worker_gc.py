"""Keep a worker's own long-lived objects out of Python's full garbage collections.

A full (generation 2) collection walks every container object of the process. A worker
process holds about 100,000 of them before it runs anything (Dask, numpy, pyarrow,
dagflow's modules), and walking them takes 50-100 ms; a chunk of a thousand items
allocates enough records and images to trigger two or three such collections, so a
fast node (a header read) lost several microseconds an item to walking objects that can
never be garbage. :class:`FreezeStartupObjects` collects once and then freezes what is
left (:func:`gc.freeze`): later collections walk only what the tasks allocate.

Frozen objects are still freed when their last reference goes; only a reference cycle
among them would never be collected. Hence once per worker process, right after a full
collection, and never in a process that runs the client (a notebook's kernel with an
in-process cluster): there, the objects are the user's.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import os
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["PLUGIN_NAME", "FreezeStartupObjects", "freeze_startup_objects", "register"]

logger = logging.getLogger(__name__)

PLUGIN_NAME = "dagflow-gc-freeze"

#: What a run's tasks import (their objects are frozen with the rest): the item loop, the
#: built-in ops, checkpoints and monitoring; pandas, which pyarrow imports when it builds
#: a table (if installed), and OpenTelemetry (if installed).
_TASK_MODULES = ("dagflow.execute", "dagflow.ops", "dagflow.recovery.checkpoint",
                 "dagflow.monitor.hooks", "dagflow.monitor.sampling", "dagflow.monitor.store",
                 "dagflow.monitor.otel", "pyarrow.parquet", "pandas")

#: Whether this process has frozen its objects already.
_frozen = False


def freeze_startup_objects() -> int:
    """Import what tasks use, collect, freeze; once per process. Returns the frozen count."""
    global _frozen
    if not _frozen:
        for module in _TASK_MODULES:
            with contextlib.suppress(ImportError):  # an optional one, not installed
                importlib.import_module(module)
        gc.collect()
        gc.freeze()
        _frozen = True
    return gc.get_freeze_count()


class FreezeStartupObjects(WorkerPlugin):
    """Worker plugin: :func:`freeze_startup_objects` on every worker process, except the
    one the client runs in (``client_pid``)."""

    name = PLUGIN_NAME
    idempotent = True  # registered by every run; set up once per worker

    def __init__(self, client_pid: int) -> None:
        self.client_pid = int(client_pid)

    def setup(self, worker: Any) -> None:
        if os.getpid() == self.client_pid:
            return
        frozen = freeze_startup_objects()
        logger.debug("worker %s: %d objects frozen out of full collections",
                     getattr(worker, "address", "?"), frozen)


def register(client: Any) -> None:
    """Register :class:`FreezeStartupObjects` on ``client``'s cluster."""
    try:
        client.register_plugin(FreezeStartupObjects(os.getpid()), name=PLUGIN_NAME)
    except Exception as exc:  # a locked-down cluster: only slower
        logger.debug("no dagflow-gc-freeze plugin (%s: %s)", type(exc).__name__, exc)
