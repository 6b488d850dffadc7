"""The embedded cluster's worker processes ignore SIGINT (a ``distributed`` preload).

Ctrl-C in a terminal signals the whole foreground process group: the process that drives
the run and the embedded cluster's worker processes alike. The driver stops the run and
closes the cluster (what finished is recorded; the same command resumes the rest); the
workers need not each print a ``KeyboardInterrupt`` traceback while they are closed.
:func:`~dagflow.runtime.cluster.start_local_cluster` adds this module to its workers'
preloads.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["dask_setup"]


def dask_setup(worker: Any) -> None:
    """Ignore SIGINT in this worker process (its event loop runs in the main thread)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
