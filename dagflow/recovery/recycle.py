"""Replacing a worker that holds the threads of timed-out items.

An item that overruns its node's ``timeout`` cannot be stopped from Python (it may be
stuck in a decoder's C code): the item loop records its timeout and leaves its thread
running (:mod:`dagflow.recovery.watch`). A long batch with a few such items would pile
those threads up in its workers, each holding its memory. So the tasks note the threads
they abandoned (:func:`abandon`), the chunk's summary names the workers that hold some
still alive (:func:`stuck`), and once the client has that chunk's records it has each
such worker replaced (:func:`replace_worker`): the worker retires gracefully, as Dask's
own ``--lifetime-restart`` does it (its results move to other workers, the tasks queued
on it run elsewhere, the ones it was running start over elsewhere), and its nanny
starts a fresh process in its place.

A worker without a nanny (``dask worker --no-nanny``, the threads of an in-process
cluster) cannot be replaced: a warning says so, and the threads stay until their ops
return.

This module runs inside tasks on workers; it imports no Dask at import time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

__all__ = ["abandon", "replace_worker", "stuck"]

logger = logging.getLogger(__name__)

#: The threads this process's tasks abandoned.
_ABANDONED: list[threading.Thread] = []
_LOCK = threading.Lock()


def abandon(threads: Iterable[threading.Thread]) -> None:
    """Note threads left running by timed-out items in this process."""
    with _LOCK:
        _ABANDONED.extend(threads)


def stuck() -> int:
    """How many of this process's abandoned threads are still running."""
    with _LOCK:
        _ABANDONED[:] = [t for t in _ABANDONED if t.is_alive()]
        return len(_ABANDONED)


async def replace_worker(dask_worker: Any) -> str:
    """Retire this worker gracefully and let its nanny start a fresh one, if it still
    holds abandoned threads (for ``Client.run``); returns what was done."""
    if not stuck():
        return "no thread left: kept"
    if not dask_worker.nanny:
        logger.warning("worker %s holds %d thread(s) of timed-out items and has no nanny "
                       "to replace it: they run until their ops return", dask_worker.address,
                       stuck())
        return "no nanny: kept"
    logger.warning("replacing worker %s: it holds %d thread(s) of timed-out items",
                   dask_worker.address, stuck())
    await dask_worker.close_gracefully(restart=True,
                                       reason="dagflow-timed-out-items-left-threads")
    return "replaced"
