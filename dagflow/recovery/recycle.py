"""Replacing a worker that holds the threads of timed-out items.

An item that overruns its node's ``timeout`` cannot be stopped from Python (it may be
stuck in a decoder's C code): the item loop records its timeout and leaves its thread
running (:mod:`dagflow.recovery.watch`). A long batch with a few such items would pile
those threads up in its workers, each holding its memory. So a worker that holds one
is replaced once its other work is done: it stops taking tasks (paused, as Dask pauses
a worker short of memory), waits for the tasks it is running to finish, and if an
abandoned thread is still alive by then, retires gracefully (its results handed to
other workers) and exits; its nanny starts a fresh process in its place. If the
threads finished meanwhile, the worker simply goes on.

A worker without a nanny (``dask worker --no-nanny``, the threads of an in-process
cluster) cannot be replaced: a warning says so, and the threads stay until their ops
return.

This module runs inside tasks on workers; it imports Dask only when it acts.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from typing import Any

__all__ = ["replace_when_idle"]

logger = logging.getLogger(__name__)

#: The abandoned threads of this process, and whether a replacement is under way.
_ABANDONED: list[threading.Thread] = []
_LOCK = threading.Lock()
_PENDING = [False]

#: Seconds between two looks at the worker while it finishes its running tasks.
POLL_S = 0.05


def replace_when_idle(threads: Sequence[threading.Thread]) -> None:
    """Have this worker replaced once its running tasks are done, if any of ``threads``
    (abandoned by timed-out items) is still alive then (see the module docstring)."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return  # not on a Dask worker: nothing to replace
    with _LOCK:
        _ABANDONED.extend(threads)
        if _PENDING[0]:
            return
        if not worker.nanny:
            logger.warning("worker %s holds %d thread(s) of timed-out items and has no "
                           "nanny to replace it: they run until their ops return",
                           worker.address, sum(t.is_alive() for t in _ABANDONED))
            return
        _PENDING[0] = True
    worker.loop.add_callback(_replace, worker)


async def _replace(worker: Any) -> None:
    from distributed.core import Status

    manager = worker.memory_manager
    pause_fraction = manager.memory_pause_fraction
    try:
        # paused, the worker starts no task and the scheduler sends it none; its memory
        # monitor must not resume it meanwhile (it is about to go)
        manager.memory_pause_fraction = False
        if worker.status == Status.running:
            worker.status = Status.paused
        while worker.state.executing_count:
            await asyncio.sleep(POLL_S)
        with _LOCK:
            _ABANDONED[:] = [t for t in _ABANDONED if t.is_alive()]
            alive = len(_ABANDONED)
        if not alive:
            manager.memory_pause_fraction = pause_fraction
            if worker.status == Status.paused:
                worker.status = Status.running
            return
        logger.warning("replacing worker %s: it holds %d thread(s) of timed-out items",
                       worker.address, alive)
        await worker.close_gracefully(restart=True,
                                      reason="dagflow-timed-out-items-left-threads")
    finally:
        with _LOCK:
            _PENDING[0] = False
